//! The intake component's routes: the shops' webhooks (each verified by its
//! documented signature header) and Waybill's order API (`POST /api/orders`
//! with an optional Idempotency-Key, `POST /api/orders/batch` in JSON or XML).

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::flows::intake;
use crate::http::{Request, Response, Scope, Tokens};
use crate::intake::sources;
use crate::intake::webhooks::{self, Config};
use crate::kernel::db::{transaction, Db};
use crate::kernel::error::{Error, ErrorKind, Result};
use crate::routing::allocation::worker;

/// Routes an intake request.
pub fn handle(
    db: &dyn Db,
    cfg: &Config,
    tokens: &Tokens,
    req: &Request,
    now: DateTime<Utc>,
) -> Response {
    let r = (|| -> Result<Response> {
        req.check_size()?;
        // Spin's router treats `/x/` like `/x`; so does this one.
        let path = match req.path.trim_end_matches('/') {
            "" => "/",
            p => p,
        };
        let ok = |v: Json| Ok(Response::json(200, &v));
        match (req.method.as_str(), path) {
            ("POST", "/webhooks/shopify") => ok(shopify(db, cfg, req, now)?),
            ("POST", "/webhooks/woocommerce") => ok(woocommerce(db, cfg, req, now)?),
            ("POST", "/webhooks/commercetools") => {
                let given = req
                    .header("x-waybill-secret")
                    .map(str::to_string)
                    .or_else(|| {
                        req.header("authorization")
                            .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string))
                    });
                webhooks::verify_commercetools(cfg, given)?;
                ok(intake::receive(
                    db,
                    webhooks::commercetools(&req.body, now)?,
                    now,
                )?)
            }
            ("POST", "/api/orders") => {
                tokens.authorize(req, Scope::OrdersWrite)?;
                api_create(db, req, now)
            }
            ("POST", "/api/orders/batch") => {
                tokens.authorize(req, Scope::OrdersWrite)?;
                let answer = intake::api_batch(db, &batch_documents(req)?, now)?;
                let partial = answer["rejected"].as_u64().unwrap_or(0) > 0;
                Ok(Response::json(if partial { 207 } else { 200 }, &answer))
            }
            (
                _,
                "/webhooks/shopify"
                | "/webhooks/woocommerce"
                | "/webhooks/commercetools"
                | "/api/orders/batch",
            ) => Err(Error::new(
                ErrorKind::MethodNotAllowed,
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

/// Shopify: `X-Shopify-Hmac-Sha256`, `X-Shopify-Topic`, and the event id (or
/// the webhook id) as the delivery id.
fn shopify(db: &dyn Db, cfg: &Config, req: &Request, now: DateTime<Utc>) -> Result<Json> {
    let h = "x-shopify-hmac-sha256";
    webhooks::verify_hmac(&req.body, h, req.header(h), &cfg.shopify_secret, "Shopify")?;
    let topic = require_header(req, "x-shopify-topic")?;
    let delivery = req
        .header("x-shopify-event-id")
        .or_else(|| req.header("x-shopify-webhook-id"));
    if topic == "order_transactions/create" {
        return crate::flows::source_payments::shopify_transaction(
            db, delivery, topic, &req.body, now,
        );
    }
    intake::receive(db, webhooks::shopify(topic, delivery, &req.body, now)?, now)
}

/// WooCommerce: the ping that confirms a new webhook, then
/// `X-WC-Webhook-Signature`, `X-WC-Webhook-Topic`, `X-WC-Webhook-Delivery-ID`.
fn woocommerce(db: &dyn Db, cfg: &Config, req: &Request, now: DateTime<Utc>) -> Result<Json> {
    if webhooks::is_woo_ping(&req.body) {
        return Ok(serde_json::json!({"result": "pong"}));
    }
    let h = "x-wc-webhook-signature";
    webhooks::verify_hmac(
        &req.body,
        h,
        req.header(h),
        &cfg.woocommerce_secret,
        "WooCommerce",
    )?;
    let topic = require_header(req, "x-wc-webhook-topic")?;
    let delivery = req.header("x-wc-webhook-delivery-id");
    intake::receive(
        db,
        webhooks::woocommerce(topic, delivery, &req.body, now)?,
        now,
    )
}

/// `POST /api/orders`: JSON only; with an Idempotency-Key the first answer
/// (success or 409) is kept and replayed for the same body.
fn api_create(db: &dyn Db, req: &Request, now: DateTime<Utc>) -> Result<Response> {
    let ct = req.content_type();
    if !ct.is_empty() && ct != "application/json" && !ct.ends_with("+json") {
        return Err(Error::new(
            ErrorKind::UnsupportedMediaType,
            format!(
                "'{ct}' is not accepted; send application/json (XML goes to /api/orders/batch)"
            ),
        ));
    }
    let v = crate::kernel::json::parse_json(&req.body)?;
    let order = sources::api::map_order(&v, "", now)?;
    crate::http::idempotent(db, req, "api:orders", now, |db| {
        let view = transaction(db, |db| intake::create_api_order(db, &order, now))?;
        let id = view["id"].as_str().unwrap_or_default().to_string();
        Ok(Response::json(201, &view).with_header("location", &format!("/api/orders/{id}")))
    })
}

/// The order documents of a batch: XML, or JSON (an array or `{"orders": [...]}`).
fn batch_documents(req: &Request) -> Result<Vec<Json>> {
    let ct = req.content_type();
    if ct == "application/xml" || ct == "text/xml" || ct.ends_with("+xml") {
        return sources::api::xml_orders(&req.body);
    }
    if !(ct.is_empty() || ct == "application/json") {
        return Err(Error::new(
            ErrorKind::UnsupportedMediaType,
            format!("'{ct}' is not accepted; send application/json or application/xml"),
        ));
    }
    match crate::kernel::json::parse_json(&req.body)? {
        Json::Array(a) => Ok(a),
        Json::Object(mut m) => match m.remove("orders") {
            Some(Json::Array(a)) => Ok(a),
            _ => Err(Error::bad_request(
                "a JSON batch is an array of orders (or {\"orders\": [...]})",
            )),
        },
        _ => Err(Error::bad_request(
            "a JSON batch is an array of orders (or {\"orders\": [...]})",
        )),
    }
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

/// The orders the chained routing call (`/internal/route`) is for, once the
/// answer is durable: none when they are all new orders (never routed) and a
/// worker holds the routing lease, because that worker routes them before it
/// lets go ([`worker::busy`]); the call would only find it busy, at the cost
/// of another component instance, its connection and its reads per webhook
/// while the worker is busiest. Orders to route again (a source update) are
/// always sent: the worker routes only orders it never routed.
pub fn orders_to_chain(db: &dyn Db, resp: &Response, now: DateTime<Utc>) -> Vec<String> {
    let ids = orders_to_route(resp);
    if ids.is_empty() || !only_new_orders(resp) {
        return ids;
    }
    match worker::busy(db, now) {
        Ok(true) => Vec::new(),
        // Not held, or not known: the chained call decides.
        _ => ids,
    }
}

/// Whether every order an answer names was created by it (its new orders:
/// routing never saw them).
fn only_new_orders(resp: &Response) -> bool {
    let v = resp.json_body();
    match v["results"].as_array() {
        Some(list) => list
            .iter()
            .filter(|x| x["order_id"].is_string())
            .all(|x| x["result"] == "created"),
        None => v["result"] == "created" || (resp.status == 201 && v["number"].is_string()),
    }
}

/// Whether the answer wrote outbox messages notify should send now. A new
/// order from a webhook did not: its messages are pending with its rows, and
/// the routing worker that takes them up kicks notify
/// ([`crate::http::routing::kicks_notify`]), once per batch, not per webhook.
pub fn kicks_notify(req: &Request, resp: &Response) -> bool {
    if !(200..300).contains(&resp.status) {
        return false;
    }
    !(req.path.starts_with("/webhooks/") && resp.json_body()["result"] == "created")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn notify_is_kicked_for_what_the_answer_wrote_itself() {
        let at = |path: &str| Request {
            method: "POST".into(),
            path: path.into(),
            ..Default::default()
        };
        let created = Response::json(200, &json!({"result": "created", "order_id": "a"}));
        // A webhook's new order: its messages are pending; the worker kicks notify.
        assert!(!kicks_notify(&at("/webhooks/shopify"), &created));
        // Written by the answer's own transaction: an update, an API order.
        let updated = Response::json(200, &json!({"result": "updated", "order_id": "a"}));
        assert!(kicks_notify(&at("/webhooks/shopify"), &updated));
        assert!(kicks_notify(
            &at("/api/orders"),
            &Response::json(201, &json!({"id": "a"}))
        ));
        assert!(!kicks_notify(
            &at("/webhooks/shopify"),
            &Response::json(401, &json!({}))
        ));
    }

    #[test]
    fn new_orders_are_not_chained_to_a_busy_worker_and_orders_to_route_again_always_are() {
        let db = crate::testkit::db();
        let now = Utc::now();
        let created = Response::json(200, &json!({"result": "created", "order_id": "a"}));
        let updated = Response::json(200, &json!({"result": "updated", "order_id": "a"}));
        let view = Response::json(
            201,
            &json!({"id": "b", "number": "WB-2", "status": "received"}),
        );
        let batch = |second: &str| {
            Response::json(
                200,
                &json!({"results": [{"result": "created", "order_id": "c"},
                                   {"result": "rejected", "status": 422},
                                   {"result": second, "order_id": "d"}]}),
            )
        };
        let ids = |r: &Response| orders_to_chain(&db, r, now);
        // No worker: every answer's orders are chained.
        assert_eq!(ids(&created), ["a"]);
        assert_eq!(ids(&view), ["b"]);
        assert_eq!(ids(&batch("created")), ["c", "d"]);
        let until = now + chrono::Duration::seconds(30);
        assert!(crate::kernel::lease::try_lock(&db, worker::LEASE, "w", now, until).unwrap());
        // A busy worker routes new orders before it lets go: no call.
        assert!(ids(&created).is_empty());
        assert!(ids(&view).is_empty());
        assert!(ids(&batch("created")).is_empty());
        // An order to route again is not the worker's: always chained.
        assert_eq!(ids(&updated), ["a"]);
        assert_eq!(ids(&batch("updated")), ["c", "d"]);
        // A lease that ran out is nobody's.
        let later = until + chrono::Duration::seconds(1);
        assert_eq!(orders_to_chain(&db, &created, later), ["a"]);
    }

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
