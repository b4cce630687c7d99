//! Order queries for operators and integrations (the orders component).

use base64::Engine as _;
use serde_json::json;

use crate::http::{Request, Response, Scope, Tokens};
use crate::kernel::db::Db;
use crate::kernel::error::{Error, Result};
use crate::kernel::time::parse_time;
use crate::kernel::time::ts;
use crate::orders::model::{HoldReason, OrderStatus, Source};
use crate::orders::store::{self, ListQuery};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

/// Writes take the write scope: changes, cancellations and substitutions
/// (answered with the order and what the change did) and returns. The answer
/// comes with what it set in motion (restocked SKUs, a replacement order to
/// route).
pub fn handle_write(
    db: &dyn Db,
    tokens: &Tokens,
    req: &Request,
    now: chrono::DateTime<chrono::Utc>,
) -> (Response, crate::returns::Received) {
    use crate::returns::{self, Received};
    use serde_json::Value;
    let r = (|| -> Result<(Response, Received)> {
        tokens.authorize(req, Scope::Write)?;
        req.check_size()?;
        let segs: Vec<String> = req
            .path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(crate::http::path_segment)
            .collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        // One order change in one transaction; the answer is the order with
        // what the change did under `field`.
        type Change =
            fn(&dyn Db, &str, &Value, &str, chrono::DateTime<chrono::Utc>) -> Result<Value>;
        let order_change = |key: &str, field: &str, f: Change| -> Result<(Response, Received)> {
            let v = req.json_object_or_empty()?;
            let id = resolve(db, key)?;
            let out = crate::kernel::db::transaction(db, |db| f(db, &id, &v, "api", now))?;
            let mut answer = store::order_view(db, &id)?.unwrap_or(Value::Null);
            answer[field] = out;
            Ok((Response::json(200, &answer), Received::default()))
        };
        match (req.method.as_str(), segs.as_slice()) {
            ("PATCH", ["api", "orders", key]) => {
                order_change(key, "change", crate::flows::changes::change)
            }
            ("POST", ["api", "orders", key, "cancel"]) => {
                order_change(key, "cancellation", crate::flows::changes::cancel)
            }
            ("POST", ["api", "orders", key, "substitute"]) => {
                order_change(key, "substitution", crate::flows::changes::substitute)
            }
            ("POST", ["api", "orders", key, "returns"]) => {
                let v = req.json_object_or_empty()?;
                let order_id = resolve(db, key)?;
                let id = crate::kernel::db::transaction(db, |db| {
                    returns::request(db, &order_id, &v, "api", now)
                })?;
                Ok((
                    Response::json(201, &returns::view(db, &id)?)
                        .with_header("location", &format!("/api/returns/{id}")),
                    Received::default(),
                ))
            }
            ("POST", ["api", "returns", key, action]) => {
                let v = req.json_object_or_empty()?;
                let mut got = Received::default();
                crate::kernel::db::transaction(db, |db| match *action {
                    "approve" => returns::approve(db, key, &v, "api", now),
                    "reject" => returns::close_unreceived(db, key, "rejected", &v, "api", now),
                    "cancel" => returns::close_unreceived(db, key, "cancelled", &v, "api", now),
                    "receive" => {
                        got = returns::receive(db, key, &v, "api", now)?;
                        Ok(())
                    }
                    other => Err(Error::not_found(format!("no return action '{other}'"))),
                })?;
                Ok((Response::json(200, &returns::view(db, key)?), got))
            }
            ("POST", _) => Err(Error::not_found(format!("no route for POST {}", req.path))),
            _ => Err(Error::new(
                crate::kernel::error::ErrorKind::MethodNotAllowed,
                format!("{} is not allowed here", req.method),
            )),
        }
    })();
    r.unwrap_or_else(|e| (Response::problem(&e), Default::default()))
}

