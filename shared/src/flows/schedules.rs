//! The scheduled work, one function per schedule: each cron component calls
//! its function, and so does its maintenance route (`http::maintenance`,
//! `POST /api/maintenance/{schedule}`) where a platform has no cron triggers
//! (containerd-shim-spin runs none: Kubernetes CronJobs call the routes).
//! Every function is safe to run at any time and on several instances at
//! once: its work is leased or conditional in SQL. Each answers a JSON summary.

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::flows::housekeeping::{self, Retention};
use crate::inventory;
use crate::kernel::db::Db;
use crate::kernel::error::{Error, Result};
use crate::kernel::kv::Kv;
use crate::notify;
use crate::payments::capture;
use crate::payments::gateway::{Http, StripeConfig};
use crate::reporting;
use crate::routing::allocation;

/// notify-cron: expands the outbox and delivers what is due, within `budget`.
pub async fn notify<T: notify::Transport>(
    db: &dyn Db,
    cfg: &notify::Config,
    centers: &dyn notify::Centers,
    t: &T,
    budget: std::time::Duration,
) -> Result<Json> {
    let r = notify::sweep(db, cfg, centers, t, budget).await?;
    serde_json::to_value(r).map_err(|e| Error::internal(e.to_string()))
}

/// report-cron: the scheduled day's report (generated or replaced), cached
/// as the latest in key-value.
pub fn report(db: &dyn Db, kv: &dyn Kv, tz: chrono_tz::Tz, now: DateTime<Utc>) -> Result<Json> {
    let date = reporting::scheduled_date(now, tz);
    let (r, fresh) = reporting::generate(db, date, tz, now)?;
    reporting::cache_latest(kv, &r);
    Ok(json!({"date": date.to_string(), "generated": fresh}))
}

/// housekeeping-cron: every table's owner drops what is past its retention.
pub fn housekeeping(db: &dyn Db, r: &Retention, now: DateTime<Utc>) -> Result<Json> {
    housekeeping::run(db, r, now)
}

/// inventory-cron: pulls every active facility's `inventory_url` through
/// `get` (a signed GET) and applies the levels. A facility that fails is
/// reported and the others go on. The SKUs that gained stock come back in
/// `fx` (their backorders are the routing sweep's or the caller's).
pub async fn inventory<F, Fut>(
    db: &dyn Db,
    kv: &dyn Kv,
    cfg: &inventory::Config<'_>,
    fx: &mut inventory::Effects,
    get: F,
) -> Result<Json>
where
    F: Fn(String, Vec<(String, String)>) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(u16, Vec<u8>), String>>,
{
    let mut out = serde_json::Map::new();
    for facility in inventory::pull_facilities(db)? {
        let now = Utc::now();
        let result = match inventory::pull_target(db, cfg, &facility) {
            Ok(t) => match get(t.url.clone(), t.headers(now)).await {
                Ok((200, body)) => {
                    inventory::apply_snapshot(db, kv, &facility, &body, "pull", now, fx)
                }
                Ok((status, _)) => Err(Error::internal(format!(
                    "the inventory endpoint answered {status}"
                ))),
                Err(e) => Err(Error::internal(format!("inventory pull failed: {e}"))),
            },
            Err(e) => Err(e),
        };
        out.insert(
            facility,
            result.unwrap_or_else(|e| json!({"result": "failed", "error": e.detail})),
        );
    }
    Ok(json!({"facilities": out}))
}

/// routing-cron: orders left unrouted, backorders that stock can serve.
pub fn routing(db: &dyn Db, now: DateTime<Utc>) -> Result<Json> {
    let (routed, released, served) = allocation::sweep(db, now, 500)?;
    Ok(json!({"routed": routed, "released": released, "backorders_served": served}))
}

/// capture-cron: every due gateway call (captures, refunds, voids).
pub fn capture(
    db: &dyn Db,
    http: &dyn Http,
    stripe: &StripeConfig,
    now: DateTime<Utc>,
) -> Result<Json> {
    let p = capture::process_due(db, http, stripe, None, now, 500)?;
    Ok(
        json!({"succeeded": p.succeeded, "declined": p.declined, "retrying": p.retrying,
              "unknown": p.unknown, "deferred": p.deferred}),
    )
}
