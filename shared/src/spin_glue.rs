//! The few lines every Spin component needs: convert requests and responses,
//! open the database (migrating if due), read variables.

use spin_sdk::http::Response as SpinResponse;

use crate::http::{Request, Response};
use crate::kernel::db::spin::SpinDb;
use crate::kernel::error::{Error, ErrorKind};

pub mod outbound;

/// Converts the host-independent [`Response`] into a Spin response.
pub fn response(r: Response) -> SpinResponse {
    let mut b = SpinResponse::builder();
    b.status(r.status);
    for (k, v) in &r.headers {
        b.header(k.as_str(), v.as_str());
    }
    b.body(r.body).build()
}

/// Opens the `default` database for a request that only reads.
pub fn open_db() -> Result<SpinDb, Error> {
    let db = SpinDb::open("default").map_err(|e| Error::new(ErrorKind::Unavailable, e.0))?;
    crate::kernel::schema::prepare(&db).map_err(Error::from)?;
    Ok(db)
}

/// Opens the `default` database for a request that writes (see `schema::prepare_writer`).
pub fn open_writer() -> Result<SpinDb, Error> {
    let db = SpinDb::open("default").map_err(|e| Error::new(ErrorKind::Unavailable, e.0))?;
    crate::kernel::schema::prepare_writer(&db).map_err(Error::from)?;
    Ok(db)
}

/// A Spin variable, or `default` when it is not set for this component.
pub fn variable(name: &str, default: &str) -> String {
    spin_sdk::variables::get(name).unwrap_or_else(|_| default.to_string())
}

