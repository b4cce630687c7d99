//! Receiving a return: inspection and restock (returns, inventory), the refund
//! of exactly the received units' capture shares (payments), and an exchange's
//! replacement order (intake's API document, placed with its payment record).

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::kernel::db::Db;
use crate::kernel::error::Result;
use crate::payments::capture::{refund, RefundRequest};
use crate::returns::{self, Received};

/// Receives returned units (in the caller's transaction).
pub fn receive(
    db: &dyn Db,
    key: &str,
    v: &Json,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Received> {
    let rc = returns::inspect(db, key, v, actor, now)?;
    let mut refund_tx = Json::Null;
    if let Some(due) = &rc.refund {
        let req = RefundRequest {
            lines: due.lines.clone(),
            shipping: due.shipping,
            amount: None,
            reason: due.reason.clone(),
        };
        match refund(db, &rc.order_id, &req, actor, now) {
            Ok(tx) => {
                returns::refund_booked(db, &rc, &tx)?;
                refund_tx = json!(tx);
            }
            // Nothing captured (a pending order): received, the refund is the operator's.
            Err(e) if e.status() == 409 => returns::refund_skipped(db, &rc, &e.detail, actor, now)?,
            Err(e) => return Err(e),
        }
    }
    let mut replacement = None;
    if let Some(body) = &rc.exchange {
        let o = crate::intake::sources::api::map_order(body, "", now)?;
        let ins = crate::flows::intake::place(db, &o, now, actor)?;
        returns::exchanged(db, &rc, &ins.id, &ins.number, actor, now)?;
        replacement = Some(ins.id);
    }
    returns::finish(db, rc, refund_tx, replacement, now)
}
