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

pub mod release;
pub mod status;
pub mod store;
pub mod tracking;

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
    Ok(r.first().map(|f| Fo {
        id: f.str("id"),
        order_id: f.str("order_id"),
        name: f.str("name"),
        facility: f.str("facility_id"),
        status: f.str("status"),
        pickup: f.i64("pickup") != 0,
        number: f.str("number"),
        external: f.opt_str("facility_type").as_deref() == Some("fulfillment_center"),
    }))
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
        "SELECT fl.line_no, fl.sku, fl.quantity, l.name, s.bin FROM fulfillment_order_lines fl
         JOIN order_lines l ON l.order_id = ? AND l.line_no = fl.line_no
         LEFT JOIN stock s ON s.sku = fl.sku AND s.facility_id = ?
         WHERE fl.fulfillment_order_id = ? ORDER BY s.bin, fl.line_no",
        params![fo.order_id.clone(), fo.facility.clone(), fo_id],
    )?;
    let checklist: Vec<Json> = lines
        .iter()
        .map(|l| {
            json!({"line_no": l.i64("line_no"), "sku": l.str("sku"), "name": l.str("name"),
                        "quantity": l.i64("quantity"), "bin": l.opt_str("bin")})
        })
        .collect();
    open_job(db, &fo, "pick", json!({"checklist": checklist}), now)?;
    Ok(())
}

