//! Persistence of orders: rows, lines with buckets, holds, the timeline and the
//! outbox. Every function here runs inside the caller's transaction, so a state
//! change, its event and its outbox rows commit together or not at all.

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::kernel::db::{Db, Row, Value};
use crate::kernel::error::{Error, Result};
use crate::kernel::money::Money;
use crate::kernel::time::ts;
use crate::orders::lines;
use crate::orders::model::{
    derive_fulfillment, derive_status, Buckets, HoldReason, NewOrder, Source,
};
use crate::params;

/// Who caused a change, for the timeline.
pub fn actor_for(source: Source) -> String {
    format!("source:{}", source.as_str())
}

pub fn record_event(
    db: &dyn Db,
    order_id: &str,
    now: DateTime<Utc>,
    actor: &str,
    kind: &str,
    summary: &str,
    data: Json,
) -> Result<()> {
    let row = params![order_id, ts(now), actor, kind, summary, data.to_string()].to_vec();
    if let Some(a) = db.appends() {
        a.push(EVENT_COLUMNS, row);
        return Ok(());
    }
    db.execute(
        &format!("INSERT INTO {EVENT_COLUMNS} VALUES (?, ?, ?, ?, ?, ?)"),
        &row,
    )?;
    Ok(())
}

/// The timeline's and the outbox's columns as the writers here fill them
/// (nothing reads either back inside a routing batch, so a
/// `kernel::db::Batched` unit keeps their rows and writes them at its end).
const EVENT_COLUMNS: &str = "order_events (order_id, at, actor, kind, summary, data)";
const OUTBOX_COLUMNS: &str = "outbox (topic, order_id, payload, created_at, next_attempt_at)";

/// Writes a batch of timeline events and outbox rows for one order, one
/// statement each (a routing pass).
pub fn record_batch(
    db: &dyn Db,
    order_id: &str,
    now: DateTime<Utc>,
    actor: &str,
    ev: &[(&str, String, Json)],
    obx: &[(&str, Json)],
) -> Result<()> {
    if let Some(a) = db.appends() {
        for (kind, summary, data) in ev {
            a.push(
                EVENT_COLUMNS,
                params![
                    order_id,
                    ts(now),
                    actor,
                    *kind,
                    summary.clone(),
                    data.to_string()
                ]
                .to_vec(),
            );
        }
        for (topic, payload) in obx {
            a.push(
                OUTBOX_COLUMNS,
                params![*topic, order_id, payload.to_string(), ts(now), ts(now)].to_vec(),
            );
        }
        return Ok(());
    }
    if !ev.is_empty() {
        let ph = vec!["(?, ?, ?, ?, ?, ?)"; ev.len()].join(",");
        let mut prm = Vec::with_capacity(ev.len() * 6);
        for (kind, summary, data) in ev {
            prm.extend([
                Value::from(order_id),
                Value::from(ts(now)),
                Value::from(actor),
                Value::from(*kind),
                Value::from(summary.clone()),
                Value::from(data.to_string()),
            ]);
        }
        db.execute(&format!("INSERT INTO {EVENT_COLUMNS} VALUES {ph}"), &prm)?;
    }
    if !obx.is_empty() {
        let ph = vec!["(?, ?, ?, ?, ?)"; obx.len()].join(",");
        let mut prm = Vec::with_capacity(obx.len() * 5);
        for (topic, payload) in obx {
            prm.extend([
                Value::from(*topic),
                Value::from(order_id),
                Value::from(payload.to_string()),
                Value::from(ts(now)),
                Value::from(ts(now)),
            ]);
        }
        db.execute(&format!("INSERT INTO {OUTBOX_COLUMNS} VALUES {ph}"), &prm)?;
    }
    Ok(())
}

/// Writes a side effect to the outbox, to be delivered at least once.
pub fn enqueue(
    db: &dyn Db,
    topic: &str,
    order_id: Option<&str>,
    payload: Json,
    now: DateTime<Utc>,
) -> Result<()> {
    let row = params![topic, order_id, payload.to_string(), ts(now), ts(now)].to_vec();
    if let Some(a) = db.appends() {
        a.push(OUTBOX_COLUMNS, row);
        return Ok(());
    }
    db.execute(
        &format!("INSERT INTO {OUTBOX_COLUMNS} VALUES (?, ?, ?, ?, ?)"),
        &row,
    )?;
    Ok(())
}

