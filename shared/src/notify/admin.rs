//! The notifications admin and export API: the outbox cursor export, the
//! mailbox, deliveries and dead letters (with replay), webhook subscriptions
//! and e-mail templates.

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::kernel::db::{transaction, Db};
use crate::kernel::error::{Error, FieldError, Result};
use crate::kernel::time::ts;
use crate::kernel::url::Receivers;
use crate::notify::{envelope, withhold};
use crate::params;

fn bad(detail: impl Into<String>) -> Error {
    Error::bad_request(detail)
}

/// The cursor export: every outbox event once, in commit order; licence keys
/// only for a caller with the secrets scope (`secrets`).
pub fn export(db: &dyn Db, after: i64, limit: i64, secrets: bool) -> Result<Json> {
    let r = db.execute(
        "SELECT id, topic, payload, created_at FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
        params![after, limit],
    )?;
    let events: Vec<Json> = r
        .iter()
        .map(|e| {
            let payload: Json = serde_json::from_str(&e.str("payload")).unwrap_or(Json::Null);
            let payload = if secrets {
                payload
            } else {
                withhold::redact(&payload)
            };
            envelope(e.i64("id"), &e.str("topic"), &e.str("created_at"), &payload)
        })
        .collect();
    let next = r.iter().last().map(|e| e.i64("id")).unwrap_or(after);
    Ok(
        json!({"events": events, "next_after": format!("evt_{next}"), "has_more": events.len() as i64 == limit}),
    )
}

/// The embedded mailbox, newest first, optionally for one recipient. A message
/// rendered from an event with licence keys shows them only to a caller with
/// the secrets scope (`secrets`); others see them masked.
pub fn mailbox(db: &dyn Db, to: Option<String>, limit: i64, secrets: bool) -> Result<Json> {
    let r = db.execute(
        "SELECT m.*, o.payload AS event_payload FROM mailbox m
           LEFT JOIN deliveries d ON d.id = m.delivery_id
           LEFT JOIN outbox o ON o.id = d.outbox_id
          WHERE (?1 IS NULL OR m.to_address = ?1) ORDER BY m.id DESC LIMIT ?2",
        params![to, limit],
    )?;
    let msgs: Vec<Json> = r
        .iter()
        .map(|m| {
            let keys = if secrets {
                Vec::new()
            } else {
                let event: Json = m
                    .opt_str("event_payload")
                    .and_then(|p| serde_json::from_str(&p).ok())
                    .unwrap_or(Json::Null);
                withhold::secret_values(&event)
            };
            let shown = |field: &str| withhold::mask(&m.str(field), &keys);
            json!({"id": m.i64("id"), "delivery_id": m.i64("delivery_id"), "to": m.str("to_address"), "from": m.str("from_address"),
                "subject": shown("subject"), "text": shown("text_body"), "html": shown("html_body"), "delivered_at": m.str("delivered_at")})
        })
        .collect();
    Ok(json!({"messages": msgs}))
}

fn delivery_json(d: &crate::kernel::db::Row<'_>) -> Json {
    json!({"id": d.i64("id"), "outbox_id": d.i64("outbox_id"), "kind": d.str("kind"), "target": d.str("target"),
        "state": d.str("state"), "attempts": d.i64("attempts"), "next_attempt_at": d.str("next_attempt_at"),
        "last_error": d.opt_str("last_error"), "created_at": d.str("created_at"), "delivered_at": d.opt_str("delivered_at"),
        "dead_at": d.opt_str("dead_at")})
}

/// Deliveries that gave up.
pub fn dead_letters(db: &dyn Db, limit: i64) -> Result<Json> {
    let r = db.execute(
        "SELECT * FROM deliveries WHERE state = 'dead' ORDER BY id LIMIT ?",
        params![limit],
    )?;
    Ok(json!({"dead_letters": r.iter().map(|d| delivery_json(&d)).collect::<Vec<_>>()}))
}