fn open_job(db: &dyn Db, fo: &Fo, kind: &str, data: Json, now: DateTime<Utc>) -> Result<String> {
    let id = uuid::Uuid::now_v7().to_string();
    db.execute(
        "INSERT INTO fulfillment_jobs (id, kind, fulfillment_order_id, order_id, facility_id, status, data, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, 'open', ?, ?, ?)
         ON CONFLICT (fulfillment_order_id, kind) DO NOTHING",
        params![id.clone(), kind, fo.id.clone(), fo.order_id.clone(), fo.facility.clone(), data.to_string(), ts(now), ts(now)],
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

/// The request an external fulfillment center receives for a released
/// fulfillment order: order number, shipping information, the center's part
/// numbers, shipping method and the licence key codes of the lines it ships.
pub fn fc_request(db: &dyn Db, released: &Json) -> Result<Json> {
    let order_id = released["order_id"].as_str().unwrap_or_default();
    let mut lines = Vec::new();
    for l in released["lines"].as_array().into_iter().flatten() {
        let keys: Vec<String> = db
            .execute(
                "SELECT key FROM license_keys WHERE order_id = ? AND line_no = ? ORDER BY id",
                params![order_id, l["line_no"].as_i64().unwrap_or(0)],
            )?
            .iter()
            .map(|k| k.str("key"))
            .collect();
        lines.push(
            json!({"line_no": l["line_no"], "sku": l["sku"], "part_number": l["part_number"],
                          "name": l["name"], "quantity": l["quantity"], "license_keys": keys}),
        );
    }
    // Every licence key of the order, for the packing slip of boxed software.
    let keys: Vec<Json> = db
        .execute(
            "SELECT k.sku, k.key, k.line_no FROM license_keys k WHERE k.order_id = ? ORDER BY k.line_no, k.id",
            params![order_id],
        )?
        .iter()
        .map(|k| json!({"line_no": k.i64("line_no"), "sku": k.str("sku"), "key": k.str("key")}))
        .collect();
    Ok(json!({
        "type": "fulfillment_request",
        "license_keys": keys,
        "order_number": released["number"], "fulfillment_order": released["fulfillment_order"],
        "fulfillment_order_id": released["fulfillment_order_id"],
        "shipping_method": released["shipping_method"], "shipping_address": released["shipping_address"],
        "customer": {"name": released["customer_name"], "email": released["email"]},
        "pickup": released["pickup"], "lines": lines,
    }))
}

/// notify's answer from the center: the request status conversation.
pub fn fc_request_delivered(
    db: &dyn Db,
    fo_id: &str,
    answer: &Json,
    now: DateTime<Utc>,
) -> Result<()> {
    let status = match answer["status"].as_str() {
        Some("accepted") => "accepted",
        Some("rejected") => "rejected",
        _ => "submitted",
    };
    set_request_status(db, fo_id, status, answer["reason"].as_str(), now)
}

/// The center's direct answer to a cancellation request (it may also answer
/// later by callback): `cancellation_accepted` cancels the units at once.
/// Returns whether the center accepted (its units are then to be cancelled:
/// [`FollowUp::cancelled_by_center`]).
pub fn fc_cancellation_answered(
    db: &dyn Db,
    fo_id: &str,
    answer: &Json,
    now: DateTime<Utc>,
) -> Result<bool> {
    match answer["status"].as_str() {
        Some("cancellation_accepted" | "accepted" | "cancelled") => {
            set_request_status(
                db,
                fo_id,
                "cancellation_accepted",
                answer["reason"].as_str(),
                now,
            )?;
            Ok(true)
        }
        Some("cancellation_rejected" | "rejected") => set_request_status(
            db,
            fo_id,
            "cancellation_rejected",
            answer["reason"].as_str(),
            now,
        )
        .map(|_| false),
        // Received; the answer follows by callback.
        _ => Ok(false),
    }
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

fn set_request_status(
    db: &dyn Db,
    fo_id: &str,
    status: &str,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(fo) = load_fo(db, fo_id)? else {
        return Ok(());
    };
    if fstore::set_request_status(db, fo_id, status, now)? {
        record_event(
            db,
            &fo.order_id,
            now,
            &format!("facility:{}", fo.facility),
            &format!("fulfillment_request.{status}"),
            &format!(
                "{}: request {status} by {}{}",
                fo.name,
                fo.facility,
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            ),
            json!({"fulfillment_order": fo.name, "request_status": status, "reason": reason}),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------- shipping

/// A parcel as shipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParcelIn {
    pub tracking_number: Option<String>,
    pub carrier: Option<String>,
    pub service: Option<String>,
    pub weight_grams: Option<i64>,
    pub dims_mm: Option<(i64, i64, i64)>,
    /// line → units.
    pub items: BTreeMap<i64, i64>,
    pub label: Option<Json>,
    pub return_label: Option<Json>,
}

/// A shipment to book.
#[derive(Debug, Clone, Default)]
pub struct ShipIn {
    pub origin: &'static str,
    /// The center's shipment id, or the handover job id: a repeat is a no-op.
    pub external_ref: String,
    pub carrier: Option<String>,
    pub service: Option<String>,
    pub shipping_method: Option<String>,
    pub tracking_number: Option<String>,
    pub tracking_url: Option<String>,
    pub shipped_at: Option<DateTime<Utc>>,
    /// line → units; None = everything not yet shipped.
    pub lines: Option<BTreeMap<i64, i64>>,
    pub parcels: Vec<ParcelIn>,
    pub cost_minor: Option<i64>,
    pub currency: Option<String>,
    /// Handed to the customer (click & collect): delivered at once.
    pub delivered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shipped {
    Booked {
        shipment_id: String,
        units: i64,
        partial: bool,
    },
    Duplicate {
        shipment_id: String,
    },
}

/// Units of a fulfillment order not yet shipped, per line.
fn unshipped(db: &dyn Db, fo_id: &str) -> Result<BTreeMap<i64, (String, i64)>> {
    let r = db.execute(
        "SELECT fl.line_no, fl.sku, fl.quantity - COALESCE((SELECT SUM(sl.quantity) FROM shipment_lines sl
            JOIN shipments s ON s.id = sl.shipment_id WHERE s.fulfillment_order_id = fl.fulfillment_order_id AND sl.line_no = fl.line_no), 0) AS open
         FROM fulfillment_order_lines fl WHERE fl.fulfillment_order_id = ?",
        params![fo_id],
    )?;
    Ok(r.iter()
        .map(|x| (x.i64("line_no"), (x.str("sku"), x.i64("open"))))
        .collect())
}

/// Books a shipment of a released fulfillment order (see the module doc).
pub fn ship(db: &dyn Db, fo_id: &str, s: &ShipIn, now: DateTime<Utc>) -> Result<Shipped> {
    let fo = load_fo(db, fo_id)?.ok_or_else(|| Error::not_found("no such fulfillment order"))?;
    if let Some(r) = db
        .execute(
            "SELECT id FROM shipments WHERE fulfillment_order_id = ? AND external_ref = ?",
            params![fo_id, s.external_ref.clone()],
        )?
        .first()
    {
        return Ok(Shipped::Duplicate {
            shipment_id: r.str("id"),
        });
    }
    if !matches!(fo.status.as_str(), "open" | "in_progress") {
        return Err(Error::conflict(format!(
            "{} is {}, nothing can ship from it",
            fo.name, fo.status
        )));
    }
    let open = unshipped(db, fo_id)?;
    let lines: BTreeMap<i64, i64> = match &s.lines {
        None => open
            .iter()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(l, (_, n))| (*l, *n))
            .collect(),
        Some(given) => {
            let mut errs = Vec::new();
            for (l, q) in given {
                match open.get(l) {
                    None => errs.push(FieldError::new(
                        format!("/lines/{l}"),
                        format!("line {l} is not part of {}", fo.name),
                    )),
                    Some((_, left)) if *q <= 0 || q > left => errs.push(FieldError::new(
                        format!("/lines/{l}"),
                        format!("{q} unit(s) shipped, {left} open on {}", fo.name),
                    )),
                    _ => {}
                }
            }
            if !errs.is_empty() {
                return Err(Error::invalid(errs));
            }
            given.clone()
        }
    };
    let units: i64 = lines.values().sum();
    if units == 0 {
        return Err(Error::conflict(format!(
            "{} has nothing left to ship",
            fo.name
        )));
    }
    let left_after: i64 = open.values().map(|(_, n)| n).sum::<i64>() - units;
    let shipment_id = uuid::Uuid::now_v7().to_string();
    let shipped_at = s.shipped_at.unwrap_or(now);
    let status = if s.delivered { "delivered" } else { "shipped" };
    db.execute(
        "INSERT INTO shipments (id, order_id, fulfillment_order_id, facility_id, origin, external_ref, carrier, service,
            shipping_method, tracking_number, tracking_url, status, pickup, cost_minor, currency, shipped_at, delivered_at,
            created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?18)",
        params![shipment_id.clone(), fo.order_id.clone(), fo_id, fo.facility.clone(), s.origin, s.external_ref.clone(),
                s.carrier.clone(), s.service.clone(), s.shipping_method.clone(), s.tracking_number.clone(),
                s.tracking_url.clone(), status, fo.pickup, s.cost_minor, s.currency.clone(), ts(shipped_at),
                s.delivered.then(|| ts(now)), ts(now)],
    )?;
    let mut items_text = Vec::new();
    for (l, q) in &lines {
        let sku = open.get(l).map(|x| x.0.clone()).unwrap_or_default();
        db.execute(
            "INSERT INTO shipment_lines (shipment_id, line_no, sku, quantity) VALUES (?, ?, ?, ?)",
            params![shipment_id.clone(), *l, sku.clone(), *q],
        )?;
        lines::ship(db, &fo.order_id, *l, *q, s.delivered)?;
        let m = stock::Movement {
            kind: "shipment",
            reason: format!("shipped with {}", fo.name),
            reference: shipment_id.clone(),
            actor: "fulfillment",
        };
        stock::consume(db, &sku, &fo.facility, *q, &m, now)?;
        items_text.push(format!("{q} x {sku}"));
    }
    // Parcels: as given, or one carrying everything under the shipment's tracking number.
    let parcels: Vec<ParcelIn> = if s.parcels.is_empty() {
        vec![ParcelIn {
            tracking_number: s.tracking_number.clone(),
            carrier: s.carrier.clone(),
            service: s.service.clone(),
            items: lines.clone(),
            ..Default::default()
        }]
    } else {
        s.parcels.clone()
    };
    let mut parcel_json = Vec::new();
    for p in &parcels {
        let id = uuid::Uuid::now_v7().to_string();
        let items: Vec<Json> = p
            .items
            .iter()
            .map(|(l, q)| json!({"line_no": l, "quantity": q}))
            .collect();
        db.execute(
            "INSERT INTO parcels (id, shipment_id, order_id, tracking_number, carrier, service, weight_grams, length_mm, width_mm,
                height_mm, items, label, return_label, status, status_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15)",
            params![id.clone(), shipment_id.clone(), fo.order_id.clone(), p.tracking_number.clone(),
                    p.carrier.clone().or(s.carrier.clone()), p.service.clone().or(s.service.clone()), p.weight_grams,
                    p.dims_mm.map(|d| d.0), p.dims_mm.map(|d| d.1), p.dims_mm.map(|d| d.2),
                    Json::Array(items.clone()).to_string(), p.label.as_ref().map(|l| l.to_string()),
                    p.return_label.as_ref().map(|l| l.to_string()), status, ts(now)],
        )?;
        parcel_json.push(json!({"tracking_number": p.tracking_number, "carrier": p.carrier.clone().or(s.carrier.clone()),
                                "weight_grams": p.weight_grams, "items": items}));
    }
    let to = if left_after == 0 {
        FoStatus::Closed
    } else {
        FoStatus::InProgress
    };
    set_status(db, fo_id, to, now)?;
    let partial = left_after > 0;
    record_event(
        db,
        &fo.order_id,
        now,
        &format!("facility:{}", fo.facility),
        "shipment.shipped",
        &format!(
            "{}: {units} unit(s) shipped from {}{}{}",
            fo.name,
            fo.facility,
            s.tracking_number
                .as_ref()
                .map(|t| format!(", tracking {t}"))
                .unwrap_or_default(),
            if partial { " (partial)" } else { "" }
        ),
        json!({"facility": fo.facility, "units": units, "partial": partial, "fulfillment_order": fo.name,
               "shipment_id": shipment_id, "carrier": s.carrier, "tracking_number": s.tracking_number}),
    )?;
    if s.delivered {
        record_event(
            db,
            &fo.order_id,
            now,
            &format!("facility:{}", fo.facility),
            "shipment.delivered",
            &format!("{}: handed to the customer at {}", fo.name, fo.facility),
            json!({"shipment_id": shipment_id, "units": units, "pickup": true}),
        )?;
    }
    let o = db.execute(
        "SELECT o.customer_email, o.customer_name, f.name AS facility_name FROM orders o, facilities f WHERE o.id = ? AND f.id = ?",
        params![fo.order_id.clone(), fo.facility.clone()],
    )?;
    let o = o.first();
    // The shipping information for the customer's e-mail and CRM / accounting.
    enqueue(
        db,
        "shipment.created",
        Some(&fo.order_id),
        json!({"order_id": fo.order_id, "number": fo.number, "fulfillment_order": fo.name, "shipment_id": shipment_id,
               "facility": fo.facility, "facility_name": o.as_ref().map(|r| r.str("facility_name")),
               "email": o.as_ref().and_then(|r| r.opt_str("customer_email")),
               "customer_name": o.as_ref().and_then(|r| r.opt_str("customer_name")).unwrap_or_else(|| "customer".into()),
               "carrier": s.carrier, "service": s.service, "shipping_method": s.shipping_method,
               "tracking_number": s.tracking_number, "tracking_url": s.tracking_url,
               "shipped_at": ts(shipped_at), "shipped_on": shipped_at.format("%Y-%m-%d").to_string(),
               "items": items_text.join(", "), "units": units, "partial": partial, "pickup": fo.pickup,
               "lines": lines.iter().map(|(l, q)| json!({"line_no": l, "quantity": q})).collect::<Vec<_>>(),
               "parcels": parcel_json}),
        now,
    )?;
    orders_store::refresh_status(db, &fo.order_id, now)?;
    Ok(Shipped::Booked {
        shipment_id,
        units,
        partial,
    })
}

// ---------------------------------------------------------------- FC callbacks

/// The fulfillment order a center's callback is about: by name
/// (`fulfillment_order`) or by order number at this facility.
fn fc_target(db: &dyn Db, facility: &str, v: &Json) -> Result<String> {
    if let Some(name) = v["fulfillment_order"].as_str() {
        return db
            .execute(
                "SELECT id FROM fulfillment_orders WHERE name = ? AND facility_id = ?",
                params![name.to_ascii_uppercase(), facility],
            )?
            .first()
            .map(|r| r.str("id"))
            .ok_or_else(|| Error::not_found(format!("no fulfillment order {name} at {facility}")));
    }
    let number = v["order_number"].as_str().ok_or_else(|| {
        Error::invalid(vec![FieldError::new(
            "/order_number",
            "is required (or fulfillment_order)",
        )])
    })?;
    let r = db.execute(
        "SELECT f.id FROM fulfillment_orders f JOIN orders o ON o.id = f.order_id
         WHERE o.number = ? AND f.facility_id = ?
         ORDER BY CASE f.status WHEN 'open' THEN 0 WHEN 'in_progress' THEN 1 ELSE 2 END, f.name LIMIT 1",
        params![number.to_ascii_uppercase(), facility],
    )?;
    r.first()
        .map(|r| r.str("id"))
        .ok_or_else(|| Error::not_found(format!("no order {number} at {facility}")))
}

fn opt_str(v: &Json, k: &str, errs: &mut Vec<FieldError>) -> Option<String> {
    match &v[k] {
        Json::Null => None,
        Json::String(s) if s.trim().is_empty() => None,
        Json::String(s) if s.len() <= 255 => Some(s.trim().to_string()),
        _ => {
            errs.push(FieldError::new(
                format!("/{k}"),
                "must be a string of at most 255 characters",
            ));
            None
        }
    }
}

fn lines_of(
    v: &Json,
    key: &str,
    errs: &mut Vec<FieldError>,
    resolve: &dyn Fn(&Json) -> Option<i64>,
) -> Option<BTreeMap<i64, i64>> {
    let a = match &v[key] {
        Json::Null => return None,
        Json::Array(a) => a,
        _ => {
            errs.push(FieldError::new(format!("/{key}"), "must be an array"));
            return None;
        }
    };
    let mut out: BTreeMap<i64, i64> = BTreeMap::new();
    for (i, l) in a.iter().enumerate() {
        let q = l["quantity"].as_i64().filter(|q| *q > 0);
        match (resolve(l), q) {
            (Some(line), Some(q)) => *out.entry(line).or_default() += q,
            (None, _) => errs.push(FieldError::new(
                format!("/{key}/{i}"),
                "names no line of this fulfillment order (line_no, sku or part_number)",
            )),
            (_, None) => errs.push(FieldError::new(
                format!("/{key}/{i}/quantity"),
                "must be a positive integer",
            )),
        }
    }
    Some(out)
}

/// A signed callback from an external fulfillment center (the signature is
/// checked by the caller). `type`: `accepted`, `rejected`, `shipped` (the
/// default when a tracking number is given), `cancellation_accepted`,
/// `cancellation_rejected`.
pub fn fc_callback(
    db: &dyn Db,
    facility: &str,
    body: &Json,
    now: DateTime<Utc>,
) -> Result<(Json, FollowUp)> {
    let mut follow = FollowUp::default();
    if !body.is_object() {
        return Err(Error::bad_request("the body must be a JSON object"));
    }
    let kind = body["type"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            if body["tracking_number"].is_string() || body["ship_date"].is_string() {
                "shipped".into()
            } else {
                String::new()
            }
        });
    let fo_id = fc_target(db, facility, body)?;
    match kind.as_str() {
        "accepted" | "rejected" | "cancellation_accepted" | "cancellation_rejected" => {
            set_request_status(db, &fo_id, &kind, body["reason"].as_str(), now)?;
            if kind == "cancellation_accepted" {
                follow.cancelled_by_center.push(fo_id.clone());
            }
            Ok((json!({"result": kind, "fulfillment_order_id": fo_id}), follow))
        }
        "shipped" => {
            let mut errs = Vec::new();
            let tracking = opt_str(body, "tracking_number", &mut errs);
            let shipped_at = match &body["ship_date"] {
                Json::Null => None,
                Json::String(t) => match crate::kernel::time::parse_time(t).or_else(|| {
                    chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                        .ok()
                        .and_then(|d| d.and_hms_opt(12, 0, 0))
                        .map(|d| d.and_utc())
                }) {
                    Some(t) => Some(t),
                    None => {
                        errs.push(FieldError::new("/ship_date", "must be a date (YYYY-MM-DD) or an RFC 3339 time"));
                        None
                    }
                },
                _ => {
                    errs.push(FieldError::new("/ship_date", "must be a string"));
                    None
                }
            };
            let fl = db.execute(
                "SELECT line_no, sku, part_number FROM fulfillment_order_lines WHERE fulfillment_order_id = ?",
                params![fo_id.clone()],
            )?;
            let known: Vec<(i64, String, Option<String>)> = fl
                .iter()
                .map(|r| (r.i64("line_no"), r.str("sku"), r.opt_str("part_number")))
                .collect();
            let resolve = |l: &Json| -> Option<i64> {
                if let Some(n) = l["line_no"].as_i64() {
                    return known.iter().find(|k| k.0 == n).map(|k| k.0);
                }
                if let Some(p) = l["part_number"].as_str() {
                    return known.iter().find(|k| k.2.as_deref() == Some(p)).map(|k| k.0);
                }
                l["sku"].as_str().and_then(|s| known.iter().find(|k| k.1 == s).map(|k| k.0))
            };
            let lines = lines_of(body, "lines", &mut errs, &resolve);
            let mut parcels = Vec::new();
            if let Some(a) = body["parcels"].as_array() {
                for (i, p) in a.iter().enumerate() {
                    let mut pe = Vec::new();
                    let items = lines_of(p, "items", &mut pe, &resolve).unwrap_or_default();
                    for e in pe {
                        errs.push(FieldError::new(format!("/parcels/{i}{}", e.pointer), e.detail));
                    }
                    parcels.push(ParcelIn {
                        tracking_number: opt_str(p, "tracking_number", &mut errs).or(tracking.clone()),
                        carrier: opt_str(p, "carrier", &mut errs),
                        weight_grams: p["weight_grams"].as_i64(),
                        items,
                        ..Default::default()
                    });
                }
            } else if !body["parcels"].is_null() {
                errs.push(FieldError::new("/parcels", "must be an array"));
            }
            let external_ref = opt_str(body, "shipment_id", &mut errs)
                .or(tracking.clone())
                .unwrap_or_default();
            if external_ref.is_empty() {
                errs.push(FieldError::new("/tracking_number", "a shipment needs a tracking_number or a shipment_id"));
            }
            let s = ShipIn {
                origin: "fc_callback",
                external_ref,
                carrier: opt_str(body, "carrier", &mut errs),
                service: opt_str(body, "service", &mut errs),
                shipping_method: opt_str(body, "shipping_method", &mut errs),
                tracking_url: opt_str(body, "tracking_url", &mut errs),
                tracking_number: tracking,
                shipped_at,
                lines,
                parcels,
                ..Default::default()
            };
            if !errs.is_empty() {
                return Err(Error::invalid(errs));
            }
            if let Some(fo) = load_fo(db, &fo_id)? {
                if fo.status == "open" {
                    set_request_status(db, &fo_id, "accepted", None, now)?;
                }
            }
            let answer = match ship(db, &fo_id, &s, now)? {
                Shipped::Booked { shipment_id, units, partial } => {
                    follow.shipped.push(fo_id.clone());
                    json!({"result": "shipped", "shipment_id": shipment_id, "units": units, "partial": partial})
                }
                Shipped::Duplicate { shipment_id } => json!({"result": "duplicate", "shipment_id": shipment_id}),
            };
            Ok((answer, follow))
        }
        "" => Err(Error::invalid(vec![FieldError::new("/type", "is required: accepted, rejected, shipped, cancellation_accepted or cancellation_rejected")])),
        other => Err(Error::invalid(vec![FieldError::new("/type", format!("unknown callback type '{other}'"))])),
    }
}

