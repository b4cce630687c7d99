//! Waybill's own order API: Idempotency-Keys (the answer kept per key and body)
//! and the batch limit. Creating the orders is `flows::intake`.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value as Json;
use sha2::Digest;

use crate::kernel::db::Db;
use crate::kernel::error::{Error, Result};
use crate::kernel::signature;
use crate::kernel::time::ts;
use crate::params;

/// How long an Idempotency-Key's response is kept.
pub const IDEMPOTENCY_RETENTION_HOURS: i64 = 24;
/// The most orders one batch may carry.
pub const MAX_BATCH: usize = 500;

/// The fingerprint of a request body, kept with its Idempotency-Key.
pub fn request_hash(body: &[u8]) -> String {
    signature::hex(&sha2::Sha256::digest(body))
}

/// The answer kept for an Idempotency-Key: (status, body).
pub type Kept = (u16, Json);

/// The answer kept for `key`, if it is still kept; the same key with another
/// body is a 422.
pub fn kept_answer(db: &dyn Db, key: &str, hash: &str, now: DateTime<Utc>) -> Result<Option<Kept>> {
    let prior = db.execute(
        "SELECT request_hash, status, body FROM idempotency_keys WHERE scope = 'api:orders' AND key = ? AND expires_at > ?",
        params![key, ts(now)],
    )?;
    let Some(p) = prior.first() else {
        return Ok(None);
    };
    if p.str("request_hash") != hash {
        return Err(Error::unprocessable(
            "this Idempotency-Key was already used with a different request body",
        ));
    }
    let stored: Json = serde_json::from_str(&p.str("body")).unwrap_or(Json::Null);
    Ok(Some((p.i64("status") as u16, stored)))
}

/// Housekeeping: drops Idempotency-Keys past their retention. Returns the
/// rows removed.
pub fn purge_expired_keys(db: &dyn Db, now: DateTime<Utc>) -> Result<u64> {
    Ok(crate::kernel::db::Patient(db).exec(
        "DELETE FROM idempotency_keys WHERE expires_at <= ?",
        params![ts(now)],
    )?)
}

/// Keeps the answer given for `key` for [`IDEMPOTENCY_RETENTION_HOURS`].
pub fn keep_answer(
    db: &dyn Db,
    key: &str,
    hash: &str,
    answer: &Kept,
    now: DateTime<Utc>,
) -> Result<()> {
    db.execute(
        "INSERT OR REPLACE INTO idempotency_keys (scope, key, request_hash, status, body, created_at, expires_at)
         VALUES ('api:orders', ?, ?, ?, ?, ?, ?)",
        params![key, hash, answer.0 as i64, answer.1.to_string(), ts(now),
            ts(now + Duration::hours(IDEMPOTENCY_RETENTION_HOURS))],
    )?;
    Ok(())
}
