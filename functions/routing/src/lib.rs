//! routing: places orders' units at facilities (fences, ratings, split,
//! reservation, backorders, licence keys, release).
//!
//! - `POST /internal/route`, `POST /internal/backorders` (private; intake and
//!   inventory chain to them): the work runs before the answer, so the caller
//!   knows it is done; if the call fails, routing-cron's sweep does it.
//! - `/api/routing/...`: per-channel configuration, centroids, an on-demand sweep.
//!
//! The work is in `waybill::allocation` and `waybill::routing`.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_component;
use waybill::{allocation, http, spin_glue};

#[http_component]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let r = spin_glue::request(&req);
    let tokens = http::Tokens::parse(&spin_glue::variable("api_tokens", ""));
    let resp = match spin_glue::open_writer() {
        Ok(db) => allocation::handle(&db, &tokens, &r, chrono::Utc::now()),
        Err(e) => http::Response::problem(&e),
    };
    // intake kicks notify itself after its chained routing call.
    if r.method == "POST" && r.path != "/internal/route" && (200..300).contains(&resp.status) {
        spin_glue::kick_notify().await;
    }
    Ok(spin_glue::response(resp))
}
