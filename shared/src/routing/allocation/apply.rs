//! Writing a prepared pass: reservation, fulfillment orders, licence keys,
//! backorders and holds, the decision, release and capture.

use super::*;

/// Writes a prepared pass: reservations, fulfillment orders (released at once
/// unless a hold stops it), licence keys, backorders and holds, the decision,
/// the buckets and statuses.
/// `strict`: the plan came from a snapshot read outside the lock; a missed
/// reservation rolls the pass back ([`PassError::StockMoved`]) so it is planned again under
/// the lock. Otherwise a miss (impossible under the lock on SQLite, possible on
/// a server whose reads are not serialised) leaves the units unplaced for the
/// next pass.
pub(crate) fn apply(
    db: &dyn Db,
    p: Prepared,
    trigger: Trigger,
    now: DateTime<Utc>,
    strict: bool,
) -> std::result::Result<Outcome, PassError> {
    let mut out = Outcome::default();
    let actor = "routing";
    // Timeline events and outbox rows of this pass, written in one statement each at the end.
    let mut ev: Vec<(&str, String, Json)> = Vec::new();
    let mut obx: Vec<(&str, Json)> = Vec::new();
    let order_id = p.order_id.as_str();
    let blocked = p.holds.iter().any(|h| blocks_release(h));
    // Released fulfillment orders wait for their capture (capture at release).
    let gated =
        !blocked && p.planned.is_some() && crate::payments::capture::gated(db, &p.order_id)?;
    let mut to_capture: Vec<(String, i64)> = Vec::new();
    let mut released_now: Vec<String> = Vec::new();
    let backorderable = |sku: &str| p.catalog.get(sku).is_some_and(|x| x.backorderable);
    let threshold = |sku: &str| p.catalog.get(sku).map(|x| x.threshold).unwrap_or(0);
    let is_digital = |sku: &str| p.catalog.get(sku).is_some_and(|x| x.digital);
    if p.no_facility
        && !p
            .lines
            .iter()
            .any(|l| l.unplaced > 0 && is_digital(&l.sku) && !blocked)
    {
        // Inventory is not set up: leave the order as it is; the sweep retries.
        return Ok(out);
    }
    // Per line: units newly allocated / released / delivered, and what is left.
    let mut add_alloc: BTreeMap<i64, i64> = BTreeMap::new();
    let mut add_rel: BTreeMap<i64, i64> = BTreeMap::new();
    let mut add_ship: BTreeMap<i64, i64> = BTreeMap::new();
    let mut left: BTreeMap<i64, i64> = BTreeMap::new();
    let mut explanation = json!({});
    let mut fo_ids = Vec::new();
    let mut fo_names = Vec::new();
    let mut held_note: Option<String> = None;
    let mut holds_open = p.holds.len();

    if let Some(planned) = &p.planned {
        let service = planned.service;
        match &planned.decision {
            Err(note) => {
                held_note = Some(note.clone());
                if store::add_hold(db, order_id, HoldReason::IncorrectAddress, note, now, actor)? {
                    holds_open += 1;
                }
                for l in p
                    .lines
                    .iter()
                    .filter(|l| l.unplaced > 0 && !is_digital(&l.sku))
                {
                    left.insert(l.line_no, 0); // held for the address, not for stock
                }
            }
            Ok(decision) => {
                explanation = decision.explanation.clone();
                for d in decision
                    .parts
                    .iter()
                    .flat_map(|x| &x.lines)
                    .chain(&decision.unassigned)
                {
                    *left.entry(d.line_no).or_default() += d.quantity;
                }
                for part in &decision.parts {
                    let mut fo_lines = Vec::new();
                    for d in &part.lines {
                        // The one conditional reservation: no read-then-write race.
                        let got = stock::reserve(db, &d.sku, &part.facility, d.quantity, now)?;
                        if got == Reservation::Short {
                            if strict {
                                return Err(PassError::StockMoved);
                            }
                            continue; // stays unplaced; the next pass retries
                        }
                        *left.get_mut(&d.line_no).expect("line") -= d.quantity;
                        fo_lines.push(d.clone());
                        if threshold(&d.sku) > 0 {
                            crate::inventory::stock::low_stock_check(
                                db,
                                &d.sku,
                                &part.facility,
                                now,
                            )?;
                        }
                    }
                    if fo_lines.is_empty() {
                        continue;
                    }
                    let fo_id = uuid::Uuid::now_v7().to_string();
                    let name =
                        format!("{}-F{}", p.number, p.existing_fos + fo_ids.len() as i64 + 1);
                    let pickup = service == Service::ClickCollect;
                    let status = if blocked {
                        FoStatus::OnHold
                    } else if gated {
                        FoStatus::Scheduled
                    } else {
                        FoStatus::Open
                    };
                    let rows: Vec<fstore::NewLine> = fo_lines
                        .iter()
                        .map(|d| fstore::NewLine {
                            line_no: d.line_no,
                            sku: d.sku.clone(),
                            part_number: p.part_number(&d.sku, &part.facility),
                            quantity: d.quantity,
                        })
                        .collect();
                    fstore::create(
                        db,
                        &fstore::NewFulfillmentOrder {
                            id: &fo_id,
                            order_id,
                            name: &name,
                            facility: &part.facility,
                            status,
                            pickup,
                            lines: &rows,
                        },
                        now,
                    )?;
                    for d in &fo_lines {
                        *if blocked || gated {
                            add_alloc.entry(d.line_no)
                        } else {
                            add_rel.entry(d.line_no)
                        }
                        .or_default() += d.quantity;
                    }
                    let units: i64 = fo_lines.iter().map(|d| d.quantity).sum();
                    if blocked || gated {
                        out.allocated += units;
                        let why = if blocked {
                            "release (on hold)"
                        } else {
                            "its payment capture"
                        };
                        ev.push(("fulfillment_order.created",
                            format!("{name}: {units} unit(s) allocated at {}, waiting for {why}", part.facility),
                            json!({"fulfillment_order": name, "facility": part.facility, "lines": fo_lines, "pickup": pickup})));
                        if gated {
                            to_capture.push((fo_id.clone(), units));
                        }
                    } else {
                        out.allocated += units;
                        out.released += units;
                        let items: Vec<Json> = fo_lines.iter().map(|d| {
                            let name = p.lines.iter().find(|l| l.line_no == d.line_no).map(|l| l.name.clone()).unwrap_or_default();
                            json!({"line_no": d.line_no, "sku": d.sku, "part_number": p.part_number(&d.sku, &part.facility), "name": name, "quantity": d.quantity})
                        }).collect();
                        ev.push(("fulfillment_order.released",
                            format!(
                                "{name}: {units} unit(s) allocated at {} and released",
                                part.facility
                            ),
                            json!({"fulfillment_order": name, "facility": part.facility, "units": units, "lines": fo_lines, "pickup": pickup})));
                        let payload = crate::fulfillment::release::released_payload(
                            &fo_id,
                            &name,
                            order_id,
                            &p.number,
                            &part.facility,
                            pickup,
                            &p.email,
                            &p.customer_name,
                            &p.doc,
                            &items,
                        );
                        obx.push(("fulfillment_order.released", payload));
                        released_now.push(fo_id.clone());
                    }
                    fo_ids.push(fo_id);
                    fo_names.push(name);
                }
            }
        }
    }

    // Licence keys: one per unit, claimed in one conditional statement.
    let digital: Vec<&Line> = p
        .lines
        .iter()
        .filter(|l| l.unplaced > 0 && is_digital(&l.sku) && !blocked)
        .collect();
    for l in &digital {
        let got = stock::claim_keys(db, &l.sku, order_id, l.line_no, l.unplaced, now)?;
        left.insert(l.line_no, l.unplaced - got);
        if got > 0 {
            let keys: Vec<String> = db
                .execute(
                    "SELECT key FROM license_keys WHERE order_id = ? AND line_no = ? AND assigned_at = ? ORDER BY id",
                    params![order_id, l.line_no, ts(now)],
                )?
                .iter()
                .map(|k| k.str("key"))
                .collect();
            *add_ship.entry(l.line_no).or_default() += got;
            out.keys += got;
            ev.push((
                "license.assigned",
                format!("{got} licence key(s) assigned for {}", l.sku),
                json!({"line_no": l.line_no, "sku": l.sku, "quantity": got}),
            ));
            ev.push((
                "shipment.shipped",
                format!("{got} digital unit(s) of {} delivered by e-mail", l.sku),
                json!({"facility": "digital", "units": got, "partial": got < l.unplaced}),
            ));
            obx.push(("license.assigned", json!({"order_id": order_id, "number": p.number, "email": p.email, "customer_name": p.customer_name,
                       "line_no": l.line_no, "sku": l.sku, "name": l.name, "quantity": got,
                       "license_key": keys.join(", "), "license_keys": keys})));
            crate::inventory::stock::pool_low_check(db, &l.sku, now)?;
        }
    }

    // What is left: backordered where the SKU allows it, else held out of stock.
    let mut newly_backordered = Vec::new();
    let mut short = Vec::new();
    let mut new_backordered: BTreeMap<i64, i64> = BTreeMap::new();
    for l in &p.lines {
        let Some(&rest) = left.get(&l.line_no) else {
            continue;
        };
        let target = if backorderable(&l.sku) { rest } else { 0 };
        if target != l.buckets.backordered {
            new_backordered.insert(l.line_no, target);
        }
        if target > l.buckets.backordered {
            newly_backordered.push(json!({"line_no": l.line_no, "sku": l.sku, "name": l.name, "quantity": target - l.buckets.backordered}));
        }
        out.backordered += target;
        if !backorderable(&l.sku) && rest > 0 && held_note.is_none() {
            short.push(format!("{} x {}", rest, l.sku));
            out.held += rest;
        }
    }
    if !newly_backordered.is_empty() {
        let units: i64 = newly_backordered
            .iter()
            .map(|b| b["quantity"].as_i64().unwrap_or(0))
            .sum();
        ev.push((
            "order.backordered",
            format!("{units} unit(s) backordered"),
            json!({"lines": newly_backordered}),
        ));
        obx.push(("order.backordered", json!({"order_id": order_id, "number": p.number, "email": p.email, "customer_name": p.customer_name, "lines": newly_backordered})));
    }
    let had_stock_hold = p.holds.iter().any(|h| h == HoldReason::OutOfStock.as_str());
    if !short.is_empty() {
        if store::add_hold(
            db,
            order_id,
            HoldReason::OutOfStock,
            &format!("no facility can supply {}", short.join(", ")),
            now,
            actor,
        )? {
            holds_open += 1;
        }
    } else if had_stock_hold
        && !left.is_empty()
        && store::release_hold(
            db,
            order_id,
            HoldReason::OutOfStock,
            now,
            actor,
            "every unit is now placed or backordered",
        )?
    {
        holds_open -= 1;
    }

    // The buckets, in one statement.
    let touched: BTreeSet<i64> = add_alloc
        .keys()
        .chain(add_rel.keys())
        .chain(add_ship.keys())
        .chain(new_backordered.keys())
        .copied()
        .collect();
    let mut buckets: Vec<crate::orders::model::Buckets> =
        p.lines.iter().map(|l| l.buckets.clone()).collect();
    if !touched.is_empty() {
        lines::place(
            db,
            order_id,
            &lines::Placement {
                allocated: add_alloc.clone(),
                released: add_rel.clone(),
                shipped: add_ship.clone(),
                backordered: new_backordered.clone(),
            },
        )?;
        for (i, l) in p.lines.iter().enumerate() {
            let b = &mut buckets[i];
            b.allocated += add_alloc.get(&l.line_no).copied().unwrap_or(0);
            b.released += add_rel.get(&l.line_no).copied().unwrap_or(0);
            b.shipped += add_ship.get(&l.line_no).copied().unwrap_or(0);
            b.delivered += add_ship.get(&l.line_no).copied().unwrap_or(0);
            if let Some(v) = new_backordered.get(&l.line_no) {
                b.backordered = *v;
            }
        }
    }

    let placed = out.allocated + out.keys;
    let unchanged =
        placed == 0 && newly_backordered.is_empty() && (short.is_empty() || had_stock_hold);
    let first = unchanged
        && db
            .execute(
                "SELECT 1 FROM routing_decisions WHERE order_id = ? LIMIT 1",
                params![order_id],
            )?
            .is_empty();
    if (!unchanged || first) && !left.is_empty() {
        let summary = format!(
            "{} unit(s) allocated{}{}{}{}{}",
            out.allocated,
            if fo_names.is_empty() {
                String::new()
            } else {
                format!(" in {}", fo_names.join(", "))
            },
            if out.released > 0 {
                " and released".to_string()
            } else {
                String::new()
            },
            if out.keys > 0 {
                format!(", {} licence key(s)", out.keys)
            } else {
                String::new()
            },
            if out.backordered > 0 {
                format!(", {} backordered", out.backordered)
            } else {
                String::new()
            },
            if out.held > 0 {
                format!(", {} out of stock (held)", out.held)
            } else {
                String::new()
            },
        );
        let mut ex = explanation;
        ex["digital"] = json!(digital
            .iter()
            .map(
                |l| json!({"line_no": l.line_no, "sku": l.sku, "wanted": l.unplaced,
            "assigned": l.unplaced - left.get(&l.line_no).copied().unwrap_or(0)})
            )
            .collect::<Vec<_>>());
        db.execute(
            "INSERT INTO routing_decisions (order_id, at, trigger, summary, explanation) VALUES (?, ?, ?, ?, ?)",
            params![order_id, ts(now), trigger.as_str(), summary.clone(), ex.to_string()],
        )?;
        let decision_id = db.last_insert_rowid();
        fstore::link_decision(db, &fo_ids, decision_id)?;
        ev.push((if trigger == Trigger::Backorder {
                "backorder.allocated"
            } else {
                "routing.decided"
            },
            summary.clone(),
            json!({"decision_id": decision_id, "trigger": trigger.as_str(), "allocated": out.allocated, "released": out.released,
                   "keys": out.keys, "backordered": out.backordered, "held": out.held})));
        out.changed = true;
    }
    store::record_batch(db, order_id, now, actor, &ev, &obx)?;
    for fo_id in &released_now {
        crate::fulfillment::on_released(db, fo_id, now)?;
    }
    // Fulfillment orders allocated earlier whose hold is gone.
    if !blocked && p.has_held_work {
        out.released += release(db, order_id, now)?;
        out.changed = true;
        store::refresh_status(db, order_id, now)?;
    } else if out.changed || holds_open != p.holds.len() {
        store::write_status(db, order_id, &buckets, holds_open, p.closed, now)?;
    }
    // Capture what was just allocated; ledger gateways settle (and release) here.
    for (fo_id, units) in &to_capture {
        match crate::payments::capture::capture_fulfillment_order(db, fo_id, now)? {
            crate::payments::capture::Gate::Released => out.released += units,
            crate::payments::capture::Gate::Waiting => out.awaiting_capture += units,
            crate::payments::capture::Gate::Declined => {}
        }
    }
    Ok(out)
}
