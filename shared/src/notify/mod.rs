//! Reliable notifications: the outbox drained into e-mails and signed outbound

//! webhooks, at least once, with retries, dead letters and replay.
//!
//! 1. Expand: each pending outbox event becomes deliveries (one e-mail per
//!    template for its topic, one webhook per matching subscription), written
//!    with `UNIQUE (outbox_id, kind, target)` in the transaction that marks the
//!    event expanded, so concurrent sweeps cannot expand twice.
//! 2. Claim: one `UPDATE ... RETURNING` takes due deliveries under a lease; the
//!    statement runs under SQLite's write lock, so no two sweeps get one row.
//! 3. Deliver outside any transaction, then record the outcome: delivered,
//!    retry later (exponential backoff with jitter), or dead after the maximum
//!    number of attempts. Dead letters can be listed and replayed.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value as Json};

use crate::kernel::db::{transaction, Db, Patient};
use crate::kernel::error::{Error, Result};
use crate::kernel::signature;
use crate::kernel::time::ts;
use crate::params;

pub mod admin;
pub mod withhold;
pub use admin::EVENT_TYPES;

/// Where e-mails go.
#[derive(Clone, PartialEq, Eq)]
pub enum EmailProvider {
    /// The embedded default: the rendered message is stored in `mailbox`.
    Mailbox,
    /// Postmark's HTTP API (`POST {url}/email`, `X-Postmark-Server-Token`).
    Postmark { url: String, token: String },
}

impl std::fmt::Debug for EmailProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmailProvider::Mailbox => f.write_str("Mailbox"),
            EmailProvider::Postmark { url, token } => f
                .debug_struct("Postmark")
                .field("url", url)
                .field("token", &signature::redacted(token))
                .finish(),
        }
    }
}

#[derive(Clone)]
pub struct Config {
    pub provider: EmailProvider,
    pub from: String,
    pub merchant_email: String,
    pub management_emails: Vec<String>,
    pub max_attempts: i64,
    /// First retry delay; doubles per attempt (capped at one hour), ±25% jitter.
    pub retry_base: Duration,
    pub lease: Duration,
    /// Fulfillment centers' signing secrets by Spin variable name (a facility
    /// names its variable in `secret_variable`).
    pub fc_secrets: std::collections::BTreeMap<String, String>,
    /// The hosts the operator allows webhooks and center requests to reach
    /// (`outbound_receivers`), checked again before every call.
    pub receivers: crate::kernel::url::Receivers,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("provider", &self.provider)
            .field("from", &self.from)
            .field("merchant_email", &self.merchant_email)
            .field("management_emails", &self.management_emails)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base", &self.retry_base)
            .field("lease", &self.lease)
            // The names of the secret variables, never their values.
            .field("fc_secrets", &self.fc_secrets.keys().collect::<Vec<_>>())
            .field("receivers", &self.receivers)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            provider: EmailProvider::Mailbox,
            from: "orders@waybill.local".into(),
            merchant_email: String::new(),
            management_emails: Vec::new(),
            max_attempts: 8,
            retry_base: Duration::seconds(10),
            lease: Duration::seconds(120),
            fc_secrets: Default::default(),
            receivers: Default::default(),
        }
    }
}

/// Outbound HTTP as the host provides it (Spin's `wasi:http` or a test fake).
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// POSTs `body`; Ok((status, response body)) when an answer came back.
    async fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> std::result::Result<(u16, Vec<u8>), String>;
}

