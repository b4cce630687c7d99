//! Webhook signatures: HMAC-SHA256 over the raw body, compared in constant time.
//!
//! - Shopify `X-Shopify-Hmac-Sha256` and WooCommerce `X-WC-Webhook-Signature`:
//!   base64 of HMAC-SHA256(secret, raw body).
//! - Waybill's own callbacks: `t=<unix seconds>,v1=<hex HMAC(secret, "t.body")>`,
//!   five minutes of tolerance.

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// How a secret appears in `Debug` output and logs: never its value.
pub fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() {
        "(empty)"
    } else {
        "[redacted]"
    }
}

pub fn hmac_sha256(secret: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn base64_hmac(secret: &[u8], body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha256(secret, body))
}

/// Checks a base64 HMAC-SHA256 header value (Shopify, WooCommerce, AfterShip).
pub fn verify_base64(secret: &[u8], body: &[u8], header: &str) -> bool {
    if secret.is_empty() {
        return false;
    }
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(header.trim()) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// Constant-time equality for secrets compared as strings (shared-secret headers, tokens).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare HMACs of both under a fixed key: equal-length, constant-time, no early exit.
    let key = b"waybill-constant-time-compare";
    let mut mac = HmacSha256::new_from_slice(key).expect("key");
    mac.update(a);
    mac.verify_slice(&hmac_sha256(key, b)).is_ok()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `t=...,v1=...` for Waybill's signed callbacks and outbound webhooks.
pub fn sign_timestamped(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut data = format!("{timestamp}.").into_bytes();
    data.extend_from_slice(body);
    format!("t={timestamp},v1={}", hex(&hmac_sha256(secret, &data)))
}

/// The hex `v2` value: HMAC-SHA256 over `t.METHOD.path.body`. The method and
/// the request path (without the query; for a center, it names the facility)
/// bind a signature to the one endpoint it was made for.
fn v2_value(secret: &[u8], timestamp: i64, method: &str, path: &str, body: &[u8]) -> String {
    let mut data = format!("{timestamp}.{}.{path}.", method.to_ascii_uppercase()).into_bytes();
    data.extend_from_slice(body);
    hex(&hmac_sha256(secret, &data))
}

/// `t=...,v1=...,v2=...` for a request Waybill sends: `v2` is bound to the
/// method and path, `v1` (over `t.body`) is kept for receivers written
/// against it.
pub fn sign_request(
    secret: &[u8],
    timestamp: i64,
    method: &str,
    path: &str,
    body: &[u8],
) -> String {
    let v2 = v2_value(secret, timestamp, method, path, body);
    format!("{},v2={v2}", sign_timestamped(secret, timestamp, body))
}

/// `t=...,v2=...` only (what a center sends Waybill).
pub fn sign_request_v2(
    secret: &[u8],
    timestamp: i64,
    method: &str,
    path: &str,
    body: &[u8],
) -> String {
    format!(
        "t={timestamp},v2={}",
        v2_value(secret, timestamp, method, path, body)
    )
}

/// Verifies the `v2` value of a `t=...,v2=...` header for this method and
/// path within `tolerance_secs` of `now` (a `v1` value is not accepted: it
/// is not bound to the endpoint). Answers the value that verified, to be
/// accepted once (`kernel::replay`).
pub fn verified_request(
    secret: &[u8],
    header: &str,
    method: &str,
    path: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Option<String> {
    if secret.is_empty() {
        return None;
    }
    let (t, sigs) = timestamped(header, "v2", now, tolerance_secs)?;
    let expected = v2_value(secret, t, method, path, body);
    sigs.iter()
        .any(|s| constant_time_eq(s.as_bytes(), expected.as_bytes()))
        .then_some(expected)
}

/// A `t=...,<scheme>=...` header's timestamp, if within `tolerance_secs` of
/// `now`, and its `scheme` values. Checked: a timestamp at the end of the
/// range is refused, never wrapped.
fn timestamped(
    header: &str,
    scheme: &str,
    now: i64,
    tolerance_secs: i64,
) -> Option<(i64, Vec<String>)> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some((k, v)) if k == scheme => sigs.push(v.to_string()),
            _ => {}
        }
    }
    let t = t?;
    now.checked_sub(t)
        .is_some_and(|d| d.unsigned_abs() <= tolerance_secs.unsigned_abs())
        .then_some((t, sigs))
}

