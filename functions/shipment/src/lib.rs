//! shipment: fulfillment execution.
//!
//! - `POST /callbacks/fc/:facility/shipments`: a fulfillment center's signed
//!   callback (request accepted / rejected, shipment confirmation, cancellation
//!   answers).
//! - `POST /callbacks/carriers/{easypost|aftership|shippo}`: carrier tracking,
//!   verified per carrier.
//! - `/api/fulfillment/...`: in-house pick, pack and handover jobs, the
//!   carrier-pickup list, rate tables and quotes, bins, settings, action items.
//!
//! The work is in `waybill::fulfillment`, the routes in `waybill::http::shipment`. Shipments
//! write the confirmation e-mail and CRM events to the outbox; notify is
//! kicked after every successful write, capture after a shipment (capture at
//! shipment).

use spin_sdk::http::{IncomingRequest, IntoResponse};
use spin_sdk::http_component;
use waybill::{fulfillment, http, spin_glue};

fn secret(name: &str) -> Option<String> {
    waybill::inventory::FC_SECRET_VARIABLES
        .contains(&name)
        .then(|| spin_glue::variable(name, ""))
        .filter(|s| !s.is_empty())
}

#[http_component]
async fn handle(req: IncomingRequest) -> anyhow::Result<impl IntoResponse> {
    // The body is read up to the limit, never buffered past it.
    let r = match spin_glue::incoming(req).await {
        Ok(r) => r,
        Err(e) => return Ok(spin_glue::response(http::Response::problem(&e))),
    };
    let tokens = http::Tokens::parse(&spin_glue::variable("api_tokens", ""));
    let secrets = fulfillment::Secrets {
        facility: &secret,
        easypost: spin_glue::variable("easypost_webhook_secret", ""),
        aftership: spin_glue::variable("aftership_webhook_secret", ""),
        shippo_token: spin_glue::variable("shippo_webhook_token", ""),
        shippo_hmac: spin_glue::variable("shippo_webhook_secret", ""),
    };
    let now = chrono::Utc::now();
    let (resp, captures_due) = match spin_glue::open_writer() {
        Ok(db) => {
            let resp = http::shipment::handle(&db, &tokens, &secrets, &r, now);
            let due = r.method == "POST"
                && waybill::payments::capture::has_due(&db, now).unwrap_or(false);
            (resp, due)
        }
        Err(e) => (http::Response::problem(&e), false),
    };
    if r.method == "POST" && (200..300).contains(&resp.status) {
        if captures_due {
            spin_glue::kick_capture(&[]).await;
        }
        spin_glue::kick_notify().await;
    }
    Ok(spin_glue::response(resp))
}
