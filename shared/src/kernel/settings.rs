//! The `settings` table: one JSON document per context (`fulfillment`,
//! `payments`), each validated by its owner before it is stored here. The
//! only writer of the table.

use serde_json::Value as Json;

use crate::kernel::db::Db;
use crate::kernel::error::Result;
use crate::params;

/// The stored document for `key` (`Json::Null` when none is stored).
pub fn get(db: &dyn Db, key: &str) -> Result<Json> {
    let r = db.execute("SELECT value FROM settings WHERE key = ?", params![key])?;
    Ok(r.first()
        .and_then(|r| serde_json::from_str(&r.str("value")).ok())
        .unwrap_or(Json::Null))
}

/// Replaces the document for `key`.
pub fn put(db: &dyn Db, key: &str, value: &Json) -> Result<()> {
    db.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value.to_string()],
    )?;
    Ok(())
}