fn doc(o: &NewOrder, source_hash: &str) -> Json {
    let c = o.currency;
    json!({
        "customer": o.customer,
        "shipping_address": o.shipping_address,
        "billing_address": o.billing_address,
        "shipping_lines": o.shipping_lines.iter().map(|s| json!({
            "method": s.method, "title": s.title,
            "price": Money::new(s.price, c), "discount": Money::new(s.discount, c), "tax": Money::new(s.tax, c),
        })).collect::<Vec<_>>(),
        "shipping_lines_minor": o.shipping_lines,
        "taxes_included": o.taxes_included,
        "payment": o.payment,
        "note": o.note,
        "tags": o.tags,
        "source_total_minor": o.source_total,
        "source_hash": source_hash,
        "pickup_location": o.pickup_location,
        "preferred_facility": o.preferred_facility,
        "fulfillment_hash": fulfillment_hash(o),
        "source_modified_at": o.source_modified_at.map(ts),
        "source_version": o.source_version,
    })
}

/// A fingerprint of what fulfillment depends on (lines, prices, destination,
/// shipping, pickup). After release, a source update that keeps it may still
/// change payment state, contact details, notes and tags.
pub fn fulfillment_hash(o: &NewOrder) -> String {
    let lines: Vec<Json> = o
        .lines
        .iter()
        .map(|l| {
            json!([
                l.external_id,
                l.sku,
                l.quantity,
                l.unit_price,
                l.subtotal,
                l.discount,
                l.tax,
                l.requires_shipping
            ])
        })
        .collect();
    let v = json!([
        o.currency.code(),
        o.shipping_address,
        lines,
        o.shipping_lines,
        o.taxes_included,
        o.pickup_location,
        o.preferred_facility,
    ]);
    crate::kernel::signature::hex(&crate::kernel::signature::hmac_sha256(
        b"waybill-fulfillment-hash",
        v.to_string().as_bytes(),
    ))
}

/// A stable fingerprint of what the source said, to skip no-op updates.
pub fn source_hash(o: &NewOrder) -> String {
    let lines: Vec<Json> = o
        .lines
        .iter()
        .map(|l| {
            json!([
                l.external_id,
                l.sku,
                l.name,
                l.quantity,
                l.unit_price,
                l.subtotal,
                l.discount,
                l.tax,
                l.requires_shipping
            ])
        })
        .collect();
    let v = json!([
        o.external_number,
        o.channel,
        o.currency.code(),
        o.customer,
        o.shipping_address,
        o.billing_address,
        lines,
        o.shipping_lines,
        o.taxes_included,
        o.financial_status.as_str(),
        o.payment,
        o.note,
        o.tags,
        o.source_total,
        o.cancelled,
        o.holds
            .iter()
            .map(|(r, n)| json!([r.as_str(), n]))
            .collect::<Vec<_>>(),
    ]);
    crate::kernel::signature::hex(&crate::kernel::signature::hmac_sha256(
        b"waybill-source-hash",
        v.to_string().as_bytes(),
    ))
}

fn search_text(o: &NewOrder, number: &str) -> String {
    let mut parts = if number.is_empty() {
        vec![o.external_id.clone()]
    } else {
        vec![number.to_string(), o.external_id.clone()]
    };
    parts.extend(o.external_number.clone());
    parts.extend(o.customer.email.clone());
    parts.extend(o.customer.display_name());
    if let Some(a) = &o.shipping_address {
        parts.extend(
            [a.first_name.clone(), a.last_name.clone(), a.company.clone()]
                .into_iter()
                .flatten(),
        );
    }
    parts.join(" ").to_lowercase()
}

