//! The order document with everything a CRM asks ("where is my order?") in one
//! call: the order, its fulfillment orders, shipments with tracking, payment and
//! returns. A read that spans contexts, so it lives with the flows.

use serde_json::{json, Value as Json};

use crate::kernel::db::Db;
use crate::kernel::error::{Error, Result};
use crate::orders::views;

pub fn order_detail(db: &dyn Db, key: &str) -> Result<Json> {
    let id = views::find(db, key)?;
    let mut view =
        views::order_view(db, &id)?.ok_or_else(|| Error::not_found(format!("no order '{key}'")))?;
    view["fulfillment_orders"] = json!(crate::fulfillment::fulfillment_orders_of(db, &id)?);
    let shipments = crate::fulfillment::shipments_view(db, &id)?;
    view["shipments"] = json!(shipments["shipments"]
        .as_array()
        .map(|a| a
            .iter()
            .map(|s| json!({"id": s["id"], "fulfillment_order": s["fulfillment_order"], "facility": s["facility"],
                "carrier": s["carrier"], "tracking_number": s["tracking_number"], "tracking_url": s["tracking_url"],
                "status": s["status"], "shipped_at": s["shipped_at"], "delivered_at": s["delivered_at"]}))
            .collect::<Vec<_>>())
        .unwrap_or_default());
    let p = crate::payments::capture::payment_view(db, &id)?;
    view["payment"] = json!({"gateway": p["gateway"], "authorized": p["authorized"], "captured": p["captured"],
        "refunded": p["refunded"], "voided": p["voided"], "invoices": p["invoices"], "credit_memos": p["credit_memos"]});
    let r = crate::returns::list_for_order(db, &id)?;
    view["returns"] = json!(r["returns"]
        .as_array()
        .map(|a| a
            .iter()
            .map(|x| json!({"id": x["id"], "number": x["number"], "status": x["status"], "resolution": x["resolution"]}))
            .collect::<Vec<_>>())
        .unwrap_or_default());
    Ok(view)
}
