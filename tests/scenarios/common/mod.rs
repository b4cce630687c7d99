//! Helpers for scenario tests and benchmarks: build the components, start the
//! app from the real spin.toml on tests/host, sign webhooks, call the API.

pub mod stripe;

use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;
use waybill_host::{client, App, RunningApp};

pub const WRITE_TOKEN: &str = "test-write-token";
pub const READ_TOKEN: &str = "test-read-token";
pub const WEBHOOK_SECRET: &str = "test-webhook-secret";
pub const CT_SECRET: &str = "test-ct-secret";
/// The signing secret of the test fulfillment centers (the Spin variable `fc_secret_a`).
pub const FC_SECRET: &str = "test-fc-secret";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds every component for wasm32-wasip2 once per process.
pub fn build_components() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut args: Vec<String> = ["build", "--target", "wasm32-wasip2", "--release"]
            .map(String::from)
            .to_vec();
        for entry in std::fs::read_dir(root().join("functions")).expect("functions/") {
            let name = entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            args.extend(["-p".to_string(), name]);
        }
        let status = std::process::Command::new(cargo)
            .current_dir(root())
            .args(&args)
            .status()
            .expect("run cargo to build the components");
        assert!(status.success(), "building the components failed");
    });
}

/// Starts Waybill from the repository's spin.toml with test secrets.
pub async fn start() -> RunningApp {
    start_with(&[]).await
}

/// Like [`start`], with extra variables.
pub async fn start_with(vars: &[(&str, &str)]) -> RunningApp {
    start_from(&root().join("spin.toml"), vars).await
}

/// Like [`start_with`], from another manifest (e.g. a changed copy of spin.toml).
pub async fn start_from(manifest: &std::path::Path, vars: &[(&str, &str)]) -> RunningApp {
    build_components();
    let mut b = App::builder(manifest);
    for (k, v) in vars {
        b = b.variable(k, v);
    }
    // The local receivers and fakes the scenarios start listen on loopback,
    // which only an operator's exact entry may reach.
    if !vars.iter().any(|(k, _)| *k == "outbound_receivers") {
        b = b.variable("outbound_receivers", "127.0.0.1");
    }
    if !vars.iter().any(|(k, _)| *k == "api_tokens") {
        b = b.variable(
            "api_tokens",
            &format!("write:{WRITE_TOKEN},read:{READ_TOKEN}"),
        );
    }
    b.variable("shopify_webhook_secret", WEBHOOK_SECRET)
        .variable("woocommerce_webhook_secret", WEBHOOK_SECRET)
        .variable("commercetools_secret", CT_SECRET)
        .start()
        .await
        .expect("waybill starts")
}

pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures").join(path))
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// A center's `Waybill-Signature` for a POST to `path` at `t` (v2: bound to
/// the method and the path, which names the facility).
pub fn center_signature(secret: &str, t: i64, path: &str, body: &str) -> String {
    waybill::kernel::signature::sign_request_v2(secret.as_bytes(), t, "POST", path, body.as_bytes())
}

