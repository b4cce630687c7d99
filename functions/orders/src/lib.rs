//! orders: order queries (by id, number or source id; list with filters and
//! cursor pagination; the timeline, routing, shipments, returns) and returns
//! (RMA: request, approve, reject, cancel, receive with inspection and refund).
//! The routes are `waybill::http::orders`.

use spin_sdk::http::{IncomingRequest, IntoResponse};
use spin_sdk::http_component;
use waybill::flows::schedules;
use waybill::http::maintenance::{self, Schedule};
use waybill::{http, spin_glue};

#[http_component]
async fn handle(req: IncomingRequest) -> anyhow::Result<impl IntoResponse> {
    // The body is read up to the limit, never buffered past it.
    let r = match spin_glue::incoming(req).await {
        Ok(r) => r,
        Err(e) => return Ok(spin_glue::response(http::Response::problem(&e))),
    };
    let tokens = http::Tokens::parse(&spin_glue::variable("api_tokens", ""));
    if let Some(allowed) = maintenance::request(&tokens, &r, Schedule::Housekeeping) {
        // housekeeping-cron's work, for platforms without cron triggers.
        let result = allowed
            .and_then(|()| Ok((spin_glue::retention()?, spin_glue::open_writer()?)))
            .and_then(|(ret, db)| schedules::housekeeping(&db, &ret, chrono::Utc::now()));
        return Ok(spin_glue::response(maintenance::answer(
            Schedule::Housekeeping,
            result,
        )));
    }
    if r.method == "GET" || r.method == "HEAD" {
        let resp = match spin_glue::open_db() {
            Ok(db) => http::orders::handle(&db, &tokens, &r),
            Err(e) => http::Response::problem(&e),
        };
        return Ok(spin_glue::response(resp));
    }
    let now = chrono::Utc::now();
    let (resp, moved, captures_due) = match spin_glue::open_writer() {
        Ok(db) => {
            let (resp, moved) = http::orders::handle_write(&db, &tokens, &r, now);
            let due = waybill::payments::capture::has_due(&db, now).unwrap_or(false);
            (resp, moved, due)
        }
        Err(e) => (http::Response::problem(&e), Default::default(), false),
    };
    if (200..300).contains(&resp.status) {
        if captures_due {
            // A refund through the gateway: send it now.
            spin_glue::kick_capture(&[]).await;
        }
        // Restocked returns may release waiting backorders; an exchange's
        // replacement order is routed like any new order.
        spin_glue::release_backorders(&moved.restocked).await;
        if let Some(id) = moved.replacement_order {
            spin_glue::route_orders(&[id]).await;
        }
        spin_glue::kick_notify().await;
    }
    Ok(spin_glue::response(resp))
}