/// Deliveries, optionally in one state.
pub fn deliveries(db: &dyn Db, state: Option<String>, limit: i64) -> Result<Json> {
    if let Some(s) = &state {
        if !["pending", "delivered", "dead"].contains(&s.as_str()) {
            return Err(bad("'state' must be pending, delivered or dead"));
        }
    }
    let r = db.execute(
        "SELECT * FROM deliveries WHERE (? IS NULL OR state = ?) ORDER BY id LIMIT ?",
        params![state.clone(), state, limit],
    )?;
    Ok(json!({"deliveries": r.iter().map(|d| delivery_json(&d)).collect::<Vec<_>>()}))
}

/// Puts a dead letter back in the queue.
pub fn replay(db: &dyn Db, id: &str, now: DateTime<Utc>) -> Result<Json> {
    let id: i64 = id
        .parse()
        .map_err(|_| Error::not_found(format!("no dead letter '{id}'")))?;
    let n = transaction(db, |db| {
        Ok::<_, Error>(db.exec(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, lease_until = NULL, dead_at = NULL
             WHERE id = ? AND state = 'dead'",
            params![ts(now), id],
        )?)
    })?;
    if n == 0 {
        return Err(Error::not_found(format!("no dead letter {id}")));
    }
    Ok(json!({"id": id, "state": "pending"}))
}

pub fn list_subscriptions(db: &dyn Db) -> Result<Json> {
    let r = db.execute(
        "SELECT id, url, event_types, active, include_secrets, created_at FROM subscriptions ORDER BY id",
        &[],
    )?;
    let subs: Vec<Json> = r
        .iter()
        .map(|s| json!({"id": s.i64("id"), "url": s.str("url"), "events": serde_json::from_str::<Json>(&s.str("event_types")).unwrap_or(Json::Null),
            "active": s.i64("active") == 1, "include_secrets": s.i64("include_secrets") == 1, "created_at": s.str("created_at")}))
        .collect();
    Ok(json!({"subscriptions": subs}))
}

/// The event types a subscription may name.
pub const EVENT_TYPES: &[&str] = &[
    "*",
    "order.received",
    "order.updated",
    "order.cancelled",
    "order.released",
    "payment.captured",
    "invoice.created",
    "shipment.created",
    "shipment.delivered",
    "report.daily",
];

/// Creates a webhook subscription; answers its id and, once, its secret.
/// `POST /api/notifications/subscriptions`: the URL must be a receiver the
/// operator allows (`outbound_receivers`); see [`crate::kernel::url`].
/// `include_secrets: true` (licence keys in the events) needs a caller with
/// the secrets scope (`may_see_secrets`), else 403.
pub fn create_subscription(
    db: &dyn Db,
    v: &Json,
    receivers: &Receivers,
    may_see_secrets: bool,
    now: DateTime<Utc>,
) -> Result<(i64, Json)> {
    let mut errs = Vec::new();
    let include_secrets = match v.get("include_secrets") {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(_) => {
            errs.push(FieldError::new("/include_secrets", "must be true or false"));
            false
        }
    };
    if include_secrets && !may_see_secrets {
        return Err(Error::forbidden(
            "include_secrets needs a token with the secrets scope",
        ));
    }
    let url = v["url"].as_str().unwrap_or_default().trim().to_string();
    if let Err(e) = receivers.check(&url) {
        errs.push(FieldError::new("/url", e));
    }
    let events: Vec<String> = match v.get("events") {
        Some(Json::Array(a)) if !a.is_empty() => a
            .iter()
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect(),
        _ => {
            errs.push(FieldError::new(
                "/events",
                "must be a non-empty array of event types",
            ));
            Vec::new()
        }
    };
    for (i, e) in events.iter().enumerate() {
        if !EVENT_TYPES.contains(&e.as_str()) {
            errs.push(FieldError::new(
                format!("/events/{i}"),
                format!("'{e}' is not one of {}", EVENT_TYPES.join(", ")),
            ));
        }
    }
    let secret = match v.get("secret") {
        Some(Json::String(s)) if s.len() >= 16 => s.clone(),
        Some(Json::String(_)) => {
            errs.push(FieldError::new("/secret", "must be at least 16 characters"));
            String::new()
        }
        _ => format!("whsec_{}", uuid::Uuid::new_v4().simple()),
    };
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let r = transaction(db, |db| {
        Ok::<_, Error>(db.execute(
            "INSERT INTO subscriptions (url, event_types, secret, active, include_secrets, created_at) VALUES (?, ?, ?, 1, ?, ?) RETURNING id",
            params![url.clone(), serde_json::to_string(&events).unwrap_or_default(), secret.clone(), include_secrets as i64, ts(now)],
        )?)
    })?;
    let id = r.first().map(|r| r.i64("id")).unwrap_or(0);
    // The secret is shown once, at creation.
    Ok((
        id,
        json!({"id": id, "url": url, "events": events, "secret": secret, "active": true, "include_secrets": include_secrets}),
    ))
}

