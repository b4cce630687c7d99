//! Applying routing to stored orders: reservation, fulfillment orders,
//! backorders, holds, licence keys and release, each pass in one transaction.
//!
//! Units of a line move through exclusive buckets: *pending* (ordered less
//! cancelled, allocated, released and shipped, not yet placed), *backordered*
//! (pending and waiting for stock on a backorderable SKU), *allocated* (reserved
//! at a facility in a fulfillment order not yet released), *released*, *shipped*.
//!
//! Reservation is one conditional statement per (facility, SKU)
//! ([`crate::inventory::stock::reserve`]) and licence keys are claimed with one
//! conditional statement ([`crate::inventory::stock::claim_keys`]). Neither
//! reads then writes, so no number of concurrent instances can oversell.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::fulfillment::status::{set_status, FoStatus};
use crate::fulfillment::store as fstore;
use crate::inventory::stock::{self, Reservation};
use crate::kernel::db::{transaction, Db, Value};
use crate::kernel::error::{Error, Result};
use crate::kernel::time::ts;
use crate::orders::lines;
use crate::orders::model::{HoldReason, NewOrder};
use crate::orders::store::{self, record_event};
use crate::params;
use crate::routing::engine::{self, Demand, Destination, Facility, FacilityType, Service, Supply};

mod inputs;
pub use inputs::*;
mod apply;
use apply::apply;
mod backorders;
pub mod worker;

/// Housekeeping: drops up to `limit` routing decisions made before `before`
/// that an order has since replaced: the latest decision of each order, and
/// every decision a fulfillment order names, stay. Returns the rows removed.
pub fn purge_decisions(db: &dyn Db, before: DateTime<Utc>, limit: i64) -> Result<u64> {
    Ok(crate::kernel::db::Patient(db).exec(
        "DELETE FROM routing_decisions WHERE id IN (
           SELECT d.id FROM routing_decisions d
            WHERE d.at < ?
              AND d.id < (SELECT MAX(n.id) FROM routing_decisions n WHERE n.order_id = d.order_id)
              AND NOT EXISTS (SELECT 1 FROM fulfillment_orders f WHERE f.decision_id = d.id)
            ORDER BY d.id LIMIT ?)",
        params![ts(before), limit],
    )?)
}
pub use backorders::*;

/// Holds that stop a release (every reason but `out_of_stock`, which concerns
/// only the units that could not be placed).
pub fn blocks_release(reason: &str) -> bool {
    reason != HoldReason::OutOfStock.as_str()
}

/// Units of a line not yet placed anywhere (includes backordered units).
/// The expression is the one of the partial index `order_lines_unplaced`.
const UNPLACED: &str = "qty_ordered - qty_cancelled - qty_allocated - qty_released - qty_shipped";

/// What one pass did to an order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub allocated: i64,
    pub backordered: i64,
    pub held: i64,
    pub released: i64,
    pub keys: i64,
    /// Units allocated whose capture the gateway has yet to confirm.
    pub awaiting_capture: i64,
    pub changed: bool,
}

/// Why a pass runs, for the timeline and the stored decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The order arrived or changed (chained from intake).
    Intake,
    /// Stock arrived for a SKU it waits for.
    Backorder,
    /// The scheduled sweep.
    Sweep,
}

impl Trigger {
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Intake => "intake",
            Trigger::Backorder => "backorder_release",
            Trigger::Sweep => "sweep",
        }
    }
}

