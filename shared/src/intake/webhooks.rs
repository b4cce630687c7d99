//! Order intake: verify, de-duplicate, normalise and persist orders from every
//! source. The intake component parses the HTTP request and calls [`handle`].
//!
//! Exactly-once: a delivery id (Shopify event/webhook id, WooCommerce delivery
//! id, commercetools message id) is recorded in `webhook_receipts` in the same
//! transaction as its effect, and `(source, external_id)` is unique. Concurrent
//! deliveries serialise on `BEGIN IMMEDIATE`, so the second sees the first.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value as Json};
use sha2::Digest;

use crate::http::{Request, Response, Scope, Tokens};
use crate::intake::sources::{self, commercetools, shopify, woocommerce};
use crate::kernel::db::{transaction, Db};
use crate::kernel::error::{Error, Result};
use crate::kernel::signature;
use crate::kernel::time::ts;
use crate::orders::model::{NewOrder, Source};
use crate::orders::store;
use crate::params;

/// Secrets and tokens, from Spin variables.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub shopify_secret: String,
    pub woocommerce_secret: String,
    pub commercetools_secret: String,
    pub tokens: Tokens,
}

/// How long an Idempotency-Key's response is kept.
pub const IDEMPOTENCY_RETENTION_HOURS: i64 = 24;
/// The most orders one batch may carry.
pub const MAX_BATCH: usize = 500;

/// Routes an intake request.
pub fn handle(db: &dyn Db, cfg: &Config, req: &Request, now: DateTime<Utc>) -> Response {
    let r = (|| -> Result<Response> {
        req.check_size()?;
        // Spin's router treats `/x/` like `/x`; so does this one.
        let path = match req.path.trim_end_matches('/') {
            "" => "/",
            p => p,
        };
        match (req.method.as_str(), path) {
            ("POST", "/webhooks/shopify") => shopify_webhook(db, cfg, req, now),
            ("POST", "/webhooks/woocommerce") => woocommerce_webhook(db, cfg, req, now),
            ("POST", "/webhooks/commercetools") => commercetools_webhook(db, cfg, req, now),
            ("POST", "/api/orders") => api_create(db, cfg, req, now),
            ("POST", "/api/orders/batch") => api_batch(db, cfg, req, now),
            (
                _,
                "/webhooks/shopify"
                | "/webhooks/woocommerce"
                | "/webhooks/commercetools"
                | "/api/orders/batch",
            ) => Err(Error::new(
                crate::kernel::error::ErrorKind::MethodNotAllowed,
                format!("{} is not allowed here; use POST", req.method),
            )),
            _ => Err(Error::not_found(format!(
                "no intake endpoint at {}",
                req.path
            ))),
        }
    })();
    r.into()
}

fn require_header<'a>(req: &'a Request, name: &str) -> Result<&'a str> {
    req.header(name)
        .ok_or_else(|| Error::bad_request(format!("the {name} header is required")))
}

fn verify_hmac_header(req: &Request, header: &str, secret: &str, platform: &str) -> Result<()> {
    if secret.is_empty() {
        return Err(Error::unauthorized(format!(
            "{platform} webhooks are not configured (no secret set)"
        )));
    }
    let Some(sig) = req.header(header) else {
        return Err(Error::unauthorized(format!(
            "the {header} signature header is missing"
        )));
    };
    if !signature::verify_base64(secret.as_bytes(), &req.body, sig) {
        return Err(Error::unauthorized(format!(
            "the {header} signature does not match the body"
        )));
    }
    Ok(())
}

/// Records a delivery id with the id its order will most likely get; false when
/// the delivery was seen before (a redelivery). One statement: RETURNING yields
/// no row when the receipt already exists.
fn first_delivery(
    db: &dyn Db,
    source: Source,
    delivery_id: &str,
    topic: &str,
    order_id: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let r = db.execute(
        "INSERT INTO webhook_receipts (source, delivery_id, topic, received_at, order_id) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT DO NOTHING RETURNING 1 AS inserted",
        params![source.as_str(), delivery_id, topic, ts(now), order_id],
    )?;
    Ok(!r.is_empty())
}

fn mark_delivery(
    db: &dyn Db,
    source: Source,
    delivery_id: &str,
    order_id: Option<&str>,
) -> Result<()> {
    db.execute(
        "UPDATE webhook_receipts SET order_id = ? WHERE source = ? AND delivery_id = ?",
        params![order_id, source.as_str(), delivery_id],
    )?;
    Ok(())
}