/// What the outbox needs from fulfillment for requests to external centers:
/// the request document of a released fulfillment order, and where the
/// center's answer is booked. Implemented by `flows::center_requests`, so the
/// outbox never names the fulfillment context.
pub trait Centers {
    /// The request document sent to the center for a `fulfillment_order.released` event.
    fn request(&self, db: &dyn Db, released: &Json) -> Result<Json>;
    /// The center answered a fulfillment request (accepted, submitted or rejected).
    fn request_answered(
        &self,
        db: &dyn Db,
        fo_id: &str,
        answer: &Json,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// The center answered a cancellation request.
    fn cancellation_answered(
        &self,
        db: &dyn Db,
        fo_id: &str,
        answer: &Json,
        now: DateTime<Utc>,
    ) -> Result<()>;
}

// ---- templates ----

/// Renders `{{path.to.value}}` and `{{#list}}...{{/list}}` sections against `data`.
/// `html` escapes substituted values.
pub fn render(template: &str, data: &Json, html: bool) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let tag = after[..end].trim();
        rest = &after[end + 2..];
        if let Some(name) = tag.strip_prefix('#') {
            let close = format!("{{{{/{name}}}}}");
            let Some(close_at) = rest.find(&close) else {
                continue;
            };
            let inner = &rest[..close_at];
            rest = &rest[close_at + close.len()..];
            match lookup(data, name) {
                Some(Json::Array(items)) => {
                    for item in items {
                        out.push_str(&render(inner, item, html));
                    }
                }
                Some(v) if truthy(v) => out.push_str(&render(inner, data, html)),
                _ => {}
            }
        } else {
            let v = match lookup(data, tag) {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            out.push_str(&if html { escape_html(&v) } else { v });
        }
    }
    out.push_str(rest);
    out
}

fn truthy(v: &Json) -> bool {
    !matches!(v, Json::Null | Json::Bool(false)) && v.as_str() != Some("")
}

fn lookup<'a>(data: &'a Json, path: &str) -> Option<&'a Json> {
    path.split('.').try_fold(data, |v, k| v.get(k))
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

// ---- expansion ----

struct Template {
    name: String,
    recipient: String,
    subject: String,
    text: String,
    html: String,
}

fn templates_for(db: &dyn Db, topic: &str) -> Result<Vec<Template>> {
    let r = db.execute(
        "SELECT name, recipient, subject, text_body, html_body FROM email_templates WHERE topic = ? AND active = 1 ORDER BY name",
        params![topic],
    )?;
    Ok(r.iter()
        .map(|t| Template {
            name: t.str("name"),
            recipient: t.str("recipient"),
            subject: t.str("subject"),
            text: t.str("text_body"),
            html: t.str("html_body"),
        })
        .collect())
}

/// The addresses a template goes to: only single plain addresses (an order
/// stored before the rule, or a setting, with a list in it sends to nobody).
fn recipients(cfg: &Config, recipient: &str, payload: &Json) -> Vec<String> {
    let all: Vec<String> = match recipient {
        "customer" => payload["email"]
            .as_str()
            .map(str::to_string)
            .into_iter()
            .filter(|e| !e.is_empty())
            .collect(),
        "merchant" => Some(cfg.merchant_email.clone())
            .into_iter()
            .filter(|e| !e.is_empty())
            .collect(),
        "management" => cfg.management_emails.clone(),
        _ => Vec::new(),
    };
    all.into_iter()
        .filter(|a| {
            let ok = crate::kernel::email::is_single_address(a);
            if !ok {
                eprintln!("waybill: not sending {recipient} e-mail to {a:?}: not one address");
            }
            ok
        })
        .collect()
}

/// The envelope outbound webhooks and the export carry.
pub fn envelope(id: i64, topic: &str, created_at: &str, payload: &Json) -> Json {
    json!({"id": format!("evt_{id}"), "type": topic, "occurred_at": created_at, "data": payload})
}