/// Routes an order, after giving older orders waiting for the same SKUs their
/// turn: every pass checks backorders first. The plan is made from a snapshot
/// read outside the write lock; under the lock the order's version is checked
/// (re-planned if it moved) and every reservation is conditional, so a stock
/// change in between can only make a reservation miss, never oversell.
pub fn process_order(
    db: &dyn Db,
    order_id: &str,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> Result<Outcome> {
    let reader = crate::kernel::db::Patient(db);
    let Some(snapshot) = prepare(&reader, order_id)? else {
        return Ok(Outcome::default());
    };
    let skus: Vec<String> = snapshot
        .lines
        .iter()
        .filter(|l| l.unplaced > 0)
        .map(|l| l.sku.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if skus.is_empty() && !snapshot.has_held_work {
        return Ok(Outcome::default());
    }
    let mut snapshot = Some(snapshot);
    if !skus.is_empty() {
        let placed = snapshot
            .as_ref()
            .map(|s| s.placed_at.clone())
            .unwrap_or_default();
        if release_backorders(db, Some(&skus), Some((&placed, order_id)), now, 50)? > 0 {
            snapshot = None; // stock moved: plan again under the lock
        }
    }
    let optimistic = transaction(db, |db| -> std::result::Result<Outcome, PassError> {
        let current = db
            .execute("SELECT version FROM orders WHERE id = ?", params![order_id])?
            .first()
            .map(|r| r.i64("version"));
        let (prepared, strict) = match snapshot {
            Some(s) if Some(s.version) == current => (Some(s), true),
            _ => (prepare(db, order_id)?, false),
        };
        match prepared {
            Some(p) => apply(db, p, trigger, now, strict),
            None => Ok(Outcome::default()),
        }
    });
    match optimistic {
        Ok(o) => Ok(o),
        // Stock moved between the snapshot and the lock: plan again inside it.
        Err(PassError::StockMoved) => transaction(db, |db| route_order(db, order_id, trigger, now)),
        Err(PassError::Failed(e)) => Err(e),
    }
}

/// Why a routing pass stopped (and rolled back).
#[derive(Debug)]
pub enum PassError {
    /// A reservation of an optimistic pass missed: stock moved since the plan,
    /// which is made again under the lock.
    StockMoved,
    Failed(Error),
}

impl From<Error> for PassError {
    fn from(e: Error) -> Self {
        PassError::Failed(e)
    }
}

impl From<crate::kernel::db::DbError> for PassError {
    fn from(e: crate::kernel::db::DbError) -> Self {
        PassError::Failed(e.into())
    }
}

/// A routing decision for an order's physical units, or why it cannot be made
/// (an unknown pickup location).
pub struct Planned {
    pub service: Service,
    pub decision: std::result::Result<engine::Decision, String>,
}

/// Builds the routing request from the stored order document and runs the
/// engine against current stock. Writes nothing.
pub fn plan(
    db: &dyn Db,
    order_id: &str,
    channel: &str,
    doc: &Json,
    physical: Vec<Demand>,
    facilities: &[Facility],
) -> Result<Planned> {
    let pickup = doc["pickup_location"].as_str().map(str::to_string);
    let mut service = Service::Ship;
    let mut preselected = doc["preferred_facility"].as_str().map(str::to_string);
    if let Some(p) = &pickup {
        service = Service::ClickCollect;
        if !p.is_empty() {
            let by_name = db
                .execute(
                    "SELECT id FROM facilities WHERE id = ?1 OR lower(name) = lower(?1) ORDER BY id <> ?1, id LIMIT 1",
                    params![p.clone()],
                )?
                .first()
                .map(|r| r.str("id"));
            match by_name {
                Some(id) => preselected = Some(id),
                None => {
                    return Ok(Planned {
                        service,
                        decision: Err(format!("pickup location '{p}' is not a known facility")),
                    })
                }
            }
        }
    }
    let req = engine::Request {
        order_id,
        destination: if service == Service::Ship {
            destination(db, &doc["shipping_address"])?
        } else {
            Destination {
                location_source: "none".into(),
                ..Destination::default()
            }
        },
        shipping_method: doc["shipping_lines_minor"][0]["method"]
            .as_str()
            .map(str::to_string),
        service,
        preselected,
        lines: physical,
    };
    let skus: BTreeSet<String> = req.lines.iter().map(|d| d.sku.clone()).collect();
    let sup = supply(db, &skus)?;
    let cfg = crate::routing::settings::load_config(db, channel)?;
    Ok(Planned {
        service,
        decision: Ok(engine::route(&req, facilities, &sup, &cfg)),
    })
}

/// A dry run for an order that is not stored: `{"order": <Waybill order JSON>}`.
/// Returns the decision and its explanation; reserves nothing.
pub fn simulate(db: &dyn Db, o: &NewOrder) -> Result<Json> {
    let doc = json!({
        "shipping_address": o.shipping_address,
        "shipping_lines_minor": o.shipping_lines,
        "pickup_location": o.pickup_location,
        "preferred_facility": o.preferred_facility,
    });
    let skus: BTreeSet<String> = o.lines.iter().map(|l| l.sku.clone()).collect();
    let catalog = products(db, &skus)?;
    let physical: Vec<Demand> = o
        .lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !catalog.get(&l.sku).is_some_and(|p| p.digital))
        .map(|(i, l)| Demand {
            line_no: i as i64 + 1,
            sku: l.sku.clone(),
            quantity: l.quantity,
        })
        .collect();
    let facilities = load_facilities(db)?;
    let planned = plan(db, &o.external_id, &o.channel, &doc, physical, &facilities)?;
    Ok(match planned.decision {
        Ok(d) => {
            json!({"dry_run": true, "parts": d.parts, "unassigned": d.unassigned, "explanation": d.explanation})
        }
        Err(note) => {
            json!({"dry_run": true, "parts": [], "hold": {"reason": "incorrect_address", "note": note}})
        }
    })
}

/// Places every unplaced unit of one order, inside the caller's transaction,
/// then releases what may be released.
pub fn route_order(
    db: &dyn Db,
    order_id: &str,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> Result<Outcome> {
    match prepare(db, order_id)? {
        // Not strict: a missed reservation leaves units unplaced, it never stops the pass.
        Some(p) => apply(db, p, trigger, now, false).map_err(|e| match e {
            PassError::Failed(e) => e,
            PassError::StockMoved => Error::internal("a pass under the lock asked to plan again"),
        }),
        None => Ok(Outcome::default()),
    }
}

/// Releases the order's allocated fulfillment orders unless a hold stops it;
/// where the order has a payment to capture, each goes through its capture
/// first ([`crate::payments::capture::capture_fulfillment_order`]).
/// Returns the units released.
pub fn release(db: &dyn Db, order_id: &str, now: DateTime<Utc>) -> Result<i64> {
    if store::open_hold_reasons(db, order_id)?
        .iter()
        .any(|h| blocks_release(h))
    {
        return Ok(0);
    }
    let fos = db.execute(
        "SELECT id FROM fulfillment_orders WHERE order_id = ? AND status = 'on_hold' ORDER BY name",
        params![order_id],
    )?;
    let gated = !fos.is_empty() && crate::payments::capture::gated(db, order_id)?;
    let mut total = 0;
    for f in fos.iter() {
        let fo_id = f.str("id");
        if gated {
            set_status(db, &fo_id, FoStatus::Scheduled, now)?;
            if crate::payments::capture::capture_fulfillment_order(db, &fo_id, now)?
                == crate::payments::capture::Gate::Released
            {
                total += crate::fulfillment::release::units(db, &fo_id)?;
            }
        } else {
            total += crate::fulfillment::release::release(db, &fo_id, now)?;
        }
    }
    // Licence keys held for the order: captured anew (after a decline or a
    // cancelled capture), or delivered when nothing is captured at release.
    if !crate::payments::capture::gated(db, order_id)? {
        crate::fulfillment::digital::deliver_held(db, order_id, None, "routing", now)?;
    }
    crate::payments::capture::capture_keys(db, order_id, now)?;
    Ok(total)
}

/// Gives back the reservations of the order's fulfillment orders that were not
/// released (before the source replaces the order, or on cancellation).
pub fn deallocate_unreleased(
    db: &dyn Db,
    order_id: &str,
    now: DateTime<Utc>,
    actor: &str,
    why: &str,
) -> Result<i64> {
    let rows = db.execute(
        "SELECT f.id, f.name, f.facility_id, fl.line_no, fl.sku, fl.quantity FROM fulfillment_orders f
         JOIN fulfillment_order_lines fl ON fl.fulfillment_order_id = f.id
         WHERE f.order_id = ? AND f.status IN ('on_hold', 'scheduled')",
        params![order_id],
    )?;
    // Captures not yet sent stop here; one in flight settles and, finding its
    // fulfillment order cancelled, is refunded (capture::settle).
    crate::payments::capture::stop_unreleased_captures(db, order_id, now)?;
    let mut total = 0;
    let mut names = BTreeSet::new();
    for r in rows.iter() {
        let q = r.i64("quantity");
        stock::give_back(db, &r.str("sku"), &r.str("facility_id"), q, now)?;
        lines::unallocate(db, order_id, r.i64("line_no"), q)?;
        total += q;
        names.insert((r.str("id"), r.str("name")));
    }
    // Licence keys held for their capture go back to the pool with it.
    let held = db.execute(
        "SELECT line_no, COUNT(*) AS n FROM license_keys WHERE order_id = ? AND delivered_at IS NULL GROUP BY line_no",
        params![order_id],
    )?;
    for r in held.iter() {
        let line_no = r.i64("line_no");
        let (n, captures) = stock::give_back_keys(db, order_id, Some(line_no), r.i64("n"))?;
        lines::unallocate(db, order_id, line_no, n)?;
        for c in &captures {
            crate::payments::capture::stop_key_capture(db, c, now)?;
        }
        total += n;
    }
    for (id, name) in &names {
        set_status(db, id, FoStatus::Cancelled, now)?;
        record_event(
            db,
            order_id,
            now,
            actor,
            "fulfillment_order.cancelled",
            &format!("{name} cancelled: {why}"),
            json!({"fulfillment_order": name, "reason": why}),
        )?;
    }
    Ok(total)
}

/// Alerts the merchant once when a facility's stock of a SKU falls under the threshold.

/// Alerts the merchant once when a licence-key pool falls under its threshold.

/// The stored routing decisions of an order, newest first, with its fulfillment orders.
pub fn routing_view(db: &dyn Db, order_id: &str) -> Result<Json> {
    let d = db.execute(
        "SELECT id, at, trigger, summary, explanation FROM routing_decisions WHERE order_id = ? ORDER BY id DESC",
        params![order_id],
    )?;
    let f = db.execute(
        "SELECT id, name, facility_id, status, request_status, pickup, decision_id, created_at, released_at FROM fulfillment_orders
         WHERE order_id = ? ORDER BY name",
        params![order_id],
    )?;
    let mut fos = Vec::new();
    for x in f.iter() {
        let lines = db.execute(
            "SELECT line_no, sku, part_number, quantity FROM fulfillment_order_lines WHERE fulfillment_order_id = ? ORDER BY line_no",
            params![x.str("id")],
        )?;
        fos.push(json!({
            "id": x.str("id"), "name": x.str("name"), "facility": x.str("facility_id"), "status": x.str("status"),
            "request_status": x.str("request_status"), "pickup": x.i64("pickup") != 0, "decision_id": x.opt_i64("decision_id"),
            "created_at": x.str("created_at"), "released_at": x.opt_str("released_at"),
            "lines": lines.iter().map(|l| json!({"line_no": l.i64("line_no"), "sku": l.str("sku"), "part_number": l.opt_str("part_number"), "quantity": l.i64("quantity")})).collect::<Vec<_>>(),
        }));
    }
    Ok(json!({
        "order_id": order_id,
        "fulfillment_orders": fos,
        "decisions": d.iter().map(|x| json!({
            "id": x.i64("id"), "at": x.str("at"), "trigger": x.str("trigger"), "summary": x.str("summary"),
            "explanation": serde_json::from_str::<Json>(&x.str("explanation")).unwrap_or(Json::Null),
        })).collect::<Vec<_>>(),
    }))
}

/// Routes each order once (at most 1000) and reports per order what happened;
/// an order that fails is reported and left to the sweep.
pub fn route_orders(db: &dyn Db, ids: &[String], now: DateTime<Utc>) -> Json {
    let mut results = Vec::new();
    for id in ids.iter().take(1000) {
        match process_order(db, id, Trigger::Intake, now) {
            Ok(o) => results.push(json!({"order_id": id, "allocated": o.allocated, "backordered": o.backordered,
                "held": o.held, "released": o.released, "keys": o.keys, "awaiting_capture": o.awaiting_capture})),
            Err(e) => {
                eprintln!("routing: order {id} not routed (the sweep will retry): {e}");
                results.push(json!({"order_id": id, "error": e.detail}));
            }
        }
    }
    json!({"results": results})
}

/// The chained call after intake (`POST /internal/route`): orders routed
/// before (a source update gave their allocation back) are routed again here,
/// each in its own pass; new orders are the worker's ([`worker::kick`], which
/// returns at once when another instance is the worker).
pub fn route_kicked(
    db: &dyn Db,
    ids: &[String],
    now: DateTime<Utc>,
    budget: std::time::Duration,
) -> Result<Json> {
    let p = crate::kernel::db::Patient(db);
    let mut again = Vec::new();
    for id in ids.iter().take(1000) {
        let routed_before = !p
            .execute(
                "SELECT 1 FROM routing_decisions WHERE order_id = ? LIMIT 1",
                params![id.as_str()],
            )?
            .is_empty();
        if routed_before {
            again.push(id.clone());
        }
    }
    let results = route_orders(db, &again, now);
    let w = worker::kick(db, budget)?;
    Ok(
        json!({"results": results["results"], "worker": {"rounds": w.rounds, "batches": w.batches, "routed": w.routed, "failed": w.failed}}),
    )
}

#[cfg(test)]
mod tests;
