//! capture: the payment ledger's HTTP face and its gateway worker.
//!
//! - `POST /internal/capture` (private; routing chains it after scheduling
//!   captures): sends the due gateway calls (Stripe captures, refunds, voids)
//!   before answering.
//! - `/api/invoices/...`, `/api/credit-memos/...`, `/api/payments/...`: invoices
//!   and credit memos, an order's payment ledger, refunds, the operator's retry
//!   after a decline, payment action items, settings, an on-demand sweep.
//!
//! The work is in `waybill::payments`, the routes in `waybill::http::capture`; capture-cron runs
//! the same worker every minute (retries with backoff).

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
    let (gateway, stripe) = spin_glue::payment_gateway();
    let resp = match spin_glue::open_writer() {
        Ok(db) => match maintenance::request(&tokens, &r, Schedule::Capture) {
            // capture-cron's work, for platforms without cron triggers.
            Some(allowed) => maintenance::answer(
                Schedule::Capture,
                allowed
                    .and_then(|()| schedules::capture(&db, &gateway, &stripe, chrono::Utc::now())),
            ),
            None => http::capture::handle(&db, &tokens, &r, &gateway, &stripe, chrono::Utc::now()),
        },
        Err(e) => http::Response::problem(&e),
    };
    // Released fulfillment orders, invoices and refunds went to the outbox.
    if r.method == "POST" && (200..300).contains(&resp.status) {
        spin_glue::kick_notify().await;
    }
    Ok(spin_glue::response(resp))
}