fn outcome(status: &str, id: &str, number: &str) -> Json {
    json!({"result": status, "order_id": id, "number": number})
}

/// What a source delivery asks for.
enum Action {
    Create(NewOrder),
    Update(NewOrder),
    Cancel {
        external_id: String,
        reason: String,
        order: Option<NewOrder>,
    },
}

/// Applies one delivery in one transaction. Returns the JSON answer.
fn apply(
    db: &dyn Db,
    source: Source,
    delivery_id: Option<&str>,
    topic: &str,
    action: Action,
    now: DateTime<Utc>,
) -> Result<Json> {
    let actor = store::actor_for(source);
    let new_id = uuid::Uuid::now_v7().to_string();
    // Fast path before taking the write lock: a known order needs no write
    // (and this read loads the schema outside the lock).
    if let Action::Create(o) = &action {
        if let Some(ex) =
            store::find_by_source(&crate::kernel::db::Patient(db), source, &o.external_id)?
        {
            return Ok(outcome("already_received", &ex.id, &ex.number));
        }
    }
    transaction(db, |db| {
        if let Some(d) = delivery_id {
            if !first_delivery(db, source, d, topic, &new_id, now)? {
                return Ok(json!({"result": "duplicate_delivery", "delivery_id": d}));
            }
        }
        let answer = match action {
            Action::Create(o) => match store::insert_order_with_id(db, &new_id, &o, now, &actor)? {
                Some(ins) => return Ok(outcome("created", &ins.id, &ins.number)),
                // Another delivery created it between the fast path and the lock.
                None => match store::find_by_source(db, source, &o.external_id)? {
                    Some(ex) => outcome("already_received", &ex.id, &ex.number),
                    None => return Err(Error::internal("order conflict without an order")),
                },
            },
            Action::Update(o) => match store::find_by_source(db, source, &o.external_id)? {
                None => match store::insert_order_with_id(db, &new_id, &o, now, &actor)? {
                    Some(ins) => outcome("created", &ins.id, &ins.number),
                    None => return Err(Error::internal("order conflict without an order")),
                },
                Some(ex) if o.cancelled => {
                    store::cancel_open_units(db, &ex.id, "cancelled at the source", now, &actor)?;
                    outcome("cancelled", &ex.id, &ex.number)
                }
                Some(ex) if ex.source_hash == store::source_hash(&o) => {
                    outcome("unchanged", &ex.id, &ex.number)
                }
                Some(ex)
                    if ex.released_units > 0
                        && !ex.fulfillment_hash.is_empty()
                        && ex.fulfillment_hash == store::fulfillment_hash(&o) =>
                {
                    store::update_after_release(db, &ex, &o, now, &actor)?;
                    outcome("updated", &ex.id, &ex.number)
                }
                Some(ex) if ex.released_units > 0 => {
                    store::record_event(
                        db,
                        &ex.id,
                        now,
                        &actor,
                        "order.source_update_after_release",
                        "The source changed the order after release; not applied",
                        json!({"released_units": ex.released_units}),
                    )?;
                    store::add_hold(
                        db,
                        &ex.id,
                        crate::orders::model::HoldReason::ManualReview,
                        "the source changed the order after release",
                        now,
                        &actor,
                    )?;
                    store::refresh_status(db, &ex.id, now)?;
                    outcome("flagged", &ex.id, &ex.number)
                }
                Some(ex) => {
                    store::replace_order(db, &ex, &o, now, &actor)?;
                    outcome("updated", &ex.id, &ex.number)
                }
            },
            Action::Cancel {
                external_id,
                reason,
                order,
            } => match store::find_by_source(db, source, &external_id)? {
                Some(ex) => {
                    store::cancel_open_units(db, &ex.id, &reason, now, &actor)?;
                    outcome("cancelled", &ex.id, &ex.number)
                }
                // A cancellation can overtake the creation; keep the order, cancelled.
                None => match order {
                    Some(mut o) => {
                        o.cancelled = true;
                        match store::insert_order_with_id(db, &new_id, &o, now, &actor)? {
                            Some(ins) => outcome("created_cancelled", &ins.id, &ins.number),
                            None => return Err(Error::internal("order conflict without an order")),
                        }
                    }
                    None => json!({"result": "unknown_order", "external_id": external_id}),
                },
            },
        };
        // The receipt was written with the id a new order would get; point it at the real one.
        if let Some(d) = delivery_id {
            let id = answer.get("order_id").and_then(Json::as_str);
            if id != Some(new_id.as_str()) {
                mark_delivery(db, source, d, id)?;
            }
        }
        Ok(answer)
    })
}

