//! Facilities, the catalog data routing needs, stock per (facility, SKU),
//! licence-key pools and the fulfillment centers' inventory feeds (the
//! inventory component). Every change that can make stock available returns
//! the SKUs concerned, so the caller releases backorders for them.

pub mod facility;
pub mod stock;

mod catalog;
pub use catalog::*;
mod keys;
pub use keys::*;
mod feeds;
pub use feeds::*;

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::kernel::db::{transaction, Db, Value};
use crate::kernel::error::{Error, ErrorKind, FieldError, Result};
use crate::kernel::kv::Kv;
use crate::kernel::time::ts;
use crate::kernel::url::Receivers;
use crate::params;
use facility::{FacilityType, Service};
use stock::{move_stock, Change};

/// The most licence keys one import may carry.
pub const MAX_KEYS_PER_IMPORT: usize = 10_000;
/// The most levels one FC snapshot may carry.
pub const MAX_LEVELS: usize = 50_000;
/// Signed FC callbacks older or newer than this are refused.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

pub struct Config<'a> {
    /// Reads a Spin variable by name (a facility names the one holding its secret).
    pub secret: &'a dyn Fn(&str) -> Option<String>,
    /// The hosts the operator allows facility endpoints to name (`outbound_receivers`).
    pub receivers: &'a Receivers,
}

/// What a request did, for the component to follow up.
#[derive(Debug, Default)]
pub struct Effects {
    /// SKUs whose availability went up: release their backorders.
    pub restocked: Vec<String>,
}

pub fn ok_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

fn ok_sku(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(|c| c.is_control())
}

/// A facility's `secret_variable`: one of the Spin variables declared for
/// fulfillment-center secrets. The names from before the rename (`fc_secret_1..3`,
/// which Spin's manifest refuses) are taken and stored under their new names.
fn secret_variable_name(s: &str) -> Option<&'static str> {
    FC_SECRET_VARIABLES
        .iter()
        .zip(LEGACY_FC_SECRET_VARIABLES)
        .find(|(new, old)| **new == s || *old == s)
        .map(|(new, _)| *new)
}

const LEGACY_FC_SECRET_VARIABLES: [&str; 3] = ["fc_secret_1", "fc_secret_2", "fc_secret_3"];

/// The Spin variables declared for fulfillment centers' signing secrets. Each word
/// of a Spin variable name starts with a letter (the manifest refuses
/// `fc_secret_1`), hence letters, not numbers.
pub const FC_SECRET_VARIABLES: [&str; 3] = ["fc_secret_a", "fc_secret_b", "fc_secret_c"];

// ---- stock ----

/// A physical SKU known to the catalog, else 404/422 naming the pointer.
fn physical_sku(db: &dyn Db, sku: &str, pointer: &str) -> std::result::Result<(), FieldError> {
    match db.execute("SELECT digital FROM products WHERE sku = ?", params![sku]) {
        Ok(r) => match r.first() {
            None => Err(FieldError::new(
                pointer,
                format!("no product '{sku}' in the catalog (PUT /api/products/{sku} first)"),
            )),
            Some(p) if p.i64("digital") != 0 => Err(FieldError::new(
                pointer,
                format!("'{sku}' is digital: its stock is its licence-key pool"),
            )),
            Some(_) => Ok(()),
        },
        Err(e) => Err(FieldError::new(pointer, e.to_string())),
    }
}

fn stock_row(db: &dyn Db, sku: &str, facility: &str) -> Result<Json> {
    let r = db.execute(
        "SELECT sku, facility_id, on_hand, reserved, updated_at FROM stock WHERE sku = ? AND facility_id = ?",
        params![sku, facility],
    )?;
    Ok(r.first()
        .map(|s| {
            json!({"sku": s.str("sku"), "facility": s.str("facility_id"), "on_hand": s.i64("on_hand"), "reserved": s.i64("reserved"),
               "available": (s.i64("on_hand") - s.i64("reserved")).max(0),
               "shortage": (s.i64("reserved") - s.i64("on_hand")).max(0), "updated_at": s.str("updated_at")})
        })
        .unwrap_or_else(|| json!({"sku": sku, "facility": facility, "on_hand": 0, "reserved": 0, "available": 0})))
}

fn facility_check(db: &dyn Db, id: &str, pointer: &str, errs: &mut Vec<FieldError>) -> Result<()> {
    if !facility_exists(db, id)? {
        errs.push(FieldError::new(pointer, format!("no facility '{id}'")));
    }
    Ok(())
}

