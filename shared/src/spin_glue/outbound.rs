//! Outbound HTTP to receivers outside the app (webhooks, the e-mail API,
//! fulfillment centers, inventory pulls, the payment gateway), always with
//! `wasi:http` request options: connect, first-byte and between-bytes timeouts.
//! A host that refuses to set one is an error: the request is not sent, so
//! a hung peer can never hold a worker past its lease.
//!
//! The body is read until [`Timeouts::call_limit`]; a receiver that trickles
//! its answer is cut off there, so no call lasts longer than that (the
//! notification lease is sized from it).

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use spin_sdk::wit::wasi::http0_2_0::{outgoing_handler, types as wt};
use wasi::io::streams::StreamError;

/// The largest answer kept from a receiver.
const MAX_ANSWER: usize = 4 << 20;

/// Timeouts for one outbound call.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Each of: connecting, the first byte of the answer, the gap between bytes.
    pub phase: Duration,
}

impl Timeouts {
    /// The longest a call may take from start to the last byte of the answer
    /// (connect and first byte, then the body until this limit, the last read
    /// waiting at most one more `phase`).
    pub fn call_limit(&self) -> Duration {
        self.phase * 4
    }
}

/// Sends a request and reads the answer, without blocking other requests the
/// same component has in flight (spin's executor polls them together).
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeouts: Timeouts,
) -> Result<(u16, Vec<u8>), String> {
    let started = Instant::now();
    let pending = start(method, url, headers, body, timeouts)?;
    let resp = response(pending).await?;
    let status = resp.status();
    let answer = read_answer(resp, started, timeouts).await?;
    Ok((status, answer))
}

/// The blocking form of [`send`], for the synchronous gateway code.
pub fn send_blocking(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeouts: Timeouts,
) -> Result<(u16, Vec<u8>), String> {
    let started = Instant::now();
    let pending = start(method, url, headers, body, timeouts)?;
    pending.subscribe().block();
    let resp = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(describe(&e)),
        _ => return Err("no response".into()),
    };
    let status = resp.status();
    let in_body = resp
        .consume()
        .map_err(|_| "response body unavailable".to_string())?;
    let stream = in_body
        .stream()
        .map_err(|_| "response stream unavailable".to_string())?;
    let mut buf = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => keep(&mut buf, &chunk, started, timeouts)?,
            Err(StreamError::Closed) => break,
            Err(e) => return Err(format!("reading the response: {e:?}")),
        }
    }
    Ok((status, buf))
}

/// Builds the request with its options, hands it to the host and writes the body.
fn start(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeouts: Timeouts,
) -> Result<wt::FutureIncomingResponse, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not an absolute URL ({e}): {url}"))?;
    let scheme = match parsed.scheme() {
        "http" => wt::Scheme::Http,
        "https" => wt::Scheme::Https,
        other => return Err(format!("the scheme {other} is not supported")),
    };
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("no host in {url}"))?;
    let authority = match parsed.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let fields = wt::Fields::new();
    for (k, v) in headers {
        fields
            .append(k, v.as_bytes())
            .map_err(|e| format!("header {k}: {e:?}"))?;
    }
    let req = wt::OutgoingRequest::new(fields);
    let m = match method {
        "GET" => wt::Method::Get,
        "POST" => wt::Method::Post,
        "PUT" => wt::Method::Put,
        "DELETE" => wt::Method::Delete,
        other => wt::Method::Other(other.to_string()),
    };
    req.set_method(&m)
        .map_err(|()| format!("the host refused the method {method}"))?;
    req.set_scheme(Some(&scheme))
        .map_err(|()| "the host refused the scheme".to_string())?;
    req.set_authority(Some(&authority))
        .map_err(|()| format!("the host refused the authority {authority}"))?;
    req.set_path_with_query(Some(&path))
        .map_err(|()| "the host refused the path".to_string())?;
    let out_body = req
        .body()
        .map_err(|_| "request body unavailable".to_string())?;
    let opts = options(timeouts)?;
    let pending = outgoing_handler::handle(req, Some(opts)).map_err(|e| describe(&e))?;
    {
        let stream = out_body
            .write()
            .map_err(|_| "request body stream unavailable".to_string())?;
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("writing the request: {e:?}"))?;
        }
    }
    wt::OutgoingBody::finish(out_body, None).map_err(|e| describe(&e))?;
    Ok(pending)
}

