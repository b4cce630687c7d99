//! Payment gateways behind one interface.
//!
//! - `manual` (the embedded default): an internal ledger. A capture succeeds
//!   when the authorization covers it and has not expired; nothing leaves the
//!   app. Operators settle with the payment provider themselves.
//! - `prepaid`: the shop collected the money already (paid at the source); a
//!   capture only assigns collected funds to what is released (for invoices).
//! - `stripe`: Stripe's PaymentIntents API over HTTP, form-encoded as Stripe
//!   documents it: `POST /v1/payment_intents/{id}/capture` with
//!   `amount_to_capture` (and `final_capture=false` while more captures follow:
//!   multicapture), `POST /v1/refunds` with `payment_intent` and `amount`,
//!   `POST /v1/payment_intents/{id}/cancel` to release what is left of the
//!   authorization. Every request carries `Idempotency-Key` = the ledger
//!   transaction's id, so a retry after a timeout can never capture twice.
//!
//! The HTTP call itself is the host's ([`Http`]): the capture component sends
//! it through Spin, tests through a closure.

use serde_json::Value as Json;

/// What a gateway call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the gateway's reference (charge, refund or PaymentIntent id).
    Succeeded { reference: Option<String> },
    /// Refused for good (card declined, authorization expired or cancelled,
    /// amount over what is capturable, unknown PaymentIntent): no retry.
    Declined { code: String, message: String },
    /// Outcome unknown or temporary (timeout, connection lost, 429, 5xx,
    /// idempotency conflict, bad credentials): retried with the same key.
    Retry { code: String, message: String },
}

/// One HTTP exchange: (status, body) or a transport error (the request may or
/// may not have reached the gateway).
pub trait Http {
    fn post_form(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &str,
    ) -> Result<(u16, Vec<u8>), String>;

    /// A GET (reconciliation reads); a transport that cannot GET says so, and
    /// the transaction waits for one that can.
    fn get(&self, _url: &str, _headers: &[(String, String)]) -> Result<(u16, Vec<u8>), String> {
        Err("this transport cannot read from the gateway".into())
    }
}

impl<F> Http for F
where
    F: Fn(&str, &[(String, String)], &str) -> Result<(u16, Vec<u8>), String>,
{
    fn post_form(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &str,
    ) -> Result<(u16, Vec<u8>), String> {
        self(url, headers, body)
    }
}

/// Stripe's endpoint and credentials (Spin variables `stripe_api_base`,
/// `stripe_secret_key`).
#[derive(Clone)]
pub struct StripeConfig {
    pub api_base: String,
    pub secret_key: String,
}

impl std::fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeConfig")
            .field("api_base", &self.api_base)
            .field(
                "secret_key",
                &crate::kernel::signature::redacted(&self.secret_key),
            )
            .finish()
    }
}

/// A request to a gateway, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

fn form(pairs: &[(&str, String)]) -> String {
    let mut f = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        f.append_pair(k, v);
    }
    f.finish()
}

