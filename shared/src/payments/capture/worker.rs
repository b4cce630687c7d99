//! The gateway worker: due captures, refunds and voids are leased, sent with
//! their idempotency key and settled; failures retry with backoff
//! (`base * 2^(n-1)`, at most an hour) until `max_attempts` or the key's
//! lifetime, then stay `unknown` on hold for the operator.

use super::*;
use crate::payments::gateway::Reconciled;

/// What one [`process_due`] run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Processed {
    pub succeeded: usize,
    pub declined: usize,
    pub retrying: usize,
    pub unknown: usize,
    /// Captures of a single-capture authorization left for its last capture.
    pub deferred: usize,
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
             ORDER BY created_at, id LIMIT ?"
        ),
        &prm,
    )?;
    let ids: Vec<String> = due.iter().map(|r| r.str("id")).collect();
    let mut out = Processed::default();
    transaction(db, |db| promote_expiring(db, orders, now))?;
    for id in ids {
        let claimed = transaction(db, |db| claim(db, &id, now))?;
        let Some((t, reference, number, fo)) = claimed else {
            continue;
        };
        let mut t = t;
        let kind = t.str("kind");
        // A single-capture authorization: every capture but the last waits
        // (its goods go out now); the last one carries their amounts.
        let mut amount = t.i64("amount_minor");
        if kind == "capture" && t.str("gateway") == "stripe" {
            match transaction(db, |db| single_capture_share(db, &t, now))? {
                Single::No => {}
                Single::Deferred => {
                    out.deferred += 1;
                    continue;
                }
                Single::Last(with) => {
                    amount += with;
                    // Marked final: the request must say so.
                    t = load_tx(&crate::kernel::db::Patient(db), &id)?;
                }
            }
        }
        // Stripe forgets an idempotency key after 24 hours: a call whose key is
        // older is never sent under it again. Reconcile first.
        let key_since = t
            .opt_str("key_created_at")
            .unwrap_or_else(|| t.str("created_at"));
        let stale_key = ts(now - Duration::hours(KEY_LIFETIME_HOURS)) > key_since;
        let outcome = if stale_key && t.str("gateway") == "stripe" {
            reconciled(
                db, http, stripe, &t, &id, amount, reference, &number, &fo, now,
            )?
        } else {
            let key = t.opt_str("gateway_key").unwrap_or_else(|| id.clone());
            send(http, stripe, &t, &key, &id, amount, reference, &number, &fo)
        };
        transaction(db, |db| -> Result<()> {
            match &outcome {
                Outcome::Succeeded { reference } => {
                    settle(db, &id, reference.as_deref(), now)?;
                    out.succeeded += 1;
                }
                Outcome::Declined { code, .. }
                    if code == gateway::MULTICAPTURE_UNAVAILABLE && t.i64("final") == 0 =>
                {
                    // Learnt from Stripe: this authorization is captured once.
                    db.execute(
                        "UPDATE payments SET single_capture = 1, updated_at = ? WHERE order_id = ?",
                        params![ts(now), t.str("order_id")],
                    )?;
                    if still_needed(db, &t.str("order_id"))? > 0 {
                        defer(db, &id, now)?;
                    } else {
                        // The rest was cancelled meanwhile: this is the last
                        // part, sent again as final under a new key (Stripe
                        // refused the partial one; a key is never reused with
                        // other parameters).
                        db.execute(
                            "UPDATE payment_transactions SET final = 1, lease_until = NULL, next_attempt_at = ?1,
                                gateway_key = id || '-final', key_created_at = ?1
                             WHERE id = ?2 AND status = 'pending'",
                            params![ts(now), id.clone()],
                        )?;
                    }
                    out.deferred += 1;
                }
                Outcome::Declined { code, message } => {
                    fail(db, &id, code, message, now)?;
                    out.declined += 1;
                }
                Outcome::Retry { code, message } => {
                    let attempts = load_tx(db, &id)?.i64("attempts");
                    let created = load_tx(db, &id)?
                        .opt_str("key_created_at")
                        .unwrap_or_else(|| t.str("created_at"));
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

/// Leases a due transaction (one attempt more) and reads what sending it
/// needs: the row, the PaymentIntent, the order number and the fulfillment
/// order's name. None when another worker holds it.
fn claim(
    db: &dyn Db,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Option<(crate::kernel::db::Rows, Option<String>, String, String)>> {
    let n = db.exec(
        "UPDATE payment_transactions SET attempts = attempts + 1, lease_until = ?
     WHERE id = ? AND status = 'pending' AND (lease_until IS NULL OR lease_until < ?)",
        params![ts(now + Duration::seconds(LEASE_SECONDS)), id, ts(now)],
    )?;
    if n == 0 {
        return Ok(None);
    }
    let t = load_tx(db, &id)?;
    let order_id = t.str("order_id");
    let pay = load_payment(db, &order_id)?;
    let number = db
        .execute("SELECT number FROM orders WHERE id = ?", params![order_id])?
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
}

/// A transaction whose idempotency key Stripe may have forgotten: Stripe's
/// state decides. It happened → settled; nothing happened → sent again under a
/// new key (kept, so its own retries are safe for another 23 hours); unclear
/// → declined as `reconcile_mismatch` (the order is held for an operator);
/// Stripe unreadable → retried later, never sent blind. Each result is on the
/// timeline.
#[allow(clippy::too_many_arguments)]
fn reconciled(
    db: &dyn Db,
    http: &dyn Http,
    stripe: &StripeConfig,
    t: &crate::kernel::db::Rows,
    id: &str,
    amount: i64,
    reference: Option<String>,
    number: &str,
    fo: &str,
    now: DateTime<Utc>,
) -> Result<Outcome> {
    let Some(pi) = reference.clone() else {
        return Ok(send(http, stripe, t, id, id, amount, reference, number, fo));
    };
    let (kind, order_id) = (t.str("kind"), t.str("order_id"));
    let booked = crate::kernel::db::Patient(db)
        .execute(
            "SELECT COALESCE(SUM(amount_minor), 0) AS n FROM payment_transactions
             WHERE order_id = ? AND kind = 'capture' AND status = 'succeeded'",
            params![order_id.clone()],
        )?
        .first()
        .map(|r| r.i64("n"))
        .unwrap_or(0);
    // The reconciliation's result on the timeline, in the caller's transaction.
    let note = |db: &dyn Db, what: &str, data: Json| {
        record_event(
            db,
            &order_id,
            now,
            "payment:stripe",
            &format!("payment.{kind}_reconciled"),
            what,
            data,
        )
    };
    match gateway::reconcile(http, stripe, &kind, &pi, id, amount, booked) {
        Err(e) => Ok(Outcome::Retry {
            code: "reconcile_unavailable".into(),
            message: format!("Stripe could not be read to reconcile: {e}"),
        }),
        Ok(Reconciled::Happened { reference }) => {
            transaction(db, |db| {
                note(
                    db,
                    &format!("the {kind} had taken effect at Stripe; booked without a second call"),
                    json!({"transaction_id": id, "result": "happened"}),
                )
            })?;
            Ok(Outcome::Succeeded { reference })
        }
        Ok(Reconciled::Unclear(why)) => {
            transaction(db, |db| {
                note(
                    db,
                    &format!("the {kind} could not be reconciled: {why}"),
                    json!({"transaction_id": id, "result": "unclear"}),
                )
            })?;
            Ok(Outcome::Declined {
                code: "reconcile_mismatch".into(),
                message: why,
            })
        }
        Ok(Reconciled::NotHappened) => {
            let key = format!("{id}-r{}", now.timestamp());
            transaction(db, |db| -> Result<()> {
                db.execute(
                    "UPDATE payment_transactions SET gateway_key = ?, key_created_at = ? WHERE id = ?",
                    params![key.clone(), ts(now), id],
                )?;
                note(
                    db,
                    &format!("Stripe shows no {kind}; sent again under a new idempotency key"),
                    json!({"transaction_id": id, "result": "not_happened", "idempotency_key": key}),
                )
            })?;
            Ok(send(
                http, stripe, t, &key, id, amount, reference, number, fo,
            ))
        }
    }
}

/// Sends a leased transaction to its gateway (ledger gateways settle at once)
/// under `key` (the transaction's id, or the key a reconciliation gave it).
#[allow(clippy::too_many_arguments)]
fn send(
    http: &dyn Http,
    stripe: &StripeConfig,
    t: &crate::kernel::db::Rows,
    key: &str,
    id: &str,
    amount: i64,
    reference: Option<String>,
    number: &str,
    fo: &str,
) -> Outcome {
    let kind = t.str("kind");
    match (t.str("gateway").as_str(), reference) {
        ("stripe", Some(_)) if stripe.secret_key.is_empty() => Outcome::Declined {
            code: "gateway_not_configured".into(),
            message:
                "Stripe is not configured: set the Spin variable stripe_secret_key, then retry"
                    .into(),
        },
        ("stripe", Some(pi)) => {
            let req = match kind.as_str() {
                "capture" => stripe.capture(&pi, key, amount, t.i64("final") != 0, number, fo),
                "refund" => stripe.refund(&pi, key, id, amount, number),
                _ => stripe.cancel(&pi, key),
            };
            gateway::send(http, &req)
        }
        ("stripe", None) => Outcome::Declined {
            code: "no_payment_intent".into(),
            message: "the order names no Stripe PaymentIntent".into(),
        },
        // Ledger gateways settle inline; one left pending settles here.
        _ => Outcome::Succeeded { reference: None },
    }
}

/// Where a capture stands on a single-capture authorization.
enum Single {
    /// Multicapture (or not known otherwise yet): sent as it is.
    No,
    /// Not the last part: left for the last capture, its goods released.
    Deferred,
    /// The last part: sent with the deferred captures' amount.
    Last(i64),
}

/// For a leased capture: whether its authorization is captured once, and if
/// so, whether this is the last part (nothing of the order is left to capture
/// after it; it is then marked final) or waits for it.
fn single_capture_share(
    db: &dyn Db,
    t: &crate::kernel::db::Rows,
    now: DateTime<Utc>,
) -> Result<Single> {
    let order_id = t.str("order_id");
    let single = db
        .execute(
            "SELECT single_capture FROM payments WHERE order_id = ?",
            params![order_id.clone()],
        )?
        .i64("single_capture")
        != 0;
    if !single {
        return Ok(Single::No);
    }
    let id = t.str("id");
    if t.i64("final") == 0 && still_needed(db, &order_id)? > 0 {
        defer(db, &id, now)?;
        return Ok(Single::Deferred);
    }
    db.execute(
        "UPDATE payment_transactions SET final = 1 WHERE id = ?",
        params![id.clone()],
    )?;
    Ok(Single::Last(deferred_amount(db, &order_id, &id)?))
}

/// What the order's deferred captures (other than `except`) add up to.
fn deferred_amount(db: &dyn Db, order_id: &str, except: &str) -> Result<i64> {
    Ok(db
        .execute(
            "SELECT COALESCE(SUM(amount_minor), 0) AS n FROM payment_transactions
             WHERE order_id = ? AND kind = 'capture' AND status = 'deferred' AND id <> ?",
            params![order_id, except],
        )?
        .i64("n"))
}

/// A capture of a single-capture authorization that is not the last part:
/// its fulfillment order is released (its keys delivered) now, and its money
/// goes with the order's last capture, which settles it. A fulfillment order
/// cancelled while it was in flight cancels it instead.
pub(super) fn defer(db: &dyn Db, id: &str, now: DateTime<Utc>) -> Result<()> {
    let t = load_tx(db, id)?;
    let order_id = t.str("order_id");
    let fo = t.opt_str("fulfillment_order_id");
    let fo_row = match &fo {
        Some(f) => db
            .execute(
                "SELECT name, status FROM fulfillment_orders WHERE id = ?",
                params![f.clone()],
            )?
            .first()
            .map(|r| (r.str("name"), r.str("status"))),
        None => None,
    };
    let cancelled = fo_row.as_ref().is_some_and(|(_, s)| s == "cancelled");
    let n = db.exec(
        "UPDATE payment_transactions SET status = ?, lease_until = NULL, processed_at = ?
         WHERE id = ? AND status = 'pending'",
        params![
            if cancelled { "cancelled" } else { "deferred" },
            ts(now),
            id
        ],
    )?;
    if n == 0 || cancelled {
        return Ok(());
    }
    let what = match (&fo, &fo_row) {
        (Some(f), Some((name, _))) => {
            crate::fulfillment::release::release(db, f, now)?;
            name.clone()
        }
        _ => {
            crate::fulfillment::digital::deliver_held(db, &order_id, Some(id), "payments", now)?;
            "the licence keys".into()
        }
    };
    let amount = t.i64("amount_minor");
    record_event(
        db,
        &order_id,
        now,
        "payment:stripe",
        "payment.capture_deferred",
        &format!(
            "Stripe cannot capture this authorization in parts: {what} is released now, its {} {} captured with the order's last part",
            Booked::format(&t.str("currency"), amount),
            t.str("currency")
        ),
        json!({"transaction_id": id, "fulfillment_order": what, "amount_minor": amount}),
    )?;
    store::refresh_status(db, &order_id, now)?;
    Ok(())
}

/// Nothing more of the order will be captured but deferred captures wait
/// (the rest was cancelled): the newest becomes the last capture and is sent
/// with the others' amounts, under a new idempotency key (its partial request
/// was refused, or never sent; a key is never reused with other parameters).
/// Returns whether one was promoted.
pub fn promote_deferred(db: &dyn Db, order_id: &str, now: DateTime<Utc>) -> Result<bool> {
    let busy = db
        .execute(
            "SELECT 1 FROM payment_transactions WHERE order_id = ? AND kind = 'capture' AND status IN ('pending', 'unknown') LIMIT 1",
            params![order_id],
        )?
        .first()
        .is_some();
    if busy {
        return Ok(false); // a capture still to be sent becomes the last one itself
    }
    let n = db.exec(
        "UPDATE payment_transactions SET status = 'pending', final = 1, next_attempt_at = ?1, processed_at = NULL,
            gateway_key = id || '-final', key_created_at = ?1
         WHERE id = (SELECT id FROM payment_transactions WHERE order_id = ?2 AND kind = 'capture' AND status = 'deferred'
                     ORDER BY created_at DESC, id DESC LIMIT 1)",
        params![ts(now), order_id],
    )?;
    if n > 0 {
        record_event(
            db,
            order_id,
            now,
            "payment:stripe",
            "payment.capture_promoted",
            "Nothing more will be captured: the released parts are captured now, in one capture",
            json!({}),
        )?;
    }
    Ok(n > 0)
}

/// Single-capture authorizations with deferred captures that expire within a
/// day (Stripe: 7 days after authorization when the source named no expiry)
/// are captured now for what was released; what is released later needs a
/// new authorization (a `payment_failed` hold, an action item).
fn promote_expiring(db: &dyn Db, orders: Option<&[String]>, now: DateTime<Utc>) -> Result<()> {
    let r = db.execute(
        "SELECT p.order_id, p.expires_at, p.created_at FROM payments p
         WHERE p.single_capture = 1 AND EXISTS (SELECT 1 FROM payment_transactions t
             WHERE t.order_id = p.order_id AND t.kind = 'capture' AND t.status = 'deferred')",
        &[],
    )?;
    for p in r.iter() {
        let order_id = p.str("order_id");
        if orders.is_some_and(|o| !o.contains(&order_id)) {
            continue;
        }
        let expires = p
            .opt_str("expires_at")
            .and_then(|e| DateTime::parse_from_rfc3339(&e).ok())
            .map(|e| e.with_timezone(&Utc))
            .or_else(|| {
                DateTime::parse_from_rfc3339(&p.str("created_at"))
                    .ok()
                    .map(|c| c.with_timezone(&Utc) + Duration::days(7))
            });
        if expires.is_some_and(|e| e - now < Duration::days(1)) {
            promote_deferred(db, &order_id, now)?;
        }
    }
    Ok(())
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
            book_source_void(db, &pay, &tx_id, order_id, t, now)?
        }
        "refund" if pay.gateway != "none" => {
            book_source_refund(db, &pay, &tx_id, order_id, t, now)?
        }
        _ => "recorded",
    };
    refresh_financial_status(db, order_id, now)?;
    Ok(done)
}

/// Shopify voided the authorization: what is left of it is voided here too.
fn book_source_void(
    db: &dyn Db,
    pay: &Pay,
    tx_id: &str,
    order_id: &str,
    t: &crate::orders::model::SourceTransaction,
    now: DateTime<Utc>,
) -> Result<&'static str> {
    let rest = pay.authorized - pay.captured - pay.voided;
    if rest > 0 {
        let c = shares::Charge {
            amount: rest,
            ..Default::default()
        };
        insert_tx(
            db,
            tx_id,
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
        settle(db, tx_id, Some(&t.id), now)?;
    }
    Ok("voided")
}

/// Shopify refunded: only what Waybill has not refunded already (a
/// cancellation or a return it processed) is booked.
fn book_source_refund(
    db: &dyn Db,
    pay: &Pay,
    tx_id: &str,
    order_id: &str,
    t: &crate::orders::model::SourceTransaction,
    now: DateTime<Utc>,
) -> Result<&'static str> {
    // Waybill may have booked this refund already (a cancellation or a
    // return it processed): only what is still unrefunded is booked.
    let amount = t.amount.min(
        pay.captured
            .max(pay.authorized * (pay.gateway == "prepaid") as i64)
            - pay.refunded,
    );
    if amount <= 0 {
        return Ok("recorded");
    }
    let c = shares::Charge {
        amount,
        ..Default::default()
    };
    insert_tx(
        db,
        tx_id,
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
    settle(db, tx_id, Some(&t.id), now)?;
    Ok("refunded")
}
