//! The notify component's admin and export routes: `/api/events` and
//! `/api/notifications/...` (read scope for GET, write scope otherwise).

use chrono::{DateTime, Utc};

use crate::http::{segments, Request, Response, Scope, Tokens};
use crate::kernel::db::Db;
use crate::kernel::error::{Error, ErrorKind, Result};
use crate::kernel::json::parse_json;
use crate::kernel::url::Receivers;
use crate::notify::admin;

fn int_param(req: &Request, name: &str, default: i64, max: i64) -> Result<i64> {
    match req.query_param(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (0..=max).contains(n))
            .ok_or_else(|| {
                Error::bad_request(format!("query parameter '{name}' must be 0 to {max}"))
            }),
    }
}

/// `?after=evt_N` (or `N`): the export cursor.
fn after_param(req: &Request) -> Result<i64> {
    match req.query_param("after") {
        None => Ok(0),
        Some(a) => a
            .trim_start_matches("evt_")
            .parse::<i64>()
            .map_err(|_| Error::bad_request("'after' must be an event id (evt_N or N)")),
    }
}

/// `/api/events`, `/api/notifications/...`.
pub fn handle(
    db: &dyn Db,
    tokens: &Tokens,
    receivers: &Receivers,
    req: &Request,
    now: DateTime<Utc>,
) -> Response {
    let r = (|| -> Result<Response> {
        let path = req.path.trim_end_matches('/');
        let segs = segments(path);
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let m = req.method.as_str();
        tokens.authorize_route(req)?;
        let ok = |v: serde_json::Value| Ok(Response::json(200, &v));
        match (m, segs.as_slice()) {
            ("GET", ["api", "events"]) => {
                let limit = int_param(req, "limit", 100, 1000)?.max(1);
                let secrets = tokens.grants(req, Scope::Secrets);
                ok(admin::export(db, after_param(req)?, limit, secrets)?)
            }
            ("GET", ["api", "notifications", "mailbox"]) => {
                let limit = int_param(req, "limit", 50, 500)?.max(1);
                let secrets = tokens.grants(req, Scope::Secrets);
                ok(admin::mailbox(db, req.query_param("to"), limit, secrets)?)
            }
            ("GET", ["api", "notifications", "dead-letters"]) => ok(admin::dead_letters(
                db,
                int_param(req, "limit", 100, 1000)?.max(1),
            )?),
            ("POST", ["api", "notifications", "dead-letters", id, "replay"]) => {
                Ok(Response::json(202, &admin::replay(db, id, now)?))
            }
            ("GET", ["api", "notifications", "deliveries"]) => {
                let limit = int_param(req, "limit", 100, 1000)?.max(1);
                ok(admin::deliveries(db, req.query_param("state"), limit)?)
            }
            ("GET", ["api", "notifications", "subscriptions"]) => {
                ok(admin::list_subscriptions(db)?)
            }
            ("POST", ["api", "notifications", "subscriptions"]) => {
                let (id, v) = admin::create_subscription(
                    db,
                    &parse_json(&req.body)?,
                    receivers,
                    tokens.grants(req, Scope::Secrets),
                    now,
                )?;
                Ok(Response::json(201, &v).with_header(
                    "location",
                    &format!("/api/notifications/subscriptions/{id}"),
                ))
            }
            ("DELETE", ["api", "notifications", "subscriptions", id]) => {
                ok(admin::delete_subscription(db, id)?)
            }
            ("GET", ["api", "notifications", "templates"]) => ok(admin::list_templates(db)?),
            ("PUT", ["api", "notifications", "templates", name]) => {
                ok(admin::put_template(db, name, &parse_json(&req.body)?, now)?)
            }
            (
                _,
                ["api", "events"]
                | ["api", "notifications", "mailbox" | "dead-letters" | "deliveries" | "subscriptions" | "templates"],
            )
            | (_, ["api", "notifications", "dead-letters", _, "replay"])
            | (_, ["api", "notifications", "subscriptions" | "templates", _]) => Err(Error::new(
                ErrorKind::MethodNotAllowed,
                format!("{m} is not allowed at {path}"),
            )),
            _ => Err(Error::not_found(format!(
                "no notifications endpoint at {path}"
            ))),
        }
    })();
    r.into()
}
