//! Order changes after sale and cancellations (DESIGN §3, §5).

//!
//! - `PATCH /api/orders/{key}`: shipping address and shipping method before
//!   release (what was allocated is given back and routed again at once);
//!   after a release, 409 with the fulfillment orders that hold it. A note
//!   may change at any time.
//! - `POST /api/orders/{key}/cancel` (whole order, or `lines`): units not
//!   yet in a fulfillment order are cancelled; allocated units give back their
//!   reservation; released units at an in-house facility whose picking has
//!   not started leave the fulfillment order (its pick list follows); units
//!   at an external center get a cancellation request (the center's
//!   `cancellation_accepted` callback cancels them). Picked, packed, shipped
//!   or delivered units cannot be cancelled (409; return them instead). The
//!   money follows exactly: captured units now cancelled are refunded at their
//!   capture shares, and the authorization no longer needed is voided.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::fulfillment::status::{set_status, set_status_from, FoStatus};
use crate::fulfillment::store as fstore;
use crate::kernel::db::Db;
use crate::kernel::error::{Error, FieldError, Result};
use crate::orders::lines;
use crate::orders::store::{self, enqueue, record_event};
use crate::params;

mod cancel;
pub use cancel::*;

fn order_row(db: &dyn Db, order_id: &str) -> Result<crate::kernel::db::Rows> {
    let r = db.execute(
        "SELECT id, number, status, currency, doc FROM orders WHERE id = ?",
        params![order_id],
    )?;
    if r.is_empty() {
        return Err(Error::not_found("no such order"));
    }
    Ok(r)
}

/// Fulfillment orders released (to a facility or already shipping).
fn released_fos(db: &dyn Db, order_id: &str) -> Result<Vec<(String, String, String)>> {
    Ok(db
        .execute(
            "SELECT name, facility_id, status FROM fulfillment_orders WHERE order_id = ? AND status IN ('open', 'in_progress', 'closed')
             ORDER BY name",
            params![order_id],
        )?
        .iter()
        .map(|r| (r.str("name"), r.str("facility_id"), r.str("status")))
        .collect())
}

