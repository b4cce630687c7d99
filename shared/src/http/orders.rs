//! The orders component's routes: reads (order, timeline, list, routing,
//! shipments, returns) with the read scope; changes, cancellations,
//! substitutions and returns with the write scope.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::http::{
    idempotency_scope, idempotent, method_not_allowed, query_error, segments, Request, Response,
    Scope, Tokens,
};
use crate::kernel::db::{transaction, Db};
use crate::kernel::error::{Error, Result};
use crate::kernel::time::{parse_time, ts};
use crate::orders::model::{HoldReason, OrderStatus, Source};
use crate::orders::views::{self, ListQuery, DEFAULT_LIMIT, MAX_LIMIT};
use crate::returns::{self, Received};

/// An order change run in one transaction; its result is answered under a field
/// of the order document.
type Change = fn(&dyn Db, &str, &Value, &str, DateTime<Utc>) -> Result<Value>;

/// Writes take the write scope. The answer comes with what it set in motion
/// (restocked SKUs, a replacement order to route).
pub fn handle_write(
    db: &dyn Db,
    tokens: &Tokens,
    req: &Request,
    now: DateTime<Utc>,
) -> (Response, Received) {
    let r = (|| -> Result<(Response, Received)> {
        tokens.authorize_route(req)?;
        req.check_size()?;
        let segs = segments(&req.path);
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let change = |db: &dyn Db, key: &str, field: &str, f: Change| -> Result<Response> {
            let v = req.json_object_or_empty()?;
            let answer = order_change(db, key, field, f, &v, now)?;
            Ok(Response::json(200, &answer))
        };
        // A POST that moves stock or money, under the caller's Idempotency-Key:
        // a replay answers what the first request did and sets nothing in motion.
        let once = |f: &dyn Fn(&dyn Db, &mut Received) -> Result<Response>| {
            let mut got = Received::default();
            let resp = idempotent(db, req, &idempotency_scope(req), now, |db| f(db, &mut got))?;
            Ok::<_, Error>((resp, got))
        };
        match (req.method.as_str(), segs.as_slice()) {
            ("PATCH", ["api", "orders", key]) => Ok((
                change(db, key, "change", crate::flows::changes::change)?,
                Received::default(),
            )),
            ("POST", ["api", "orders", key, "cancel"]) => {
                once(&|db, _| change(db, key, "cancellation", crate::flows::changes::cancel))
            }
            ("POST", ["api", "orders", key, "substitute"]) => {
                once(&|db, _| change(db, key, "substitution", crate::flows::changes::substitute))
            }
            ("POST", ["api", "orders", key, "returns"]) => once(&|db, _| {
                let v = req.json_object_or_empty()?;
                let (id, view) = request_return(db, key, &v, now)?;
                Ok(Response::json(201, &view)
                    .with_header("location", &format!("/api/returns/{id}")))
            }),
            ("POST", ["api", "returns", key, action]) => once(&|db, got| {
                let v = req.json_object_or_empty()?;
                *got = return_action(db, key, action, &v, now)?;
                Ok(Response::json(200, &returns::view(db, key)?))
            }),
            ("POST", _) => Err(Error::not_found(format!("no route for POST {}", req.path))),
            _ => Err(method_not_allowed(req)),
        }
    })();
    r.unwrap_or_else(|e| (Response::problem(&e), Default::default()))
}

/// Runs a change of the order `key` in one transaction and answers the order
/// with what the change did under `field`.
fn order_change(
    db: &dyn Db,
    key: &str,
    field: &str,
    f: Change,
    v: &Value,
    now: DateTime<Utc>,
) -> Result<Value> {
    let id = views::find(db, key)?;
    let out = transaction(db, |db| f(db, &id, v, "api", now))?;
    let mut answer = views::order_view(db, &id)?.unwrap_or(Value::Null);
    answer[field] = out;
    Ok(answer)
}

fn request_return(
    db: &dyn Db,
    key: &str,
    v: &Value,
    now: DateTime<Utc>,
) -> Result<(String, Value)> {
    let order_id = views::find(db, key)?;
    let id = transaction(db, |db| returns::request(db, &order_id, v, "api", now))?;
    Ok((id.clone(), returns::view(db, &id)?))
}

fn return_action(
    db: &dyn Db,
    key: &str,
    action: &str,
    v: &Value,
    now: DateTime<Utc>,
) -> Result<Received> {
    let mut got = Received::default();
    transaction(db, |db| match action {
        "approve" => returns::approve(db, key, v, "api", now),
        "reject" => returns::close_unreceived(db, key, "rejected", v, "api", now),
        "cancel" => returns::close_unreceived(db, key, "cancelled", v, "api", now),
        "receive" => {
            got = crate::flows::returns::receive(db, key, v, "api", now)?;
            Ok(())
        }
        other => Err(Error::not_found(format!("no return action '{other}'"))),
    })?;
    Ok(got)
}