// ---------------------------------------------------------------- tracking

/// Applies a carrier update. Returns what happened: `updated`, `delivered`,
/// `duplicate`, `unknown_tracking_number`.
pub fn apply_tracking(db: &dyn Db, u: &Update, now: DateTime<Utc>) -> Result<&'static str> {
    let parcels = db.execute(
        "SELECT p.id, p.shipment_id, p.status, s.order_id, s.fulfillment_order_id, f.name AS fo_name
         FROM parcels p JOIN shipments s ON s.id = p.shipment_id JOIN fulfillment_orders f ON f.id = s.fulfillment_order_id
         WHERE p.tracking_number = ?",
        params![u.tracking_number.clone()],
    )?;
    let occurred = u.occurred_at.unwrap_or(now);
    let inserted = db.exec(
        "INSERT INTO tracking_events (provider, tracking_number, parcel_id, status, raw_status, message, occurred_at, received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        params![u.provider, u.tracking_number.clone(), parcels.first().map(|p| p.str("id")), u.status.as_str(),
                u.raw_status.clone(), u.message.clone(), ts(occurred), ts(now)],
    )?;
    if inserted == 0 {
        return Ok("duplicate");
    }
    if parcels.is_empty() {
        eprintln!(
            "tracking: {} update for unknown tracking number {} ({})",
            u.provider,
            u.tracking_number,
            u.status.as_str()
        );
        return Ok("unknown_tracking_number");
    }
    let mut result = "updated";
    for p in parcels.iter() {
        let current = Status::parse(&p.str("status")).unwrap_or(Status::Unknown);
        // Delivered is final (except a later return); older news does not move it back.
        if current == Status::Delivered && u.status != Status::ReturnedToSender {
            continue;
        }
        db.execute(
            "UPDATE parcels SET status = ?, status_at = ? WHERE id = ?",
            params![u.status.as_str(), ts(occurred), p.str("id")],
        )?;
        let order_id = p.str("order_id");
        let shipment_id = p.str("shipment_id");
        record_event(
            db,
            &order_id,
            now,
            &format!("carrier:{}", u.provider),
            if u.status.needs_action() {
                "tracking.exception"
            } else {
                "tracking.updated"
            },
            &format!(
                "{}: parcel {} {}{}",
                p.str("fo_name"),
                u.tracking_number,
                u.status.as_str().replace('_', " "),
                u.message
                    .as_ref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ),
            json!({"tracking_number": u.tracking_number, "status": u.status.as_str(), "raw_status": u.raw_status,
                   "provider": u.provider, "shipment_id": shipment_id}),
        )?;
        // The shipment follows its least advanced parcel (one without news is
        // still `shipped`); an exception shows first; delivered when all are.
        let raw: Vec<String> = db
            .execute(
                "SELECT status FROM parcels WHERE shipment_id = ?",
                params![shipment_id.clone()],
            )?
            .iter()
            .map(|r| r.str("status"))
            .collect();
        let rank = |s: &str| match Status::parse(s) {
            None | Some(Status::Unknown) => 0,
            Some(Status::PreTransit) => 1,
            Some(Status::InTransit) => 2,
            Some(Status::OutForDelivery) => 3,
            Some(Status::AvailableForPickup) => 4,
            Some(Status::Delivered) => 6,
            Some(_) => 5,
        };
        let all_delivered = raw.iter().all(|s| s == "delivered");
        let shipment_status = if let Some(bad) = raw
            .iter()
            .find(|s| Status::parse(s).is_some_and(|x| x.needs_action()))
        {
            bad.clone()
        } else {
            raw.iter()
                .min_by_key(|s| rank(s))
                .cloned()
                .unwrap_or_else(|| u.status.as_str().to_string())
        };
        let was = db
            .execute(
                "SELECT status FROM shipments WHERE id = ?",
                params![shipment_id.clone()],
            )?
            .first()
            .map(|r| r.str("status"))
            .unwrap_or_default();
        db.execute(
            "UPDATE shipments SET status = ?, updated_at = ?, tracking_url = COALESCE(tracking_url, ?) WHERE id = ?",
            params![shipment_status.clone(), ts(now), u.public_url.clone(), shipment_id.clone()],
        )?;
        if all_delivered && was != "delivered" {
            deliver_shipment(db, &shipment_id, &order_id, occurred, now)?;
            result = "delivered";
        }
    }
    Ok(result)
}

fn deliver_shipment(
    db: &dyn Db,
    shipment_id: &str,
    order_id: &str,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<()> {
    db.execute(
        "UPDATE shipments SET delivered_at = ? WHERE id = ?",
        params![ts(at), shipment_id],
    )?;
    let lines = db.execute(
        "SELECT line_no, quantity FROM shipment_lines WHERE shipment_id = ?",
        params![shipment_id],
    )?;
    let mut units = 0;
    for l in lines.iter() {
        units += l.i64("quantity");
        lines::deliver(db, &order_id, l.i64("line_no"), l.i64("quantity"))?;
    }
    let number = db.execute(
        "SELECT number, customer_email FROM orders WHERE id = ?",
        params![order_id],
    )?;
    let n = number.first();
    record_event(
        db,
        order_id,
        now,
        "carrier",
        "shipment.delivered",
        &format!("Shipment delivered: {units} unit(s)"),
        json!({"shipment_id": shipment_id, "units": units}),
    )?;
    enqueue(
        db,
        "shipment.delivered",
        Some(order_id),
        json!({"order_id": order_id, "number": n.as_ref().map(|r| r.str("number")), "shipment_id": shipment_id,
               "units": units, "delivered_at": ts(at), "email": n.as_ref().and_then(|r| r.opt_str("customer_email"))}),
        now,
    )?;
    orders_store::refresh_status(db, order_id, now)?;
    Ok(())
}

// ---------------------------------------------------------------- rates

/// A rate table row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub carrier: String,
    pub service: String,
    pub zone: String,
    pub max_weight_grams: i64,
    pub price_minor: i64,
    pub currency: String,
}