/// The reasons of an order's open holds (read once per batch unit until a
/// write names `order_holds`: `kernel::db::reference`).
pub fn open_hold_reasons(db: &dyn Db, order_id: &str) -> Result<Vec<String>> {
    let r = crate::kernel::db::reference(
        db,
        &["order_holds"],
        "SELECT reason FROM order_holds WHERE order_id = ? AND released_at IS NULL",
        params![order_id],
    )?;
    Ok(r.iter().map(|r| r.str("reason")).collect())
}

/// Opens a hold unless one with the same reason is already open. Returns whether it opened one.
pub fn add_hold(
    db: &dyn Db,
    order_id: &str,
    reason: HoldReason,
    note: &str,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<bool> {
    if open_hold_reasons(db, order_id)?
        .iter()
        .any(|r| r == reason.as_str())
    {
        return Ok(false);
    }
    db.execute(
        "INSERT INTO order_holds (order_id, reason, note, created_at) VALUES (?, ?, ?, ?)",
        params![order_id, reason.as_str(), note, ts(now)],
    )?;
    record_event(
        db,
        order_id,
        now,
        actor,
        "hold.added",
        &format!("On hold: {} ({note})", reason.as_str()),
        json!({"reason": reason.as_str(), "note": note}),
    )?;
    Ok(true)
}

pub fn release_hold(
    db: &dyn Db,
    order_id: &str,
    reason: HoldReason,
    now: DateTime<Utc>,
    actor: &str,
    why: &str,
) -> Result<bool> {
    let n = db.exec(
        "UPDATE order_holds SET released_at = ? WHERE order_id = ? AND reason = ? AND released_at IS NULL",
        params![ts(now), order_id, reason.as_str()],
    )?;
    if n > 0 {
        record_event(
            db,
            order_id,
            now,
            actor,
            "hold.released",
            &format!("Hold released: {} ({why})", reason.as_str()),
            json!({"reason": reason.as_str()}),
        )?;
    }
    Ok(n > 0)
}

pub fn load_buckets(db: &dyn Db, order_id: &str) -> Result<Vec<Buckets>> {
    let r = db.execute(
        "SELECT qty_ordered, qty_cancelled, qty_backordered, qty_allocated, qty_released, qty_shipped, qty_delivered, qty_returned
         FROM order_lines WHERE order_id = ? ORDER BY line_no",
        params![order_id],
    )?;
    Ok(r.iter().map(|r| buckets(&r)).collect())
}

pub fn buckets(r: &Row<'_>) -> Buckets {
    Buckets {
        ordered: r.i64("qty_ordered"),
        cancelled: r.i64("qty_cancelled"),
        backordered: r.i64("qty_backordered"),
        allocated: r.i64("qty_allocated"),
        released: r.i64("qty_released"),
        shipped: r.i64("qty_shipped"),
        delivered: r.i64("qty_delivered"),
        returned: r.i64("qty_returned"),
    }
}

/// Re-derives the stored statuses from buckets and holds (after any change).
pub fn refresh_status(db: &dyn Db, order_id: &str, now: DateTime<Utc>) -> Result<(String, String)> {
    let b = load_buckets(db, order_id)?;
    let holds = open_hold_reasons(db, order_id)?.len();
    let closed = db
        .execute(
            "SELECT closed_at FROM orders WHERE id = ?",
            params![order_id],
        )?
        .first()
        .and_then(|r| r.opt_str("closed_at"))
        .is_some();
    write_status(db, order_id, &b, holds, closed, now)
}

/// Stores the statuses derived from `buckets`, `open_holds` and `closed`
/// (for callers that already hold the order's current state).
pub fn write_status(
    db: &dyn Db,
    order_id: &str,
    buckets: &[Buckets],
    open_holds: usize,
    closed: bool,
    now: DateTime<Utc>,
) -> Result<(String, String)> {
    let status = derive_status(buckets, open_holds, closed)
        .as_str()
        .to_string();
    let ful = derive_fulfillment(buckets).as_str().to_string();
    db.execute(
        "UPDATE orders SET status = ?, fulfillment_status = ?, updated_at = ?, version = version + 1,
            cancelled_at = CASE WHEN ? = 'cancelled' THEN COALESCE(cancelled_at, ?) ELSE cancelled_at END
         WHERE id = ?",
        params![status.clone(), ful.clone(), ts(now), status.clone(), ts(now), order_id],
    )?;
    Ok((status, ful))
}

/// Claims a pending outbox event for expansion into deliveries (notify's
/// sweep); false when another sweep claimed it first.
pub fn mark_expanded(db: &dyn Db, outbox_id: i64) -> Result<bool> {
    Ok(!db
        .execute(
            "UPDATE outbox SET state = 'expanded' WHERE id = ? AND state = 'pending' RETURNING id",
            params![outbox_id],
        )?
        .is_empty())
}

/// Housekeeping: drops up to `limit` expanded outbox events created before
/// `before` whose deliveries are gone (the export cursor's window ends there:
/// a consumer further behind than the retention misses them). Pending events
/// are never dropped. Returns the rows removed.
pub fn purge_outbox(db: &dyn Db, before: DateTime<Utc>, limit: i64) -> Result<u64> {
    Ok(crate::kernel::db::Patient(db).exec(
        "DELETE FROM outbox WHERE id IN (
           SELECT o.id FROM outbox o WHERE o.state = 'expanded' AND o.created_at < ?
              AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.outbox_id = o.id)
            ORDER BY o.id LIMIT ?)",
        params![ts(before), limit],
    )?)
}

