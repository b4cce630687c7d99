//! External fulfillment centers: the release request notify posts, the
//! request status, and the center's signed callbacks (accepted, rejected,
//! shipped, cancellation accepted or rejected).

use super::*;

/// The request an external fulfillment center receives for a released
/// fulfillment order: order number, shipping information, the center's part
/// numbers, shipping method and the licence key codes of the lines it ships.
pub fn fc_request(db: &dyn Db, released: &Json) -> Result<Json> {
    let order_id = released["order_id"].as_str().unwrap_or_default();
    let mut lines = Vec::new();
    for l in released["lines"].as_array().into_iter().flatten() {
        let keys: Vec<String> = db
            .execute(
                "SELECT key FROM license_keys WHERE order_id = ? AND line_no = ? AND delivered_at IS NOT NULL ORDER BY id",
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
            "SELECT k.sku, k.key, k.line_no FROM license_keys k WHERE k.order_id = ? AND k.delivered_at IS NOT NULL ORDER BY k.line_no, k.id",
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

pub(crate) fn set_request_status(
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

/// The fulfillment order a center's callback is about: by name
/// (`fulfillment_order`) or by order number at this facility.
pub(crate) fn fc_target(db: &dyn Db, facility: &str, v: &Json) -> Result<String> {
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

pub(crate) fn opt_str(v: &Json, k: &str, errs: &mut Vec<FieldError>) -> Option<String> {
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

/// `tracking_url`: a link customers follow from their shipping e-mail, so an
/// http(s) URL only (`javascript:` and the like are refused).
fn tracking_url(v: &Json, errs: &mut Vec<FieldError>) -> Option<String> {
    match &v["tracking_url"] {
        Json::Null => None,
        Json::String(s) if s.trim().is_empty() => None,
        Json::String(s) => match crate::kernel::url::link(s) {
            Ok(u) => Some(u),
            Err(e) => {
                errs.push(FieldError::new("/tracking_url", e));
                None
            }
        },
        _ => {
            errs.push(FieldError::new("/tracking_url", "must be an http(s) URL"));
            None
        }
    }
}

pub(crate) fn lines_of(
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
            let s = shipment_from_callback(db, &fo_id, body)?;
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

/// A center's shipment confirmation: tracking, ship date, lines and parcels
/// named by line number, the facility's part number or SKU.
fn shipment_from_callback(db: &dyn Db, fo_id: &str, body: &Json) -> Result<ShipIn> {
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
                errs.push(FieldError::new(
                    "/ship_date",
                    "must be a date (YYYY-MM-DD) or an RFC 3339 time",
                ));
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
        params![fo_id],
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
            return known
                .iter()
                .find(|k| k.2.as_deref() == Some(p))
                .map(|k| k.0);
        }
        l["sku"]
            .as_str()
            .and_then(|s| known.iter().find(|k| k.1 == s).map(|k| k.0))
    };
    let lines = lines_of(body, "lines", &mut errs, &resolve);
    let mut parcels = Vec::new();
    if let Some(a) = body["parcels"].as_array() {
        for (i, p) in a.iter().enumerate() {
            let mut pe = Vec::new();
            let items = lines_of(p, "items", &mut pe, &resolve).unwrap_or_default();
            for e in pe {
                errs.push(FieldError::new(
                    format!("/parcels/{i}{}", e.pointer),
                    e.detail,
                ));
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
        errs.push(FieldError::new(
            "/tracking_number",
            "a shipment needs a tracking_number or a shipment_id",
        ));
    }
    let s = ShipIn {
        origin: "fc_callback",
        external_ref,
        carrier: opt_str(body, "carrier", &mut errs),
        service: opt_str(body, "service", &mut errs),
        shipping_method: opt_str(body, "shipping_method", &mut errs),
        tracking_url: tracking_url(body, &mut errs),
        tracking_number: tracking,
        shipped_at,
        lines,
        parcels,
        ..Default::default()
    };
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    Ok(s)
}
