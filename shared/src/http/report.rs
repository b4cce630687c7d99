//! The report component's routes: `GET /api/reports/daily/{date}`,
//! `GET /api/reports/daily?from=&to=` (JSON or CSV) and
//! `POST /api/reports/daily/{date}` (generate).

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value as Json};

use crate::http::{method_not_allowed, segments, Request, Response, Scope, Tokens};
use crate::kernel::db::Db;
use crate::kernel::error::{Error, Result};
use crate::reporting::{day_of, generate, stored, stored_between, to_csv};

/// What the report component needs from Spin variables.
#[derive(Debug, Clone)]
pub struct Config {
    pub timezone: Tz,
    pub tokens: Tokens,
}

fn parse_date(s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| Error::bad_request(format!("'{s}' is not a date (YYYY-MM-DD)")))
}

fn wants_csv(req: &Request) -> bool {
    req.query_param("format").as_deref() == Some("csv")
        || req
            .header("accept")
            .map(|a| a.contains("text/csv") && !a.contains("application/json"))
            .unwrap_or(false)
}

fn answer(req: &Request, reports: Vec<Json>, single: bool) -> Result<Response> {
    if wants_csv(req) {
        let body = to_csv(&reports)?;
        return Ok(Response {
            status: 200,
            headers: vec![("content-type".into(), "text/csv; charset=utf-8".into())],
            body: body.into_bytes(),
        });
    }
    if single {
        Ok(Response::json(
            200,
            &reports.into_iter().next().unwrap_or(Json::Null),
        ))
    } else {
        Ok(Response::json(200, &json!({"reports": reports})))
    }
}

/// `GET /api/reports/daily/{date}`, `GET /api/reports/daily?from=&to=`, `POST /api/reports/daily/{date}`.
pub fn handle(
    db: &dyn Db,
    cfg: &Config,
    req: &Request,
    now: DateTime<Utc>,
) -> (Response, Option<Json>) {
    let mut latest = None;
    let r = (|| -> Result<Response> {
        let path = req.path.trim_end_matches('/');
        let segs = segments(path);
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        match (req.method.as_str(), segs.as_slice()) {
            ("GET", ["api", "reports", "daily"]) => {
                cfg.tokens.authorize(req, Scope::Read)?;
                let from =
                    parse_date(&req.query_param("from").ok_or_else(|| {
                        Error::bad_request("query parameter 'from' is required")
                    })?)?;
                let to = match req.query_param("to") {
                    Some(t) => parse_date(&t)?,
                    None => from,
                };
                if to < from || (to - from).num_days() > 366 {
                    return Err(Error::bad_request(
                        "'to' must be on or after 'from', at most 366 days later",
                    ));
                }
                answer(req, stored_between(db, from, to)?, false)
            }
            ("GET", ["api", "reports", "daily", date]) => {
                cfg.tokens.authorize(req, Scope::Read)?;
                let d = parse_date(date)?;
                let report = stored(db, d)?.ok_or_else(|| {
                    Error::not_found(format!("no report for {d}; POST to this URL generates it"))
                })?;
                answer(req, vec![report], true)
            }
            ("POST", ["api", "reports", "daily", date]) => {
                cfg.tokens.authorize_route(req)?;
                let d = parse_date(date)?;
                if d > day_of(now, cfg.timezone) {
                    return Err(Error::unprocessable(format!(
                        "{d} has not begun in {}",
                        cfg.timezone.name()
                    )));
                }
                let (report, fresh) = generate(db, d, cfg.timezone, now)?;
                latest = Some(report.clone());
                Ok(Response::json(if fresh { 201 } else { 200 }, &report))
            }
            (_, ["api", "reports", "daily", ..]) => Err(method_not_allowed(req)),
            _ => Err(Error::not_found(format!("no report endpoint at {path}"))),
        }
    })();
    (r.into(), latest)
}
