//! Refunds at capture shares, voids of what the remaining units no longer
//! need, stopping captures not yet sent, and the financial status derived
//! from the ledger.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(crate) fn start_refund(
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
    if still_to_capture(db, &ctx, order_id)? == 0 {
        // Deferred captures of a single-capture authorization go now, as one.
        promote_deferred(db, order_id, now)?;
    }
    let in_flight = db
        .execute(
            "SELECT COALESCE(SUM(amount_minor), 0) AS n, COUNT(*) AS k FROM payment_transactions
             WHERE order_id = ? AND kind IN ('capture', 'void') AND status IN ('pending', 'unknown', 'deferred')",
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
    // None: the ledger does not decide it (the order keeps what it has).
    if let Some(s) = derive_financial(&p.gateway, p.authorized, p.captured, p.refunded, p.voided) {
        crate::orders::store::set_financial_status(db, order_id, s.as_str(), now)?;
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

/// A capture of licence keys not yet sent stops (keys it paid for were given
/// back); the keys still held get a new capture (`capture_keys`). One in
/// flight that succeeds refunds what was given back (`settle`).
pub fn stop_key_capture(db: &dyn Db, capture_id: &str, now: DateTime<Utc>) -> Result<()> {
    db.execute(
        "UPDATE payment_transactions SET status = 'cancelled', processed_at = ?1
         WHERE id = ?2 AND fulfillment_order_id IS NULL AND kind = 'capture' AND status = 'pending'
           AND (lease_until IS NULL OR lease_until < ?1)",
        params![ts(now), capture_id],
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

/// After the refund `tx` is in the ledger: sends what is due for the order to
/// the gateway (outside any transaction) and answers the refund and the payment.
pub fn refund_sent(
    db: &dyn Db,
    http: &dyn Http,
    stripe: &StripeConfig,
    order_id: &str,
    tx: &str,
    now: DateTime<Utc>,
) -> Result<Json> {
    process_due(db, http, stripe, Some(&[order_id.to_string()]), now, 50)?;
    let view = payment_view(db, order_id)?;
    let t = view["transactions"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["id"] == tx).cloned())
        .unwrap_or(Json::Null);
    Ok(json!({"refund": t, "payment": view}))
}
