//! notify: drains the outbox into e-mails and signed outbound webhooks.
//!
//! - `POST /internal/sweep` (private; other components chain to it after a
//!   change): answers 202 at once, then sweeps in this instance.
//! - `GET /api/events`, `/api/notifications/...`: the export cursor, mailbox,
//!   dead letters and replay, subscriptions, templates.
//! The work is in `waybill::notify`; the routes are `waybill::http::notify`.

use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use spin_sdk::http_component;
use waybill::flows::center_requests::FulfillmentCenters;
use waybill::flows::schedules;
use waybill::http::maintenance::{self, Schedule};
use waybill::{http, notify, spin_glue};

/// How long one chained sweep may keep this instance busy.
const SWEEP_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let req = match spin_glue::incoming(req).await {
        Ok(r) => r,
        Err(e) => return spin_glue::respond(out, http::Response::problem(&e)),
    };
    let cfg = spin_glue::notify_config();
    let tokens = http::Tokens::parse(&spin_glue::variable("api_tokens", ""));
    if let Some(allowed) = maintenance::request(&tokens, &req, Schedule::Notify) {
        // notify-cron's work, for platforms without cron triggers.
        let result = match allowed.and_then(|()| spin_glue::open_writer()) {
            Ok(db) => {
                let t = &spin_glue::transport();
                schedules::notify(&db, &cfg, &FulfillmentCenters, t, SWEEP_BUDGET).await
            }
            Err(e) => Err(e),
        };
        return spin_glue::respond(out, maintenance::answer(Schedule::Notify, result));
    }
    if req.path.starts_with("/internal/") {
        if let Err(e) = req.internal_allowed() {
            return spin_glue::respond(out, http::Response::problem(&e));
        }
    }
    if req.path == "/internal/sweep" {
        // Answer first: the caller is on its own request path; the work is durable.
        spin_glue::respond(
            out,
            http::Response::json(202, &serde_json::json!({"accepted": true})),
        );
        let result = match spin_glue::open_writer() {
            Ok(db) => {
                let t = &spin_glue::transport();
                notify::kicked_sweep(&db, &cfg, &FulfillmentCenters, t, SWEEP_BUDGET).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            eprintln!("notify: sweep failed (the cron sweep will retry): {e}");
        }
        return;
    }
    let resp = match spin_glue::open_writer() {
        Ok(db) => http::notify::handle(&db, &tokens, &cfg.receivers, &req, chrono::Utc::now()),
        Err(e) => http::Response::problem(&e),
    };
    spin_glue::respond(out, resp);
}
