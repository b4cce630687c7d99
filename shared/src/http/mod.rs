//! Host-independent request and response types, so every handler in `shared/`
//! runs the same natively (tests) and inside a Spin component.

use crate::kernel::db::{transaction, Db};
use crate::kernel::error::Error;
use crate::kernel::idempotency;

pub mod capture;
pub mod intake;
pub mod inventory;
pub mod maintenance;
pub mod notify;
pub mod orders;
pub mod report;
pub mod routing;
pub mod scopes;
pub mod shipment;

pub use scopes::{route_scope, Scope, Tokens};

/// The largest request body any endpoint accepts.
pub const MAX_BODY: usize = 1024 * 1024;

/// The request's `Idempotency-Key`, if it sent one (400 when empty or too long).
pub fn idempotency_key(req: &Request) -> Result<Option<String>, Error> {
    let Some(k) = req.header("idempotency-key").map(str::trim) else {
        return Ok(None);
    };
    if k.is_empty() || k.len() > idempotency::MAX_KEY {
        return Err(Error::bad_request(format!(
            "Idempotency-Key must be 1 to {} characters",
            idempotency::MAX_KEY
        )));
    }
    Ok(Some(k.to_string()))
}

/// The scope of a route's Idempotency-Keys: its method and path.
pub fn idempotency_scope(req: &Request) -> String {
    format!("{} {}", req.method, req.path.trim_end_matches('/'))
}

/// For a POST whose effect is recorded in the database and then carried out
/// outside any transaction (a refund or a payment retry sent to the gateway):
/// `record` runs with the caller's Idempotency-Key kept in the same
/// transaction; a retry with the same key and body skips `record` and gets what
/// it returned the first time (and `true`: replayed); another body is 422.
/// Without a key, `record` runs alone.
pub fn idempotent_step(
    db: &dyn Db,
    req: &Request,
    now: chrono::DateTime<chrono::Utc>,
    record: impl FnOnce(&dyn Db) -> Result<serde_json::Value, Error>,
) -> Result<(serde_json::Value, bool), Error> {
    let Some(key) = idempotency_key(req)? else {
        return Ok((record(db)?, false));
    };
    let scope = idempotency_scope(req);
    let hash = idempotency::request_hash(&req.body);
    transaction(db, |db| {
        if let Some((_, kept)) = idempotency::kept(db, &scope, &key, &hash, now)? {
            return Ok((kept, true));
        }
        let v = record(db)?;
        idempotency::keep(db, &scope, &key, &hash, &(200, v.clone()), now)?;
        Ok((v, false))
    })
}

/// Marks an answer `Idempotent-Replayed: true` when it answers a retry.
pub fn replay_marked(mut r: Response, replayed: bool) -> Response {
    if replayed {
        r.headers
            .push(("idempotent-replayed".into(), "true".into()));
    }
    r
}

