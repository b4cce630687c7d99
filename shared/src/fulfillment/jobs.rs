//! In-house work: pick, pack and handover jobs, their lists and carrier
//! pickups.

use super::*;

pub(crate) fn load_job(db: &dyn Db, id: &str) -> Result<(String, String, String, Json, String)> {
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

/// Closes a pick job: `picked` per line (default: everything). Short units
/// leave the facility's stock (they are not there), leave the fulfillment
/// order, and are re-routed or backordered (setting `short_pick`). A pack job
/// opens for what was picked.
pub(crate) fn complete_pick(
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
    picked_counts(body, &wanted, &mut picked)?;
    let policy = short_pick_policy(db)?;
    let (short_total, short_lines) = book_short_picks(
        db, job_id, &fo, &facility, &checklist, &wanted, &picked, policy, now,
    )?;
    let picked_units: i64 = picked.values().sum();
    let mut new_data = data.clone();
    new_data["picked"] = json!(picked
        .iter()
        .map(|(l, q)| json!({"line_no": l, "quantity": q}))
        .collect::<Vec<_>>());
    new_data["short"] = json!(short_lines);
    fstore::set_job(db, job_id, "closed", Some(&new_data), now)?;
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

/// Units the picker could not find: the stock count goes down with the
/// reservation, they leave the fulfillment order, and the order line
/// backorders or re-routes them by the short-pick policy. Returns the units
/// short and the lines, for the timeline.
#[allow(clippy::too_many_arguments)]
fn book_short_picks(
    db: &dyn Db,
    job_id: &str,
    fo: &Fo,
    facility: &str,
    checklist: &[Json],
    wanted: &BTreeMap<i64, i64>,
    picked: &BTreeMap<i64, i64>,
    policy: ShortPick,
    now: DateTime<Utc>,
) -> Result<(i64, Vec<Json>)> {
    let mut short_total = 0;
    let mut short_lines = Vec::new();
    for (line, want) in wanted {
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
        stock::consume(db, &sku, facility, short, &m, now)?;
        fstore::remove_units(db, &fo.id, *line, short)?;
        lines::short_picked(
            db,
            &fo.order_id,
            *line,
            short,
            policy == ShortPick::Backorder,
        )?;
        short_lines.push(json!({"line_no": line, "sku": sku, "short": short}));
    }
    Ok((short_total, short_lines))
}

/// The picker's counts over the pick list (`wanted`); a line not named was
/// picked in full.
fn picked_counts(
    body: &Json,
    wanted: &BTreeMap<i64, i64>,
    picked: &mut BTreeMap<i64, i64>,
) -> Result<()> {
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
    Ok(())
}

/// Closes a pack job: parcels (weight, dimensions, items, tracking number),
/// a label record and a return label each, the price from the rate table;
/// opens the handover job (to the carrier, or to the customer for click & collect).
pub(crate) fn complete_pack(
    db: &dyn Db,
    job_id: &str,
    body: &Json,
    now: DateTime<Utc>,
) -> Result<Json> {
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
    let pk = Packing {
        items: &items,
        carrier: &carrier,
        service: &service,
        dest: &dest,
        facility: &facility,
        fac_name: &fac_name,
        fo: &fo,
    };
    for (i, p) in parcels_in.iter().enumerate() {
        parcels.push(pack_parcel(
            db,
            &pk,
            i,
            p,
            &mut errs,
            &mut packed,
            &mut total_cost,
        )?);
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
    fstore::set_job(db, job_id, "closed", Some(&new_data), now)?;
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

/// What every parcel of a pack job shares.
struct Packing<'a> {
    /// The picked items by line: (SKU, quantity).
    items: &'a BTreeMap<i64, (String, i64)>,
    carrier: &'a Option<String>,
    service: &'a Option<String>,
    dest: &'a Json,
    facility: &'a str,
    fac_name: &'a str,
    fo: &'a Fo,
}

/// One parcel of a pack job: its items, weight (as weighed, else from the
/// catalog), dimensions, tracking number, the shipping label priced from the
/// rate table and the return label. Field errors go to `errs`.
fn pack_parcel(
    db: &dyn Db,
    pk: &Packing<'_>,
    i: usize,
    p: &Json,
    errs: &mut Vec<FieldError>,
    packed: &mut BTreeMap<i64, i64>,
    total_cost: &mut Option<(i64, String)>,
) -> Result<Json> {
    let Packing {
        items,
        carrier,
        service,
        dest,
        facility,
        fac_name,
        fo,
    } = *pk;
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
    let tracking = opt_str(p, "tracking_number", errs);
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
        } else if carrier_is_priced(db, c)? {
            // The rate table prices this carrier but not this parcel: packing
            // it would ship at an unknown cost. The packer picks another
            // service or carrier, or the merchant adds the rate.
            errs.push(FieldError::new(
                pp.clone(),
                format!(
                    "no rate for {c} {} to {country} {postal} (zone {}) at {weight} g: add it to the rate table or choose another service or carrier",
                    service.clone().unwrap_or_default(),
                    zone.unwrap_or_else(|| "none".into())
                ),
            ));
        }
    }
    let label = json!({"destination": dest, "weight_grams": weight, "carrier": carrier, "service": service,
                       "tracking_number": tracking, "cost": cost});
    let return_label = json!({"from": dest, "to": {"facility": facility, "name": fac_name},
                              "carrier": carrier, "service": service, "reference": format!("RMA-{}-{}", fo.name, i + 1)});
    Ok(
        json!({"tracking_number": tracking, "carrier": carrier, "service": service, "weight_grams": weight,
                        "dims_mm": dims.map(|d| vec![d.0, d.1, d.2]),
                        "items": pitems.iter().map(|(l, q)| json!({"line_no": l, "quantity": q})).collect::<Vec<_>>(),
                        "label": label, "return_label": return_label}),
    )
}

/// Whether the rate table prices `carrier` at all (a carrier it does not list
/// ships unpriced: its cost is the carrier's invoice).
fn carrier_is_priced(db: &dyn Db, carrier: &str) -> Result<bool> {
    Ok(!db
        .execute(
            "SELECT 1 FROM shipping_rates WHERE carrier = ? LIMIT 1",
            params![carrier],
        )?
        .is_empty())
}

/// Hands the parcels over (to the carrier, or to the customer): the shipment is shipped.
pub(crate) fn complete_handover(
    db: &dyn Db,
    job_id: &str,
    now: DateTime<Utc>,
) -> Result<(Json, FollowUp)> {
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
    fstore::set_job(db, job_id, "handed_over", None, now)?;
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

pub(crate) fn job_for(db: &dyn Db, id: &str, kind: &str) -> Result<()> {
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
        fstore::set_job(db, id, "in_progress", None, now)?;
        set_status_from(db, &fo_id, &[FoStatus::Open], FoStatus::InProgress, now)?;
        job_view(db, id)
    })
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
