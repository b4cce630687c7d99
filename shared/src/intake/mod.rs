//! Intake: the mappings from every order source, receipts and idempotency keys.

pub mod api;
pub mod sources;
pub mod webhooks;

use chrono::{DateTime, Utc};

use crate::kernel::db::Db;
use crate::kernel::error::Result;

/// Housekeeping (report-cron, hourly): expired Idempotency-Keys and webhook
/// receipts older than `receipt_days`. Returns the rows removed.
pub fn purge_expired(db: &dyn Db, now: DateTime<Utc>, receipt_days: i64) -> Result<u64> {
    Ok(crate::kernel::idempotency::purge_expired(db, now)?
        + crate::kernel::replay::purge_expired(db, now)?
        + webhooks::purge_receipts(db, now, receipt_days)?)
}
