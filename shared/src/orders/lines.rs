//! The order lines and their quantity buckets. This is the only module that
//! writes `order_lines`: every move of units between buckets (allocated,
//! released, shipped, delivered, backordered, cancelled, returned) is one named
//! function here, so the invariants of a line read in one file:
//!
//! `allocated + released + shipped + backordered + cancelled <= ordered`,
//! `delivered <= shipped`, `returned <= shipped`.
//!
//! Every function runs inside the caller's transaction.

use std::collections::BTreeMap;

use crate::kernel::db::{Db, Value};
use crate::kernel::error::Result;
use crate::orders::model::NewOrder;
use crate::params;

/// All lines in one multi-row INSERT (one statement, one host call).
pub fn insert(db: &dyn Db, order_id: &str, o: &NewOrder) -> Result<()> {
    let mut sql = String::from(
        "INSERT INTO order_lines (order_id, line_no, external_id, sku, name, unit_price_minor, subtotal_minor,
            discount_minor, tax_minor, requires_shipping, qty_ordered, qty_cancelled) VALUES ",
    );
    let mut p: Vec<Value> = Vec::with_capacity(o.lines.len() * 12);
    for (i, l) in o.lines.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
        let cancelled = if o.cancelled { l.quantity } else { 0 };
        p.extend([
            Value::from(order_id),
            Value::Integer((i + 1) as i64),
            Value::from(l.external_id.clone()),
            Value::from(&l.sku),
            Value::from(&l.name),
            Value::Integer(l.unit_price),
            Value::Integer(l.subtotal),
            Value::Integer(l.discount),
            Value::Integer(l.tax),
            Value::from(l.requires_shipping),
            Value::Integer(l.quantity),
            Value::Integer(cancelled),
        ]);
    }
    db.execute(&sql, &p)?;
    Ok(())
}

/// A new order's lines as the rows [`insert`] writes, pending in the order's
/// `intake` column (`orders::store::insert_pending`): line number, external
/// id, SKU, name, unit price, subtotal, discount, tax, requires shipping,
/// ordered, cancelled.
pub fn rows(o: &NewOrder) -> Vec<serde_json::Value> {
    o.lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::json!([
                i + 1,
                l.external_id,
                l.sku,
                l.name,
                l.unit_price,
                l.subtotal,
                l.discount,
                l.tax,
                l.requires_shipping,
                l.quantity,
                if o.cancelled { l.quantity } else { 0 }
            ])
        })
        .collect()
}

/// Writes the pending lines of the orders `p` names ([`rows`]): one
/// statement, however many orders.
pub fn settle_pending(db: &dyn Db, p: &crate::orders::store::Pending) -> Result<()> {
    let (cond, v) = p.filter();
    db.execute(
        &format!(
            "INSERT INTO order_lines (order_id, line_no, external_id, sku, name, unit_price_minor, subtotal_minor,
                discount_minor, tax_minor, requires_shipping, qty_ordered, qty_cancelled)
             SELECT o.id, json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), json_extract(j.value, '$[2]'),
                json_extract(j.value, '$[3]'), json_extract(j.value, '$[4]'), json_extract(j.value, '$[5]'),
                json_extract(j.value, '$[6]'), json_extract(j.value, '$[7]'), json_extract(j.value, '$[8]'),
                json_extract(j.value, '$[9]'), json_extract(j.value, '$[10]')
             FROM orders o, json_each(o.intake, '$.lines') j WHERE {cond}"
        ),
        &[v],
    )?;
    Ok(())
}

/// The source sent a new version of the order: its lines replace the old ones.
pub fn replace(db: &dyn Db, order_id: &str, o: &NewOrder) -> Result<()> {
    db.execute(
        "DELETE FROM order_lines WHERE order_id = ?",
        params![order_id],
    )?;
    insert(db, order_id, o)
}

/// A line added by an order change (a substitute); returns its line number.
pub struct AddedLine<'a> {
    pub sku: &'a str,
    pub name: &'a str,
    pub unit_price: i64,
    pub subtotal: i64,
    pub discount: i64,
    pub tax: i64,
    pub quantity: i64,
}

