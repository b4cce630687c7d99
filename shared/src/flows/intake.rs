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
        if let Some(ex) =
            store::find_by_source(&crate::kernel::db::Patient(db), source, &o.external_id)?
        {
            return Ok(outcome("already_received", &ex.id, &ex.number));
        }
    }
    transaction(db, |db| {
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
