//! inventory: facilities, catalog, stock per facility, licence-key pools, and
//! the fulfillment centers' inventory (pull on demand, signed push callback).
//! Whatever makes stock available is followed by a chained backorder release
//! (routing) before the answer; the work is in `waybill::inventory`, the
//! routes in `waybill::http::inventory`.

use spin_sdk::http::{IncomingRequest, IntoResponse};
use spin_sdk::http_component;
use waybill::flows::schedules;
use waybill::http::maintenance::{self, Schedule};
use waybill::{http, inventory, spin_glue, Error};

/// A center's signing secret: only the variables declared for centers.
fn secret(name: &str) -> Option<String> {
    waybill::inventory::FC_SECRET_VARIABLES
        .contains(&name)
        .then(|| spin_glue::variable(name, ""))
        .filter(|s| !s.is_empty())
}

/// `POST /api/facilities/{id}/inventory/sync`: pulls the center's levels now.
async fn pull(
    db: &dyn waybill::kernel::db::Db,
    kv: &dyn waybill::kernel::kv::Kv,
    cfg: &inventory::Config<'_>,
    facility: &str,
    fx: &mut inventory::Effects,
) -> Result<http::Response, Error> {
    let now = chrono::Utc::now();
    let t = inventory::pull_target(db, cfg, facility)?;
    let headers = t.headers(now);
    let (status, body) = spin_glue::http_get(&t.url, &headers).await.map_err(|e| {
        Error::new(
            waybill::kernel::error::ErrorKind::Unavailable,
            format!("{facility}: inventory pull failed: {e}"),
        )
    })?;
    if status != 200 {
        return Err(Error::new(
            waybill::kernel::error::ErrorKind::Unavailable,
            format!("{facility}: the inventory endpoint answered {status}"),
        ));
    }
    // A document the center got wrong is the center's fault, not the caller's: 503, not 4xx.
    let out = inventory::apply_snapshot(db, kv, facility, &body, "pull", now, fx).map_err(|e| {
        if e.status() < 500 {
            Error::new(
                waybill::kernel::error::ErrorKind::Unavailable,
                format!(
                    "{facility}: the inventory endpoint sent an unusable document: {}",
                    e.detail
                ),
            )
        } else {
            e
        }
    })?;
    Ok(http::Response::json(200, &out))
}

#[http_component]
async fn handle(req: IncomingRequest) -> anyhow::Result<impl IntoResponse> {
    // The body is read up to the limit, never buffered past it.
    let r = match spin_glue::incoming(req).await {
        Ok(r) => r,
        Err(e) => return Ok(spin_glue::response(http::Response::problem(&e))),
    };
    let tokens = http::Tokens::parse(&spin_glue::variable("api_tokens", ""));
    let receivers = spin_glue::receivers();
    let cfg = inventory::Config {
        secret: &secret,
        receivers: &receivers,
    };
    let mut fx = inventory::Effects::default();
    let resp = match (spin_glue::open_writer(), spin_glue::kv()) {
        (Ok(db), Ok(kv)) => {
            let segs: Vec<&str> = r.path.split('/').filter(|s| !s.is_empty()).collect();
            if let Some(allowed) = maintenance::request(&tokens, &r, Schedule::Inventory) {
                // inventory-cron's work, for platforms without cron triggers.
                let result = match allowed {
                    Ok(()) => {
                        let get = spin_glue::http_get_owned;
                        schedules::inventory(&db, &kv, &cfg, &mut fx, get).await
                    }
                    Err(e) => Err(e),
                };
                maintenance::answer(Schedule::Inventory, result)
            } else if let ["api", "facilities", id, "inventory", "sync"] = segs.as_slice() {
                let auth = tokens.authorize_route(&r);
                match (r.method.as_str(), auth) {
                    (_, Err(e)) => http::Response::problem(&e),
                    ("POST", Ok(())) => pull(&db, &kv, &cfg, id, &mut fx).await.into(),
                    _ => http::Response::problem(&Error::new(
                        waybill::kernel::error::ErrorKind::MethodNotAllowed,
                        "POST to pull the facility's inventory now",
                    )),
                }
            } else {
                let (resp, f) =
                    http::inventory::handle(&db, &kv, &tokens, &cfg, &r, chrono::Utc::now());
                fx = f;
                resp
            }
        }
        (Err(e), _) | (_, Err(e)) => http::Response::problem(&e),
    };
    let mut resp = resp;
    if (200..300).contains(&resp.status) && !fx.restocked.is_empty() {
        if let Some(done) = spin_glue::release_backorders(&fx.restocked).await {
            let mut body = resp.json_body();
            if body.is_object() {
                body["backorders"] = done;
                resp = http::Response::json(resp.status, &body);
            }
        }
        spin_glue::kick_notify().await;
    }
    Ok(spin_glue::response(resp))
}
