//! Cancelling units: what each line can still give up (`Room`), units in no
//! fulfillment order first, then fulfillment orders not being worked on
//! (newest first), centers asked to cancel what they hold, and the money
//! settled (refund at capture shares, void what is no longer needed).

use super::*;

/// Cancels units (all cancellable ones when `lines` is absent).
pub fn cancel(
    db: &dyn Db,
    order_id: &str,
    v: &Json,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Json> {
    cancel_units(db, order_id, v, actor, now, true)
}

pub(crate) fn cancel_units(
    db: &dyn Db,
    order_id: &str,
    v: &Json,
    actor: &str,
    now: DateTime<Utc>,
    settle: bool,
) -> Result<Json> {
    if !v.is_object() {
        return Err(Error::bad_request("the body must be a JSON object"));
    }
    crate::routing::allocation::worker::take_up_order(db, order_id)?;
    let mut errs = FieldError::unknown_fields(v, &["lines", "reason"]);
    let reason = v["reason"]
        .as_str()
        .unwrap_or("cancelled by request")
        .chars()
        .take(500)
        .collect::<String>();
    let lines = db.execute(
        "SELECT line_no, sku, qty_ordered, qty_cancelled, qty_allocated, qty_released, qty_shipped FROM order_lines WHERE order_id = ? ORDER BY line_no",
        params![order_id],
    )?;
    if lines.is_empty() {
        return Err(Error::not_found("no such order"));
    }
    let room = Room::of(db, order_id)?;
    let wanted = wanted_units(v, &lines, &room, &mut errs)?;
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let order = order_row(db, order_id)?;
    let number = order.first().map(|r| r.str("number")).unwrap_or_default();
    let mut summary = Vec::new();
    let mut requested_from_fc = Vec::new();
    for (&line_no, &q) in &wanted {
        let l = lines
            .iter()
            .find(|l| l.i64("line_no") == line_no)
            .expect("validated");
        cancel_line(db, order_id, &l, q, now, &mut requested_from_fc)?;
        summary.push(json!({"line_no": line_no, "quantity": q}));
    }
    for (fo_id, name, facility) in &requested_from_fc {
        record_event(
            db,
            order_id,
            now,
            actor,
            "fulfillment_request.cancellation_requested",
            &format!("{name}: cancellation requested from {facility}"),
            json!({"fulfillment_order": name, "facility": facility}),
        )?;
        enqueue(
            db,
            "fulfillment_order.cancellation_requested",
            Some(order_id),
            json!({"order_id": order_id, "number": number, "fulfillment_order_id": fo_id, "fulfillment_order": name,
                   "facility": facility, "reason": reason}),
            now,
        )?;
    }
    record_event(
        db,
        order_id,
        now,
        actor,
        "order.cancelled",
        &format!(
            "Cancelled {}: {reason}",
            summary
                .iter()
                .map(|s| format!("{} x line {}", s["quantity"], s["line_no"]))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        json!({"reason": reason, "lines": summary, "cancellation_requested": requested_from_fc.iter().map(|x| &x.1).collect::<Vec<_>>()}),
    )?;
    enqueue(
        db,
        "order.cancelled",
        Some(order_id),
        json!({"order_id": order_id, "number": number, "reason": reason, "lines": summary}),
        now,
    )?;
    let money = if settle {
        settle_money(db, order_id, &reason, actor, now)?
    } else {
        Json::Null
    };
    // Keys still held whose capture stopped with the ones given back.
    crate::payments::capture::capture_keys(db, order_id, now)?;
    store::refresh_status(db, order_id, now)?;
    Ok(
        json!({"cancelled": summary, "cancellation_requested": requested_from_fc.iter().map(|x| &x.1).collect::<Vec<_>>(), "payment": money}),
    )
}

/// What each line of an order can still give up: everything not shipped and
/// not being picked or packed.
pub(crate) struct Room {
    pub(crate) busy: BTreeMap<i64, i64>,
    pub(crate) shipped: BTreeMap<i64, i64>,
}

impl Room {
    fn of(db: &dyn Db, order_id: &str) -> Result<Room> {
        let busy: BTreeMap<i64, i64> = db
            .execute(
                "SELECT fl.line_no, SUM(fl.quantity) AS n FROM fulfillment_order_lines fl JOIN fulfillment_orders f ON f.id = fl.fulfillment_order_id
                 WHERE f.order_id = ? AND f.status IN ('open', 'in_progress')
                   AND (EXISTS (SELECT 1 FROM fulfillment_jobs j WHERE j.fulfillment_order_id = f.id AND (j.kind <> 'pick' OR j.status <> 'open'))
                        OR f.status = 'in_progress')
                   AND NOT EXISTS (SELECT 1 FROM facilities x WHERE x.id = f.facility_id AND x.type = 'fulfillment_center')
                 GROUP BY fl.line_no",
                params![order_id],
            )?
            .iter()
            .map(|r| (r.i64("line_no"), r.i64("n")))
            .collect();
        let shipped: BTreeMap<i64, i64> = db
            .execute(
                "SELECT sl.line_no, SUM(sl.quantity) AS n FROM shipment_lines sl JOIN shipments s ON s.id = sl.shipment_id
                 JOIN fulfillment_orders f ON f.id = s.fulfillment_order_id
                 WHERE s.order_id = ? AND f.status IN ('open', 'in_progress') GROUP BY sl.line_no",
                params![order_id],
            )?
            .iter()
            .map(|r| (r.i64("line_no"), r.i64("n")))
            .collect();
        Ok(Room { busy, shipped })
    }

    fn cancellable(&self, l: &crate::kernel::db::Row) -> i64 {
        let n = l.i64("line_no");
        // Units of a partly shipped fulfillment order that shipped are in qty_shipped, not in busy.
        let in_work = (self.busy.get(&n).copied().unwrap_or(0)
            - self.shipped.get(&n).copied().unwrap_or(0))
        .max(0);
        (l.i64("qty_ordered") - l.i64("qty_cancelled") - l.i64("qty_shipped") - in_work).max(0)
    }
}

/// The units a cancellation asks for, per line (every cancellable unit when
/// it names no lines); field errors go to `errs`.
pub(crate) fn wanted_units(
    v: &Json,
    lines: &crate::kernel::db::Rows,
    room: &Room,
    errs: &mut Vec<FieldError>,
) -> Result<BTreeMap<i64, i64>> {
    let busy = &room.busy;
    let cancellable = |l: &crate::kernel::db::Row| room.cancellable(l);
    let mut wanted: BTreeMap<i64, i64> = BTreeMap::new();
    match &v["lines"] {
        Json::Null => {
            for l in lines.iter() {
                let c = cancellable(&l);
                if c > 0 {
                    wanted.insert(l.i64("line_no"), c);
                }
            }
            if wanted.is_empty() && errs.is_empty() {
                return Err(Error::conflict(
                    "nothing left to cancel: every unit is shipped, delivered, or being picked or packed (return it instead)",
                ));
            }
        }
        Json::Array(a) if !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                let p = format!("/lines/{i}");
                let (Some(n), Some(q)) = (x["line_no"].as_i64(), x["quantity"].as_i64()) else {
                    errs.push(FieldError::new(p, "needs an integer line_no and quantity"));
                    continue;
                };
                let Some(l) = lines.iter().find(|l| l.i64("line_no") == n) else {
                    errs.push(FieldError::new(
                        format!("{p}/line_no"),
                        format!("the order has no line {n}"),
                    ));
                    continue;
                };
                let c = cancellable(&l) - wanted.get(&n).copied().unwrap_or(0);
                if q <= 0 {
                    errs.push(FieldError::new(format!("{p}/quantity"), "must be positive"));
                } else if q > c {
                    let shipped = l.i64("qty_shipped");
                    let conflict = c == 0 && (shipped > 0 || busy.contains_key(&n));
                    let msg = format!(
                        "{q} asked, {c} cancellable ({shipped} shipped or delivered, the rest being picked or packed: return them instead)"
                    );
                    if conflict && a.len() == 1 {
                        return Err(Error::conflict(msg));
                    }
                    errs.push(FieldError::new(format!("{p}/quantity"), msg));
                } else {
                    *wanted.entry(n).or_default() += q;
                }
            }
        }
        _ => errs.push(FieldError::new(
            "/lines",
            "must be a non-empty array of {line_no, quantity}",
        )),
    }
    Ok(wanted)
}