/// Deactivates a subscription.
pub fn delete_subscription(db: &dyn Db, id: &str) -> Result<Json> {
    let id: i64 = id
        .parse()
        .map_err(|_| Error::not_found(format!("no subscription '{id}'")))?;
    let n = transaction(db, |db| {
        Ok::<_, Error>(db.exec(
            "UPDATE subscriptions SET active = 0 WHERE id = ? AND active = 1",
            params![id],
        )?)
    })?;
    if n == 0 {
        return Err(Error::not_found(format!("no active subscription {id}")));
    }
    Ok(json!({"id": id, "active": false}))
}

pub fn list_templates(db: &dyn Db) -> Result<Json> {
    let r = db.execute("SELECT name, topic, recipient, subject, text_body, html_body, active, updated_at FROM email_templates ORDER BY name", &[])?;
    let t: Vec<Json> = r
        .iter()
        .map(|t| json!({"name": t.str("name"), "topic": t.str("topic"), "recipient": t.str("recipient"), "subject": t.str("subject"),
            "text": t.str("text_body"), "html": t.str("html_body"), "active": t.i64("active") == 1, "updated_at": t.str("updated_at")}))
        .collect();
    Ok(json!({"templates": t}))
}

/// Replaces a template's subject and bodies; answers every template.
pub fn put_template(db: &dyn Db, name: &str, v: &Json, now: DateTime<Utc>) -> Result<Json> {
    let mut errs = Vec::new();
    let field = |k: &str, errs: &mut Vec<FieldError>| match v.get(k) {
        Some(Json::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            errs.push(FieldError::new(
                format!("/{k}"),
                "is required (a non-empty string)",
            ));
            String::new()
        }
    };
    let (subject, text, html) = (
        field("subject", &mut errs),
        field("text", &mut errs),
        field("html", &mut errs),
    );
    let active = v.get("active").and_then(Json::as_bool).unwrap_or(true);
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let n = transaction(db, |db| {
        Ok::<_, Error>(db.exec(
            "UPDATE email_templates SET subject = ?, text_body = ?, html_body = ?, active = ?, updated_at = ? WHERE name = ?",
            params![subject, text, html, active, ts(now), name],
        )?)
    })?;
    if n == 0 {
        return Err(Error::not_found(format!("no template '{name}'")));
    }
    list_templates(db)
}

/// Housekeeping: drops up to `limit` each of mailbox messages delivered before
/// `mailbox_before`, delivered deliveries before `delivered_before` and dead
/// letters before `dead_before` (a message goes with its delivery). Pending
/// deliveries are never dropped. Returns the rows removed.
pub fn purge(
    db: &dyn Db,
    mailbox_before: DateTime<Utc>,
    delivered_before: DateTime<Utc>,
    dead_before: DateTime<Utc>,
    limit: i64,
) -> Result<u64> {
    let p = crate::kernel::db::Patient(db);
    let mut n = p.exec(
        "DELETE FROM mailbox WHERE id IN (SELECT id FROM mailbox WHERE delivered_at < ? ORDER BY id LIMIT ?)",
        params![ts(mailbox_before), limit],
    )?;
    n += p.exec(
        "DELETE FROM deliveries WHERE id IN (
           SELECT d.id FROM deliveries d
            WHERE ((d.state = 'delivered' AND d.delivered_at < ?) OR (d.state = 'dead' AND d.dead_at < ?))
              AND NOT EXISTS (SELECT 1 FROM mailbox m WHERE m.delivery_id = d.id)
            ORDER BY d.id LIMIT ?)",
        params![ts(delivered_before), ts(dead_before), limit],
    )?;
    Ok(n)
}
