//! Read views of orders: lookup by any key, the order document, the timeline
//! and the filtered, cursor-paged list.

use serde_json::{json, Value as Json};

use crate::kernel::db::{Db, Value};
use crate::kernel::error::{Error, Result};
use crate::kernel::money::{Currency, Money};
use crate::orders::model::Source;
use crate::orders::store::buckets;
use crate::params;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

/// The order id for a key, or a 404 naming the key forms.
pub fn find(db: &dyn Db, key: &str) -> Result<String> {
    resolve(db, key)?.ok_or_else(|| {
        Error::not_found(format!(
            "no order '{key}' (by id, number or source:external_id)"
        ))
    })
}

/// The timeline of an order.
pub fn timeline(db: &dyn Db, key: &str) -> Result<Json> {
    let id = find(db, key)?;
    Ok(json!({"order_id": id, "events": events(db, &id)?}))
}

/// Resolves an order key: a UUID, an order number (`WB-100001`) or `source:external_id`.
pub fn resolve(db: &dyn Db, key: &str) -> Result<Option<String>> {
    let r = if uuid::Uuid::parse_str(key).is_ok() {
        db.execute("SELECT id FROM orders WHERE id = ?", params![key])?
    } else if let Some((src, ext)) = key
        .split_once(':')
        .filter(|(s, _)| Source::parse(s).is_some())
    {
        db.execute(
            "SELECT id FROM orders WHERE source = ? AND external_id = ?",
            params![src, ext],
        )?
    } else {
        db.execute(
            "SELECT id FROM orders WHERE number = ?",
            params![key.to_ascii_uppercase()],
        )?
    };
    Ok(r.first().map(|r| r.str("id")))
}

fn money_json(minor: i64, c: Option<Currency>) -> Json {
    match c {
        Some(c) => serde_json::to_value(Money::new(minor, c)).unwrap_or(Json::Null),
        None => json!({"minor": minor}),
    }
}

/// The full order document the API serves.
pub fn order_view(db: &dyn Db, id: &str) -> Result<Option<Json>> {
    let r = db.execute("SELECT * FROM orders WHERE id = ?", params![id])?;
    let Some(o) = r.first() else { return Ok(None) };
    let currency = Currency::from_code(&o.str("currency"));
    let doc: Json = serde_json::from_str(&o.str("doc")).unwrap_or(Json::Null);
    let lines = db.execute(
        "SELECT * FROM order_lines WHERE order_id = ? ORDER BY line_no",
        params![id],
    )?;
    let mut line_views = Vec::new();
    let (mut subtotal, mut discount, mut tax) = (0i64, 0i64, 0i64);
    for l in lines.iter() {
        let b = buckets(&l);
        subtotal += l.i64("subtotal_minor");
        discount += l.i64("discount_minor");
        tax += l.i64("tax_minor");
        line_views.push(json!({
            "line_no": l.i64("line_no"),
            "external_id": l.opt_str("external_id"),
            "sku": l.str("sku"),
            "name": l.str("name"),
            "requires_shipping": l.i64("requires_shipping") != 0,
            "unit_price": money_json(l.i64("unit_price_minor"), currency),
            "subtotal": money_json(l.i64("subtotal_minor"), currency),
            "discount": money_json(l.i64("discount_minor"), currency),
            "tax": money_json(l.i64("tax_minor"), currency),
            "quantity": {
                "ordered": b.ordered, "cancelled": b.cancelled, "backordered": b.backordered, "allocated": b.allocated,
                "released": b.released, "shipped": b.shipped, "delivered": b.delivered, "returned": b.returned,
                "open": b.open(),
            },
        }));
    }
    let ship_minor: Vec<crate::orders::model::ShippingLine> =
        serde_json::from_value(doc["shipping_lines_minor"].clone()).unwrap_or_default();
    let shipping: i64 = ship_minor.iter().map(|s| s.price).sum();
    discount += ship_minor.iter().map(|s| s.discount).sum::<i64>();
    tax += ship_minor.iter().map(|s| s.tax).sum::<i64>();
    let holds = db.execute(
        "SELECT reason, note, created_at FROM order_holds WHERE order_id = ? AND released_at IS NULL ORDER BY id",
        params![id],
    )?;
    Ok(Some(json!({
        "id": o.str("id"),
        "number": o.str("number"),
        "source": o.str("source"),
        "external_id": o.str("external_id"),
        "external_number": o.opt_str("external_number"),
        "channel": o.str("channel"),
        "status": o.str("status"),
        "fulfillment_status": o.str("fulfillment_status"),
        "financial_status": o.str("financial_status"),
        "currency": o.str("currency"),
        "totals": {
            "subtotal": money_json(subtotal, currency),
            "discount": money_json(discount, currency),
            "shipping": money_json(shipping, currency),
            "tax": money_json(tax, currency),
            "total": money_json(o.i64("total_minor"), currency),
            "taxes_included": doc["taxes_included"],
        },
        "customer": doc["customer"],
        "shipping_address": doc["shipping_address"],
        "billing_address": doc["billing_address"],
        "shipping_lines": doc["shipping_lines"],
        "payment": doc["payment"],
        "note": doc["note"],
        "tags": doc["tags"],
        "lines": line_views,
        "holds": holds.iter().map(|h| json!({"reason": h.str("reason"), "note": h.opt_str("note"), "since": h.str("created_at")})).collect::<Vec<_>>(),
        "placed_at": o.str("placed_at"),
        "created_at": o.str("created_at"),
        "updated_at": o.str("updated_at"),
        "cancelled_at": o.opt_str("cancelled_at"),
        "version": o.i64("version"),
    })))
}