/// Runs a POST that moves money or stock under the caller's Idempotency-Key
/// (`kernel::idempotency`): the effect and the kept answer commit together (the
/// effect's own transactions become savepoints of this one); a retry with the
/// same key and body gets the kept answer with `Idempotent-Replayed: true` and
/// changes nothing; the same key with another body is 422. Successes and 409s
/// are kept; any other error rolls everything back, so a retry runs again.
/// Without a key, `f` runs as it is. `scope` names the route (each route's keys
/// are its own).
pub fn idempotent(
    db: &dyn Db,
    req: &Request,
    scope: &str,
    now: chrono::DateTime<chrono::Utc>,
    f: impl FnOnce(&dyn Db) -> Result<Response, Error>,
) -> Result<Response, Error> {
    let Some(key) = idempotency_key(req)? else {
        return f(db);
    };
    let hash = idempotency::request_hash(&req.body);
    transaction(db, |db| {
        if let Some((status, body)) = idempotency::kept(db, scope, &key, &hash, now)? {
            let mut r = if status >= 400 {
                Response {
                    status,
                    headers: vec![("content-type".into(), "application/problem+json".into())],
                    body: body.to_string().into_bytes(),
                }
            } else {
                Response::json(status, &body)
            };
            r.headers
                .push(("idempotent-replayed".into(), "true".into()));
            return Ok(r);
        }
        let resp = match f(db) {
            Ok(r) => r,
            Err(e) if e.status() == 409 => Response::problem(&e),
            Err(e) => return Err(e),
        };
        idempotency::keep(
            db,
            scope,
            &key,
            &hash,
            &(resp.status, resp.json_body()),
            now,
        )?;
        Ok(resp)
    })
}

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path without the query string (`/api/orders/WB-100001`).
    pub path: String,
    pub query: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, path_and_query: &str) -> Request {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            ..Default::default()
        }
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Request {
        self.headers.push((k.to_ascii_lowercase(), v.to_string()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Whether Spin delivered this request by service chaining from another
    /// component of the app (`http://<component>.spin.internal`): Spin gives a
    /// chained request the client address `0.0.0.0:0` and replaces any
    /// `spin-client-addr` a client sends, so a request from the network never
    /// carries it.
    pub fn chained(&self) -> bool {
        self.header("spin-client-addr")
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .is_some_and(|a| a.ip().is_unspecified() && a.port() == 0)
    }

    /// The private `/internal/*` routes answer only chained calls: a request
    /// from the network (a route that exposes the component by mistake) is
    /// 404, as if the route did not exist.
    pub fn internal_allowed(&self) -> std::result::Result<(), Error> {
        if self.chained() {
            return Ok(());
        }
        eprintln!(
            "waybill: refused {} {} from {}: not a service-chained call",
            self.method,
            self.path,
            self.header("spin-client-addr")
                .unwrap_or("an unknown client")
        );
        Err(Error::not_found("no such route"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The decoded query parameter (the last one wins).
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .last()
    }

    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// The body as a JSON object: 413 when too large, 400 when not JSON, 422
    /// when JSON but not an object.
    pub fn json_object(&self) -> Result<serde_json::Value, Error> {
        self.check_size()?;
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .map_err(|e| Error::bad_request(format!("the body is not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(Error::invalid(vec![crate::kernel::error::FieldError::new(
                "",
                "must be a JSON object",
            )]));
        }
        Ok(v)
    }

    /// Like [`Request::json_object`], with an empty body read as `{}`.
    pub fn json_object_or_empty(&self) -> Result<serde_json::Value, Error> {
        if self.body.is_empty() {
            Ok(serde_json::json!({}))
        } else {
            self.json_object()
        }
    }

    /// 413 when the body (or its declared length) exceeds `MAX_BODY`.
    pub fn check_size(&self) -> Result<(), Error> {
        let declared = self
            .header("content-length")
            .and_then(|l| l.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if self.body.len() > MAX_BODY || declared > MAX_BODY {
            return Err(Error::new(
                crate::kernel::error::ErrorKind::PayloadTooLarge,
                format!("the body exceeds the limit of {MAX_BODY} bytes"),
            ));
        }
        Ok(())
    }

    pub fn content_type(&self) -> String {
        self.header("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(v).unwrap_or_default(),
        }
    }

    pub fn problem(e: &Error) -> Response {
        let mut r = Response {
            status: e.status(),
            headers: vec![("content-type".into(), "application/problem+json".into())],
            body: serde_json::to_vec(&e.problem()).unwrap_or_default(),
        };
        if e.status() == 401 {
            r.headers
                .push(("www-authenticate".into(), "Bearer realm=\"waybill\"".into()));
        }
        if e.status() == 503 {
            r.headers.push(("retry-after".into(), "1".into()));
        }
        r
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json_body(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl From<Result<Response, Error>> for Response {
    fn from(r: Result<Response, Error>) -> Response {
        r.unwrap_or_else(|e| Response::problem(&e))
    }
}

/// A percent-decoded path segment. Unlike a query string, a path keeps `+`
/// as `+` (a SKU may contain one).
pub fn path_segment(seg: &str) -> String {
    form_urlencoded::parse(format!("k={}", seg.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The percent-decoded segments of a path, empty segments dropped: the one
/// splitter every router matches on.
pub fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(path_segment)
        .collect()
}

/// 405 for a method a route does not take.
pub fn method_not_allowed(req: &Request) -> Error {
    Error::new(
        crate::kernel::error::ErrorKind::MethodNotAllowed,
        format!("{} is not allowed here", req.method),
    )
}

/// 400 for a bad query parameter, with its pointer (`?name`).
pub fn query_error(param: &str, detail: impl Into<String>) -> Error {
    let mut e = Error::bad_request(format!("query parameter '{param}': {}", detail.into()));
    e.errors.push(crate::kernel::error::FieldError::new(
        format!("?{param}"),
        e.detail.clone(),
    ));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_decode_percent_but_keep_plus() {
        assert_eq!(path_segment("A%2FB%20C"), "A/B C");
        assert_eq!(path_segment("A+B"), "A+B");
        assert_eq!(path_segment("WB-100001"), "WB-100001");
    }

    #[test]
    fn query_and_size() {
        let r = Request::new("GET", "/x?q=a%20b&status=on_hold&q=c+d");
        assert_eq!(r.query_param("q").as_deref(), Some("c d"));
        assert_eq!(r.query_param("status").as_deref(), Some("on_hold"));
        assert!(r.query_param("none").is_none());
        let big = Request::new("POST", "/").with_body(vec![b' '; MAX_BODY + 1]);
        assert_eq!(big.check_size().unwrap_err().status(), 413);
        let declared = Request::new("POST", "/").with_header("content-length", "99999999");
        assert_eq!(declared.check_size().unwrap_err().status(), 413);
    }
}
