//! Release: an allocated fulfillment order (`on_hold` or `scheduled`) goes to
//! its facility. Its units move from allocated to released, the timeline and
//! the outbox say so (`fulfillment_order.released`: a center's request, the
//! customer's e-mail), and in-house facilities get their pick job.

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::fulfillment::status::{set_status, FoStatus};
use crate::kernel::db::Db;
use crate::kernel::error::Result;
use crate::orders::store::{self, enqueue, record_event};
use crate::params;

/// The outbox payload of a released fulfillment order (for the shipment
/// component, the fulfillment center and subscribers).
#[allow(clippy::too_many_arguments)]
pub fn released_payload(
    fo_id: &str,
    name: &str,
    order_id: &str,
    number: &str,
    facility: &str,
    pickup: bool,
    email: &Option<String>,
    customer_name: &Option<String>,
    doc: &Json,
    items: &[Json],
) -> Json {
    json!({"fulfillment_order_id": fo_id, "fulfillment_order": name, "order_id": order_id, "number": number,
           "facility": facility, "pickup": pickup, "email": email, "customer_name": customer_name,
           "shipping_address": doc["shipping_address"], "shipping_method": doc["shipping_lines_minor"][0]["method"],
           "lines": items})
}

/// The units a fulfillment order holds.
pub fn units(db: &dyn Db, fo_id: &str) -> Result<i64> {
    Ok(db
        .execute(
            "SELECT COALESCE(SUM(quantity), 0) AS n FROM fulfillment_order_lines WHERE fulfillment_order_id = ?",
            params![fo_id],
        )?
        .first()
        .map(|r| r.i64("n"))
        .unwrap_or(0))
}

/// Releases one allocated fulfillment order (`on_hold` or `scheduled`): its
/// units move from allocated to released, the timeline and the outbox
/// (`fulfillment_order.released`) say so. Returns the units released (0 if it
/// was not waiting).
pub fn release(db: &dyn Db, fo_id: &str, now: DateTime<Utc>) -> Result<i64> {
    let fos = db.execute(
        "SELECT f.id, f.order_id, f.name, f.facility_id, f.pickup, o.number, o.doc, o.customer_email, o.customer_name,
                (SELECT type FROM facilities WHERE id = f.facility_id) AS facility_type
         FROM fulfillment_orders f JOIN orders o ON o.id = f.order_id
         WHERE f.id = ? AND f.status IN ('on_hold', 'scheduled')",
        params![fo_id],
    )?;
    let Some(f) = fos.first() else {
        return Ok(0);
    };
    let order_id = f.str("order_id");
    let order_id = order_id.as_str();
    let mut total = 0;
    // One read of the lines for the release and for the pick job.
    let lines = db.execute(
        &format!("{} ORDER BY fl.line_no", super::PICK_LINES),
        params![order_id, f.str("facility_id"), fo_id],
    )?;
    let mut items = Vec::new();
    let mut units = std::collections::BTreeMap::new();
    for l in lines.iter() {
        let q = l.i64("quantity");
        *units.entry(l.i64("line_no")).or_insert(0) += q;
        total += q;
        items.push(json!({"line_no": l.i64("line_no"), "sku": l.str("sku"), "part_number": l.opt_str("part_number"),
                          "name": l.str("name"), "quantity": q}));
    }
    crate::orders::lines::release(db, order_id, &units)?;
    set_status(db, fo_id, FoStatus::Open, now)?;
    let doc: Json = serde_json::from_str(&f.str("doc")).unwrap_or(Json::Null);
    let name = f.str("name");
    let facility = f.str("facility_id");
    record_event(
        db,
        order_id,
        now,
        "routing",
        "fulfillment_order.released",
        &format!("{name} released to {facility}"),
        json!({"fulfillment_order": name, "facility": facility, "units": total}),
    )?;
    let payload = released_payload(
        fo_id,
        &name,
        order_id,
        &f.str("number"),
        &facility,
        f.i64("pickup") != 0,
        &f.opt_str("customer_email"),
        &f.opt_str("customer_name"),
        &doc,
        &items,
    );
    enqueue(
        db,
        "fulfillment_order.released",
        Some(order_id),
        payload,
        now,
    )?;
    let fo = super::Fo::of_row(&f, FoStatus::Open.as_str().to_string());
    // An in-house facility gets its pick job (`fulfillment::on_released`,
    // from the rows read here).
    if !fo.external {
        super::open_pick_job(db, &fo, &lines, now)?;
    }
    store::refresh_status(db, order_id, now)?;
    Ok(total)
}
