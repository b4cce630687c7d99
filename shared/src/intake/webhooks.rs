//! Order intake: verify, de-duplicate, normalise and persist orders from every
//! source. The router (`http::intake`) checks the headers and calls the
//! function of the source.
//!
//! Exactly-once: a delivery id (Shopify event/webhook id, WooCommerce delivery
//! id, commercetools message id) is recorded in `webhook_receipts` in the same
//! transaction as its effect, and `(source, external_id)` is unique. Concurrent
//! deliveries serialise on `BEGIN IMMEDIATE`, so the second sees the first.

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::intake::sources::{commercetools, shopify, woocommerce};
use crate::kernel::db::Db;
use crate::kernel::error::{Error, Result};
use crate::kernel::signature;
use crate::kernel::time::ts;
use crate::orders::model::{NewOrder, Source};
use crate::params;

/// The sources' webhook secrets, from Spin variables.
#[derive(Clone, Default)]
pub struct Config {
    pub shopify_secret: String,
    pub woocommerce_secret: String,
    pub commercetools_secret: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::kernel::signature::redacted;
        f.debug_struct("Config")
            .field("shopify_secret", &redacted(&self.shopify_secret))
            .field("woocommerce_secret", &redacted(&self.woocommerce_secret))
            .field(
                "commercetools_secret",
                &redacted(&self.commercetools_secret),
            )
            .finish()
    }
}

/// Checks a base64 HMAC-SHA256 signature header (`header`, its value `sig`) over the body.
pub fn verify_hmac(
    body: &[u8],
    header: &str,
    sig: Option<&str>,
    secret: &str,
    platform: &str,
) -> Result<()> {
    if secret.is_empty() {
        return Err(Error::unauthorized(format!(
            "{platform} webhooks are not configured (no secret set)"
        )));
    }
    let Some(sig) = sig else {
        return Err(Error::unauthorized(format!(
            "the {header} signature header is missing"
        )));
    };
    if !signature::verify_base64(secret.as_bytes(), body, sig) {
        return Err(Error::unauthorized(format!(
            "the {header} signature does not match the body"
        )));
    }
    Ok(())
}

/// Records a delivery id with the id its order will most likely get; false when
/// the delivery was seen before (a redelivery). One statement: RETURNING yields
/// no row when the receipt already exists.
pub fn first_delivery(
    db: &dyn Db,
    source: Source,
    delivery_id: &str,
    topic: &str,
    order_id: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let r = db.execute(
        "INSERT INTO webhook_receipts (source, delivery_id, topic, received_at, order_id) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT DO NOTHING RETURNING 1 AS inserted",
        params![source.as_str(), delivery_id, topic, ts(now), order_id],
    )?;
    Ok(!r.is_empty())
}

/// The receipt [`first_delivery`] writes, as the row pending in a new order's
/// `intake` column (`orders::store::insert_pending`).
pub fn receipt_row(delivery_id: &str, topic: &str) -> serde_json::Value {
    serde_json::json!({"delivery_id": delivery_id, "topic": topic})
}

/// Whether a delivery id was recorded. (A receipt still pending with its
/// order is not looked at: that would read every pending order's rows on each
/// webhook. A redelivery of a pending order's delivery names the same order
/// and answers `already_received` from the order itself.)
pub fn seen(db: &dyn Db, source: Source, delivery_id: &str) -> Result<bool> {
    Ok(!db
        .execute(
            "SELECT 1 FROM webhook_receipts WHERE source = ? AND delivery_id = ?",
            params![source.as_str(), delivery_id],
        )?
        .is_empty())
}

/// Writes the pending receipts of the orders `p` names ([`receipt_row`]):
/// one statement, however many orders.
pub fn settle_pending(db: &dyn Db, p: &crate::orders::store::Pending) -> Result<()> {
    let (cond, v) = p.filter();
    db.execute(
        &format!(
            "INSERT INTO webhook_receipts (source, delivery_id, topic, received_at, order_id)
             SELECT o.source, json_extract(o.intake, '$.receipt.delivery_id'), json_extract(o.intake, '$.receipt.topic'),
                o.created_at, o.id
             FROM orders o WHERE {cond} AND json_extract(o.intake, '$.receipt.delivery_id') IS NOT NULL
             ON CONFLICT DO NOTHING"
        ),
        &[v],
    )?;
    Ok(())
}

pub fn mark_delivery(
    db: &dyn Db,
    source: Source,
    delivery_id: &str,
    order_id: Option<&str>,
) -> Result<()> {
    db.execute(
        "UPDATE webhook_receipts SET order_id = ? WHERE source = ? AND delivery_id = ?",
        params![order_id, source.as_str(), delivery_id],
    )?;
    Ok(())
}

/// Housekeeping: drops receipts older than `days` (sources stop retrying
/// long before). Returns the rows removed.
pub fn purge_receipts(db: &dyn Db, now: DateTime<Utc>, days: i64) -> Result<u64> {
    Ok(crate::kernel::db::Patient(db).exec(
        "DELETE FROM webhook_receipts WHERE received_at < ?",
        params![ts(now - chrono::Duration::days(days))],
    )?)
}

/// What a verified delivery asks for.
pub enum Delivery {
    /// Acknowledged with nothing to do; the answer says why.
    Ignored(Json),
    /// An order change, applied once per delivery id (`flows::intake::apply`).
    Apply {
        source: Source,
        delivery: Option<String>,
        topic: String,
        action: Action,
    },
}