/// Turns up to `limit` pending outbox events into deliveries. Returns how many events were expanded.
pub fn expand(
    db: &dyn Db,
    cfg: &Config,
    centers: &dyn Centers,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<usize> {
    let pending = Patient(db).execute(
        "SELECT id, topic, payload, created_at FROM outbox WHERE state = 'pending' ORDER BY id LIMIT ?",
        params![limit],
    )?;
    if pending.is_empty() {
        return Ok(0);
    }
    let subs = Patient(db).execute(
        "SELECT id, url, event_types, include_secrets FROM subscriptions WHERE active = 1 ORDER BY id",
        &[],
    )?;
    // Render outside the write lock; write every event's deliveries in one transaction.
    let mut planned: Vec<(i64, Vec<(String, String, Json)>)> = Vec::new();
    for ev in pending.iter() {
        let (id, topic) = (ev.i64("id"), ev.str("topic"));
        let payload: Json = serde_json::from_str(&ev.str("payload")).unwrap_or(Json::Null);
        let mut rows: Vec<(String, String, Json)> = Vec::new();
        for t in templates_for(&Patient(db), &topic)? {
            for to in recipients(cfg, &t.recipient, &payload) {
                rows.push((
                    "email".into(),
                    format!("{}:{to}", t.name),
                    json!({"template": t.name, "to": to, "from": cfg.from,
                           "subject": render(&t.subject, &payload, false),
                           "text": render(&t.text, &payload, false),
                           "html": render(&t.html, &payload, true)}),
                ));
            }
        }
        if topic == "fulfillment_order.cancellation_requested" {
            // The center holding released units is asked to cancel them.
            let f = Patient(db).execute(
                "SELECT endpoints, secret_variable FROM facilities WHERE id = ?",
                params![payload["facility"].as_str().unwrap_or_default()],
            )?;
            if let Some(f) = f.first() {
                let endpoints: Json =
                    serde_json::from_str(&f.str("endpoints")).unwrap_or(Json::Null);
                let url = endpoints["cancel_url"]
                    .as_str()
                    .or(endpoints["orders_url"].as_str())
                    .filter(|u| !u.is_empty());
                if let Some(url) = url {
                    rows.push((
                        "fc".into(),
                        format!("cancel:{}", payload["fulfillment_order_id"].as_str().unwrap_or_default()),
                        json!({"url": url, "facility": payload["facility"], "secret_variable": f.opt_str("secret_variable"),
                               "fulfillment_order_id": payload["fulfillment_order_id"], "cancellation": true,
                               "request": {"type": "cancellation_request", "order_number": payload["number"],
                                           "fulfillment_order": payload["fulfillment_order"], "reason": payload["reason"]}}),
                    ));
                }
            }
        }
        if topic == "fulfillment_order.released" {
            // An external fulfillment center receives the release itself.
            let f = Patient(db).execute(
                "SELECT type, endpoints, secret_variable FROM facilities WHERE id = ?",
                params![payload["facility"].as_str().unwrap_or_default()],
            )?;
            if let Some(f) = f.first() {
                let endpoints: Json =
                    serde_json::from_str(&f.str("endpoints")).unwrap_or(Json::Null);
                if let Some(url) = endpoints["orders_url"].as_str().filter(|u| !u.is_empty()) {
                    if f.str("type") == "fulfillment_center" {
                        rows.push((
                            "fc".into(),
                            payload["fulfillment_order_id"].as_str().unwrap_or_default().to_string(),
                            json!({"url": url, "facility": payload["facility"], "secret_variable": f.opt_str("secret_variable"),
                                   "fulfillment_order_id": payload["fulfillment_order_id"],
                                   "request": centers.request(&Patient(db), &payload)?}),
                        ));
                    }
                }
            }
        }
        let env = envelope(id, &topic, &ev.str("created_at"), &payload);
        let withheld = envelope(
            id,
            &topic,
            &ev.str("created_at"),
            &withhold::redact(&payload),
        );
        for s in subs.iter() {
            let types: Vec<String> =
                serde_json::from_str(&s.str("event_types")).unwrap_or_default();
            if types.iter().any(|t| t == "*" || *t == topic) {
                // Licence keys only to a subscription made to receive them.
                let event = if s.i64("include_secrets") == 1 {
                    &env
                } else {
                    &withheld
                };
                rows.push((
                    "webhook".into(),
                    s.i64("id").to_string(),
                    json!({"url": s.str("url"), "event": event}),
                ));
            }
        }
        planned.push((id, rows));
    }
    transaction(db, |db| {
        let mut expanded = 0;
        for (id, rows) in &planned {
            // Another sweep may have expanded it meanwhile; only the first marks it.
            if !crate::orders::store::mark_expanded(db, *id)? {
                continue;
            }
            expanded += 1;
            for (kind, target, body) in rows {
                db.execute(
                    "INSERT INTO deliveries (outbox_id, kind, target, payload, created_at, next_attempt_at)
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (outbox_id, kind, target) DO NOTHING",
                    params![*id, kind.as_str(), target.as_str(), body.to_string(), ts(now), ts(now)],
                )?;
            }
        }
        Ok::<_, Error>(expanded)
    })
}

// ---- claiming and delivering ----

#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    pub target: String,
    pub payload: Json,
    pub attempts: i64,
}