// ---- Shopify ----

fn shopify_webhook(
    db: &dyn Db,
    cfg: &Config,
    req: &Request,
    now: DateTime<Utc>,
) -> Result<Response> {
    verify_hmac_header(req, "x-shopify-hmac-sha256", &cfg.shopify_secret, "Shopify")?;
    let topic = require_header(req, "x-shopify-topic")?.to_string();
    let delivery = req
        .header("x-shopify-event-id")
        .or_else(|| req.header("x-shopify-webhook-id"))
        .map(str::to_string);
    if topic == "order_transactions/create" {
        return shopify_transaction(db, delivery.as_deref(), &topic, req, now);
    }
    if !matches!(
        topic.as_str(),
        "orders/create" | "orders/updated" | "orders/cancelled" | "orders/paid" | "orders/edited"
    ) {
        return Ok(Response::json(
            200,
            &json!({"result": "ignored", "topic": topic}),
        ));
    }
    let v = crate::kernel::json::parse_json(&req.body)?;
    if topic == "orders/edited" {
        // The order_edit payload is not an order; the orders/updated that follows carries the result.
        return Ok(Response::json(
            200,
            &json!({"result": "ignored", "topic": topic}),
        ));
    }
    let order = shopify::map_order(&v, now)?;
    let action = match topic.as_str() {
        "orders/create" => Action::Create(order),
        "orders/cancelled" => Action::Cancel {
            external_id: order.external_id.clone(),
            reason: format!(
                "cancelled in Shopify ({})",
                v.get("cancel_reason")
                    .and_then(Json::as_str)
                    .unwrap_or("no reason given")
            ),
            order: Some(order),
        },
        _ => Action::Update(order),
    };
    let answer = apply(
        db,
        Source::Shopify,
        delivery.as_deref(),
        &topic,
        action,
        now,
    )?;
    Ok(Response::json(200, &answer))
}

/// `order_transactions/create`: the shop's record of an authorization, a
/// capture, a void or a refund, booked in the payment ledger. A transaction
/// for an order Waybill does not have (yet) is acknowledged and ignored:
/// failing it would make Shopify retry and, in the end, drop the subscription.
fn shopify_transaction(
    db: &dyn Db,
    delivery: Option<&str>,
    topic: &str,
    req: &Request,
    now: DateTime<Utc>,
) -> Result<Response> {
    let v = crate::kernel::json::parse_json(&req.body)?;
    let t = shopify::map_transaction(&v)?;
    let answer = transaction(db, |db| {
        if let Some(d) = delivery {
            if !first_delivery(db, Source::Shopify, d, topic, &t.id, now)? {
                return Ok(json!({"result": "duplicate_delivery", "delivery_id": d}));
            }
        }
        let Some(ex) = store::find_by_source(db, Source::Shopify, &t.order_id)? else {
            return Ok(
                json!({"result": "ignored", "reason": format!("no order with Shopify id {}", t.order_id)}),
            );
        };
        let done = crate::payments::capture::source_transaction(db, &ex.id, &t, now)?;
        Ok::<_, Error>(
            json!({"result": done, "order_id": ex.id, "number": ex.number, "transaction_id": t.id}),
        )
    })?;
    Ok(Response::json(200, &answer))
}

// ---- WooCommerce ----

fn is_woo_ping(req: &Request) -> bool {
    let body = String::from_utf8_lossy(&req.body);
    body.strip_prefix("webhook_id=")
        .map(|id| !id.is_empty() && id.trim().chars().all(|c| c.is_ascii_digit()))
        .unwrap_or(false)
}