pub fn events(db: &dyn Db, id: &str) -> Result<Vec<Json>> {
    let r = db.execute(
        "SELECT id, at, actor, kind, summary, data FROM order_events WHERE order_id = ? ORDER BY id",
        params![id],
    )?;
    Ok(r.iter()
        .map(|e| {
            json!({
                "id": e.i64("id"), "at": e.str("at"), "actor": e.str("actor"), "kind": e.str("kind"),
                "summary": e.str("summary"),
                "data": e.opt_str("data").and_then(|d| serde_json::from_str::<Json>(&d).ok()).unwrap_or(Json::Null),
            })
        })
        .collect())
}

/// Filters for listing orders.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub status: Option<String>,
    pub hold_reason: Option<String>,
    pub channel: Option<String>,
    pub source: Option<String>,
    pub created_from: Option<String>,
    pub created_to: Option<String>,
    pub email: Option<String>,
    pub sku: Option<String>,
    pub text: Option<String>,
    pub limit: i64,
    /// (created_at, id) of the last row of the previous page.
    pub after: Option<(String, String)>,
}

/// Lists order summaries newest first; returns the rows and whether more follow.
pub fn list(db: &dyn Db, q: &ListQuery) -> Result<(Vec<Json>, bool)> {
    let mut sql = String::from(
        "SELECT o.id, o.number, o.source, o.external_id, o.channel, o.status, o.fulfillment_status, o.financial_status,
                o.currency, o.total_minor, o.customer_email, o.customer_name, o.created_at, o.placed_at,
                (SELECT group_concat(reason) FROM order_holds h WHERE h.order_id = o.id AND h.released_at IS NULL) AS holds
         FROM orders o WHERE 1 = 1",
    );
    let mut p: Vec<Value> = Vec::new();
    if let Some(s) = &q.status {
        sql.push_str(" AND o.status = ?");
        p.push(s.into());
    }
    if let Some(h) = &q.hold_reason {
        sql.push_str(" AND EXISTS (SELECT 1 FROM order_holds h WHERE h.order_id = o.id AND h.released_at IS NULL AND h.reason = ?)");
        p.push(h.into());
    }
    if let Some(c) = &q.channel {
        sql.push_str(" AND o.channel = ?");
        p.push(c.into());
    }
    if let Some(s) = &q.source {
        sql.push_str(" AND o.source = ?");
        p.push(s.into());
    }
    if let Some(f) = &q.created_from {
        sql.push_str(" AND o.created_at >= ?");
        p.push(f.into());
    }
    if let Some(t) = &q.created_to {
        sql.push_str(" AND o.created_at < ?");
        p.push(t.into());
    }
    if let Some(e) = &q.email {
        sql.push_str(" AND o.customer_email = ?");
        p.push(e.to_lowercase().into());
    }
    if let Some(s) = &q.sku {
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM order_lines l WHERE l.order_id = o.id AND l.sku = ?)",
        );
        p.push(s.into());
    }
    if let Some(t) = &q.text {
        sql.push_str(" AND instr(o.search_text, ?) > 0");
        p.push(t.to_lowercase().into());
    }
    if let Some((at, id)) = &q.after {
        sql.push_str(" AND (o.created_at < ? OR (o.created_at = ? AND o.id < ?))");
        p.push(at.into());
        p.push(at.into());
        p.push(id.into());
    }
    sql.push_str(" ORDER BY o.created_at DESC, o.id DESC LIMIT ?");
    p.push(Value::Integer(q.limit + 1));
    let r = db.execute(&sql, &p)?;
    let mut out: Vec<Json> = r
        .iter()
        .map(|o| {
            let c = Currency::from_code(&o.str("currency"));
            json!({
                "id": o.str("id"), "number": o.str("number"), "source": o.str("source"), "external_id": o.str("external_id"),
                "channel": o.str("channel"), "status": o.str("status"), "fulfillment_status": o.str("fulfillment_status"),
                "financial_status": o.str("financial_status"), "total": money_json(o.i64("total_minor"), c),
                "customer_email": o.opt_str("customer_email"), "customer_name": o.opt_str("customer_name"),
                "holds": o.opt_str("holds").map(|h| h.split(',').map(str::to_string).collect::<Vec<_>>()).unwrap_or_default(),
                "created_at": o.str("created_at"), "placed_at": o.str("placed_at"),
            })
        })
        .collect();
    let more = out.len() as i64 > q.limit;
    out.truncate(q.limit as usize);
    Ok((out, more))
}
