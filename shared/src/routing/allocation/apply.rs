//! Writing a prepared pass: reservation, fulfillment orders, licence keys,
//! backorders and holds, the decision, release and capture. [`apply`] runs the
//! steps in that order; each step is one method of [`Pass`], which collects the
//! pass's bucket changes, timeline events and outbox rows so that each is
//! written in one statement at the end.

use super::*;

/// What one pass has done so far.
struct Pass<'a> {
    p: &'a Prepared,
    now: DateTime<Utc>,
    out: Outcome,
    /// Timeline events and outbox rows, written in one statement each at the end.
    ev: Vec<(&'static str, String, Json)>,
    obx: Vec<(&'static str, Json)>,
    /// A hold stops release (the fulfillment orders wait `on_hold`).
    blocked: bool,
    /// Released fulfillment orders wait for their capture (capture at release).
    gated: bool,
    /// Per line: units newly allocated / released / shipped (licence keys), and what is left.
    add_alloc: BTreeMap<i64, i64>,
    add_rel: BTreeMap<i64, i64>,
    add_ship: BTreeMap<i64, i64>,
    left: BTreeMap<i64, i64>,
    new_backordered: BTreeMap<i64, i64>,
    newly_backordered: Vec<Json>,
    short: Vec<String>,
    explanation: Json,
    fo_ids: Vec<String>,
    fo_names: Vec<String>,
    held_note: Option<String>,
    holds_open: usize,
    to_capture: Vec<(String, BTreeMap<i64, i64>)>,
    released_now: Vec<String>,
    digital: Vec<&'a Line>,
    /// The order's units are captured at release (a payment to capture, no
    /// hold): fulfillment orders wait `scheduled` and claimed keys wait held.
    pays_at_release: bool,
}

const ACTOR: &str = "routing";

impl<'a> Pass<'a> {
    fn backorderable(&self, sku: &str) -> bool {
        self.p.catalog.get(sku).is_some_and(|x| x.backorderable)
    }

    fn threshold(&self, sku: &str) -> i64 {
        self.p.catalog.get(sku).map(|x| x.threshold).unwrap_or(0)
    }

    fn is_digital(&self, sku: &str) -> bool {
        self.p.catalog.get(sku).is_some_and(|x| x.digital)
    }

    fn order_id(&self) -> &'a str {
        self.p.order_id.as_str()
    }

    /// The engine found no destination: the order waits for a corrected address.
    fn hold_for_address(&mut self, db: &dyn Db, note: &str) -> Result<()> {
        self.held_note = Some(note.to_string());
        if store::add_hold(
            db,
            self.order_id(),
            HoldReason::IncorrectAddress,
            note,
            self.now,
            ACTOR,
        )? {
            self.holds_open += 1;
        }
        let waiting: Vec<i64> = (self.p.lines.iter())
            .filter(|l| l.unplaced > 0 && !self.is_digital(&l.sku))
            .map(|l| l.line_no)
            .collect();
        for line_no in waiting {
            self.left.insert(line_no, 0); // held for the address, not for stock
        }
        Ok(())
    }

    /// Reserves each part of the decision and creates its fulfillment order.
    fn place(
        &mut self,
        db: &dyn Db,
        decision: &engine::Decision,
        service: Service,
        strict: bool,
    ) -> std::result::Result<(), PassError> {
        self.explanation = decision.explanation.clone();
        for d in decision
            .parts
            .iter()
            .flat_map(|x| &x.lines)
            .chain(&decision.unassigned)
        {
            *self.left.entry(d.line_no).or_default() += d.quantity;
        }
        for part in &decision.parts {
            let mut fo_lines = Vec::new();
            // The part's conditional reservations: no read-then-write race.
            let wanted: Vec<(&str, i64)> = (part.lines.iter())
                .map(|d| (d.sku.as_str(), d.quantity))
                .collect();
            let got = stock::reserve_at(db, &part.facility, &wanted, self.now)?;
            for (d, got) in part.lines.iter().zip(got) {
                if got == Reservation::Short {
                    if strict {
                        return Err(PassError::StockMoved);
                    }
                    continue; // stays unplaced; the next pass retries
                }
                *self.left.get_mut(&d.line_no).expect("line") -= d.quantity;
                fo_lines.push(d.clone());
                if self.threshold(&d.sku) > 0 {
                    stock::low_stock_check(db, &d.sku, &part.facility, self.now)?;
                }
            }
            if !fo_lines.is_empty() {
                self.create_fulfillment_order(
                    db,
                    &part.facility,
                    &fo_lines,
                    service == Service::ClickCollect,
                )?;
            }
        }
        Ok(())
    }

    /// One fulfillment order for the units reserved at `facility`: released at
    /// once, or waiting for a hold to lift or for its capture.
    fn create_fulfillment_order(
        &mut self,
        db: &dyn Db,
        facility: &str,
        fo_lines: &[Demand],
        pickup: bool,
    ) -> Result<()> {
        let p = self.p;
        let (order_id, now) = (self.order_id(), self.now);
        let fo_id = uuid::Uuid::now_v7().to_string();
        let name = format!(
            "{}-F{}",
            p.number,
            p.existing_fos + self.fo_ids.len() as i64 + 1
        );
        let waiting = self.blocked || self.gated;
        let status = if self.blocked {
            FoStatus::OnHold
        } else if self.gated {
            FoStatus::Scheduled
        } else {
            FoStatus::Open
        };
        let rows: Vec<fstore::NewLine> = fo_lines
            .iter()
            .map(|d| fstore::NewLine {
                line_no: d.line_no,
                sku: d.sku.clone(),
                part_number: p.part_number(&d.sku, facility),
                quantity: d.quantity,
            })
            .collect();
        fstore::create(
            db,
            &fstore::NewFulfillmentOrder {
                id: &fo_id,
                order_id,
                name: &name,
                facility,
                status,
                pickup,
                lines: &rows,
            },
            now,
        )?;
        for d in fo_lines {
            let bucket = if waiting {
                &mut self.add_alloc
            } else {
                &mut self.add_rel
            };
            *bucket.entry(d.line_no).or_default() += d.quantity;
        }
        let units: i64 = fo_lines.iter().map(|d| d.quantity).sum();
        self.out.allocated += units;
        if waiting {
            let why = if self.blocked {
                "release (on hold)"
            } else {
                "its payment capture"
            };
            self.ev.push((
                "fulfillment_order.created",
                format!("{name}: {units} unit(s) allocated at {facility}, waiting for {why}"),
                json!({"fulfillment_order": name, "facility": facility, "lines": fo_lines, "pickup": pickup}),
            ));
            if self.gated {
                let mut per_line = BTreeMap::new();
                for d in fo_lines {
                    *per_line.entry(d.line_no).or_insert(0) += d.quantity;
                }
                self.to_capture.push((fo_id.clone(), per_line));
            }
        } else {
            self.out.released += units;
            let items: Vec<Json> = rows
                .iter()
                .map(|d| {
                    let name = p.lines.iter().find(|l| l.line_no == d.line_no).map(|l| l.name.clone()).unwrap_or_default();
                    json!({"line_no": d.line_no, "sku": d.sku, "part_number": d.part_number, "name": name, "quantity": d.quantity})
                })
                .collect();
            self.ev.push((
                "fulfillment_order.released",
                format!("{name}: {units} unit(s) allocated at {facility} and released"),
                json!({"fulfillment_order": name, "facility": facility, "units": units, "lines": fo_lines, "pickup": pickup}),
            ));
            let payload = crate::fulfillment::release::released_payload(
                &fo_id,
                &name,
                order_id,
                &p.number,
                facility,
                pickup,
                &p.email,
                &p.customer_name,
                &p.doc,
                &items,
            );
            self.obx.push(("fulfillment_order.released", payload));
            self.released_now.push(fo_id.clone());
        }
        self.fo_ids.push(fo_id);
        self.fo_names.push(name);
        Ok(())
    }

    /// Licence keys: one per unit, claimed in one conditional statement. When
    /// the order's units are captured at release, the claimed keys wait (held
    /// for the order, allocated) for the capture [`Pass::finish`] opens and go
    /// to the customer when it succeeds; otherwise they are delivered now.
    fn assign_keys(&mut self, db: &dyn Db) -> Result<()> {
        let p = self.p;
        let (order_id, now) = (self.order_id(), self.now);
        self.digital = p
            .lines
            .iter()
            .filter(|l| l.unplaced > 0 && self.is_digital(&l.sku) && !self.blocked)
            .collect();
        if self.digital.is_empty() {
            return Ok(());
        }
        let to = crate::fulfillment::digital::Recipient {
            order_id,
            number: &p.number,
            email: &p.email,
            customer_name: &p.customer_name,
        };
        for l in self.digital.clone() {
            let got = stock::claim_keys(db, &l.sku, order_id, l.line_no, l.unplaced, now)?;
            self.left.insert(l.line_no, l.unplaced - got);
            if got == 0 {
                continue;
            }
            self.out.keys += got;
            if self.pays_at_release {
                *self.add_alloc.entry(l.line_no).or_default() += got;
                self.ev.push(crate::fulfillment::digital::held_message(
                    l.line_no, &l.sku, got,
                ));
            } else {
                let keys = stock::deliver_keys(db, order_id, Some(l.line_no), None, now)?;
                *self.add_ship.entry(l.line_no).or_default() += keys.len() as i64;
                let (ev, obx) = crate::fulfillment::digital::messages(
                    &to,
                    &crate::fulfillment::digital::LineKeys {
                        line_no: l.line_no,
                        sku: &l.sku,
                        name: &l.name,
                        keys: keys.into_iter().map(|k| k.key).collect(),
                        partial: got < l.unplaced,
                    },
                );
                self.ev.extend(ev);
                self.obx.push(obx);
            }
            stock::pool_low_check(db, &l.sku, now)?;
        }
        Ok(())
    }

    /// What is left: backordered where the SKU allows it, else held out of stock.
    fn settle_leftovers(&mut self, db: &dyn Db) -> Result<()> {
        let p = self.p;
        let (order_id, now) = (self.order_id(), self.now);
        for l in &p.lines {
            let Some(&rest) = self.left.get(&l.line_no) else {
                continue;
            };
            let target = if self.backorderable(&l.sku) { rest } else { 0 };
            if target != l.buckets.backordered {
                self.new_backordered.insert(l.line_no, target);
            }
            if target > l.buckets.backordered {
                self.newly_backordered.push(json!({"line_no": l.line_no, "sku": l.sku, "name": l.name, "quantity": target - l.buckets.backordered}));
            }
            self.out.backordered += target;
            if !self.backorderable(&l.sku) && rest > 0 && self.held_note.is_none() {
                self.short.push(format!("{} x {}", rest, l.sku));
                self.out.held += rest;
            }
        }
        if !self.newly_backordered.is_empty() {
            let units: i64 = self
                .newly_backordered
                .iter()
                .map(|b| b["quantity"].as_i64().unwrap_or(0))
                .sum();
            self.ev.push((
                "order.backordered",
                format!("{units} unit(s) backordered"),
                json!({"lines": self.newly_backordered}),
            ));
            self.obx.push(("order.backordered", json!({"order_id": order_id, "number": p.number, "email": p.email, "customer_name": p.customer_name, "lines": self.newly_backordered})));
        }
        if !self.short.is_empty() {
            let note = format!("no facility can supply {}", self.short.join(", "));
            if store::add_hold(db, order_id, HoldReason::OutOfStock, &note, now, ACTOR)? {
                self.holds_open += 1;
            }
        } else if self.had_stock_hold()
            && !self.left.is_empty()
            && store::release_hold(
                db,
                order_id,
                HoldReason::OutOfStock,
                now,
                ACTOR,
                "every unit is now placed or backordered",
            )?
        {
            self.holds_open -= 1;
        }
        Ok(())
    }

    fn had_stock_hold(&self) -> bool {
        self.p
            .holds
            .iter()
            .any(|h| h == HoldReason::OutOfStock.as_str())
    }

    /// The buckets, in one statement; returns the lines' buckets after the pass.
    fn write_buckets(&self, db: &dyn Db) -> Result<Vec<crate::orders::model::Buckets>> {
        let mut buckets: Vec<crate::orders::model::Buckets> =
            self.p.lines.iter().map(|l| l.buckets.clone()).collect();
        let placement = lines::Placement {
            allocated: self.add_alloc.clone(),
            released: self.add_rel.clone(),
            shipped: self.add_ship.clone(),
            backordered: self.new_backordered.clone(),
        };
        if placement.is_empty() {
            return Ok(buckets);
        }
        lines::place(db, self.order_id(), &placement)?;
        for (b, l) in buckets.iter_mut().zip(&self.p.lines) {
            let get = |m: &BTreeMap<i64, i64>| m.get(&l.line_no).copied().unwrap_or(0);
            b.allocated += get(&self.add_alloc);
            b.released += get(&self.add_rel);
            b.shipped += get(&self.add_ship);
            b.delivered += get(&self.add_ship);
            if let Some(v) = self.new_backordered.get(&l.line_no) {
                b.backordered = *v;
            }
        }
        Ok(buckets)
    }

    /// The routing decision, stored when the pass changed something (or is the
    /// order's first), linked to the fulfillment orders it created.
    fn record_decision(&mut self, db: &dyn Db, trigger: Trigger) -> Result<()> {
        let order_id = self.order_id();
        let placed = self.out.allocated + self.out.keys;
        let unchanged = placed == 0
            && self.newly_backordered.is_empty()
            && (self.short.is_empty() || self.had_stock_hold());
        let first = unchanged
            && db
                .execute(
                    "SELECT 1 FROM routing_decisions WHERE order_id = ? LIMIT 1",
                    params![order_id],
                )?
                .is_empty();
        if (unchanged && !first) || self.left.is_empty() {
            return Ok(());
        }
        let summary = summary(&self.out, &self.fo_names);
        let mut ex = std::mem::take(&mut self.explanation);
        ex["digital"] = json!(self
            .digital
            .iter()
            .map(|l| json!({"line_no": l.line_no, "sku": l.sku, "wanted": l.unplaced,
                            "assigned": l.unplaced - self.left.get(&l.line_no).copied().unwrap_or(0)}))
            .collect::<Vec<_>>());
        // The id from RETURNING: a libSQL server's client does not report
        // last_insert_rowid (issue #17).
        let decision_id = db
            .execute(
                "INSERT INTO routing_decisions (order_id, at, trigger, summary, explanation) VALUES (?, ?, ?, ?, ?) RETURNING id",
                params![order_id, ts(self.now), trigger.as_str(), summary.clone(), ex.to_string()],
            )?
            .first()
            .map(|r| r.i64("id"))
            .ok_or_else(|| Error::internal("the routing decision was not stored"))?;
        fstore::link_decision(db, &self.fo_ids, decision_id)?;
        let kind = if trigger == Trigger::Backorder {
            "backorder.allocated"
        } else {
            "routing.decided"
        };
        let o = &self.out;
        self.ev.push((
            kind,
            summary,
            json!({"decision_id": decision_id, "trigger": trigger.as_str(), "allocated": o.allocated, "released": o.released,
                   "keys": o.keys, "backordered": o.backordered, "held": o.held}),
        ));
        self.out.changed = true;
        Ok(())
    }

    /// The log, released work, statuses and captures.
    fn finish(mut self, db: &dyn Db, buckets: &[crate::orders::model::Buckets]) -> Result<Outcome> {
        let p = self.p;
        let (order_id, now) = (self.order_id(), self.now);
        store::record_batch(db, order_id, now, ACTOR, &self.ev, &self.obx)?;
        for fo_id in &self.released_now {
            crate::fulfillment::on_released(db, fo_id, now)?;
        }
        // Fulfillment orders allocated earlier whose hold is gone.
        if !self.blocked && p.has_held_work {
            self.out.released += release(db, order_id, now)?;
            self.out.changed = true;
            store::refresh_status(db, order_id, now)?;
        } else if self.out.changed || self.holds_open != p.holds.len() {
            store::write_status(db, order_id, buckets, self.holds_open, p.closed, now)?;
        }
        // Capture what was just allocated; ledger gateways settle (and release) here.
        for (fo_id, per_line) in &self.to_capture {
            let units: i64 = per_line.values().sum();
            match crate::payments::capture::capture_new_fulfillment_order(
                db, order_id, fo_id, per_line, now,
            )? {
                crate::payments::capture::Gate::Released => self.out.released += units,
                crate::payments::capture::Gate::Waiting => self.out.awaiting_capture += units,
                crate::payments::capture::Gate::Declined => {}
            }
        }
        // Licence keys are captured like released units: held keys go out when
        // their capture succeeds (at once for ledger gateways), delivered ones
        // (capture at shipment) are captured now.
        if self.out.keys > 0 {
            crate::payments::capture::capture_keys(db, order_id, now)?;
        }
        Ok(self.out)
    }
}