/// Path segments are Stripe ids (`pi_...`); anything else is percent-encoded.
fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl StripeConfig {
    fn request(&self, path: &str, idempotency_key: &str, body: String) -> FormRequest {
        FormRequest {
            url: format!("{}{path}", self.api_base.trim_end_matches('/')),
            headers: vec![
                (
                    "authorization".into(),
                    format!("Bearer {}", self.secret_key),
                ),
                (
                    "content-type".into(),
                    "application/x-www-form-urlencoded".into(),
                ),
                ("idempotency-key".into(), idempotency_key.into()),
            ],
            body,
        }
    }

    /// Captures `amount` of the PaymentIntent; `last` lets Stripe release
    /// whatever is left of the authorization afterwards.
    pub fn capture(
        &self,
        payment_intent: &str,
        key: &str,
        amount: i64,
        last: bool,
        order_number: &str,
        fulfillment_order: &str,
    ) -> FormRequest {
        let mut p = vec![("amount_to_capture", amount.to_string())];
        if !last {
            p.push(("final_capture", "false".into()));
        }
        p.push(("metadata[waybill_order]", order_number.into()));
        p.push((
            "metadata[waybill_fulfillment_order]",
            fulfillment_order.into(),
        ));
        self.request(
            &format!("/v1/payment_intents/{}/capture", seg(payment_intent)),
            key,
            form(&p),
        )
    }

    pub fn refund(
        &self,
        payment_intent: &str,
        key: &str,
        transaction: &str,
        amount: i64,
        order_number: &str,
    ) -> FormRequest {
        self.request(
            "/v1/refunds",
            key,
            form(&[
                ("payment_intent", payment_intent.into()),
                ("amount", amount.to_string()),
                ("reason", "requested_by_customer".into()),
                ("metadata[waybill_order]", order_number.into()),
                // Finds the refund again when its outcome must be reconciled.
                ("metadata[waybill_transaction]", transaction.into()),
            ]),
        )
    }

    /// Releases the rest of the authorization (a PaymentIntent in
    /// `requires_capture`; after partial captures Stripe gives back what is
    /// still capturable).
    pub fn cancel(&self, payment_intent: &str, key: &str) -> FormRequest {
        self.request(
            &format!("/v1/payment_intents/{}/cancel", seg(payment_intent)),
            key,
            form(&[("cancellation_reason", "requested_by_customer".into())]),
        )
    }
}

