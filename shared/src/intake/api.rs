//! Waybill's own order API: one order (with an optional Idempotency-Key) or a
//! batch (JSON or XML), each order validated on its own.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value as Json};
use sha2::Digest;

use crate::kernel::db::{transaction, Db};
use crate::kernel::error::{Error, FieldError, Result};
use crate::kernel::signature;
use crate::kernel::time::ts;
use crate::orders::model::{NewOrder, Source};
use crate::orders::store;
use crate::params;

/// How long an Idempotency-Key's response is kept.
pub const IDEMPOTENCY_RETENTION_HOURS: i64 = 24;
/// The most orders one batch may carry.
pub const MAX_BATCH: usize = 500;

/// The fingerprint of a request body, kept with its Idempotency-Key.
pub fn request_hash(body: &[u8]) -> String {
    signature::hex(&sha2::Sha256::digest(body))
}

/// Creates an API order; a second order with the same `external_id` is a 409.
pub fn create(db: &dyn Db, o: &NewOrder, now: DateTime<Utc>) -> Result<Json> {
    if let Some(ex) = store::find_by_source(db, Source::Api, &o.external_id)? {
        let mut e = Error::conflict(format!(
            "an order with external_id '{}' already exists: {}",
            o.external_id, ex.number
        ));
        e.errors.push(FieldError::new(
            "/external_id",
            format!("exists as order {}", ex.id),
        ));
        return Err(e);
    }
    let ins = store::insert_order(db, o, now, "api")?;
    crate::orders::views::order_view(db, &ins.id)?.ok_or_else(|| Error::internal("order vanished"))
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

/// A batch of order documents: each is validated on its own (one bad order does
/// not reject the others); all rejected is a 422 naming every error. Answers the
/// per-order results with the counts.
pub fn batch(db: &dyn Db, docs: &[Json], now: DateTime<Utc>) -> Result<Json> {
    if docs.is_empty() {
        return Err(Error::unprocessable("the batch contains no orders"));
    }
    if docs.len() > MAX_BATCH {
        return Err(Error::new(
            crate::kernel::error::ErrorKind::PayloadTooLarge,
            format!("at most {MAX_BATCH} orders per batch"),
        ));
    }
    let mapped: Vec<Result<NewOrder>> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| crate::intake::sources::api::map_order(d, &format!("/orders/{i}"), now))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let results: Vec<Json> = transaction(db, |db| {
        let mut out = Vec::new();
        for (i, m) in mapped.iter().enumerate() {
            out.push(match m {
                Err(e) => json!({"index": i, "status": e.status(), "result": "rejected", "problem": e.problem()}),
                Ok(o) if !seen.insert(o.external_id.clone()) => json!({
                    "index": i, "status": 422, "result": "rejected",
                    "problem": Error::invalid(vec![FieldError::new(format!("/orders/{i}/external_id"), "appears twice in this batch")]).problem(),
                }),
                Ok(o) => match store::find_by_source(db, Source::Api, &o.external_id)? {
                    Some(ex) => json!({"index": i, "status": 200, "result": "exists", "order_id": ex.id, "number": ex.number}),
                    None => {
                        let ins = store::insert_order(db, o, now, "api:batch")?;
                        json!({"index": i, "status": 201, "result": "created", "order_id": ins.id, "number": ins.number})
                    }
                },
            });
        }
        Ok::<_, Error>(out)
    })?;
    let rejected = results.iter().filter(|r| r["result"] == "rejected").count();
    if rejected == results.len() {
        let mut e =
            Error::unprocessable(format!("all {rejected} orders in the batch were rejected"));
        for r in &results {
            for fe in r["problem"]["errors"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                e.errors.push(FieldError::new(
                    fe["pointer"].as_str().unwrap_or_default(),
                    fe["detail"].as_str().unwrap_or_default(),
                ));
            }
        }
        return Err(e);
    }
    Ok(json!({
        "accepted": results.len() - rejected,
        "rejected": rejected,
        "results": results,
    }))
}
