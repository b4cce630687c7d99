//! intake: order webhooks from Shopify, WooCommerce and commercetools, and
//! Waybill's own order API (single, batch, XML). Verifies, de-duplicates,
//! normalises and persists; the work is in `waybill::intake`.

use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;
use waybill::{http, intake, spin_glue};

fn config() -> intake::Config {
    intake::Config {
        shopify_secret: spin_glue::variable("shopify_webhook_secret", ""),
        woocommerce_secret: spin_glue::variable("woocommerce_webhook_secret", ""),
        commercetools_secret: spin_glue::variable("commercetools_secret", ""),
        tokens: http::Tokens::parse(&spin_glue::variable("api_tokens", "")),
    }
}

/// Spin routes by path, not method: `GET /api/orders` (the list) arrives here
/// and belongs to the orders component.
async fn forward_to_orders(req: &Request) -> Response {
    let mut out = Request::builder();
    out.method(Method::Get).uri(format!(
        "http://orders.spin.internal{}",
        req.path_and_query().unwrap_or("/api/orders")
    ));
    for (k, v) in req.headers() {
        if k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("accept") {
            out.header(k, v.as_str().unwrap_or_default());
        }
    }
    match spin_sdk::http::send::<_, Response>(out.build()).await {
        Ok(r) => r,
        Err(e) => spin_glue::response(http::Response::problem(&waybill::Error::new(
            waybill::error::ErrorKind::Unavailable,
            format!("the orders component did not answer: {e}"),
        ))),
    }
}

/// Asks notify to deliver what this request put in the outbox. notify answers
/// 202 before it works; if the call fails, the cron sweep delivers instead.
async fn kick_notify() {
    let req = Request::builder()
        .method(Method::Post)
        .uri("http://notify.spin.internal/internal/sweep")
        .body(Vec::new())
        .build();
    if let Err(e) = spin_sdk::http::send::<_, Response>(req).await {
        eprintln!("intake: notify kick failed (the cron sweep will deliver): {e}");
    }
}

#[http_component]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let r = spin_glue::request(&req);
    if r.path.trim_end_matches('/') == "/api/orders" && (r.method == "GET" || r.method == "HEAD") {
        return Ok(forward_to_orders(&req).await);
    }
    let resp = match spin_glue::open_writer() {
        Ok(db) => intake::handle(&db, &config(), &r, chrono::Utc::now()),
        Err(e) => http::Response::problem(&e),
    };
    if (200..300).contains(&resp.status) {
        kick_notify().await;
    }
    Ok(spin_glue::response(resp))
}
