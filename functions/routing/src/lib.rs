//! routing: places orders' units at facilities (fences, ratings, split,
//! reservation, backorders, licence keys, release).
//!
//! - `POST /internal/route`, `POST /internal/backorders` (private; intake and
//!   inventory chain to them): the work runs before the answer, so the caller
//!   knows it is done; if the call fails, routing-cron's sweep does it.
//! - `/api/routing/...`: per-channel configuration, centroids, an on-demand sweep.
//!
//! Released fulfillment orders whose capture goes through a gateway are sent
//! by the capture component, chained here after the work.
//!
//! The work is in `waybill::routing`; the routes in `waybill::http::routing`.

use spin_sdk::http::{IncomingRequest, IntoResponse};
use spin_sdk::http_component;
use waybill::flows::schedules;
use waybill::http::maintenance::{self, Schedule};
use waybill::{http, payments::capture, spin_glue};

#[http_component]
async fn handle(req: IncomingRequest) -> anyhow::Result<impl IntoResponse> {
    // The body is read up to the limit, never buffered past it.
    let r = match spin_glue::incoming(req).await {
        Ok(r) => r,
        Err(e) => return Ok(spin_glue::response(http::Response::problem(&e))),
    };
    let tokens = http::Tokens::parse(&spin_glue::variable("api_tokens", ""));
    let now = chrono::Utc::now();
    let (resp, captures_due) = match spin_glue::open_writer() {
        Ok(db) => {
            let resp = match maintenance::request(&tokens, &r, Schedule::Routing) {
                // routing-cron's work, for platforms without cron triggers.
                Some(allowed) => maintenance::answer(
                    Schedule::Routing,
                    allowed.and_then(|()| schedules::routing(&db, now)),
                ),
                None => http::routing::handle(&db, &tokens, &r, now),
            };
            // Released work may wait for a gateway capture: send it now. (The
            // clock read after the work: the routing worker stamps each batch
            // with its own time.)
            let due =
                r.method == "POST" && capture::has_due(&db, chrono::Utc::now()).unwrap_or(false);
            (resp, due)
        }
        Err(e) => (http::Response::problem(&e), false),
    };
    if captures_due {
        // Every due call, not only this request's orders: a pass also serves
        // older waiting orders.
        spin_glue::kick_capture(&[]).await;
    }
    if http::routing::kicks_notify(&r, &resp) {
        spin_glue::kick_notify().await;
    }
    Ok(spin_glue::response(resp))
}