pub fn handle(db: &dyn Db, tokens: &Tokens, req: &Request) -> Response {
    let r = (|| -> Result<Response> {
        tokens.authorize(req, Scope::Read)?;
        if req.method != "GET" && req.method != "HEAD" {
            return Err(Error::new(
                crate::kernel::error::ErrorKind::MethodNotAllowed,
                format!("{} is not allowed here", req.method),
            ));
        }
        if let Some(rest) = req.path.strip_prefix("/api/returns/") {
            return Ok(Response::json(
                200,
                &crate::returns::view(db, &crate::http::path_segment(rest.trim_end_matches('/')))?,
            ));
        }
        let rest = req.path.strip_prefix("/api/orders").unwrap_or("");
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        match segs.as_slice() {
            [key, "returns"] => {
                let id = resolve(db, &crate::http::path_segment(key))?;
                Ok(Response::json(
                    200,
                    &crate::returns::list_for_order(db, &id)?,
                ))
            }
            [] => list(db, req),
            [key] => get(db, &crate::http::path_segment(key)),
            [key, "events"] => events(db, &crate::http::path_segment(key)),
            [key, "routing"] => {
                let id = resolve(db, &crate::http::path_segment(key))?;
                Ok(Response::json(
                    200,
                    &crate::routing::allocation::routing_view(db, &id)?,
                ))
            }
            [key, "shipments"] => {
                let id = resolve(db, &crate::http::path_segment(key))?;
                Ok(Response::json(
                    200,
                    &crate::fulfillment::shipments_view(db, &id)?,
                ))
            }
            _ => Err(Error::not_found(format!(
                "no orders endpoint at {}",
                req.path
            ))),
        }
    })();
    r.into()
}

fn resolve(db: &dyn Db, key: &str) -> Result<String> {
    store::resolve(db, key)?.ok_or_else(|| {
        Error::not_found(format!(
            "no order '{key}' (by id, number or source:external_id)"
        ))
    })
}

/// The order with everything a CRM asks ("where is my order?") in one call:
/// its fulfillment orders, shipments with tracking, payment and returns.
fn get(db: &dyn Db, key: &str) -> Result<Response> {
    let id = resolve(db, key)?;
    let mut view =
        store::order_view(db, &id)?.ok_or_else(|| Error::not_found(format!("no order '{key}'")))?;
    let fos: Vec<serde_json::Value> = db
        .execute(
            "SELECT f.name, f.facility_id, f.status, f.request_status, f.pickup, f.released_at,
                    (SELECT SUM(quantity) FROM fulfillment_order_lines WHERE fulfillment_order_id = f.id) AS units
             FROM fulfillment_orders f WHERE f.order_id = ? ORDER BY f.name",
            crate::params![id.clone()],
        )?
        .iter()
        .map(|f| serde_json::json!({"name": f.str("name"), "facility": f.str("facility_id"), "status": f.str("status"),
            "request_status": f.str("request_status"), "pickup": f.i64("pickup") != 0, "units": f.opt_i64("units"),
            "released_at": f.opt_str("released_at")}))
        .collect();
    view["fulfillment_orders"] = serde_json::json!(fos);
    let shipments = crate::fulfillment::shipments_view(db, &id)?;
    view["shipments"] = serde_json::json!(shipments["shipments"]
        .as_array()
        .map(|a| a
            .iter()
            .map(|s| serde_json::json!({"id": s["id"], "fulfillment_order": s["fulfillment_order"], "facility": s["facility"],
                "carrier": s["carrier"], "tracking_number": s["tracking_number"], "tracking_url": s["tracking_url"],
                "status": s["status"], "shipped_at": s["shipped_at"], "delivered_at": s["delivered_at"]}))
            .collect::<Vec<_>>())
        .unwrap_or_default());
    let p = crate::payments::capture::payment_view(db, &id)?;
    view["payment"] = serde_json::json!({"gateway": p["gateway"], "authorized": p["authorized"], "captured": p["captured"],
        "refunded": p["refunded"], "voided": p["voided"], "invoices": p["invoices"], "credit_memos": p["credit_memos"]});
    let r = crate::returns::list_for_order(db, &id)?;
    view["returns"] = serde_json::json!(r["returns"]
        .as_array()
        .map(|a| a
            .iter()
            .map(|x| serde_json::json!({"id": x["id"], "number": x["number"], "status": x["status"], "resolution": x["resolution"]}))
            .collect::<Vec<_>>())
        .unwrap_or_default());
    Ok(Response::json(200, &view))
}

