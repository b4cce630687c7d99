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

/// Captures whose outcome is still open count against the authorization
/// (`deferred`: waiting to go with the last capture of a single-capture
/// authorization).
const LIVE: &str = "('pending', 'succeeded', 'unknown', 'deferred')";
/// How long a worker owns a transaction it is sending (longer than any timeout).
const LEASE_SECONDS: i64 = 120;
/// Stripe keeps idempotency keys for 24 hours; past that a retry with the same
/// key could capture again, so an unresolved capture becomes `unknown` first.
const KEY_LIFETIME_HOURS: i64 = 23;

mod config;
pub use config::*;
mod refunds;
pub use refunds::*;
mod worker;
pub use worker::*;
mod views;
pub use views::*;

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

/// The payment record [`open_payment`] writes, as the row pending in a new
/// order's `intake` column (`orders::store::insert_pending`).
pub fn payment_row(o: &NewOrder) -> Json {
    let (gw, amount) = gateway_for(o);
    json!({"gateway": gw, "source_gateway": o.payment.gateway, "reference": o.payment.reference,
           "currency": o.currency.code(), "authorized_minor": amount,
           "expires_at": o.payment.authorization_expires_at.map(ts)})
}

/// Writes the pending payment records of the orders `p` names
/// ([`payment_row`]): one statement, however many orders.
pub fn settle_pending(db: &dyn Db, p: &crate::orders::store::Pending) -> Result<()> {
    let (cond, v) = p.filter();
    db.execute(
        &format!(
            "INSERT INTO payments (order_id, gateway, source_gateway, reference, currency, authorized_minor,
                expires_at, created_at, updated_at)
             SELECT o.id, json_extract(o.intake, '$.payment.gateway'), json_extract(o.intake, '$.payment.source_gateway'),
                json_extract(o.intake, '$.payment.reference'), json_extract(o.intake, '$.payment.currency'),
                json_extract(o.intake, '$.payment.authorized_minor'), json_extract(o.intake, '$.payment.expires_at'),
                o.created_at, o.created_at
             FROM orders o WHERE {cond} AND json_extract(o.intake, '$.payment') IS NOT NULL
             ON CONFLICT (order_id) DO NOTHING"
        ),
        &[v],
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
    /// The payments setting says capture at shipment.
    at_shipment: bool,
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

/// The order's payment record and whether captures wait for shipment, in one
/// read (made once per batch unit until a write names either table:
/// `kernel::db::reference`), shared by [`gated`] and the capture after it.
fn load_payment(db: &dyn Db, order_id: &str) -> Result<Option<Pay>> {
    let r = crate::kernel::db::reference(
        db,
        &["payments", "settings"],
        "SELECT p.*, (SELECT value FROM settings WHERE key = 'payments') AS payment_settings
         FROM payments p WHERE p.order_id = ?",
        params![order_id],
    )?;
    Ok(r.first().map(|r| Pay {
        at_shipment: r
            .opt_str("payment_settings")
            .and_then(|s| serde_json::from_str::<Json>(&s).ok())
            .is_some_and(|v| v["capture_at"] == "shipment"),
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
    Ok(load_payment(db, order_id)?.is_some_and(|p| p.gateway != "none" && !p.at_shipment))
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

/// What captures, invoices and refunds need of an order. Its two reads are
/// made once per batch unit until a write names their table (a capture and
/// its invoice share them: `kernel::db::reference`).
fn order_ctx(db: &dyn Db, order_id: &str) -> Result<OrderCtx> {
    use crate::kernel::db::reference;
    let o = reference(
        db,
        &["orders"],
        "SELECT number, currency, doc FROM orders WHERE id = ?",
        params![order_id],
    )?;
    let o = o
        .first()
        .ok_or_else(|| Error::not_found(format!("no order {order_id}")))?;
    let doc: Json = serde_json::from_str(&o.str("doc")).unwrap_or(Json::Null);
    let lines = reference(
        db,
        &["order_lines"],
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
    let units: BTreeMap<i64, i64> = db
        .execute(
            "SELECT line_no, SUM(quantity) AS n FROM fulfillment_order_lines WHERE fulfillment_order_id = ? GROUP BY line_no",
            params![fo_id],
        )?
        .iter()
        .map(|r| (r.i64("line_no"), r.i64("n")))
        .collect();
    capture_new_fulfillment_order(db, &order_id, fo_id, &units, now)
}

/// [`capture_fulfillment_order`] for a fulfillment order the caller created in
/// this transaction (no capture can exist for it yet; the unique index on live
/// captures per fulfillment order stays the guard): its order and its units
/// per line come from the caller instead of three reads. Opens the capture
/// and decides it.
pub fn capture_new_fulfillment_order(
    db: &dyn Db,
    order_id: &str,
    fo_id: &str,
    units: &BTreeMap<i64, i64>,
    now: DateTime<Utc>,
) -> Result<Gate> {
    let Some(pay) = load_payment(db, order_id)? else {
        crate::fulfillment::release::release(db, fo_id, now)?;
        return Ok(Gate::Released);
    };
    let (id, amount, currency) = open_capture(db, order_id, &pay, units, Some(fo_id), now)?;
    decide(db, &id, order_id, &pay, amount, currency, now)
}

/// Captures the licence keys claimed for an order that no live capture pays
/// for yet, like the units of a fulfillment order: at release, the keys wait
/// for this capture and are delivered when it succeeds
/// (`fulfillment::digital::deliver_held`); at shipment, they were delivered
/// and this captures them. None: nothing to capture (no keys waiting, or no
/// payment to capture from).
pub fn capture_keys(db: &dyn Db, order_id: &str, now: DateTime<Utc>) -> Result<Option<Gate>> {
    let units = crate::fulfillment::digital::unpaid(db, order_id)?;
    if units.is_empty() {
        return Ok(None);
    }
    let Some(pay) = load_payment(db, order_id)?.filter(|p| p.gateway != "none") else {
        return Ok(None);
    };
    let (id, amount, currency) = open_capture(db, order_id, &pay, &units, None, now)?;
    crate::fulfillment::digital::paid_by(db, order_id, &id)?;
    decide(db, &id, order_id, &pay, amount, currency, now).map(Some)
}

/// Records a pending capture of `units` of an order (for a fulfillment order,
/// or for licence keys when `fo` is None). Its shares are fixed here, inside
/// the caller's transaction, before any gateway sees the amount; it is final
/// when nothing of the order is left to capture after it. Returns its id,
/// amount and currency.
fn open_capture(
    db: &dyn Db,
    order_id: &str,
    pay: &Pay,
    units: &BTreeMap<i64, i64>,
    fo: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(String, i64, Currency)> {
    let ctx = order_ctx(db, order_id)?;
    let before = units_in(db, order_id, "capture", LIVE)?;
    let with_shipping = !shipping_taken(db, order_id, "capture", LIVE)?;
    let c = shares::charge(&ctx.amounts, &before, units, with_shipping);
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
        order_id,
        "capture",
        "pending",
        &pay.gateway,
        &pay.currency,
        &c,
        fo,
        left_after == 0,
        None,
        now,
    )?;
    Ok((id, c.amount, ctx.currency))
}

/// What happens to a capture [`open_capture`] just recorded: booked at once
/// (nothing to charge, prepaid, or a manual authorization that covers it),
/// declined (a manual authorization that expired or is too small), or left
/// for the gateway.
fn decide(
    db: &dyn Db,
    id: &str,
    order_id: &str,
    pay: &Pay,
    amount: i64,
    cur: Currency,
    now: DateTime<Utc>,
) -> Result<Gate> {
    if amount == 0 {
        // Nothing to charge (free units, or their share was taken with an
        // earlier capture): booked without a gateway call, which would refuse a
        // zero capture.
        settle(db, id, None, now)?;
        return Ok(Gate::Released);
    }
    match pay.gateway.as_str() {
        "prepaid" => {
            settle(db, id, None, now)?;
            Ok(Gate::Released)
        }
        "manual" => {
            let pending: i64 = db
                .execute(
                    "SELECT COALESCE(SUM(amount_minor), 0) AS n FROM payment_transactions
                     WHERE order_id = ? AND kind = 'capture' AND status IN ('pending', 'unknown') AND id <> ?",
                    params![order_id, id],
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
                    id,
                    "authorization_expired",
                    "the authorization expired",
                    now,
                )?;
                Ok(Gate::Declined)
            } else if amount > open {
                fail(
                    db,
                    id,
                    "amount_exceeds_authorization",
                    &format!(
                        "capture of {} exceeds the {} left of the authorization",
                        cur.format_amount(amount),
                        cur.format_amount(open.max(0))
                    ),
                    now,
                )?;
                Ok(Gate::Declined)
            } else {
                settle(db, id, None, now)?;
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
    // The booked row comes back with the claim (counted by RETURNING, not by
    // the host's `changes()`); none: booked already, or not bookable.
    let t = db.execute(
        "UPDATE payment_transactions SET status = 'succeeded', gateway_reference = COALESCE(?, gateway_reference),
            processed_at = ?, lease_until = NULL, error_code = NULL, error_message = NULL
         WHERE id = ? AND status IN ('pending', 'unknown', 'deferred')
         RETURNING *",
        params![reference, ts(now), tx_id],
    )?;
    if t.is_empty() {
        return Ok(());
    }
    let Booked {
        order_id,
        amount,
        currency,
    } = Booked::of(&t);
    let fmt = |m: i64| Booked::format(&currency, m);
    match t.str("kind").as_str() {
        "capture" => settle_capture(db, &t, tx_id, now)?,
        "refund" => settle_refund(db, &t, tx_id, now)?,
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

/// What a settled transaction books: its order, amount and currency.
struct Booked {
    order_id: String,
    amount: i64,
    currency: String,
}

impl Booked {
    fn of(t: &crate::kernel::db::Rows) -> Booked {
        Booked {
            order_id: t.str("order_id"),
            amount: t.i64("amount_minor"),
            currency: t.str("currency"),
        }
    }

    /// An amount for the timeline, in the currency's minor unit.
    fn format(currency: &str, m: i64) -> String {
        Currency::from_code(currency)
            .map(|c| c.format_amount(m))
            .unwrap_or(m.to_string())
    }
}

/// A capture went through: the ledger, the invoice, and its fulfillment order
/// released (or, cancelled meanwhile, the money given back).
fn settle_capture(
    db: &dyn Db,
    t: &crate::kernel::db::Rows,
    tx_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let Booked {
        order_id,
        amount,
        currency,
    } = Booked::of(t);
    let fmt = |m: i64| Booked::format(&currency, m);
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
    if t.i64("final") != 0 {
        // A single-capture authorization's last capture took the deferred
        // ones with it: each is booked now, with its own invoice.
        let deferred = db.execute(
            "SELECT id FROM payment_transactions WHERE order_id = ? AND kind = 'capture' AND status = 'deferred'
             ORDER BY created_at, id",
            params![order_id.clone()],
        )?;
        let reference = t.opt_str("gateway_reference");
        for d in deferred.iter() {
            settle(db, &d.str("id"), reference.as_deref(), now)?;
        }
    }
    if fo_id.is_empty() {
        return settle_key_capture(db, &order_id, tx_id, now);
    }
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
    Ok(())
}

/// A capture of licence keys went through: the keys it pays for go to the
/// customer; keys given back while it was in flight (a cancellation) are
/// refunded at the shares they were captured with.
fn settle_key_capture(db: &dyn Db, order_id: &str, tx_id: &str, now: DateTime<Utc>) -> Result<()> {
    crate::fulfillment::digital::deliver_held(db, order_id, Some(tx_id), "payments", now)?;
    let held = crate::fulfillment::digital::held_for(db, tx_id)?;
    let excess: BTreeMap<i64, i64> = tx_lines(db, tx_id)?
        .iter()
        .map(|l| {
            (
                l.line_no,
                l.units - held.get(&l.line_no).copied().unwrap_or(0),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    if !excess.is_empty() {
        let req = RefundRequest {
            lines: excess,
            shipping: false,
            amount: None,
            reason: "licence keys cancelled while their capture was in flight".into(),
        };
        refund(db, order_id, &req, "payments", now)?;
    }
    Ok(())
}

/// A refund went through: the ledger and the credit memo.
fn settle_refund(
    db: &dyn Db,
    t: &crate::kernel::db::Rows,
    tx_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let Booked {
        order_id,
        amount,
        currency,
    } = Booked::of(t);
    let fmt = |m: i64| Booked::format(&currency, m);
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

#[cfg(test)]
mod tests;
