//! Housekeeping, the `housekeeping-cron` component's hourly run: each table's
//! owner drops what is past its retention, in bounded steps (at most
//! [`STEP`] rows per table and run, so no run holds the write lock long; a
//! backlog drains over the following hours).
//!
//! | what | kept (days, default) | owner |
//! |---|---|---|
//! | Idempotency-Keys | 1 (24 h) | `kernel::idempotency` |
//! | used center signatures | 10 minutes | `kernel::replay` |
//! | webhook receipts | `receipts` (30; Shopify retries for 48 h) | `intake` |
//! | mailbox messages | `mailbox` (30) | `notify::admin` |
//! | delivered deliveries | `deliveries` (30) | `notify::admin` |
//! | dead letters | `dead` (90) | `notify::admin` |
//! | expanded outbox events (the `/api/events` export window) | `outbox` (30) | `orders::store` |
//! | carrier tracking events | `tracking` (365) | `fulfillment::tracking` |
//! | superseded routing decisions | `decisions` (180) | `routing::allocation` |
//!
//! Orders, their timelines, ledgers, invoices and reports are records and are
//! never dropped.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value as Json};

use crate::kernel::db::Db;
use crate::kernel::error::Result;

/// The most rows one run drops per table.
pub const STEP: i64 = 5_000;

/// Days each kind of row is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub receipts: i64,
    pub mailbox: i64,
    pub deliveries: i64,
    pub dead: i64,
    pub outbox: i64,
    pub tracking: i64,
    pub decisions: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            receipts: 30,
            mailbox: 30,
            deliveries: 30,
            dead: 90,
            outbox: 30,
            tracking: 365,
            decisions: 180,
        }
    }
}

impl Retention {
    /// Reads `name=days,...` (the `retention` Spin variable) over the defaults.
    /// Unknown names and values that are not whole days from 1 to 3650 are
    /// answered as errors, so a typo never silently keeps the default.
    pub fn parse(spec: &str) -> std::result::Result<Retention, String> {
        let mut r = Retention::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected name=days"))?;
            let days: i64 = v
                .trim()
                .parse()
                .ok()
                .filter(|d| (1..=3650).contains(d))
                .ok_or_else(|| format!("'{part}': days must be a whole number from 1 to 3650"))?;
            let slot = match k.trim() {
                "receipts" => &mut r.receipts,
                "mailbox" => &mut r.mailbox,
                "deliveries" => &mut r.deliveries,
                "dead" => &mut r.dead,
                "outbox" => &mut r.outbox,
                "tracking" => &mut r.tracking,
                "decisions" => &mut r.decisions,
                other => return Err(format!("'{other}' is not a retention name")),
            };
            *slot = days;
        }
        Ok(r)
    }
}

/// One housekeeping run; answers the rows dropped per kind.
pub fn run(db: &dyn Db, r: &Retention, now: DateTime<Utc>) -> Result<Json> {
    let ago = |days: i64| now - Duration::days(days);
    let keys = crate::intake::purge_expired(db, now, r.receipts)?;
    // Messages and deliveries first: an outbox event goes once they are gone.
    let notify =
        crate::notify::admin::purge(db, ago(r.mailbox), ago(r.deliveries), ago(r.dead), STEP)?;
    let outbox = crate::orders::store::purge_outbox(db, ago(r.outbox), STEP)?;
    let tracking = crate::fulfillment::tracking::purge_events(db, ago(r.tracking), STEP)?;
    let decisions = crate::routing::allocation::purge_decisions(db, ago(r.decisions), STEP)?;
    Ok(
        json!({"keys_and_receipts": keys, "mailbox_and_deliveries": notify, "outbox": outbox,
              "tracking_events": tracking, "routing_decisions": decisions}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_reads_names_and_refuses_typos() {
        assert_eq!(Retention::parse("").unwrap(), Retention::default());
        let r = Retention::parse("mailbox=7, dead=365").unwrap();
        assert_eq!((r.mailbox, r.dead, r.outbox), (7, 365, 30));
        for bad in [
            "mailbox",
            "mailbx=7",
            "dead=0",
            "dead=-1",
            "dead=x",
            "tracking=99999",
        ] {
            assert!(Retention::parse(bad).is_err(), "{bad}");
        }
    }
}