/// The destination's zone: the longest postal prefix configured for the
/// country, else the country's own entry (prefix ""), else `None`.
pub fn zone_for(db: &dyn Db, country: &str, postal_code: &str) -> Result<Option<String>> {
    let r = db.execute(
        "SELECT zone FROM shipping_zones WHERE country = ? AND substr(?, 1, length(postal_prefix)) = postal_prefix
         ORDER BY length(postal_prefix) DESC LIMIT 1",
        params![country.to_ascii_uppercase(), postal_code.replace(' ', "").to_ascii_uppercase()],
    )?;
    Ok(r.first().map(|r| r.str("zone")))
}

/// The price of a parcel: per (carrier, service), the first weight bracket
/// whose upper bound (inclusive) holds the weight, in the destination's zone.
/// Cheapest first.
pub fn quote(
    db: &dyn Db,
    country: &str,
    postal_code: &str,
    weight_grams: i64,
    carrier: Option<&str>,
    service: Option<&str>,
) -> Result<(Option<String>, Vec<Rate>)> {
    let Some(zone) = zone_for(db, country, postal_code)? else {
        return Ok((None, Vec::new()));
    };
    let r = db.execute(
        "SELECT r.* FROM shipping_rates r
         WHERE r.zone = ?1 AND r.max_weight_grams >= ?2 AND (?3 IS NULL OR r.carrier = ?3) AND (?4 IS NULL OR r.service = ?4)
           AND r.max_weight_grams = (SELECT MIN(x.max_weight_grams) FROM shipping_rates x
               WHERE x.carrier = r.carrier AND x.service = r.service AND x.zone = r.zone AND x.max_weight_grams >= ?2)
         ORDER BY r.price_minor, r.carrier, r.service",
        params![zone.clone(), weight_grams, carrier, service],
    )?;
    Ok((
        Some(zone),
        r.iter()
            .map(|x| Rate {
                carrier: x.str("carrier"),
                service: x.str("service"),
                zone: x.str("zone"),
                max_weight_grams: x.i64("max_weight_grams"),
                price_minor: x.i64("price_minor"),
                currency: x.str("currency"),
            })
            .collect(),
    ))
}

fn rate_json(r: &Rate) -> Json {
    let price = crate::kernel::money::Currency::from_code(&r.currency)
        .map(|c| {
            serde_json::to_value(crate::kernel::money::Money::new(r.price_minor, c))
                .unwrap_or(Json::Null)
        })
        .unwrap_or(Json::Null);
    json!({"carrier": r.carrier, "service": r.service, "zone": r.zone, "max_weight_grams": r.max_weight_grams, "price": price})
}

