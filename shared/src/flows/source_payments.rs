//! Payment records the shops send (Shopify's order transactions), booked in the
//! payment ledger once per delivery.

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::intake::webhooks;
use crate::kernel::db::{transaction, Db};
use crate::kernel::error::{Error, Result};
use crate::orders::model::Source;

/// `order_transactions/create`: the shop's record of an authorization, a
/// capture, a void or a refund, booked in the payment ledger. A transaction
/// for an order Waybill does not have (yet) is acknowledged and ignored:
/// failing it would make Shopify retry and, in the end, drop the subscription.
pub fn shopify_transaction(
    db: &dyn Db,
    delivery: Option<&str>,
    topic: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Json> {
    let v = crate::kernel::json::parse_json(body)?;
    let t = crate::intake::sources::shopify::map_transaction(&v)?;
    transaction(db, |db| {
        if let Some(d) = delivery {
            if !webhooks::first_delivery(db, Source::Shopify, d, topic, &t.id, now)? {
                return Ok(json!({"result": "duplicate_delivery", "delivery_id": d}));
            }
        }
        let Some(ex) = crate::orders::store::find_by_source(db, Source::Shopify, &t.order_id)?
        else {
            return Ok(
                json!({"result": "ignored", "reason": format!("no order with Shopify id {}", t.order_id)}),
            );
        };
        crate::routing::allocation::worker::take_up_order(db, &ex.id)?;
        let done = crate::payments::capture::source_transaction(db, &ex.id, &t, now)?;
        Ok::<_, Error>(
            json!({"result": done, "order_id": ex.id, "number": ex.number, "transaction_id": t.id}),
        )
    })
}