pub fn set_level(
    db: &dyn Db,
    sku: &str,
    facility: &str,
    v: &Json,
    now: DateTime<Utc>,
    fx: &mut Effects,
) -> Result<Json> {
    let mut errs = Vec::new();
    if !facility_exists(db, facility)? {
        return Err(Error::not_found(format!("no facility '{facility}'")));
    }
    if let Err(e) = physical_sku(db, sku, "/sku") {
        return Err(Error::new(ErrorKind::NotFound, e.detail));
    }
    let on_hand = v["on_hand"]
        .as_i64()
        .filter(|n| *n >= 0 && *n <= 1_000_000_000);
    if on_hand.is_none() {
        errs.push(FieldError::new("/on_hand", "required: a whole number >= 0"));
    }
    let reason = v["reason"].as_str().map(str::to_string);
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let row = transaction(db, |db| {
        let (b, a) = move_stock(
            db,
            sku,
            facility,
            Change::Set(on_hand.unwrap_or(0)),
            "count",
            reason.as_deref(),
            None,
            "api",
            now,
        )?;
        if a > b {
            fx.restocked.push(sku.to_string());
        }
        stock_row(db, sku, facility)
    })?;
    Ok(row)
}

/// Goods received at a facility.
pub fn receipt(db: &dyn Db, v: &Json, now: DateTime<Utc>, fx: &mut Effects) -> Result<Json> {
    let mut errs = Vec::new();
    let facility = v["facility"].as_str().unwrap_or_default().to_string();
    if facility.is_empty() {
        errs.push(FieldError::new("/facility", "required"));
    } else {
        facility_check(db, &facility, "/facility", &mut errs)?;
    }
    let reference = match &v["reference"] {
        Json::Null => None,
        Json::String(r) if r.trim().is_empty() => None,
        Json::String(r) if r.trim().len() <= 200 => Some(r.trim().to_string()),
        _ => {
            errs.push(FieldError::new(
                "/reference",
                "a string of at most 200 characters (the delivery note or ASN)",
            ));
            None
        }
    };
    let mut lines = Vec::new();
    match v["lines"].as_array() {
        Some(a) if !a.is_empty() && a.len() <= 1000 => {
            for (i, l) in a.iter().enumerate() {
                let sku = l["sku"].as_str().unwrap_or_default().to_string();
                if let Err(e) = physical_sku(db, &sku, &format!("/lines/{i}/sku")) {
                    errs.push(e);
                }
                match l["quantity"].as_i64() {
                    Some(q) if q > 0 && q <= 1_000_000_000 => lines.push((sku, q)),
                    _ => errs.push(FieldError::new(
                        format!("/lines/{i}/quantity"),
                        "a whole number > 0 (use an adjustment to remove stock)",
                    )),
                }
            }
        }
        _ => errs.push(FieldError::new(
            "/lines",
            "required: 1 to 1000 lines of {sku, quantity}",
        )),
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let rows = transaction(db, |db| {
        if let Some(r) = &reference {
            // Exact under the write lock: one booking per (facility, reference).
            let booked = db.execute(
                "SELECT 1 FROM stock_movements WHERE facility_id = ? AND kind = 'receipt' AND reference = ? LIMIT 1",
                params![facility.clone(), r.clone()],
            )?;
            if !booked.is_empty() {
                return Err(Error::conflict(format!(
                    "receipt '{r}' was already booked at {facility}; send an Idempotency-Key to retry a receipt safely"
                )));
            }
        }
        let mut rows = Vec::new();
        for (sku, q) in &lines {
            move_stock(
                db,
                sku,
                &facility,
                Change::Delta(*q),
                "receipt",
                None,
                reference.as_deref(),
                "api",
                now,
            )?;
            if !fx.restocked.contains(sku) {
                fx.restocked.push(sku.clone());
            }
        }
        for (sku, _) in &lines {
            rows.push(stock_row(db, sku, &facility)?);
        }
        Ok::<_, Error>(rows)
    })?;
    Ok(json!({"facility": facility, "reference": reference, "stock": rows}))
}

/// A counted correction of stock at a facility.
pub fn adjustment(db: &dyn Db, v: &Json, now: DateTime<Utc>, fx: &mut Effects) -> Result<Json> {
    let mut errs = Vec::new();
    let facility = v["facility"].as_str().unwrap_or_default().to_string();
    if facility.is_empty() {
        errs.push(FieldError::new("/facility", "required"));
    } else {
        facility_check(db, &facility, "/facility", &mut errs)?;
    }
    let sku = v["sku"].as_str().unwrap_or_default().to_string();
    if let Err(e) = physical_sku(db, &sku, "/sku") {
        errs.push(e);
    }
    let delta = v["delta"]
        .as_i64()
        .filter(|d| *d != 0 && d.unsigned_abs() <= 1_000_000_000);
    if delta.is_none() {
        errs.push(FieldError::new(
            "/delta",
            "required: a non-zero whole number",
        ));
    }
    let reason = v["reason"]
        .as_str()
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    if reason.is_empty() || reason.len() > 500 {
        errs.push(FieldError::new(
            "/reason",
            "required: why the stock changed (damaged, count, found, ...)",
        ));
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let row = transaction(db, |db| {
        let (b, a) = move_stock(
            db,
            &sku,
            &facility,
            Change::Delta(delta.unwrap_or(0)),
            "adjustment",
            Some(&reason),
            None,
            "api",
            now,
        )?;
        if a > b {
            fx.restocked.push(sku.clone());
        }
        stock_row(db, &sku, &facility)
    })?;
    Ok(row)
}

/// Stock rows, optionally for one SKU and/or one facility.
pub fn list_stock(db: &dyn Db, sku: Option<String>, facility: Option<String>) -> Result<Json> {
    let mut sql = "SELECT sku, facility_id FROM stock WHERE 1 = 1".to_string();
    let mut p: Vec<Value> = Vec::new();
    if let Some(s) = sku {
        sql.push_str(" AND sku = ?");
        p.push(s.into());
    }
    if let Some(f) = facility {
        sql.push_str(" AND facility_id = ?");
        p.push(f.into());
    }
    sql.push_str(" ORDER BY sku, facility_id LIMIT 5000");
    let r = db.execute(&sql, &p)?;
    let mut rows = Vec::new();
    for x in r.iter() {
        rows.push(stock_row(db, &x.str("sku"), &x.str("facility_id"))?);
    }
    Ok(json!({"stock": rows}))
}

/// Availability of a SKU across facilities (a digital SKU: its key pool).
pub fn availability(db: &dyn Db, sku: &str) -> Result<Json> {
    let p = db.execute("SELECT digital FROM products WHERE sku = ?", params![sku])?;
    let Some(p) = p.first() else {
        return Err(Error::not_found(format!("no product '{sku}'")));
    };
    if p.i64("digital") != 0 {
        return pool(db, sku);
    }
    let r = db.execute(
        "SELECT s.facility_id, f.active, s.on_hand, s.reserved FROM stock s JOIN facilities f ON f.id = s.facility_id
         WHERE s.sku = ? ORDER BY s.facility_id",
        params![sku],
    )?;
    let (mut on_hand, mut reserved, mut available) = (0, 0, 0);
    let facilities: Vec<Json> = r
        .iter()
        .map(|x| {
            let a = (x.i64("on_hand") - x.i64("reserved")).max(0);
            on_hand += x.i64("on_hand");
            reserved += x.i64("reserved");
            if x.i64("active") != 0 {
                available += a;
            }
            json!({"facility": x.str("facility_id"), "active": x.i64("active") != 0, "on_hand": x.i64("on_hand"),
                   "reserved": x.i64("reserved"), "available": a})
        })
        .collect();
    let backordered = db
        .execute(
            "SELECT COALESCE(SUM(qty_backordered), 0) AS n FROM order_lines WHERE sku = ?",
            params![sku],
        )?
        .first()
        .map(|x| x.i64("n"))
        .unwrap_or(0);
    Ok(
        json!({"sku": sku, "on_hand": on_hand, "reserved": reserved, "available": available, "backordered": backordered, "facilities": facilities}),
    )
}

/// The stock movement log of a SKU (newest first), optionally for one facility.
pub fn movements(db: &dyn Db, sku: &str, facility: Option<String>, limit: i64) -> Result<Json> {
    let mut sql = "SELECT id, facility_id, kind, on_hand_delta, on_hand_after, reason, reference, actor, at FROM stock_movements WHERE sku = ?".to_string();
    let mut p: Vec<Value> = vec![sku.into()];
    if let Some(f) = facility {
        sql.push_str(" AND facility_id = ?");
        p.push(f.into());
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    p.push(Value::Integer(limit));
    let r = db.execute(&sql, &p)?;
    Ok(json!({"sku": sku, "movements": r.iter().map(|m| json!({
            "id": m.i64("id"), "facility": m.str("facility_id"), "kind": m.str("kind"), "on_hand_delta": m.i64("on_hand_delta"),
            "on_hand_after": m.i64("on_hand_after"), "reason": m.opt_str("reason"), "reference": m.opt_str("reference"),
            "actor": m.str("actor"), "at": m.str("at"),
        })).collect::<Vec<_>>()}))
}

/// Sets the bin a SKU is picked from at a facility.
pub fn set_bin(
    db: &dyn Db,
    facility: &str,
    sku: &str,
    v: &Json,
    now: DateTime<Utc>,
) -> Result<Json> {
    let bin = v["bin"]
        .as_str()
        .filter(|b| !b.is_empty() && b.len() <= 64)
        .ok_or_else(|| Error::invalid(vec![FieldError::new("/bin", "must be 1 to 64 characters")]))?
        .to_string();
    if !transaction(db, |db| stock::set_bin(db, sku, facility, &bin, now))? {
        return Err(Error::not_found(format!("no stock of {sku} at {facility}")));
    }
    Ok(json!({"facility": facility, "sku": sku, "bin": bin}))
}

#[cfg(test)]
mod tests;
