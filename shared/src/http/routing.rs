//! The routing component's routes. Private (reachable only by service chaining:
//! no public route maps to `/internal`): `POST /internal/route {"order_ids"}`,
//! `POST /internal/backorders {"skus"}`. Admin: `/api/routing/config[/{channel}]`,
//! `/api/routing/centroids`, `POST /api/routing/simulate`, `POST /api/routing/sweep`.

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::http::{segments, Request, Response, Tokens};
use crate::intake::sources;
use crate::kernel::db::Db;
use crate::kernel::error::{Error, ErrorKind, Result};
use crate::routing::{allocation, settings};

/// A channel in a path: `default` names the default (`*`).
fn channel_key(c: &str) -> String {
    if c == "default" {
        "*".into()
    } else {
        c.to_string()
    }
}

/// The strings of an array field of a body.
fn strings(v: &Json, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// Whether the routing component kicks notify after this answer: after a
/// successful change from the API, and after the chained `/internal/route`
/// when it wrote something (the worker took up or routed a batch, or orders
/// were routed again): a kick that found the worker busy wrote nothing, and
/// the busy worker's own call kicks notify when its batches are done.
pub fn kicks_notify(req: &Request, resp: &Response) -> bool {
    if req.method != "POST" || !(200..300).contains(&resp.status) {
        return false;
    }
    if req.path != "/internal/route" {
        return true;
    }
    let v = resp.json_body();
    v["worker"]["batches"].as_u64().unwrap_or(0) > 0
        || v["results"].as_array().is_some_and(|r| !r.is_empty())
}

pub fn handle(db: &dyn Db, tokens: &Tokens, req: &Request, now: DateTime<Utc>) -> Response {
    let r = (|| -> Result<Response> {
        let body = || req.json_object();
        let segs = segments(&req.path);
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let m = req.method.as_str();
        let ok = |v: Json| Ok(Response::json(200, &v));
        if segs.first() == Some(&"internal") {
            req.internal_allowed()?;
        }
        match (m, segs.as_slice()) {
            ("POST", ["internal", "route"]) => ok(allocation::route_kicked(
                db,
                &strings(&body()?, "order_ids"),
                now,
                std::time::Duration::from_secs(20),
            )?),
            ("POST", ["internal", "backorders"]) => {
                let skus = strings(&body()?, "skus");
                let served = allocation::release_backorders(db, Some(&skus), None, now, 1000)?;
                ok(json!({"skus": skus, "orders_served": served}))
            }
            (_, ["internal", ..]) => Err(Error::not_found("no such internal endpoint")),
            _ => {
                tokens.authorize_route(req)?;
                match (m, segs.as_slice()) {
                    ("GET", ["api", "routing", "config"]) => ok(settings::configs_view(db)?),
                    ("GET", ["api", "routing", "config", ch]) => {
                        ok(settings::effective_view(db, &channel_key(ch))?)
                    }
                    ("PUT", ["api", "routing", "config", ch]) => {
                        ok(settings::put_config(db, &channel_key(ch), body()?, now)?)
                    }
                    ("GET", ["api", "routing", "centroids"]) => ok(settings::centroids_view(db)?),
                    ("PUT", ["api", "routing", "centroids"]) => {
                        ok(settings::put_centroids(db, &body()?)?)
                    }
                    ("POST", ["api", "routing", "simulate"]) => {
                        let o = sources::api::map_order(&body()?["order"], "/order", now)?;
                        ok(allocation::simulate(db, &o)?)
                    }
                    ("POST", ["api", "routing", "sweep"]) => {
                        let (routed, released, served) = allocation::sweep(db, now, 500)?;
                        ok(
                            json!({"routed": routed, "released": released, "backorders_served": served}),
                        )
                    }
                    (_, ["api", "routing", "config" | "centroids" | "sweep" | "simulate", ..]) => {
                        Err(Error::new(
                            ErrorKind::MethodNotAllowed,
                            format!("{m} is not allowed on {}", req.path),
                        ))
                    }
                    _ => Err(Error::not_found(format!(
                        "no routing endpoint at {}",
                        req.path
                    ))),
                }
            }
        }
    })();
    r.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chained_route_kicks_notify_only_when_it_wrote() {
        let route = Request {
            method: "POST".into(),
            path: "/internal/route".into(),
            ..Default::default()
        };
        let answer = |v: Json| Response::json(200, &v);
        let busy = answer(json!({"results": [], "worker": {"rounds": 0, "batches": 0}}));
        assert!(
            !kicks_notify(&route, &busy),
            "the busy worker kicks when done"
        );
        let took = answer(json!({"results": [], "worker": {"rounds": 1, "batches": 1}}));
        assert!(kicks_notify(&route, &took));
        let again = answer(json!({"results": [{"order_id": "a"}], "worker": {"batches": 0}}));
        assert!(kicks_notify(&route, &again));
        let api = Request {
            method: "POST".into(),
            path: "/api/routing/sweep".into(),
            ..Default::default()
        };
        assert!(kicks_notify(&api, &answer(json!({}))));
    }
}
