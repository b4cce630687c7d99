//! Fulfillment execution (DESIGN §6): what happens after a fulfillment order
//! is released.
//!
//! - External fulfillment centers get the release through the outbox (notify
//!   posts [`fc_request`] signed to the facility's `orders_url`); they answer by
//!   signed callback ([`fc_callback`]): accepted, rejected, shipped (order
//!   number, ship date, tracking number, shipping method, optionally lines and
//!   parcels; partial confirmations allowed; a repeated confirmation changes
//!   nothing), cancellation accepted / rejected.
//! - In-house facilities (warehouses, stores) work through jobs: a pick job
//!   with a checklist (SKU, quantity, bin) is opened at release; closing it
//!   with short picks re-routes or backorders the missing units; a pack job
//!   produces parcels (weight, dimensions, items), a shipping label record and
//!   a return label, priced from the rate table; a handover job (to the
//!   carrier, listed for carrier pickup, or to the customer for click &
//!   collect) ships it.
//! - [`ship`] is the one place a shipment is booked: buckets released →
//!   shipped, stock on hand and reserved go down, the fulfillment order closes
//!   when everything shipped, `shipment.shipped` goes to the timeline (the
//!   report reads it) and the outbox (confirmation e-mail with tracking, CRM).
//! - Carrier tracking ([`apply_tracking`]) moves parcels through the
//!   vocabulary of [`crate::fulfillment::tracking`]; delivered parcels deliver shipments,
//!   which update the delivered bucket; exceptions and failed attempts are
//!   action items; an unknown tracking number is logged, not an error.

pub mod digital;
pub mod release;
pub mod status;
pub mod store;
pub mod tracking;

mod center;
pub use center::*;
mod shipping;
pub use shipping::*;
mod rates;
pub use rates::*;
mod jobs;
pub use jobs::*;

use crate::inventory::stock;
use status::{set_status, set_status_from, FoStatus};

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::fulfillment::store as fstore;
use crate::fulfillment::tracking::{Status, Update};
use crate::kernel::db::{transaction, Db, Value};
use crate::kernel::error::{Error, FieldError, Result};
use crate::kernel::time::ts;
use crate::orders::lines;
use crate::orders::store::{self as orders_store, enqueue, record_event};
use crate::params;

// ---------------------------------------------------------------- settings

/// What happens to units a picker could not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortPick {
    /// Route them again now (another facility, or backordered if none has them).
    Reroute,
    /// Backorder them: they wait for the next stock arrival.
    Backorder,
}

pub fn short_pick_policy(db: &dyn Db) -> Result<ShortPick> {
    let v = crate::kernel::settings::get(db, "fulfillment")?;
    Ok(if v["short_pick"] == "backorder" {
        ShortPick::Backorder
    } else {
        ShortPick::Reroute
    })
}

pub fn settings_json(db: &dyn Db) -> Result<Json> {
    Ok(
        json!({"short_pick": match short_pick_policy(db)? { ShortPick::Reroute => "reroute", ShortPick::Backorder => "backorder" }}),
    )
}

