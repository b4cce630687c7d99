//! Orders from the sources, carried into every context they touch: a new order
//! gets its payment record, a source update gives back what was allocated and
//! syncs the payment, a source cancellation cancels what can be. The receipts
//! and the parsing are intake's; the rows are the orders', payments' and
//! routing's.

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::intake::webhooks::{self, Action};
use crate::kernel::db::{transaction, Db};
use crate::kernel::error::{Error, FieldError, Result};
use crate::orders::model::{HoldReason, NewOrder, Source};
use crate::orders::store::{self, Existing, Inserted};
use crate::params;

/// Places a new order: the order with its lines, holds, timeline and outbox
/// rows, and its payment record.
pub fn place(db: &dyn Db, o: &NewOrder, now: DateTime<Utc>, actor: &str) -> Result<Inserted> {
    let ins = store::insert_order(db, o, now, actor)?;
    crate::payments::capture::open_payment(db, &ins.id, o, now)?;
    Ok(ins)
}

/// [`place`] under a given id; None when `(source, external_id)` exists already.
pub fn place_with_id(
    db: &dyn Db,
    id: &str,
    o: &NewOrder,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Option<Inserted>> {
    let ins = store::insert_order_with_id(db, id, o, now, actor)?;
    if let Some(i) = &ins {
        crate::payments::capture::open_payment(db, &i.id, o, now)?;
    }
    Ok(ins)
}

/// A verified delivery: applied once, or acknowledged.
pub fn receive(db: &dyn Db, d: webhooks::Delivery, now: DateTime<Utc>) -> Result<Json> {
    match d {
        webhooks::Delivery::Ignored(v) => Ok(v),
        webhooks::Delivery::Apply {
            source,
            delivery,
            topic,
            action,
        } => apply(db, source, delivery.as_deref(), &topic, action, now),
    }
}

fn outcome(status: &str, id: &str, number: &str) -> Json {
    json!({"result": status, "order_id": id, "number": number})
}

/// Applies one delivery in one transaction. Returns the JSON answer.
pub fn apply(
    db: &dyn Db,
    source: Source,
    delivery_id: Option<&str>,
    topic: &str,
    action: Action,
    now: DateTime<Utc>,
) -> Result<Json> {
    let actor = store::actor_for(source);
    let new_id = uuid::Uuid::now_v7().to_string();
    // Fast path before taking the write lock: a known order needs no write
    // (and this read loads the schema outside the lock).
    if let Action::Create(o) = &action {
        let p = crate::kernel::db::Patient(db);
        if let Some(ex) = store::find_by_source(&p, source, &o.external_id)? {
            return Ok(outcome("already_received", &ex.id, &ex.number));
        }
        if let Some(d) = delivery_id {
            if webhooks::seen(&p, source, d)? {
                return Ok(json!({"result": "duplicate_delivery", "delivery_id": d}));
            }
        }
        // One statement, but under BEGIN IMMEDIATE: a writer waiting for the
        // lock polls with the cheap BEGIN, not by preparing and running the
        // INSERT again and again (measured: ~130 attempts per order at 16
        // connections, a quarter of a millisecond each, with the worker holding
        // the lock).
        return transaction(db, |db| {
            create_at_once(db, source, delivery_id, topic, o, &new_id, now, &actor)
        });
    }
    transaction(db, |db| {
        // An order whose intake rows are pending gets them before it changes.
        let key = match &action {
            Action::Create(o) | Action::Update(o) => o.external_id.as_str(),
            Action::Cancel { external_id, .. } => external_id.as_str(),
        };
        if let Some(ex) = store::find_by_source(db, source, key)? {
            crate::routing::allocation::worker::take_up_order(db, &ex.id)?;
        }
        if let Some(d) = delivery_id {
            if !webhooks::first_delivery(db, source, d, topic, &new_id, now)? {
                return Ok(json!({"result": "duplicate_delivery", "delivery_id": d}));
            }
        }
        let answer = match action {
            Action::Create(o) => match place_with_id(db, &new_id, &o, now, &actor)? {
                Some(ins) => return Ok(outcome("created", &ins.id, &ins.number)),
                // Another delivery created it between the fast path and the lock.
                None => match store::find_by_source(db, source, &o.external_id)? {
                    Some(ex) => outcome("already_received", &ex.id, &ex.number),
                    None => return Err(Error::internal("order conflict without an order")),
                },
            },
            Action::Update(o) => match store::find_by_source(db, source, &o.external_id)? {
                None => match place_with_id(db, &new_id, &o, now, &actor)? {
                    Some(ins) => outcome("created", &ins.id, &ins.number),
                    None => return Err(Error::internal("order conflict without an order")),
                },
                // An older state of the order than the one applied (a late
                // retry, a replay): ignored, nothing changes.
                Some(ex)
                    if crate::orders::model::is_stale_update(
                        (ex.source_version, ex.source_modified_at),
                        (o.source_version, o.source_modified_at),
                    ) =>
                {
                    outcome("stale", &ex.id, &ex.number)
                }
                Some(ex) if o.cancelled => {
                    cancel_open_units(db, &ex.id, "cancelled at the source", now, &actor)?;
                    outcome("cancelled", &ex.id, &ex.number)
                }
                Some(ex) if ex.source_hash == store::source_hash(&o) => {
                    outcome("unchanged", &ex.id, &ex.number)
                }
                Some(ex)
                    if ex.released_units > 0
                        && !ex.fulfillment_hash.is_empty()
                        && ex.fulfillment_hash == store::fulfillment_hash(&o) =>
                {
                    update_after_release(db, &ex, &o, now, &actor)?;
                    outcome("updated", &ex.id, &ex.number)
                }
                Some(ex) if ex.released_units > 0 => {
                    store::record_event(
                        db,
                        &ex.id,
                        now,
                        &actor,
                        "order.source_update_after_release",
                        "The source changed the order after release; not applied",
                        json!({"released_units": ex.released_units}),
                    )?;
                    store::add_hold(
                        db,
                        &ex.id,
                        HoldReason::ManualReview,
                        "the source changed the order after release",
                        now,
                        &actor,
                    )?;
                    store::refresh_status(db, &ex.id, now)?;
                    outcome("flagged", &ex.id, &ex.number)
                }
                Some(ex) => {
                    replace_order(db, &ex, &o, now, &actor)?;
                    outcome("updated", &ex.id, &ex.number)
                }
            },
            Action::Cancel {
                external_id,
                reason,
                order,
            } => match store::find_by_source(db, source, &external_id)? {
                Some(ex) => {
                    cancel_open_units(db, &ex.id, &reason, now, &actor)?;
                    outcome("cancelled", &ex.id, &ex.number)
                }
                // A cancellation can overtake the creation; keep the order, cancelled.
                None => match order {
                    Some(mut o) => {
                        o.cancelled = true;
                        match place_with_id(db, &new_id, &o, now, &actor)? {
                            Some(ins) => outcome("created_cancelled", &ins.id, &ins.number),
                            None => return Err(Error::internal("order conflict without an order")),
                        }
                    }
                    None => json!({"result": "unknown_order", "external_id": external_id}),
                },
            },
        };
        // The receipt was written with the id a new order would get; point it at the real one.
        if let Some(d) = delivery_id {
            let id = answer.get("order_id").and_then(Json::as_str);
            if id != Some(new_id.as_str()) {
                webhooks::mark_delivery(db, source, d, id)?;
            }
        }
        Ok(answer)
    })
}

/// Before a read of the order `key`: an order whose intake rows are still
/// pending (the worker has not reached it yet) gets them now, in a
/// transaction of its own, so every view of it is complete.
pub fn take_up_for_read(db: &dyn Db, key: &str) -> Result<()> {
    let Some(id) = crate::orders::views::resolve(db, key)? else {
        return Ok(());
    };
    if store::is_pending(db, &id)? {
        transaction(db, |db| {
            crate::routing::allocation::worker::take_up_order(db, &id)
        })?;
    }
    Ok(())
}

/// A new order from a source in one autocommit statement
/// (`orders::store::insert_pending`): the order row, with its lines, holds,
/// timeline, outbox, payment record and delivery receipt pending in it for the
/// routing worker's next batch. One host call under the write lock, so
/// intake's cost does not grow with the lifecycle behind it.
#[allow(clippy::too_many_arguments)]
fn create_at_once(
    db: &dyn Db,
    source: Source,
    delivery_id: Option<&str>,
    topic: &str,
    o: &NewOrder,
    new_id: &str,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Json> {
    let payment = crate::payments::capture::payment_row(o);
    let receipt = delivery_id.map(|d| webhooks::receipt_row(d, topic));
    if let Some(ins) = store::insert_pending(db, new_id, o, now, actor, payment, receipt)? {
        return Ok(outcome("created", &ins.id, &ins.number));
    }
    // Another delivery created it since the reads above.
    match store::find_by_source(db, source, &o.external_id)? {
        Some(ex) => Ok(outcome("already_received", &ex.id, &ex.number)),
        None => Err(Error::internal("order conflict without an order")),
    }
}

/// Applies a source update to an order nothing of which has been released yet:
/// what was allocated is given back, the order rewritten, the payment synced.
pub fn replace_order(
    db: &dyn Db,
    ex: &Existing,
    o: &NewOrder,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<()> {
    crate::routing::allocation::deallocate_unreleased(
        db,
        &ex.id,
        now,
        actor,
        "the source changed the order",
    )?;
    store::rewrite_order(db, ex, o, now)?;
    crate::payments::capture::sync_payment(db, &ex.id, o, now)?;
    crate::payments::capture::refresh_financial_status(db, &ex.id, now)?;
    store::rewritten(db, ex, o, now, actor)
}

/// Applies a source update after release that changes nothing fulfillment
/// depends on, and syncs the payment.
pub fn update_after_release(
    db: &dyn Db,
    ex: &Existing,
    o: &NewOrder,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<()> {
    store::update_after_release(db, ex, o, now)?;
    crate::payments::capture::sync_payment(db, &ex.id, o, now)?;
    crate::payments::capture::refresh_financial_status(db, &ex.id, now)?;
    store::updated_after_release(db, ex, o, now, actor)
}

/// A source cancelled the order: everything that can still be cancelled is
/// (unplaced and allocated units, released units not yet picked, cancellation
/// requests to centers; captured money for them refunded, the rest of the
/// authorization voided: [`crate::flows::changes::cancel`]). Returns the units that
/// could not be cancelled (shipped, being picked or packed, or waiting for a
/// center's answer); they put the order on a manual_review hold.
pub fn cancel_open_units(
    db: &dyn Db,
    order_id: &str,
    reason: &str,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<i64> {
    match crate::flows::changes::cancel(db, order_id, &json!({"reason": reason}), actor, now) {
        Ok(_) => {}
        // Nothing left to cancel: only the hold below.
        Err(e) if e.status() == 409 => {}
        Err(e) => return Err(e),
    }
    let stuck = db
        .execute(
            "SELECT COALESCE(SUM(qty_ordered - qty_cancelled), 0) AS n FROM order_lines WHERE order_id = ?",
            params![order_id],
        )?
        .first()
        .map(|r| r.i64("n"))
        .unwrap_or(0);
    if stuck > 0 {
        store::add_hold(
            db,
            order_id,
            HoldReason::ManualReview,
            &format!("cancelled at the source, but {stuck} unit(s) are shipped, being picked or packed, or waiting for the center's answer"),
            now,
            actor,
        )?;
    }
    store::refresh_status(db, order_id, now)?;
    Ok(stuck)
}

/// Creates an API order; a second order with the same `external_id` is a 409.
pub fn create_api_order(db: &dyn Db, o: &NewOrder, now: DateTime<Utc>) -> Result<Json> {
    if let Some(ex) = store::find_by_source(db, Source::Api, &o.external_id)? {
        let mut e = Error::conflict(format!(
            "an order with external_id '{}' already exists: {}",
            o.external_id, ex.number
        ));
        e.errors.push(FieldError::new(
            "/external_id",
            format!("exists as order {}", ex.id),
        ));
        return Err(e);
    }
    let ins = place(db, o, now, "api")?;
    crate::orders::views::order_view(db, &ins.id)?.ok_or_else(|| Error::internal("order vanished"))
}

/// A batch of order documents: each is validated on its own (one bad order does
/// not reject the others); all rejected is a 422 naming every error. Answers the
/// per-order results with the counts.
pub fn api_batch(db: &dyn Db, docs: &[Json], now: DateTime<Utc>) -> Result<Json> {
    if docs.is_empty() {
        return Err(Error::unprocessable("the batch contains no orders"));
    }
    if docs.len() > crate::intake::api::MAX_BATCH {
        return Err(Error::new(
            crate::kernel::error::ErrorKind::PayloadTooLarge,
            format!("at most {} orders per batch", crate::intake::api::MAX_BATCH),
        ));
    }
    let mapped: Vec<Result<NewOrder>> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| crate::intake::sources::api::map_order(d, &format!("/orders/{i}"), now))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let results: Vec<Json> = transaction(db, |db| {
        let mut out = Vec::new();
        for (i, m) in mapped.iter().enumerate() {
            out.push(match m {
                Err(e) => json!({"index": i, "status": e.status(), "result": "rejected", "problem": e.problem()}),
                Ok(o) if !seen.insert(o.external_id.clone()) => json!({
                    "index": i, "status": 422, "result": "rejected",
                    "problem": Error::invalid(vec![FieldError::new(format!("/orders/{i}/external_id"), "appears twice in this batch")]).problem(),
                }),
                Ok(o) => match store::find_by_source(db, Source::Api, &o.external_id)? {
                    Some(ex) => json!({"index": i, "status": 200, "result": "exists", "order_id": ex.id, "number": ex.number}),
                    None => {
                        let ins = place(db, o, now, "api:batch")?;
                        json!({"index": i, "status": 201, "result": "created", "order_id": ins.id, "number": ins.number})
                    }
                },
            });
        }
        Ok::<_, Error>(out)
    })?;
    let rejected = results.iter().filter(|r| r["result"] == "rejected").count();
    if rejected == results.len() {
        let mut e =
            Error::unprocessable(format!("all {rejected} orders in the batch were rejected"));
        for r in &results {
            for fe in r["problem"]["errors"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                e.errors.push(FieldError::new(
                    fe["pointer"].as_str().unwrap_or_default(),
                    fe["detail"].as_str().unwrap_or_default(),
                ));
            }
        }
        return Err(e);
    }
    Ok(json!({
        "accepted": results.len() - rejected,
        "rejected": rejected,
        "results": results,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::db::native::NativeDb;
    use crate::orders::store::Pending;
    use crate::routing::allocation::worker;
    use crate::testkit::{self, one};

    /// Every table a new order touches, as comparable text (row ids and the
    /// `intake` column left out).
    fn dump(db: &NativeDb) -> Vec<String> {
        let mut out = Vec::new();
        for (t, cols) in [
            ("orders", "id, number, source, external_id, external_number, channel, status, fulfillment_status, financial_status, currency, total_minor, customer_email, customer_name, search_text, placed_at, created_at, updated_at, cancelled_at, doc, version"),
            ("order_lines", "*"),
            ("order_holds", "order_id, reason, note, created_at, released_at"),
            ("order_events", "order_id, at, actor, kind, summary, data"),
            ("outbox", "topic, order_id, json(payload) AS payload, created_at, state, next_attempt_at"),
            ("payments", "*"),
            ("webhook_receipts", "*"),
            ("counters", "*"),
        ] {
            let rows = db
                .execute(&format!("SELECT {cols} FROM {t} ORDER BY 1, 2"), &[])
                .unwrap();
            for values in &rows.rows {
                out.push(format!("{t}: {:?}", rows.columns.iter().zip(values).collect::<Vec<_>>()));
            }
        }
        out
    }

    /// A Shopify order with a pending payment (a hold) and a total that
    /// disagrees with its lines (a second hold).
    fn order(ext: &str) -> NewOrder {
        let mut v: Json = serde_json::from_str(include_str!(
            "../../../tests/fixtures/shopify/orders-create.json"
        ))
        .unwrap();
        v["financial_status"] = json!("pending");
        v["total_price"] = json!("1.00");
        v["id"] = json!(ext.parse::<i64>().unwrap());
        crate::intake::sources::shopify::map_order(&v, Utc::now()).unwrap()
    }

    fn at_once(db: &NativeDb, delivery: &str, o: &NewOrder, id: &str) -> Json {
        let now = Utc::now();
        create_at_once(
            db,
            Source::Shopify,
            Some(delivery),
            "orders/create",
            o,
            id,
            now,
            "source:shopify",
        )
        .unwrap()
    }

    #[test]
    fn taken_up_the_one_statement_intake_writes_what_the_transaction_wrote() {
        let o = order("1001");
        assert!(o.holds.len() + 1 >= 2, "the fixture holds the order");
        let now = Utc::now();
        let (a, b) = (testkit::db(), testkit::db());
        // The transactional path, as the order API still writes a new order.
        transaction(&a, |db| {
            webhooks::first_delivery(db, Source::Shopify, "d-1", "orders/create", "id-1", now)?;
            place_with_id(db, "id-1", &o, now, "source:shopify").map(|_| ())
        })
        .unwrap();
        // One statement, then the worker's batch step.
        let answer = create_at_once(
            &b,
            Source::Shopify,
            Some("d-1"),
            "orders/create",
            &o,
            "id-1",
            now,
            "source:shopify",
        )
        .unwrap();
        assert_eq!(answer["result"], "created");
        assert_eq!(
            one(&b, "SELECT COUNT(*) AS n FROM order_lines"),
            0,
            "the lines are pending"
        );
        assert_eq!(
            one(
                &b,
                "SELECT COUNT(*) AS n FROM orders WHERE intake IS NOT NULL"
            ),
            1
        );
        transaction(&b, |db| worker::take_up(db, &Pending::UpTo(i64::MAX))).unwrap();
        assert_eq!(dump(&a), dump(&b));
        assert!(
            dump(&b).iter().any(|r| r.starts_with("order_holds:")),
            "holds written"
        );
        assert_eq!(
            one(
                &b,
                "SELECT COUNT(*) AS n FROM orders WHERE intake IS NOT NULL"
            ),
            0
        );
        // Taken up once: a second pass writes nothing.
        assert_eq!(
            transaction(&b, |db| worker::take_up(db, &Pending::UpTo(i64::MAX))).unwrap(),
            0
        );
        assert_eq!(dump(&a), dump(&b));
    }

    /// Counts the statements run through it.
    struct Counting<'a>(&'a NativeDb, std::cell::Cell<usize>);
    impl Db for Counting<'_> {
        fn execute(
            &self,
            sql: &str,
            params: &[crate::kernel::db::Value],
        ) -> std::result::Result<crate::kernel::db::Rows, crate::kernel::db::DbError> {
            self.1.set(self.1.get() + 1);
            self.0.execute(sql, params)
        }
    }

    #[test]
    fn a_batch_is_taken_up_in_statements_independent_of_its_size() {
        let db = testkit::db();
        for i in 0..30 {
            at_once(
                &db,
                &format!("d-{i}"),
                &order(&format!("{}", 2000 + i)),
                &format!("id-{i}"),
            );
        }
        let counting = Counting(&db, std::cell::Cell::new(0));
        let n = worker::take_up(&counting, &Pending::UpTo(i64::MAX)).unwrap();
        assert_eq!(n, 30);
        assert_eq!(
            counting.1.get(),
            7,
            "one statement per table and the clear, for 30 orders"
        );
        assert_eq!(one(&db, "SELECT COUNT(*) AS n FROM webhook_receipts"), 30);
        assert_eq!(one(&db, "SELECT COUNT(*) AS n FROM payments"), 30);
    }

    #[test]
    fn a_redelivery_writes_nothing_before_and_after_the_take_up() {
        let db = testkit::db();
        let o = order("1001");
        assert_eq!(at_once(&db, "d-1", &o, "id-1")["result"], "created");
        let send = |d: &str, o: &NewOrder| {
            apply(
                &db,
                Source::Shopify,
                Some(d),
                "orders/create",
                Action::Create(o.clone()),
                Utc::now(),
            )
            .unwrap()["result"]
                .clone()
        };
        let mut other = order("1002");
        other.external_id = "another".into();
        // While pending: the same order, under its delivery id or another.
        assert_eq!(send("d-1", &o), "already_received");
        assert_eq!(send("d-2", &o), "already_received");
        transaction(&db, |db| worker::take_up(db, &Pending::UpTo(i64::MAX))).unwrap();
        assert_eq!(send("d-1", &o), "already_received");
        // Taken up, the receipt stops another order under a delivery id used.
        assert_eq!(send("d-1", &other), "duplicate_delivery");
        assert_eq!(one(&db, "SELECT COUNT(*) AS n FROM orders"), 1);
        assert_eq!(
            one(&db, "SELECT COUNT(*) AS n FROM order_lines"),
            order("1").lines.len() as i64
        );
    }

    #[test]
    fn a_pending_order_is_complete_for_a_read_and_for_a_change() {
        let db = testkit::db();
        let o = order("1001");
        let id = at_once(&db, "d-1", &o, &uuid::Uuid::now_v7().to_string())["order_id"]
            .as_str()
            .unwrap()
            .to_string();
        // Routing finds nothing to place in an order whose lines are pending
        // (the worker takes them up before it routes).
        testkit::facility(&db, "wh", "WH", "warehouse", "[]", 52.5, 13.4);
        for l in &o.lines {
            testkit::product(&db, &l.sku, 100, false);
            testkit::stock(&db, "wh", &l.sku, 10);
        }
        let trigger = crate::routing::allocation::Trigger::Intake;
        transaction(&db, |db| {
            crate::routing::allocation::route_order(db, &id, trigger, Utc::now())
        })
        .unwrap();
        crate::routing::allocation::process_order(&db, &id, trigger, Utc::now()).unwrap();
        assert_eq!(one(&db, "SELECT COUNT(*) AS n FROM routing_decisions"), 0);
        // A read takes it up first.
        take_up_for_read(&db, &id).unwrap();
        let view = crate::flows::order_detail::order_detail(&db, &id).unwrap();
        assert_eq!(view["lines"].as_array().unwrap().len(), o.lines.len());
        // A change on another pending order sees its lines.
        let id2 = at_once(
            &db,
            "d-2",
            &order("1002"),
            &uuid::Uuid::now_v7().to_string(),
        )["order_id"]
            .as_str()
            .unwrap()
            .to_string();
        transaction(&db, |db| {
            crate::flows::changes::cancel(db, &id2, &json!({}), "api", Utc::now())
        })
        .unwrap();
        let open = one(
            &db,
            &format!("SELECT SUM(qty_ordered - qty_cancelled) AS n FROM order_lines WHERE order_id = '{id2}'"),
        );
        assert_eq!(open, 0, "every unit cancelled");
        assert_eq!(
            transaction(&db, |db| worker::take_up(db, &Pending::UpTo(i64::MAX))).unwrap(),
            0
        );
    }

    #[test]
    fn a_kick_takes_up_pending_orders_and_routes_them() {
        let db = testkit::db();
        let o = order("3000");
        testkit::facility(&db, "wh", "WH", "warehouse", "[]", 52.5, 13.4);
        for l in &o.lines {
            testkit::product(&db, &l.sku, 100, false);
            testkit::stock(&db, "wh", &l.sku, 100);
        }
        for i in 0..3 {
            at_once(
                &db,
                &format!("d-{i}"),
                &order(&format!("{}", 3000 + i)),
                &format!("id-{i}"),
            );
        }
        let rep = worker::kick(&db, std::time::Duration::from_secs(30)).unwrap();
        assert_eq!(rep.failed, 0);
        assert_eq!(
            one(
                &db,
                "SELECT COUNT(*) AS n FROM orders WHERE intake IS NOT NULL"
            ),
            0
        );
        assert_eq!(
            one(
                &db,
                "SELECT COUNT(DISTINCT order_id) AS n FROM routing_decisions"
            ),
            3
        );
        assert_eq!(
            one(
                &db,
                "SELECT SUM(qty_ordered - qty_allocated - qty_released) AS n FROM order_lines"
            ),
            0,
            "every unit placed"
        );
    }
}
