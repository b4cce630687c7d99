//! report: the daily performance report over HTTP — read (JSON or CSV) and
//! (re)generate. The work is in `waybill::reporting`.

use spin_sdk::http::{IncomingRequest, IntoResponse};
use spin_sdk::http_component;
use waybill::flows::schedules;
use waybill::http::maintenance::{self, Schedule};
use waybill::{http, reporting, spin_glue};

#[http_component]
async fn handle(req: IncomingRequest) -> anyhow::Result<impl IntoResponse> {
    // The body is read up to the limit, never buffered past it.
    let r = match spin_glue::incoming(req).await {
        Ok(r) => r,
        Err(e) => return Ok(spin_glue::response(http::Response::problem(&e))),
    };
    if let Ok(cfg) = spin_glue::report_config() {
        if let Some(allowed) = maintenance::request(&cfg.tokens, &r, Schedule::Report) {
            // report-cron's work, for platforms without cron triggers.
            let result = allowed
                .and_then(|()| Ok((spin_glue::open_writer()?, spin_glue::kv()?)))
                .and_then(|(db, kv)| schedules::report(&db, &kv, cfg.timezone, chrono::Utc::now()));
            return Ok(spin_glue::response(maintenance::answer(
                Schedule::Report,
                result,
            )));
        }
    }
    let resp = match (spin_glue::report_config(), spin_glue::open_writer()) {
        (Ok(cfg), Ok(db)) => {
            let (resp, latest) = http::report::handle(&db, &cfg, &r, chrono::Utc::now());
            if let Some(latest) = latest {
                match spin_glue::kv() {
                    Ok(kv) => reporting::cache_latest(&kv, &latest),
                    Err(e) => eprintln!("report: cannot cache the latest report: {e}"),
                }
            }
            resp
        }
        (Err(e), _) | (_, Err(e)) => http::Response::problem(&e),
    };
    Ok(spin_glue::response(resp))
}