/// A delivery without an id is known by a hash of its topic and body, so a
/// repeat of the same bytes is still recognised.
fn apply(
    source: Source,
    delivery: Option<&str>,
    topic: &str,
    body: &[u8],
    action: Action,
) -> Result<Delivery> {
    let delivery = match delivery.map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => d.to_string(),
        None => {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(topic.as_bytes());
            h.update([0u8]);
            h.update(body);
            format!("sha256:{}", signature::hex(&h.finalize()))
        }
    };
    Ok(Delivery::Apply {
        source,
        delivery: Some(delivery),
        topic: topic.to_string(),
        action,
    })
}

fn ignored(v: Json) -> Result<Delivery> {
    Ok(Delivery::Ignored(v))
}

/// What a source delivery asks for.
pub enum Action {
    Create(NewOrder),
    Update(NewOrder),
    Cancel {
        external_id: String,
        reason: String,
        order: Option<NewOrder>,
    },
}

// ---- Shopify ----

/// A verified Shopify delivery of `topic`.
pub fn shopify(
    topic: &str,
    delivery: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Delivery> {
    if !matches!(
        topic,
        "orders/create" | "orders/updated" | "orders/cancelled" | "orders/paid" | "orders/edited"
    ) {
        return ignored(json!({"result": "ignored", "topic": topic}));
    }
    let v = crate::kernel::json::parse_json(body)?;
    if topic == "orders/edited" {
        // The order_edit payload is not an order; the orders/updated that follows carries the result.
        return ignored(json!({"result": "ignored", "topic": topic}));
    }
    let order = shopify::map_order(&v, now)?;
    let action = match topic {
        "orders/create" => Action::Create(order),
        "orders/cancelled" => Action::Cancel {
            external_id: order.external_id.clone(),
            reason: format!(
                "cancelled in Shopify ({})",
                v.get("cancel_reason")
                    .and_then(Json::as_str)
                    .unwrap_or("no reason given")
            ),
            order: Some(order),
        },
        _ => Action::Update(order),
    };
    apply(Source::Shopify, delivery, topic, body, action)
}

// ---- WooCommerce ----

/// WooCommerce confirms a new webhook with a form-encoded `webhook_id=N` ping.
pub fn is_woo_ping(body: &[u8]) -> bool {
    let body = String::from_utf8_lossy(body);
    body.strip_prefix("webhook_id=")
        .map(|id| !id.is_empty() && id.trim().chars().all(|c| c.is_ascii_digit()))
        .unwrap_or(false)
}

/// A verified WooCommerce delivery of `topic`.
pub fn woocommerce(
    topic: &str,
    delivery: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Delivery> {
    let v = crate::kernel::json::parse_json(body)?;
    let action = match topic {
        "order.created" => Action::Create(woocommerce::map_order(&v, now)?),
        "order.updated" | "order.restored" => Action::Update(woocommerce::map_order(&v, now)?),
        "order.deleted" => {
            let id = match v.get("id") {
                Some(Json::Number(n)) => n.to_string(),
                Some(Json::String(s)) if !s.is_empty() => s.clone(),
                _ => {
                    return Err(Error::invalid(vec![crate::kernel::error::FieldError::new(
                        "/id",
                        "is required",
                    )]))
                }
            };
            Action::Cancel {
                external_id: id,
                reason: "deleted in WooCommerce".into(),
                order: None,
            }
        }
        _ => return ignored(json!({"result": "ignored", "topic": topic})),
    };
    apply(Source::Woocommerce, delivery, topic, body, action)
}

// ---- commercetools ----

/// Unwraps transports that carry a commercetools message: a Google Pub/Sub push
/// (`message.data`, base64) or an AWS EventBridge event (`detail`).
fn unwrap_envelope(v: Json) -> Result<Json> {
    use base64::Engine as _;
    if let Some(data) = v
        .get("message")
        .and_then(|m| m.get("data"))
        .and_then(Json::as_str)
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| Error::bad_request("message.data is not base64"))?;
        return crate::kernel::json::parse_json(&bytes);
    }
    if let Some(detail) = v
        .get("detail")
        .filter(|d| d.get("notificationType").is_some() || d.get("type").is_some())
    {
        return Ok(detail.clone());
    }
    Ok(v)
}

/// Checks commercetools' shared secret (`X-Waybill-Secret`, or a bearer token).
pub fn verify_commercetools(cfg: &Config, given: Option<String>) -> Result<()> {
    if cfg.commercetools_secret.is_empty() {
        return Err(Error::unauthorized(
            "commercetools delivery is not configured (no secret set)",
        ));
    }
    match given {
        Some(g)
            if signature::constant_time_eq(
                g.trim().as_bytes(),
                cfg.commercetools_secret.as_bytes(),
            ) => {}
        Some(_) => return Err(Error::unauthorized("the shared secret does not match")),
        None => {
            return Err(Error::unauthorized(
                "the X-Waybill-Secret header (or Authorization: Bearer) is missing",
            ))
        }
    }
    Ok(())
}

/// A verified commercetools message (direct, Pub/Sub or EventBridge).
pub fn commercetools(body: &[u8], now: DateTime<Utc>) -> Result<Delivery> {
    let v = unwrap_envelope(crate::kernel::json::parse_json(body)?)?;
    let msg = commercetools::message(&v)?;
    let action = match msg.kind.as_str() {
        "OrderCreated" | "OrderImported" => {
            let o = msg.order.ok_or_else(|| {
                Error::invalid(vec![crate::kernel::error::FieldError::new(
                    "/order",
                    "is required",
                )])
            })?;
            Action::Create(commercetools::map_order(&o, now)?)
        }
        _ => return ignored(json!({"result": "ignored", "type": msg.kind})),
    };
    apply(
        Source::Commercetools,
        Some(&msg.id),
        &msg.kind,
        body,
        action,
    )
}
