//! The payment ledger: one authorization per order, captures of exactly what
//! is released (one per fulfillment order), refunds and voids, invoices and
//! credit memos with gap-free numbers, and the derived `financial_status`.
//!
//! Flow (capture at release, the default): routing allocates a fulfillment
//! order and, when the order has something to capture, leaves it `scheduled`
//! and calls [`capture_fulfillment_order`]. The capture's amount comes from
//! [`crate::payments::shares::charge`] inside the same transaction, so it is fixed before
//! any gateway sees it. `manual` and `prepaid` settle at once (and the
//! fulfillment order is released in the same transaction); `stripe` leaves the
//! capture `pending` for [`process_due`], which the capture component runs
//! right after routing and every minute from its cron. The gateway call happens
//! outside any transaction with `Idempotency-Key` = the capture's id; a timeout
//! or 5xx keeps it `pending` with a backoff, a decline fails it and holds the
//! fulfillment order (`payment_failed`, an action item), success settles it:
//! invoice, `payment.captured`, release.
//!
//! Capture at shipment (setting `capture_at = shipment`): fulfillment orders
//! are released at once and [`capture_shipped`] captures when they ship.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value as Json};

use crate::kernel::db::{transaction, Db, Value};
use crate::kernel::error::{Error, FieldError, Result};
use crate::kernel::money::{Currency, Money};
use crate::kernel::time::ts;
use crate::orders::model::{FinancialStatus, HoldReason, NewOrder};
use crate::orders::store::{self, record_event};
use crate::params;
use crate::payments::gateway::{self, Http, Outcome, StripeConfig};
use crate::payments::shares::{self, LineAmounts, OrderAmounts};

/// Captures whose outcome is still open count against the authorization.
const LIVE: &str = "('pending', 'succeeded', 'unknown')";
/// How long a worker owns a transaction it is sending (longer than any timeout).
const LEASE_SECONDS: i64 = 120;
/// Stripe keeps idempotency keys for 24 hours; past that a retry with the same
/// key could capture again, so an unresolved capture becomes `unknown` first.
const KEY_LIFETIME_HOURS: i64 = 23;

// ---------------------------------------------------------------- settings

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureAt {
    Release,
    Shipment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub capture_at: CaptureAt,
    /// First retry delay after a timeout or 5xx; doubles per attempt, at most an hour.
    pub retry_base_seconds: i64,
    /// Attempts before an unresolved capture becomes an action item.
    pub max_attempts: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            capture_at: CaptureAt::Release,
            retry_base_seconds: 30,
            max_attempts: 10,
        }
    }
}

impl Settings {
    pub fn json(&self) -> Json {
        json!({"capture_at": match self.capture_at { CaptureAt::Release => "release", CaptureAt::Shipment => "shipment" },
               "retry_base_seconds": self.retry_base_seconds, "max_attempts": self.max_attempts})
    }
    fn backoff(&self, attempts: i64) -> Duration {
        let secs = self
            .retry_base_seconds
            .saturating_mul(1i64 << (attempts.clamp(1, 20) - 1))
            .min(3600);
        Duration::seconds(secs)
    }
}

pub fn settings(db: &dyn Db) -> Result<Settings> {
    let mut s = Settings::default();
    let v = crate::kernel::settings::get(db, "payments")?;
    if !v.is_null() {
        if v["capture_at"] == "shipment" {
            s.capture_at = CaptureAt::Shipment;
        }
        if let Some(n) = v["retry_base_seconds"].as_i64() {
            s.retry_base_seconds = n;
        }
        if let Some(n) = v["max_attempts"].as_i64() {
            s.max_attempts = n;
        }
    }
    Ok(s)
}