pub fn add(db: &dyn Db, order_id: &str, l: &AddedLine<'_>) -> Result<i64> {
    let line_no = db
        .execute(
            "SELECT COALESCE(MAX(line_no), 0) + 1 AS n FROM order_lines WHERE order_id = ?",
            params![order_id],
        )?
        .first()
        .map(|r| r.i64("n"))
        .unwrap_or(1);
    db.execute(
        "INSERT INTO order_lines (order_id, line_no, external_id, sku, name, unit_price_minor, subtotal_minor, discount_minor, tax_minor,
            requires_shipping, qty_ordered) VALUES (?, ?, NULL, ?, ?, ?, ?, ?, ?, 1, ?)",
        params![order_id, line_no, l.sku, l.name, l.unit_price, l.subtotal, l.discount, l.tax, l.quantity],
    )?;
    Ok(line_no)
}

/// What one routing pass adds to the buckets, per line number. Shipped units
/// (digital goods fulfilled at once) count as delivered too.
#[derive(Debug, Default)]
pub struct Placement {
    pub allocated: BTreeMap<i64, i64>,
    pub released: BTreeMap<i64, i64>,
    pub shipped: BTreeMap<i64, i64>,
    /// The new backordered count (replaces the old one).
    pub backordered: BTreeMap<i64, i64>,
}

impl Placement {
    pub fn is_empty(&self) -> bool {
        self.allocated.is_empty()
            && self.released.is_empty()
            && self.shipped.is_empty()
            && self.backordered.is_empty()
    }
}

/// A routing pass's placement, for every line in one statement.
pub fn place(db: &dyn Db, order_id: &str, p: &Placement) -> Result<()> {
    if p.is_empty() {
        return Ok(());
    }
    fn case(m: &BTreeMap<i64, i64>, otherwise: &str, prm: &mut Vec<Value>) -> String {
        if m.is_empty() {
            return otherwise.into();
        }
        let mut sql = "CASE line_no".to_string();
        for (k, v) in m {
            sql.push_str(" WHEN ? THEN ?");
            prm.extend([Value::from(*k), Value::from(*v)]);
        }
        sql.push_str(&format!(" ELSE {otherwise} END"));
        sql
    }
    let mut prm = Vec::new();
    let ca = case(&p.allocated, "0", &mut prm);
    let cr = case(&p.released, "0", &mut prm);
    let cs = case(&p.shipped, "0", &mut prm);
    let cd = case(&p.shipped, "0", &mut prm);
    let cb = case(&p.backordered, "qty_backordered", &mut prm);
    prm.push(Value::from(order_id));
    db.execute(
        &format!(
            "UPDATE order_lines SET qty_allocated = qty_allocated + {ca}, qty_released = qty_released + {cr},
                qty_shipped = qty_shipped + {cs}, qty_delivered = qty_delivered + {cd}, qty_backordered = {cb}
             WHERE order_id = ?"
        ),
        &prm,
    )?;
    Ok(())
}

/// Allocated units given back to stock (a re-route, a cancelled placement).
pub fn unallocate(db: &dyn Db, order_id: &str, line_no: i64, q: i64) -> Result<()> {
    db.execute(
        "UPDATE order_lines SET qty_allocated = MAX(qty_allocated - ?, 0) WHERE order_id = ? AND line_no = ?",
        params![q, order_id, line_no],
    )?;
    Ok(())
}

/// A fulfillment order was released: its units (line, units) move from
/// allocated to released, in one statement.
pub fn release(db: &dyn Db, order_id: &str, units: &BTreeMap<i64, i64>) -> Result<()> {
    if units.is_empty() {
        return Ok(());
    }
    let mut prm = Vec::with_capacity(units.len() * 2 + 1);
    let mut case = "CASE line_no".to_string();
    for (line_no, q) in units {
        case.push_str(&format!(" WHEN ?{} THEN ?{}", prm.len() + 1, prm.len() + 2));
        prm.extend([Value::from(*line_no), Value::from(*q)]);
    }
    case.push_str(" ELSE 0 END");
    prm.push(Value::from(order_id));
    db.execute(
        &format!(
            "UPDATE order_lines SET qty_allocated = qty_allocated - ({case}), qty_released = qty_released + ({case})
             WHERE order_id = ?{n}",
            n = prm.len()
        ),
        &prm,
    )?;
    Ok(())
}