fn woocommerce_webhook(
    db: &dyn Db,
    cfg: &Config,
    req: &Request,
    now: DateTime<Utc>,
) -> Result<Response> {
    // WooCommerce confirms a new webhook with a form-encoded `webhook_id=N` ping.
    if is_woo_ping(req) {
        return Ok(Response::json(200, &json!({"result": "pong"})));
    }
    verify_hmac_header(
        req,
        "x-wc-webhook-signature",
        &cfg.woocommerce_secret,
        "WooCommerce",
    )?;
    let topic = require_header(req, "x-wc-webhook-topic")?.to_string();
    let delivery = req.header("x-wc-webhook-delivery-id").map(str::to_string);
    let v = crate::kernel::json::parse_json(&req.body)?;
    let action = match topic.as_str() {
        "order.created" => Action::Create(woocommerce::map_order(&v, now)?),
        "order.updated" | "order.restored" => Action::Update(woocommerce::map_order(&v, now)?),
        "order.deleted" => {
            let id = match v.get("id") {
                Some(Json::Number(n)) => n.to_string(),
                Some(Json::String(s)) if !s.is_empty() => s.clone(),
                _ => {
                    return Err(Error::invalid(vec![crate::kernel::error::FieldError::new(
                        "/id",
                        "is required",
                    )]))
                }
            };
            Action::Cancel {
                external_id: id,
                reason: "deleted in WooCommerce".into(),
                order: None,
            }
        }
        _ => {
            return Ok(Response::json(
                200,
                &json!({"result": "ignored", "topic": topic}),
            ))
        }
    };
    let answer = apply(
        db,
        Source::Woocommerce,
        delivery.as_deref(),
        &topic,
        action,
        now,
    )?;
    Ok(Response::json(200, &answer))
}

// ---- commercetools ----

/// Unwraps transports that carry a commercetools message: a Google Pub/Sub push
/// (`message.data`, base64) or an AWS EventBridge event (`detail`).
fn unwrap_envelope(v: Json) -> Result<Json> {
    use base64::Engine as _;
    if let Some(data) = v
        .get("message")
        .and_then(|m| m.get("data"))
        .and_then(Json::as_str)
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| Error::bad_request("message.data is not base64"))?;
        return crate::kernel::json::parse_json(&bytes);
    }
    if let Some(detail) = v
        .get("detail")
        .filter(|d| d.get("notificationType").is_some() || d.get("type").is_some())
    {
        return Ok(detail.clone());
    }
    Ok(v)
}

fn commercetools_webhook(
    db: &dyn Db,
    cfg: &Config,
    req: &Request,
    now: DateTime<Utc>,
) -> Result<Response> {
    if cfg.commercetools_secret.is_empty() {
        return Err(Error::unauthorized(
            "commercetools delivery is not configured (no secret set)",
        ));
    }
    let given = req
        .header("x-waybill-secret")
        .map(str::to_string)
        .or_else(|| {
            req.header("authorization")
                .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string))
        });
    match given {
        Some(g)
            if signature::constant_time_eq(
                g.trim().as_bytes(),
                cfg.commercetools_secret.as_bytes(),
            ) => {}
        Some(_) => return Err(Error::unauthorized("the shared secret does not match")),
        None => {
            return Err(Error::unauthorized(
                "the X-Waybill-Secret header (or Authorization: Bearer) is missing",
            ))
        }
    }
    let v = unwrap_envelope(crate::kernel::json::parse_json(&req.body)?)?;
    let msg = commercetools::message(&v)?;
    let action = match msg.kind.as_str() {
        "OrderCreated" | "OrderImported" => {
            let o = msg.order.ok_or_else(|| {
                Error::invalid(vec![crate::kernel::error::FieldError::new(
                    "/order",
                    "is required",
                )])
            })?;
            Action::Create(commercetools::map_order(&o, now)?)
        }
        _ => {
            return Ok(Response::json(
                200,
                &json!({"result": "ignored", "type": msg.kind}),
            ))
        }
    };
    let answer = apply(
        db,
        Source::Commercetools,
        Some(&msg.id),
        &msg.kind,
        action,
        now,
    )?;
    Ok(Response::json(200, &answer))
}

// ---- Waybill API ----

fn request_hash(body: &[u8]) -> String {
    signature::hex(&sha2::Sha256::digest(body))
}

fn order_response(db: &dyn Db, id: &str, status: u16) -> Result<Response> {
    let view = crate::orders::views::order_view(db, id)?
        .ok_or_else(|| Error::internal("order vanished"))?;
    Ok(Response::json(status, &view).with_header("location", &format!("/api/orders/{id}")))
}