pub fn put_settings(db: &dyn Db, v: &Json) -> Result<Settings> {
    let mut s = settings(db)?;
    let mut errs = Vec::new();
    let Some(obj) = v.as_object() else {
        return Err(Error::bad_request("the body must be a JSON object"));
    };
    for (k, x) in obj {
        match k.as_str() {
            "capture_at" => match x.as_str() {
                Some("release") => s.capture_at = CaptureAt::Release,
                Some("shipment") => s.capture_at = CaptureAt::Shipment,
                _ => errs.push(FieldError::new(
                    "/capture_at",
                    "must be 'release' or 'shipment'",
                )),
            },
            "retry_base_seconds" => match x.as_i64() {
                Some(n) if (0..=3600).contains(&n) => s.retry_base_seconds = n,
                _ => errs.push(FieldError::new(
                    "/retry_base_seconds",
                    "must be an integer from 0 to 3600",
                )),
            },
            "max_attempts" => match x.as_i64() {
                Some(n) if (1..=50).contains(&n) => s.max_attempts = n,
                _ => errs.push(FieldError::new(
                    "/max_attempts",
                    "must be an integer from 1 to 50",
                )),
            },
            other => errs.push(FieldError::new(format!("/{other}"), "unknown setting")),
        }
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    crate::kernel::settings::put(db, "payments", &s.json())?;
    Ok(s)
}

// ---------------------------------------------------------------- the authorization

/// Which ledger an order's payment goes through, and how much it may capture.
pub fn gateway_for(o: &NewOrder) -> (&'static str, i64) {
    let total = o.totals().total;
    match o.financial_status {
        FinancialStatus::Paid | FinancialStatus::PartiallyRefunded | FinancialStatus::Refunded => {
            ("prepaid", total)
        }
        FinancialStatus::Authorized | FinancialStatus::PartiallyPaid => {
            let stripe = o
                .payment
                .gateway
                .as_deref()
                .is_some_and(|g| g.eq_ignore_ascii_case("stripe"))
                && o.payment
                    .reference
                    .as_deref()
                    .is_some_and(|r| r.starts_with("pi_"));
            (
                if stripe { "stripe" } else { "manual" },
                o.payment.amount.unwrap_or(total),
            )
        }
        FinancialStatus::Pending | FinancialStatus::Voided => ("none", 0),
    }
}

/// Records the order's payment as it arrives (intake, in the order's transaction).
pub fn open_payment(db: &dyn Db, order_id: &str, o: &NewOrder, now: DateTime<Utc>) -> Result<()> {
    let (gw, amount) = gateway_for(o);
    db.execute(
        "INSERT INTO payments (order_id, gateway, source_gateway, reference, currency, authorized_minor, expires_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
         ON CONFLICT (order_id) DO NOTHING",
        params![order_id, gw, o.payment.gateway.clone(), o.payment.reference.clone(), o.currency.code(), amount,
                o.payment.authorization_expires_at.map(ts), ts(now)],
    )?;
    Ok(())
}

/// Follows the source's payment state on an update: while nothing has been
/// captured, the gateway, reference and authorized amount follow the source
/// (an order that was pending and is now authorized or paid starts
/// capturing); afterwards only the reference and expiry may change.
pub fn sync_payment(db: &dyn Db, order_id: &str, o: &NewOrder, now: DateTime<Utc>) -> Result<()> {
    open_payment(db, order_id, o, now)?;
    let (gw, amount) = gateway_for(o);
    let busy = db
        .execute(
            &format!("SELECT 1 FROM payment_transactions WHERE order_id = ? AND status IN {LIVE} LIMIT 1"),
            params![order_id],
        )?
        .first()
        .is_some();
    if busy {
        db.execute(
            "UPDATE payments SET reference = COALESCE(?, reference), expires_at = COALESCE(?, expires_at), updated_at = ? WHERE order_id = ?",
            params![o.payment.reference.clone(), o.payment.authorization_expires_at.map(ts), ts(now), order_id],
        )?;
    } else {
        db.execute(
            "UPDATE payments SET gateway = ?, source_gateway = ?, reference = ?, currency = ?, authorized_minor = ?, expires_at = ?, updated_at = ?
             WHERE order_id = ?",
            params![gw, o.payment.gateway.clone(), o.payment.reference.clone(), o.currency.code(), amount,
                    o.payment.authorization_expires_at.map(ts), ts(now), order_id],
        )?;
    }
    Ok(())
}

struct Pay {
    gateway: String,
    source_gateway: Option<String>,
    reference: Option<String>,
    currency: String,
    authorized: i64,
    captured: i64,
    refunded: i64,
    voided: i64,
    expires_at: Option<String>,
}

fn load_payment(db: &dyn Db, order_id: &str) -> Result<Option<Pay>> {
    let r = db.execute(
        "SELECT * FROM payments WHERE order_id = ?",
        params![order_id],
    )?;
    Ok(r.first().map(|r| Pay {
        gateway: r.str("gateway"),
        source_gateway: r.opt_str("source_gateway"),
        reference: r.opt_str("reference"),
        currency: r.str("currency"),
        authorized: r.i64("authorized_minor"),
        captured: r.i64("captured_minor"),
        refunded: r.i64("refunded_minor"),
        voided: r.i64("voided_minor"),
        expires_at: r.opt_str("expires_at"),
    }))
}

/// Whether releases of this order wait for a capture (capture at release and
/// a payment to capture or assign).
pub fn gated(db: &dyn Db, order_id: &str) -> Result<bool> {
    let r = db.execute(
        "SELECT p.gateway, (SELECT value FROM settings WHERE key = 'payments') AS s
         FROM payments p WHERE p.order_id = ?",
        params![order_id],
    )?;
    let Some(row) = r.first() else {
        return Ok(false);
    };
    let at_shipment = row
        .opt_str("s")
        .and_then(|s| serde_json::from_str::<Json>(&s).ok())
        .is_some_and(|v| v["capture_at"] == "shipment");
    Ok(row.str("gateway") != "none" && !at_shipment)
}

// ---------------------------------------------------------------- amounts

struct OrderCtx {
    number: String,
    currency: Currency,
    amounts: OrderAmounts,
    /// line → ordered − cancelled.
    live_units: BTreeMap<i64, i64>,
    names: BTreeMap<i64, (String, String)>,
    doc: Json,
}

fn order_ctx(db: &dyn Db, order_id: &str) -> Result<OrderCtx> {
    let o = db.execute(
        "SELECT number, currency, doc FROM orders WHERE id = ?",
        params![order_id],
    )?;
    let o = o
        .first()
        .ok_or_else(|| Error::not_found(format!("no order {order_id}")))?;
    let doc: Json = serde_json::from_str(&o.str("doc")).unwrap_or(Json::Null);
    let lines = db.execute(
        "SELECT line_no, sku, name, qty_ordered, qty_cancelled, subtotal_minor, discount_minor, tax_minor
         FROM order_lines WHERE order_id = ? ORDER BY line_no",
        params![order_id],
    )?;
    let shipping: Vec<crate::orders::model::ShippingLine> =
        serde_json::from_value(doc["shipping_lines_minor"].clone()).unwrap_or_default();
    let amounts = OrderAmounts {
        lines: lines
            .iter()
            .map(|l| LineAmounts {
                line_no: l.i64("line_no"),
                ordered: l.i64("qty_ordered"),
                net: l.i64("subtotal_minor") - l.i64("discount_minor"),
                tax: l.i64("tax_minor"),
            })
            .collect(),
        shipping: shipping.iter().map(|s| s.price - s.discount).sum(),
        shipping_tax: shipping.iter().map(|s| s.tax).sum(),
        taxes_included: doc["taxes_included"].as_bool().unwrap_or(false),
    };
    Ok(OrderCtx {
        number: o.str("number"),
        currency: Currency::from_code(&o.str("currency"))
            .ok_or_else(|| Error::internal("order with an unknown currency"))?,
        live_units: lines
            .iter()
            .map(|l| {
                (
                    l.i64("line_no"),
                    l.i64("qty_ordered") - l.i64("qty_cancelled"),
                )
            })
            .collect(),
        names: lines
            .iter()
            .map(|l| (l.i64("line_no"), (l.str("sku"), l.str("name"))))
            .collect(),
        amounts,
        doc,
    })
}

/// Units per line in transactions of `kind` whose status is in `statuses`.
fn units_in(db: &dyn Db, order_id: &str, kind: &str, statuses: &str) -> Result<BTreeMap<i64, i64>> {
    let r = db.execute(
        &format!(
            "SELECT tl.line_no, SUM(tl.units) AS n FROM payment_transaction_lines tl
             JOIN payment_transactions t ON t.id = tl.transaction_id
             WHERE t.order_id = ? AND t.kind = ? AND t.status IN {statuses} GROUP BY tl.line_no"
        ),
        params![order_id, kind],
    )?;
    Ok(r.iter().map(|r| (r.i64("line_no"), r.i64("n"))).collect())
}

fn shipping_taken(db: &dyn Db, order_id: &str, kind: &str, statuses: &str) -> Result<bool> {
    Ok(!db
        .execute(
            &format!(
                "SELECT 1 FROM payment_transactions WHERE order_id = ? AND kind = ? AND status IN {statuses}
                 AND (shipping_minor <> 0 OR shipping_tax_minor <> 0) LIMIT 1"
            ),
            params![order_id, kind],
        )?
        .is_empty())
}

/// What the order still needs captured (units neither captured nor cancelled).
pub fn still_needed(db: &dyn Db, order_id: &str) -> Result<i64> {
    let ctx = order_ctx(db, order_id)?;
    still_to_capture(db, &ctx, order_id)
}

/// What is still to be captured for units neither captured nor cancelled.
fn still_to_capture(db: &dyn Db, ctx: &OrderCtx, order_id: &str) -> Result<i64> {
    let before = units_in(db, order_id, "capture", LIVE)?;
    let rest: BTreeMap<i64, i64> = ctx
        .live_units
        .iter()
        .map(|(l, n)| (*l, (n - before.get(l).copied().unwrap_or(0)).max(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let ship = !rest.is_empty() && !shipping_taken(db, order_id, "capture", LIVE)?;
    Ok(shares::charge(&ctx.amounts, &before, &rest, ship).amount)
}

#[allow(clippy::too_many_arguments)]
fn insert_tx(
    db: &dyn Db,
    id: &str,
    order_id: &str,
    kind: &str,
    status: &str,
    gateway: &str,
    currency: &str,
    c: &shares::Charge,
    fo: Option<&str>,
    last: bool,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    db.execute(
        "INSERT INTO payment_transactions (id, order_id, kind, status, gateway, amount_minor, currency, fulfillment_order_id,
            shipping_minor, shipping_tax_minor, final, reason, next_attempt_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)",
        params![id, order_id, kind, status, gateway, c.amount, currency, fo, c.shipping, c.shipping_tax, last, reason, ts(now)],
    )?;
    if !c.lines.is_empty() {
        let ph = vec!["(?, ?, ?, ?, ?)"; c.lines.len()].join(",");
        let mut prm = Vec::with_capacity(c.lines.len() * 5);
        for l in &c.lines {
            prm.extend([
                Value::from(id),
                Value::from(l.line_no),
                Value::from(l.units),
                Value::from(l.net),
                Value::from(l.tax),
            ]);
        }
        db.execute(
            &format!("INSERT INTO payment_transaction_lines (transaction_id, line_no, units, net_minor, tax_minor) VALUES {ph}"),
            &prm,
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------- captures

/// Where a fulfillment order stands after [`capture_fulfillment_order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Captured (or assigned) and released.
    Released,
    /// Waiting for the gateway (the capture component sends it).
    Waiting,
    /// Declined: the fulfillment order is on hold (payment_failed).
    Declined,
}

/// Captures what a `scheduled` fulfillment order holds and releases it when
/// the money is there. Idempotent: a fulfillment order with a live capture is
/// not captured again. Runs inside the caller's transaction.
pub fn capture_fulfillment_order(db: &dyn Db, fo_id: &str, now: DateTime<Utc>) -> Result<Gate> {
    let f = db.execute(
        "SELECT order_id, name, status FROM fulfillment_orders WHERE id = ?",
        params![fo_id],
    )?;
    let Some(f) = f.first() else {
        return Err(Error::not_found(format!("no fulfillment order {fo_id}")));
    };
    let order_id = f.str("order_id");
    let existing = db.execute(
        &format!("SELECT id, status FROM payment_transactions WHERE fulfillment_order_id = ? AND kind = 'capture' AND status IN {LIVE}"),
        params![fo_id],
    )?;
    if let Some(t) = existing.first() {
        return Ok(match t.str("status").as_str() {
            "succeeded" => Gate::Released,
            _ => Gate::Waiting,
        });
    }
    let Some(pay) = load_payment(db, &order_id)? else {
        crate::fulfillment::release::release(db, fo_id, now)?;
        return Ok(Gate::Released);
    };
    let ctx = order_ctx(db, &order_id)?;
    let units: BTreeMap<i64, i64> = db
        .execute(
            "SELECT line_no, SUM(quantity) AS n FROM fulfillment_order_lines WHERE fulfillment_order_id = ? GROUP BY line_no",
            params![fo_id],
        )?
        .iter()
        .map(|r| (r.i64("line_no"), r.i64("n")))
        .collect();
    let before = units_in(db, &order_id, "capture", LIVE)?;
    let with_shipping = !shipping_taken(db, &order_id, "capture", LIVE)?;
    let c = shares::charge(&ctx.amounts, &before, &units, with_shipping);
    let left_after: i64 = ctx
        .live_units
        .iter()
        .map(|(l, n)| n - before.get(l).copied().unwrap_or(0) - units.get(l).copied().unwrap_or(0))
        .map(|x| x.max(0))
        .sum();
    let id = uuid::Uuid::now_v7().to_string();
    insert_tx(
        db,
        &id,
        &order_id,
        "capture",
        "pending",
        &pay.gateway,
        &pay.currency,
        &c,
        Some(fo_id),
        left_after == 0,
        None,
        now,
    )?;
    match pay.gateway.as_str() {
        "prepaid" => {
            settle(db, &id, None, now)?;
            Ok(Gate::Released)
        }
        "manual" => {
            let pending: i64 = db
                .execute(
                    "SELECT COALESCE(SUM(amount_minor), 0) AS n FROM payment_transactions
                     WHERE order_id = ? AND kind = 'capture' AND status IN ('pending', 'unknown') AND id <> ?",
                    params![order_id.clone(), id.clone()],
                )?
                .first()
                .map(|r| r.i64("n"))
                .unwrap_or(0);
            let open = pay.authorized - pay.captured - pay.voided - pending;
            if pay
                .expires_at
                .as_deref()
                .is_some_and(|e| e < ts(now).as_str())
            {
                fail(
                    db,
                    &id,
                    "authorization_expired",
                    "the authorization expired",
                    now,
                )?;
                Ok(Gate::Declined)
            } else if c.amount > open {
                let cur = ctx.currency;
                fail(
                    db,
                    &id,
                    "amount_exceeds_authorization",
                    &format!(
                        "capture of {} exceeds the {} left of the authorization",
                        cur.format_amount(c.amount),
                        cur.format_amount(open.max(0))
                    ),
                    now,
                )?;
                Ok(Gate::Declined)
            } else {
                settle(db, &id, None, now)?;
                Ok(Gate::Released)
            }
        }
        _ => Ok(Gate::Waiting),
    }
}

/// Capture at shipment: called by the shipment flow when a fulfillment order
/// ships. Releases nothing (it is released already); records the capture and
/// its invoice (manual, prepaid) or leaves it for the gateway (stripe).
pub fn capture_shipped(db: &dyn Db, fo_id: &str, now: DateTime<Utc>) -> Result<Gate> {
    let s = settings(db)?;
    if s.capture_at != CaptureAt::Shipment {
        return Ok(Gate::Released);
    }
    capture_fulfillment_order(db, fo_id, now)
}

/// Books a succeeded transaction: ledger totals, invoice or credit memo, the
/// timeline; a captured fulfillment order is released (or, if it was
/// cancelled meanwhile, the capture is refunded). Idempotent.
pub fn settle(db: &dyn Db, tx_id: &str, reference: Option<&str>, now: DateTime<Utc>) -> Result<()> {
    let changed = db.exec(
        "UPDATE payment_transactions SET status = 'succeeded', gateway_reference = COALESCE(?, gateway_reference),
            processed_at = ?, lease_until = NULL, error_code = NULL, error_message = NULL
         WHERE id = ? AND status IN ('pending', 'unknown')",
        params![reference, ts(now), tx_id],
    )?;
    if changed == 0 {
        return Ok(());
    }
    let t = load_tx(db, tx_id)?;
    let order_id = t.str("order_id");
    let amount = t.i64("amount_minor");
    let currency = t.str("currency");
    let cur = Currency::from_code(&currency);
    let fmt = |m: i64| cur.map(|c| c.format_amount(m)).unwrap_or(m.to_string());
    match t.str("kind").as_str() {
        "capture" => {
            db.execute(
                "UPDATE payments SET captured_minor = captured_minor + ?, updated_at = ? WHERE order_id = ?",
                params![amount, ts(now), order_id.clone()],
            )?;
            let fo_id = t.opt_str("fulfillment_order_id").unwrap_or_default();
            let fo = db.execute(
                "SELECT name, status FROM fulfillment_orders WHERE id = ?",
                params![fo_id.clone()],
            )?;
            let (fo_name, fo_status) = fo
                .first()
                .map(|r| (r.str("name"), r.str("status")))
                .unwrap_or_default();
            let (number, invoice, order_number) =
                issue(db, "invoices", "INV", &t, Some(fo_name.clone()), now)?;
            record_event(
                db,
                &order_id,
                now,
                &format!("payment:{}", t.str("gateway")),
                "payment.captured",
                &format!(
                    "Captured {} {currency} for {fo_name} (invoice {number})",
                    fmt(amount)
                ),
                json!({"amount_minor": amount, "currency": currency, "fulfillment_order": fo_name,
                       "invoice": number, "transaction_id": tx_id, "gateway": t.str("gateway")}),
            )?;
            // For CRM / accounting subscribers (outbound webhooks, the export cursor).
            let money = money_of(amount, &currency);
            store::enqueue(
                db,
                "payment.captured",
                Some(&order_id),
                json!({"order_id": order_id, "number": order_number, "amount": money, "fulfillment_order": fo_name,
                       "invoice": number, "transaction_id": tx_id, "gateway": t.str("gateway")}),
                now,
            )?;
            store::enqueue(db, "invoice.created", Some(&order_id), invoice, now)?;
            match fo_status.as_str() {
                "scheduled" => {
                    crate::fulfillment::release::release(db, &fo_id, now)?;
                }
                "cancelled" => {
                    // Cancelled while the gateway was capturing: give the money back.
                    let lines = tx_lines(db, tx_id)?;
                    let c = shares::Charge {
                        lines,
                        shipping: t.i64("shipping_minor"),
                        shipping_tax: t.i64("shipping_tax_minor"),
                        amount,
                    };
                    start_refund(
                        db,
                        &order_id,
                        c,
                        Some(tx_id),
                        "the fulfillment order was cancelled while it was being captured",
                        "payments",
                        now,
                    )?;
                }
                _ => {}
            }
        }
        "refund" => {
            db.execute(
                "UPDATE payments SET refunded_minor = refunded_minor + ?, updated_at = ? WHERE order_id = ?",
                params![amount, ts(now), order_id.clone()],
            )?;
            let (number, memo, order_number) = issue(db, "credit_memos", "CM", &t, None, now)?;
            record_event(
                db,
                &order_id,
                now,
                &format!("payment:{}", t.str("gateway")),
                "payment.refunded",
                &format!("Refunded {} {currency} (credit memo {number})", fmt(amount)),
                json!({"amount_minor": amount, "currency": currency, "credit_memo": number,
                       "transaction_id": tx_id, "reason": t.opt_str("reason")}),
            )?;
            store::enqueue(
                db,
                "payment.refunded",
                Some(&order_id),
                json!({"order_id": order_id, "number": order_number, "amount": money_of(amount, &currency),
                       "credit_memo": number, "transaction_id": tx_id, "reason": t.opt_str("reason")}),
                now,
            )?;
            store::enqueue(db, "credit_memo.created", Some(&order_id), memo, now)?;
        }
        "void" => {
            db.execute(
                "UPDATE payments SET voided_minor = voided_minor + ?, updated_at = ? WHERE order_id = ?",
                params![amount, ts(now), order_id.clone()],
            )?;
            record_event(
                db,
                &order_id,
                now,
                &format!("payment:{}", t.str("gateway")),
                "payment.voided",
                &format!("Authorization reduced by {} {currency}", fmt(amount)),
                json!({"amount_minor": amount, "currency": currency, "transaction_id": tx_id, "reason": t.opt_str("reason")}),
            )?;
        }
        _ => {}
    }
    refresh_financial_status(db, &order_id, now)?;
    Ok(())
}

/// A declined transaction: a capture holds its fulfillment order
/// (payment_failed, an action item); nothing is released.
pub fn fail(db: &dyn Db, tx_id: &str, code: &str, message: &str, now: DateTime<Utc>) -> Result<()> {
    fail_as(db, tx_id, "failed", code, message, now)
}

fn fail_as(
    db: &dyn Db,
    tx_id: &str,
    status: &str,
    code: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let changed = db.exec(
        "UPDATE payment_transactions SET status = ?, error_code = ?, error_message = ?, processed_at = ?, lease_until = NULL
         WHERE id = ? AND status = 'pending'",
        params![status, code, message, ts(now), tx_id],
    )?;
    if changed == 0 {
        return Ok(());
    }
    let t = load_tx(db, tx_id)?;
    let order_id = t.str("order_id");
    let kind = t.str("kind");
    let mut fo_name = String::new();
    if let Some(fo_id) = t.opt_str("fulfillment_order_id") {
        fo_name = db
            .execute(
                "SELECT name FROM fulfillment_orders WHERE id = ?",
                params![fo_id.clone()],
            )?
            .first()
            .map(|r| r.str("name"))
            .unwrap_or_default();
        crate::fulfillment::status::set_status_from(
            db,
            &fo_id,
            &[crate::fulfillment::status::FoStatus::Scheduled],
            crate::fulfillment::status::FoStatus::OnHold,
            now,
        )?;
    }
    let what = if fo_name.is_empty() {
        kind.clone()
    } else {
        format!("{kind} for {fo_name}")
    };
    let note = if status == "unknown" {
        format!("{what}: outcome unknown after retries ({code}: {message}); check the gateway, then retry")
    } else {
        format!("{what} declined ({code}: {message})")
    };
    record_event(
        db,
        &order_id,
        now,
        &format!("payment:{}", t.str("gateway")),
        &format!("payment.{kind}_failed"),
        &note,
        json!({"transaction_id": tx_id, "code": code, "message": message, "amount_minor": t.i64("amount_minor"),
               "fulfillment_order": fo_name, "status": status}),
    )?;
    store::add_hold(
        db,
        &order_id,
        HoldReason::PaymentFailed,
        &note,
        now,
        "payments",
    )?;
    store::refresh_status(db, &order_id, now)?;
    Ok(())
}

fn load_tx(db: &dyn Db, tx_id: &str) -> Result<crate::kernel::db::Rows> {
    let r = db.execute(
        "SELECT * FROM payment_transactions WHERE id = ?",
        params![tx_id],
    )?;
    if r.is_empty() {
        return Err(Error::not_found(format!("no payment transaction {tx_id}")));
    }
    Ok(r)
}

fn tx_lines(db: &dyn Db, tx_id: &str) -> Result<Vec<shares::LinePart>> {
    Ok(db
        .execute(
            "SELECT line_no, units, net_minor, tax_minor FROM payment_transaction_lines WHERE transaction_id = ? ORDER BY line_no",
            params![tx_id],
        )?
        .iter()
        .map(|r| shares::LinePart {
            line_no: r.i64("line_no"),
            units: r.i64("units"),
            net: r.i64("net_minor"),
            tax: r.i64("tax_minor"),
        })
        .collect())
}

// `Rows` derefs to its first row where one row is expected.
trait FirstRow {
    fn str(&self, c: &str) -> String;
    fn opt_str(&self, c: &str) -> Option<String>;
    fn i64(&self, c: &str) -> i64;
}
impl FirstRow for crate::kernel::db::Rows {
    fn str(&self, c: &str) -> String {
        self.first().map(|r| r.str(c)).unwrap_or_default()
    }
    fn opt_str(&self, c: &str) -> Option<String> {
        self.first().and_then(|r| r.opt_str(c))
    }
    fn i64(&self, c: &str) -> i64 {
        self.first().map(|r| r.i64(c)).unwrap_or(0)
    }
}

/// Issues the invoice (capture) or credit memo (refund) of a succeeded
/// transaction. The number is the next in a gap-free sequence: it is taken in
/// the transaction that books the money (under SQLite's write lock), so a
/// rollback takes the number back with it and two writers never share one.
/// Returns the number, the stored document and the order number.
fn issue(
    db: &dyn Db,
    table: &str,
    prefix: &str,
    t: &crate::kernel::db::Rows,
    fo_name: Option<String>,
    now: DateTime<Utc>,
) -> Result<(String, Json, String)> {
    let tx_id = t.str("id");
    let order_id = t.str("order_id");
    let ctx = order_ctx(db, &order_id)?;
    let c = ctx.currency;
    let m = |minor: i64| serde_json::to_value(Money::new(minor, c)).unwrap_or(Json::Null);
    let lines: Vec<Json> = tx_lines(db, &tx_id)?
        .iter()
        .map(|l| {
            let (sku, name) = ctx.names.get(&l.line_no).cloned().unwrap_or_default();
            let total = l.net + if ctx.amounts.taxes_included { 0 } else { l.tax };
            json!({"line_no": l.line_no, "sku": sku, "name": name, "quantity": l.units,
                   "net": m(l.net), "tax": m(l.tax), "total": m(total)})
        })
        .collect();
    let fo = t.opt_str("fulfillment_order_id");
    let amount = t.i64("amount_minor");
    let mut doc = json!({
        "order_id": order_id, "order_number": ctx.number, "issued_at": ts(now),
        "currency": c.code(), "lines": lines,
        "shipping": m(t.i64("shipping_minor")), "shipping_tax": m(t.i64("shipping_tax_minor")),
        "taxes_included": ctx.amounts.taxes_included,
        "total": m(amount), "transaction_id": tx_id, "gateway": t.str("gateway"),
        "gateway_reference": t.opt_str("gateway_reference"),
        "bill_to": ctx.doc["billing_address"], "customer": ctx.doc["customer"],
    });
    if prefix == "INV" {
        doc["fulfillment_order"] = json!(fo_name);
    } else {
        doc["reason"] = json!(t.opt_str("reason"));
    }
    let fo_col = if table == "invoices" {
        ", fulfillment_order_id"
    } else {
        ""
    };
    let fo_val = if table == "invoices" { ", ?7" } else { "" };
    let mut prm: Vec<Value> =
        params![tx_id, order_id, c.code(), amount, ts(now), doc.to_string()].to_vec();
    if table == "invoices" {
        prm.push(Value::from(fo));
    }
    let r = db.execute(
        &format!(
            "INSERT INTO {table} (seq, number, transaction_id, order_id, currency, amount_minor, issued_at, doc{fo_col})
             SELECT n, printf('{prefix}-%06d', n), ?1, ?2, ?3, ?4, ?5, json_set(?6, '$.number', printf('{prefix}-%06d', n)){fo_val}
             FROM (SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM {table})
             RETURNING number, doc"
        ),
        &prm,
    )?;
    let stored = serde_json::from_str(&r.str("doc")).unwrap_or(Json::Null);
    Ok((r.str("number"), stored, ctx.number))
}

// ---------------------------------------------------------------- refunds and voids

#[allow(clippy::too_many_arguments)]
fn start_refund(
    db: &dyn Db,
    order_id: &str,
    c: shares::Charge,
    parent: Option<&str>,
    reason: &str,
    _actor: &str,
    now: DateTime<Utc>,
) -> Result<String> {
    let pay = load_payment(db, order_id)?
        .ok_or_else(|| Error::conflict("the order has no payment to refund"))?;
    let id = uuid::Uuid::now_v7().to_string();
    insert_tx(
        db,
        &id,
        order_id,
        "refund",
        "pending",
        &pay.gateway,
        &pay.currency,
        &c,
        None,
        false,
        Some(reason),
        now,
    )?;
    if let Some(p) = parent {
        db.execute(
            "UPDATE payment_transactions SET parent_id = ? WHERE id = ?",
            params![p, id.clone()],
        )?;
    }
    if pay.gateway != "stripe" {
        settle(db, &id, None, now)?;
    }
    Ok(id)
}

/// A refund request: returned or goodwill units per line, shipping per the
/// merchant's policy, or a plain amount.
#[derive(Debug, Clone, Default)]
pub struct RefundRequest {
    pub lines: BTreeMap<i64, i64>,
    pub shipping: bool,
    pub amount: Option<i64>,
    pub reason: String,
}

/// Refunds captured money: per line, the same shares the units were captured
/// with (so refunding every unit refunds each line exactly), or an amount.
/// Never more than was captured and not refunded yet.
pub fn refund(
    db: &dyn Db,
    order_id: &str,
    r: &RefundRequest,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<String> {
    let pay = load_payment(db, order_id)?
        .filter(|p| p.gateway != "none")
        .ok_or_else(|| {
            Error::conflict("nothing was captured for this order, so nothing can be refunded")
        })?;
    let ctx = order_ctx(db, order_id)?;
    let captured = units_in(db, order_id, "capture", "('succeeded')")?;
    let refunded = units_in(
        db,
        order_id,
        "refund",
        "('pending', 'succeeded', 'unknown')",
    )?;
    let mut errs = Vec::new();
    for (line, n) in &r.lines {
        if !ctx.live_units.contains_key(line) && !captured.contains_key(line) {
            errs.push(FieldError::new(
                format!("/lines/{line}"),
                "no such line on this order",
            ));
            continue;
        }
        let open =
            captured.get(line).copied().unwrap_or(0) - refunded.get(line).copied().unwrap_or(0);
        if *n <= 0 || *n > open {
            errs.push(FieldError::new(
                format!("/lines/{line}"),
                format!("{n} unit(s) asked, {open} captured and not yet refunded"),
            ));
        }
    }
    let ship = r.shipping
        && shipping_taken(db, order_id, "capture", "('succeeded')")?
        && !shipping_taken(
            db,
            order_id,
            "refund",
            "('pending', 'succeeded', 'unknown')",
        )?;
    let mut c = shares::refund_amount(&ctx.amounts, &refunded, &r.lines, ship);
    let in_flight: i64 = db
        .execute(
            "SELECT COALESCE(SUM(amount_minor), 0) AS n FROM payment_transactions WHERE order_id = ? AND kind = 'refund' AND status IN ('pending', 'unknown')",
            params![order_id],
        )?
        .i64("n");
    let refundable = pay.captured - pay.refunded - in_flight;
    if let Some(a) = r.amount {
        if !r.lines.is_empty() {
            errs.push(FieldError::new(
                "/amount",
                "give lines or an amount, not both",
            ));
        }
        c = shares::Charge {
            amount: a,
            ..Default::default()
        };
    }
    if r.lines.is_empty() && r.amount.is_none() && !ship {
        errs.push(FieldError::new(
            "/lines",
            "name the lines to refund, or an amount",
        ));
    }
    if c.amount <= 0 && errs.is_empty() {
        errs.push(FieldError::new("/amount", "the refund must be positive"));
    }
    if c.amount > refundable && errs.is_empty() {
        errs.push(FieldError::new(
            "/amount",
            format!(
                "{} asked, {} captured and not yet refunded",
                ctx.currency.format_amount(c.amount),
                ctx.currency.format_amount(refundable.max(0))
            ),
        ));
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    start_refund(db, order_id, c, None, &r.reason, actor, now)
}

/// After units were cancelled: gives back what of the authorization is no
/// longer needed. With nothing left to capture, the whole rest is voided
/// (Stripe: the PaymentIntent is cancelled); otherwise the ledger is reduced
/// and Stripe releases the rest with the final capture.
pub fn void_unneeded(db: &dyn Db, order_id: &str, reason: &str, now: DateTime<Utc>) -> Result<i64> {
    let Some(pay) = load_payment(db, order_id)? else {
        return Ok(0);
    };
    if !matches!(pay.gateway.as_str(), "manual" | "stripe") {
        return Ok(0);
    }
    let ctx = order_ctx(db, order_id)?;
    let in_flight = db
        .execute(
            "SELECT COALESCE(SUM(amount_minor), 0) AS n, COUNT(*) AS k FROM payment_transactions
             WHERE order_id = ? AND kind IN ('capture', 'void') AND status IN ('pending', 'unknown')",
            params![order_id],
        )?;
    let (pending, pending_n) = (in_flight.i64("n"), in_flight.i64("k"));
    let needed = still_to_capture(db, &ctx, order_id)?;
    let excess = pay.authorized - pay.captured - pay.voided - pending - needed;
    if excess <= 0 {
        return Ok(0);
    }
    let id = uuid::Uuid::now_v7().to_string();
    let c = shares::Charge {
        amount: excess,
        ..Default::default()
    };
    let via_gateway = pay.gateway == "stripe" && needed == 0 && pending_n == 0;
    insert_tx(
        db,
        &id,
        order_id,
        "void",
        "pending",
        &pay.gateway,
        &pay.currency,
        &c,
        None,
        true,
        Some(reason),
        now,
    )?;
    if !via_gateway {
        settle(db, &id, None, now)?;
    }
    Ok(excess)
}

/// `financial_status` from the ledger (prepaid orders keep the source's
/// state until money goes back).
pub fn refresh_financial_status(db: &dyn Db, order_id: &str, now: DateTime<Utc>) -> Result<()> {
    let Some(p) = load_payment(db, order_id)? else {
        return Ok(());
    };
    let current = db
        .execute(
            "SELECT financial_status FROM orders WHERE id = ?",
            params![order_id],
        )?
        .str("financial_status");
    let s = derive_financial(&p.gateway, p.authorized, p.captured, p.refunded, p.voided)
        .map(|s| s.as_str().to_string())
        .unwrap_or(current.clone());
    if s != current {
        crate::orders::store::set_financial_status(db, order_id, &s, now)?;
    }
    Ok(())
}

/// Captures not yet sent for the order's unreleased fulfillment orders
/// (`on_hold`, `scheduled`) stop; one in flight settles and, finding its
/// fulfillment order cancelled, is refunded (`settle`).
pub fn stop_unreleased_captures(db: &dyn Db, order_id: &str, now: DateTime<Utc>) -> Result<()> {
    db.execute(
        "UPDATE payment_transactions SET status = 'cancelled', processed_at = ?1
         WHERE order_id = ?2 AND kind = 'capture' AND status = 'pending' AND (lease_until IS NULL OR lease_until < ?1)
           AND fulfillment_order_id IN (SELECT id FROM fulfillment_orders WHERE order_id = ?2 AND status IN ('on_hold', 'scheduled'))",
        params![ts(now), order_id],
    )?;
    Ok(())
}

/// The capture not yet sent for a cancelled fulfillment order stops; one in
/// flight that succeeds is refunded (`settle`).
pub fn stop_capture(db: &dyn Db, fo_id: &str, now: DateTime<Utc>) -> Result<()> {
    db.execute(
        "UPDATE payment_transactions SET status = 'cancelled', processed_at = ?1
         WHERE fulfillment_order_id = ?2 AND kind = 'capture' AND status = 'pending' AND (lease_until IS NULL OR lease_until < ?1)",
        params![ts(now), fo_id],
    )?;
    Ok(())
}

/// The derivation itself (None: keep what the source said).
pub fn derive_financial(
    gateway: &str,
    authorized: i64,
    captured: i64,
    refunded: i64,
    voided: i64,
) -> Option<FinancialStatus> {
    if gateway == "none" {
        return None;
    }
    if refunded > 0 {
        let paid = if gateway == "prepaid" {
            authorized.max(captured)
        } else {
            captured
        };
        return Some(if refunded >= paid {
            FinancialStatus::Refunded
        } else {
            FinancialStatus::PartiallyRefunded
        });
    }
    if gateway == "prepaid" {
        return None;
    }
    Some(if captured == 0 {
        if authorized > 0 && voided >= authorized {
            FinancialStatus::Voided
        } else {
            FinancialStatus::Authorized
        }
    } else if captured + voided >= authorized {
        FinancialStatus::Paid
    } else {
        FinancialStatus::PartiallyPaid
    })
}

// ---------------------------------------------------------------- the gateway worker

/// What one [`process_due`] run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Processed {
    pub succeeded: usize,
    pub declined: usize,
    pub retrying: usize,
    pub unknown: usize,
}

/// Sends due gateway transactions (optionally only these orders'): claims
/// each with a lease (so two workers never send the same one at once), calls
/// the gateway outside any transaction, then books the answer.
pub fn process_due(
    db: &dyn Db,
    http: &dyn Http,
    stripe: &StripeConfig,
    orders: Option<&[String]>,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Processed> {
    let p = crate::kernel::db::Patient(db);
    let s = settings(&p)?;
    let mut prm = vec![Value::from(ts(now))];
    let mut cond = String::new();
    if let Some(ids) = orders {
        if ids.is_empty() {
            return Ok(Processed::default());
        }
        cond = format!(" AND order_id IN ({})", vec!["?"; ids.len()].join(","));
        prm.extend(ids.iter().map(Value::from));
    }
    prm.push(Value::from(limit as i64));
    let due = p.execute(
        &format!(
            "SELECT id FROM payment_transactions WHERE status = 'pending' AND next_attempt_at <= ?{cond}
             ORDER BY created_at LIMIT ?"
        ),
        &prm,
    )?;
    let ids: Vec<String> = due.iter().map(|r| r.str("id")).collect();
    let mut out = Processed::default();
    for id in ids {
        let claimed = transaction(
            db,
            |db| -> Result<Option<(crate::kernel::db::Rows, Option<String>, String, String)>> {
                let n = db.exec(
                    "UPDATE payment_transactions SET attempts = attempts + 1, lease_until = ?
                 WHERE id = ? AND status = 'pending' AND (lease_until IS NULL OR lease_until < ?)",
                    params![
                        ts(now + Duration::seconds(LEASE_SECONDS)),
                        id.clone(),
                        ts(now)
                    ],
                )?;
                if n == 0 {
                    return Ok(None);
                }
                let t = load_tx(db, &id)?;
                let order_id = t.str("order_id");
                let pay = load_payment(db, &order_id)?;
                let number = db
                    .execute(
                        "SELECT number FROM orders WHERE id = ?",
                        params![order_id.clone()],
                    )?
                    .str("number");
                let fo = match t.opt_str("fulfillment_order_id") {
                    Some(f) => db
                        .execute(
                            "SELECT name FROM fulfillment_orders WHERE id = ?",
                            params![f],
                        )?
                        .str("name"),
                    None => String::new(),
                };
                Ok(Some((t, pay.and_then(|p| p.reference), number, fo)))
            },
        )?;
        let Some((t, reference, number, fo)) = claimed else {
            continue;
        };
        let kind = t.str("kind");
        let amount = t.i64("amount_minor");
        let outcome = match (t.str("gateway").as_str(), reference) {
            ("stripe", Some(_)) if stripe.secret_key.is_empty() => Outcome::Declined {
                code: "gateway_not_configured".into(),
                message:
                    "Stripe is not configured: set the Spin variable stripe_secret_key, then retry"
                        .into(),
            },
            ("stripe", Some(pi)) => {
                let req = match kind.as_str() {
                    "capture" => {
                        stripe.capture(&pi, &id, amount, t.i64("final") != 0, &number, &fo)
                    }
                    "refund" => stripe.refund(&pi, &id, amount, &number),
                    _ => stripe.cancel(&pi, &id),
                };
                gateway::send(http, &req)
            }
            ("stripe", None) => Outcome::Declined {
                code: "no_payment_intent".into(),
                message: "the order names no Stripe PaymentIntent".into(),
            },
            // Ledger gateways settle inline; one left pending settles here.
            _ => Outcome::Succeeded { reference: None },
        };
        transaction(db, |db| -> Result<()> {
            match &outcome {
                Outcome::Succeeded { reference } => {
                    settle(db, &id, reference.as_deref(), now)?;
                    out.succeeded += 1;
                }
                Outcome::Declined { code, message } => {
                    fail(db, &id, code, message, now)?;
                    out.declined += 1;
                }
                Outcome::Retry { code, message } => {
                    let attempts = load_tx(db, &id)?.i64("attempts");
                    let created = t.str("created_at");
                    let too_old = ts(now - Duration::hours(KEY_LIFETIME_HOURS)) > created;
                    if attempts >= s.max_attempts || too_old {
                        fail_as(db, &id, "unknown", code, message, now)?;
                        out.unknown += 1;
                    } else {
                        db.execute(
                            "UPDATE payment_transactions SET next_attempt_at = ?, lease_until = NULL, error_code = ?, error_message = ?
                             WHERE id = ? AND status = 'pending'",
                            params![ts(now + s.backoff(attempts)), code.clone(), message.clone(), id.clone()],
                        )?;
                        record_event(
                            db,
                            &t.str("order_id"),
                            now,
                            "payment:stripe",
                            &format!("payment.{kind}_retry"),
                            &format!("{kind} attempt {attempts} did not complete ({code}: {message}); retrying with the same idempotency key"),
                            json!({"transaction_id": id, "attempt": attempts, "code": code}),
                        )?;
                        out.retrying += 1;
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// Whether the gateway worker has something to send now (cheap; routing asks
/// before chaining the capture component).
pub fn has_due(db: &dyn Db, now: DateTime<Utc>) -> Result<bool> {
    Ok(!db
        .execute(
            "SELECT 1 FROM payment_transactions WHERE status = 'pending' AND next_attempt_at <= ? LIMIT 1",
            params![ts(now)],
        )?
        .is_empty())
}

/// The operator's retry after a decline or an unknown outcome: optionally a
/// new authorization (reference, amount, expiry), the payment_failed hold is
/// lifted, unknown captures are sent again with their key and declined
/// fulfillment orders are captured anew (by `flows::payments::retry`, which
/// releases the order after this has recorded the retry).
pub fn record_retry(
    db: &dyn Db,
    order_id: &str,
    body: &Json,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let pay =
        load_payment(db, order_id)?.ok_or_else(|| Error::conflict("the order has no payment"))?;
    let mut errs = Vec::new();
    let reference = match &body["reference"] {
        Json::Null => None,
        Json::String(s) if !s.trim().is_empty() && s.len() <= 255 => Some(s.trim().to_string()),
        _ => {
            errs.push(FieldError::new("/reference", "must be a non-empty string"));
            None
        }
    };
    let amount = match &body["amount_minor"] {
        Json::Null => None,
        v => match v.as_i64() {
            Some(n) if n >= 0 => Some(n),
            _ => {
                errs.push(FieldError::new(
                    "/amount_minor",
                    "must be a non-negative integer (minor units)",
                ));
                None
            }
        },
    };
    let expires = match &body["authorization_expires_at"] {
        Json::Null => None,
        v => match v
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        {
            Some(t) => Some(ts(t.with_timezone(&Utc))),
            None => {
                errs.push(FieldError::new(
                    "/authorization_expires_at",
                    "must be an RFC 3339 time",
                ));
                None
            }
        },
    };
    errs.extend(FieldError::unknown_fields(
        body,
        &["reference", "amount_minor", "authorization_expires_at"],
    ));
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    if !matches!(pay.gateway.as_str(), "manual" | "stripe") {
        return Err(Error::conflict(format!(
            "the order's payment ({}) has nothing to capture",
            pay.gateway
        )));
    }
    db.execute(
        "UPDATE payments SET reference = COALESCE(?, reference), authorized_minor = COALESCE(?, authorized_minor),
            expires_at = COALESCE(?, expires_at), updated_at = ? WHERE order_id = ?",
        params![reference, amount, expires, ts(now), order_id],
    )?;
    // A new authorization: the old one's remaining captures start over.
    db.execute(
        "UPDATE payment_transactions SET status = 'pending', next_attempt_at = ?, lease_until = NULL
         WHERE order_id = ? AND status = 'unknown'",
        params![ts(now), order_id],
    )?;
    store::release_hold(
        db,
        order_id,
        HoldReason::PaymentFailed,
        now,
        actor,
        "payment retried by an operator",
    )?;
    if amount.is_some() {
        // A new authorized amount (e.g. after a dearer substitution).
        store::release_hold(
            db,
            order_id,
            HoldReason::AwaitingPayment,
            now,
            actor,
            "a new authorization was recorded",
        )?;
    }
    Ok(())
}

/// A payment transaction the shop recorded (Shopify `order_transactions/create`).
/// An authorization sets the authorized amount, reference and expiry; a void
/// in the shop voids what is left; a refund in the shop is booked with a credit
/// memo; captures and sales made in the shop go to the timeline (the order's
/// `orders/paid` update moves the payment to `prepaid`). Idempotent per
/// transaction id. Returns what was done.
pub fn source_transaction(
    db: &dyn Db,
    order_id: &str,
    t: &crate::orders::model::SourceTransaction,
    now: DateTime<Utc>,
) -> Result<&'static str> {
    let actor = "source:shopify";
    let tx_id = format!("shopify-{}", t.id);
    let seen = !db
        .execute(
            "SELECT 1 FROM order_events WHERE order_id = ? AND kind = 'payment.source_transaction' AND json_extract(data, '$.id') = ?",
            params![order_id, t.id.clone()],
        )?
        .is_empty()
        || !db
            .execute("SELECT 1 FROM payment_transactions WHERE id = ?", params![tx_id.clone()])?
            .is_empty();
    if seen {
        return Ok("duplicate");
    }
    let Some(pay) = load_payment(db, order_id)? else {
        return Ok("ignored");
    };
    if pay.currency != t.currency.code() {
        return Err(Error::unprocessable(format!(
            "the transaction is in {}, the order in {}",
            t.currency.code(),
            pay.currency
        )));
    }
    let fmt = |m: i64| t.currency.format_amount(m);
    record_event(
        db,
        order_id,
        now,
        actor,
        "payment.source_transaction",
        &format!(
            "Shopify {} {} of {} {}",
            t.kind,
            t.status,
            fmt(t.amount),
            t.currency.code()
        ),
        json!({"id": t.id, "kind": t.kind, "status": t.status, "amount_minor": t.amount,
               "gateway": t.gateway, "authorization": t.authorization}),
    )?;
    if t.status != "success" {
        return Ok("recorded");
    }
    let done = match t.kind.as_str() {
        "authorization" => {
            db.execute(
                "UPDATE payments SET authorized_minor = ?, reference = COALESCE(?, reference),
                    expires_at = COALESCE(?, expires_at), updated_at = ? WHERE order_id = ?",
                params![
                    t.amount,
                    t.authorization.clone(),
                    t.authorization_expires_at.map(ts),
                    ts(now),
                    order_id
                ],
            )?;
            "authorization_recorded"
        }
        "void" if matches!(pay.gateway.as_str(), "manual" | "stripe") => {
            let rest = pay.authorized - pay.captured - pay.voided;
            if rest > 0 {
                let c = shares::Charge {
                    amount: rest,
                    ..Default::default()
                };
                insert_tx(
                    db,
                    &tx_id,
                    order_id,
                    "void",
                    "pending",
                    "shopify",
                    &pay.currency,
                    &c,
                    None,
                    true,
                    Some("voided in Shopify"),
                    now,
                )?;
                settle(db, &tx_id, Some(&t.id), now)?;
            }
            "voided"
        }
        "refund" if pay.gateway != "none" => {
            // Waybill may have booked this refund already (a cancellation or a
            // return it processed): only what is still unrefunded is booked.
            let amount = t.amount.min(
                pay.captured
                    .max(pay.authorized * (pay.gateway == "prepaid") as i64)
                    - pay.refunded,
            );
            if amount <= 0 {
                refresh_financial_status(db, order_id, now)?;
                return Ok("recorded");
            }
            let c = shares::Charge {
                amount,
                ..Default::default()
            };
            insert_tx(
                db,
                &tx_id,
                order_id,
                "refund",
                "pending",
                "shopify",
                &pay.currency,
                &c,
                None,
                false,
                Some("refunded in Shopify"),
                now,
            )?;
            settle(db, &tx_id, Some(&t.id), now)?;
            "refunded"
        }
        _ => "recorded",
    };
    refresh_financial_status(db, order_id, now)?;
    Ok(done)
}

// ---------------------------------------------------------------- views

fn money_of(minor: i64, code: &str) -> Json {
    match Currency::from_code(code) {
        Some(c) => serde_json::to_value(Money::new(minor, c)).unwrap_or(Json::Null),
        None => json!({"minor": minor, "currency": code}),
    }
}

/// The order's payment: the authorization, every transaction with its lines,
/// invoices and credit memos.
pub fn payment_view(db: &dyn Db, order_id: &str) -> Result<Json> {
    let number = db.execute(
        "SELECT number, financial_status FROM orders WHERE id = ?",
        params![order_id],
    )?;
    let Some(pay) = load_payment(db, order_id)? else {
        return Ok(
            json!({"order_id": order_id, "order_number": number.str("number"),
                         "financial_status": number.str("financial_status"), "gateway": null, "transactions": []}),
        );
    };
    let c = pay.currency.as_str();
    let txs = db.execute(
        "SELECT t.*, f.name AS fo_name FROM payment_transactions t LEFT JOIN fulfillment_orders f ON f.id = t.fulfillment_order_id
         WHERE t.order_id = ? ORDER BY t.created_at, t.id",
        params![order_id],
    )?;
    let mut list = Vec::new();
    for t in txs.iter() {
        let id = t.str("id");
        let lines: Vec<Json> = tx_lines(db, &id)?
            .iter()
            .map(|l| json!({"line_no": l.line_no, "quantity": l.units, "net": money_of(l.net, c), "tax": money_of(l.tax, c)}))
            .collect();
        list.push(json!({"id": id, "kind": t.str("kind"), "status": t.str("status"), "gateway": t.str("gateway"),
            "amount": money_of(t.i64("amount_minor"), c), "fulfillment_order": t.opt_str("fo_name"),
            "lines": lines, "shipping": money_of(t.i64("shipping_minor"), c), "shipping_tax": money_of(t.i64("shipping_tax_minor"), c),
            "final": t.i64("final") != 0, "reason": t.opt_str("reason"), "gateway_reference": t.opt_str("gateway_reference"),
            "error": t.opt_str("error_code").map(|code| json!({"code": code, "message": t.opt_str("error_message")})),
            "attempts": t.i64("attempts"), "next_attempt_at": (t.str("status") == "pending").then(|| t.opt_str("next_attempt_at")).flatten(),
            "parent_id": t.opt_str("parent_id"), "created_at": t.str("created_at"), "processed_at": t.opt_str("processed_at")}));
    }
    let docs = |table: &str| -> Result<Vec<Json>> {
        Ok(db
            .execute(
                &format!("SELECT number, amount_minor, issued_at FROM {table} WHERE order_id = ? ORDER BY seq"),
                params![order_id],
            )?
            .iter()
            .map(|r| json!({"number": r.str("number"), "total": money_of(r.i64("amount_minor"), c), "issued_at": r.str("issued_at")}))
            .collect())
    };
    Ok(json!({
        "order_id": order_id, "order_number": number.str("number"),
        "financial_status": number.str("financial_status"),
        "gateway": pay.gateway, "source_gateway": pay.source_gateway, "reference": pay.reference,
        "authorized": money_of(pay.authorized, c), "captured": money_of(pay.captured, c),
        "refunded": money_of(pay.refunded, c), "voided": money_of(pay.voided, c),
        "authorization_expires_at": pay.expires_at,
        "transactions": list, "invoices": docs("invoices")?, "credit_memos": docs("credit_memos")?,
    }))
}

pub fn document(db: &dyn Db, table: &str, number: &str) -> Result<Json> {
    let r = db.execute(
        &format!("SELECT doc FROM {table} WHERE number = ?"),
        params![number.to_ascii_uppercase()],
    )?;
    let what = if table == "invoices" {
        "invoice"
    } else {
        "credit memo"
    };
    let row = r
        .first()
        .ok_or_else(|| Error::not_found(format!("no {what} {number}")))?;
    Ok(serde_json::from_str(&row.str("doc")).unwrap_or(Json::Null))
}

/// A page of invoices or credit memos in number order, optionally of one order.
pub fn documents(
    db: &dyn Db,
    table: &str,
    after: i64,
    order_id: Option<String>,
    limit: i64,
) -> Result<Json> {
    let mut prm = vec![Value::from(after)];
    let mut cond = String::new();
    if let Some(id) = order_id {
        cond = " AND order_id = ?".into();
        prm.push(Value::from(id));
    }
    prm.push(Value::from(limit + 1));
    let r = db.execute(
        &format!("SELECT seq, doc FROM {table} WHERE seq > ?{cond} ORDER BY seq LIMIT ?"),
        &prm,
    )?;
    let mut items: Vec<Json> = r
        .iter()
        .map(|x| serde_json::from_str(&x.str("doc")).unwrap_or(Json::Null))
        .collect();
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next = if more {
        items
            .last()
            .and_then(|d| d["number"].as_str().map(str::to_string))
    } else {
        None
    };
    Ok(json!({"items": items, "next_after": next}))
}

/// Captures and refunds that need an operator: declined, or unresolved.
pub fn action_items(db: &dyn Db) -> Result<Json> {
    let r = db.execute(
        "SELECT t.id, t.kind, t.status, t.amount_minor, t.currency, t.error_code, t.error_message, t.processed_at,
                o.number, o.id AS order_id, f.name AS fo_name
         FROM payment_transactions t JOIN orders o ON o.id = t.order_id
         LEFT JOIN fulfillment_orders f ON f.id = t.fulfillment_order_id
         WHERE t.status IN ('failed', 'unknown')
           AND EXISTS (SELECT 1 FROM order_holds h WHERE h.order_id = t.order_id AND h.reason = 'payment_failed' AND h.released_at IS NULL)
         ORDER BY t.processed_at LIMIT 500",
        &[],
    )?;
    Ok(json!({"items": r.iter().map(|t| json!({
        "transaction_id": t.str("id"), "kind": t.str("kind"), "status": t.str("status"),
        "order_id": t.str("order_id"), "order_number": t.str("number"), "fulfillment_order": t.opt_str("fo_name"),
        "amount": money_of(t.i64("amount_minor"), &t.str("currency")),
        "error": {"code": t.opt_str("error_code"), "message": t.opt_str("error_message")},
        "since": t.opt_str("processed_at"),
        "action": if t.str("status") == "unknown" { "check the gateway, then POST /api/payments/orders/{order}/retry" }
                  else { "get a new authorization, then POST /api/payments/orders/{order}/retry" },
    })).collect::<Vec<_>>()}))
}

/// A refund of an order, sent to the gateway before the answer: the refund
/// transaction and the order's payment view.
pub fn refund_now(
    db: &dyn Db,
    http: &dyn Http,
    stripe: &StripeConfig,
    order_id: &str,
    r: &RefundRequest,
    now: DateTime<Utc>,
) -> Result<Json> {
    let tx = transaction(db, |db| refund(db, order_id, r, "api", now))?;
    process_due(db, http, stripe, Some(&[order_id.to_string()]), now, 50)?;
    let view = payment_view(db, order_id)?;
    let t = view["transactions"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["id"] == tx.as_str()).cloned())
        .unwrap_or(Json::Null);
    Ok(json!({"refund": t, "payment": view}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::db::native::NativeDb;
    use crate::routing::allocation::{process_order, Trigger};
    use std::cell::RefCell;

    use crate::testkit;

    fn setup() -> NativeDb {
        let db = testkit::db();
        testkit::facility(&db, "wh", "wh", "warehouse", "[]", 53.5, 10.0);
        for sku in ["A", "B"] {
            testkit::product(&db, sku, 0, true);
        }
        db
    }

    fn stock(db: &NativeDb, sku: &str, n: i64) {
        testkit::stock(db, "wh", sku, n);
    }

    /// An authorized order: 3 × A and 2 × B with awkward amounts, shipping, tax.
    fn order(db: &NativeDb, ext: &str, currency: &str, payment: Json) -> String {
        let (a, b, ship) = match currency {
            "JPY" => ("1001", "333", "500"),
            "KWD" => ("10.001", "3.333", "1.250"),
            _ => ("10.01", "3.33", "4.99"),
        };
        let v = json!({
            "external_id": ext, "currency": currency, "placed_at": "2026-11-20T10:00:00Z",
            "financial_status": "authorized", "payment": payment,
            "shipping_address": {"line1": "x", "city": "Hamburg", "country_code": "DE", "latitude": 53.5, "longitude": 10.0},
            "lines": [
                {"sku": "A", "quantity": 3, "unit_price": a, "discount": if currency == "JPY" { "100" } else { "1.00" }, "tax": if currency == "JPY" { "301" } else { "5.71" }},
                {"sku": "B", "quantity": 2, "unit_price": b, "tax": if currency == "JPY" { "67" } else { "1.27" }},
            ],
            "shipping_lines": [{"method": "standard", "price": ship, "tax": if currency == "JPY" { "50" } else { "0.95" }}],
        });
        testkit::api_order(db, &v)
    }

    fn route(db: &NativeDb, id: &str) -> crate::routing::allocation::Outcome {
        process_order(db, id, Trigger::Intake, Utc::now()).unwrap()
    }

    fn one(db: &NativeDb, sql: &str, p: &[Value]) -> i64 {
        db.execute(sql, p).unwrap().first().unwrap().i64("n")
    }

    fn captured(db: &NativeDb, id: &str) -> Vec<i64> {
        db.execute(
            "SELECT amount_minor FROM payment_transactions WHERE order_id = ? AND kind = 'capture' AND status = 'succeeded' ORDER BY created_at",
            params![id],
        )
        .unwrap()
        .iter()
        .map(|r| r.i64("amount_minor"))
        .collect()
    }

    fn fin(db: &NativeDb, id: &str) -> String {
        db.execute(
            "SELECT financial_status FROM orders WHERE id = ?",
            params![id],
        )
        .unwrap()
        .str("financial_status")
    }

    fn total(db: &NativeDb, id: &str) -> i64 {
        one(
            db,
            "SELECT total_minor AS n FROM orders WHERE id = ?",
            params![id],
        )
    }

    #[test]
    fn partial_releases_capture_exactly_what_is_released_and_add_up_to_the_total() {
        for cur in ["JPY", "EUR", "KWD"] {
            let db = setup();
            stock(&db, "A", 2);
            let id = order(&db, cur, cur, json!({}));
            let o = route(&db, &id);
            assert_eq!((o.released, o.backordered), (2, 3), "{cur}");
            let first = captured(&db, &id);
            assert_eq!(first.len(), 1, "{cur}");
            assert_eq!(fin(&db, &id), "partially_paid");
            // 2 of 3 A: ⌊net·2/3⌋ + ⌊tax·2/3⌋ + all shipping and its tax.
            let t: Vec<i64> = db
                .execute(
                    "SELECT subtotal_minor - discount_minor AS net, tax_minor FROM order_lines WHERE order_id = ? ORDER BY line_no",
                    params![id.clone()],
                )
                .unwrap()
                .iter()
                .flat_map(|r| [r.i64("net"), r.i64("tax_minor")])
                .collect();
            let ship_total = total(&db, &id) - t.iter().sum::<i64>();
            assert_eq!(first[0], t[0] * 2 / 3 + t[1] * 2 / 3 + ship_total, "{cur}");
            stock(&db, "A", 3);
            stock(&db, "B", 2);
            crate::routing::allocation::release_backorders(&db, None, None, Utc::now(), 10)
                .unwrap();
            let all = captured(&db, &id);
            assert_eq!(all.len(), 2, "{cur}: one capture per fulfillment order");
            assert_eq!(
                all.iter().sum::<i64>(),
                total(&db, &id),
                "{cur}: captures add up to the total"
            );
            assert_eq!(fin(&db, &id), "paid");
            let inv: Vec<String> = db
                .execute("SELECT number FROM invoices ORDER BY seq", &[])
                .unwrap()
                .iter()
                .map(|r| r.str("number"))
                .collect();
            assert_eq!(inv, ["INV-000001", "INV-000002"]);
            let doc: Json = serde_json::from_str(
                &db.execute("SELECT doc FROM invoices WHERE seq = 2", &[])
                    .unwrap()
                    .str("doc"),
            )
            .unwrap();
            assert_eq!(doc["number"], "INV-000002");
            assert_eq!(doc["total"]["minor"], all[1]);
            assert_eq!(
                doc["fulfillment_order"].as_str().unwrap().ends_with("-F2"),
                true
            );
            assert_eq!(
                one(&db, "SELECT COUNT(*) AS n FROM outbox WHERE topic IN ('payment.captured', 'invoice.created')", &[]),
                4,
                "{cur}: subscribers hear of each capture and invoice"
            );
            // Nothing is captured twice: a second pass changes nothing.
            route(&db, &id);
            assert_eq!(captured(&db, &id).len(), 2);
        }
    }

    #[test]
    fn an_expired_or_short_authorization_holds_the_fulfillment_order_until_retried() {
        let db = setup();
        stock(&db, "A", 3);
        stock(&db, "B", 2);
        let id = order(
            &db,
            "x1",
            "EUR",
            json!({"gateway": "manual", "authorization_expires_at": "2020-01-01T00:00:00Z"}),
        );
        let o = route(&db, &id);
        assert_eq!(o.released, 0, "nothing is released");
        let fo = db
            .execute(
                "SELECT status FROM fulfillment_orders WHERE order_id = ?",
                params![id.clone()],
            )
            .unwrap()
            .str("status");
        assert_eq!(fo, "on_hold");
        assert_eq!(
            store::open_hold_reasons(&db, &id).unwrap(),
            vec!["payment_failed".to_string()]
        );
        assert_eq!(
            one(
                &db,
                "SELECT COUNT(*) AS n FROM outbox WHERE topic = 'fulfillment_order.released'",
                &[]
            ),
            0
        );
        let items = action_items(&db).unwrap();
        assert_eq!(items["items"][0]["error"]["code"], "authorization_expired");
        // The sweep does not retry a decline on its own ...
        crate::routing::allocation::sweep(&db, Utc::now(), 10).unwrap();
        assert!(captured(&db, &id).is_empty());
        // ... the operator does, with a fresh authorization.
        transaction(&db, |db| {
            crate::flows::payments::retry(
                db,
                &id,
                &json!({"authorization_expires_at": "2099-01-01T00:00:00Z"}),
                "test",
                Utc::now(),
            )
        })
        .unwrap();
        assert_eq!(captured(&db, &id), vec![total(&db, &id)]);
        assert!(store::open_hold_reasons(&db, &id).unwrap().is_empty());
        assert_eq!(fin(&db, &id), "paid");
        assert_eq!(
            action_items(&db).unwrap()["items"]
                .as_array()
                .unwrap()
                .len(),
            0
        );

        // An authorization smaller than what is released is declined too.
        let short = order(&db, "x2", "EUR", json!({"amount": "1.00"}));
        stock(&db, "A", 6);
        stock(&db, "B", 4);
        route(&db, &short);
        assert!(captured(&db, &short).is_empty());
        let e = db
            .execute(
                "SELECT error_code FROM payment_transactions WHERE order_id = ?",
                params![short],
            )
            .unwrap()
            .str("error_code");
        assert_eq!(e, "amount_exceeds_authorization");
    }

    /// A fake Stripe: remembers every idempotency key's answer as Stripe does.
    struct FakeStripe {
        seen: RefCell<BTreeMap<String, (u16, Vec<u8>)>>,
        captures: RefCell<Vec<i64>>,
        /// Answers to give, in turn, before the real one (None: drop the connection after capturing).
        script: RefCell<Vec<Option<u16>>>,
    }

    impl Http for FakeStripe {
        fn post_form(
            &self,
            url: &str,
            headers: &[(String, String)],
            body: &str,
        ) -> std::result::Result<(u16, Vec<u8>), String> {
            let key = headers
                .iter()
                .find(|(k, _)| k == "idempotency-key")
                .map(|(_, v)| v.clone())
                .unwrap();
            if let Some(r) = self.seen.borrow().get(&key) {
                return Ok(r.clone());
            }
            let step = if self.script.borrow().is_empty() {
                Some(200)
            } else {
                self.script.borrow_mut().remove(0)
            };
            if step == Some(402) {
                let r = (402, br#"{"error":{"type":"card_error","code":"card_declined","decline_code":"generic_decline","message":"Your card was declined."}}"#.to_vec());
                self.seen.borrow_mut().insert(key, r.clone());
                return Ok(r);
            }
            if step == Some(503) {
                return Ok((
                    503,
                    br#"{"error":{"type":"api_error","message":"try later"}}"#.to_vec(),
                ));
            }
            let amount: i64 = form_urlencoded::parse(body.as_bytes())
                .find(|(k, _)| k == "amount_to_capture" || k == "amount")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            if url.ends_with("/capture") {
                self.captures.borrow_mut().push(amount);
            }
            let r = (
                200,
                json!({"id": "pi_1", "object": "payment_intent", "latest_charge": "ch_1"})
                    .to_string()
                    .into_bytes(),
            );
            self.seen.borrow_mut().insert(key, r.clone());
            match step {
                None => Err("connection reset before the answer".into()),
                _ => Ok(r),
            }
        }
    }

    fn stripe() -> StripeConfig {
        StripeConfig {
            api_base: "http://stripe.test".into(),
            secret_key: "sk_test".into(),
        }
    }

    #[test]
    fn stripe_captures_wait_for_the_gateway_and_a_lost_answer_is_retried_with_the_same_key() {
        let db = setup();
        put_settings(&db, &json!({"retry_base_seconds": 0})).unwrap();
        stock(&db, "A", 3);
        stock(&db, "B", 2);
        let id = order(
            &db,
            "s1",
            "EUR",
            json!({"gateway": "stripe", "reference": "pi_1"}),
        );
        let o = route(&db, &id);
        assert_eq!((o.released, o.awaiting_capture), (0, 5));
        let fo = || {
            db.execute(
                "SELECT status FROM fulfillment_orders WHERE order_id = ?",
                params![id.clone()],
            )
            .unwrap()
            .str("status")
        };
        assert_eq!(fo(), "scheduled");
        let fake = FakeStripe {
            seen: RefCell::new(BTreeMap::new()),
            captures: RefCell::new(Vec::new()),
            script: RefCell::new(vec![None]),
        };
        let p = process_due(&db, &fake, &stripe(), None, Utc::now(), 10).unwrap();
        assert_eq!(
            p.retrying, 1,
            "the connection dropped after Stripe captured"
        );
        assert_eq!(
            fo(),
            "scheduled",
            "not released while the outcome is unknown"
        );
        let p = process_due(&db, &fake, &stripe(), None, Utc::now(), 10).unwrap();
        assert_eq!(p.succeeded, 1, "the retry gets Stripe's stored answer");
        assert_eq!(fake.captures.borrow().len(), 1, "Stripe captured once");
        assert_eq!(fo(), "open");
        assert_eq!(captured(&db, &id), vec![total(&db, &id)]);
        assert_eq!(
            one(
                &db,
                "SELECT attempts AS n FROM payment_transactions WHERE order_id = ?",
                params![id.clone()]
            ),
            2
        );
        assert!(!has_due(&db, Utc::now()).unwrap());

        // A decline holds the fulfillment order; nothing is released.
        let d = order(
            &db,
            "s2",
            "EUR",
            json!({"gateway": "stripe", "reference": "pi_2"}),
        );
        stock(&db, "A", 6);
        stock(&db, "B", 4);
        route(&db, &d);
        *fake.script.borrow_mut() = vec![Some(503), Some(402)];
        let p = process_due(&db, &fake, &stripe(), None, Utc::now(), 10).unwrap();
        assert_eq!(p.retrying, 1, "a 503 is retried");
        let p = process_due(&db, &fake, &stripe(), None, Utc::now(), 10).unwrap();
        assert_eq!(p.declined, 1);
        let st = db
            .execute(
                "SELECT status FROM fulfillment_orders WHERE order_id = ?",
                params![d.clone()],
            )
            .unwrap()
            .str("status");
        assert_eq!(st, "on_hold");
        assert_eq!(
            store::open_hold_reasons(&db, &d).unwrap(),
            vec!["payment_failed".to_string()]
        );
        let b = store::load_buckets(&db, &d).unwrap();
        assert_eq!(b.iter().map(|b| b.released).sum::<i64>(), 0);
        assert_eq!(fake.captures.borrow().len(), 1);

        // Stripe without a secret key: an action item at once, not hours of retries.
        let n = order(
            &db,
            "s3",
            "EUR",
            json!({"gateway": "stripe", "reference": "pi_3"}),
        );
        stock(&db, "A", 9);
        stock(&db, "B", 6);
        route(&db, &n);
        let unconfigured = StripeConfig {
            api_base: "http://stripe.test".into(),
            secret_key: String::new(),
        };
        let p = process_due(&db, &fake, &unconfigured, None, Utc::now(), 10).unwrap();
        assert_eq!(p.declined, 1);
        let code = db
            .execute(
                "SELECT error_code FROM payment_transactions WHERE order_id = ?",
                params![n],
            )
            .unwrap()
            .str("error_code");
        assert_eq!(code, "gateway_not_configured");
        assert_eq!(fake.captures.borrow().len(), 1, "nothing was sent");
    }

    #[test]
    fn cancelling_voids_the_rest_and_refunds_follow_capture_shares() {
        let db = setup();
        stock(&db, "A", 3);
        let id = order(&db, "c1", "EUR", json!({}));
        route(&db, &id);
        let first = captured(&db, &id)[0];
        // Refund 1 of the 3 captured A: a third of the line's net and tax, no shipping.
        let r = RefundRequest {
            lines: BTreeMap::from([(1, 1)]),
            reason: "damaged".into(),
            ..Default::default()
        };
        transaction(&db, |db| refund(db, &id, &r, "test", Utc::now())).unwrap();
        let amount = one(
            &db,
            "SELECT amount_minor AS n FROM payment_transactions WHERE kind = 'refund'",
            &[],
        );
        let (net, tax) = (3003 - 100, 571);
        assert_eq!(amount, net / 3 + tax / 3);
        assert_eq!(fin(&db, &id), "partially_refunded");
        let cm = db
            .execute("SELECT number FROM credit_memos", &[])
            .unwrap()
            .str("number");
        assert_eq!(cm, "CM-000001");
        // More than captured is refused and changes nothing.
        let too_many = RefundRequest {
            lines: BTreeMap::from([(1, 3)]),
            ..Default::default()
        };
        let e = transaction(&db, |db| refund(db, &id, &too_many, "test", Utc::now())).unwrap_err();
        assert_eq!(e.status(), 422);
        let none = RefundRequest {
            lines: BTreeMap::from([(2, 1)]),
            ..Default::default()
        };
        assert_eq!(
            transaction(&db, |db| refund(db, &id, &none, "test", Utc::now()))
                .unwrap_err()
                .status(),
            422,
            "line 2 was never captured"
        );
        // The backordered B are cancelled: the authorization is reduced to what was captured.
        transaction(&db, |db| {
            crate::flows::changes::cancel(
                db,
                &id,
                &json!({"lines": [{"line_no": 2, "quantity": 2}], "reason": "customer asked"}),
                "test",
                Utc::now(),
            )
        })
        .unwrap();
        let p = load_payment(&db, &id).unwrap().unwrap();
        assert_eq!(p.voided, total(&db, &id) - first);
        assert_eq!(p.captured, first);
        assert_eq!(fin(&db, &id), "partially_refunded");
    }

    #[test]
    fn prepaid_orders_get_invoices_and_keep_their_state() {
        let db = setup();
        stock(&db, "A", 3);
        stock(&db, "B", 2);
        let v = json!({"external_id": "p1", "currency": "EUR", "financial_status": "paid",
            "shipping_address": {"line1": "x", "city": "Hamburg", "country_code": "DE"},
            "lines": [{"sku": "A", "quantity": 1, "unit_price": "2.00"}]});
        let o = crate::intake::sources::api::map_order(&v, "", Utc::now()).unwrap();
        let id = transaction(&db, |db| {
            crate::flows::intake::place(db, &o, Utc::now(), "t")
        })
        .unwrap()
        .id;
        route(&db, &id);
        assert_eq!(captured(&db, &id), vec![200]);
        assert_eq!(fin(&db, &id), "paid");
        // Pending orders release without a capture (nothing was authorized).
        let v = json!({"external_id": "p2", "currency": "EUR",
            "shipping_address": {"line1": "x", "city": "Hamburg", "country_code": "DE"}, "lines": [{"sku": "A", "quantity": 1, "unit_price": "2.00"}]});
        let o = crate::intake::sources::api::map_order(&v, "", Utc::now()).unwrap();
        let id = transaction(&db, |db| {
            crate::flows::intake::place(db, &o, Utc::now(), "t")
        })
        .unwrap()
        .id;
        assert_eq!(route(&db, &id).released, 1);
        assert!(captured(&db, &id).is_empty());
        assert_eq!(fin(&db, &id), "pending");
    }

    #[test]
    fn capture_at_shipment_releases_at_once_and_captures_when_shipped() {
        let db = setup();
        put_settings(&db, &json!({"capture_at": "shipment"})).unwrap();
        stock(&db, "A", 3);
        stock(&db, "B", 2);
        let id = order(&db, "sh1", "EUR", json!({}));
        assert_eq!(
            route(&db, &id).released,
            5,
            "released without waiting for money"
        );
        assert!(captured(&db, &id).is_empty());
        assert_eq!(fin(&db, &id), "authorized");
        let fo = db
            .execute(
                "SELECT id FROM fulfillment_orders WHERE order_id = ?",
                params![id.clone()],
            )
            .unwrap()
            .str("id");
        let g = transaction(&db, |db| capture_shipped(db, &fo, Utc::now())).unwrap();
        assert_eq!(g, Gate::Released);
        assert_eq!(captured(&db, &id), vec![total(&db, &id)]);
        assert_eq!(fin(&db, &id), "paid");
        // Shipping twice captures once.
        transaction(&db, |db| capture_shipped(db, &fo, Utc::now())).unwrap();
        assert_eq!(captured(&db, &id).len(), 1);
        // With capture at release, the shipment hook does nothing.
        put_settings(&db, &json!({"capture_at": "release"})).unwrap();
        transaction(&db, |db| capture_shipped(db, &fo, Utc::now())).unwrap();
        assert_eq!(captured(&db, &id).len(), 1);
    }

    #[test]
    fn financial_status_derivation() {
        use FinancialStatus::*;
        let d = derive_financial;
        assert_eq!(d("none", 0, 0, 0, 0), None);
        assert_eq!(d("manual", 100, 0, 0, 0), Some(Authorized));
        assert_eq!(d("manual", 100, 40, 0, 0), Some(PartiallyPaid));
        assert_eq!(d("manual", 100, 40, 0, 60), Some(Paid));
        assert_eq!(d("manual", 100, 0, 0, 100), Some(Voided));
        assert_eq!(d("stripe", 100, 100, 30, 0), Some(PartiallyRefunded));
        assert_eq!(d("stripe", 100, 100, 100, 0), Some(Refunded));
        assert_eq!(d("prepaid", 100, 50, 0, 0), None);
        assert_eq!(d("prepaid", 100, 50, 60, 0), Some(PartiallyRefunded));
    }
}