/// Applies a change. Returns whether routing ran again.
pub fn change(
    db: &dyn Db,
    order_id: &str,
    v: &Json,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Json> {
    let OrderChange {
        address,
        method,
        note,
        shipping_price,
        shipping_tax,
    } = OrderChange::parse(v)?;
    crate::routing::allocation::worker::take_up_order(db, order_id)?;
    let o = order_row(db, order_id)?;
    let row = o.first().ok_or_else(|| Error::not_found("no such order"))?;
    let status = row.str("status");
    if matches!(status.as_str(), "cancelled" | "closed" | "completed") {
        return Err(Error::conflict(format!(
            "the order is {status}; it cannot change"
        )));
    }
    let mut doc: Json = serde_json::from_str(&row.str("doc")).unwrap_or(Json::Null);
    let fulfillment_change = address.is_some() || method.is_some();
    if fulfillment_change {
        let released = released_fos(db, order_id)?;
        if !released.is_empty() {
            let list = released
                .iter()
                .map(|(n, f, s)| format!("{n} at {f} ({s})"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::conflict(format!(
                "the shipping address and method cannot change after release: {list} already went to the facility; cancel and re-order, or ask the facility"
            )));
        }
    }
    let currency = crate::kernel::money::Currency::from_code(&row.str("currency"))
        .ok_or_else(|| Error::internal("order with an unknown currency"))?;
    // A new method is a new shipping price: the caller's (the source's), or the rate table's.
    let repriced = match &method {
        Some(m) => Some(reprice(
            db,
            order_id,
            &doc,
            address.as_ref(),
            m,
            (shipping_price.as_deref(), shipping_tax.as_deref()),
            currency,
        )?),
        None => None,
    };
    let shipping_before = shipping_charge(&doc);
    let mut changed = apply_change(&mut doc, &address, &method, &note);
    if let Some(p) = &repriced {
        changed.insert(
            "shipping_price".into(),
            set_shipping_price(&mut doc, p, currency),
        );
    }
    let delta = shipping_charge(&doc) - shipping_before;
    store::set_doc(db, order_id, &doc, now)?;
    if delta != 0 {
        store::add_to_total(db, order_id, delta, now)?;
    }
    let what: Vec<String> = changed.keys().cloned().collect();
    record_event(
        db,
        order_id,
        now,
        actor,
        "order.changed",
        &format!("Changed: {}", what.join(", ")),
        Json::Object(changed.clone()),
    )?;
    let mut routed = Json::Null;
    if fulfillment_change {
        // What was allocated for the old destination or method is given back and routed again.
        crate::routing::allocation::deallocate_unreleased(
            db,
            order_id,
            now,
            actor,
            "the shipping address or method changed",
        )?;
        lines::clear_backorders(db, order_id)?;
        // An incorrect-address hold is the operator's to lift; a new address lifts it.
        if address.is_some() {
            store::release_hold(
                db,
                order_id,
                crate::orders::model::HoldReason::IncorrectAddress,
                now,
                actor,
                "a new shipping address",
            )?;
        }
        let o = crate::routing::allocation::route_order(
            db,
            order_id,
            crate::routing::allocation::Trigger::Intake,
            now,
        )?;
        routed = json!({"allocated": o.allocated, "released": o.released, "backordered": o.backordered, "held": o.held});
    }
    let payment = if repriced.is_some() {
        settle_difference(
            db,
            order_id,
            delta,
            currency,
            "the new shipping method",
            actor,
            now,
        )?
    } else {
        Json::Null
    };
    enqueue(
        db,
        "order.changed",
        Some(order_id),
        json!({"order_id": order_id, "number": row.str("number"), "changed": changed}),
        now,
    )?;
    store::refresh_status(db, order_id, now)?;
    Ok(json!({"changed": what, "routing": routed, "payment": payment}))
}

/// A shipping line's price after a method change, and where it came from.
struct Repriced {
    price: i64,
    tax: i64,
    /// `request` (the caller's price) or `rate_table` (with the rate used).
    source: Json,
}

/// The shipping price of `method`: the caller's `shipping_price` (the price
/// the shop charged), else the cheapest rate of the rate table whose service
/// is the method, for the destination's zone and the order's weight. The tax
/// is the caller's `shipping_tax`, else the old shipping line's rate applied
/// to the new price. Nothing to price it with is a 422.
fn reprice(
    db: &dyn Db,
    order_id: &str,
    doc: &Json,
    address: Option<&crate::orders::model::Address>,
    method: &str,
    (price, tax): (Option<&str>, Option<&str>),
    currency: crate::kernel::money::Currency,
) -> Result<Repriced> {
    let parse = |pointer: &str, s: &str| {
        currency
            .parse_amount(s)
            .ok()
            .filter(|m| (0..=crate::orders::model::MAX_AMOUNT).contains(m))
            .ok_or_else(|| {
                Error::invalid(vec![FieldError::new(
                    pointer,
                    format!(
                        "must be a non-negative decimal amount in {} (e.g. \"4.90\")",
                        currency.code()
                    ),
                )])
            })
    };
    let old = &doc["shipping_lines_minor"][0];
    let (old_price, old_tax) = (
        old["price"].as_i64().unwrap_or(0),
        old["tax"].as_i64().unwrap_or(0),
    );
    let (price, source) = match price {
        Some(p) => (parse("/shipping_price", p)?, json!({"source": "request"})),
        None => {
            let (country, postal) = match address {
                Some(a) => (
                    a.country_code.clone(),
                    a.postal_code.clone().unwrap_or_default(),
                ),
                None => (
                    doc["shipping_address"]["country_code"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    doc["shipping_address"]["postal_code"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                ),
            };
            let weight = db
                .execute(
                    "SELECT COALESCE(SUM((l.qty_ordered - l.qty_cancelled) * COALESCE(p.weight_grams, 0)), 0) AS g
                     FROM order_lines l LEFT JOIN products p ON p.sku = l.sku
                     WHERE l.order_id = ? AND l.requires_shipping = 1",
                    params![order_id],
                )?
                .first()
                .map(|r| r.i64("g"))
                .unwrap_or(0);
            let (zone, rates) =
                crate::fulfillment::quote(db, &country, &postal, weight, None, Some(method))?;
            let rate = rates.into_iter().find(|r| r.currency == currency.code());
            match rate {
                Some(r) => (
                    r.price_minor,
                    json!({"source": "rate_table", "carrier": r.carrier, "service": r.service, "zone": r.zone,
                           "weight_grams": weight}),
                ),
                None => {
                    return Err(Error::invalid(vec![FieldError::new(
                        "/shipping_price",
                        format!(
                            "the rate table has no {} rate in {} for method '{method}' to {} ({} g): give the shipping price",
                            zone.as_deref().unwrap_or("(no zone)"),
                            currency.code(),
                            if country.is_empty() { "the destination" } else { country.as_str() },
                            weight
                        ),
                    )]))
                }
            }
        }
    };
    let tax = match tax {
        Some(t) => parse("/shipping_tax", t)?,
        // The old line's tax rate, on the new price (rounded half up).
        None if old_price > 0 => {
            ((old_tax as i128 * price as i128 * 2 + old_price as i128) / (2 * old_price as i128))
                as i64
        }
        None => 0,
    };
    Ok(Repriced { price, tax, source })
}

/// What the first shipping line adds to the order's total.
fn shipping_charge(doc: &Json) -> i64 {
    let s = &doc["shipping_lines_minor"][0];
    let included = doc["taxes_included"].as_bool().unwrap_or(false);
    s["price"].as_i64().unwrap_or(0) - s["discount"].as_i64().unwrap_or(0)
        + if included {
            0
        } else {
            s["tax"].as_i64().unwrap_or(0)
        }
}

/// Writes the new price into the first shipping line (both its stored forms);
/// returns the change for the timeline.
fn set_shipping_price(doc: &mut Json, p: &Repriced, c: crate::kernel::money::Currency) -> Json {
    use crate::kernel::money::Money;
    let from = json!({"price": doc["shipping_lines_minor"][0]["price"], "tax": doc["shipping_lines_minor"][0]["tax"]});
    let line = &mut doc["shipping_lines_minor"][0];
    line["price"] = json!(p.price);
    line["tax"] = json!(p.tax);
    let method = line["method"].clone();
    line["title"] = method.clone();
    let discount = line["discount"].as_i64().unwrap_or(0);
    doc["shipping_lines"] = json!([{
        "method": method, "title": method,
        "price": Money::new(p.price, c), "discount": Money::new(discount, c), "tax": Money::new(p.tax, c),
    }]);
    json!({"from": from, "to": {"price": p.price, "tax": p.tax}, "priced_by": p.source})
}

/// An order change, validated: a new shipping address, shipping method or note.
struct OrderChange {
    address: Option<crate::orders::model::Address>,
    method: Option<String>,
    note: Option<String>,
    /// The new method's price and tax as the caller (the shop) charged them.
    shipping_price: Option<String>,
    shipping_tax: Option<String>,
}

impl OrderChange {
    fn parse(v: &Json) -> Result<OrderChange> {
        if !v.is_object() {
            return Err(Error::bad_request("the body must be a JSON object"));
        }
        let mut errs = FieldError::unknown_fields(
            v,
            &[
                "shipping_address",
                "shipping_method",
                "shipping_price",
                "shipping_tax",
                "note",
            ],
        );
        let mut reader = crate::intake::sources::Reader::default();
        let address = if v["shipping_address"].is_null() {
            None
        } else {
            crate::intake::sources::api::address(&mut reader, v, "shipping_address", "")
        };
        errs.extend(reader.errors);
        if let Some(a) = &address {
            if a.country_code.len() != 2 {
                errs.push(FieldError::new(
                    "/shipping_address/country_code",
                    "must be an ISO 3166-1 alpha-2 code",
                ));
            }
        }
        let method = match &v["shipping_method"] {
            Json::Null => None,
            Json::String(m) if !m.trim().is_empty() && m.len() <= 64 => Some(m.trim().to_string()),
            _ => {
                errs.push(FieldError::new(
                    "/shipping_method",
                    "must be a method code of 1 to 64 characters",
                ));
                None
            }
        };
        let note = match &v["note"] {
            Json::Null => None,
            Json::String(n) if n.len() <= 5000 => Some(n.clone()),
            _ => {
                errs.push(FieldError::new(
                    "/note",
                    "must be a string of at most 5000 characters",
                ));
                None
            }
        };
        let mut amount = |key: &str| match &v[key] {
            Json::Null => None,
            Json::String(a) if a.len() <= 32 => Some(a.clone()),
            _ => {
                errs.push(FieldError::new(
                    format!("/{key}"),
                    "must be a decimal amount as a string (e.g. \"4.90\")",
                ));
                None
            }
        };
        let shipping_price = amount("shipping_price");
        let shipping_tax = amount("shipping_tax");
        if method.is_none() && (shipping_price.is_some() || shipping_tax.is_some()) {
            errs.push(FieldError::new(
                "/shipping_price",
                "a shipping price comes with a new shipping_method",
            ));
        }
        if address.is_none() && method.is_none() && note.is_none() && errs.is_empty() {
            errs.push(FieldError::new("/", "nothing to change"));
        }
        if !errs.is_empty() {
            return Err(Error::invalid(errs));
        }
        Ok(OrderChange {
            address,
            method,
            note,
            shipping_price,
            shipping_tax,
        })
    }
}

/// Writes the change into the stored order document; returns what changed
/// (from, to) by field, for the timeline.
fn apply_change(
    doc: &mut Json,
    address: &Option<crate::orders::model::Address>,
    method: &Option<String>,
    note: &Option<String>,
) -> serde_json::Map<String, Json> {
    let mut changed = serde_json::Map::new();
    if let Some(a) = &address {
        changed.insert(
            "shipping_address".into(),
            json!({"from": doc["shipping_address"], "to": a}),
        );
        doc["shipping_address"] = json!(a);
    }
    if let Some(m) = &method {
        let from = doc["shipping_lines_minor"][0]["method"].clone();
        changed.insert("shipping_method".into(), json!({"from": from, "to": m}));
        if doc["shipping_lines_minor"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            doc["shipping_lines_minor"][0]["method"] = json!(m);
            doc["shipping_lines"][0]["method"] = json!(m);
        } else {
            doc["shipping_lines_minor"] =
                json!([{"method": m, "title": m, "price": 0, "discount": 0, "tax": 0}]);
        }
    }
    if let Some(n) = &note {
        changed.insert("note".into(), json!({"from": doc["note"], "to": n}));
        doc["note"] = json!(n);
    }
    changed
}

/// Substitutes a SKU for units not yet released (typically ones no longer in
/// stock): those units of the line are cancelled and a new line with the
/// substitute is added (its price given, else the old unit price; the old
/// line's per-unit discount carries over; tax at the old line's rate), then
/// routed. The price difference is handled on the authorization: a cheaper
/// substitute voids the difference; a dearer one holds the order
/// (`awaiting_payment`) until the difference is authorized
/// (`POST /api/payments/orders/{key}/retry` with the new amount).
pub fn substitute(
    db: &dyn Db,
    order_id: &str,
    v: &Json,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Json> {
    crate::routing::allocation::worker::take_up_order(db, order_id)?;
    let Substitute {
        rows,
        sku,
        product,
        q,
        price,
        currency,
    } = Substitute::parse(db, order_id, v)?;
    let line = rows.first().expect("parsed");
    let Amounts {
        subtotal,
        discount,
        tax,
        net,
        old_amount,
    } = substitute_amounts(&line, q, price);
    let reason = v["reason"].as_str().unwrap_or("substituted").to_string();
    cancel_units(
        db,
        order_id,
        &json!({"lines": [{"line_no": line.i64("line_no"), "quantity": q}], "reason": format!("substituted by {sku}: {reason}")}),
        actor,
        now,
        false,
    )?;
    // ... the substitute comes in as a new line.
    let product_name = product.clone().unwrap_or_default();
    let new_line = lines::add(
        db,
        order_id,
        &lines::AddedLine {
            sku: &sku,
            name: &product_name,
            unit_price: price,
            subtotal,
            discount,
            tax,
            quantity: q,
        },
    )?;
    let new_amount = net + tax;
    let delta = new_amount - old_amount;
    store::add_to_total(db, order_id, delta, now)?;
    record_event(
        db,
        order_id,
        now,
        actor,
        "order.substituted",
        &format!(
            "{q} x {} substituted by {sku} (line {new_line}); difference {} {}",
            line.str("sku"),
            currency.format_amount(delta),
            currency.code()
        ),
        json!({"line_no": line.i64("line_no"), "from_sku": line.str("sku"), "to_sku": sku, "new_line_no": new_line,
               "quantity": q, "difference_minor": delta, "reason": reason}),
    )?;
    enqueue(
        db,
        "order.changed",
        Some(order_id),
        json!({"order_id": order_id, "number": line.str("number"),
               "changed": {"substitution": {"line_no": line.i64("line_no"), "from": line.str("sku"), "to": sku, "quantity": q, "difference_minor": delta}}}),
        now,
    )?;
    let payment = settle_difference(db, order_id, delta, currency, "the substitute", actor, now)?;
    let o = crate::routing::allocation::route_order(
        db,
        order_id,
        crate::routing::allocation::Trigger::Intake,
        now,
    )?;
    store::refresh_status(db, order_id, now)?;
    Ok(
        json!({"new_line_no": new_line, "quantity": q, "payment": payment,
              "routing": {"allocated": o.allocated, "released": o.released, "backordered": o.backordered, "held": o.held}}),
    )
}

/// A substitution, validated: the line (with its order's currency, total and
/// number), the substitute SKU and product name, the units and their price.
struct Substitute {
    rows: crate::kernel::db::Rows,
    sku: String,
    product: Option<String>,
    q: i64,
    price: i64,
    currency: crate::kernel::money::Currency,
}

impl Substitute {
    fn parse(db: &dyn Db, order_id: &str, v: &Json) -> Result<Substitute> {
        if !v.is_object() {
            return Err(Error::bad_request("the body must be a JSON object"));
        }
        let mut errs =
            FieldError::unknown_fields(v, &["line_no", "sku", "quantity", "unit_price", "reason"]);
        let line_no = v["line_no"].as_i64();
        let sku = v["sku"].as_str().map(str::to_string);
        if line_no.is_none() {
            errs.push(FieldError::new("/line_no", "is required"));
        }
        let product = match &sku {
            Some(s) => db
                .execute(
                    "SELECT name FROM products WHERE sku = ?",
                    params![s.clone()],
                )?
                .first()
                .map(|r| r.str("name")),
            None => None,
        };
        if sku.is_none() {
            errs.push(FieldError::new("/sku", "is required"));
        } else if product.is_none() {
            errs.push(FieldError::new(
                "/sku",
                format!("no product '{}'", sku.clone().unwrap_or_default()),
            ));
        }
        let l = match line_no {
            Some(n) => db
                .execute(
                    "SELECT l.*, o.currency, o.total_minor, o.number FROM order_lines l JOIN orders o ON o.id = l.order_id
                     WHERE l.order_id = ? AND l.line_no = ?",
                    params![order_id, n],
                )?,
            None => crate::kernel::db::Rows::default(),
        };
        let Some(line) = l.first() else {
            if line_no.is_some() {
                errs.push(FieldError::new("/line_no", "the order has no such line"));
            }
            return Err(Error::invalid(errs));
        };
        let currency = crate::kernel::money::Currency::from_code(&line.str("currency"))
            .ok_or_else(|| Error::internal("order with an unknown currency"))?;
        let open = line.i64("qty_ordered")
            - line.i64("qty_cancelled")
            - line.i64("qty_released")
            - line.i64("qty_shipped");
        let q = v["quantity"].as_i64().unwrap_or(open);
        if q <= 0 || q > open {
            errs.push(FieldError::new(
                "/quantity",
                format!("{q} asked, {open} unit(s) not yet released can be substituted"),
            ));
        }
        let old_price = line.i64("unit_price_minor");
        let price = match &v["unit_price"] {
            Json::Null => Some(old_price),
            Json::String(p) => currency.parse_amount(p).ok().filter(|m| *m >= 0),
            Json::Number(n) => currency
                .parse_amount(&n.to_string())
                .ok()
                .filter(|m| *m >= 0),
            _ => None,
        };
        if price.is_none() {
            errs.push(FieldError::new(
                "/unit_price",
                "must be a non-negative decimal amount",
            ));
        }
        if sku.as_deref() == Some(line.str("sku").as_str()) {
            errs.push(FieldError::new("/sku", "is the line's own SKU"));
        }
        if !errs.is_empty() {
            return Err(Error::invalid(errs));
        }
        Ok(Substitute {
            sku: sku.unwrap_or_default(),
            price: price.unwrap_or(0),
            product,
            q,
            currency,
            rows: l,
        })
    }
}

/// What the substitute costs, from the replaced line's prices: its discount
/// share carries over (never more than the new subtotal) and its tax rate
/// applies to the new net amount.
struct Amounts {
    subtotal: i64,
    discount: i64,
    tax: i64,
    net: i64,
    /// What the replaced units cost (their share of the line).
    old_amount: i64,
}

fn substitute_amounts(line: &crate::kernel::db::Row, q: i64, price: i64) -> Amounts {
    let ordered = line.i64("qty_ordered");
    let old_discount = crate::payments::shares::share(line.i64("discount_minor"), ordered, q);
    let old_net = line.i64("subtotal_minor") - line.i64("discount_minor");
    let subtotal = price * q;
    let discount = old_discount.min(subtotal);
    let net = subtotal - discount;
    let tax = if old_net > 0 {
        ((line.i64("tax_minor") as i128 * net as i128 + old_net as i128 / 2) / old_net as i128)
            as i64
    } else {
        0
    };
    // The old units go (without touching the money yet) ...
    let old_amount = {
        let c = crate::payments::shares::charge(
            &crate::payments::shares::OrderAmounts {
                lines: vec![crate::payments::shares::LineAmounts {
                    line_no: 1,
                    ordered,
                    net: old_net,
                    tax: line.i64("tax_minor"),
                }],
                shipping: 0,
                shipping_tax: 0,
                taxes_included: false,
            },
            &BTreeMap::new(),
            &BTreeMap::from([(1, q)]),
            false,
        );
        c.amount
    };
    Amounts {
        subtotal,
        discount,
        tax,
        net,
        old_amount,
    }
}

/// The price difference on the authorization: a dearer substitute beyond the
/// open authorization holds the order for payment; a cheaper one voids what is
/// no longer needed.
fn settle_difference(
    db: &dyn Db,
    order_id: &str,
    delta: i64,
    currency: crate::kernel::money::Currency,
    what: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Json> {
    let p = db.execute(
        "SELECT gateway, authorized_minor, captured_minor, voided_minor FROM payments WHERE order_id = ?",
        params![order_id],
    )?;
    let mut payment = json!({"difference_minor": delta});
    if let Some(p) = p
        .first()
        .filter(|p| matches!(p.str("gateway").as_str(), "manual" | "stripe"))
    {
        if delta > 0 {
            let needed = crate::payments::capture::still_needed(db, order_id)?;
            let open = p.i64("authorized_minor") - p.i64("captured_minor") - p.i64("voided_minor");
            if needed > open {
                store::add_hold(
                    db,
                    order_id,
                    crate::orders::model::HoldReason::AwaitingPayment,
                    &format!(
                        "{what} costs {} {} more than authorized: authorize the difference, then retry the payment",
                        currency.format_amount(needed - open),
                        currency.code()
                    ),
                    now,
                    actor,
                )?;
                payment["awaiting_authorization_minor"] = json!(needed - open);
            }
        } else {
            payment["voided_minor"] = json!(crate::payments::capture::void_unneeded(
                db,
                order_id,
                &format!("{what} costs less"),
                now
            )?);
        }
    }
    Ok(payment)
}

#[cfg(test)]
mod tests;
