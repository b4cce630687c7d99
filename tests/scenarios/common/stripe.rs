//! A local fake of Stripe's PaymentIntents API, following its documentation:
//! form-encoded requests with `Authorization: Bearer sk_...`;
//! `POST /v1/payment_intents/{id}/capture` (`amount_to_capture`,
//! `final_capture` only with multicapture), `POST /v1/payment_intents/{id}/cancel`,
//! `POST /v1/refunds` (`payment_intent`, `amount`); error bodies
//! `{"error": {"type", "code", "decline_code", "message", "payment_intent"}}`
//! with 400 / 401 / 402 / 404; `Idempotency-Key`: the first answer is stored
//! and replayed for the same key and parameters, a different body with the
//! same key is a 400 `idempotency_error`, a key still in flight a 409.
//! Reads: `GET /v1/payment_intents/{id}` and `GET /v1/refunds?payment_intent=`
//! (a list `{"object": "list", "data", "has_more"}`). Stripe forgets keys after
//! 24 hours: [`FakeStripe::forget_keys`] stands for that.

use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const STRIPE_KEY: &str = "sk_test_waybill";

#[derive(Debug, Clone)]
pub struct Intent {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub amount_capturable: i64,
    pub amount_received: i64,
    pub amount_refunded: i64,
    pub status: String,
    pub multicapture: bool,
    /// Captures are declined with this decline code.
    pub decline: Option<String>,
    pub captures: Vec<i64>,
}

impl Intent {
    fn json(&self) -> Value {
        json!({"id": self.id, "object": "payment_intent", "amount": self.amount, "currency": self.currency,
               "amount_capturable": self.amount_capturable, "amount_received": self.amount_received,
               "capture_method": "manual", "status": self.status,
               "latest_charge": format!("ch_{}", &self.id[3..])})
    }
}

#[derive(Default)]
pub struct State {
    pub intents: HashMap<String, Intent>,
    /// key → (request body, answer); None while in flight.
    pub idempotency: HashMap<String, (String, Option<(u16, Value)>)>,
    /// Every request: (path, idempotency key, body).
    pub log: Vec<(String, Option<String>, String)>,
    /// The next capture is made, then its answer held back this long.
    pub hang_next_capture_ms: u64,
    pub refunds: Vec<(String, i64)>,
    /// The refund objects, as `GET /v1/refunds` lists them.
    pub refund_objects: Vec<Value>,
    /// The next capture fails with a 500 before anything is captured.
    pub fail_next_capture: bool,
}

#[derive(Clone)]
pub struct FakeStripe {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
}