/// An order change rewrote the stored document (address, method, note).
pub fn set_doc(db: &dyn Db, order_id: &str, doc: &Json, now: DateTime<Utc>) -> Result<()> {
    db.execute(
        "UPDATE orders SET doc = ?, updated_at = ?, version = version + 1 WHERE id = ?",
        params![doc.to_string(), ts(now), order_id],
    )?;
    Ok(())
}

/// An order change moved the total by `delta` minor units (a substitute's price).
pub fn add_to_total(db: &dyn Db, order_id: &str, delta: i64, now: DateTime<Utc>) -> Result<()> {
    db.execute(
        "UPDATE orders SET total_minor = total_minor + ?, version = version + 1, updated_at = ? WHERE id = ?",
        params![delta, ts(now), order_id],
    )?;
    Ok(())
}

/// The financial status payments derived from the ledger.
pub fn set_financial_status(
    db: &dyn Db,
    order_id: &str,
    status: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    // Only a change is written (and moves `updated_at`).
    db.execute(
        "UPDATE orders SET financial_status = ?1, updated_at = ?2 WHERE id = ?3 AND financial_status IS NOT ?1",
        params![status, ts(now), order_id],
    )?;
    Ok(())
}

/// The outbox payload announcing an order (confirmation e-mail, outbound webhook).
fn received_payload(id: &str, number: &str, o: &NewOrder) -> Json {
    let t = o.totals();
    json!({
        "order_id": id,
        "number": number,
        "source": o.source.as_str(),
        "external_id": o.external_id,
        "channel": o.channel,
        "email": o.customer.email,
        "customer_name": o.customer.display_name(),
        "totals": t.to_json(o.currency),
        "lines": o.lines.iter().map(|l| json!({"sku": l.sku, "name": l.name, "quantity": l.quantity})).collect::<Vec<_>>(),
    })
}

pub struct Inserted {
    pub id: String,
    pub number: String,
}