/// A read of Stripe's state (reconciliation): no body, no idempotency key.
fn read(stripe: &StripeConfig, http: &dyn Http, path: &str) -> Result<Json, String> {
    let url = format!("{}{path}", stripe.api_base.trim_end_matches('/'));
    let headers = [(
        "authorization".to_string(),
        format!("Bearer {}", stripe.secret_key),
    )];
    match http.get(&url, &headers) {
        Ok((200, body)) => serde_json::from_slice(&body)
            .map_err(|e| format!("Stripe answered something that is not JSON: {e}")),
        Ok((status, body)) => Err(format!(
            "Stripe answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        )),
        Err(e) => Err(e),
    }
}

/// What Stripe says became of a call whose idempotency key it may have forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// It took effect: settle with this reference.
    Happened { reference: Option<String> },
    /// Nothing happened: send it again under a new key.
    NotHappened,
    /// Stripe's state fits neither (an operator looks): the reason.
    Unclear(String),
}

/// Reconciles a capture, refund or void of `amount` with Stripe's state
/// before it is sent again (Stripe keeps idempotency keys 24 hours):
/// - capture: the PaymentIntent's `amount_received` against the captures the
///   ledger has booked (`booked`): `amount` more → it happened; equal and still
///   `requires_capture` → it did not;
/// - refund: the PaymentIntent's refunds (`GET /v1/refunds?payment_intent=`)
///   carrying `metadata[waybill_transaction]` = `transaction`;
/// - void: the PaymentIntent `canceled` → it happened; `requires_capture` → not.
///
/// Err when Stripe could not be read (retried later, never sent blind).
pub fn reconcile(
    http: &dyn Http,
    stripe: &StripeConfig,
    kind: &str,
    payment_intent: &str,
    transaction: &str,
    amount: i64,
    booked: i64,
) -> Result<Reconciled, String> {
    let pi_path = format!("/v1/payment_intents/{}", seg(payment_intent));
    match kind {
        "capture" => {
            let pi = read(stripe, http, &pi_path)?;
            let received = pi["amount_received"].as_i64().unwrap_or(0);
            let status = pi["status"].as_str().unwrap_or("");
            Ok(if received == booked + amount {
                Reconciled::Happened {
                    reference: pi["latest_charge"].as_str().map(str::to_string),
                }
            } else if received == booked && status == "requires_capture" {
                Reconciled::NotHappened
            } else {
                Reconciled::Unclear(format!(
                    "Stripe received {received} on {payment_intent} ({status}); the ledger booked {booked} and this capture is {amount}"
                ))
            })
        }
        "refund" => {
            let list = read(
                stripe,
                http,
                &format!(
                    "/v1/refunds?payment_intent={}&limit=100",
                    seg(payment_intent)
                ),
            )?;
            let found = list["data"].as_array().and_then(|a| {
                a.iter()
                    .find(|r| r["metadata"]["waybill_transaction"] == transaction)
            });
            Ok(match found {
                Some(r) if matches!(r["status"].as_str(), Some("failed" | "canceled")) => {
                    Reconciled::NotHappened
                }
                Some(r) => Reconciled::Happened {
                    reference: r["id"].as_str().map(str::to_string),
                },
                None if list["has_more"] == true => Reconciled::Unclear(format!(
                    "{payment_intent} has more than 100 refunds; this one was not among the latest"
                )),
                None => Reconciled::NotHappened,
            })
        }
        _ => {
            let pi = read(stripe, http, &pi_path)?;
            Ok(match pi["status"].as_str().unwrap_or("") {
                "canceled" => Reconciled::Happened {
                    reference: pi["id"].as_str().map(str::to_string),
                },
                "requires_capture" => Reconciled::NotHappened,
                other => Reconciled::Unclear(format!(
                    "{payment_intent} is {other}; nothing is left to void"
                )),
            })
        }
    }
}

/// Sends a request and classifies Stripe's answer.
pub fn send(http: &dyn Http, r: &FormRequest) -> Outcome {
    match http.post_form(&r.url, &r.headers, &r.body) {
        Err(e) => Outcome::Retry {
            code: "transport".into(),
            message: e,
        },
        Ok((status, body)) => classify(status, &body),
    }
}

/// The decline of a partial capture (`final_capture=false`) on a
/// PaymentIntent without multicapture.
pub const MULTICAPTURE_UNAVAILABLE: &str = "multicapture_unavailable";

/// Stripe's answer to Waybill's vocabulary. Errors are
/// `{"error": {"type", "code", "decline_code", "message", "payment_intent"}}`.
pub fn classify(status: u16, body: &[u8]) -> Outcome {
    let v: Json = serde_json::from_slice(body).unwrap_or(Json::Null);
    if (200..300).contains(&status) {
        // A refund object may be `pending` (it settles later) or `failed`.
        if v["object"] == "refund" && matches!(v["status"].as_str(), Some("failed" | "canceled")) {
            return Outcome::Declined {
                code: format!("refund_{}", v["status"].as_str().unwrap_or("failed")),
                message: v["failure_reason"]
                    .as_str()
                    .unwrap_or("the refund failed")
                    .into(),
            };
        }
        let reference = v["latest_charge"]
            .as_str()
            .or_else(|| v["id"].as_str())
            .map(str::to_string);
        return Outcome::Succeeded { reference };
    }
    let e = &v["error"];
    let kind = e["type"].as_str().unwrap_or("");
    let code = e["decline_code"]
        .as_str()
        .or_else(|| e["code"].as_str())
        .unwrap_or(kind)
        .to_string();
    let code = if code.is_empty() {
        format!("http_{status}")
    } else {
        code
    };
    let message = e["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("Stripe answered {status}"));
    match status {
        // Temporary, or the outcome of an earlier attempt is not known yet.
        408 | 409 | 429 | 500..=599 => Outcome::Retry { code, message },
        // Credentials: the request was not processed; an operator fixes the key.
        401 | 403 => Outcome::Retry { code, message },
        _ if kind == "api_error" || kind == "idempotency_error" || kind == "rate_limit_error" => {
            Outcome::Retry { code, message }
        }
        // 400 (invalid request, unexpected state: expired or cancelled
        // authorization), 402 (card declined), 404 (no such PaymentIntent).
        _ => {
            let pi_status = e["payment_intent"]["status"].as_str().unwrap_or("");
            let code = if pi_status == "canceled" {
                "authorization_expired".to_string()
            } else if e["param"] == "final_capture" {
                // The PaymentIntent cannot be captured in parts (multicapture
                // is not available for it): the ledger captures once, at the end.
                MULTICAPTURE_UNAVAILABLE.to_string()
            } else {
                code
            };
            Outcome::Declined { code, message }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_key_never_reaches_debug_output() {
        let c = StripeConfig {
            api_base: "https://api.stripe.com".into(),
            secret_key: "sk_live_very_secret_1234".into(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk_live"), "{shown}");
        assert!(shown.contains("[redacted]") && shown.contains("api.stripe.com"));
    }

    fn cfg() -> StripeConfig {
        StripeConfig {
            api_base: "http://127.0.0.1:9/".into(),
            secret_key: "sk_test_x".into(),
        }
    }

    #[test]
    fn capture_requests_follow_stripes_form_encoding() {
        let r = cfg().capture("pi_123", "cap-1", 1999, false, "WB-1", "WB-1-F1");
        assert_eq!(
            r.url,
            "http://127.0.0.1:9/v1/payment_intents/pi_123/capture"
        );
        assert_eq!(
            r.body,
            "amount_to_capture=1999&final_capture=false&metadata%5Bwaybill_order%5D=WB-1&metadata%5Bwaybill_fulfillment_order%5D=WB-1-F1"
        );
        assert!(r
            .headers
            .contains(&("idempotency-key".into(), "cap-1".into())));
        assert!(r
            .headers
            .contains(&("authorization".into(), "Bearer sk_test_x".into())));
        let last = cfg().capture("pi_123", "cap-2", 1, true, "WB-1", "WB-1-F2");
        assert!(!last.body.contains("final_capture"), "{}", last.body);
        let odd = cfg().cancel("pi/../x", "v");
        assert_eq!(
            odd.url,
            "http://127.0.0.1:9/v1/payment_intents/pi%2F..%2Fx/cancel"
        );
        let refund = cfg().refund("pi_1", "r-1", "r-1", 500, "WB-1");
        assert!(refund.body.starts_with("payment_intent=pi_1&amount=500&"));
    }

    #[test]
    fn answers_are_classified() {
        let ok = br#"{"id":"pi_1","object":"payment_intent","status":"requires_capture","latest_charge":"ch_9"}"#;
        assert_eq!(
            classify(200, ok),
            Outcome::Succeeded {
                reference: Some("ch_9".into())
            }
        );
        let declined = br#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds."}}"#;
        assert!(
            matches!(classify(402, declined), Outcome::Declined { code, .. } if code == "insufficient_funds")
        );
        let expired = br#"{"error":{"type":"invalid_request_error","code":"payment_intent_unexpected_state","message":"This PaymentIntent could not be captured because it has a status of canceled.","payment_intent":{"id":"pi_1","status":"canceled"}}}"#;
        assert!(
            matches!(classify(400, expired), Outcome::Declined { code, .. } if code == "authorization_expired")
        );
        let single = br#"{"error":{"type":"invalid_request_error","message":"final_capture can only be used when multicapture is available for this PaymentIntent.","param":"final_capture"}}"#;
        assert!(
            matches!(classify(400, single), Outcome::Declined { code, .. } if code == MULTICAPTURE_UNAVAILABLE)
        );
        for s in [409u16, 429, 500, 502, 503] {
            assert!(matches!(classify(s, b"{}"), Outcome::Retry { .. }), "{s}");
        }
        assert!(matches!(classify(401, b"not json"), Outcome::Retry { .. }));
        assert!(matches!(
            classify(404, br#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such payment_intent"}}"#),
            Outcome::Declined { code, .. } if code == "resource_missing"
        ));
        assert!(matches!(
            classify(200, br#"{"id":"re_1","object":"refund","status":"failed","failure_reason":"expired_or_canceled_card"}"#),
            Outcome::Declined { .. }
        ));
        assert_eq!(
            classify(
                200,
                br#"{"id":"re_1","object":"refund","status":"pending"}"#
            ),
            Outcome::Succeeded {
                reference: Some("re_1".into())
            }
        );
        let lost = |_: &str, _: &[(String, String)], _: &str| -> Result<(u16, Vec<u8>), String> {
            Err("connection reset".into())
        };
        assert!(
            matches!(send(&lost, &cfg().cancel("pi_1", "k")), Outcome::Retry { code, .. } if code == "transport")
        );
    }
}