/// Cancels `q` units of one line: units in no fulfillment order first, then
/// units in fulfillment orders not being worked on, newest first; a center
/// that has them is asked to cancel (`requested`).
pub(crate) fn cancel_line(
    db: &dyn Db,
    order_id: &str,
    l: &crate::kernel::db::Row,
    mut q: i64,
    now: DateTime<Utc>,
    requested: &mut Vec<(String, String, String)>,
) -> Result<()> {
    let line_no = l.i64("line_no");
    // 1. Units in no fulfillment order (unplaced, backordered).
    let unplaced = (l.i64("qty_ordered")
        - l.i64("qty_cancelled")
        - l.i64("qty_allocated")
        - l.i64("qty_released")
        - l.i64("qty_shipped"))
    .max(0);
    let take = q.min(unplaced);
    if take > 0 {
        lines::cancel_unplaced(db, order_id, line_no, take)?;
        q -= take;
    }
    // 2. Licence keys held for the order, waiting for their capture: back to
    // the pool; the capture stops (or, in flight, refunds them when it settles).
    if q > 0 {
        let (n, captures) =
            crate::inventory::stock::give_back_keys(db, order_id, Some(line_no), q)?;
        if n > 0 {
            lines::cancel_placed(db, order_id, line_no, n, lines::Placed::Allocated)?;
            for c in &captures {
                crate::payments::capture::stop_key_capture(db, c, now)?;
            }
            q -= n;
        }
    }
    // 3. Units in fulfillment orders not being worked on, newest first.
    if q > 0 {
        let fos = db.execute(
            "SELECT f.id, f.name, f.status, f.facility_id, fl.quantity, fl.sku,
                    (SELECT type FROM facilities x WHERE x.id = f.facility_id) AS ftype
             FROM fulfillment_orders f JOIN fulfillment_order_lines fl ON fl.fulfillment_order_id = f.id
             WHERE f.order_id = ? AND fl.line_no = ? AND f.status IN ('on_hold', 'scheduled', 'open')
             ORDER BY CASE f.status WHEN 'on_hold' THEN 0 WHEN 'scheduled' THEN 1 ELSE 2 END, f.name DESC",
            params![order_id, line_no],
        )?;
        for f in fos.iter() {
            if q == 0 {
                break;
            }
            let fo_id = f.str("id");
            let fs = f.str("status");
            if f.str("ftype") == "fulfillment_center" && fs == "open" {
                // The center has it: ask it to cancel.
                if fstore::set_request_status(db, &fo_id, "cancellation_requested", now)? {
                    requested.push((fo_id.clone(), f.str("name"), f.str("facility_id")));
                }
                q -= q.min(f.i64("quantity"));
                continue;
            }
            let take = q.min(f.i64("quantity"));
            remove_from_fo(
                db,
                order_id,
                &fo_id,
                line_no,
                &f.str("sku"),
                &f.str("facility_id"),
                take,
                &fs,
                now,
            )?;
            q -= take;
        }
    }
    Ok(())
}