fn create_api_order(db: &dyn Db, o: &NewOrder, now: DateTime<Utc>) -> Result<Response> {
    if let Some(ex) = store::find_by_source(db, Source::Api, &o.external_id)? {
        let mut e = Error::conflict(format!(
            "an order with external_id '{}' already exists: {}",
            o.external_id, ex.number
        ));
        e.errors.push(crate::kernel::error::FieldError::new(
            "/external_id",
            format!("exists as order {}", ex.id),
        ));
        return Err(e);
    }
    let ins = store::insert_order(db, o, now, "api")?;
    order_response(db, &ins.id, 201)
}

fn api_create(db: &dyn Db, cfg: &Config, req: &Request, now: DateTime<Utc>) -> Result<Response> {
    cfg.tokens.authorize(req, Scope::Write)?;
    let ct = req.content_type();
    if !ct.is_empty() && ct != "application/json" && !ct.ends_with("+json") {
        return Err(Error::new(
            crate::kernel::error::ErrorKind::UnsupportedMediaType,
            format!(
                "'{ct}' is not accepted; send application/json (XML goes to /api/orders/batch)"
            ),
        ));
    }
    let key = req
        .header("idempotency-key")
        .map(str::trim)
        .map(str::to_string);
    if let Some(k) = &key {
        if k.is_empty() || k.len() > 255 {
            return Err(Error::bad_request(
                "Idempotency-Key must be 1 to 255 characters",
            ));
        }
    }
    let v = crate::kernel::json::parse_json(&req.body)?;
    let order = sources::api::map_order(&v, "", now)?;
    let Some(key) = key else {
        return transaction(db, |db| create_api_order(db, &order, now));
    };
    let hash = request_hash(&req.body);
    transaction(db, |db| {
        let prior = db.execute(
            "SELECT request_hash, status, body FROM idempotency_keys WHERE scope = 'api:orders' AND key = ? AND expires_at > ?",
            params![key.clone(), ts(now)],
        )?;
        if let Some(p) = prior.first() {
            if p.str("request_hash") != hash {
                return Err(Error::unprocessable(
                    "this Idempotency-Key was already used with a different request body",
                ));
            }
            let stored: Json = serde_json::from_str(&p.str("body")).unwrap_or(Json::Null);
            let status = p.i64("status") as u16;
            let mut r = if status >= 400 {
                Response {
                    status,
                    headers: vec![("content-type".into(), "application/problem+json".into())],
                    body: stored.to_string().into_bytes(),
                }
            } else {
                Response::json(status, &stored)
            };
            r.headers
                .push(("idempotent-replayed".into(), "true".into()));
            return Ok(r);
        }
        let resp: Response = match create_api_order(db, &order, now) {
            Ok(r) => r,
            Err(e) if e.status() == 409 => Response::problem(&e),
            Err(e) => return Err(e),
        };
        db.execute(
            "INSERT OR REPLACE INTO idempotency_keys (scope, key, request_hash, status, body, created_at, expires_at)
             VALUES ('api:orders', ?, ?, ?, ?, ?, ?)",
            params![key.clone(), hash.clone(), resp.status as i64, String::from_utf8_lossy(&resp.body).into_owned(), ts(now),
                ts(now + Duration::hours(IDEMPOTENCY_RETENTION_HOURS))],
        )?;
        Ok(resp)
    })
}

