//! The rows of the fulfillment context: fulfillment orders, their lines and
//! their jobs. With `status` (the one writer of a fulfillment order's status)
//! this is the only module that writes `fulfillment_orders`,
//! `fulfillment_order_lines` and `fulfillment_jobs`. Every function runs inside
//! the caller's transaction.

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::fulfillment::status::FoStatus;
use crate::kernel::db::{Db, Value};
use crate::kernel::error::Result;
use crate::kernel::time::ts;
use crate::params;

/// One line of a new fulfillment order.
#[derive(Debug, Clone)]
pub struct NewLine {
    pub line_no: i64,
    pub sku: String,
    pub part_number: Option<String>,
    pub quantity: i64,
}

/// A fulfillment order placed by routing.
pub struct NewFulfillmentOrder<'a> {
    pub id: &'a str,
    pub order_id: &'a str,
    pub name: &'a str,
    pub facility: &'a str,
    /// `open` (released at once), `scheduled` (waiting for its capture) or
    /// `on_hold` (waiting for a hold to lift).
    pub status: FoStatus,
    pub pickup: bool,
    pub lines: &'a [NewLine],
}

/// Inserts a fulfillment order and its lines (two statements).
pub fn create(db: &dyn Db, fo: &NewFulfillmentOrder<'_>, now: DateTime<Utc>) -> Result<()> {
    db.execute(
        "INSERT INTO fulfillment_orders (id, order_id, name, facility_id, status, request_status, pickup, created_at, released_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'unsubmitted', ?6, ?7, ?8, ?7)",
        params![fo.id, fo.order_id, fo.name, fo.facility, fo.status.as_str(), fo.pickup, ts(now),
                (fo.status == FoStatus::Open).then(|| ts(now))],
    )?;
    if fo.lines.is_empty() {
        return Ok(());
    }
    let ph = vec!["(?, ?, ?, ?, ?)"; fo.lines.len()].join(",");
    let mut prm = Vec::with_capacity(fo.lines.len() * 5);
    for l in fo.lines {
        prm.extend([
            Value::from(fo.id),
            Value::from(l.line_no),
            Value::from(l.sku.clone()),
            Value::from(l.part_number.clone()),
            Value::from(l.quantity),
        ]);
    }
    db.execute(
        &format!("INSERT INTO fulfillment_order_lines (fulfillment_order_id, line_no, sku, part_number, quantity) VALUES {ph}"),
        &prm,
    )?;
    Ok(())
}

/// Links the fulfillment orders a routing pass created to its decision.
pub fn link_decision(db: &dyn Db, fo_ids: &[String], decision_id: i64) -> Result<()> {
    if fo_ids.is_empty() {
        return Ok(());
    }
    let ph = vec!["?"; fo_ids.len()].join(",");
    let mut prm: Vec<Value> = vec![Value::Integer(decision_id)];
    prm.extend(fo_ids.iter().map(|id| Value::from(id.as_str())));
    db.execute(
        &format!("UPDATE fulfillment_orders SET decision_id = ? WHERE id IN ({ph})"),
        &prm,
    )?;
    Ok(())
}

/// Moves the request status (to an external center); false when it already
/// had that status.
pub fn set_request_status(
    db: &dyn Db,
    fo_id: &str,
    status: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    Ok(db.exec(
        "UPDATE fulfillment_orders SET request_status = ?, updated_at = ? WHERE id = ? AND request_status <> ?",
        params![status, ts(now), fo_id, status],
    )? > 0)
}

/// `q` units of a line leave the fulfillment order (short pick, cancellation);
/// a line with nothing left is removed.
pub fn remove_units(db: &dyn Db, fo_id: &str, line_no: i64, q: i64) -> Result<()> {
    db.execute(
        "UPDATE fulfillment_order_lines SET quantity = quantity - ? WHERE fulfillment_order_id = ? AND line_no = ?",
        params![q, fo_id, line_no],
    )?;
    db.execute(
        "DELETE FROM fulfillment_order_lines WHERE fulfillment_order_id = ? AND line_no = ? AND quantity <= 0",
        params![fo_id, line_no],
    )?;
    Ok(())
}

/// How many lines the fulfillment order still has.
pub fn line_count(db: &dyn Db, fo_id: &str) -> Result<i64> {
    Ok(db
        .execute(
            "SELECT COUNT(*) AS n FROM fulfillment_order_lines WHERE fulfillment_order_id = ?",
            params![fo_id],
        )?
        .first()
        .map(|r| r.i64("n"))
        .unwrap_or(0))
}

/// Opens a job of `kind` for a fulfillment order (once per kind).
#[allow(clippy::too_many_arguments)]
pub fn insert_job(
    db: &dyn Db,
    id: &str,
    kind: &str,
    fo_id: &str,
    order_id: &str,
    facility: &str,
    data: &Json,
    now: DateTime<Utc>,
) -> Result<()> {
    db.execute(
        "INSERT INTO fulfillment_jobs (id, kind, fulfillment_order_id, order_id, facility_id, status, data, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, 'open', ?, ?, ?)
         ON CONFLICT (fulfillment_order_id, kind) DO NOTHING",
        params![id, kind, fo_id, order_id, facility, data.to_string(), ts(now), ts(now)],
    )?;
    Ok(())
}

/// Moves a job to `status` (closed, handed over and cancelled close it),
/// replacing its data when given.
pub fn set_job(
    db: &dyn Db,
    id: &str,
    status: &str,
    data: Option<&Json>,
    now: DateTime<Utc>,
) -> Result<()> {
    let closing = matches!(status, "closed" | "handed_over" | "cancelled");
    db.execute(
        "UPDATE fulfillment_jobs SET status = ?, data = COALESCE(?, data), updated_at = ?, closed_at = CASE WHEN ? THEN ? ELSE closed_at END
         WHERE id = ?",
        params![status, data.map(|d| d.to_string()), ts(now), closing, ts(now), id],
    )?;
    Ok(())
}

/// Cancelled units leave the open (not started) pick list of the fulfillment
/// order; a list with nothing left is cancelled.
pub fn shrink_open_pick_list(
    db: &dyn Db,
    fo_id: &str,
    line_no: i64,
    q: i64,
    now: DateTime<Utc>,
) -> Result<()> {
    let rows = db.execute(
        "SELECT id, data FROM fulfillment_jobs WHERE fulfillment_order_id = ? AND kind = 'pick' AND status = 'open'",
        params![fo_id],
    )?;
    let Some(j) = rows.first() else {
        return Ok(());
    };
    let mut data: Json = serde_json::from_str(&j.str("data")).unwrap_or(Json::Null);
    if let Some(list) = data["checklist"].as_array_mut() {
        for item in list.iter_mut() {
            if item["line_no"].as_i64() == Some(line_no) {
                item["quantity"] = json!(item["quantity"].as_i64().unwrap_or(0) - q);
            }
        }
        list.retain(|i| i["quantity"].as_i64().unwrap_or(0) > 0);
    }
    let empty = data["checklist"].as_array().is_none_or(|a| a.is_empty());
    db.execute(
        "UPDATE fulfillment_jobs SET data = ?, status = CASE WHEN ? THEN 'cancelled' ELSE status END, updated_at = ? WHERE id = ?",
        params![data.to_string(), empty, ts(now), j.str("id")],
    )?;
    Ok(())
}
