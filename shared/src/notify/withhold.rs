//! Licence keys are secrets: they travel to the customer's e-mail and to the
//! fulfillment center only. Everything a read-scope caller can see (the event
//! export, the mailbox, webhooks of subscriptions without `include_secrets`)
//! gets the payload with the keys withheld.

use serde_json::{Map, Value as Json};

/// The fields of an event payload that hold licence keys.
const SECRET_FIELDS: &[&str] = &["license_key", "license_keys"];

/// What a masked key reads as.
pub const MASK: &str = "[licence key withheld]";

/// The payload without its licence keys; each object that had one names what
/// was withheld in `secrets_withheld`.
pub fn redact(payload: &Json) -> Json {
    match payload {
        Json::Object(o) => {
            let mut out = Map::new();
            let mut withheld = Vec::new();
            for (k, v) in o {
                if SECRET_FIELDS.contains(&k.as_str()) {
                    withheld.push(Json::String(k.clone()));
                } else {
                    out.insert(k.clone(), redact(v));
                }
            }
            if !withheld.is_empty() {
                out.insert("secrets_withheld".into(), Json::Array(withheld));
            }
            Json::Object(out)
        }
        Json::Array(a) => Json::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// Every licence key in a payload (the values of its secret fields, anywhere).
pub fn secret_values(payload: &Json) -> Vec<String> {
    let mut out = Vec::new();
    collect(payload, false, &mut out);
    out.sort();
    out.dedup();
    // Longest first, so a key that contains another is masked whole.
    out.sort_by_key(|k| std::cmp::Reverse(k.len()));
    out
}

fn collect(v: &Json, secret: bool, out: &mut Vec<String>) {
    match v {
        Json::Object(o) => {
            for (k, v) in o {
                collect(v, secret || SECRET_FIELDS.contains(&k.as_str()), out);
            }
        }
        Json::Array(a) => a.iter().for_each(|v| collect(v, secret, out)),
        Json::String(s) if secret => {
            // `license_key` joins the keys with ", ".
            for part in s.split(", ") {
                if !part.trim().is_empty() {
                    out.push(part.trim().to_string());
                }
            }
        }
        _ => {}
    }
}

/// `text` with every one of `secrets` masked.
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut t = text.to_string();
    for s in secrets {
        t = t.replace(s.as_str(), MASK);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_withheld_wherever_they_are() {
        let p = json!({"sku": "SW-1", "license_key": "AAAA-1, BBBB-2", "license_keys": ["AAAA-1", "BBBB-2"],
                       "lines": [{"sku": "SW-1", "license_keys": ["CCCC-3"]}]});
        let r = redact(&p);
        assert_eq!(
            r,
            json!({"sku": "SW-1", "secrets_withheld": ["license_key", "license_keys"],
                   "lines": [{"sku": "SW-1", "secrets_withheld": ["license_keys"]}]})
        );
        assert!(!r.to_string().contains("AAAA"));
        let keys = secret_values(&p);
        assert_eq!(keys.len(), 3);
        let text = "Your keys: AAAA-1, BBBB-2 and CCCC-3.";
        let masked = mask(text, &keys);
        assert_eq!(masked, format!("Your keys: {MASK}, {MASK} and {MASK}."));
        // Nothing secret, nothing changes.
        let plain = json!({"sku": "A", "name": "license_key"});
        assert_eq!(redact(&plain), plain);
        assert!(secret_values(&plain).is_empty());
    }
}