fn events(db: &dyn Db, key: &str) -> Result<Response> {
    let id = resolve(db, key)?;
    Ok(Response::json(
        200,
        &json!({"order_id": id, "events": store::events(db, &id)?}),
    ))
}

fn bad(param: &str, detail: impl Into<String>) -> Error {
    let mut e = Error::bad_request(format!("query parameter '{param}': {}", detail.into()));
    e.errors.push(crate::kernel::error::FieldError::new(
        format!("?{param}"),
        e.detail.clone(),
    ));
    e
}

fn time_param(req: &Request, name: &str) -> Result<Option<String>> {
    match req.query_param(name) {
        None => Ok(None),
        Some(v) => {
            // A date means the start of that day (UTC).
            let t = parse_time(&v).or_else(|| parse_time(&format!("{v}T00:00:00Z")));
            t.map(|t| Some(ts(t))).ok_or_else(|| {
                bad(
                    name,
                    format!("'{v}' is not an RFC 3339 timestamp or a date"),
                )
            })
        }
    }
}

fn list(db: &dyn Db, req: &Request) -> Result<Response> {
    const KNOWN: &[&str] = &[
        "status",
        "hold_reason",
        "channel",
        "source",
        "created_from",
        "created_to",
        "email",
        "sku",
        "q",
        "limit",
        "cursor",
    ];
    for (k, _) in req.query_pairs() {
        if !KNOWN.contains(&k.as_str()) {
            return Err(bad(
                &k,
                format!("unknown filter; known: {}", KNOWN.join(", ")),
            ));
        }
    }
    let mut q = ListQuery {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    if let Some(s) = req.query_param("status") {
        if !OrderStatus::ALL.contains(&s.as_str()) {
            return Err(bad(
                "status",
                format!("'{s}' is not one of {}", OrderStatus::ALL.join(", ")),
            ));
        }
        q.status = Some(s);
    }
    if let Some(h) = req.query_param("hold_reason") {
        if HoldReason::parse(&h).is_none() {
            return Err(bad("hold_reason", format!("'{h}' is not a hold reason")));
        }
        q.hold_reason = Some(h);
    }
    if let Some(s) = req.query_param("source") {
        if Source::parse(&s).is_none() {
            return Err(bad(
                "source",
                format!("'{s}' is not one of shopify, woocommerce, commercetools, api"),
            ));
        }
        q.source = Some(s);
    }
    q.channel = req.query_param("channel");
    q.email = req.query_param("email");
    q.sku = req.query_param("sku");
    q.text = req
        .query_param("q")
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_string());
    q.created_from = time_param(req, "created_from")?;
    q.created_to = time_param(req, "created_to")?;
    if let Some(l) = req.query_param("limit") {
        q.limit = l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| bad("limit", format!("must be 1 to {MAX_LIMIT}")))?;
    }
    if let Some(c) = req.query_param("cursor") {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c.as_bytes())
            .map_err(|_| bad("cursor", "is not a cursor this API issued"))?;
        let s =
            String::from_utf8(raw).map_err(|_| bad("cursor", "is not a cursor this API issued"))?;
        let (at, id) = s
            .split_once('|')
            .ok_or_else(|| bad("cursor", "is not a cursor this API issued"))?;
        q.after = Some((at.to_string(), id.to_string()));
    }
    let (rows, more) = store::list(db, &q)?;
    let next = if more {
        rows.last().map(|r| {
            let raw = format!(
                "{}|{}",
                r["created_at"].as_str().unwrap_or_default(),
                r["id"].as_str().unwrap_or_default()
            );
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        })
    } else {
        None
    };
    Ok(Response::json(
        200,
        &json!({"orders": rows, "next_cursor": next}),
    ))
}