/// Inserts a new order with its lines, holds, timeline and outbox rows (its
/// payment record is the caller's: `flows::intake::place`).
pub fn insert_order(
    db: &dyn Db,
    o: &NewOrder,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Inserted> {
    insert_order_with_id(db, &uuid::Uuid::now_v7().to_string(), o, now, actor)?.ok_or_else(|| {
        Error::conflict(format!(
            "an order from {} with id '{}' already exists",
            o.source.as_str(),
            o.external_id
        ))
    })
}

/// A new order's holds: one per reason, plus a review hold when the totals disagree.
fn new_holds(o: &NewOrder) -> Vec<(HoldReason, String)> {
    let mut holds: Vec<(HoldReason, String)> = Vec::new();
    for (r, n) in o
        .holds
        .iter()
        .cloned()
        .chain(total_mismatch(o).map(|n| (HoldReason::ManualReview, n)))
    {
        if !holds.iter().any(|(h, _)| *h == r) {
            holds.push((r, n));
        }
    }
    holds
}

fn new_buckets(o: &NewOrder) -> Vec<Buckets> {
    o.lines
        .iter()
        .map(|l| Buckets {
            ordered: l.quantity,
            cancelled: if o.cancelled { l.quantity } else { 0 },
            ..Default::default()
        })
        .collect()
}

/// The order row itself; its number when written, None when `(source,
/// external_id)` exists already. `intake` is the pending rows of
/// [`insert_pending`].
fn insert_row(
    db: &dyn Db,
    id: &str,
    o: &NewOrder,
    now: DateTime<Utc>,
    holds: &[(HoldReason, String)],
    buckets: &[Buckets],
    intake: Option<String>,
) -> Result<Option<String>> {
    let totals = o.totals();
    let status = derive_status(buckets, holds.len(), false);
    let inserted = db.execute(
        "INSERT INTO orders (id, number, source, external_id, external_number, channel, status, fulfillment_status,
            financial_status, currency, total_minor, customer_email, customer_name, search_text, placed_at,
            created_at, updated_at, cancelled_at, doc, intake)
         VALUES (?, (SELECT 'WB-' || (value + 1) FROM counters WHERE name = 'order_number'), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
            (SELECT lower('WB-' || (value + 1)) FROM counters WHERE name = 'order_number') || ' ' || ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (source, external_id) DO NOTHING
         RETURNING number",
        params![
            id, o.source.as_str(), o.external_id.clone(), o.external_number.clone(), o.channel.clone(),
            status.as_str(), derive_fulfillment(buckets).as_str(), o.financial_status.as_str(), o.currency.code(), totals.total,
            o.customer.email.as_ref().map(|e| e.to_lowercase()), o.customer.display_name(), search_text(o, ""),
            ts(o.placed_at), ts(now), ts(now), o.cancelled.then(|| ts(now)), doc(o, &source_hash(o)).to_string(), intake
        ],
    )?;
    Ok(inserted.first().map(|r| r.str("number")))
}

/// Stands for the order number in the pending rows of [`insert_pending`] (the
/// number is assigned by the INSERT itself; [`settle_pending`] fills it in).
const NUMBER: &str = "\u{1}number\u{1}";

/// The rows a new order's other tables get, as the pending `intake` column
/// carries them: the lines ([`lines::rows`]), holds, timeline and outbox rows,
/// and the rows the payment and receipt owners prepared.
fn pending_rows(
    id: &str,
    o: &NewOrder,
    actor: &str,
    holds: &[(HoldReason, String)],
    payment: Json,
    receipt: Option<Json>,
) -> Json {
    let total = Money::new(o.totals().total, o.currency);
    let mut events = vec![json!([
        "order.received",
        format!(
            "Order {NUMBER} received from {} ({})",
            o.source.as_str(),
            o.external_id
        ),
        json!({"source": o.source.as_str(), "external_id": o.external_id, "total": total})
            .to_string(),
    ])];
    for (r, n) in holds {
        events.push(json!([
            "hold.added",
            format!("On hold: {} ({n})", r.as_str()),
            json!({"reason": r.as_str(), "note": n}).to_string(),
        ]));
    }
    if o.cancelled {
        events.push(json!([
            "order.cancelled",
            "Order arrived cancelled at the source",
            json!({}).to_string()
        ]));
    }
    let outbox: Vec<Json> = if o.cancelled {
        Vec::new()
    } else {
        vec![json!([
            "order.received",
            received_payload(id, "", o).to_string()
        ])]
    };
    json!({
        "actor": actor,
        "lines": lines::rows(o),
        "holds": holds.iter().map(|(r, n)| json!([r.as_str(), n])).collect::<Vec<_>>(),
        "events": events,
        "outbox": outbox,
        "payment": payment,
        "receipt": receipt,
    })
}

/// A new order in one statement (issue #16): the order row, complete (number,
/// statuses, totals, document), with the rows of its other tables pending in
/// its `intake` column; the routing worker writes those for a whole batch
/// ([`settle_pending`] and its peers, `routing::allocation::take_up`). The
/// order is queryable at once (its view takes it up first). None when the
/// order exists already (nothing written).
pub fn insert_pending(
    db: &dyn Db,
    id: &str,
    o: &NewOrder,
    now: DateTime<Utc>,
    actor: &str,
    payment: Json,
    receipt: Option<Json>,
) -> Result<Option<Inserted>> {
    let holds = new_holds(o);
    let rows = pending_rows(id, o, actor, &holds, payment, receipt).to_string();
    Ok(
        insert_row(db, id, o, now, &holds, &new_buckets(o), Some(rows))?.map(|number| Inserted {
            id: id.to_string(),
            number,
        }),
    )
}

/// Which orders' pending intake rows to write: a batch (every pending order up
/// to a rowid) or one order. Each owner's `settle_pending` writes its table
/// for these orders with one set-based statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    UpTo(i64),
    Order(String),
}