/// Verifies a `t=...,v1=...` header within `tolerance_secs` of `now`.
pub fn verify_timestamped(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> bool {
    verified_signature(secret, header, body, now, tolerance_secs).is_some()
}

/// Like [`verify_timestamped`]; answers the v1 value that verified (to be
/// accepted once: `kernel::replay`).
pub fn verified_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Option<String> {
    if secret.is_empty() {
        return None;
    }
    let (t, sigs) = timestamped(header, "v1", now, tolerance_secs)?;
    let expected = sign_timestamped(secret, t, body);
    let expected_sig = expected
        .rsplit_once("v1=")
        .map(|(_, s)| s.to_string())
        .unwrap_or_default();
    sigs.iter()
        .any(|s| constant_time_eq(s.as_bytes(), expected_sig.as_bytes()))
        .then_some(expected_sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v2_signature_is_bound_to_its_method_path_and_body() {
        let now = 1_700_000_000;
        let path = "/callbacks/fc/berlin/shipments";
        let h = sign_request_v2(b"k", now, "POST", path, b"{}");
        assert!(verified_request(b"k", &h, "POST", path, b"{}", now, 300).is_some());
        // Another facility, another endpoint, another method, another body.
        for (m, p, b) in [
            ("POST", "/callbacks/fc/vienna/shipments", &b"{}"[..]),
            ("POST", "/callbacks/fc/berlin/inventory", b"{}"),
            ("PUT", path, b"{}"),
            ("POST", path, b"{ }"),
        ] {
            assert!(
                verified_request(b"k", &h, m, p, b, now, 300).is_none(),
                "{m} {p}"
            );
        }
        // A v1 value (over t.body only) is not accepted where v2 is required.
        let v1 = sign_timestamped(b"k", now, b"{}");
        assert!(verified_request(b"k", &v1, "POST", path, b"{}", now, 300).is_none());
        // What Waybill sends carries both; each verifies by its own rule.
        let both = sign_request(b"k", now, "POST", path, b"{}");
        assert!(verify_timestamped(b"k", &both, b"{}", now, 300));
        assert!(verified_request(b"k", &both, "POST", path, b"{}", now, 300).is_some());
        for t in [i64::MIN, i64::MAX] {
            let h = sign_request_v2(b"k", t, "POST", path, b"{}");
            assert!(verified_request(b"k", &h, "POST", path, b"{}", now, 300).is_none());
        }
    }

    #[test]
    fn timestamps_at_the_ends_of_the_range_are_refused_not_wrapped() {
        let now = 1_700_000_000;
        for t in [i64::MIN, i64::MIN + 1, i64::MAX] {
            let header = sign_timestamped(b"k", t, b"{}");
            assert!(!verify_timestamped(b"k", &header, b"{}", now, 300), "{t}");
        }
        let header = sign_timestamped(b"k", now - 300, b"{}");
        assert!(verify_timestamped(b"k", &header, b"{}", now, 300));
    }

    #[test]
    fn base64_hmac_matches_a_known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let header = base64_hmac(b"Jefe", b"what do ya want for nothing?");
        assert!(verify_base64(
            b"Jefe",
            b"what do ya want for nothing?",
            &header
        ));
        assert!(!verify_base64(
            b"Jefe",
            b"what do ya want for nothing!",
            &header
        ));
        assert!(!verify_base64(
            b"other",
            b"what do ya want for nothing?",
            &header
        ));
        assert!(
            !verify_base64(b"", b"x", &base64_hmac(b"", b"x")),
            "an unset secret never verifies"
        );
        assert!(!verify_base64(b"Jefe", b"x", "not base64!!"));
    }

    #[test]
    fn timestamped() {
        let h = sign_timestamped(b"s", 1_700_000_000, b"{}");
        assert!(verify_timestamped(b"s", &h, b"{}", 1_700_000_100, 300));
        assert!(
            !verify_timestamped(b"s", &h, b"{}", 1_700_000_400, 300),
            "too old"
        );
        assert!(!verify_timestamped(b"s", &h, b"{ }", 1_700_000_000, 300));
        assert!(!verify_timestamped(b"t", &h, b"{}", 1_700_000_000, 300));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