/// Takes `q` units of a line out of a fulfillment order that is not being
/// worked on: the reservation is given back, the bucket moves to cancelled,
/// the pick list follows, an empty fulfillment order is cancelled.
#[allow(clippy::too_many_arguments)]
pub(crate) fn remove_from_fo(
    db: &dyn Db,
    order_id: &str,
    fo_id: &str,
    line_no: i64,
    sku: &str,
    facility: &str,
    q: i64,
    fo_status: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    crate::inventory::stock::give_back(db, sku, facility, q, now)?;
    let from = if fo_status == "open" {
        lines::Placed::Released
    } else {
        lines::Placed::Allocated
    };
    lines::cancel_placed(db, order_id, line_no, q, from)?;
    fstore::remove_units(db, fo_id, line_no, q)?;
    // The pick list (not started) follows.
    fstore::shrink_open_pick_list(db, fo_id, line_no, q, now)?;
    let left = fstore::line_count(db, fo_id)?;
    if left == 0 {
        set_status(db, fo_id, FoStatus::Cancelled, now)?;
        // A capture not yet sent stops; one in flight that succeeds is refunded (capture::settle).
        crate::payments::capture::stop_capture(db, fo_id, now)?;
    }
    Ok(())
}

/// After a cancellation: captured units no longer ordered are refunded at their
/// capture shares; the authorization no longer needed is voided.
pub(crate) fn settle_money(
    db: &dyn Db,
    order_id: &str,
    reason: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Json> {
    let captured: BTreeMap<i64, i64> = db
        .execute(
            "SELECT tl.line_no, SUM(tl.units) AS n FROM payment_transaction_lines tl JOIN payment_transactions t ON t.id = tl.transaction_id
             WHERE t.order_id = ? AND t.kind = 'capture' AND t.status = 'succeeded' GROUP BY tl.line_no",
            params![order_id],
        )?
        .iter()
        .map(|r| (r.i64("line_no"), r.i64("n")))
        .collect();
    let refunded: BTreeMap<i64, i64> = db
        .execute(
            "SELECT tl.line_no, SUM(tl.units) AS n FROM payment_transaction_lines tl JOIN payment_transactions t ON t.id = tl.transaction_id
             WHERE t.order_id = ? AND t.kind = 'refund' AND t.status IN ('pending', 'succeeded', 'unknown') GROUP BY tl.line_no",
            params![order_id],
        )?
        .iter()
        .map(|r| (r.i64("line_no"), r.i64("n")))
        .collect();
    let live: BTreeMap<i64, i64> = db
        .execute(
            "SELECT line_no, qty_ordered - qty_cancelled - qty_returned AS n FROM order_lines WHERE order_id = ?",
            params![order_id],
        )?
        .iter()
        .map(|r| (r.i64("line_no"), r.i64("n")))
        .collect();
    let mut refund_lines = BTreeMap::new();
    for (l, c) in &captured {
        let excess = c - refunded.get(l).copied().unwrap_or(0) - live.get(l).copied().unwrap_or(0);
        if excess > 0 {
            refund_lines.insert(*l, excess);
        }
    }
    let mut out = json!({});
    if !refund_lines.is_empty() {
        let whole = live.values().all(|n| *n == 0);
        let req = crate::payments::capture::RefundRequest {
            lines: refund_lines,
            shipping: whole,
            amount: None,
            reason: format!("cancelled: {reason}"),
        };
        let tx = match crate::payments::capture::refund(db, order_id, &req, actor, now) {
            Ok(tx) => Some(tx),
            // Part of the money went back already without lines (an amount
            // refund, or the shop's own): give back what is left, no more.
            Err(e) if e.status() == 422 => {
                let left = db
                    .execute(
                        "SELECT captured_minor - refunded_minor - (SELECT COALESCE(SUM(amount_minor), 0) FROM payment_transactions
                            WHERE order_id = ?1 AND kind = 'refund' AND status IN ('pending', 'unknown')) AS n
                         FROM payments WHERE order_id = ?1",
                        params![order_id],
                    )?
                    .first()
                    .map(|r| r.i64("n"))
                    .unwrap_or(0);
                if left > 0 {
                    let req = crate::payments::capture::RefundRequest {
                        amount: Some(left),
                        reason: req.reason.clone(),
                        ..Default::default()
                    };
                    Some(crate::payments::capture::refund(
                        db, order_id, &req, actor, now,
                    )?)
                } else {
                    None
                }
            }
            Err(e) => return Err(e),
        };
        out["refund_transaction_id"] = json!(tx);
    }
    let voided = crate::payments::capture::void_unneeded(db, order_id, reason, now)?;
    out["voided_minor"] = json!(voided);
    Ok(out)
}