/// The three timeouts; a host that cannot set one refuses the call.
fn options(t: Timeouts) -> Result<wt::RequestOptions, String> {
    let ns = u64::try_from(t.phase.as_nanos()).unwrap_or(u64::MAX);
    let opts = wt::RequestOptions::new();
    opts.set_connect_timeout(Some(ns))
        .map_err(|()| "the host refused the connect timeout".to_string())?;
    opts.set_first_byte_timeout(Some(ns))
        .map_err(|()| "the host refused the first-byte timeout".to_string())?;
    opts.set_between_bytes_timeout(Some(ns))
        .map_err(|()| "the host refused the between-bytes timeout".to_string())?;
    Ok(opts)
}

fn describe(e: &wt::ErrorCode) -> String {
    match e {
        wt::ErrorCode::ConnectionTimeout => "connect timeout".into(),
        wt::ErrorCode::ConnectionReadTimeout => "read timeout (no first byte)".into(),
        wt::ErrorCode::ConnectionWriteTimeout => "write timeout".into(),
        other => format!("{other:?}"),
    }
}

fn keep(buf: &mut Vec<u8>, chunk: &[u8], started: Instant, t: Timeouts) -> Result<(), String> {
    buf.extend_from_slice(chunk);
    if buf.len() > MAX_ANSWER {
        return Err("response larger than 4 MiB".into());
    }
    if started.elapsed() > t.call_limit() {
        return Err(format!(
            "the answer took longer than {} ms",
            t.call_limit().as_millis()
        ));
    }
    Ok(())
}

/// Waits for the response head without blocking the executor.
fn response(
    pending: wt::FutureIncomingResponse,
) -> impl Future<Output = Result<wt::IncomingResponse, String>> {
    let mut token: Option<spin_executor::CancelOnDropToken> = None;
    std::future::poll_fn(move |cx| match pending.get() {
        Some(Ok(Ok(r))) => {
            token.take();
            Poll::Ready(Ok(r))
        }
        Some(Ok(Err(e))) => Poll::Ready(Err(describe(&e))),
        Some(Err(())) => Poll::Ready(Err("the response was already taken".into())),
        None => {
            token = Some(
                spin_executor::push_waker_and_get_token(pending.subscribe(), cx.waker().clone())
                    .into(),
            );
            Poll::Pending
        }
    })
}

/// Reads the whole answer (bounded in size and in time) without blocking the executor.
async fn read_answer(
    resp: wt::IncomingResponse,
    started: Instant,
    t: Timeouts,
) -> Result<Vec<u8>, String> {
    let body = resp
        .consume()
        .map_err(|_| "response body unavailable".to_string())?;
    let stream = body
        .stream()
        .map_err(|_| "response stream unavailable".to_string())?;
    let mut buf = Vec::new();
    let mut token: Option<spin_executor::CancelOnDropToken> = None;
    let result = std::future::poll_fn(|cx| loop {
        match stream.read(64 * 1024) {
            Ok(chunk) if chunk.is_empty() => {
                token = Some(
                    spin_executor::push_waker_and_get_token(stream.subscribe(), cx.waker().clone())
                        .into(),
                );
                return Poll::Pending;
            }
            Ok(chunk) => {
                if let Err(e) = keep(&mut buf, &chunk, started, t) {
                    return Poll::Ready(Err(e));
                }
            }
            Err(StreamError::Closed) => return Poll::Ready(Ok(())),
            Err(e) => return Poll::Ready(Err(format!("reading the response: {e:?}"))),
        }
    })
    .await;
    drop(token);
    drop(stream);
    drop(body);
    result.map(|()| buf)
}
