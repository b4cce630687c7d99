//! The shipment component's routes: the fulfillment centers' signed shipment
//! callbacks, carrier tracking callbacks (EasyPost, AfterShip, Shippo, each
//! verified by its documented signature), and the fulfillment API (pick, pack
//! and handover jobs, carrier pickups, rates, settings, bins, action items).

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::fulfillment::{self, tracking, Secrets};
use crate::http::{segments, Request, Response, Tokens};
use crate::inventory;
use crate::kernel::db::{transaction, Db};
use crate::kernel::error::{Error, Result};

pub fn handle(
    db: &dyn Db,
    tokens: &Tokens,
    secrets: &Secrets,
    req: &Request,
    now: DateTime<Utc>,
) -> Response {
    let r = (|| -> Result<Response> {
        req.check_size()?;
        let segs = segments(&req.path);
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let m = req.method.as_str();
        let ok = |v: Json| Ok(Response::json(200, &v));
        match (m, segs.as_slice()) {
            ("POST", ["callbacks", "fc", facility, "shipments"]) => {
                let sig = req.header("waybill-signature").unwrap_or("");
                let used = fulfillment::verify_center(
                    db,
                    secrets,
                    facility,
                    sig,
                    (m, &req.path),
                    &req.body,
                    now,
                )?;
                ok(crate::flows::shipping::center_callback(
                    db,
                    facility,
                    &req.json_object()?,
                    &used,
                    now,
                )?)
            }
            ("POST", ["callbacks", "carriers", provider]) => {
                carrier_callback(db, secrets, req, provider, now)
            }
            (_, ["callbacks", ..]) => Err(Error::not_found("no such callback")),
            _ => {
                tokens.authorize_route(req)?;
                api(db, req, &segs, now)
            }
        }
    })();
    r.unwrap_or_else(|e| Response::problem(&e))
}

/// A carrier's tracking callback, verified the way that carrier signs.
fn carrier_callback(
    db: &dyn Db,
    secrets: &Secrets,
    req: &Request,
    provider: &str,
    now: DateTime<Utc>,
) -> Result<Response> {
    let verified = match provider {
        "easypost" => {
            tracking::verify_easypost(&secrets.easypost, &req.body, req.header("x-hmac-signature"))
        }
        "aftership" => tracking::verify_aftership(
            &secrets.aftership,
            &req.body,
            req.header("aftership-hmac-sha256"),
        ),
        "shippo" => tracking::verify_shippo(
            &secrets.shippo_token,
            req.query_param("token").as_deref(),
            &secrets.shippo_hmac,
            &req.body,
            req.header("shippo-auth-signature"),
            now.timestamp(),
        ),
        _ => {
            return Err(Error::not_found(format!(
                "no carrier callback '{provider}'"
            )))
        }
    };
    if !verified {
        return Err(Error::unauthorized(format!(
            "the {provider} signature does not match"
        )));
    }
    let update = match provider {
        "easypost" => tracking::easypost(&req.body)?,
        "aftership" => tracking::aftership(&req.body)?,
        _ => tracking::shippo(&req.body)?,
    };
    let Some(u) = update else {
        return Ok(Response::json(200, &json!({"result": "ignored"})));
    };
    Ok(Response::json(
        200,
        &fulfillment::carrier_update(db, &u, now)?,
    ))
}

/// The token-scoped API: jobs, carrier pickups, rates, settings, bins.
fn api(db: &dyn Db, req: &Request, segs: &[&str], now: DateTime<Utc>) -> Result<Response> {
    let m = req.method.as_str();
    let ok = |v: Json| Ok(Response::json(200, &v));
    match (m, segs) {
        ("GET", ["api", "fulfillment", "jobs"]) => {
            let q = fulfillment::JobQuery {
                facility: req.query_param("facility"),
                kind: req.query_param("kind"),
                status: req.query_param("status"),
            };
            ok(fulfillment::jobs_list(db, &q)?)
        }
        ("GET", ["api", "fulfillment", "jobs", id]) => ok(fulfillment::job_view(db, id)?),
        ("POST", ["api", "fulfillment", "jobs", id, "start"]) => {
            ok(fulfillment::start_job(db, id, now)?)
        }
        ("POST", ["api", "fulfillment", kind, id, "complete"])
            if matches!(*kind, "pick-jobs" | "pack-jobs" | "handover-jobs") =>
        {
            let v = req.json_object_or_empty()?;
            let kind = kind.trim_end_matches("-jobs");
            ok(crate::flows::shipping::complete_job(db, kind, id, &v, now)?)
        }
        ("GET", ["api", "fulfillment", "carrier-pickups"]) => ok(fulfillment::carrier_pickups(
            db,
            req.query_param("facility"),
        )?),
        ("GET", ["api", "fulfillment", "rates"]) => ok(fulfillment::rates_view(db)?),
        ("PUT", ["api", "fulfillment", "rates"]) => {
            let v = req.json_object()?;
            ok(transaction(db, |db| fulfillment::put_rates(db, &v))?)
        }
        ("GET", ["api", "fulfillment", "rates", "quote"]) => {
            let weight = req
                .query_param("weight_grams")
                .and_then(|w| w.parse::<i64>().ok())
                .filter(|w| *w > 0);
            ok(fulfillment::quote_view(
                db,
                &req.query_param("country").unwrap_or_default(),
                &req.query_param("postal_code").unwrap_or_default(),
                weight,
                req.query_param("carrier").as_deref(),
                req.query_param("service").as_deref(),
            )?)
        }
        ("GET", ["api", "fulfillment", "settings"]) => ok(fulfillment::settings_json(db)?),
        ("PUT", ["api", "fulfillment", "settings"]) => {
            let v = req.json_object()?;
            ok(transaction(db, |db| fulfillment::put_settings(db, &v))?)
        }
        ("GET", ["api", "fulfillment", "action-items"]) => ok(fulfillment::action_items(db)?),
        ("PUT", ["api", "fulfillment", "bins", facility, sku]) => ok(inventory::set_bin(
            db,
            facility,
            sku,
            &req.json_object()?,
            now,
        )?),
        _ => Err(Error::not_found(format!("no route for {m} {}", req.path))),
    }
}
