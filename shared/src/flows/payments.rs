//! The operator's payment retry: the retry is recorded in the ledger
//! (payments), then the order's allocated work is released again (routing,
//! through its captures) and, for a gateway, sent before the answer.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::kernel::db::Db;
use crate::kernel::error::Result;
use crate::orders::store;
use crate::payments::capture::{payment_view, process_due, record_retry};
use crate::payments::gateway::{Http, StripeConfig};

/// Records a retry and releases what it unblocks (in the caller's transaction).
pub fn retry(
    db: &dyn Db,
    order_id: &str,
    body: &Json,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    crate::routing::allocation::worker::take_up_order(db, order_id)?;
    record_retry(db, order_id, body, actor, now)?;
    crate::routing::allocation::release(db, order_id, now)?;
    store::refresh_status(db, order_id, now)?;
    Ok(())
}

/// After a retry is in the ledger: sends what is due for the order to the
/// gateway (outside any transaction) and answers the payment.
pub fn retry_sent(
    db: &dyn Db,
    http: &dyn Http,
    stripe: &StripeConfig,
    order_id: &str,
    now: DateTime<Utc>,
) -> Result<Json> {
    process_due(db, http, stripe, Some(&[order_id.to_string()]), now, 50)?;
    payment_view(db, order_id)
}