pub fn put_settings(db: &dyn Db, v: &Json) -> Result<Json> {
    let mut errs = Vec::new();
    let obj = v
        .as_object()
        .ok_or_else(|| Error::bad_request("the body must be a JSON object"))?;
    let mut policy = settings_json(db)?["short_pick"]
        .as_str()
        .unwrap_or("reroute")
        .to_string();
    for (k, x) in obj {
        match (k.as_str(), x.as_str()) {
            ("short_pick", Some(p @ ("reroute" | "backorder"))) => policy = p.to_string(),
            ("short_pick", _) => errs.push(FieldError::new(
                "/short_pick",
                "must be 'reroute' or 'backorder'",
            )),
            (other, _) => errs.push(FieldError::new(format!("/{other}"), "unknown setting")),
        }
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    crate::kernel::settings::put(db, "fulfillment", &json!({"short_pick": policy}))?;
    settings_json(db)
}

// ---------------------------------------------------------------- release

struct Fo {
    id: String,
    order_id: String,
    name: String,
    facility: String,
    status: String,
    pickup: bool,
    number: String,
    /// The facility is an external fulfillment center (not worked through jobs).
    external: bool,
}

/// The order a fulfillment order belongs to.
pub fn order_of(db: &dyn Db, fo_id: &str) -> Result<Option<String>> {
    Ok(db
        .execute(
            "SELECT order_id FROM fulfillment_orders WHERE id = ?",
            params![fo_id],
        )?
        .first()
        .map(|r| r.str("order_id")))
}

fn load_fo(db: &dyn Db, fo_id: &str) -> Result<Option<Fo>> {
    let r = db.execute(
        "SELECT f.id, f.order_id, f.name, f.facility_id, f.status, f.pickup, o.number,
                (SELECT type FROM facilities WHERE id = f.facility_id) AS facility_type
         FROM fulfillment_orders f JOIN orders o ON o.id = f.order_id WHERE f.id = ?",
        params![fo_id],
    )?;
    Ok(r.first().map(|f| Fo::of_row(&f, f.str("status"))))
}

impl Fo {
    /// A fulfillment order from a row with its columns (`id`, `order_id`,
    /// `name`, `facility_id`, `pickup`, `number`, `facility_type`).
    fn of_row(f: &crate::kernel::db::Row<'_>, status: String) -> Fo {
        Fo {
            id: f.str("id"),
            order_id: f.str("order_id"),
            name: f.str("name"),
            facility: f.str("facility_id"),
            status,
            pickup: f.i64("pickup") != 0,
            number: f.str("number"),
            external: f.opt_str("facility_type").as_deref() == Some("fulfillment_center"),
        }
    }
}

/// Called in the transaction that releases a fulfillment order: an in-house
/// facility gets its pick job (the checklist: SKU, quantity, bin); an external
/// center is reached through the outbox (notify delivers the request).
pub fn on_released(db: &dyn Db, fo_id: &str, now: DateTime<Utc>) -> Result<()> {
    let Some(fo) = load_fo(db, fo_id)? else {
        return Ok(());
    };
    if fo.external {
        return Ok(());
    }
    let lines = db.execute(
        &format!("{PICK_LINES} ORDER BY fl.line_no"),
        params![fo.order_id.clone(), fo.facility.clone(), fo_id],
    )?;
    open_pick_job(db, &fo, &lines, now)
}

/// A fulfillment order's lines with what its pick job and its release need
/// (parameters: order, facility, fulfillment order).
const PICK_LINES: &str =
    "SELECT fl.line_no, fl.sku, fl.part_number, fl.quantity, l.name, s.bin FROM fulfillment_order_lines fl
     JOIN order_lines l ON l.order_id = ? AND l.line_no = fl.line_no
     LEFT JOIN stock s ON s.sku = fl.sku AND s.facility_id = ?
     WHERE fl.fulfillment_order_id = ?";

/// The pick job of a released fulfillment order at an in-house facility: its
/// checklist goes by bin (lines without a bin first), then line.
fn open_pick_job(
    db: &dyn Db,
    fo: &Fo,
    lines: &crate::kernel::db::Rows,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut items: Vec<(Option<String>, i64, Json)> = lines
        .iter()
        .map(|l| {
            let line = json!({"line_no": l.i64("line_no"), "sku": l.str("sku"), "name": l.str("name"),
                              "quantity": l.i64("quantity"), "bin": l.opt_str("bin")});
            (l.opt_str("bin"), l.i64("line_no"), line)
        })
        .collect();
    items.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let checklist: Vec<Json> = items.into_iter().map(|(_, _, l)| l).collect();
    open_job(db, fo, "pick", json!({"checklist": checklist}), now)?;
    Ok(())
}

fn open_job(db: &dyn Db, fo: &Fo, kind: &str, data: Json, now: DateTime<Utc>) -> Result<String> {
    let id = uuid::Uuid::now_v7().to_string();
    fstore::insert_job(
        db,
        &id,
        kind,
        &fo.id,
        &fo.order_id,
        &fo.facility,
        &data,
        now,
    )?;
    record_event(
        db,
        &fo.order_id,
        now,
        "fulfillment",
        &format!("{kind}_job.opened"),
        &format!("{}: {kind} job opened at {}", fo.name, fo.facility),
        json!({"fulfillment_order": fo.name, "facility": fo.facility, "job_id": id}),
    )?;
    Ok(id)
}

/// What a fulfillment step leaves for the flows that span contexts
/// (`flows::shipping`).
#[derive(Debug, Default)]
pub struct FollowUp {
    /// Fulfillment orders that shipped: their capture at shipment may be due.
    pub shipped: Vec<String>,
    /// The order whose short-picked units wait for routing (policy `reroute`).
    pub reroute: Option<String>,
    /// Fulfillment orders whose cancellation the center accepted: their
    /// unshipped units are cancelled (reservation, buckets, money).
    pub cancelled_by_center: Vec<String>,
}

// ---------------------------------------------------------------- views

/// The fulfillment orders of an order, summarised for the order document.
pub fn fulfillment_orders_of(db: &dyn Db, order_id: &str) -> Result<Vec<Json>> {
    Ok(db
        .execute(
            "SELECT f.name, f.facility_id, f.status, f.request_status, f.pickup, f.released_at,
                    (SELECT SUM(quantity) FROM fulfillment_order_lines WHERE fulfillment_order_id = f.id) AS units
             FROM fulfillment_orders f WHERE f.order_id = ? ORDER BY f.name",
            params![order_id],
        )?
        .iter()
        .map(|f| json!({"name": f.str("name"), "facility": f.str("facility_id"), "status": f.str("status"),
            "request_status": f.str("request_status"), "pickup": f.i64("pickup") != 0, "units": f.opt_i64("units"),
            "released_at": f.opt_str("released_at")}))
        .collect())
}

/// Every shipment of an order with its lines and parcels, and the tracking history.
pub fn shipments_view(db: &dyn Db, order_id: &str) -> Result<Json> {
    let r = db.execute(
        "SELECT s.*, f.name AS fo_name FROM shipments s JOIN fulfillment_orders f ON f.id = s.fulfillment_order_id
         WHERE s.order_id = ? ORDER BY s.shipped_at, s.id",
        params![order_id],
    )?;
    let mut out = Vec::new();
    for s in r.iter() {
        let id = s.str("id");
        let lines: Vec<Json> = db
            .execute("SELECT line_no, sku, quantity FROM shipment_lines WHERE shipment_id = ? ORDER BY line_no", params![id.clone()])?
            .iter()
            .map(|l| json!({"line_no": l.i64("line_no"), "sku": l.str("sku"), "quantity": l.i64("quantity")}))
            .collect();
        let mut parcels = Vec::new();
        for p in db
            .execute(
                "SELECT * FROM parcels WHERE shipment_id = ? ORDER BY created_at, id",
                params![id.clone()],
            )?
            .iter()
        {
            let tn = p.opt_str("tracking_number");
            let events: Vec<Json> = match &tn {
                Some(t) => db
                    .execute(
                        "SELECT provider, status, raw_status, message, occurred_at FROM tracking_events WHERE tracking_number = ? ORDER BY occurred_at, id",
                        params![t.clone()],
                    )?
                    .iter()
                    .map(|e| json!({"provider": e.str("provider"), "status": e.str("status"), "raw_status": e.str("raw_status"),
                                    "message": e.opt_str("message"), "at": e.str("occurred_at")}))
                    .collect(),
                None => Vec::new(),
            };
            let parse = |c: &str| {
                p.opt_str(c)
                    .and_then(|x| serde_json::from_str::<Json>(&x).ok())
            };
            parcels.push(json!({"id": p.str("id"), "tracking_number": tn, "carrier": p.opt_str("carrier"), "service": p.opt_str("service"),
                "weight_grams": p.opt_i64("weight_grams"),
                "dimensions_mm": p.opt_i64("length_mm").map(|l| json!([l, p.opt_i64("width_mm"), p.opt_i64("height_mm")])),
                "items": parse("items"), "label": parse("label"), "return_label": parse("return_label"),
                "status": p.str("status"), "status_at": p.opt_str("status_at"), "tracking": events}));
        }
        out.push(json!({"id": id, "fulfillment_order": s.str("fo_name"), "facility": s.str("facility_id"), "origin": s.str("origin"),
            "carrier": s.opt_str("carrier"), "service": s.opt_str("service"), "shipping_method": s.opt_str("shipping_method"),
            "tracking_number": s.opt_str("tracking_number"), "tracking_url": s.opt_str("tracking_url"), "status": s.str("status"),
            "pickup": s.i64("pickup") != 0, "cost_minor": s.opt_i64("cost_minor"), "currency": s.opt_str("currency"),
            "shipped_at": s.str("shipped_at"), "delivered_at": s.opt_str("delivered_at"), "lines": lines, "parcels": parcels}));
    }
    Ok(json!({"order_id": order_id, "shipments": out}))
}

/// What needs an operator: centers that rejected a fulfillment order, and
/// parcels in exception, failed delivery attempts or on their way back.
pub fn action_items(db: &dyn Db) -> Result<Json> {
    let rejected: Vec<Json> = db
        .execute(
            "SELECT f.name, f.facility_id, f.order_id, f.updated_at, o.number FROM fulfillment_orders f JOIN orders o ON o.id = f.order_id
             WHERE f.request_status = 'rejected' AND f.status IN ('open', 'in_progress') ORDER BY f.updated_at LIMIT 500",
            &[],
        )?
        .iter()
        .map(|r| json!({"kind": "fulfillment_request_rejected", "fulfillment_order": r.str("name"), "facility": r.str("facility_id"),
                        "order_id": r.str("order_id"), "order_number": r.str("number"), "since": r.str("updated_at")}))
        .collect();
    let tracking: Vec<Json> = db
        .execute(
            "SELECT s.id, s.status, s.tracking_number, s.carrier, s.order_id, s.updated_at, f.name, o.number FROM shipments s
             JOIN fulfillment_orders f ON f.id = s.fulfillment_order_id JOIN orders o ON o.id = s.order_id
             WHERE s.status IN ('failed_attempt', 'exception', 'returned_to_sender') ORDER BY s.updated_at LIMIT 500",
            &[],
        )?
        .iter()
        .map(|r| json!({"kind": r.str("status"), "shipment_id": r.str("id"), "tracking_number": r.opt_str("tracking_number"),
                        "carrier": r.opt_str("carrier"), "fulfillment_order": r.str("name"), "order_id": r.str("order_id"),
                        "order_number": r.str("number"), "since": r.str("updated_at")}))
        .collect();
    let mut items = rejected;
    items.extend(tracking);
    Ok(json!({"items": items}))
}

// ---------------------------------------------------------------- HTTP

/// Secrets the callbacks are checked with (Spin variables).
pub struct Secrets<'a> {
    /// A facility's secret by the variable name the facility names.
    pub facility: &'a dyn Fn(&str) -> Option<String>,
    pub easypost: String,
    pub aftership: String,
    pub shippo_token: String,
    pub shippo_hmac: String,
}

