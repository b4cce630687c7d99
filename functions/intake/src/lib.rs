//! intake: order webhooks from Shopify, WooCommerce and commercetools, and
//! Waybill's own order API (single, batch, XML). Verifies, de-duplicates,
//! normalises and persists; the work is in `waybill::intake`, the routes in
//! `waybill::http::intake`.
//!
//! The answer goes out as soon as the order is durable; then, in this same
//! instance, routing is chained for the orders concerned (its worker kicks
//! notify for the messages it takes up) and notify is kicked for the messages
//! this answer wrote itself.
//! If either call fails, their cron sweeps do the work.

use spin_sdk::http::{IncomingRequest, Method, Request, Response, ResponseOutparam};
use spin_sdk::http_component;
use waybill::{http, intake::webhooks, spin_glue};

fn config() -> webhooks::Config {
    webhooks::Config {
        shopify_secret: spin_glue::variable("shopify_webhook_secret", ""),
        woocommerce_secret: spin_glue::variable("woocommerce_webhook_secret", ""),
        commercetools_secret: spin_glue::variable("commercetools_secret", ""),
    }
}

/// Spin routes by path, not method: `GET /api/orders` (the list) arrives here
/// and belongs to the orders component.
async fn forward_to_orders(req: &http::Request) -> http::Response {
    let mut out = Request::builder();
    let pq = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    out.method(Method::Get)
        .uri(format!("http://orders.spin.internal{pq}"));
    for (k, v) in &req.headers {
        if k == "authorization" || k == "accept" {
            out.header(k.as_str(), v.as_str());
        }
    }
    match spin_sdk::http::send::<_, Response>(out.build()).await {
        Ok(r) => http::Response {
            status: *r.status(),
            headers: r
                .headers()
                .map(|(k, v)| (k.to_string(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            body: r.body().to_vec(),
        },
        Err(e) => http::Response::problem(&waybill::Error::new(
            waybill::kernel::error::ErrorKind::Unavailable,
            format!("the orders component did not answer: {e}"),
        )),
    }
}

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let r = match spin_glue::incoming(req).await {
        Ok(r) => r,
        Err(e) => return spin_glue::respond(out, http::Response::problem(&e)),
    };
    if r.path.trim_end_matches('/') == "/api/orders" && (r.method == "GET" || r.method == "HEAD") {
        let resp = forward_to_orders(&r).await;
        return spin_glue::respond(out, resp);
    }
    let db = match spin_glue::open_writer() {
        Ok(db) => db,
        Err(e) => return spin_glue::respond(out, http::Response::problem(&e)),
    };
    let tokens = http::Tokens::parse(&spin_glue::variable("api_tokens", ""));
    let resp = http::intake::handle(&db, &config(), &tokens, &r, chrono::Utc::now());
    let notify = http::intake::kicks_notify(&r, &resp);
    let answer = resp.clone();
    spin_glue::respond(out, resp);
    // After the answer: new orders need no chained call while a worker is
    // busy (it routes them before it lets go).
    let route = http::intake::orders_to_chain(&db, &answer, chrono::Utc::now());
    drop(db);
    // Routing first (its worker takes up new orders and kicks notify for the
    // messages it wrote); notify for what this answer wrote itself.
    spin_glue::route_orders(&route).await;
    if notify {
        spin_glue::kick_notify().await;
    }
}