pub fn sign(body: &[u8]) -> String {
    waybill::kernel::signature::base64_hmac(WEBHOOK_SECRET.as_bytes(), body)
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub async fn send(
    app: &RunningApp,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<bytes::Bytes>,
) -> Reply {
    let (status, headers, body) = client::request(method, &app.url(path), headers, body)
        .await
        .expect("request");
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    Reply {
        status,
        headers,
        json,
    }
}

pub async fn shopify(app: &RunningApp, topic: &str, event_id: &str, body: &[u8]) -> Reply {
    let sig = sign(body);
    send(
        app,
        "POST",
        "/webhooks/shopify",
        &[
            ("content-type", "application/json"),
            ("x-shopify-topic", topic),
            ("x-shopify-hmac-sha256", &sig),
            ("x-shopify-shop-domain", "waybill-test.myshopify.com"),
            ("x-shopify-api-version", "2025-10"),
            ("x-shopify-webhook-id", &format!("wh-{event_id}")),
            ("x-shopify-event-id", event_id),
            ("x-shopify-triggered-at", "2026-11-20T10:00:00.000Z"),
        ],
        body.to_vec(),
    )
    .await
}

pub async fn woocommerce(app: &RunningApp, topic: &str, delivery: &str, body: &[u8]) -> Reply {
    let sig = sign(body);
    let (resource, event) = topic.split_once('.').unwrap_or(("order", "created"));
    send(
        app,
        "POST",
        "/webhooks/woocommerce",
        &[
            ("content-type", "application/json"),
            ("x-wc-webhook-source", "https://shop.example.com/"),
            ("x-wc-webhook-topic", topic),
            ("x-wc-webhook-resource", resource),
            ("x-wc-webhook-event", event),
            ("x-wc-webhook-signature", &sig),
            ("x-wc-webhook-id", "12"),
            ("x-wc-webhook-delivery-id", delivery),
        ],
        body.to_vec(),
    )
    .await
}

pub async fn get(app: &RunningApp, path: &str) -> Reply {
    send(
        app,
        "GET",
        path,
        &[("authorization", &format!("Bearer {READ_TOKEN}"))],
        Vec::new(),
    )
    .await
}

pub async fn post_api(
    app: &RunningApp,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<bytes::Bytes>,
) -> Reply {
    let auth = format!("Bearer {WRITE_TOKEN}");
    let mut h: Vec<(&str, &str)> = vec![("authorization", &auth)];
    h.extend_from_slice(headers);
    send(app, "POST", path, &h, body).await
}

/// A write-scope call with a JSON body (PUT, POST, ...).
pub async fn write(app: &RunningApp, method: &str, path: &str, body: &Value) -> Reply {
    send(
        app,
        method,
        path,
        &[
            ("authorization", &format!("Bearer {WRITE_TOKEN}")),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

/// Polls `cond` every 50 ms for up to 20 s (chained work finishes after the answer).
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(20) {
        if cond().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// One number from SQL.
pub fn count(app: &RunningApp, sql: &str) -> i64 {
    match app
        .sql("default", sql, &[])
        .expect("sql")
        .rows
        .first()
        .and_then(|r| r.first())
    {
        Some(waybill_host::SqlValue::Integer(n)) => *n,
        other => panic!("{sql}: {other:?}"),
    }
}

/// A local HTTP receiver for outbound calls (webhook consumer, e-mail API):
/// records every request and answers with the status `status()` returns.
pub struct Receiver {
    pub port: u16,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    pub status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    /// What it answers (JSON).
    pub body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// How long it waits before it answers (milliseconds).
    pub delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Receiver {
    /// Listens on `port` (0 for any) and answers `status`.
    pub async fn start(port: u16, status: u16) -> Receiver {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind receiver");
        let port = listener.local_addr().unwrap().port();
        let requests: std::sync::Arc<std::sync::Mutex<Vec<Received>>> = Default::default();
        let st = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(status));
        let answer: std::sync::Arc<std::sync::Mutex<Vec<u8>>> = std::sync::Arc::new(
            std::sync::Mutex::new(br#"{"ErrorCode":0,"Message":"OK"}"#.to_vec()),
        );
        let delay = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (reqs, st2, answer2, delay2) =
            (requests.clone(), st.clone(), answer.clone(), delay.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (reqs, st, answer, delay) =
                    (reqs.clone(), st2.clone(), answer2.clone(), delay2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (reqs, st, answer, delay) =
                                (reqs.clone(), st.clone(), answer.clone(), delay.clone());
                            async move {
                                let path = req.uri().path().to_string();
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                reqs.lock().unwrap().push(Received {
                                    path,
                                    headers,
                                    body,
                                });
                                let wait = delay.load(std::sync::atomic::Ordering::SeqCst);
                                if wait > 0 {
                                    tokio::time::sleep(std::time::Duration::from_millis(wait))
                                        .await;
                                }
                                let status = st.load(std::sync::atomic::Ordering::SeqCst);
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(http_body_util::Full::new(bytes::Bytes::from(
                                            answer.lock().unwrap().clone(),
                                        )))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            port,
            requests,
            status: st,
            body: answer,
            delay_ms: delay,
            task,
        }
    }

    pub fn set_body(&self, body: &Value) {
        *self.body.lock().unwrap() = body.to_string().into_bytes();
    }

    /// Waits `ms` before every answer from now on.
    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// A PUT that must succeed (200 or 201): facilities, products, settings.
pub async fn put_ok(app: &RunningApp, path: &str, body: Value) {
    let r = write(app, "PUT", path, &body).await;
    assert!(r.status == 200 || r.status == 201, "{path}: {}", r.json);
}

/// A stock receipt of `qty` units that must succeed.
pub async fn receive_stock(app: &RunningApp, facility: &str, sku: &str, qty: i64) {
    let r = write(
        app,
        "POST",
        "/api/stock/receipts",
        &serde_json::json!({"facility": facility, "lines": [{"sku": sku, "quantity": qty}]}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
}

/// A fresh delivery-note reference for a stock receipt (each is booked once per facility).
pub fn next_reference() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