/// Reads an incoming `wasi:http` request (the low-level form, for handlers that
/// answer early and keep working) into a [`Request`].
pub async fn incoming(req: spin_sdk::http::IncomingRequest) -> Result<Request, Error> {
    use spin_sdk::http::Method as M;
    let method = match req.method() {
        M::Get => "GET".to_string(),
        M::Head => "HEAD".to_string(),
        M::Post => "POST".to_string(),
        M::Put => "PUT".to_string(),
        M::Delete => "DELETE".to_string(),
        M::Connect => "CONNECT".to_string(),
        M::Options => "OPTIONS".to_string(),
        M::Trace => "TRACE".to_string(),
        M::Patch => "PATCH".to_string(),
        M::Other(m) => m.to_ascii_uppercase(),
    };
    let pq = req.path_with_query().unwrap_or_else(|| "/".to_string());
    let (path, query) = pq
        .split_once('?')
        .map(|(p, q)| (p.to_string(), q.to_string()))
        .unwrap_or((pq.clone(), String::new()));
    let headers: Vec<(String, String)> = req
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    let declared = headers_declared_length(&headers);
    if declared.is_some_and(|n| n > crate::http::MAX_BODY) {
        return Err(too_large());
    }
    let body = read_body(req, crate::http::MAX_BODY)?;
    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

fn headers_declared_length(headers: &[(String, String)]) -> Option<usize> {
    headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

fn too_large() -> Error {
    Error::new(
        ErrorKind::PayloadTooLarge,
        format!(
            "the body exceeds the limit of {} bytes",
            crate::http::MAX_BODY
        ),
    )
}

/// Reads the request body, stopping at `limit + 1` bytes: a body over the limit
/// (chunked, or longer than it declared) is refused without being buffered.
fn read_body(req: spin_sdk::http::IncomingRequest, limit: usize) -> Result<Vec<u8>, Error> {
    use wasi::io::streams::StreamError;
    let body = req
        .consume()
        .map_err(|_| Error::bad_request("the request body was already read"))?;
    let stream = body
        .stream()
        .map_err(|_| Error::bad_request("the request body cannot be read"))?;
    let mut out = Vec::new();
    loop {
        let room = (limit + 1 - out.len()).min(64 * 1024) as u64;
        match stream.blocking_read(room) {
            Ok(chunk) => {
                out.extend_from_slice(&chunk);
                if out.len() > limit {
                    return Err(too_large());
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(Error::bad_request(format!(
                    "cannot read the request body: {}",
                    e.to_debug_string()
                )))
            }
        }
    }
    drop(stream);
    Ok(out)
}

/// Sends `r` through a response outparam and finishes the body, so the caller
/// has the whole answer while this instance may go on working.
pub fn respond(out: spin_sdk::http::ResponseOutparam, r: Response) {
    use spin_sdk::http::{Fields, OutgoingBody, OutgoingResponse};
    let list: Vec<(String, Vec<u8>)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    let headers = Fields::from_list(&list).unwrap_or_else(|_| Fields::new());
    let resp = OutgoingResponse::new(headers);
    let _ = resp.set_status_code(r.status);
    let Ok(body) = resp.body() else { return };
    out.set(resp);
    if let Ok(stream) = body.write() {
        for chunk in r.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(body, None);
}

/// Outbound HTTP to receivers outside the app, through Spin
/// (`allowed_outbound_hosts` applies), with timeouts (see [`outbound`]).
pub struct SpinTransport {
    pub timeouts: outbound::Timeouts,
}

/// The transport with the operator's `outbound_timeout_ms` (default 10 s, 100 ms to 60 s).
pub fn transport() -> SpinTransport {
    SpinTransport {
        timeouts: outbound_timeouts(),
    }
}

/// Each phase of an outbound call (connect, first byte, between bytes) waits at
/// most `outbound_timeout_ms`.
pub fn outbound_timeouts() -> outbound::Timeouts {
    let ms = variable("outbound_timeout_ms", "10000")
        .parse::<u64>()
        .unwrap_or(10_000)
        .clamp(100, 60_000);
    outbound::Timeouts {
        phase: std::time::Duration::from_millis(ms),
    }
}

impl crate::notify::Transport for SpinTransport {
    async fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        outbound::send("POST", url, headers, &body, self.timeouts).await
    }
}

/// The receivers the operator allows (`outbound_receivers`); unreadable entries
/// are logged and ignored.
pub fn receivers() -> crate::kernel::url::Receivers {
    let (r, bad) = crate::kernel::url::Receivers::parse_strict(&variable("outbound_receivers", ""));
    if !bad.is_empty() {
        eprintln!("outbound_receivers: ignoring entries that are not hosts: {bad:?}");
    }
    r
}

/// The notification settings from Spin variables.
pub fn notify_config() -> crate::notify::Config {
    let d = crate::notify::Config::default();
    let provider = match variable("email_provider", "mailbox").as_str() {
        "postmark" => crate::notify::EmailProvider::Postmark {
            url: variable("email_api_url", "https://api.postmarkapp.com"),
            token: variable("email_api_token", ""),
        },
        _ => crate::notify::EmailProvider::Mailbox,
    };
    crate::notify::Config {
        provider,
        from: variable("email_from", &d.from),
        merchant_email: variable("merchant_email", ""),
        management_emails: variable("management_emails", "")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        max_attempts: variable("notify_max_attempts", "8")
            .parse()
            .unwrap_or(d.max_attempts),
        retry_base: chrono::Duration::milliseconds(
            variable("notify_retry_base_ms", "10000")
                .parse()
                .unwrap_or(10_000),
        ),
        // A delivery's lease outlives the longest call it can make.
        lease: {
            let configured = chrono::Duration::milliseconds(
                variable("notify_lease_ms", "120000")
                    .parse()
                    .unwrap_or(120_000),
            );
            let floor = chrono::Duration::from_std(outbound_timeouts().call_limit())
                .unwrap_or(d.lease)
                + chrono::Duration::seconds(1);
            configured.max(floor)
        },
        fc_secrets: crate::inventory::FC_SECRET_VARIABLES
            .iter()
            .map(|v| (v.to_string(), variable(v, "")))
            .filter(|(_, s)| !s.is_empty())
            .collect(),
        receivers: receivers(),
    }
}

/// The `default` key-value store.
pub fn kv() -> Result<crate::kernel::kv::spin::SpinKv, Error> {
    crate::kernel::kv::spin::SpinKv::open("default")
        .map_err(|e| Error::new(ErrorKind::Unavailable, e.0))
}

/// The report settings from Spin variables (`merchant_timezone`, an IANA name).
/// The `retention` variable (housekeeping's windows per table).
pub fn retention() -> Result<crate::flows::housekeeping::Retention, Error> {
    crate::flows::housekeeping::Retention::parse(&variable("retention", ""))
        .map_err(|e| Error::internal(format!("retention: {e}")))
}

pub fn report_config() -> Result<crate::http::report::Config, Error> {
    let tz = crate::reporting::parse_tz(&variable("merchant_timezone", "UTC"))
        .map_err(|e| Error::internal(format!("merchant_timezone: {e}")))?;
    Ok(crate::http::report::Config {
        timezone: tz,
        tokens: crate::http::Tokens::parse(&variable("api_tokens", "")),
    })
}

/// A GET to a receiver outside the app (`allowed_outbound_hosts` applies, with
/// the `outbound_timeout_ms` timeouts): (status, body).
pub async fn http_get(url: &str, headers: &[(String, String)]) -> Result<(u16, Vec<u8>), String> {
    outbound::send("GET", url, headers, &[], outbound_timeouts()).await
}

/// [`http_get`] taking its arguments: the fetch `flows::schedules::inventory`
/// is given by the cron component and the maintenance route alike.
pub async fn http_get_owned(
    url: String,
    headers: Vec<(String, String)>,
) -> Result<(u16, Vec<u8>), String> {
    http_get(&url, &headers).await
}

/// A chained POST to another component of this app (`http://<name>.spin.internal/...`).
pub async fn chain(url: &str, body: &serde_json::Value) -> Result<(u16, Vec<u8>), String> {
    // In process: Spin runs the other component; no network timeouts apply.
    let req = spin_sdk::http::Request::builder()
        .method(spin_sdk::http::Method::Post)
        .uri(url)
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
        .build();
    match spin_sdk::http::send::<_, spin_sdk::http::Response>(req).await {
        Ok(r) => Ok((*r.status(), r.body().to_vec())),
        Err(e) => Err(e.to_string()),
    }
}

/// Asks notify to deliver what this request put in the outbox. notify answers
/// 202 before it works; if the call fails, the cron sweep delivers instead.
pub async fn kick_notify() {
    if let Err(e) = chain(
        "http://notify.spin.internal/internal/sweep",
        &serde_json::json!({}),
    )
    .await
    {
        eprintln!("notify kick failed (the cron sweep will deliver): {e}");
    }
}

/// Asks routing to place these orders' units. A failure is logged: the state is
/// durable and routing's cron sweep picks up what was left `received`.
pub async fn route_orders(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    match chain(
        "http://routing.spin.internal/internal/route",
        &serde_json::json!({"order_ids": ids}),
    )
    .await
    {
        Ok((s, _)) if (200..300).contains(&s) => {}
        Ok((s, b)) => eprintln!(
            "routing answered {s}: {} (the sweep will retry)",
            String::from_utf8_lossy(&b)
        ),
        Err(e) => eprintln!("routing call failed (the sweep will retry): {e}"),
    }
}

/// Asks routing to release backorders for SKUs that were restocked; returns
/// routing's answer (orders served) when it came.
pub async fn release_backorders(skus: &[String]) -> Option<serde_json::Value> {
    if skus.is_empty() {
        return None;
    }
    match chain(
        "http://routing.spin.internal/internal/backorders",
        &serde_json::json!({"skus": skus}),
    )
    .await
    {
        Ok((s, b)) if (200..300).contains(&s) => serde_json::from_slice(&b).ok(),
        Ok((s, b)) => {
            eprintln!(
                "routing answered {s}: {} (the sweep will retry)",
                String::from_utf8_lossy(&b)
            );
            None
        }
        Err(e) => {
            eprintln!("routing call failed (the sweep will retry): {e}");
            None
        }
    }
}

/// A blocking outbound POST with timeouts, for gateway calls where a hung peer
/// must turn into a retry rather than a request that never ends.
/// `allowed_outbound_hosts` applies.
pub struct TimedHttp {
    pub timeout: std::time::Duration,
}

impl TimedHttp {
    fn send(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        outbound::send_blocking(
            "POST",
            url,
            headers,
            body,
            outbound::Timeouts {
                phase: self.timeout,
            },
        )
    }
}

impl crate::payments::gateway::Http for TimedHttp {
    fn post_form(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &str,
    ) -> Result<(u16, Vec<u8>), String> {
        self.send(url, headers, body.as_bytes())
    }

    fn get(&self, url: &str, headers: &[(String, String)]) -> Result<(u16, Vec<u8>), String> {
        outbound::send_blocking(
            "GET",
            url,
            headers,
            &[],
            outbound::Timeouts {
                phase: self.timeout,
            },
        )
    }
}

/// The gateway settings from Spin variables: `stripe_api_base`,
/// `stripe_secret_key`, `payment_timeout_ms`.
pub fn payment_gateway() -> (TimedHttp, crate::payments::gateway::StripeConfig) {
    let ms = variable("payment_timeout_ms", "15000")
        .parse::<u64>()
        .unwrap_or(15_000)
        .clamp(100, 120_000);
    (
        TimedHttp {
            timeout: std::time::Duration::from_millis(ms),
        },
        crate::payments::gateway::StripeConfig {
            api_base: variable("stripe_api_base", "https://api.stripe.com"),
            secret_key: variable("stripe_secret_key", ""),
        },
    )
}

/// Asks the capture component to send due gateway calls (after routing
/// scheduled captures). Failures are logged: capture-cron sends them anyway.
pub async fn kick_capture(order_ids: &[String]) {
    if let Err(e) = chain(
        "http://capture.spin.internal/internal/capture",
        &if order_ids.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::json!({"order_ids": order_ids})
        },
    )
    .await
    {
        eprintln!("capture call failed (capture-cron will send it): {e}");
    }
}
