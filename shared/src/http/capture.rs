//! The capture component's routes. `POST /internal/capture` (private: routing
//! chains it) and `POST /api/payments/sweep` run the gateway worker before
//! answering; refunds and retries run it for their order.

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::http::{idempotent_step, replay_marked, segments, Request, Response, Tokens};
use crate::kernel::db::{transaction, Db};
use crate::kernel::error::{Error, FieldError, Result};
use crate::orders::views;
use crate::payments::capture::{
    action_items, document, documents, payment_view, process_due, put_settings, refund,
    refund_sent, settings, Processed, RefundRequest,
};
use crate::payments::gateway::{Http, StripeConfig};

/// `?limit=` (1 to 500, 50 by default), `?after=` (a document number) and
/// `?order=` (any order key) of a document list.
fn document_page(db: &dyn Db, table: &str, req: &Request) -> Result<Json> {
    let limit = match req.query_param("limit") {
        None => 50,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                return Err(Error::invalid(vec![FieldError::new(
                    "limit",
                    "must be an integer from 1 to 500",
                )]))
            }
        },
    };
    let after = match req.query_param("after") {
        None => 0,
        Some(s) => s
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<i64>().ok())
            .ok_or_else(|| {
                Error::invalid(vec![FieldError::new("after", "must be a document number")])
            })?,
    };
    let order = match req.query_param("order") {
        Some(key) => Some(
            views::resolve(db, &key)?
                .ok_or_else(|| Error::not_found(format!("no order '{key}'")))?,
        ),
        None => None,
    };
    documents(db, table, after, order, limit)
}

fn refund_request(v: &Json) -> Result<RefundRequest> {
    let mut errs = Vec::new();
    let mut r = RefundRequest {
        reason: v["reason"]
            .as_str()
            .unwrap_or("refund")
            .chars()
            .take(500)
            .collect(),
        shipping: v["shipping"].as_bool().unwrap_or(false),
        ..Default::default()
    };
    if !v["shipping"].is_null() && !v["shipping"].is_boolean() {
        errs.push(FieldError::new("/shipping", "must be true or false"));
    }
    match &v["lines"] {
        Json::Null => {}
        Json::Array(a) => {
            for (i, l) in a.iter().enumerate() {
                match (l["line_no"].as_i64(), l["quantity"].as_i64()) {
                    (Some(n), Some(q)) if q > 0 => {
                        if r.lines.insert(n, q).is_some() {
                            errs.push(FieldError::new(
                                format!("/lines/{i}/line_no"),
                                "line named twice",
                            ));
                        }
                    }
                    _ => errs.push(FieldError::new(
                        format!("/lines/{i}"),
                        "needs an integer line_no and a positive integer quantity",
                    )),
                }
            }
        }
        _ => errs.push(FieldError::new("/lines", "must be an array")),
    }
    match &v["amount_minor"] {
        Json::Null => {}
        x => match x.as_i64() {
            Some(n) if n > 0 => r.amount = Some(n),
            _ => errs.push(FieldError::new(
                "/amount_minor",
                "must be a positive integer (minor units)",
            )),
        },
    }
    errs.extend(FieldError::unknown_fields(
        v,
        &["lines", "shipping", "amount_minor", "reason"],
    ));
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    Ok(r)
}

fn processed_json(p: &Processed) -> Json {
    json!({"succeeded": p.succeeded, "declined": p.declined, "retrying": p.retrying, "unknown": p.unknown, "deferred": p.deferred})
}

pub fn handle(
    db: &dyn Db,
    tokens: &Tokens,
    req: &Request,
    http: &dyn Http,
    stripe: &StripeConfig,
    now: DateTime<Utc>,
) -> Response {
    let r = (|| -> Result<Response> {
        let segs = segments(&req.path);
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let m = req.method.as_str();
        if segs.first() == Some(&"internal") {
            req.internal_allowed()?;
            return match (m, segs.as_slice()) {
                ("POST", ["internal", "capture"]) => {
                    let v = req.json_object_or_empty()?;
                    let ids: Option<Vec<String>> = v["order_ids"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .take(1000)
                            .collect()
                    });
                    let p = process_due(db, http, stripe, ids.as_deref(), now, 500)?;
                    Ok(Response::json(200, &processed_json(&p)))
                }
                _ => Err(Error::not_found("no such internal endpoint")),
            };
        }
        tokens.authorize_route(req)?;
        let order = |key: &str| -> Result<String> {
            views::resolve(db, key)?.ok_or_else(|| Error::not_found(format!("no order '{key}'")))
        };
        match (m, segs.as_slice()) {
            ("GET", ["api", "invoices"]) => {
                Ok(Response::json(200, &document_page(db, "invoices", req)?))
            }
            ("GET", ["api", "invoices", n]) => {
                Ok(Response::json(200, &document(db, "invoices", n)?))
            }
            ("GET", ["api", "credit-memos"]) => Ok(Response::json(
                200,
                &document_page(db, "credit_memos", req)?,
            )),
            ("GET", ["api", "credit-memos", n]) => {
                Ok(Response::json(200, &document(db, "credit_memos", n)?))
            }
            ("GET", ["api", "payments", "settings"]) => {
                Ok(Response::json(200, &settings(db)?.json()))
            }
            ("PUT", ["api", "payments", "settings"]) => {
                let v = req.json_object()?;
                let s = transaction(db, |db| put_settings(db, &v))?;
                Ok(Response::json(200, &s.json()))
            }
            ("GET", ["api", "payments", "action-items"]) => {
                Ok(Response::json(200, &action_items(db)?))
            }
            ("GET", ["api", "payments", "orders", key]) => {
                let id = order(key)?;
                Ok(Response::json(200, &payment_view(db, &id)?))
            }
            // Under the caller's Idempotency-Key the ledger entry is made once;
            // a retry answers that refund's (or payment's) current state.
            ("POST", ["api", "payments", "orders", key, "refunds"]) => {
                let r = refund_request(&req.json_object()?)?;
                let id = order(key)?;
                let (tx, replayed) = idempotent_step(db, req, now, |db| {
                    Ok(json!(transaction(db, |db| refund(
                        db, &id, &r, "api", now
                    ))?))
                })?;
                let answer =
                    refund_sent(db, http, stripe, &id, tx.as_str().unwrap_or_default(), now)?;
                Ok(replay_marked(Response::json(201, &answer), replayed))
            }
            ("POST", ["api", "payments", "orders", key, "retry"]) => {
                let v = req.json_object_or_empty()?;
                let id = order(key)?;
                let (_, replayed) = idempotent_step(db, req, now, |db| {
                    transaction(db, |db| {
                        crate::flows::payments::retry(db, &id, &v, "api", now)
                    })?;
                    Ok(json!(true))
                })?;
                let answer = crate::flows::payments::retry_sent(db, http, stripe, &id, now)?;
                Ok(replay_marked(Response::json(200, &answer), replayed))
            }
            ("POST", ["api", "payments", "sweep"]) => {
                let p = process_due(db, http, stripe, None, now, 500)?;
                Ok(Response::json(200, &processed_json(&p)))
            }
            _ => Err(Error::not_found(format!("no route for {m} {}", req.path))),
        }
    })();
    r.unwrap_or_else(|e| Response::problem(&e))
}