fn api_batch(db: &dyn Db, cfg: &Config, req: &Request, now: DateTime<Utc>) -> Result<Response> {
    cfg.tokens.authorize(req, Scope::Write)?;
    let ct = req.content_type();
    let docs: Vec<Json> = if ct == "application/xml" || ct == "text/xml" || ct.ends_with("+xml") {
        sources::api::xml_orders(&req.body)?
    } else if ct.is_empty() || ct == "application/json" {
        match crate::kernel::json::parse_json(&req.body)? {
            Json::Array(a) => a,
            Json::Object(mut m) if m.get("orders").map(Json::is_array).unwrap_or(false) => {
                match m.remove("orders") {
                    Some(Json::Array(a)) => a,
                    _ => unreachable!("checked above"),
                }
            }
            _ => {
                return Err(Error::bad_request(
                    "a JSON batch is an array of orders (or {\"orders\": [...]})",
                ))
            }
        }
    } else {
        return Err(Error::new(
            crate::kernel::error::ErrorKind::UnsupportedMediaType,
            format!("'{ct}' is not accepted; send application/json or application/xml"),
        ));
    };
    if docs.is_empty() {
        return Err(Error::unprocessable("the batch contains no orders"));
    }
    if docs.len() > MAX_BATCH {
        return Err(Error::new(
            crate::kernel::error::ErrorKind::PayloadTooLarge,
            format!("at most {MAX_BATCH} orders per batch"),
        ));
    }
    // Validate each order on its own: one bad order does not reject the others.
    let mapped: Vec<Result<NewOrder>> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| sources::api::map_order(d, &format!("/orders/{i}"), now))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let results: Vec<Json> = transaction(db, |db| {
        let mut out = Vec::new();
        for (i, m) in mapped.iter().enumerate() {
            out.push(match m {
                Err(e) => json!({"index": i, "status": e.status(), "result": "rejected", "problem": e.problem()}),
                Ok(o) if !seen.insert(o.external_id.clone()) => json!({
                    "index": i, "status": 422, "result": "rejected",
                    "problem": Error::invalid(vec![crate::kernel::error::FieldError::new(format!("/orders/{i}/external_id"), "appears twice in this batch")]).problem(),
                }),
                Ok(o) => match store::find_by_source(db, Source::Api, &o.external_id)? {
                    Some(ex) => json!({"index": i, "status": 200, "result": "exists", "order_id": ex.id, "number": ex.number}),
                    None => {
                        let ins = store::insert_order(db, o, now, "api:batch")?;
                        json!({"index": i, "status": 201, "result": "created", "order_id": ins.id, "number": ins.number})
                    }
                },
            });
        }
        Ok::<_, Error>(out)
    })?;
    let rejected = results.iter().filter(|r| r["result"] == "rejected").count();
    if rejected == results.len() {
        let mut e =
            Error::unprocessable(format!("all {rejected} orders in the batch were rejected"));
        for r in &results {
            for fe in r["problem"]["errors"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                e.errors.push(crate::kernel::error::FieldError::new(
                    fe["pointer"].as_str().unwrap_or_default(),
                    fe["detail"].as_str().unwrap_or_default(),
                ));
            }
        }
        return Err(e);
    }
    let status = if rejected > 0 { 207 } else { 200 };
    Ok(Response::json(
        status,
        &json!({
            "accepted": results.len() - rejected,
            "rejected": rejected,
            "results": results,
        }),
    ))
}

/// The orders an intake answer created or changed, for the chained routing call.
pub fn orders_to_route(resp: &Response) -> Vec<String> {
    if !(200..300).contains(&resp.status) {
        return Vec::new();
    }
    let v = resp.json_body();
    let routable = |x: &Json| {
        matches!(
            x["result"].as_str(),
            Some("created" | "updated" | "already_received" | "unchanged" | "exists")
        )
    };
    let mut out = Vec::new();
    if let Some(list) = v["results"].as_array() {
        for x in list.iter().filter(|x| routable(x)) {
            if let Some(id) = x["order_id"].as_str() {
                out.push(id.to_string());
            }
        }
    } else if routable(&v) {
        out.extend(v["order_id"].as_str().map(str::to_string));
    } else if v["number"].is_string() && v["status"].is_string() {
        // The API's order view.
        out.extend(v["id"].as_str().map(str::to_string));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_orders_to_route_come_from_every_answer_shape() {
        let webhook = Response::json(
            200,
            &json!({"result": "created", "order_id": "a", "number": "WB-1"}),
        );
        assert_eq!(orders_to_route(&webhook), vec!["a".to_string()]);
        let dup = Response::json(
            200,
            &json!({"result": "duplicate_delivery", "delivery_id": "d"}),
        );
        assert!(orders_to_route(&dup).is_empty());
        let cancelled = Response::json(200, &json!({"result": "cancelled", "order_id": "a"}));
        assert!(orders_to_route(&cancelled).is_empty());
        let view = Response::json(
            201,
            &json!({"id": "b", "number": "WB-2", "status": "received"}),
        );
        assert_eq!(orders_to_route(&view), vec!["b".to_string()]);
        let batch = Response::json(
            207,
            &json!({"results": [
            {"result": "created", "order_id": "c"}, {"result": "rejected", "status": 422}, {"result": "exists", "order_id": "d"}]}),
        );
        assert_eq!(
            orders_to_route(&batch),
            vec!["c".to_string(), "d".to_string()]
        );
        let error = Response::json(422, &json!({"result": "created", "order_id": "x"}));
        assert!(orders_to_route(&error).is_empty());
    }
}
