//! Returns (RMA): a request for shipped units with reasons and a resolution,

//! approval with a return label, receipt at a facility with inspection (good
//! units go back into stock, damaged ones are scrapped), and the refund of
//! exactly the received units' amounts (their capture shares: items and tax,
//! shipping when the request says so) through the order's gateway, with a
//! credit memo. A return whose resolution is `none` is received without a
//! refund (Medusa #4052); receiving restocks (Saleor never did).
//!
//! States: requested → approved → received (or rejected / cancelled before
//! receipt). `qty_returned` on the order lines follows the received units, so
//! `fulfillment_status` becomes partially_returned / returned.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::kernel::db::Db;
use crate::kernel::error::{Error, FieldError, Result};
use crate::kernel::time::ts;
use crate::orders::store::{self, enqueue, record_event};
use crate::params;

/// What a return leads to.
const RESOLUTIONS: [&str; 3] = ["refund", "exchange", "none"];

fn resolve_return(db: &dyn Db, key: &str) -> Result<crate::kernel::db::Rows> {
    let r = db.execute(
        "SELECT * FROM returns WHERE id = ? OR number = ?",
        params![key, key.to_ascii_uppercase()],
    )?;
    if r.is_empty() {
        return Err(Error::not_found(format!("no return '{key}'")));
    }
    Ok(r)
}

fn first(r: &crate::kernel::db::Rows, col: &str) -> String {
    r.first().map(|x| x.str(col)).unwrap_or_default()
}