/// Takes up to `limit` due deliveries under a lease from `now`, atomically. A
/// center's cancellation request waits while the release it cancels is still
/// pending, so the center never hears of a cancellation before the release.
pub fn claim(
    db: &dyn Db,
    owner: &str,
    now: DateTime<Utc>,
    lease: Duration,
    limit: i64,
    only: Option<i64>,
) -> Result<Vec<Claimed>> {
    let r = Patient(db).execute(
        "UPDATE deliveries SET lease_owner = ?, lease_until = ?, attempts = attempts + 1
         WHERE id IN (SELECT id FROM deliveries
                      WHERE state = 'pending' AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)
                        AND (? IS NULL OR id = ?)
                        AND NOT (kind = 'fc' AND target LIKE 'cancel:%' AND EXISTS (
                              SELECT 1 FROM deliveries r WHERE r.kind = 'fc' AND r.state = 'pending'
                                 AND r.target = substr(deliveries.target, 8)))
                      ORDER BY id LIMIT ?)
         RETURNING id, kind, target, payload, attempts",
        params![owner, ts(now + lease), ts(now), ts(now), only, only, limit],
    )?;
    Ok(r.iter()
        .map(|d| Claimed {
            id: d.i64("id"),
            kind: d.str("kind"),
            target: d.str("target"),
            payload: serde_json::from_str(&d.str("payload")).unwrap_or(Json::Null),
            attempts: d.i64("attempts"),
        })
        .collect())
}

/// The delay before attempt `attempts + 1`: base x 2^(attempts-1), at most an hour, ±25%.
pub fn backoff(base: Duration, attempts: i64, jitter_seed: u64) -> Duration {
    let exp = (attempts - 1).clamp(0, 20) as u32;
    let ms = (base.num_milliseconds().max(0) as u64)
        .saturating_mul(1u64 << exp)
        .min(3_600_000);
    let spread = ms / 4;
    let jitter = if spread == 0 {
        0
    } else {
        jitter_seed % (2 * spread + 1)
    };
    Duration::milliseconds((ms - spread + jitter) as i64)
}

enum Outcome {
    Delivered,
    /// A fulfillment center took the request; its answer (`status`: submitted,
    /// accepted or rejected).
    FcAnswered(Json),
    /// A fulfillment center refused the request for good (4xx).
    FcRejected(String),
    Retry(String),
    /// A permanent refusal (e.g. the e-mail API rejected the address): dead at once.
    Dead(String),
}

async fn deliver<T: Transport>(
    db: &dyn Db,
    cfg: &Config,
    t: &T,
    d: &Claimed,
    now: DateTime<Utc>,
) -> Result<Outcome> {
    match d.kind.as_str() {
        "email" => send_email(cfg, t, d).await,
        "webhook" => send_webhook(db, cfg, t, d, now).await,
        "fc" => match cfg
            .receivers
            .check(d.payload["url"].as_str().unwrap_or_default())
        {
            Ok(_) => send_to_center(cfg, t, d, now).await,
            Err(e) => Ok(Outcome::Dead(format!("refused receiver: {e}"))),
        },
        other => Ok(Outcome::Dead(format!("unknown delivery kind '{other}'"))),
    }
}

/// An e-mail through the configured provider (the mailbox stores it in `record`).
async fn send_email<T: Transport>(cfg: &Config, t: &T, d: &Claimed) -> Result<Outcome> {
    match &cfg.provider {
        // Stored in the mailbox by `record`, in the transaction that marks it delivered.
        EmailProvider::Mailbox => Ok(Outcome::Delivered),
        EmailProvider::Postmark { url, token } => {
            if let Err(e) = crate::kernel::url::configured_target(url, &cfg.receivers) {
                // The operator's setting, not the message, is wrong: keep it.
                return Ok(Outcome::Retry(format!("email_api_url refused: {e}")));
            }
            let body = json!({
                "From": d.payload["from"], "To": d.payload["to"], "Subject": d.payload["subject"],
                "TextBody": d.payload["text"], "HtmlBody": d.payload["html"], "MessageStream": "outbound",
                "Metadata": {"delivery": d.id.to_string()},
            });
            let headers = vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("accept".to_string(), "application/json".to_string()),
                ("x-postmark-server-token".to_string(), token.clone()),
            ];
            match t
                .post(
                    &format!("{}/email", url.trim_end_matches('/')),
                    &headers,
                    body.to_string().into_bytes(),
                )
                .await
            {
                Ok((200..=299, _)) => Ok(Outcome::Delivered),
                // Postmark answers 422 with an ErrorCode for messages it will never accept.
                Ok((422, b)) => Ok(Outcome::Dead(format!(
                    "e-mail API refused the message: {}",
                    String::from_utf8_lossy(&b)
                ))),
                Ok((s, b)) => Ok(Outcome::Retry(format!(
                    "e-mail API answered {s}: {}",
                    String::from_utf8_lossy(&b)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ))),
                Err(e) => Ok(Outcome::Retry(format!("e-mail API unreachable: {e}"))),
            }
        }
    }
}

