//! What fulfillment sets in motion in other contexts: a shipment's capture at
//! shipment (ship-and-capture), the re-route of short-picked units, and the
//! cancellation of units a center agreed to cancel.

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::fulfillment::{self, FollowUp};
use crate::kernel::db::{transaction, Db};
use crate::kernel::error::Result;
use crate::orders::store;
use crate::routing::allocation::{route_order, Trigger};

/// Carries out a step's follow-ups in the caller's transaction; answers the
/// re-route's outcome (or null).
pub fn follow_up(db: &dyn Db, f: FollowUp, now: DateTime<Utc>) -> Result<Json> {
    for fo in &f.cancelled_by_center {
        crate::flows::changes::cancellation_accepted(db, fo, now)?;
    }
    for fo in &f.shipped {
        crate::payments::capture::capture_shipped(db, fo, now)?;
        if let Some(order) = fulfillment::order_of(db, fo)? {
            store::refresh_status(db, &order, now)?;
        }
    }
    let Some(order) = f.reroute else {
        return Ok(Json::Null);
    };
    let o = route_order(db, &order, Trigger::Sweep, now)?;
    store::refresh_status(db, &order, now)?;
    Ok(
        json!({"allocated": o.allocated, "released": o.released, "backordered": o.backordered, "held": o.held}),
    )
}

/// A center's shipment callback, with what it sets in motion (in the caller's transaction).
pub fn center_event(db: &dyn Db, facility: &str, v: &Json, now: DateTime<Utc>) -> Result<Json> {
    let (answer, f) = fulfillment::fc_callback(db, facility, v, now)?;
    follow_up(db, f, now)?;
    Ok(answer)
}

/// A center's shipment callback in one transaction.
pub fn center_callback(
    db: &dyn Db,
    facility: &str,
    v: &Json,
    signature: &str,
    now: DateTime<Utc>,
) -> Result<Json> {
    transaction(db, |db| {
        // Booked with the effect: a replay is refused, a rolled-back call is not.
        fulfillment::use_signature(db, signature, now)?;
        center_event(db, facility, v, now)
    })
}

/// Completes a pick, pack or handover job and what it sets in motion, in the
/// caller's transaction.
pub fn complete_job_step(
    db: &dyn Db,
    kind: &str,
    id: &str,
    v: &Json,
    now: DateTime<Utc>,
) -> Result<Json> {
    let (mut answer, f) = fulfillment::complete_job(db, kind, id, v, now)?;
    let rerouted = follow_up(db, f, now)?;
    if answer.get("rerouted").is_some() {
        answer["rerouted"] = rerouted;
    }
    Ok(answer)
}

/// [`complete_job_step`] in one transaction.
pub fn complete_job(
    db: &dyn Db,
    kind: &str,
    id: &str,
    v: &Json,
    now: DateTime<Utc>,
) -> Result<Json> {
    transaction(db, |db| complete_job_step(db, kind, id, v, now))
}
