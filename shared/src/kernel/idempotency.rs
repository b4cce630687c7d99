//! Idempotency-Keys (draft-ietf-httpapi-idempotency-key-header): the answer to
//! a request that carried a key is kept with the request's fingerprint, in the
//! same transaction as the effect it answers for, and replayed to a retry; the
//! same key with another body is refused. Each route is its own scope.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value as Json;
use sha2::Digest;

use crate::kernel::db::{Db, Patient};
use crate::kernel::error::{Error, Result};
use crate::kernel::signature;
use crate::kernel::time::ts;
use crate::params;

/// How long an Idempotency-Key's answer is kept.
pub const RETENTION_HOURS: i64 = 24;

/// The longest key accepted.
pub const MAX_KEY: usize = 255;

/// The fingerprint of a request body, kept with its key.
pub fn request_hash(body: &[u8]) -> String {
    signature::hex(&sha2::Sha256::digest(body))
}

/// The answer kept for a key: (status, body).
pub type Kept = (u16, Json);

/// The answer kept for `key` in `scope`, if it is still kept; the same key with
/// another body is a 422.
pub fn kept(
    db: &dyn Db,
    scope: &str,
    key: &str,
    hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<Kept>> {
    let prior = db.execute(
        "SELECT request_hash, status, body FROM idempotency_keys WHERE scope = ? AND key = ? AND expires_at > ?",
        params![scope, key, ts(now)],
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

/// Keeps the answer given for `key` for [`RETENTION_HOURS`].
pub fn keep(
    db: &dyn Db,
    scope: &str,
    key: &str,
    hash: &str,
    answer: &Kept,
    now: DateTime<Utc>,
) -> Result<()> {
    db.execute(
        "INSERT OR REPLACE INTO idempotency_keys (scope, key, request_hash, status, body, created_at, expires_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        params![scope, key, hash, answer.0 as i64, answer.1.to_string(), ts(now),
            ts(now + Duration::hours(RETENTION_HOURS))],
    )?;
    Ok(())
}

/// Housekeeping: drops keys past their retention. Returns the rows removed.
pub fn purge_expired(db: &dyn Db, now: DateTime<Utc>) -> Result<u64> {
    Ok(Patient(db).exec(
        "DELETE FROM idempotency_keys WHERE expires_at <= ?",
        params![ts(now)],
    )?)
}