/// Opens a return for shipped units. 422 for unknown lines, more units than
/// were shipped and not yet returned or requested, an unknown resolution.
pub fn request(
    db: &dyn Db,
    order_id: &str,
    v: &Json,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<String> {
    if !v.is_object() {
        return Err(Error::bad_request("the body must be a JSON object"));
    }
    let mut errs = FieldError::unknown_fields(
        v,
        &[
            "lines",
            "resolution",
            "reason",
            "refund_shipping",
            "note",
            "replacement",
        ],
    );
    let resolution = v["resolution"].as_str().unwrap_or("refund").to_string();
    if !RESOLUTIONS.contains(&resolution.as_str()) {
        errs.push(FieldError::new(
            "/resolution",
            "must be 'refund', 'exchange' or 'none'",
        ));
    }
    let refund_shipping = match &v["refund_shipping"] {
        Json::Null => false,
        Json::Bool(b) => *b,
        _ => {
            errs.push(FieldError::new("/refund_shipping", "must be true or false"));
            false
        }
    };
    let lines = db.execute(
        "SELECT line_no, sku, qty_shipped, qty_returned FROM order_lines WHERE order_id = ?",
        params![order_id],
    )?;
    // Units already on an open return count against what may be returned.
    let pending: BTreeMap<i64, i64> = db
        .execute(
            "SELECT rl.line_no, SUM(rl.quantity - rl.received) AS n FROM return_lines rl JOIN returns r ON r.id = rl.return_id
             WHERE r.order_id = ? AND r.status IN ('requested', 'approved') GROUP BY rl.line_no",
            params![order_id],
        )?
        .iter()
        .map(|r| (r.i64("line_no"), r.i64("n")))
        .collect();
    let wanted = returnable(v, &lines, &pending, &mut errs);
    // An exchange ships replacements: the same SKUs by default, or others named here.
    let replacement = replacement_items(db, v, &resolution, &wanted, &mut errs)?;
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let r = db.execute(
        "INSERT INTO returns (id, seq, number, order_id, status, resolution, refund_shipping, reason, note, replacement, created_at, updated_at)
         SELECT ?1, n, printf('RMA-%06d', n), ?2, 'requested', ?3, ?4, ?5, ?6, ?7, ?8, ?8
         FROM (SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM returns) RETURNING number",
        params![id.clone(), order_id, resolution.clone(), refund_shipping, v["reason"].as_str(), v["note"].as_str(),
                (!replacement.is_empty()).then(|| Json::Array(replacement.clone()).to_string()), ts(now)],
    )?;
    let number = first(&r, "number");
    for (n, sku, q, reason) in &wanted {
        db.execute(
            "INSERT INTO return_lines (return_id, line_no, sku, quantity, reason) VALUES (?, ?, ?, ?, ?)",
            params![id.clone(), *n, sku.clone(), *q, reason.clone()],
        )?;
    }
    let units: i64 = wanted.iter().map(|w| w.2).sum();
    record_event(
        db,
        order_id,
        now,
        actor,
        "return.requested",
        &format!("Return {number} requested: {units} unit(s), resolution {resolution}"),
        json!({"return": number, "units": units, "resolution": resolution,
               "lines": wanted.iter().map(|w| json!({"line_no": w.0, "sku": w.1, "quantity": w.2, "reason": w.3})).collect::<Vec<_>>()}),
    )?;
    Ok(id)
}

/// The lines a return asks for, each within what shipped and is not yet
/// returned or on an open return (`pending`): (line, SKU, quantity, reason).
fn returnable(
    v: &Json,
    lines: &crate::kernel::db::Rows,
    pending: &BTreeMap<i64, i64>,
    errs: &mut Vec<FieldError>,
) -> Vec<(i64, String, i64, Option<String>)> {
    let mut wanted: Vec<(i64, String, i64, Option<String>)> = Vec::new();
    match &v["lines"] {
        Json::Array(a) if !a.is_empty() => {
            for (i, l) in a.iter().enumerate() {
                let p = format!("/lines/{i}");
                let (Some(n), Some(q)) = (l["line_no"].as_i64(), l["quantity"].as_i64()) else {
                    errs.push(FieldError::new(p, "needs an integer line_no and quantity"));
                    continue;
                };
                let Some(row) = lines.iter().find(|r| r.i64("line_no") == n) else {
                    errs.push(FieldError::new(
                        format!("{p}/line_no"),
                        format!("the order has no line {n}"),
                    ));
                    continue;
                };
                let open = row.i64("qty_shipped")
                    - row.i64("qty_returned")
                    - pending.get(&n).copied().unwrap_or(0)
                    - wanted.iter().filter(|w| w.0 == n).map(|w| w.2).sum::<i64>();
                if q <= 0 || q > open {
                    errs.push(FieldError::new(
                        format!("{p}/quantity"),
                        format!("{q} asked, {open} shipped and not yet returned or on a return"),
                    ));
                    continue;
                }
                wanted.push((
                    n,
                    row.str("sku"),
                    q,
                    l["reason"].as_str().map(|s| s.chars().take(500).collect()),
                ));
            }
        }
        _ => errs.push(FieldError::new(
            "/lines",
            "name at least one line: [{\"line_no\", \"quantity\", \"reason\"}]",
        )),
    }
    wanted
}

/// The replacement an exchange ships: the returned SKUs by default, or the
/// products named.
fn replacement_items(
    db: &dyn Db,
    v: &Json,
    resolution: &str,
    wanted: &[(i64, String, i64, Option<String>)],
    errs: &mut Vec<FieldError>,
) -> Result<Vec<Json>> {
    let mut replacement: Vec<Json> = Vec::new();
    if resolution == "exchange" {
        match &v["replacement"] {
            Json::Null => {
                replacement = wanted
                    .iter()
                    .map(|w| json!({"sku": w.1, "quantity": w.2}))
                    .collect();
            }
            Json::Array(a) if !a.is_empty() => {
                for (i, x) in a.iter().enumerate() {
                    let p = format!("/replacement/{i}");
                    match (x["sku"].as_str(), x["quantity"].as_i64()) {
                        (Some(sku), Some(q)) if q > 0 && q <= 1_000_000 => {
                            if db
                                .execute("SELECT 1 FROM products WHERE sku = ?", params![sku])?
                                .is_empty()
                            {
                                errs.push(FieldError::new(
                                    format!("{p}/sku"),
                                    format!("no product '{sku}'"),
                                ));
                            }
                            replacement.push(json!({"sku": sku, "quantity": q}));
                        }
                        _ => errs.push(FieldError::new(p, "needs a sku and a positive quantity")),
                    }
                }
            }
            _ => errs.push(FieldError::new(
                "/replacement",
                "must be a non-empty array of {sku, quantity}",
            )),
        }
        // Like for like: an exchange replaces at most what comes back (another
        // size or colour, never more units).
        let returned: i64 = wanted.iter().map(|w| w.2).sum();
        let asked = replacement
            .iter()
            .map(|r| r["quantity"].as_i64().unwrap_or(0))
            .fold(0i64, |a, b| a.saturating_add(b));
        if asked > returned {
            errs.push(FieldError::new(
                "/replacement",
                format!(
                    "an exchange replaces at most the {returned} unit(s) returned ({asked} asked)"
                ),
            ));
        }
    } else if !v["replacement"].is_null() {
        errs.push(FieldError::new(
            "/replacement",
            "only an exchange ships a replacement",
        ));
    }
    Ok(replacement)
}

/// Approves a return: the facility it goes back to and the return label
/// (from the customer's address to the facility).
pub fn approve(db: &dyn Db, key: &str, v: &Json, actor: &str, now: DateTime<Utc>) -> Result<()> {
    let r = resolve_return(db, key)?;
    let (id, order_id, status) = (first(&r, "id"), first(&r, "order_id"), first(&r, "status"));
    if status != "requested" {
        return Err(Error::conflict(format!("the return is {status}")));
    }
    let facility = match v["facility"].as_str() {
        Some(f) => f.to_string(),
        // Default: where most of the returned units were shipped from.
        None => db
            .execute(
                "SELECT s.facility_id FROM shipments s JOIN shipment_lines sl ON sl.shipment_id = s.id
                 JOIN return_lines rl ON rl.line_no = sl.line_no AND rl.return_id = ?
                 WHERE s.order_id = ? GROUP BY s.facility_id ORDER BY SUM(sl.quantity) DESC LIMIT 1",
                params![id.clone(), order_id.clone()],
            )?
            .first()
            .map(|x| x.str("facility_id"))
            .ok_or_else(|| Error::invalid(vec![FieldError::new("/facility", "is required: no shipment names where the units came from")]))?,
    };
    let f = db.execute(
        "SELECT name FROM facilities WHERE id = ?",
        params![facility.clone()],
    )?;
    let Some(fac) = f.first() else {
        return Err(Error::invalid(vec![FieldError::new(
            "/facility",
            format!("no facility '{facility}'"),
        )]));
    };
    let doc = db.execute(
        "SELECT number, doc FROM orders WHERE id = ?",
        params![order_id.clone()],
    )?;
    let order_doc: Json = doc
        .first()
        .and_then(|d| serde_json::from_str(&d.str("doc")).ok())
        .unwrap_or(Json::Null);
    let number = first(&r, "number");
    let label = json!({"reference": number, "from": order_doc["shipping_address"],
                       "to": {"facility": facility, "name": fac.str("name")},
                       "carrier": v["carrier"].as_str(), "tracking_number": v["tracking_number"].as_str()});
    db.execute(
        "UPDATE returns SET status = 'approved', facility_id = ?, return_label = ?, approved_at = ?, updated_at = ? WHERE id = ?",
        params![facility.clone(), label.to_string(), ts(now), ts(now), id.clone()],
    )?;
    record_event(
        db,
        &order_id,
        now,
        actor,
        "return.approved",
        &format!("Return {number} approved: back to {facility}"),
        json!({"return": number, "facility": facility}),
    )?;
    let email = db.execute(
        "SELECT customer_email, customer_name, number FROM orders WHERE id = ?",
        params![order_id.clone()],
    )?;
    enqueue(
        db,
        "return.approved",
        Some(&order_id),
        json!({"order_id": order_id, "number": email.first().map(|e| e.str("number")), "return": number,
               "email": email.first().and_then(|e| e.opt_str("customer_email")),
               "customer_name": email.first().and_then(|e| e.opt_str("customer_name")), "return_label": label}),
        now,
    )?;
    Ok(())
}

/// Rejects or cancels a return before it is received.
pub fn close_unreceived(
    db: &dyn Db,
    key: &str,
    status: &str,
    v: &Json,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let r = resolve_return(db, key)?;
    let (id, order_id, current) = (first(&r, "id"), first(&r, "order_id"), first(&r, "status"));
    if !matches!(current.as_str(), "requested" | "approved") {
        return Err(Error::conflict(format!("the return is {current}")));
    }
    db.execute(
        "UPDATE returns SET status = ?, note = COALESCE(?, note), updated_at = ? WHERE id = ?",
        params![status, v["reason"].as_str(), ts(now), id],
    )?;
    record_event(
        db,
        &order_id,
        now,
        actor,
        &format!("return.{status}"),
        &format!("Return {} {status}", first(&r, "number")),
        json!({"return": first(&r, "number"), "reason": v["reason"].as_str()}),
    )?;
    Ok(())
}

/// Receives returned units at the return's facility with their condition:
/// `good` goes back into stock (a `return` movement; waiting backorders may
/// follow), `damaged` is scrapped. The refund (resolution `refund`) is exactly
/// the received units' capture shares, plus shipping when the return says so
/// and nothing of the order is left shipped and unreturned.
/// The inspection step of the return-receipt flow (`flows::returns`): answers
/// what the flow must do next (refund, exchange) in a [`Receipt`].
pub fn inspect(
    db: &dyn Db,
    key: &str,
    v: &Json,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Receipt> {
    let r = resolve_return(db, key)?;
    let (id, order_id, status) = (first(&r, "id"), first(&r, "order_id"), first(&r, "status"));
    if status != "approved" {
        return Err(Error::conflict(format!(
            "the return is {status}; it is received once approved"
        )));
    }
    let facility = first(&r, "facility_id");
    let lines = db.execute(
        "SELECT line_no, sku, quantity, received FROM return_lines WHERE return_id = ?",
        params![id.clone()],
    )?;
    let got = received_lines(v, &lines)?;
    let mut restocked = Vec::new();
    let mut units = 0;
    let mut refund_lines: BTreeMap<i64, i64> = BTreeMap::new();
    for (n, sku, q, good) in &got {
        units += q;
        *refund_lines.entry(*n).or_default() += q;
        db.execute(
            &format!(
                "UPDATE return_lines SET received = received + ?1, {} = {} + ?1 WHERE return_id = ?2 AND line_no = ?3",
                if *good { "restocked" } else { "scrapped" },
                if *good { "restocked" } else { "scrapped" }
            ),
            params![*q, id.clone(), *n],
        )?;
        crate::orders::lines::returned(db, &order_id, *n, *q)?;
        if *good {
            let m = crate::inventory::stock::Movement {
                kind: "return",
                reason: "returned in good condition".into(),
                reference: first(&r, "number"),
                actor,
            };
            crate::inventory::stock::restock(db, sku, &facility, *q, &m, now)?;
            restocked.push(sku.clone());
        }
    }
    let all_in: bool = db
        .execute(
            "SELECT COALESCE(SUM(quantity - received), 0) AS n FROM return_lines WHERE return_id = ?",
            params![id.clone()],
        )?
        .first()
        .map(|x| x.i64("n") == 0)
        .unwrap_or(true);
    let number = first(&r, "number");
    let restocked_units: i64 = got.iter().filter(|g| g.3).map(|g| g.2).sum();
    record_event(
        db,
        &order_id,
        now,
        actor,
        "return.received",
        &format!("Return {number}: {units} unit(s) received at {facility}, {restocked_units} restocked, {} scrapped", units - restocked_units),
        json!({"return": number, "units": units, "restocked": restocked_units, "scrapped": units - restocked_units, "facility": facility}),
    )?;
    // The refund: exactly the received units' capture shares.
    let mut refund = None;
    if first(&r, "resolution") == "refund" {
        let nothing_left_out: bool = db
            .execute(
                "SELECT COALESCE(SUM(qty_shipped - qty_returned), 0) AS n FROM order_lines WHERE order_id = ?",
                params![order_id.clone()],
            )?
            .first()
            .map(|x| x.i64("n") == 0)
            .unwrap_or(false);
        refund = Some(RefundDue {
            lines: refund_lines,
            shipping: r
                .first()
                .map(|x| x.i64("refund_shipping") != 0)
                .unwrap_or(false)
                && nothing_left_out,
            reason: format!("return {number}"),
        });
    }
    // The exchange: a linked replacement order, already paid (no second payment
    // for the same value), routed like any order. Once per return, when the
    // units received cover it.
    let received: i64 = db
        .execute(
            "SELECT COALESCE(SUM(received), 0) AS n FROM return_lines WHERE return_id = ?",
            params![id.clone()],
        )?
        .first()
        .map(|x| x.i64("n"))
        .unwrap_or(0);
    let (exchange, order_number) = match exchange_order(db, &r, &order_id, &number, received)? {
        Exchange::Place(body, n) => (Some(body), n),
        Exchange::Waiting(short) => {
            record_event(
                db,
                &order_id,
                now,
                actor,
                "return.exchange_waiting",
                &format!(
                    "Return {number}: the replacement ships when {short} more unit(s) are received"
                ),
                json!({"return": number, "units_to_receive": short}),
            )?;
            (None, String::new())
        }
        Exchange::None => (None, String::new()),
    };
    Ok(Receipt {
        id,
        order_id,
        number,
        order_number,
        facility,
        units,
        restocked_units,
        all_in,
        restocked,
        refund,
        exchange,
    })
}

/// The units received, validated against the return's open quantities:
/// (line, SKU, quantity, good condition). No lines: everything expected, good.
fn received_lines(
    v: &Json,
    lines: &crate::kernel::db::Rows,
) -> Result<Vec<(i64, String, i64, bool)>> {
    let mut errs = Vec::new();
    let mut got: Vec<(i64, String, i64, bool)> = Vec::new();
    let given = match &v["lines"] {
        Json::Null => lines
            .iter()
            .map(|l| json!({"line_no": l.i64("line_no"), "quantity": l.i64("quantity") - l.i64("received"), "condition": "good"}))
            .collect(),
        Json::Array(a) => a.clone(),
        _ => {
            errs.push(FieldError::new("/lines", "must be an array"));
            Vec::new()
        }
    };
    for (i, l) in given.iter().enumerate() {
        let p = format!("/lines/{i}");
        let cond = l["condition"].as_str().unwrap_or("good");
        if !matches!(cond, "good" | "damaged") {
            errs.push(FieldError::new(
                format!("{p}/condition"),
                "must be 'good' or 'damaged'",
            ));
        }
        let (Some(n), Some(q)) = (l["line_no"].as_i64(), l["quantity"].as_i64()) else {
            errs.push(FieldError::new(p, "needs an integer line_no and quantity"));
            continue;
        };
        let Some(row) = lines.iter().find(|x| x.i64("line_no") == n) else {
            errs.push(FieldError::new(
                format!("{p}/line_no"),
                format!("line {n} is not on this return"),
            ));
            continue;
        };
        let open = row.i64("quantity")
            - row.i64("received")
            - got.iter().filter(|g| g.0 == n).map(|g| g.2).sum::<i64>();
        if q <= 0 || q > open {
            errs.push(FieldError::new(
                format!("{p}/quantity"),
                format!("{q} received, {open} expected"),
            ));
            continue;
        }
        got.push((n, row.str("sku"), q, cond == "good"));
    }
    if got.is_empty() && errs.is_empty() {
        errs.push(FieldError::new("/lines", "nothing to receive"));
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    Ok(got)
}

/// What a receipt does for an exchange.
enum Exchange {
    /// No exchange, or its replacement was placed already.
    None,
    /// Fewer units received than the replacement holds: this many to come.
    Waiting(i64),
    /// The replacement order to place (its API body), and the original order's number.
    Place(Json, String),
}

/// The replacement order an exchange places once the units `received` cover it.
fn exchange_order(
    db: &dyn Db,
    r: &crate::kernel::db::Rows,
    order_id: &str,
    number: &str,
    received: i64,
) -> Result<Exchange> {
    if first(r, "resolution") != "exchange"
        || r.first()
            .and_then(|x| x.opt_str("replacement_order_id"))
            .is_some()
    {
        return Ok(Exchange::None);
    }
    let o = db.execute(
        "SELECT number, channel, currency, doc FROM orders WHERE id = ?",
        params![order_id],
    )?;
    let o = o.first().ok_or_else(|| Error::not_found("no order"))?;
    let doc: Json = serde_json::from_str(&o.str("doc")).unwrap_or(Json::Null);
    let items: Vec<Json> = r
        .first()
        .and_then(|x| x.opt_str("replacement"))
        .and_then(|x| serde_json::from_str::<Vec<Json>>(&x).ok())
        .unwrap_or_default();
    let units: i64 = items
        .iter()
        .map(|i| i["quantity"].as_i64().unwrap_or(0))
        .sum();
    if received < units {
        return Ok(Exchange::Waiting(units - received));
    }
    let names: BTreeMap<String, String> = db
        .execute(
            "SELECT sku, name FROM order_lines WHERE order_id = ?",
            params![order_id],
        )?
        .iter()
        .map(|l| (l.str("sku"), l.str("name")))
        .collect();
    let method = doc["shipping_lines_minor"][0]["method"]
        .as_str()
        .unwrap_or("standard")
        .to_string();
    let body = json!({
        "external_id": format!("exchange-{number}"), "number": format!("{}-X", o.str("number")),
        "channel": o.str("channel"), "currency": o.str("currency"),
        "customer": doc["customer"], "shipping_address": doc["shipping_address"], "billing_address": doc["billing_address"],
        "lines": items.iter().map(|i| json!({"sku": i["sku"], "quantity": i["quantity"], "unit_price": "0",
            "name": names.get(i["sku"].as_str().unwrap_or("")).cloned().unwrap_or_else(|| i["sku"].as_str().unwrap_or("").to_string())})).collect::<Vec<_>>(),
        "shipping_lines": [{"method": method, "title": "Exchange", "price": "0"}],
        "financial_status": "paid", "tags": ["exchange"],
        "note": format!("Replacement for return {number} of order {}", o.str("number")),
    });
    Ok(Exchange::Place(body, o.str("number")))
}

/// The refund of a receipt was booked.
pub fn refund_booked(db: &dyn Db, rc: &Receipt, tx: &str) -> Result<()> {
    db.execute(
        "UPDATE returns SET refund_transaction_id = ? WHERE id = ?",
        params![tx, rc.id.clone()],
    )?;
    Ok(())
}

/// Nothing was captured (a pending order): received, the refund is the operator's.
pub fn refund_skipped(
    db: &dyn Db,
    rc: &Receipt,
    why: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    record_event(
        db,
        &rc.order_id,
        now,
        actor,
        "return.refund_skipped",
        &format!("Return {}: no refund ({why})", rc.number),
        json!({"return": rc.number}),
    )
}

/// The exchange's replacement order was placed.
pub fn exchanged(
    db: &dyn Db,
    rc: &Receipt,
    replacement_id: &str,
    replacement_number: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let number = &rc.number;
    db.execute(
        "UPDATE returns SET replacement_order_id = ? WHERE id = ?",
        params![replacement_id, rc.id.clone()],
    )?;
    record_event(
        db,
        &rc.order_id,
        now,
        actor,
        "return.exchanged",
        &format!("Return {number}: replacement order {replacement_number} created (no charge)"),
        json!({"return": number, "replacement_order_id": replacement_id, "replacement_number": replacement_number}),
    )?;
    record_event(
        db,
        replacement_id,
        now,
        actor,
        "order.exchange_of",
        &format!(
            "Replacement for return {number} of order {}",
            rc.order_number
        ),
        json!({"return": number, "original_order_id": rc.order_id}),
    )
}

/// The last step of a receipt: the return's status, the outbox, the order's statuses.
pub fn finish(
    db: &dyn Db,
    rc: Receipt,
    refund: Json,
    replacement_order: Option<String>,
    now: DateTime<Utc>,
) -> Result<Received> {
    let Receipt {
        id,
        order_id,
        number,
        facility,
        units,
        restocked_units,
        all_in,
        restocked,
        ..
    } = rc;
    db.execute(
        "UPDATE returns SET status = ?, received_at = ?, updated_at = ? WHERE id = ?",
        params![
            if all_in { "received" } else { "approved" },
            ts(now),
            ts(now),
            id.clone()
        ],
    )?;

    enqueue(
        db,
        "return.received",
        Some(&order_id),
        json!({"order_id": order_id, "return": number, "units": units, "restocked": restocked_units, "facility": facility,
               "refund_transaction_id": refund}),
        now,
    )?;
    store::refresh_status(db, &order_id, now)?;
    Ok(Received {
        restocked,
        replacement_order,
    })
}

/// What the inspection of a return leaves for the return-receipt flow.
#[derive(Debug)]
pub struct Receipt {
    pub id: String,
    pub order_id: String,
    /// The return's number (`RMA-...`).
    pub number: String,
    /// The original order's number.
    pub order_number: String,
    pub facility: String,
    pub units: i64,
    pub restocked_units: i64,
    /// Every unit of the return is in.
    pub all_in: bool,
    pub restocked: Vec<String>,
    /// The refund due (resolution `refund`).
    pub refund: Option<RefundDue>,
    /// The replacement order's API document (resolution `exchange`, once per return).
    pub exchange: Option<Json>,
}

/// A refund a receipt asks for: units per line (at their capture shares) and
/// whether shipping is refunded.
#[derive(Debug)]
pub struct RefundDue {
    pub lines: BTreeMap<i64, i64>,
    pub shipping: bool,
    pub reason: String,
}

/// What receiving a return set in motion.
#[derive(Debug, Default)]
pub struct Received {
    /// SKUs back in stock (waiting backorders may be served).
    pub restocked: Vec<String>,
    /// The exchange's replacement order (to route).
    pub replacement_order: Option<String>,
}

pub fn view(db: &dyn Db, key: &str) -> Result<Json> {
    let r = resolve_return(db, key)?;
    let x = r.first().ok_or_else(|| Error::not_found("no return"))?;
    let id = x.str("id");
    let lines: Vec<Json> = db
        .execute("SELECT * FROM return_lines WHERE return_id = ? ORDER BY line_no", params![id.clone()])?
        .iter()
        .map(|l| json!({"line_no": l.i64("line_no"), "sku": l.str("sku"), "quantity": l.i64("quantity"), "reason": l.opt_str("reason"),
                        "received": l.i64("received"), "restocked": l.i64("restocked"), "scrapped": l.i64("scrapped")}))
        .collect();
    let refund = match x.opt_str("refund_transaction_id") {
        Some(t) => db
            .execute(
                "SELECT status, amount_minor, currency FROM payment_transactions WHERE id = ?",
                params![t.clone()],
            )?
            .first()
            .map(|p| {
                let amount = crate::kernel::money::Currency::from_code(&p.str("currency"))
                    .map(|c| {
                        serde_json::to_value(crate::kernel::money::Money::new(
                            p.i64("amount_minor"),
                            c,
                        ))
                        .unwrap_or(Json::Null)
                    })
                    .unwrap_or(Json::Null);
                json!({"transaction_id": t, "status": p.str("status"), "amount": amount})
            }),
        None => None,
    };
    Ok(
        json!({"id": id, "number": x.str("number"), "order_id": x.str("order_id"), "status": x.str("status"),
              "resolution": x.str("resolution"), "refund_shipping": x.i64("refund_shipping") != 0, "reason": x.opt_str("reason"),
              "facility": x.opt_str("facility_id"),
              "return_label": x.opt_str("return_label").and_then(|l| serde_json::from_str::<Json>(&l).ok()),
              "refund": refund, "note": x.opt_str("note"), "lines": lines,
              "replacement": x.opt_str("replacement").and_then(|l| serde_json::from_str::<Json>(&l).ok()),
              "replacement_order_id": x.opt_str("replacement_order_id"),
              "created_at": x.str("created_at"), "approved_at": x.opt_str("approved_at"), "received_at": x.opt_str("received_at")}),
    )
}

pub fn list_for_order(db: &dyn Db, order_id: &str) -> Result<Json> {
    let ids: Vec<String> = db
        .execute(
            "SELECT id FROM returns WHERE order_id = ? ORDER BY created_at",
            params![order_id],
        )?
        .iter()
        .map(|r| r.str("id"))
        .collect();
    let mut out = Vec::new();
    for id in ids {
        out.push(view(db, &id)?);
    }
    Ok(json!({"order_id": order_id, "returns": out}))
}

#[cfg(test)]
mod tests;