/// Units left in a shipment (delivered at once when the shipment says so).
pub fn ship(db: &dyn Db, order_id: &str, line_no: i64, q: i64, delivered: bool) -> Result<()> {
    db.execute(
        "UPDATE order_lines SET qty_released = MAX(qty_released - ?1, 0), qty_shipped = qty_shipped + ?1,
            qty_delivered = qty_delivered + ?2 WHERE order_id = ?3 AND line_no = ?4",
        params![q, if delivered { q } else { 0 }, order_id, line_no],
    )?;
    Ok(())
}

/// Licence keys paid for and sent to the customer: their allocated units are
/// shipped and delivered at once.
pub fn deliver_allocated(db: &dyn Db, order_id: &str, line_no: i64, q: i64) -> Result<()> {
    db.execute(
        "UPDATE order_lines SET qty_allocated = MAX(qty_allocated - ?1, 0), qty_shipped = qty_shipped + ?1,
            qty_delivered = qty_delivered + ?1 WHERE order_id = ?2 AND line_no = ?3",
        params![q, order_id, line_no],
    )?;
    Ok(())
}

/// The carrier delivered shipped units (never more than were shipped).
pub fn deliver(db: &dyn Db, order_id: &str, line_no: i64, q: i64) -> Result<()> {
    db.execute(
        "UPDATE order_lines SET qty_delivered = MIN(qty_delivered + ?, qty_shipped) WHERE order_id = ? AND line_no = ?",
        params![q, order_id, line_no],
    )?;
    Ok(())
}

/// Released units that were not on the shelf: they leave the released bucket
/// and, when the short-pick policy backorders, wait as a backorder.
pub fn short_picked(
    db: &dyn Db,
    order_id: &str,
    line_no: i64,
    q: i64,
    backorder: bool,
) -> Result<()> {
    db.execute(
        if backorder {
            "UPDATE order_lines SET qty_released = MAX(qty_released - ?1, 0), qty_backordered = qty_backordered + ?1 WHERE order_id = ?2 AND line_no = ?3"
        } else {
            "UPDATE order_lines SET qty_released = MAX(qty_released - ?1, 0) WHERE order_id = ?2 AND line_no = ?3"
        },
        params![q, order_id, line_no],
    )?;
    Ok(())
}

/// Shipped units came back.
pub fn returned(db: &dyn Db, order_id: &str, line_no: i64, q: i64) -> Result<()> {
    db.execute(
        "UPDATE order_lines SET qty_returned = qty_returned + ? WHERE order_id = ? AND line_no = ?",
        params![q, order_id, line_no],
    )?;
    Ok(())
}

/// Cancelled units that were not placed (backordered or waiting).
pub fn cancel_unplaced(db: &dyn Db, order_id: &str, line_no: i64, q: i64) -> Result<()> {
    db.execute(
        "UPDATE order_lines SET qty_cancelled = qty_cancelled + ?1, qty_backordered = MAX(qty_backordered - ?1, 0)
         WHERE order_id = ?2 AND line_no = ?3",
        params![q, order_id, line_no],
    )?;
    Ok(())
}

/// Which bucket cancelled placed units leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    Allocated,
    Released,
}

/// Cancelled units that sat in a fulfillment order.
pub fn cancel_placed(
    db: &dyn Db,
    order_id: &str,
    line_no: i64,
    q: i64,
    from: Placed,
) -> Result<()> {
    db.execute(
        match from {
            Placed::Allocated => "UPDATE order_lines SET qty_allocated = MAX(qty_allocated - ?1, 0), qty_cancelled = qty_cancelled + ?1 WHERE order_id = ?2 AND line_no = ?3",
            Placed::Released => "UPDATE order_lines SET qty_released = MAX(qty_released - ?1, 0), qty_cancelled = qty_cancelled + ?1 WHERE order_id = ?2 AND line_no = ?3",
        },
        params![q, order_id, line_no],
    )?;
    Ok(())
}

/// Every backorder of the order is dropped (it is routed again from scratch).
pub fn clear_backorders(db: &dyn Db, order_id: &str) -> Result<()> {
    db.execute(
        "UPDATE order_lines SET qty_backordered = 0 WHERE order_id = ?",
        params![order_id],
    )?;
    Ok(())
}