/// The decision's one-line summary for the timeline.
fn summary(out: &Outcome, fo_names: &[String]) -> String {
    let mut s = format!("{} unit(s) allocated", out.allocated);
    if !fo_names.is_empty() {
        s.push_str(&format!(" in {}", fo_names.join(", ")));
    }
    if out.released > 0 {
        s.push_str(" and released");
    }
    if out.keys > 0 {
        s.push_str(&format!(", {} licence key(s)", out.keys));
    }
    if out.backordered > 0 {
        s.push_str(&format!(", {} backordered", out.backordered));
    }
    if out.held > 0 {
        s.push_str(&format!(", {} out of stock (held)", out.held));
    }
    s
}

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
    let blocked = p.holds.iter().any(|h| blocks_release(h));
    let keys_wanted = p
        .lines
        .iter()
        .any(|l| l.unplaced > 0 && p.catalog.get(&l.sku).is_some_and(|x| x.digital));
    let pays_at_release = !blocked
        && (p.planned.is_some() || keys_wanted)
        && crate::payments::capture::gated(db, &p.order_id)?;
    let gated = pays_at_release && p.planned.is_some();
    let mut pass = Pass {
        p: &p,
        now,
        out: Outcome::default(),
        ev: Vec::new(),
        obx: Vec::new(),
        blocked,
        gated,
        add_alloc: BTreeMap::new(),
        add_rel: BTreeMap::new(),
        add_ship: BTreeMap::new(),
        left: BTreeMap::new(),
        new_backordered: BTreeMap::new(),
        newly_backordered: Vec::new(),
        short: Vec::new(),
        explanation: json!({}),
        fo_ids: Vec::new(),
        fo_names: Vec::new(),
        held_note: None,
        holds_open: p.holds.len(),
        to_capture: Vec::new(),
        released_now: Vec::new(),
        digital: Vec::new(),
        pays_at_release,
    };
    if p.no_facility
        && !p
            .lines
            .iter()
            .any(|l| l.unplaced > 0 && pass.is_digital(&l.sku) && !blocked)
    {
        // Inventory is not set up: leave the order as it is; the sweep retries.
        return Ok(pass.out);
    }
    if let Some(planned) = &p.planned {
        match &planned.decision {
            Err(note) => pass.hold_for_address(db, note)?,
            Ok(decision) => pass.place(db, decision, planned.service, strict)?,
        }
    }
    pass.assign_keys(db)?;
    pass.settle_leftovers(db)?;
    let buckets = pass.write_buckets(db)?;
    pass.record_decision(db, trigger)?;
    Ok(pass.finish(db, &buckets)?)
}