/// Reads take the read scope.
pub fn handle(db: &dyn Db, tokens: &Tokens, req: &Request) -> Response {
    let r = (|| -> Result<Response> {
        tokens.authorize(req, Scope::Read)?;
        if req.method != "GET" && req.method != "HEAD" {
            return Err(method_not_allowed(req));
        }
        let segs = segments(&req.path);
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        if let ["api", "orders", key, ..] = segs.as_slice() {
            crate::flows::intake::take_up_for_read(db, key)?;
        }
        let body = match segs.as_slice() {
            ["api", "returns", key] => returns::view(db, key)?,
            ["api", "orders"] => list(db, &list_query(req)?)?,
            ["api", "orders", key] => crate::flows::order_detail::order_detail(db, key)?,
            ["api", "orders", key, "events"] => views::timeline(db, key)?,
            ["api", "orders", key, "returns"] => {
                returns::list_for_order(db, &views::find(db, key)?)?
            }
            ["api", "orders", key, "routing"] => {
                crate::routing::allocation::routing_view(db, &views::find(db, key)?)?
            }
            ["api", "orders", key, "shipments"] => {
                crate::fulfillment::shipments_view(db, &views::find(db, key)?)?
            }
            _ => {
                return Err(Error::not_found(format!(
                    "no orders endpoint at {}",
                    req.path
                )))
            }
        };
        Ok(Response::json(200, &body))
    })();
    r.into()
}

fn time_param(req: &Request, name: &str) -> Result<Option<String>> {
    match req.query_param(name) {
        None => Ok(None),
        Some(v) => {
            // A date means the start of that day (UTC).
            let t = parse_time(&v).or_else(|| parse_time(&format!("{v}T00:00:00Z")));
            t.map(|t| Some(ts(t))).ok_or_else(|| {
                query_error(
                    name,
                    format!("'{v}' is not an RFC 3339 timestamp or a date"),
                )
            })
        }
    }
}

const LIST_FILTERS: &[&str] = &[
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

/// The list filters of `GET /api/orders`; an unknown or malformed one is a 400.
fn list_query(req: &Request) -> Result<ListQuery> {
    for (k, _) in req.query_pairs() {
        if !LIST_FILTERS.contains(&k.as_str()) {
            return Err(query_error(
                &k,
                format!("unknown filter; known: {}", LIST_FILTERS.join(", ")),
            ));
        }
    }
    let mut q = ListQuery {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    if let Some(s) = req.query_param("status") {
        if !OrderStatus::ALL.contains(&s.as_str()) {
            return Err(query_error(
                "status",
                format!("'{s}' is not one of {}", OrderStatus::ALL.join(", ")),
            ));
        }
        q.status = Some(s);
    }
    if let Some(h) = req.query_param("hold_reason") {
        if HoldReason::parse(&h).is_none() {
            return Err(query_error(
                "hold_reason",
                format!("'{h}' is not a hold reason"),
            ));
        }
        q.hold_reason = Some(h);
    }
    if let Some(s) = req.query_param("source") {
        if Source::parse(&s).is_none() {
            return Err(query_error(
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
            .ok_or_else(|| query_error("limit", format!("must be 1 to {MAX_LIMIT}")))?;
    }
    if let Some(c) = req.query_param("cursor") {
        q.after = Some(decode_cursor(&c)?);
    }
    Ok(q)
}

/// A cursor is the (created_at, id) of the last row of a page, base64url.
fn decode_cursor(c: &str) -> Result<(String, String)> {
    let bad = || query_error("cursor", "is not a cursor this API issued");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c.as_bytes())
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (at, id) = s.split_once('|').ok_or_else(bad)?;
    Ok((at.to_string(), id.to_string()))
}

fn encode_cursor(created_at: &str, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at}|{id}"))
}

/// A page of order summaries, newest first, with the cursor of the next page.
fn list(db: &dyn Db, q: &ListQuery) -> Result<Value> {
    let (rows, more) = views::list(db, q)?;
    let next = more.then(|| rows.last()).flatten().map(|r| {
        encode_cursor(
            r["created_at"].as_str().unwrap_or_default(),
            r["id"].as_str().unwrap_or_default(),
        )
    });
    Ok(json!({"orders": rows, "next_cursor": next}))
}
