//! Digital delivery: licence keys go to the customer by e-mail
//! (`license.assigned`). Keys are claimed by routing; when the order's units
//! are captured at release they wait, claimed, until the capture that pays for
//! them succeeds ([`deliver_held`], called when the capture settles), like a
//! fulfillment order waits for its capture before it is released. Otherwise
//! routing delivers them at once with the same messages ([`messages`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::inventory::stock::{self, DeliveredKey};
use crate::kernel::db::Db;
use crate::kernel::error::Result;
use crate::orders::{lines, store};
use crate::params;

/// Keys claimed for the order that no live capture pays for yet, per line.
pub fn unpaid(db: &dyn Db, order_id: &str) -> Result<BTreeMap<i64, i64>> {
    stock::unpaid_keys(db, order_id)
}

/// Those keys are now paid for by `capture_id`.
pub fn paid_by(db: &dyn Db, order_id: &str, capture_id: &str) -> Result<()> {
    stock::pay_keys(db, order_id, capture_id)
}

/// The keys `capture_id` pays for that are still the order's, per line.
pub fn held_for(db: &dyn Db, capture_id: &str) -> Result<BTreeMap<i64, i64>> {
    stock::keys_paid_by(db, capture_id)
}

/// Who the keys go to.
pub struct Recipient<'a> {
    pub order_id: &'a str,
    pub number: &'a str,
    pub email: &'a Option<String>,
    pub customer_name: &'a Option<String>,
}

/// A line's delivered keys.
pub struct LineKeys<'a> {
    pub line_no: i64,
    pub sku: &'a str,
    pub name: &'a str,
    pub keys: Vec<String>,
    /// The pool had fewer keys than the line wanted (the rest waits).
    pub partial: bool,
}

/// The timeline entries and the outbox message of one line's delivered keys.
pub fn messages(
    to: &Recipient<'_>,
    l: &LineKeys<'_>,
) -> (Vec<(&'static str, String, Json)>, (&'static str, Json)) {
    let got = l.keys.len();
    let ev = vec![
        (
            "license.assigned",
            format!("{got} licence key(s) assigned for {}", l.sku),
            json!({"line_no": l.line_no, "sku": l.sku, "quantity": got}),
        ),
        (
            "shipment.shipped",
            format!("{got} digital unit(s) of {} delivered by e-mail", l.sku),
            json!({"facility": "digital", "units": got, "partial": l.partial}),
        ),
    ];
    let obx = (
        "license.assigned",
        json!({"order_id": to.order_id, "number": to.number, "email": to.email, "customer_name": to.customer_name,
               "line_no": l.line_no, "sku": l.sku, "name": l.name, "quantity": got,
               "license_key": l.keys.join(", "), "license_keys": l.keys}),
    );
    (ev, obx)
}

/// The timeline entry of keys claimed for an order that wait for their capture.
pub fn held_message(line_no: i64, sku: &str, got: i64) -> (&'static str, String, Json) {
    (
        "license.held",
        format!("{got} licence key(s) of {sku} held for the order, delivered when the payment is captured"),
        json!({"line_no": line_no, "sku": sku, "quantity": got}),
    )
}

/// Held keys go to the customer, their units are shipped and delivered: those
/// a capture paid for when it succeeds (`capture_id`), or all of the order's
/// when nothing is captured at release any more. Runs in the caller's
/// transaction; returns the units delivered.
pub fn deliver_held(
    db: &dyn Db,
    order_id: &str,
    capture_id: Option<&str>,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<i64> {
    let keys = stock::deliver_keys(db, order_id, None, capture_id, now)?;
    if keys.is_empty() {
        return Ok(0);
    }
    let o = db.execute(
        "SELECT number, customer_email, customer_name FROM orders WHERE id = ?",
        params![order_id],
    )?;
    let Some(o) = o.first() else {
        return Ok(0);
    };
    let (number, email, customer_name) = (
        o.str("number"),
        o.opt_str("customer_email"),
        o.opt_str("customer_name"),
    );
    let names: BTreeMap<i64, (String, String)> = db
        .execute(
            "SELECT line_no, sku, name FROM order_lines WHERE order_id = ?",
            params![order_id],
        )?
        .iter()
        .map(|r| (r.i64("line_no"), (r.str("sku"), r.str("name"))))
        .collect();
    let mut by_line: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for DeliveredKey { line_no, key } in keys {
        by_line.entry(line_no).or_default().push(key);
    }
    let to = Recipient {
        order_id,
        number: &number,
        email: &email,
        customer_name: &customer_name,
    };
    let (mut ev, mut obx) = (Vec::new(), Vec::new());
    let mut units = 0;
    for (line_no, keys) in by_line {
        let (sku, name) = names.get(&line_no).cloned().unwrap_or_default();
        lines::deliver_allocated(db, order_id, line_no, keys.len() as i64)?;
        units += keys.len() as i64;
        let (e, m) = messages(
            &to,
            &LineKeys {
                line_no,
                sku: &sku,
                name: &name,
                keys,
                partial: false,
            },
        );
        ev.extend(e);
        obx.push(m);
    }
    store::record_batch(db, order_id, now, actor, &ev, &obx)?;
    store::refresh_status(db, order_id, now)?;
    Ok(units)
}
