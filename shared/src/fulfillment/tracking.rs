//! Carrier tracking callbacks, verified and normalised to one vocabulary
//! (DESIGN §6): pre_transit, in_transit, out_for_delivery,
//! available_for_pickup, delivered, failed_attempt, exception,
//! returned_to_sender, cancelled, unknown.
//!
//! - EasyPost: an `Event` (`tracker.created` / `tracker.updated`) whose
//!   `result` is a `Tracker` (`tracking_code`, `status`, `status_detail`,
//!   `carrier`, `tracking_details[]`, `public_url`); header
//!   `X-Hmac-Signature: hmac-sha256-hex=<hex HMAC-SHA256 of the body>`.
//! - AfterShip: `{"event": "tracking_update", "msg": {"tracking_number", "slug",
//!   "tag", "subtag", "subtag_message", "checkpoints[]"}}`; header
//!   `aftership-hmac-sha256` (base64 HMAC-SHA256 of the body).
//! - Shippo: `{"event": "track_updated", "data": {"carrier", "tracking_number",
//!   "tracking_status": {"status", "substatus": {"code"}, "status_details",
//!   "status_date"}}}`; `?token=` in the URL, and when an HMAC secret is
//!   configured `Shippo-Auth-Signature: t=<unix>,v1=<hex HMAC of "t.body">`.
//!
//! This module is pure: parsing, normalising and verifying. Applying an update
//! to parcels and orders is [`crate::fulfillment::apply_tracking`].

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::kernel::error::{Error, Result};
use crate::kernel::signature;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Unknown,
    PreTransit,
    InTransit,
    OutForDelivery,
    AvailableForPickup,
    FailedAttempt,
    Exception,
    ReturnedToSender,
    Cancelled,
    Delivered,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Unknown,
        Status::PreTransit,
        Status::InTransit,
        Status::OutForDelivery,
        Status::AvailableForPickup,
        Status::FailedAttempt,
        Status::Exception,
        Status::ReturnedToSender,
        Status::Cancelled,
        Status::Delivered,
    ];
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::PreTransit => "pre_transit",
            Status::InTransit => "in_transit",
            Status::OutForDelivery => "out_for_delivery",
            Status::AvailableForPickup => "available_for_pickup",
            Status::FailedAttempt => "failed_attempt",
            Status::Exception => "exception",
            Status::ReturnedToSender => "returned_to_sender",
            Status::Cancelled => "cancelled",
            Status::Delivered => "delivered",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
    /// Statuses an operator must look at.
    pub fn needs_action(&self) -> bool {
        matches!(
            self,
            Status::FailedAttempt | Status::Exception | Status::ReturnedToSender
        )
    }
}

/// One normalised tracking update.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub provider: &'static str,
    pub tracking_number: String,
    pub carrier: Option<String>,
    pub status: Status,
    /// The provider's own status words (for the timeline).
    pub raw_status: String,
    pub message: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub public_url: Option<String>,
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k)
        .and_then(|x| match x {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .filter(|s| !s.trim().is_empty())
}

fn time(v: &Value, k: &str) -> Option<DateTime<Utc>> {
    s(v, k).and_then(|t| crate::kernel::time::parse_time(&t))
}

fn parse_json(body: &[u8]) -> Result<Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(Error::unprocessable("the body must be a JSON object"));
    }
    Ok(v)
}

