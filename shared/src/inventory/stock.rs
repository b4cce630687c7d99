//! Stock levels per facility and SKU and the licence-key pools: low-stock alerts.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::kernel::db::Db;
use crate::kernel::error::Result;
use crate::orders::store::enqueue;
use crate::params;

/// Alerts once (`stock.low`) when a facility's available stock of a SKU falls
/// below the product's threshold; re-armed when stock comes back.
pub fn low_stock_check(db: &dyn Db, sku: &str, facility: &str, now: DateTime<Utc>) -> Result<()> {
    let r = db.execute(
        "SELECT s.on_hand - s.reserved AS available, p.low_stock_threshold AS threshold FROM stock s JOIN products p ON p.sku = s.sku
         WHERE s.sku = ? AND s.facility_id = ? AND s.low_alerted = 0 AND s.on_hand - s.reserved < p.low_stock_threshold",
        params![sku, facility],
    )?;
    if let Some(x) = r.first() {
        if db.exec(
            "UPDATE stock SET low_alerted = 1 WHERE sku = ? AND facility_id = ? AND low_alerted = 0",
            params![sku, facility],
        )? == 1
        {
            enqueue(
                db,
                "stock.low",
                None,
                json!({"sku": sku, "facility": facility, "available": x.i64("available"), "threshold": x.i64("threshold")}),
                now,
            )?;
        }
    }
    Ok(())
}

/// Alerts once when a licence-key pool falls below the product's threshold.
pub fn pool_low_check(db: &dyn Db, sku: &str, now: DateTime<Utc>) -> Result<()> {
    let r = db.execute(
        "SELECT (SELECT COUNT(*) FROM license_keys WHERE sku = ?1 AND order_id IS NULL) AS available, low_stock_threshold AS threshold
         FROM products WHERE sku = ?1 AND low_stock_alerted = 0",
        params![sku],
    )?;
    if let Some(x) = r.first() {
        if x.i64("available") < x.i64("threshold")
            && db.exec(
                "UPDATE products SET low_stock_alerted = 1 WHERE sku = ? AND low_stock_alerted = 0",
                params![sku],
            )? == 1
        {
            enqueue(
                db,
                "stock.low",
                None,
                json!({"sku": sku, "facility": "licence key pool", "available": x.i64("available"), "threshold": x.i64("threshold")}),
                now,
            )?;
        }
    }
    Ok(())
}