impl Pending {
    /// The condition on `orders o` and its parameter.
    pub fn filter(&self) -> (&'static str, Value) {
        match self {
            Pending::UpTo(r) => ("o.intake IS NOT NULL AND o.rowid <= ?", Value::Integer(*r)),
            Pending::Order(id) => (
                "o.intake IS NOT NULL AND o.id = ?",
                Value::from(id.as_str()),
            ),
        }
    }
}

/// Whether an order's intake rows are still pending.
pub fn is_pending(db: &dyn Db, order_id: &str) -> Result<bool> {
    Ok(!db
        .execute(
            "SELECT 1 FROM orders WHERE id = ? AND intake IS NOT NULL",
            params![order_id],
        )?
        .is_empty())
}

/// Writes the pending holds, timeline and outbox rows of the orders `p`
/// names: three statements, however many orders. [`clear_pending`] comes last.
pub fn settle_pending(db: &dyn Db, p: &Pending) -> Result<()> {
    let (cond, v) = p.filter();
    let one = |sql: String| db.execute(&sql, std::slice::from_ref(&v)).map(|_| ());
    one(format!(
        "INSERT INTO order_holds (order_id, reason, note, created_at)
         SELECT o.id, json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), o.created_at
         FROM orders o, json_each(o.intake, '$.holds') j WHERE {cond} ORDER BY o.rowid, j.key"
    ))?;
    one(format!(
        "INSERT INTO order_events (order_id, at, actor, kind, summary, data)
         SELECT o.id, o.created_at, json_extract(o.intake, '$.actor'), json_extract(j.value, '$[0]'),
            replace(json_extract(j.value, '$[1]'), char(1) || 'number' || char(1), o.number), json_extract(j.value, '$[2]')
         FROM orders o, json_each(o.intake, '$.events') j WHERE {cond} ORDER BY o.rowid, j.key"
    ))?;
    one(format!(
        "INSERT INTO outbox (topic, order_id, payload, created_at, next_attempt_at)
         SELECT json_extract(j.value, '$[0]'), o.id, json_set(json_extract(j.value, '$[1]'), '$.number', o.number),
            o.created_at, o.created_at
         FROM orders o, json_each(o.intake, '$.outbox') j WHERE {cond} ORDER BY o.rowid, j.key"
    ))?;
    Ok(())
}

/// The pending rows of the orders `p` names are written: clears the column.
pub fn clear_pending(db: &dyn Db, p: &Pending) -> Result<u64> {
    let (cond, v) = p.filter();
    let r = db.execute(
        &format!("UPDATE orders SET intake = NULL WHERE rowid IN (SELECT o.rowid FROM orders o WHERE {cond}) RETURNING 1 AS n"),
        &[v],
    )?;
    Ok(r.len() as u64)
}