pub fn put_rates(db: &dyn Db, v: &Json) -> Result<Json> {
    let mut errs = Vec::new();
    let mut zones = Vec::new();
    for (i, z) in v["zones"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let p = format!("/zones/{i}");
        let country = z["country"].as_str().unwrap_or("");
        if country.len() != 2 || !country.chars().all(|c| c.is_ascii_alphabetic()) {
            errs.push(FieldError::new(
                format!("{p}/country"),
                "must be an ISO 3166-1 alpha-2 code",
            ));
        }
        let prefix = z["postal_prefix"].as_str().unwrap_or("");
        if prefix.len() > 16 {
            errs.push(FieldError::new(
                format!("{p}/postal_prefix"),
                "at most 16 characters",
            ));
        }
        match z["zone"].as_str() {
            Some(zone) if !zone.trim().is_empty() && zone.len() <= 64 => zones.push((
                country.to_ascii_uppercase(),
                prefix.replace(' ', "").to_ascii_uppercase(),
                zone.to_string(),
            )),
            _ => errs.push(FieldError::new(
                format!("{p}/zone"),
                "must be a name of 1 to 64 characters",
            )),
        }
    }
    let mut rates = Vec::new();
    for (i, r) in v["rates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let p = format!("/rates/{i}");
        let text = |k: &str, errs: &mut Vec<FieldError>| -> String {
            match r[k].as_str() {
                Some(s) if !s.trim().is_empty() && s.len() <= 64 => s.to_string(),
                _ => {
                    errs.push(FieldError::new(
                        format!("{p}/{k}"),
                        "must be a name of 1 to 64 characters",
                    ));
                    String::new()
                }
            }
        };
        let carrier = text("carrier", &mut errs);
        let service = text("service", &mut errs);
        let zone = text("zone", &mut errs);
        let max = r["max_weight_grams"]
            .as_i64()
            .filter(|w| (1..=1_000_000).contains(w));
        if max.is_none() {
            errs.push(FieldError::new(
                format!("{p}/max_weight_grams"),
                "must be an integer from 1 to 1,000,000",
            ));
        }
        let currency = r["currency"]
            .as_str()
            .and_then(crate::kernel::money::Currency::from_code);
        if currency.is_none() {
            errs.push(FieldError::new(
                format!("{p}/currency"),
                "must be an ISO 4217 code",
            ));
        }
        let price = match (&r["price"], currency) {
            (Json::String(s), Some(c)) => c.parse_amount(s).ok().filter(|m| *m >= 0),
            (Json::Number(n), Some(c)) => c.parse_amount(&n.to_string()).ok().filter(|m| *m >= 0),
            _ => None,
        };
        if price.is_none() {
            errs.push(FieldError::new(
                format!("{p}/price"),
                "must be a non-negative decimal amount",
            ));
        }
        if !zone.is_empty() && !zones.iter().any(|z| z.2 == zone) {
            errs.push(FieldError::new(
                format!("{p}/zone"),
                format!("zone '{zone}' is not defined in zones"),
            ));
        }
        if let (Some(m), Some(pr), Some(c)) = (max, price, currency) {
            rates.push((carrier, service, zone, m, pr, c.code().to_string()));
        }
    }
    if v.get("zones").is_none() || v.get("rates").is_none() {
        errs.push(FieldError::new(
            "/",
            "zones and rates are both required (the table is replaced whole)",
        ));
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    db.execute("DELETE FROM shipping_zones", &[])?;
    db.execute("DELETE FROM shipping_rates", &[])?;
    for (c, p, z) in &zones {
        db.execute(
            "INSERT INTO shipping_zones (country, postal_prefix, zone) VALUES (?, ?, ?)
             ON CONFLICT (country, postal_prefix) DO UPDATE SET zone = excluded.zone",
            params![c.clone(), p.clone(), z.clone()],
        )?;
    }
    for (c, s, z, m, p, cur) in &rates {
        db.execute(
            "INSERT INTO shipping_rates (carrier, service, zone, max_weight_grams, price_minor, currency) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (carrier, service, zone, max_weight_grams) DO UPDATE SET price_minor = excluded.price_minor, currency = excluded.currency",
            params![c.clone(), s.clone(), z.clone(), *m, *p, cur.clone()],
        )?;
    }
    rates_view(db)
}

pub fn rates_view(db: &dyn Db) -> Result<Json> {
    let zones: Vec<Json> = db
        .execute("SELECT * FROM shipping_zones ORDER BY country, postal_prefix", &[])?
        .iter()
        .map(|z| json!({"country": z.str("country"), "postal_prefix": z.str("postal_prefix"), "zone": z.str("zone")}))
        .collect();
    let rates: Vec<Json> = db
        .execute(
            "SELECT * FROM shipping_rates ORDER BY carrier, service, zone, max_weight_grams",
            &[],
        )?
        .iter()
        .map(|x| {
            rate_json(&Rate {
                carrier: x.str("carrier"),
                service: x.str("service"),
                zone: x.str("zone"),
                max_weight_grams: x.i64("max_weight_grams"),
                price_minor: x.i64("price_minor"),
                currency: x.str("currency"),
            })
        })
        .collect();
    Ok(json!({"zones": zones, "rates": rates}))
}

// ---------------------------------------------------------------- jobs

fn load_job(db: &dyn Db, id: &str) -> Result<(String, String, String, Json, String)> {
    let r = db.execute(
        "SELECT kind, fulfillment_order_id, status, data, facility_id FROM fulfillment_jobs WHERE id = ?",
        params![id],
    )?;
    let j = r
        .first()
        .ok_or_else(|| Error::not_found(format!("no job {id}")))?;
    Ok((
        j.str("kind"),
        j.str("fulfillment_order_id"),
        j.str("status"),
        serde_json::from_str(&j.str("data")).unwrap_or(Json::Null),
        j.str("facility_id"),
    ))
}

pub fn job_view(db: &dyn Db, id: &str) -> Result<Json> {
    let r = db.execute(
        "SELECT j.*, f.name AS fo_name, f.pickup, o.number FROM fulfillment_jobs j
         JOIN fulfillment_orders f ON f.id = j.fulfillment_order_id JOIN orders o ON o.id = j.order_id WHERE j.id = ?",
        params![id],
    )?;
    let j = r
        .first()
        .ok_or_else(|| Error::not_found(format!("no job {id}")))?;
    Ok(
        json!({"id": j.str("id"), "kind": j.str("kind"), "status": j.str("status"), "facility": j.str("facility_id"),
              "fulfillment_order": j.str("fo_name"), "order_id": j.str("order_id"), "order_number": j.str("number"),
              "pickup": j.i64("pickup") != 0,
              "data": serde_json::from_str::<Json>(&j.str("data")).unwrap_or(Json::Null),
              "created_at": j.str("created_at"), "updated_at": j.str("updated_at"), "closed_at": j.opt_str("closed_at")}),
    )
}

fn set_job(
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

/// Closes a pick job: `picked` per line (default: everything). Short units
/// leave the facility's stock (they are not there), leave the fulfillment
/// order, and are re-routed or backordered (setting `short_pick`). A pack job
/// opens for what was picked.
fn complete_pick(
    db: &dyn Db,
    job_id: &str,
    body: &Json,
    now: DateTime<Utc>,
) -> Result<(Json, FollowUp)> {
    let (_, fo_id, status, data, facility) = load_job(db, job_id)?;
    if !matches!(status.as_str(), "open" | "in_progress") {
        return Err(Error::conflict(format!("the pick job is {status}")));
    }
    let fo = load_fo(db, &fo_id)?.ok_or_else(|| Error::not_found("no fulfillment order"))?;
    let checklist = data["checklist"].as_array().cloned().unwrap_or_default();
    let mut picked: BTreeMap<i64, i64> = checklist
        .iter()
        .map(|c| {
            (
                c["line_no"].as_i64().unwrap_or(0),
                c["quantity"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let wanted = picked.clone();
    let mut errs = Vec::new();
    match &body["lines"] {
        Json::Null => {}
        Json::Array(a) => {
            for (i, l) in a.iter().enumerate() {
                let line = l["line_no"].as_i64();
                let got = l["picked"].as_i64();
                match (line.and_then(|n| wanted.get(&n).map(|w| (n, *w))), got) {
                    (Some((n, w)), Some(g)) if (0..=w).contains(&g) => {
                        picked.insert(n, g);
                    }
                    (Some((_, w)), _) => errs.push(FieldError::new(
                        format!("/lines/{i}/picked"),
                        format!("must be 0 to {w}"),
                    )),
                    (None, _) => errs.push(FieldError::new(
                        format!("/lines/{i}/line_no"),
                        "is not on this pick list",
                    )),
                }
            }
        }
        _ => errs.push(FieldError::new("/lines", "must be an array")),
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let policy = short_pick_policy(db)?;
    let mut short_total = 0;
    let mut short_lines = Vec::new();
    for (line, want) in &wanted {
        let got = picked.get(line).copied().unwrap_or(0);
        let short = want - got;
        if short <= 0 {
            continue;
        }
        short_total += short;
        let sku = checklist
            .iter()
            .find(|c| c["line_no"].as_i64() == Some(*line))
            .and_then(|c| c["sku"].as_str())
            .unwrap_or_default()
            .to_string();
        // The units are not on the shelf: the count goes down with the reservation.
        let m = stock::Movement {
            kind: "short_pick",
            reason: format!("short pick on {}", fo.name),
            reference: job_id.to_string(),
            actor: "fulfillment",
        };
        stock::consume(db, &sku, &facility, short, &m, now)?;
        fstore::remove_units(db, &fo_id, *line, short)?;
        lines::short_picked(
            db,
            &fo.order_id,
            *line,
            short,
            policy == ShortPick::Backorder,
        )?;
        short_lines.push(json!({"line_no": line, "sku": sku, "short": short}));
    }
    let picked_units: i64 = picked.values().sum();
    let mut new_data = data.clone();
    new_data["picked"] = json!(picked
        .iter()
        .map(|(l, q)| json!({"line_no": l, "quantity": q}))
        .collect::<Vec<_>>());
    new_data["short"] = json!(short_lines);
    set_job(db, job_id, "closed", Some(&new_data), now)?;
    record_event(
        db,
        &fo.order_id,
        now,
        &format!("facility:{facility}"),
        "pick_job.closed",
        &format!(
            "{}: picked {picked_units} unit(s){}",
            fo.name,
            if short_total > 0 {
                format!(", {short_total} short")
            } else {
                String::new()
            }
        ),
        json!({"fulfillment_order": fo.name, "picked": picked_units, "short": short_lines}),
    )?;
    if short_total > 0 {
        record_event(
            db,
            &fo.order_id,
            now,
            "fulfillment",
            "fulfillment_order.short_pick",
            &format!(
                "{}: {short_total} unit(s) short at {facility}, {}",
                fo.name,
                if policy == ShortPick::Reroute {
                    "routed again"
                } else {
                    "backordered"
                }
            ),
            json!({"fulfillment_order": fo.name, "short": short_lines, "policy": if policy == ShortPick::Reroute { "reroute" } else { "backorder" }}),
        )?;
    }
    if picked_units == 0 {
        set_status(db, &fo_id, FoStatus::Cancelled, now)?;
    } else {
        let items: Vec<Json> = checklist
            .iter()
            .filter_map(|c| {
                let l = c["line_no"].as_i64()?;
                let q = picked.get(&l).copied().unwrap_or(0);
                (q > 0).then(
                    || json!({"line_no": l, "sku": c["sku"], "name": c["name"], "quantity": q}),
                )
            })
            .collect();
        set_status_from(db, &fo_id, &[FoStatus::Open], FoStatus::InProgress, now)?;
        open_job(db, &fo, "pack", json!({"items": items}), now)?;
    }
    let mut follow = FollowUp::default();
    if short_total > 0 && policy == ShortPick::Reroute {
        follow.reroute = Some(fo.order_id.clone());
    }
    orders_store::refresh_status(db, &fo.order_id, now)?;
    Ok((
        json!({"job": job_view(db, job_id)?, "short": short_total, "rerouted": Json::Null}),
        follow,
    ))
}

/// Closes a pack job: parcels (weight, dimensions, items, tracking number),
/// a label record and a return label each, the price from the rate table;
/// opens the handover job (to the carrier, or to the customer for click & collect).
fn complete_pack(db: &dyn Db, job_id: &str, body: &Json, now: DateTime<Utc>) -> Result<Json> {
    let (_, fo_id, status, data, facility) = load_job(db, job_id)?;
    if !matches!(status.as_str(), "open" | "in_progress") {
        return Err(Error::conflict(format!("the pack job is {status}")));
    }
    let fo = load_fo(db, &fo_id)?.ok_or_else(|| Error::not_found("no fulfillment order"))?;
    let items: BTreeMap<i64, (String, i64)> = data["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["line_no"].as_i64().unwrap_or(0),
                (
                    i["sku"].as_str().unwrap_or("").to_string(),
                    i["quantity"].as_i64().unwrap_or(0),
                ),
            )
        })
        .collect();
    let mut errs = Vec::new();
    let carrier = opt_str(body, "carrier", &mut errs);
    let service = opt_str(body, "service", &mut errs);
    if !fo.pickup && carrier.is_none() {
        errs.push(FieldError::new(
            "/carrier",
            "is required (the parcel leaves with a carrier)",
        ));
    }
    let parcels_in = match &body["parcels"] {
        Json::Array(a) if !a.is_empty() => a.clone(),
        _ => {
            errs.push(FieldError::new("/parcels", "needs at least one parcel"));
            Vec::new()
        }
    };
    let order = db.execute(
        "SELECT doc FROM orders WHERE id = ?",
        params![fo.order_id.clone()],
    )?;
    let doc: Json = order
        .first()
        .and_then(|r| serde_json::from_str(&r.str("doc")).ok())
        .unwrap_or(Json::Null);
    let dest = doc["shipping_address"].clone();
    let fac = db.execute(
        "SELECT name FROM facilities WHERE id = ?",
        params![facility.clone()],
    )?;
    let fac_name = fac.first().map(|r| r.str("name")).unwrap_or_default();
    let mut packed: BTreeMap<i64, i64> = BTreeMap::new();
    let mut parcels = Vec::new();
    let mut total_cost: Option<(i64, String)> = None;
    for (i, p) in parcels_in.iter().enumerate() {
        let pp = format!("/parcels/{i}");
        let mut pitems = BTreeMap::new();
        for (k, it) in p["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match (it["line_no"].as_i64(), it["quantity"].as_i64()) {
                (Some(l), Some(q)) if q > 0 && items.contains_key(&l) => {
                    *pitems.entry(l).or_insert(0) += q;
                    *packed.entry(l).or_insert(0) += q;
                }
                _ => errs.push(FieldError::new(
                    format!("{pp}/items/{k}"),
                    "needs a line_no of this pack job and a positive quantity",
                )),
            }
        }
        if pitems.is_empty() {
            errs.push(FieldError::new(
                format!("{pp}/items"),
                "a parcel holds at least one item",
            ));
        }
        // Weight: as weighed, else from the catalog.
        let weight = match p["weight_grams"].as_i64() {
            Some(w) if w > 0 && w <= 1_000_000 => w,
            Some(_) => {
                errs.push(FieldError::new(
                    format!("{pp}/weight_grams"),
                    "must be 1 to 1,000,000",
                ));
                0
            }
            None => {
                let mut w = 0;
                for (l, q) in &pitems {
                    let sku = items.get(l).map(|x| x.0.clone()).unwrap_or_default();
                    w += q * db
                        .execute(
                            "SELECT weight_grams FROM products WHERE sku = ?",
                            params![sku],
                        )?
                        .first()
                        .map(|r| r.i64("weight_grams"))
                        .unwrap_or(0);
                }
                w.max(1)
            }
        };
        let dims = match (
            p["length_mm"].as_i64(),
            p["width_mm"].as_i64(),
            p["height_mm"].as_i64(),
        ) {
            (Some(a), Some(b), Some(c)) if a > 0 && b > 0 && c > 0 => Some((a, b, c)),
            (None, None, None) => None,
            _ => {
                errs.push(FieldError::new(
                    pp.clone(),
                    "length_mm, width_mm and height_mm go together, each positive",
                ));
                None
            }
        };
        let tracking = opt_str(p, "tracking_number", &mut errs);
        if !fo.pickup && tracking.is_none() {
            errs.push(FieldError::new(
                format!("{pp}/tracking_number"),
                "is required: the label's tracking number",
            ));
        }
        let country = dest["country_code"].as_str().unwrap_or("");
        let postal = dest["postal_code"].as_str().unwrap_or("");
        let mut cost = Json::Null;
        if let Some(c) = &carrier {
            let (zone, rates) = quote(db, country, postal, weight, Some(c), service.as_deref())?;
            if let Some(r) = rates.first() {
                cost = rate_json(r);
                let t = total_cost.get_or_insert((0, r.currency.clone()));
                t.0 += r.price_minor;
            } else {
                cost = json!({"error": format!("no rate for {c} {} to {country} {postal} (zone {}) at {weight} g",
                    service.clone().unwrap_or_default(), zone.unwrap_or_else(|| "none".into()))});
            }
        }
        let label = json!({"destination": dest, "weight_grams": weight, "carrier": carrier, "service": service,
                           "tracking_number": tracking, "cost": cost});
        let return_label = json!({"from": dest, "to": {"facility": facility, "name": fac_name},
                                  "carrier": carrier, "service": service, "reference": format!("RMA-{}-{}", fo.name, i + 1)});
        parcels.push(json!({"tracking_number": tracking, "carrier": carrier, "service": service, "weight_grams": weight,
                            "dims_mm": dims.map(|d| vec![d.0, d.1, d.2]),
                            "items": pitems.iter().map(|(l, q)| json!({"line_no": l, "quantity": q})).collect::<Vec<_>>(),
                            "label": label, "return_label": return_label}));
    }
    for (l, (_, q)) in &items {
        let got = packed.get(l).copied().unwrap_or(0);
        if got != *q && errs.is_empty() {
            errs.push(FieldError::new(
                "/parcels",
                format!("line {l}: {got} packed, {q} picked; every picked unit goes into a parcel"),
            ));
        }
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let mut new_data = data.clone();
    new_data["parcels"] = json!(parcels);
    new_data["cost"] = total_cost
        .as_ref()
        .and_then(|(m, c)| {
            crate::kernel::money::Currency::from_code(c)
                .map(|c| json!(crate::kernel::money::Money::new(*m, c)))
        })
        .unwrap_or(Json::Null);
    set_job(db, job_id, "closed", Some(&new_data), now)?;
    record_event(
        db,
        &fo.order_id,
        now,
        &format!("facility:{facility}"),
        "pack_job.closed",
        &format!("{}: packed in {} parcel(s)", fo.name, parcels.len()),
        json!({"fulfillment_order": fo.name, "parcels": parcels.len(), "carrier": carrier}),
    )?;
    let to = if fo.pickup { "customer" } else { "carrier" };
    open_job(
        db,
        &fo,
        "handover",
        json!({"to": to, "carrier": carrier, "service": service, "parcels": parcels, "cost": new_data["cost"],
               "items": data["items"]}),
        now,
    )?;
    Ok(json!({"job": job_view(db, job_id)?}))
}

/// Hands the parcels over (to the carrier, or to the customer): the shipment is shipped.
fn complete_handover(db: &dyn Db, job_id: &str, now: DateTime<Utc>) -> Result<(Json, FollowUp)> {
    let (_, fo_id, status, data, _) = load_job(db, job_id)?;
    if status == "handed_over" {
        return Err(Error::conflict("already handed over"));
    }
    if status != "open" && status != "in_progress" {
        return Err(Error::conflict(format!("the handover job is {status}")));
    }
    let parcels: Vec<ParcelIn> = data["parcels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| ParcelIn {
            tracking_number: p["tracking_number"].as_str().map(str::to_string),
            carrier: p["carrier"].as_str().map(str::to_string),
            service: p["service"].as_str().map(str::to_string),
            weight_grams: p["weight_grams"].as_i64(),
            dims_mm: p["dims_mm"].as_array().filter(|d| d.len() == 3).map(|d| {
                (
                    d[0].as_i64().unwrap_or(0),
                    d[1].as_i64().unwrap_or(0),
                    d[2].as_i64().unwrap_or(0),
                )
            }),
            items: p["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    (
                        i["line_no"].as_i64().unwrap_or(0),
                        i["quantity"].as_i64().unwrap_or(0),
                    )
                })
                .collect(),
            label: Some(p["label"].clone()),
            return_label: Some(p["return_label"].clone()),
        })
        .collect();
    let mut lines: BTreeMap<i64, i64> = BTreeMap::new();
    for p in &parcels {
        for (l, q) in &p.items {
            *lines.entry(*l).or_default() += q;
        }
    }
    let to_customer = data["to"] == "customer";
    let s = ShipIn {
        origin: "handover",
        external_ref: job_id.to_string(),
        carrier: data["carrier"].as_str().map(str::to_string),
        service: data["service"].as_str().map(str::to_string),
        tracking_number: parcels.first().and_then(|p| p.tracking_number.clone()),
        lines: Some(lines),
        parcels,
        cost_minor: data["cost"]["minor"].as_i64(),
        currency: data["cost"]["currency"].as_str().map(str::to_string),
        delivered: to_customer,
        ..Default::default()
    };
    let r = ship(db, &fo_id, &s, now)?;
    set_job(db, job_id, "handed_over", None, now)?;
    let mut follow = FollowUp::default();
    if matches!(r, Shipped::Booked { .. }) {
        follow.shipped.push(fo_id.clone());
    }
    let answer = json!({"job": job_view(db, job_id)?, "shipment": match r {
        Shipped::Booked { shipment_id, units, partial } => json!({"id": shipment_id, "units": units, "partial": partial}),
        Shipped::Duplicate { shipment_id } => json!({"id": shipment_id, "duplicate": true}),
    }});
    Ok((answer, follow))
}

/// Filters of the job list.
#[derive(Debug, Default)]
pub struct JobQuery {
    pub facility: Option<String>,
    pub kind: Option<String>,
    pub status: Option<String>,
}

/// Jobs, oldest first, filtered.
pub fn jobs_list(db: &dyn Db, q: &JobQuery) -> Result<Json> {
    let mut cond = String::from("1 = 1");
    let mut prm: Vec<Value> = Vec::new();
    for (k, col, allowed, value) in [
        ("facility", "j.facility_id", None, &q.facility),
        (
            "kind",
            "j.kind",
            Some(&["pick", "pack", "handover"][..]),
            &q.kind,
        ),
        (
            "status",
            "j.status",
            Some(&["open", "in_progress", "closed", "handed_over", "cancelled"][..]),
            &q.status,
        ),
    ] {
        if let Some(v) = value.clone() {
            if allowed.is_some_and(|a| !a.contains(&v.as_str())) {
                return Err(Error::invalid(vec![FieldError::new(
                    k,
                    format!("must be one of {}", allowed.unwrap_or_default().join(", ")),
                )]));
            }
            cond.push_str(&format!(" AND {col} = ?"));
            prm.push(Value::from(v));
        }
    }
    let r = db.execute(
        &format!("SELECT j.id FROM fulfillment_jobs j WHERE {cond} ORDER BY j.created_at, j.id LIMIT 500"),
        &prm,
    )?;
    let mut jobs = Vec::new();
    for x in r.iter() {
        jobs.push(job_view(db, &x.str("id"))?);
    }
    Ok(json!({"jobs": jobs}))
}

/// Handovers waiting for the carrier at a facility, grouped by carrier.
pub fn carrier_pickups(db: &dyn Db, facility: Option<String>) -> Result<Json> {
    let r = db.execute(
        "SELECT j.id FROM fulfillment_jobs j WHERE j.kind = 'handover' AND j.status IN ('open', 'in_progress')
           AND json_extract(j.data, '$.to') = 'carrier' AND (?1 IS NULL OR j.facility_id = ?1) ORDER BY j.created_at",
        params![facility],
    )?;
    let mut by: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for x in r.iter() {
        let j = job_view(db, &x.str("id"))?;
        let carrier = j["data"]["carrier"]
            .as_str()
            .unwrap_or("unknown")
            .to_string();
        by.entry(carrier).or_default().push(json!({"job_id": j["id"], "facility": j["facility"],
            "fulfillment_order": j["fulfillment_order"], "order_number": j["order_number"], "parcels": j["data"]["parcels"]}));
    }
    Ok(
        json!({"carriers": by.into_iter().map(|(c, h)| json!({"carrier": c, "parcels": h.iter().map(|x| x["parcels"].as_array().map(|a| a.len()).unwrap_or(0)).sum::<usize>(), "handovers": h})).collect::<Vec<_>>()}),
    )
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

fn job_for(db: &dyn Db, id: &str, kind: &str) -> Result<()> {
    let (k, ..) = load_job(db, id)?;
    if k != kind {
        return Err(Error::not_found(format!("no {kind} job {id}")));
    }
    Ok(())
}

/// Starts an open job (its fulfillment order goes in progress).
pub fn start_job(db: &dyn Db, id: &str, now: DateTime<Utc>) -> Result<Json> {
    transaction(db, |db| {
        let (kind, fo_id, status, ..) = load_job(db, id)?;
        if status != "open" {
            return Err(Error::conflict(format!("the {kind} job is {status}")));
        }
        set_job(db, id, "in_progress", None, now)?;
        set_status_from(db, &fo_id, &[FoStatus::Open], FoStatus::InProgress, now)?;
        job_view(db, id)
    })
}

/// Rates for a destination and weight; the query is checked first.
pub fn quote_view(
    db: &dyn Db,
    country: &str,
    postal: &str,
    weight: Option<i64>,
    carrier: Option<&str>,
    service: Option<&str>,
) -> Result<Json> {
    let mut errs = Vec::new();
    if country.len() != 2 {
        errs.push(FieldError::new(
            "country",
            "an ISO 3166-1 alpha-2 code is required",
        ));
    }
    if weight.is_none() {
        errs.push(FieldError::new(
            "weight_grams",
            "a positive integer is required",
        ));
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let (zone, rates) = quote(db, country, postal, weight.unwrap_or(0), carrier, service)?;
    Ok(
        json!({"zone": zone, "weight_grams": weight, "rates": rates.iter().map(rate_json).collect::<Vec<_>>()}),
    )
}

/// Checks a fulfillment center's `Waybill-Signature` with the secret its
/// facility names; the same answer for an unknown facility and a bad signature.
pub fn verify_center(
    db: &dyn Db,
    secrets: &Secrets,
    facility: &str,
    signature: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<()> {
    let f = db.execute(
        "SELECT secret_variable FROM facilities WHERE id = ?",
        params![facility],
    )?;
    let secret = f
        .first()
        .and_then(|r| r.opt_str("secret_variable"))
        .and_then(|v| (secrets.facility)(&v))
        .unwrap_or_default();
    if secret.is_empty()
        || !crate::kernel::signature::verify_timestamped(
            secret.as_bytes(),
            signature,
            body,
            now.timestamp(),
            300,
        )
    {
        return Err(Error::unauthorized(
            "missing or wrong Waybill-Signature for this facility",
        ));
    }
    Ok(())
}

/// A verified carrier tracking update, applied in one transaction.
pub fn carrier_update(db: &dyn Db, u: &tracking::Update, now: DateTime<Utc>) -> Result<Json> {
    let result = transaction(db, |db| apply_tracking(db, u, now))?;
    Ok(json!({"result": result, "tracking_number": u.tracking_number, "status": u.status.as_str()}))
}

/// Completes a pick, pack or handover job (in the caller's transaction).
pub fn complete_job(
    db: &dyn Db,
    kind: &str,
    id: &str,
    v: &Json,
    now: DateTime<Utc>,
) -> Result<(Json, FollowUp)> {
    job_for(db, id, kind)?;
    match kind {
        "pick" => complete_pick(db, id, v, now),
        "pack" => Ok((complete_pack(db, id, v, now)?, FollowUp::default())),
        _ => complete_handover(db, id, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::db::native::NativeDb;
    use crate::routing::allocation::{process_order, Trigger};

    use crate::testkit::{self, one, stock};

    fn setup() -> NativeDb {
        let db = testkit::db();
        for (id, kind, lat) in [
            ("wh", "warehouse", 53.5),
            ("wh2", "warehouse", 48.1),
            ("fc", "fulfillment_center", 52.5),
        ] {
            testkit::facility(&db, id, id, kind, "[]", lat, 10.0);
        }
        for sku in ["A", "B"] {
            testkit::product(&db, sku, 400, true);
        }
        db
    }

    fn order(db: &NativeDb, ext: &str, lines: &[(&str, i64)]) -> String {
        let v = json!({
            "external_id": ext, "currency": "EUR", "customer": {"email": "k@example.com"},
            "shipping_address": {"line1": "x", "city": "Hamburg", "postal_code": "20095", "country_code": "DE", "latitude": 53.5, "longitude": 10.0},
            "lines": lines.iter().map(|(s, q)| json!({"sku": s, "quantity": q, "unit_price": "1.00"})).collect::<Vec<_>>(),
        });
        let id = testkit::api_order(db, &v);
        process_order(db, &id, Trigger::Intake, Utc::now()).unwrap();
        id
    }

    fn fo_of(db: &NativeDb, order: &str, facility: &str) -> String {
        db.execute(
            "SELECT id FROM fulfillment_orders WHERE order_id = ? AND facility_id = ? ORDER BY name DESC",
            params![order, facility],
        )
        .unwrap()
        .first()
        .unwrap()
        .str("id")
    }

    fn job(db: &NativeDb, fo: &str, kind: &str) -> String {
        db.execute(
            "SELECT id FROM fulfillment_jobs WHERE fulfillment_order_id = ? AND kind = ?",
            params![fo, kind],
        )
        .unwrap()
        .first()
        .map(|r| r.str("id"))
        .unwrap_or_default()
    }

    fn b(db: &NativeDb, id: &str) -> Vec<crate::orders::model::Buckets> {
        orders_store::load_buckets(db, id).unwrap()
    }

    #[test]
    fn rate_lookups_at_the_bracket_edges() {
        let db = setup();
        transaction(&db, |db| {
            put_rates(db, &json!({
                "zones": [{"country": "DE", "postal_prefix": "", "zone": "de"}, {"country": "DE", "postal_prefix": "2", "zone": "de-north"},
                          {"country": "FR", "postal_prefix": "", "zone": "eu1"}],
                "rates": [
                    {"carrier": "dhl", "service": "parcel", "zone": "de", "max_weight_grams": 1000, "price": "4.99", "currency": "EUR"},
                    {"carrier": "dhl", "service": "parcel", "zone": "de", "max_weight_grams": 5000, "price": "6.99", "currency": "EUR"},
                    {"carrier": "dhl", "service": "parcel", "zone": "de-north", "max_weight_grams": 1000, "price": "3.99", "currency": "EUR"},
                    {"carrier": "dhl", "service": "parcel", "zone": "eu1", "max_weight_grams": 1000, "price": "9.99", "currency": "EUR"},
                    {"carrier": "ups", "service": "standard", "zone": "de", "max_weight_grams": 2000, "price": "5.50", "currency": "EUR"}
                ]}))
        })
        .unwrap();
        let price =
            |country: &str, postal: &str, w: i64, carrier: Option<&str>| -> Vec<(String, i64)> {
                quote(&db, country, postal, w, carrier, None)
                    .unwrap()
                    .1
                    .iter()
                    .map(|r| (r.carrier.clone(), r.price_minor))
                    .collect()
            };
        assert_eq!(
            price("DE", "10115", 1, Some("dhl")),
            vec![("dhl".into(), 499)]
        );
        assert_eq!(
            price("DE", "10115", 1000, Some("dhl")),
            vec![("dhl".into(), 499)],
            "the upper bound is inclusive"
        );
        assert_eq!(
            price("DE", "10115", 1001, Some("dhl")),
            vec![("dhl".into(), 699)],
            "one gram more: the next bracket"
        );
        assert_eq!(
            price("DE", "10115", 5000, Some("dhl")),
            vec![("dhl".into(), 699)]
        );
        assert!(
            price("DE", "10115", 5001, Some("dhl")).is_empty(),
            "above every bracket: no rate"
        );
        assert_eq!(
            price("DE", "20095", 1000, Some("dhl")),
            vec![("dhl".into(), 399)],
            "the longest postal prefix wins"
        );
        assert!(
            price("DE", "20095", 1001, Some("dhl")).is_empty(),
            "de-north has one bracket"
        );
        assert_eq!(price("FR", "75001", 500, None), vec![("dhl".into(), 999)]);
        assert_eq!(
            price("DE", "10115", 1500, None),
            vec![("ups".into(), 550), ("dhl".into(), 699)],
            "cheapest first"
        );
        assert_eq!(
            quote(&db, "US", "10001", 100, None, None).unwrap().0,
            None,
            "no zone"
        );
        let bad = transaction(&db, |db| {
            put_rates(
                db,
                &json!({"zones": [], "rates": [{"carrier": "x", "service": "y", "zone": "nowhere", "max_weight_grams": 0, "price": "-1", "currency": "EUR"}]}),
            )
        });
        assert_eq!(bad.unwrap_err().status(), 422);
        assert_eq!(
            rates_view(&db).unwrap()["rates"].as_array().unwrap().len(),
            5,
            "a refused table changes nothing"
        );
    }

    #[test]
    fn a_center_confirms_in_parts_and_a_repeat_changes_nothing() {
        let db = setup();
        stock(&db, "fc", "A", 5);
        let id = order(&db, "fc1", &[("A", 3)]);
        let fo = fo_of(&db, &id, "fc");
        assert_eq!(job(&db, &fo, "pick"), "", "a center gets no pick job");
        let first = json!({"order_number": "WB-100001", "ship_date": "2026-11-21", "tracking_number": "TRK1",
                           "carrier": "dhl", "shipping_method": "standard", "lines": [{"sku": "A", "quantity": 2}]});
        let r = transaction(&db, |db| {
            crate::flows::shipping::center_event(db, "fc", &first, Utc::now())
        })
        .unwrap();
        assert_eq!(
            (
                r["result"].as_str(),
                r["units"].as_i64(),
                r["partial"].as_bool()
            ),
            (Some("shipped"), Some(2), Some(true))
        );
        let again = transaction(&db, |db| {
            crate::flows::shipping::center_event(db, "fc", &first, Utc::now())
        })
        .unwrap();
        assert_eq!(again["result"], "duplicate");
        assert_eq!(one(&db, "SELECT COUNT(*) AS n FROM shipments"), 1);
        assert_eq!((b(&db, &id)[0].shipped, b(&db, &id)[0].released), (2, 1));
        assert_eq!(
            one(
                &db,
                "SELECT on_hand AS n FROM stock WHERE facility_id = 'fc'"
            ),
            3
        );
        assert_eq!(
            one(
                &db,
                "SELECT reserved AS n FROM stock WHERE facility_id = 'fc'"
            ),
            1
        );
        // Too many, or a part the order does not have: 422, nothing booked.
        let over = json!({"order_number": "WB-100001", "tracking_number": "TRK2", "lines": [{"sku": "A", "quantity": 2}]});
        assert_eq!(
            transaction(&db, |db| crate::flows::shipping::center_event(
                db,
                "fc",
                &over,
                Utc::now()
            ))
            .unwrap_err()
            .status(),
            422
        );
        let odd = json!({"order_number": "WB-100001", "tracking_number": "TRK2", "lines": [{"part_number": "NOPE", "quantity": 1}]});
        assert_eq!(
            transaction(&db, |db| crate::flows::shipping::center_event(
                db,
                "fc",
                &odd,
                Utc::now()
            ))
            .unwrap_err()
            .status(),
            422
        );
        let unknown = json!({"order_number": "WB-999", "tracking_number": "T"});
        assert_eq!(
            transaction(&db, |db| crate::flows::shipping::center_event(
                db,
                "fc",
                &unknown,
                Utc::now()
            ))
            .unwrap_err()
            .status(),
            404
        );
        // The rest (no lines: whatever is open).
        let rest = json!({"order_number": "WB-100001", "tracking_number": "TRK2"});
        let r = transaction(&db, |db| {
            crate::flows::shipping::center_event(db, "fc", &rest, Utc::now())
        })
        .unwrap();
        assert_eq!(
            (r["units"].as_i64(), r["partial"].as_bool()),
            (Some(1), Some(false))
        );
        let st = db
            .execute(
                "SELECT status, request_status FROM fulfillment_orders WHERE id = ?",
                params![fo],
            )
            .unwrap();
        assert_eq!(
            (
                st.first().unwrap().str("status"),
                st.first().unwrap().str("request_status")
            ),
            ("closed".into(), "accepted".into())
        );
        let o = db
            .execute(
                "SELECT status, fulfillment_status FROM orders WHERE id = ?",
                params![id.clone()],
            )
            .unwrap();
        assert_eq!(o.first().unwrap().str("fulfillment_status"), "fulfilled");
        assert_eq!(o.first().unwrap().str("status"), "completed");
        // Tracking: both parcels delivered → delivered.
        for (n, t) in [
            ("TRK1", Status::InTransit),
            ("TRK1", Status::Delivered),
            ("TRK2", Status::Delivered),
        ] {
            let u = Update {
                provider: "easypost",
                tracking_number: n.into(),
                carrier: None,
                status: t,
                raw_status: t.as_str().into(),
                message: None,
                occurred_at: Some(Utc::now()),
                public_url: None,
            };
            transaction(&db, |db| apply_tracking(db, &u, Utc::now())).unwrap();
        }
        assert_eq!(b(&db, &id)[0].delivered, 3);
        let o = db
            .execute(
                "SELECT fulfillment_status FROM orders WHERE id = ?",
                params![id],
            )
            .unwrap();
        assert_eq!(o.first().unwrap().str("fulfillment_status"), "delivered");
        let unknown = Update {
            provider: "shippo",
            tracking_number: "NOPE".into(),
            carrier: None,
            status: Status::InTransit,
            raw_status: "TRANSIT".into(),
            message: None,
            occurred_at: None,
            public_url: None,
        };
        assert_eq!(
            transaction(&db, |db| apply_tracking(db, &unknown, Utc::now())).unwrap(),
            "unknown_tracking_number"
        );
    }

    #[test]
    fn in_house_pick_pack_handover_and_short_picks() {
        for policy in ["reroute", "backorder"] {
            let db = setup();
            transaction(&db, |db| put_settings(db, &json!({"short_pick": policy}))).unwrap();
            stock(&db, "wh", "A", 3);
            stock(&db, "wh", "B", 1);
            stock(&db, "wh2", "A", 5);
            let id = order(&db, policy, &[("A", 3), ("B", 1)]);
            let fo = fo_of(&db, &id, "wh");
            let pick = job(&db, &fo, "pick");
            let v = job_view(&db, &pick).unwrap();
            assert_eq!(v["data"]["checklist"].as_array().unwrap().len(), 2);
            // One A is missing from the shelf.
            let r = transaction(&db, |db| {
                crate::flows::shipping::complete_job_step(
                    db,
                    "pick",
                    &pick,
                    &json!({"lines": [{"line_no": 1, "picked": 2}]}),
                    Utc::now(),
                )
            })
            .unwrap();
            assert_eq!(r["short"], 1);
            assert_eq!(
                one(
                    &db,
                    "SELECT on_hand AS n FROM stock WHERE facility_id = 'wh' AND sku = 'A'"
                ),
                2,
                "the missing unit leaves the count"
            );
            assert_eq!(
                one(
                    &db,
                    "SELECT reserved AS n FROM stock WHERE facility_id = 'wh' AND sku = 'A'"
                ),
                2
            );
            if policy == "reroute" {
                assert_eq!(
                    one(
                        &db,
                        "SELECT reserved AS n FROM stock WHERE facility_id = 'wh2' AND sku = 'A'"
                    ),
                    1,
                    "routed to the other warehouse"
                );
                assert_eq!(b(&db, &id)[0].backordered, 0);
            } else {
                assert_eq!(b(&db, &id)[0].backordered, 1, "waits for stock");
                assert_eq!(
                    one(
                        &db,
                        "SELECT reserved AS n FROM stock WHERE facility_id = 'wh2' AND sku = 'A'"
                    ),
                    0
                );
            }
            let pack = job(&db, &fo, "pack");
            assert!(!pack.is_empty());
            // Every picked unit must go into a parcel.
            let partial = json!({"carrier": "dhl", "parcels": [{"tracking_number": "P1", "items": [{"line_no": 1, "quantity": 1}]}]});
            assert_eq!(
                transaction(&db, |db| crate::flows::shipping::complete_job_step(
                    db,
                    "pack",
                    &pack,
                    &partial,
                    Utc::now()
                ))
                .unwrap_err()
                .status(),
                422
            );
            let packed = json!({"carrier": "dhl", "service": "parcel", "parcels": [
                {"tracking_number": "P1", "items": [{"line_no": 1, "quantity": 2}]},
                {"tracking_number": "P2", "weight_grams": 450, "length_mm": 300, "width_mm": 200, "height_mm": 100, "items": [{"line_no": 2, "quantity": 1}]}]});
            transaction(&db, |db| {
                crate::flows::shipping::complete_job_step(db, "pack", &pack, &packed, Utc::now())
            })
            .unwrap();
            let hand = job(&db, &fo, "handover");
            let pickups = carrier_pickups(&db, Some("wh".into())).unwrap();
            assert_eq!(pickups["carriers"][0]["carrier"], "dhl");
            assert_eq!(pickups["carriers"][0]["parcels"], 2);
            let h = job_view(&db, &hand).unwrap();
            assert_eq!(
                h["data"]["parcels"][0]["weight_grams"], 800,
                "from the catalog: 2 x 400 g"
            );
            assert_eq!(
                h["data"]["parcels"][0]["return_label"]["to"]["facility"],
                "wh"
            );
            transaction(&db, |db| {
                crate::flows::shipping::complete_job_step(
                    db,
                    "handover",
                    &hand,
                    &json!({}),
                    Utc::now(),
                )
            })
            .unwrap();
            assert_eq!(
                transaction(&db, |db| crate::flows::shipping::complete_job_step(
                    db,
                    "handover",
                    &hand,
                    &json!({}),
                    Utc::now()
                ))
                .unwrap_err()
                .status(),
                409
            );
            assert_eq!(b(&db, &id)[0].shipped, 2);
            assert_eq!(b(&db, &id)[1].shipped, 1);
            assert_eq!(one(&db, "SELECT COUNT(*) AS n FROM parcels"), 2);
            assert_eq!(
                one(
                    &db,
                    "SELECT on_hand AS n FROM stock WHERE facility_id = 'wh' AND sku = 'A'"
                ),
                0
            );
            assert_eq!(
                one(
                    &db,
                    "SELECT reserved AS n FROM stock WHERE facility_id = 'wh' AND sku = 'A'"
                ),
                0
            );
            assert_eq!(
                carrier_pickups(&db, None).unwrap()["carriers"]
                    .as_array()
                    .unwrap()
                    .len(),
                0
            );
            assert_eq!(
                one(
                    &db,
                    "SELECT COUNT(*) AS n FROM outbox WHERE topic = 'shipment.created'"
                ),
                1
            );
        }
    }

    #[test]
    fn click_and_collect_is_handed_to_the_customer_and_exceptions_are_action_items() {
        let db = setup();
        db.execute(
            "UPDATE facilities SET services = '[\"ship\", \"click_collect\"]' WHERE id = 'wh'",
            &[],
        )
        .unwrap();
        stock(&db, "wh", "A", 1);
        let v = json!({"external_id": "cc", "currency": "EUR", "pickup_location": "wh",
            "shipping_address": {"line1": "x", "city": "Hamburg", "country_code": "DE"},
            "lines": [{"sku": "A", "quantity": 1, "unit_price": "1.00"}]});
        let o = crate::intake::sources::api::map_order(&v, "", Utc::now()).unwrap();
        let id = transaction(&db, |db| {
            crate::flows::intake::place(db, &o, Utc::now(), "t")
        })
        .unwrap()
        .id;
        process_order(&db, &id, Trigger::Intake, Utc::now()).unwrap();
        let fo = fo_of(&db, &id, "wh");
        let pick = job(&db, &fo, "pick");
        transaction(&db, |db| {
            crate::flows::shipping::complete_job_step(db, "pick", &pick, &json!({}), Utc::now())
        })
        .unwrap();
        let pack = job(&db, &fo, "pack");
        // No carrier and no tracking number for a parcel the customer collects.
        transaction(&db, |db| {
            crate::flows::shipping::complete_job_step(
                db,
                "pack",
                &pack,
                &json!({"parcels": [{"items": [{"line_no": 1, "quantity": 1}]}]}),
                Utc::now(),
            )
        })
        .unwrap();
        let hand = job(&db, &fo, "handover");
        assert_eq!(job_view(&db, &hand).unwrap()["data"]["to"], "customer");
        assert_eq!(
            carrier_pickups(&db, None).unwrap()["carriers"]
                .as_array()
                .unwrap()
                .len(),
            0,
            "not a carrier pickup"
        );
        transaction(&db, |db| {
            crate::flows::shipping::complete_job_step(db, "handover", &hand, &json!({}), Utc::now())
        })
        .unwrap();
        assert_eq!(b(&db, &id)[0].delivered, 1, "handed over = delivered");
        let st = db
            .execute(
                "SELECT fulfillment_status FROM orders WHERE id = ?",
                params![id.clone()],
            )
            .unwrap();
        assert_eq!(st.first().unwrap().str("fulfillment_status"), "delivered");

        // A carrier exception on a shipped parcel is an action item until it moves on.
        stock(&db, "fc", "B", 1);
        let other = order(&db, "ex", &[("B", 1)]);
        let f2 = fo_of(&db, &other, "fc");
        let name = db
            .execute(
                "SELECT name FROM fulfillment_orders WHERE id = ?",
                params![f2],
            )
            .unwrap()
            .first()
            .unwrap()
            .str("name");
        transaction(&db, |db| {
            crate::flows::shipping::center_event(
                db,
                "fc",
                &json!({"fulfillment_order": name, "tracking_number": "EXC1"}),
                Utc::now(),
            )
        })
        .unwrap();
        let u = |st: Status, raw: &str| Update {
            provider: "aftership",
            tracking_number: "EXC1".into(),
            carrier: None,
            status: st,
            raw_status: raw.into(),
            message: Some("Address issue".into()),
            occurred_at: Some(Utc::now()),
            public_url: None,
        };
        transaction(&db, |db| {
            apply_tracking(db, &u(Status::Exception, "Exception_004"), Utc::now())
        })
        .unwrap();
        let items = action_items(&db).unwrap();
        assert_eq!(items["items"][0]["kind"], "exception");
        assert_eq!(items["items"][0]["tracking_number"], "EXC1");
        transaction(&db, |db| {
            apply_tracking(db, &u(Status::Delivered, "Delivered_001"), Utc::now())
        })
        .unwrap();
        assert_eq!(
            action_items(&db).unwrap()["items"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
    }
}