/// Housekeeping: drops up to `limit` carrier tracking events received before
/// `before` (the shipment keeps its status; only the event history goes).
/// Returns the rows removed.
pub fn purge_events(
    db: &dyn crate::kernel::db::Db,
    before: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> crate::kernel::error::Result<u64> {
    use crate::kernel::db::Db as _;
    Ok(crate::kernel::db::Patient(db).exec(
        "DELETE FROM tracking_events WHERE id IN (SELECT id FROM tracking_events WHERE received_at < ? ORDER BY id LIMIT ?)",
        crate::params![crate::kernel::time::ts(before), limit],
    )?)
}

/// EasyPost tracker status (+ detail) to the vocabulary.
pub fn easypost_status(status: &str, detail: &str) -> Status {
    match status {
        "pre_transit" => Status::PreTransit,
        "in_transit" => Status::InTransit,
        "out_for_delivery" => Status::OutForDelivery,
        "delivered" => Status::Delivered,
        "available_for_pickup" => Status::AvailableForPickup,
        "return_to_sender" => Status::ReturnedToSender,
        "cancelled" => Status::Cancelled,
        "failure" if detail.contains("attempt") => Status::FailedAttempt,
        "failure" | "error" => Status::Exception,
        _ => Status::Unknown,
    }
}

/// AfterShip tag (+ subtag) to the vocabulary.
pub fn aftership_status(tag: &str, subtag: &str, subtag_message: &str) -> Status {
    match tag {
        "Pending" | "InfoReceived" => Status::PreTransit,
        "InTransit" => Status::InTransit,
        "OutForDelivery" => Status::OutForDelivery,
        "AvailableForPickup" => Status::AvailableForPickup,
        "Delivered" => Status::Delivered,
        "AttemptFail" => Status::FailedAttempt,
        "Exception"
            if subtag == "Exception_011"
                || subtag_message.to_ascii_lowercase().contains("return") =>
        {
            Status::ReturnedToSender
        }
        "Exception" => Status::Exception,
        _ => Status::Unknown,
    }
}

/// Shippo status (+ substatus code) to the vocabulary.
pub fn shippo_status(status: &str, substatus: &str) -> Status {
    match (status, substatus) {
        (_, "out_for_delivery") => Status::OutForDelivery,
        (_, "delivery_attempted") => Status::FailedAttempt,
        (_, "pickup_available" | "package_available_for_pickup") => Status::AvailableForPickup,
        ("PRE_TRANSIT", _) => Status::PreTransit,
        ("TRANSIT", _) => Status::InTransit,
        ("DELIVERED", _) => Status::Delivered,
        ("RETURNED", _) => Status::ReturnedToSender,
        ("FAILURE", _) => Status::Exception,
        _ => Status::Unknown,
    }
}

/// An EasyPost event; `None` for events that are not tracker updates.
pub fn easypost(body: &[u8]) -> Result<Option<Update>> {
    let v = parse_json(body)?;
    let desc = s(&v, "description").unwrap_or_default();
    if !desc.starts_with("tracker.") {
        return Ok(None);
    }
    let t = &v["result"];
    let code = s(t, "tracking_code")
        .ok_or_else(|| Error::unprocessable("/result/tracking_code is required"))?;
    let status = s(t, "status").unwrap_or_else(|| "unknown".into());
    let detail = s(t, "status_detail").unwrap_or_default();
    let last = t["tracking_details"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or(Value::Null);
    Ok(Some(Update {
        provider: "easypost",
        tracking_number: code,
        carrier: s(t, "carrier"),
        status: easypost_status(&status, &detail),
        raw_status: if detail.is_empty() {
            status
        } else {
            format!("{status}/{detail}")
        },
        message: s(&last, "message"),
        occurred_at: time(&last, "datetime").or_else(|| time(t, "updated_at")),
        public_url: s(t, "public_url"),
    }))
}

/// An AfterShip webhook; `None` for events other than tracking updates.
pub fn aftership(body: &[u8]) -> Result<Option<Update>> {
    let v = parse_json(body)?;
    if s(&v, "event").as_deref() != Some("tracking_update") {
        return Ok(None);
    }
    let m = &v["msg"];
    let number = s(m, "tracking_number")
        .ok_or_else(|| Error::unprocessable("/msg/tracking_number is required"))?;
    let tag = s(m, "tag").unwrap_or_default();
    let subtag = s(m, "subtag").unwrap_or_default();
    let sub_msg = s(m, "subtag_message").unwrap_or_default();
    let last = m["checkpoints"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or(Value::Null);
    Ok(Some(Update {
        provider: "aftership",
        tracking_number: number,
        carrier: s(m, "slug"),
        status: aftership_status(&tag, &subtag, &sub_msg),
        raw_status: if subtag.is_empty() { tag } else { subtag },
        message: s(&last, "message").or(Some(sub_msg).filter(|x| !x.is_empty())),
        occurred_at: time(&last, "checkpoint_time").or_else(|| time(m, "updated_at")),
        public_url: s(m, "courier_tracking_link"),
    }))
}

/// A Shippo webhook; `None` for events other than track updates.
pub fn shippo(body: &[u8]) -> Result<Option<Update>> {
    let v = parse_json(body)?;
    if s(&v, "event").as_deref() != Some("track_updated") {
        return Ok(None);
    }
    let d = &v["data"];
    let number = s(d, "tracking_number")
        .ok_or_else(|| Error::unprocessable("/data/tracking_number is required"))?;
    let ts = &d["tracking_status"];
    let status = s(ts, "status").unwrap_or_else(|| "UNKNOWN".into());
    let sub = s(&ts["substatus"], "code").unwrap_or_default();
    Ok(Some(Update {
        provider: "shippo",
        tracking_number: number,
        carrier: s(d, "carrier"),
        status: shippo_status(&status, &sub),
        raw_status: if sub.is_empty() {
            status
        } else {
            format!("{status}/{sub}")
        },
        message: s(ts, "status_details"),
        occurred_at: time(ts, "status_date"),
        public_url: None,
    }))
}

/// EasyPost's `X-Hmac-Signature: hmac-sha256-hex=<hex>`.
pub fn verify_easypost(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(h) = header else { return false };
    let Some(hex) = h.trim().strip_prefix("hmac-sha256-hex=") else {
        return false;
    };
    !secret.is_empty()
        && signature::constant_time_eq(
            hex.to_ascii_lowercase().as_bytes(),
            signature::hex(&signature::hmac_sha256(secret.as_bytes(), body)).as_bytes(),
        )
}

/// AfterShip's `aftership-hmac-sha256` (base64).
pub fn verify_aftership(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    !secret.is_empty()
        && header.is_some_and(|h| signature::verify_base64(secret.as_bytes(), body, h.trim()))
}

/// Shippo: the URL token (constant time) and, when a secret is set, the
/// `Shippo-Auth-Signature` header (`t=,v1=`, 5-minute tolerance).
pub fn verify_shippo(
    token: &str,
    given_token: Option<&str>,
    hmac_secret: &str,
    body: &[u8],
    header: Option<&str>,
    now: i64,
) -> bool {
    if token.is_empty() && hmac_secret.is_empty() {
        return false;
    }
    if !token.is_empty()
        && !given_token.is_some_and(|g| signature::constant_time_eq(g.as_bytes(), token.as_bytes()))
    {
        return false;
    }
    if !hmac_secret.is_empty() {
        return header.is_some_and(|h| {
            signature::verify_timestamped(hmac_secret.as_bytes(), h, body, now, 300)
        });
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_maps_into_the_vocabulary() {
        assert_eq!(
            easypost_status("return_to_sender", ""),
            Status::ReturnedToSender
        );
        assert_eq!(
            easypost_status("failure", "delivery_attempt_failed"),
            Status::FailedAttempt
        );
        assert_eq!(easypost_status("failure", "lost"), Status::Exception);
        assert_eq!(easypost_status("weird", ""), Status::Unknown);
        assert_eq!(aftership_status("InfoReceived", "", ""), Status::PreTransit);
        assert_eq!(
            aftership_status("AttemptFail", "AttemptFail_001", ""),
            Status::FailedAttempt
        );
        assert_eq!(
            aftership_status("Exception", "Exception_011", ""),
            Status::ReturnedToSender
        );
        assert_eq!(
            aftership_status("Exception", "Exception_004", "Unforeseen reason"),
            Status::Exception
        );
        assert_eq!(aftership_status("Expired", "", ""), Status::Unknown);
        assert_eq!(
            shippo_status("TRANSIT", "out_for_delivery"),
            Status::OutForDelivery
        );
        assert_eq!(
            shippo_status("TRANSIT", "package_departed"),
            Status::InTransit
        );
        assert_eq!(
            shippo_status("FAILURE", "delivery_attempted"),
            Status::FailedAttempt
        );
        assert_eq!(
            shippo_status("RETURNED", "return_to_sender"),
            Status::ReturnedToSender
        );
        for st in Status::ALL {
            assert_eq!(Status::parse(st.as_str()), Some(st));
        }
    }

    #[test]
    fn signatures() {
        let body = br#"{"a":1}"#;
        let hex = signature::hex(&signature::hmac_sha256(b"sek", body));
        assert!(verify_easypost(
            "sek",
            body,
            Some(&format!("hmac-sha256-hex={hex}"))
        ));
        assert!(!verify_easypost("sek", body, Some(&hex)));
        // An empty secret refuses even a signature made with the empty key
        // (which anyone can compute).
        let empty_hex = signature::hex(&signature::hmac_sha256(b"", body));
        assert!(!verify_easypost(
            "",
            body,
            Some(&format!("hmac-sha256-hex={empty_hex}"))
        ));
        let b64 = signature::base64_hmac(b"sek", body);
        assert!(verify_aftership("sek", body, Some(&b64)));
        assert!(!verify_aftership("other", body, Some(&b64)));
        let empty_b64 = signature::base64_hmac(b"", body);
        assert!(!verify_aftership("", body, Some(&empty_b64)));
        let now = 1_700_000_000;
        let sig = signature::sign_timestamped(b"h", now, body);
        assert!(verify_shippo("tok", Some("tok"), "", body, None, now));
        assert!(!verify_shippo("tok", Some("tok2"), "", body, None, now));
        assert!(!verify_shippo("tok", None, "", body, None, now));
        assert!(verify_shippo(
            "tok",
            Some("tok"),
            "h",
            body,
            Some(&sig),
            now
        ));
        assert!(!verify_shippo("tok", Some("tok"), "h", body, None, now));
        assert!(
            !verify_shippo("", None, "", body, None, now),
            "nothing configured: refuse"
        );
    }
}