/// The hot path of intake, written for contention: the order number comes from
/// the counter inside the order INSERT (a trigger advances it), the statuses are
/// derived in Rust from what is inserted, and lines, holds and events go in as
/// one multi-row INSERT each, so the write lock is held for few statements.
/// Returns None when `(source, external_id)` exists already (nothing written).
pub fn insert_order_with_id(
    db: &dyn Db,
    id: &str,
    o: &NewOrder,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Option<Inserted>> {
    let totals = o.totals();
    let holds = new_holds(o);
    let buckets = new_buckets(o);
    let Some(number) = insert_row(db, id, o, now, &holds, &buckets, None)? else {
        return Ok(None);
    };
    lines::insert(db, id, o)?;
    let at = ts(now);
    let mut events: Vec<(&str, String, Json)> = vec![(
        "order.received",
        format!(
            "Order {number} received from {} ({})",
            o.source.as_str(),
            o.external_id
        ),
        json!({"source": o.source.as_str(), "external_id": o.external_id, "total": Money::new(totals.total, o.currency)}),
    )];
    if !holds.is_empty() {
        let mut sql =
            String::from("INSERT INTO order_holds (order_id, reason, note, created_at) VALUES ");
        let mut p: Vec<Value> = Vec::new();
        for (i, (r, n)) in holds.iter().enumerate() {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?)"
            } else {
                ",(?, ?, ?, ?)"
            });
            p.extend([
                Value::from(id),
                Value::from(r.as_str()),
                Value::from(n),
                Value::from(&at),
            ]);
            events.push((
                "hold.added",
                format!("On hold: {} ({n})", r.as_str()),
                json!({"reason": r.as_str(), "note": n}),
            ));
        }
        db.execute(&sql, &p)?;
    }
    if o.cancelled {
        events.push((
            "order.cancelled",
            "Order arrived cancelled at the source".into(),
            json!({}),
        ));
    }
    let announce = [("order.received", received_payload(id, &number, o))];
    let outbox: &[(&str, Json)] = if o.cancelled { &[] } else { &announce };
    record_batch(db, id, now, actor, &events, outbox)?;
    Ok(Some(Inserted {
        id: id.to_string(),
        number,
    }))
}

fn total_mismatch(o: &NewOrder) -> Option<String> {
    let src = o.source_total?;
    let computed = o.totals().total;
    (src != computed).then(|| {
        format!(
            "source total {} differs from the computed total {}",
            Money::new(src, o.currency).to_decimal(),
            Money::new(computed, o.currency).to_decimal()
        )
    })
}