/// A signed outbound webhook to an active subscription.
async fn send_webhook<T: Transport>(
    db: &dyn Db,
    cfg: &Config,
    t: &T,
    d: &Claimed,
    now: DateTime<Utc>,
) -> Result<Outcome> {
    let sub = Patient(db).execute(
        "SELECT url, secret, active FROM subscriptions WHERE id = ?",
        params![d.target.clone()],
    )?;
    let Some(s) = sub.first() else {
        return Ok(Outcome::Dead("the subscription was deleted".into()));
    };
    if s.i64("active") == 0 {
        return Ok(Outcome::Dead("the subscription is inactive".into()));
    }
    if let Err(e) = cfg.receivers.check(&s.str("url")) {
        return Ok(Outcome::Dead(format!("refused receiver: {e}")));
    }
    let body = d.payload["event"].to_string().into_bytes();
    let header = signature::sign_request(
        s.str("secret").as_bytes(),
        now.timestamp(),
        "POST",
        &url_path(&s.str("url")),
        &body,
    );
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("waybill-signature".to_string(), header),
        (
            "waybill-event-id".to_string(),
            d.payload["event"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        (
            "waybill-event-type".to_string(),
            d.payload["event"]["type"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        (
            "waybill-delivery-attempt".to_string(),
            d.attempts.to_string(),
        ),
    ];
    match t.post(&s.str("url"), &headers, body).await {
        Ok((200..=299, _)) => Ok(Outcome::Delivered),
        Ok((s, _)) => Ok(Outcome::Retry(format!("receiver answered {s}"))),
        Err(e) => Ok(Outcome::Retry(format!("receiver unreachable: {e}"))),
    }
}

/// Why a center refused a request, as the timeline and the deliveries show it:
/// the status and the protocol's `reason` (or a problem's `detail`), never the
/// raw body (an endpoint's body must not reach a read-scope view; it goes to
/// the log).
fn rejection(status: u16, body: &[u8]) -> String {
    let v: Json = serde_json::from_slice(body).unwrap_or(Json::Null);
    let why = ["reason", "detail", "title"]
        .iter()
        .find_map(|k| v[*k].as_str())
        .map(|r| {
            r.chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
        });
    if why.is_none() && !body.is_empty() {
        eprintln!(
            "notify: the center answered {status} with a body that is not the protocol's: {}",
            String::from_utf8_lossy(body)
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    match why {
        Some(r) => format!("the center answered {status}: {r}"),
        None => format!("the center answered {status}"),
    }
}

/// The key a center de-duplicates a request by: `fo-<id>` for the release,
/// `fo-<id>-cancel-<delivery>` for each cancellation request (a center that
/// keeps keys must not answer a cancellation with the release's stored answer;
/// a retry of the same request keeps its key).
fn center_idempotency_key(d: &Claimed) -> String {
    let fo = d.payload["fulfillment_order_id"]
        .as_str()
        .unwrap_or_default();
    if d.payload["cancellation"] == true {
        format!("fo-{fo}-cancel-{}", d.id)
    } else {
        format!("fo-{fo}")
    }
}

/// The path a signature binds for a URL Waybill posts to (`/` when unparsable:
/// the call is refused before it is sent anyway).
fn url_path(u: &str) -> String {
    url::Url::parse(u)
        .map(|x| x.path().to_string())
        .unwrap_or_else(|_| "/".into())
}

/// A signed release or cancellation request to a fulfillment center.
async fn send_to_center<T: Transport>(
    cfg: &Config,
    t: &T,
    d: &Claimed,
    now: DateTime<Utc>,
) -> Result<Outcome> {
    let Some(secret) = d.payload["secret_variable"]
        .as_str()
        .and_then(|v| cfg.fc_secrets.get(v))
        .filter(|s| !s.is_empty())
    else {
        return Ok(Outcome::Retry(format!(
            "no signing secret for facility {} (set the Spin variable its secret_variable names)",
            d.payload["facility"]
        )));
    };
    let body = d.payload["request"].to_string().into_bytes();
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("accept".to_string(), "application/json".to_string()),
        (
            "waybill-signature".to_string(),
            signature::sign_request(
                secret.as_bytes(),
                now.timestamp(),
                "POST",
                &url_path(d.payload["url"].as_str().unwrap_or_default()),
                &body,
            ),
        ),
        (
            "waybill-delivery-attempt".to_string(),
            d.attempts.to_string(),
        ),
        ("idempotency-key".to_string(), center_idempotency_key(d)),
    ];
    match t
        .post(
            d.payload["url"].as_str().unwrap_or_default(),
            &headers,
            body,
        )
        .await
    {
        Ok((200..=299, b)) => Ok(Outcome::FcAnswered(
            serde_json::from_slice(&b).unwrap_or(Json::Null),
        )),
        Ok((s @ (400 | 404 | 410 | 422), b)) => Ok(Outcome::FcRejected(rejection(s, &b))),
        Ok((s, _)) => Ok(Outcome::Retry(format!("the center answered {s}"))),
        Err(e) => Ok(Outcome::Retry(format!("the center is unreachable: {e}"))),
    }
}

/// Writes a batch of outcomes in one transaction (one write lock for the batch).
fn record(
    db: &dyn Db,
    cfg: &Config,
    centers: &dyn Centers,
    done: &[(Claimed, Outcome)],
    owner: &str,
    now: DateTime<Utc>,
    rep: &mut SweepReport,
) -> Result<()> {
    transaction(db, |db| {
        for (d, outcome) in done {
            let fo_id = d.payload["fulfillment_order_id"]
                .as_str()
                .unwrap_or_default();
            match outcome {
                Outcome::FcAnswered(answer) => {
                    let updated = !db
                        .execute(
                            "UPDATE deliveries SET state = 'delivered', delivered_at = ?, lease_until = NULL, last_error = NULL
                             WHERE id = ? AND lease_owner = ? RETURNING id",
                            params![ts(now), d.id, owner],
                        )?
                        .is_empty();
                    if updated && d.payload["cancellation"] == true {
                        centers.cancellation_answered(db, fo_id, answer, now)?;
                    } else if updated {
                        centers.request_answered(db, fo_id, answer, now)?;
                    }
                    rep.delivered += 1;
                }
                Outcome::FcRejected(err) => {
                    db.execute(
                        "UPDATE deliveries SET state = 'dead', lease_until = NULL, last_error = ?, dead_at = ? WHERE id = ? AND lease_owner = ?",
                        params![err.as_str(), ts(now), d.id, owner],
                    )?;
                    if d.payload["cancellation"] == true {
                        centers.cancellation_answered(
                            db,
                            fo_id,
                            &json!({"status": "cancellation_rejected", "reason": err}),
                            now,
                        )?;
                    } else {
                        centers.request_answered(
                            db,
                            fo_id,
                            &json!({"status": "rejected", "reason": err}),
                            now,
                        )?;
                    }
                    rep.dead += 1;
                }
                Outcome::Delivered => {
                    let updated = !db
                        .execute(
                            "UPDATE deliveries SET state = 'delivered', delivered_at = ?, lease_until = NULL, last_error = NULL
                             WHERE id = ? AND lease_owner = ? RETURNING id",
                            params![ts(now), d.id, owner],
                        )?
                        .is_empty();
                    if updated && d.kind == "email" && cfg.provider == EmailProvider::Mailbox {
                        db.execute(
                            "INSERT INTO mailbox (delivery_id, to_address, from_address, subject, text_body, html_body, delivered_at)
                             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id) DO NOTHING",
                            params![d.id, d.payload["to"].as_str().unwrap_or_default(), d.payload["from"].as_str().unwrap_or_default(),
                                d.payload["subject"].as_str().unwrap_or_default(), d.payload["text"].as_str().unwrap_or_default(),
                                d.payload["html"].as_str().unwrap_or_default(), ts(now)],
                        )?;
                    }
                    rep.delivered += 1;
                }
                Outcome::Retry(err) if d.attempts < cfg.max_attempts => {
                    let seed = (now.timestamp_subsec_nanos() as u64)
                        ^ (d.id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let next = now + backoff(cfg.retry_base, d.attempts, seed);
                    db.execute(
                        "UPDATE deliveries SET state = 'pending', next_attempt_at = ?, lease_until = NULL, last_error = ? WHERE id = ? AND lease_owner = ?",
                        params![ts(next), err.as_str(), d.id, owner],
                    )?;
                    rep.retried += 1;
                }
                Outcome::Retry(err) | Outcome::Dead(err) => {
                    db.execute(
                        "UPDATE deliveries SET state = 'dead', lease_until = NULL, last_error = ?, dead_at = ? WHERE id = ? AND lease_owner = ?",
                        params![err.as_str(), ts(now), d.id, owner],
                    )?;
                    rep.dead += 1;
                }
            }
        }
        Ok::<_, Error>(())
    })
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    pub expanded: usize,
    pub delivered: usize,
    pub retried: usize,
    pub dead: usize,
}

/// Expands and delivers until nothing is due or `budget` runs out.
pub async fn sweep<T: Transport>(
    db: &dyn Db,
    cfg: &Config,
    centers: &dyn Centers,
    t: &T,
    budget: std::time::Duration,
) -> Result<SweepReport> {
    let started = std::time::Instant::now();
    let owner = uuid::Uuid::now_v7().to_string();
    let mut rep = SweepReport::default();
    loop {
        rep.expanded += expand(db, cfg, centers, Utc::now(), 50)?;
        // The lease starts at the claim, and the batch's calls run side by side,
        // each ending (its timeouts) before the lease does: a slow receiver
        // holds only its own delivery, and nobody else takes it while its call
        // is open.
        let batch = claim(db, &owner, Utc::now(), cfg.lease, 20, None)?;
        if batch.is_empty() {
            let more_events =
                Patient(db).execute("SELECT 1 FROM outbox WHERE state = 'pending' LIMIT 1", &[])?;
            if more_events.is_empty() {
                break;
            }
        }
        let outcomes =
            futures::future::join_all(batch.iter().map(|d| deliver(db, cfg, t, d, Utc::now())))
                .await;
        let mut done = Vec::with_capacity(batch.len());
        for (d, outcome) in batch.into_iter().zip(outcomes) {
            done.push((d, outcome?));
        }
        if !done.is_empty() {
            record(db, cfg, centers, &done, &owner, Utc::now(), &mut rep)?;
        }
        if started.elapsed() >= budget {
            break;
        }
    }
    Ok(rep)
}

/// Is there anything a sweep could do now? (Reads only.)
pub fn has_work(db: &dyn Db, now: DateTime<Utc>) -> Result<bool> {
    Ok(!Patient(db)
        .execute(
            "SELECT 1 FROM outbox WHERE state = 'pending'
             UNION ALL SELECT 1 FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)
             LIMIT 1",
            params![ts(now), ts(now)],
        )?
        .is_empty())
}

/// The chained sweep after a change: at most one at a time across all
/// instances (a lease in `locks`); a kick that finds one running returns at
/// once, and the running one re-checks for work before it lets go, so nothing
/// committed before the kick waits for the cron.
pub async fn kicked_sweep<T: Transport>(
    db: &dyn Db,
    cfg: &Config,
    centers: &dyn Centers,
    t: &T,
    budget: std::time::Duration,
) -> Result<SweepReport> {
    let owner = uuid::Uuid::now_v7().to_string();
    let mut total = SweepReport::default();
    let started = std::time::Instant::now();
    loop {
        let now = Utc::now();
        if !crate::kernel::lease::try_lock(
            db,
            "notify.kick",
            &owner,
            now,
            now + Duration::from_std(budget).unwrap_or(Duration::seconds(30))
                + Duration::seconds(30),
        )? {
            return Ok(total);
        }
        let left = budget.saturating_sub(started.elapsed());
        let rep = sweep(db, cfg, centers, t, left).await;
        crate::kernel::lease::unlock(db, "notify.kick", &owner)?;
        let rep = rep?;
        total.expanded += rep.expanded;
        total.delivered += rep.delivered;
        total.retried += rep.retried;
        total.dead += rep.dead;
        if started.elapsed() >= budget || !has_work(db, Utc::now())? {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests;