/// Checks a fulfillment center's `Waybill-Signature` with the secret its
/// facility names; the same answer for an unknown facility and a bad signature.
/// Answers the signature that verified: the effect it allows books it once
/// ([`use_signature`]).
pub fn verify_center(
    db: &dyn Db,
    secrets: &Secrets,
    facility: &str,
    signature: &str,
    (method, path): (&str, &str),
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<String> {
    let f = db.execute(
        "SELECT secret_variable FROM facilities WHERE id = ?",
        params![facility],
    )?;
    let secret = f
        .first()
        .and_then(|r| r.opt_str("secret_variable"))
        .and_then(|v| (secrets.facility)(&v))
        .unwrap_or_default();
    crate::kernel::signature::verified_request(
        secret.as_bytes(),
        signature,
        method,
        path,
        body,
        now.timestamp(),
        300,
    )
    .ok_or_else(|| {
        Error::unauthorized(
            "missing or wrong Waybill-Signature for this facility (t=<unix seconds>,v2=<hex HMAC-SHA256 of \"t.METHOD.path.body\">)",
        )
    })
}

/// Books a verified center signature in the caller's transaction: a second use
/// inside the window is 401 (a center signs each delivery anew, with a fresh `t`).
pub fn use_signature(db: &dyn Db, signature: &str, now: DateTime<Utc>) -> Result<()> {
    if crate::kernel::replay::first_use(db, signature, now)? {
        Ok(())
    } else {
        Err(Error::unauthorized(
            "this Waybill-Signature was used before: sign each delivery anew (a fresh t)",
        ))
    }
}

#[cfg(test)]
mod tests;