/// A center accepted a cancellation request: its unshipped units are cancelled
/// (reservation back, buckets, money).
pub fn cancellation_accepted(db: &dyn Db, fo_id: &str, now: DateTime<Utc>) -> Result<()> {
    let f = db.execute(
        "SELECT order_id, facility_id, status FROM fulfillment_orders WHERE id = ?",
        params![fo_id],
    )?;
    let Some(f) = f.first() else { return Ok(()) };
    if !matches!(f.str("status").as_str(), "open" | "in_progress") {
        return Ok(());
    }
    let order_id = f.str("order_id");
    let shipped: BTreeMap<i64, i64> = db
        .execute(
            "SELECT sl.line_no, SUM(sl.quantity) AS n FROM shipment_lines sl JOIN shipments s ON s.id = sl.shipment_id
             WHERE s.fulfillment_order_id = ? GROUP BY sl.line_no",
            params![fo_id],
        )?
        .iter()
        .map(|r| (r.i64("line_no"), r.i64("n")))
        .collect();
    let lines = db.execute(
        "SELECT line_no, sku, quantity FROM fulfillment_order_lines WHERE fulfillment_order_id = ?",
        params![fo_id],
    )?;
    for l in lines.iter() {
        let open = l.i64("quantity") - shipped.get(&l.i64("line_no")).copied().unwrap_or(0);
        if open > 0 {
            remove_from_fo(
                db,
                &order_id,
                fo_id,
                l.i64("line_no"),
                &l.str("sku"),
                &f.str("facility_id"),
                open,
                "open",
                now,
            )?;
        }
    }
    let shipped = !db
        .execute(
            "SELECT 1 FROM shipments WHERE fulfillment_order_id = ? LIMIT 1",
            params![fo_id],
        )?
        .is_empty();
    let to = if shipped {
        FoStatus::Closed
    } else {
        FoStatus::Cancelled
    };
    set_status_from(db, fo_id, &[FoStatus::Open, FoStatus::InProgress], to, now)?;
    settle_money(
        db,
        &order_id,
        "the fulfillment center accepted the cancellation",
        "fulfillment",
        now,
    )?;
    store::refresh_status(db, &order_id, now)?;
    Ok(())
}
