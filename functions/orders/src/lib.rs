//! orders: order queries (by id, number or source id; list with filters and
//! cursor pagination; the timeline). The work is in `waybill::orders`.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_component;
use waybill::{http, orders, spin_glue};

#[http_component]
fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let r = spin_glue::request(&req);
    let tokens = http::Tokens::parse(&spin_glue::variable("api_tokens", ""));
    let resp = match spin_glue::open_db() {
        Ok(db) => orders::handle(&db, &tokens, &r),
        Err(e) => http::Response::problem(&e),
    };
    Ok(spin_glue::response(resp))
}