/// A computed total that differs from the source's total means the mapping missed
/// something (fees, rounding rules): hold for review before any capture.
fn check_source_total(
    db: &dyn Db,
    id: &str,
    o: &NewOrder,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<()> {
    if let Some(note) = total_mismatch(o) {
        add_hold(db, id, HoldReason::ManualReview, &note, now, actor)?;
    }
    Ok(())
}

pub struct Existing {
    pub id: String,
    pub number: String,
    pub source_hash: String,
    /// Empty for orders stored before the fingerprint existed.
    pub fulfillment_hash: String,
    pub released_units: i64,
    /// The source's marks of the version last applied (see `model::is_stale_update`).
    pub source_version: Option<i64>,
    pub source_modified_at: Option<DateTime<Utc>>,
}

pub fn find_by_source(db: &dyn Db, source: Source, external_id: &str) -> Result<Option<Existing>> {
    let r = db.execute(
        "SELECT o.id, o.number, json_extract(o.doc, '$.source_hash') AS source_hash,
                json_extract(o.doc, '$.fulfillment_hash') AS fulfillment_hash,
                json_extract(o.doc, '$.source_version') AS source_version,
                json_extract(o.doc, '$.source_modified_at') AS source_modified_at,
                (SELECT COALESCE(SUM(qty_released + qty_shipped), 0) FROM order_lines l WHERE l.order_id = o.id) AS released
         FROM orders o WHERE o.source = ? AND o.external_id = ?",
        params![source.as_str(), external_id],
    )?;
    Ok(r.first().map(|r| Existing {
        id: r.str("id"),
        number: r.str("number"),
        source_hash: r.str("source_hash"),
        fulfillment_hash: r.str("fulfillment_hash"),
        released_units: r.i64("released"),
        source_version: r.opt_i64("source_version"),
        source_modified_at: r
            .opt_str("source_modified_at")
            .and_then(|t| crate::kernel::time::parse_time(&t)),
    }))
}

/// Rewrites an order nothing of which is released or allocated any more from
/// the source's new version: lines and document (`flows::intake` gives back
/// what was allocated first and syncs the payment after).
pub fn rewrite_order(db: &dyn Db, ex: &Existing, o: &NewOrder, now: DateTime<Utc>) -> Result<()> {
    let totals = o.totals();
    let hash = source_hash(o);
    lines::replace(db, &ex.id, o)?;
    db.execute(
        "UPDATE orders SET external_number = ?, financial_status = ?, currency = ?, total_minor = ?, customer_email = ?,
            customer_name = ?, search_text = lower(number) || ' ' || ?, doc = ?, updated_at = ? WHERE id = ?",
        params![
            o.external_number.clone(), o.financial_status.as_str(), o.currency.code(), totals.total,
            o.customer.email.as_ref().map(|e| e.to_lowercase()), o.customer.display_name(), search_text(o, ""),
            doc(o, &hash).to_string(), ts(now), ex.id.clone()
        ],
    )?;
    Ok(())
}

/// After a rewrite: the holds the source drives, the total check, the timeline
/// and the statuses.
pub fn rewritten(
    db: &dyn Db,
    ex: &Existing,
    o: &NewOrder,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<()> {
    let totals = o.totals();
    follow_source_holds(db, &ex.id, o, now, actor)?;
    check_source_total(db, &ex.id, o, now, actor)?;
    record_event(
        db,
        &ex.id,
        now,
        actor,
        "order.updated",
        "Order updated by the source before release",
        json!({"total": Money::new(totals.total, o.currency), "lines": o.lines.len(), "financial_status": o.financial_status.as_str()}),
    )?;
    refresh_status(db, &ex.id, now)?;
    Ok(())
}

/// Holds the source drives follow the source: open what it reports, release what it no longer does.
fn follow_source_holds(
    db: &dyn Db,
    id: &str,
    o: &NewOrder,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<()> {
    for reason in [HoldReason::AwaitingPayment, HoldReason::PaymentFailed] {
        match o.holds.iter().find(|(r, _)| *r == reason) {
            Some((_, note)) => {
                add_hold(db, id, reason, note, now, actor)?;
            }
            None => {
                release_hold(
                    db,
                    id,
                    reason,
                    now,
                    actor,
                    "the source no longer reports it",
                )?;
            }
        }
    }
    for (reason, note) in o
        .holds
        .iter()
        .filter(|(r, _)| !matches!(r, HoldReason::AwaitingPayment | HoldReason::PaymentFailed))
    {
        add_hold(db, id, *reason, note, now, actor)?;
    }
    Ok(())
}

/// Applies a source update after release that leaves what fulfillment depends
/// on unchanged ([`fulfillment_hash`]): payment state, contact details,
/// billing address, note, tags (the payment is synced by `flows::intake`, then
/// [`updated_after_release`]).
pub fn update_after_release(
    db: &dyn Db,
    ex: &Existing,
    o: &NewOrder,
    now: DateTime<Utc>,
) -> Result<()> {
    let hash = source_hash(o);
    db.execute(
        "UPDATE orders SET external_number = ?, financial_status = ?, customer_email = ?, customer_name = ?,
            search_text = lower(number) || ' ' || ?, doc = ?, updated_at = ? WHERE id = ?",
        params![
            o.external_number.clone(), o.financial_status.as_str(),
            o.customer.email.as_ref().map(|e| e.to_lowercase()), o.customer.display_name(), search_text(o, ""),
            doc(o, &hash).to_string(), ts(now), ex.id.clone()
        ],
    )?;
    Ok(())
}

/// After an update after release: the source's payment holds, the timeline and
/// the statuses.
pub fn updated_after_release(
    db: &dyn Db,
    ex: &Existing,
    o: &NewOrder,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<()> {
    follow_source_holds(db, &ex.id, o, now, actor)?;
    record_event(
        db,
        &ex.id,
        now,
        actor,
        "order.updated",
        "Order updated by the source after release (payment, contact, notes or tags; nothing fulfillment depends on)",
        json!({"financial_status": o.financial_status.as_str(), "tags": o.tags}),
    )?;
    refresh_status(db, &ex.id, now)?;
    Ok(())
}
