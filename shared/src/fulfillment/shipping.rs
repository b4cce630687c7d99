//! Shipments: [`ship`] is the one place a shipment is booked, and carrier
//! tracking ([`apply_tracking`]) delivers it.

use super::*;

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
pub(crate) fn unshipped(db: &dyn Db, fo_id: &str) -> Result<BTreeMap<i64, (String, i64)>> {
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
    let lines = lines_to_ship(&fo, &open, s.lines.as_ref())?;
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
    let items_text = insert_shipment(
        db,
        &shipment_id,
        &fo,
        s,
        &lines,
        &open,
        status,
        shipped_at,
        now,
    )?;
    let parcel_json = insert_parcels(db, &shipment_id, &fo, s, &lines, status, now)?;
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

/// The shipment row and its lines; each line's units move from released to
/// shipped and leave the facility's stock. Returns "q x SKU" per line.
#[allow(clippy::too_many_arguments)]
fn insert_shipment(
    db: &dyn Db,
    shipment_id: &str,
    fo: &Fo,
    s: &ShipIn,
    lines: &BTreeMap<i64, i64>,
    open: &BTreeMap<i64, (String, i64)>,
    status: &str,
    shipped_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    db.execute(
        "INSERT INTO shipments (id, order_id, fulfillment_order_id, facility_id, origin, external_ref, carrier, service,
            shipping_method, tracking_number, tracking_url, status, pickup, cost_minor, currency, shipped_at, delivered_at,
            created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?18)",
        params![shipment_id, fo.order_id.clone(), fo.id.clone(), fo.facility.clone(), s.origin, s.external_ref.clone(),
                s.carrier.clone(), s.service.clone(), s.shipping_method.clone(), s.tracking_number.clone(),
                s.tracking_url.clone(), status, fo.pickup, s.cost_minor, s.currency.clone(), ts(shipped_at),
                s.delivered.then(|| ts(now)), ts(now)],
    )?;
    let mut items_text = Vec::new();
    for (l, q) in lines {
        let sku = open.get(l).map(|x| x.0.clone()).unwrap_or_default();
        db.execute(
            "INSERT INTO shipment_lines (shipment_id, line_no, sku, quantity) VALUES (?, ?, ?, ?)",
            params![shipment_id, *l, sku.clone(), *q],
        )?;
        lines::ship(db, &fo.order_id, *l, *q, s.delivered)?;
        let m = stock::Movement {
            kind: "shipment",
            reason: format!("shipped with {}", fo.name),
            reference: shipment_id.to_string(),
            actor: "fulfillment",
        };
        stock::consume(db, &sku, &fo.facility, *q, &m, now)?;
        items_text.push(format!("{q} x {sku}"));
    }
    Ok(items_text)
}

/// The units a shipment carries: as confirmed, or everything still open.
fn lines_to_ship(
    fo: &Fo,
    open: &BTreeMap<i64, (String, i64)>,
    given: Option<&BTreeMap<i64, i64>>,
) -> Result<BTreeMap<i64, i64>> {
    Ok(match given {
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
    })
}

/// The shipment's parcels: as given, or one carrying everything under the
/// shipment's tracking number. Returns them for the outbox.
fn insert_parcels(
    db: &dyn Db,
    shipment_id: &str,
    fo: &Fo,
    s: &ShipIn,
    lines: &BTreeMap<i64, i64>,
    status: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Json>> {
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
            params![id.clone(), shipment_id, fo.order_id.clone(), p.tracking_number.clone(),
                    p.carrier.clone().or(s.carrier.clone()), p.service.clone().or(s.service.clone()), p.weight_grams,
                    p.dims_mm.map(|d| d.0), p.dims_mm.map(|d| d.1), p.dims_mm.map(|d| d.2),
                    Json::Array(items.clone()).to_string(), p.label.as_ref().map(|l| l.to_string()),
                    p.return_label.as_ref().map(|l| l.to_string()), status, ts(now)],
        )?;
        parcel_json.push(json!({"tracking_number": p.tracking_number, "carrier": p.carrier.clone().or(s.carrier.clone()),
                                "weight_grams": p.weight_grams, "items": items}));
    }
    Ok(parcel_json)
}

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

pub(crate) fn deliver_shipment(
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

/// A verified carrier tracking update, applied in one transaction.
pub fn carrier_update(db: &dyn Db, u: &tracking::Update, now: DateTime<Utc>) -> Result<Json> {
    let result = transaction(db, |db| apply_tracking(db, u, now))?;
    Ok(json!({"result": result, "tracking_number": u.tracking_number, "status": u.status.as_str()}))
}