fn err(status: u16, kind: &str, code: Option<&str>, message: &str, extra: Value) -> (u16, Value) {
    let mut e = json!({"type": kind, "message": message});
    if let Some(c) = code {
        e["code"] = json!(c);
    }
    if let Some(o) = extra.as_object() {
        for (k, v) in o {
            e[k] = v.clone();
        }
    }
    (status, json!({"error": e}))
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind fake stripe");
        let port = listener.local_addr().unwrap().port();
        let state: Arc<Mutex<State>> = Default::default();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let st = st.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let method = req.method().to_string();
                                let query = req.uri().query().unwrap_or("").to_string();
                                let auth = req
                                    .headers()
                                    .get("authorization")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                let key = req
                                    .headers()
                                    .get("idempotency-key")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string);
                                let ctype = req
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                let body = String::from_utf8_lossy(&body).into_owned();
                                let (status, answer, hang) = if method == "GET" {
                                    let (c, v) = FakeStripe::read(&st, &path, &query, &auth);
                                    (c, v, 0)
                                } else {
                                    FakeStripe::answer(&st, &path, &auth, &ctype, key, &body)
                                };
                                if hang > 0 {
                                    tokio::time::sleep(std::time::Duration::from_millis(hang))
                                        .await;
                                }
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .header("request-id", "req_fake")
                                        .body(http_body_util::Full::new(bytes::Bytes::from(
                                            answer.to_string(),
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
        FakeStripe { port, state }
    }

    /// 24 hours pass: Stripe no longer knows the idempotency keys.
    pub fn forget_keys(&self) {
        self.state.lock().unwrap().idempotency.clear();
    }

    /// `GET /v1/payment_intents/{id}`, `GET /v1/refunds?payment_intent=`.
    fn read(st: &Arc<Mutex<State>>, path: &str, query: &str, auth: &str) -> (u16, Value) {
        let mut s = st.lock().unwrap();
        s.log.push((format!("GET {path}"), None, query.to_string()));
        if auth != format!("Bearer {STRIPE_KEY}") {
            return err(
                401,
                "invalid_request_error",
                None,
                "Invalid API Key provided: sk_****",
                json!({}),
            );
        }
        let q: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segs.as_slice() {
            ["v1", "payment_intents", id] => match s.intents.get(*id) {
                Some(pi) => (200, pi.json()),
                None => err(
                    404,
                    "invalid_request_error",
                    Some("resource_missing"),
                    &format!("No such payment_intent: '{id}'"),
                    json!({}),
                ),
            },
            ["v1", "refunds"] => {
                let pi = q.get("payment_intent").cloned().unwrap_or_default();
                let data: Vec<Value> = s
                    .refund_objects
                    .iter()
                    .filter(|r| pi.is_empty() || r["payment_intent"] == pi.as_str())
                    .rev()
                    .cloned()
                    .collect();
                (
                    200,
                    json!({"object": "list", "data": data, "has_more": false, "url": "/v1/refunds"}),
                )
            }
            _ => err(
                404,
                "invalid_request_error",
                None,
                &format!("Unrecognized request URL (GET: {path})."),
                json!({}),
            ),
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An authorized PaymentIntent (`requires_capture`) for `amount`.
    pub fn authorize(&self, id: &str, amount: i64, currency: &str, multicapture: bool) {
        self.state.lock().unwrap().intents.insert(
            id.to_string(),
            Intent {
                id: id.into(),
                amount,
                currency: currency.to_lowercase(),
                amount_capturable: amount,
                amount_received: 0,
                amount_refunded: 0,
                status: "requires_capture".into(),
                multicapture,
                decline: None,
                captures: Vec::new(),
            },
        );
    }

    pub fn intent(&self, id: &str) -> Intent {
        self.state.lock().unwrap().intents[id].clone()
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Requests to a path ending in `suffix`: (idempotency key, body).
    pub fn calls(&self, suffix: &str) -> Vec<(Option<String>, String)> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(p, _, _)| p.ends_with(suffix))
            .map(|(_, k, b)| (k.clone(), b.clone()))
            .collect()
    }

    fn answer(
        st: &Arc<Mutex<State>>,
        path: &str,
        auth: &str,
        ctype: &str,
        key: Option<String>,
        body: &str,
    ) -> (u16, Value, u64) {
        let mut s = st.lock().unwrap();
        s.log
            .push((path.to_string(), key.clone(), body.to_string()));
        if auth != format!("Bearer {STRIPE_KEY}") {
            let (c, v) = err(
                401,
                "invalid_request_error",
                None,
                "Invalid API Key provided: sk_****",
                json!({}),
            );
            return (c, v, 0);
        }
        if !ctype.starts_with("application/x-www-form-urlencoded") {
            let (c, v) = err(
                400,
                "invalid_request_error",
                None,
                "Stripe expects form-encoded parameters",
                json!({}),
            );
            return (c, v, 0);
        }
        if let Some(k) = &key {
            match s.idempotency.get(k) {
                Some((b, _)) if b != body => {
                    let (c, v) = err(400, "idempotency_error", None,
                        "Keys for idempotent requests can only be used with the same parameters they were first used with.", json!({}));
                    return (c, v, 0);
                }
                Some((_, None)) => {
                    let (c, v) = err(
                        409,
                        "idempotency_error",
                        None,
                        "There is currently another in-progress request using this Idempotent Key.",
                        json!({}),
                    );
                    return (c, v, 0);
                }
                Some((_, Some((c, v)))) => return (*c, v.clone(), 0),
                None => {}
            }
        }
        let p: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut hang = 0;
        let (code, v) = match segs.as_slice() {
            ["v1", "payment_intents", id, "capture"] => {
                let hang_ms = s.hang_next_capture_ms;
                let fail_now = std::mem::take(&mut s.fail_next_capture);
                match s.intents.get_mut(*id) {
                    None => err(
                        404,
                        "invalid_request_error",
                        Some("resource_missing"),
                        &format!("No such payment_intent: '{id}'"),
                        json!({"param": "intent"}),
                    ),
                    Some(pi) if pi.status != "requires_capture" => {
                        let pij = pi.json();
                        err(400, "invalid_request_error", Some("payment_intent_unexpected_state"),
                            &format!("This PaymentIntent could not be captured because it has a status of {}.", pi.status),
                            json!({"payment_intent": pij}))
                    }
                    Some(pi) => {
                        let amount = p
                            .get("amount_to_capture")
                            .and_then(|a| a.parse::<i64>().ok())
                            .unwrap_or(pi.amount_capturable);
                        let last = p.get("final_capture").map(|f| f != "false").unwrap_or(true);
                        if fail_now {
                            err(
                                500,
                                "api_error",
                                None,
                                "An unknown error occurred",
                                json!({}),
                            )
                        } else if let Some(d) = pi.decline.clone() {
                            let pij = pi.json();
                            err(
                                402,
                                "card_error",
                                Some("card_declined"),
                                "Your card was declined.",
                                json!({"decline_code": d, "payment_intent": pij}),
                            )
                        } else if !last && !pi.multicapture {
                            err(400, "invalid_request_error", None,
                                "final_capture can only be used when multicapture is available for this PaymentIntent.", json!({"param": "final_capture"}))
                        } else if amount <= 0 || amount > pi.amount_capturable {
                            err(400, "invalid_request_error", Some("amount_too_large"),
                                "The amount to capture must be less than or equal to the capturable amount.", json!({"param": "amount_to_capture"}))
                        } else {
                            pi.captures.push(amount);
                            pi.amount_received += amount;
                            pi.amount_capturable -= amount;
                            if last {
                                pi.amount_capturable = 0;
                                pi.status = "succeeded".into();
                            }
                            hang = hang_ms;
                            (200, pi.json())
                        }
                    }
                }
            }
            ["v1", "payment_intents", id, "cancel"] => {
                match s.intents.get_mut(*id) {
                    None => err(
                        404,
                        "invalid_request_error",
                        Some("resource_missing"),
                        &format!("No such payment_intent: '{id}'"),
                        json!({}),
                    ),
                    Some(pi) if pi.status != "requires_capture" => {
                        let pij = pi.json();
                        err(400, "invalid_request_error", Some("payment_intent_unexpected_state"),
                        &format!("You cannot cancel this PaymentIntent because it has a status of {}.", pi.status),
                        json!({"payment_intent": pij}))
                    }
                    Some(pi) => {
                        pi.status = "canceled".into();
                        pi.amount_capturable = 0;
                        let mut j = pi.json();
                        j["cancellation_reason"] = json!(p.get("cancellation_reason"));
                        (200, j)
                    }
                }
            }
            ["v1", "refunds"] => {
                let id = p.get("payment_intent").cloned().unwrap_or_default();
                let amount = p.get("amount").and_then(|a| a.parse::<i64>().ok());
                match s.intents.get_mut(&id) {
                    None => err(
                        404,
                        "invalid_request_error",
                        Some("resource_missing"),
                        &format!("No such payment_intent: '{id}'"),
                        json!({}),
                    ),
                    Some(pi) => {
                        let left = pi.amount_received - pi.amount_refunded;
                        let amount = amount.unwrap_or(left);
                        if amount <= 0 || amount > left {
                            err(400, "invalid_request_error", Some("amount_too_large"),
                                &format!("Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"), json!({"param": "amount"}))
                        } else {
                            pi.amount_refunded += amount;
                            let rid = format!("re_{}", s.refunds.len() + 1);
                            s.refunds.push((id.clone(), amount));
                            let metadata: serde_json::Map<String, Value> = p
                                .iter()
                                .filter_map(|(k, v)| {
                                    k.strip_prefix("metadata[")
                                        .and_then(|k| k.strip_suffix(']'))
                                        .map(|k| (k.to_string(), json!(v)))
                                })
                                .collect();
                            let refund = json!({"id": rid, "object": "refund", "amount": amount, "payment_intent": id,
                                                "status": "succeeded", "reason": p.get("reason"), "metadata": metadata});
                            s.refund_objects.push(refund.clone());
                            (200, refund)
                        }
                    }
                }
            }
            _ => err(
                404,
                "invalid_request_error",
                None,
                &format!("Unrecognized request URL (POST: {path})."),
                json!({}),
            ),
        };
        if hang > 0 {
            s.hang_next_capture_ms = 0;
        }
        if let Some(k) = key {
            // Stripe stores the result once the endpoint started executing.
            s.idempotency
                .insert(k, (body.to_string(), Some((code, v.clone()))));
        }
        (code, v, hang)
    }
}
