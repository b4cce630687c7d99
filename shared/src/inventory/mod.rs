//! Facilities, the catalog data routing needs, stock per (facility, SKU),
//! licence-key pools and the fulfillment centers' inventory feeds (the
//! inventory component). Every change that can make stock available returns
//! the SKUs concerned, so the caller releases backorders for them.

pub mod facility;
pub mod stock;

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::kernel::db::{transaction, Db, Value};
use crate::kernel::error::{Error, ErrorKind, FieldError, Result};
use crate::kernel::kv::Kv;
use crate::kernel::time::ts;
use crate::params;
use facility::{FacilityType, Service};

/// The most licence keys one import may carry.
pub const MAX_KEYS_PER_IMPORT: usize = 10_000;
/// The most levels one FC snapshot may carry.
pub const MAX_LEVELS: usize = 50_000;
/// Signed FC callbacks older or newer than this are refused.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

pub struct Config<'a> {
    /// Reads a Spin variable by name (a facility names the one holding its secret).
    pub secret: &'a dyn Fn(&str) -> Option<String>,
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

// ---- facilities ----

pub fn facility_exists(db: &dyn Db, id: &str) -> Result<bool> {
    Ok(!db
        .execute("SELECT 1 FROM facilities WHERE id = ?", params![id])?
        .is_empty())
}

fn strings(
    v: &Json,
    field: &str,
    errs: &mut Vec<FieldError>,
    check: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    match &v[field] {
        Json::Null => Vec::new(),
        Json::Array(a) => {
            let mut out = Vec::new();
            for (i, x) in a.iter().enumerate() {
                match x.as_str().map(|s| s.trim()) {
                    Some(s) => match check(s) {
                        Some(s) => {
                            if !out.contains(&s) {
                                out.push(s)
                            }
                        }
                        None => errs.push(FieldError::new(
                            format!("/{field}/{i}"),
                            format!("'{s}' is not valid here"),
                        )),
                    },
                    None => errs.push(FieldError::new(format!("/{field}/{i}"), "must be a string")),
                }
            }
            out
        }
        _ => {
            errs.push(FieldError::new(
                format!("/{field}"),
                "must be an array of strings",
            ));
            Vec::new()
        }
    }
}

fn url_field(v: &Json, field: &str, errs: &mut Vec<FieldError>) -> Option<String> {
    match &v[field] {
        Json::Null => None,
        Json::String(s)
            if (s.starts_with("https://") || s.starts_with("http://")) && s.len() <= 2048 =>
        {
            Some(s.clone())
        }
        _ => {
            errs.push(FieldError::new(
                format!("/endpoints/{field}"),
                "must be an http(s) URL",
            ));
            None
        }
    }
}

/// Creates or replaces a facility. An active facility's stock may now reach
/// waiting orders (activated, or new countries, methods or services), so its
/// SKUs with stock are reported for backorder release.
pub fn put_facility(
    db: &dyn Db,
    id: &str,
    v: &Json,
    now: DateTime<Utc>,
    fx: &mut Effects,
) -> Result<Json> {
    let mut errs = Vec::new();
    let name = v["name"]
        .as_str()
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    if name.is_empty() || name.len() > 200 {
        errs.push(FieldError::new("/name", "required, at most 200 characters"));
    }
    let kind = v["type"].as_str().and_then(FacilityType::parse);
    if kind.is_none() {
        errs.push(FieldError::new(
            "/type",
            "one of warehouse, store, fulfillment_center",
        ));
    }
    let services: Vec<String> = if v["services"].is_null() {
        vec!["ship".into()]
    } else {
        strings(v, "services", &mut errs, |s| {
            serde_json::from_value::<Service>(Json::String(s.into()))
                .ok()
                .map(|x| x.as_str().to_string())
        })
    };
    let countries = strings(v, "countries", &mut errs, |s| {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic())).then(|| s.to_ascii_uppercase())
    });
    let methods = strings(v, "shipping_methods", &mut errs, |s| {
        (!s.is_empty() && s.len() <= 100).then(|| s.to_string())
    });
    let lat = v["latitude"].as_f64();
    let lon = v["longitude"].as_f64();
    if !v["latitude"].is_null() && !lat.is_some_and(|x| (-90.0..=90.0).contains(&x)) {
        errs.push(FieldError::new("/latitude", "a number from -90 to 90"));
    }
    if !v["longitude"].is_null() && !lon.is_some_and(|x| (-180.0..=180.0).contains(&x)) {
        errs.push(FieldError::new("/longitude", "a number from -180 to 180"));
    }
    if lat.is_some() != lon.is_some() {
        errs.push(FieldError::new(
            "/longitude",
            "latitude and longitude go together",
        ));
    }
    let capacity = match &v["daily_capacity"] {
        Json::Null => None,
        x => match x.as_i64().filter(|c| *c >= 0) {
            Some(c) => Some(c),
            None => {
                errs.push(FieldError::new(
                    "/daily_capacity",
                    "a whole number >= 0, or null for unlimited",
                ));
                None
            }
        },
    };
    let priority = match &v["priority"] {
        Json::Null => 50,
        x => x
            .as_i64()
            .filter(|p| (0..=100).contains(p))
            .unwrap_or_else(|| {
                errs.push(FieldError::new(
                    "/priority",
                    "a whole number from 0 to 100 (higher is preferred)",
                ));
                50
            }),
    };
    let active = match &v["active"] {
        Json::Null => true,
        Json::Bool(b) => *b,
        _ => {
            errs.push(FieldError::new("/active", "must be true or false"));
            true
        }
    };
    let ep = &v["endpoints"];
    if !ep.is_null() && !ep.is_object() {
        errs.push(FieldError::new(
            "/endpoints",
            "an object with orders_url, inventory_url, cancel_url",
        ));
    }
    let endpoints = json!({
        "orders_url": url_field(ep, "orders_url", &mut errs),
        "inventory_url": url_field(ep, "inventory_url", &mut errs),
        "cancel_url": url_field(ep, "cancel_url", &mut errs),
    });
    let secret_variable = match &v["secret_variable"] {
        Json::Null => None,
        Json::String(s) if secret_variable_name(s).is_some() => {
            secret_variable_name(s).map(str::to_string)
        }
        _ => {
            errs.push(FieldError::new(
                "/secret_variable",
                format!(
                    "one of the Spin variables declared for fulfillment-center secrets: {}",
                    FC_SECRET_VARIABLES.join(", ")
                ),
            ));
            None
        }
    };
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let kind = kind.expect("validated");
    if kind == FacilityType::FulfillmentCenter
        && secret_variable.is_none()
        && !endpoints["orders_url"].is_null()
    {
        return Err(Error::invalid(vec![FieldError::new(
            "/secret_variable",
            "an external fulfillment center with endpoints needs the Spin variable holding its signing secret",
        )]));
    }
    transaction(db, |db| {
        db.execute(
            "INSERT INTO facilities (id, name, type, services, countries, shipping_methods, latitude, longitude, daily_capacity,
                priority, active, endpoints, secret_variable, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, type = excluded.type, services = excluded.services,
                countries = excluded.countries, shipping_methods = excluded.shipping_methods, latitude = excluded.latitude,
                longitude = excluded.longitude, daily_capacity = excluded.daily_capacity, priority = excluded.priority,
                active = excluded.active, endpoints = excluded.endpoints, secret_variable = excluded.secret_variable,
                updated_at = excluded.updated_at",
            params![id, name, kind.as_str(), json!(services).to_string(), json!(countries).to_string(), json!(methods).to_string(),
                    lat, lon, capacity, priority, active, endpoints.to_string(), secret_variable, ts(now)],
        )?;
        Ok::<_, Error>(())
    })?;
    if active {
        fx.restocked.extend(
            db.execute(
                "SELECT sku FROM stock WHERE facility_id = ? AND on_hand > reserved ORDER BY sku LIMIT 1000",
                params![id],
            )?
            .iter()
            .map(|r| r.str("sku")),
        );
    }
    let view = facility_view(db, id)?.ok_or_else(|| Error::internal("facility vanished"))?;
    Ok(view)
}

fn facility_json(f: &crate::kernel::db::Row<'_>) -> Json {
    let parse = |c: &str| serde_json::from_str::<Json>(&f.str(c)).unwrap_or(Json::Null);
    json!({
        "id": f.str("id"), "name": f.str("name"), "type": f.str("type"), "services": parse("services"),
        "countries": parse("countries"), "shipping_methods": parse("shipping_methods"),
        "latitude": f.opt_f64("latitude"), "longitude": f.opt_f64("longitude"),
        "daily_capacity": f.opt_i64("daily_capacity"), "priority": f.i64("priority"), "active": f.i64("active") != 0,
        "endpoints": parse("endpoints"), "secret_variable": f.opt_str("secret_variable"),
        "created_at": f.str("created_at"), "updated_at": f.str("updated_at"),
    })
}

pub fn facility_view(db: &dyn Db, id: &str) -> Result<Option<Json>> {
    Ok(db
        .execute("SELECT * FROM facilities WHERE id = ?", params![id])?
        .first()
        .map(|f| facility_json(&f)))
}

pub fn get_facility(db: &dyn Db, id: &str) -> Result<Json> {
    facility_view(db, id)?.ok_or_else(|| Error::not_found(format!("no facility '{id}'")))
}

pub fn list_facilities(db: &dyn Db) -> Result<Json> {
    let r = db.execute("SELECT * FROM facilities ORDER BY id", &[])?;
    Ok(json!({"facilities": r.iter().map(|f| facility_json(&f)).collect::<Vec<_>>()}))
}

// ---- products ----

/// Creates or replaces a product; answers whether it was created, and its view.
pub fn put_product(db: &dyn Db, sku: &str, v: &Json, now: DateTime<Utc>) -> Result<(bool, Json)> {
    let mut errs = Vec::new();
    if !ok_sku(sku) {
        return Err(Error::bad_request(
            "a SKU is 1-128 characters without control characters",
        ));
    }
    let name = v["name"].as_str().unwrap_or_default().trim().to_string();
    let int = |f: &str, errs: &mut Vec<FieldError>| match &v[f] {
        Json::Null => 0,
        x => x
            .as_i64()
            .filter(|n| *n >= 0 && *n <= 1_000_000_000)
            .unwrap_or_else(|| {
                errs.push(FieldError::new(format!("/{f}"), "a whole number >= 0"));
                0
            }),
    };
    let weight = int("weight_grams", &mut errs);
    let threshold = int("low_stock_threshold", &mut errs);
    let flag = |f: &str, errs: &mut Vec<FieldError>| match &v[f] {
        Json::Null => false,
        Json::Bool(b) => *b,
        _ => {
            errs.push(FieldError::new(format!("/{f}"), "must be true or false"));
            false
        }
    };
    let backorderable = flag("backorderable", &mut errs);
    let digital = flag("digital", &mut errs);
    let mut parts = Vec::new();
    match &v["parts"] {
        Json::Null => {}
        Json::Object(m) => {
            for (fac, pn) in m {
                match pn
                    .as_str()
                    .map(str::trim)
                    .filter(|p| !p.is_empty() && p.len() <= 128)
                {
                    Some(p) => {
                        if !facility_exists(db, fac)? {
                            errs.push(FieldError::new(
                                format!("/parts/{fac}"),
                                format!("no facility '{fac}'"),
                            ));
                        }
                        parts.push((fac.clone(), p.to_string()));
                    }
                    None => errs.push(FieldError::new(
                        format!("/parts/{fac}"),
                        "the facility's part number, a string",
                    )),
                }
            }
        }
        _ => errs.push(FieldError::new(
            "/parts",
            "an object: facility id -> that facility's part number",
        )),
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    transaction(db, |db| {
        let existed = !db
            .execute("SELECT 1 FROM products WHERE sku = ?", params![sku])?
            .is_empty();
        db.execute(
            "INSERT INTO products (sku, name, weight_grams, backorderable, digital, low_stock_threshold, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (sku) DO UPDATE SET name = excluded.name, weight_grams = excluded.weight_grams,
               backorderable = excluded.backorderable, digital = excluded.digital,
               low_stock_threshold = excluded.low_stock_threshold, updated_at = excluded.updated_at",
            params![sku, name, weight, backorderable, digital, threshold, ts(now)],
        )?;
        db.execute("DELETE FROM product_parts WHERE sku = ?", params![sku])?;
        for (fac, pn) in &parts {
            db.execute(
                "INSERT INTO product_parts (sku, facility_id, part_number) VALUES (?, ?, ?)",
                params![sku, fac.clone(), pn.clone()],
            )
            .map_err(|e| {
                if e.is_unique_violation() {
                    Error::conflict(format!(
                        "part number '{pn}' is already used at '{fac}' by another SKU"
                    ))
                } else {
                    e.into()
                }
            })?;
        }
        let view = product_view(db, sku)?.ok_or_else(|| Error::internal("product vanished"))?;
        Ok((!existed, view))
    })
}

pub fn product_view(db: &dyn Db, sku: &str) -> Result<Option<Json>> {
    let r = db.execute("SELECT * FROM products WHERE sku = ?", params![sku])?;
    let Some(p) = r.first() else { return Ok(None) };
    let parts = db.execute(
        "SELECT facility_id, part_number FROM product_parts WHERE sku = ? ORDER BY facility_id",
        params![sku],
    )?;
    let parts: serde_json::Map<String, Json> = parts
        .iter()
        .map(|x| (x.str("facility_id"), Json::String(x.str("part_number"))))
        .collect();
    Ok(Some(json!({
        "sku": p.str("sku"), "name": p.str("name"), "weight_grams": p.i64("weight_grams"),
        "backorderable": p.i64("backorderable") != 0, "digital": p.i64("digital") != 0,
        "low_stock_threshold": p.i64("low_stock_threshold"), "parts": parts, "updated_at": p.str("updated_at"),
    })))
}

pub fn get_product(db: &dyn Db, sku: &str) -> Result<Json> {
    product_view(db, sku)?.ok_or_else(|| Error::not_found(format!("no product '{sku}'")))
}

pub fn list_products(db: &dyn Db) -> Result<Json> {
    let r = db.execute("SELECT sku FROM products ORDER BY sku LIMIT 1000", &[])?;
    let mut out = Vec::new();
    for p in r.iter() {
        if let Some(v) = product_view(db, &p.str("sku"))? {
            out.push(v);
        }
    }
    Ok(json!({"products": out}))
}

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

/// Moves on-hand stock (`Delta`) or sets it (`Set`), logs the movement, re-arms
/// the low-stock alert when back at or above the threshold. Returns (before, after) available.
enum Change {
    Delta(i64),
    Set(i64),
}

#[allow(clippy::too_many_arguments)]
fn move_stock(
    db: &dyn Db,
    sku: &str,
    facility: &str,
    change: Change,
    kind: &str,
    reason: Option<&str>,
    reference: Option<&str>,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<(i64, i64)> {
    let before = db
        .execute(
            "SELECT on_hand, reserved FROM stock WHERE sku = ? AND facility_id = ?",
            params![sku, facility],
        )?
        .first()
        .map(|r| (r.i64("on_hand"), r.i64("reserved")))
        .unwrap_or((0, 0));
    let new_on_hand = match change {
        Change::Delta(d) => before.0 + d,
        Change::Set(n) => n,
    };
    if new_on_hand < 0 {
        return Err(Error::conflict(format!(
            "{sku} at {facility}: on hand is {}; the change would make it negative",
            before.0
        )));
    }
    db.execute(
        "INSERT INTO stock (sku, facility_id, on_hand, reserved, updated_at) VALUES (?1, ?2, ?3, 0, ?4)
         ON CONFLICT (sku, facility_id) DO UPDATE SET on_hand = ?3, updated_at = ?4,
           low_alerted = CASE WHEN ?3 - reserved >= (SELECT low_stock_threshold FROM products WHERE sku = ?1) THEN 0 ELSE low_alerted END",
        params![sku, facility, new_on_hand, ts(now)],
    )?;
    db.execute(
        "INSERT INTO stock_movements (sku, facility_id, kind, on_hand_delta, on_hand_after, reason, reference, actor, at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![sku, facility, kind, new_on_hand - before.0, new_on_hand, reason, reference, actor, ts(now)],
    )?;
    let (was, is) = (
        (before.0 - before.1).max(0),
        (new_on_hand - before.1).max(0),
    );
    if is < was {
        stock::low_stock_check(db, sku, facility, now)?;
    }
    // Fewer units on hand than already promised: an action item for the merchant.
    let short_before = (before.1 - before.0).max(0);
    let short_now = (before.1 - new_on_hand).max(0);
    if short_now > short_before {
        crate::orders::store::enqueue(
            db,
            "stock.shortage",
            None,
            json!({"sku": sku, "facility": facility, "on_hand": new_on_hand, "reserved": before.1,
                   "shortage": short_now, "kind": kind, "reason": reason}),
            now,
        )?;
    }
    Ok((was, is))
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
    let reference = v["reference"].as_str().map(str::to_string);
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
        .filter(|d| *d != 0 && d.abs() <= 1_000_000_000);
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
    let n = transaction(db, |db| {
        Ok::<_, Error>(db.exec(
            "UPDATE stock SET bin = ?, updated_at = ? WHERE facility_id = ? AND sku = ?",
            params![bin.clone(), ts(now), facility, sku],
        )?)
    })?;
    if n == 0 {
        return Err(Error::not_found(format!("no stock of {sku} at {facility}")));
    }
    Ok(json!({"facility": facility, "sku": sku, "bin": bin}))
}

// ---- licence keys ----

/// The licence-key pool of a digital SKU.
pub fn pool(db: &dyn Db, sku: &str) -> Result<Json> {
    let r = db.execute(
        "SELECT digital, low_stock_threshold,
            (SELECT COUNT(*) FROM license_keys k WHERE k.sku = p.sku AND k.order_id IS NULL) AS available,
            (SELECT COUNT(*) FROM license_keys k WHERE k.sku = p.sku AND k.order_id IS NOT NULL) AS assigned,
            (SELECT COALESCE(SUM(qty_backordered), 0) FROM order_lines l WHERE l.sku = p.sku) AS backordered
         FROM products p WHERE sku = ?",
        params![sku],
    )?;
    let Some(p) = r.first() else {
        return Err(Error::not_found(format!("no product '{sku}'")));
    };
    if p.i64("digital") == 0 {
        return Err(Error::unprocessable(format!(
            "'{sku}' is not a digital product; it has no licence-key pool"
        )));
    }
    Ok(
        json!({"sku": sku, "available": p.i64("available"), "assigned": p.i64("assigned"),
                "backordered": p.i64("backordered"), "low_stock_threshold": p.i64("low_stock_threshold")}),
    )
}

/// Imports licence keys into a digital SKU's pool (duplicates are counted, not added).
pub fn import_keys(
    db: &dyn Db,
    sku: &str,
    keys: &[String],
    now: DateTime<Utc>,
    fx: &mut Effects,
) -> Result<Json> {
    let r = db.execute("SELECT digital FROM products WHERE sku = ?", params![sku])?;
    match r.first() {
        None => {
            return Err(Error::not_found(format!(
                "no product '{sku}' (PUT /api/products/{sku} with \"digital\": true first)"
            )))
        }
        Some(p) if p.i64("digital") == 0 => {
            return Err(Error::unprocessable(format!(
                "'{sku}' is not digital; licence keys belong to digital products"
            )))
        }
        _ => {}
    }
    let (imported, duplicates) = transaction(db, |db| {
        let mut imported = 0u64;
        for chunk in keys.chunks(200) {
            let ph = vec!["(?, ?, ?)"; chunk.len()].join(",");
            let mut p = Vec::with_capacity(chunk.len() * 3);
            for k in chunk {
                p.extend([Value::from(sku), Value::from(k), Value::from(ts(now))]);
            }
            imported += db.exec(
                &format!("INSERT OR IGNORE INTO license_keys (sku, key, imported_at) VALUES {ph}"),
                &p,
            )?;
        }
        // Re-arm the low-stock alert once the pool is back at its threshold.
        db.execute(
            "UPDATE products SET low_stock_alerted = 0 WHERE sku = ?1 AND low_stock_alerted = 1
               AND (SELECT COUNT(*) FROM license_keys WHERE sku = ?1 AND order_id IS NULL) >= low_stock_threshold",
            params![sku],
        )?;
        Ok::<_, Error>((imported, keys.len() as u64 - imported))
    })?;
    if imported > 0 {
        fx.restocked.push(sku.to_string());
    }
    let mut body = pool(db, sku)?;
    body["imported"] = json!(imported);
    body["duplicates"] = json!(duplicates);
    Ok(body)
}

// ---- fulfillment-center inventory feeds ----

/// The KV key of a facility's latest inventory snapshot.
pub fn snapshot_key(facility: &str) -> String {
    format!("fc-inventory/{facility}")
}

/// A facility's inventory endpoint and signing secret (for the pull).
pub struct PullTarget {
    pub url: String,
    pub secret: String,
}

pub fn pull_target(db: &dyn Db, cfg: &Config<'_>, facility: &str) -> Result<PullTarget> {
    let r = db.execute(
        "SELECT endpoints, secret_variable FROM facilities WHERE id = ?",
        params![facility],
    )?;
    let Some(f) = r.first() else {
        return Err(Error::not_found(format!("no facility '{facility}'")));
    };
    let ep: Json = serde_json::from_str(&f.str("endpoints")).unwrap_or(Json::Null);
    let Some(url) = ep["inventory_url"].as_str() else {
        return Err(Error::unprocessable(format!(
            "facility '{facility}' has no endpoints.inventory_url to pull from"
        )));
    };
    let secret = f
        .opt_str("secret_variable")
        .and_then(|v| (cfg.secret)(&v))
        .unwrap_or_default();
    Ok(PullTarget {
        url: url.to_string(),
        secret,
    })
}

/// Facilities with an inventory endpoint (the scheduled pull visits each).
pub fn pull_facilities(db: &dyn Db) -> Result<Vec<String>> {
    Ok(db
        .execute(
            "SELECT id FROM facilities WHERE active = 1 AND json_extract(endpoints, '$.inventory_url') IS NOT NULL ORDER BY id",
            &[],
        )?
        .iter()
        .map(|r| r.str("id"))
        .collect())
}

/// Applies a fulfillment center's snapshot: `{"as_of"?, "levels": [{"sku" | "part_number", "on_hand"}]}`
/// (or a bare array of levels). Levels are absolute. Returns the summary.
pub fn apply_snapshot(
    db: &dyn Db,
    kv: &dyn Kv,
    facility: &str,
    body: &[u8],
    kind: &str,
    now: DateTime<Utc>,
    fx: &mut Effects,
) -> Result<Json> {
    let v: Json = serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("the inventory body is not valid JSON: {e}")))?;
    let (levels, as_of) = match &v {
        Json::Array(a) => (a.clone(), None),
        Json::Object(_) => match v["levels"].as_array() {
            Some(a) => (a.clone(), v["as_of"].as_str().map(str::to_string)),
            None => {
                return Err(Error::invalid(vec![FieldError::new(
                    "/levels",
                    "required: an array of {sku | part_number, on_hand}",
                )]))
            }
        },
        _ => {
            return Err(Error::invalid(vec![FieldError::new(
                "",
                "an object with levels, or an array of levels",
            )]))
        }
    };
    if levels.len() > MAX_LEVELS {
        return Err(Error::invalid(vec![FieldError::new(
            "/levels",
            format!("at most {MAX_LEVELS} levels"),
        )]));
    }
    if let Some(t) = &as_of {
        if crate::kernel::time::parse_time(t).is_none() {
            return Err(Error::invalid(vec![FieldError::new(
                "/as_of",
                "an RFC 3339 timestamp",
            )]));
        }
    }
    // An older snapshot than the one applied last changes nothing.
    let last: Option<Json> = kv
        .get(&snapshot_key(facility))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let (Some(new), Some(old)) = (
        as_of.as_deref().and_then(crate::kernel::time::parse_time),
        last.as_ref()
            .and_then(|l| l["as_of"].as_str())
            .and_then(crate::kernel::time::parse_time),
    ) {
        if new < old {
            return Ok(
                json!({"facility": facility, "result": "stale", "as_of": as_of, "applied_as_of": last.as_ref().map(|l| l["as_of"].clone())}),
            );
        }
    }
    let mut errs = Vec::new();
    let mut parsed = Vec::new();
    for (i, l) in levels.iter().enumerate() {
        let key = l["sku"]
            .as_str()
            .map(|s| ("sku", s))
            .or_else(|| l["part_number"].as_str().map(|s| ("part", s)));
        let on_hand = l["on_hand"].as_i64().or_else(|| l["quantity"].as_i64());
        match (key, on_hand) {
            (Some(k), Some(n)) if (0..=1_000_000_000).contains(&n) => {
                parsed.push((k.0, k.1.to_string(), n))
            }
            (None, _) => errs.push(FieldError::new(
                format!("/levels/{i}"),
                "needs sku or part_number",
            )),
            _ => errs.push(FieldError::new(
                format!("/levels/{i}/on_hand"),
                "a whole number >= 0",
            )),
        }
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let (applied, ignored) = transaction(db, |db| {
        let mut applied = 0;
        let mut ignored = Vec::new();
        for (k, id, n) in &parsed {
            let sku = if *k == "sku" {
                db.execute(
                    "SELECT sku FROM products WHERE sku = ? AND digital = 0",
                    params![id.clone()],
                )?
                .first()
                .map(|r| r.str("sku"))
            } else {
                db.execute(
                    "SELECT sku FROM product_parts WHERE facility_id = ? AND part_number = ?",
                    params![facility, id.clone()],
                )?
                .first()
                .map(|r| r.str("sku"))
            };
            let Some(sku) = sku else {
                ignored.push(id.clone());
                continue;
            };
            let (b, a) = move_stock(
                db,
                &sku,
                facility,
                Change::Set(*n),
                kind,
                None,
                as_of.as_deref(),
                &format!("facility:{facility}"),
                now,
            )?;
            if a > b && !fx.restocked.contains(&sku) {
                fx.restocked.push(sku);
            }
            applied += 1;
        }
        Ok::<_, Error>((applied, ignored))
    })?;
    let snapshot = json!({"facility": facility, "as_of": as_of.clone().unwrap_or_else(|| ts(now)), "received_at": ts(now), "kind": kind, "levels": levels});
    if let Err(e) = kv.set(&snapshot_key(facility), snapshot.to_string().as_bytes()) {
        eprintln!("inventory: snapshot not cached for {facility}: {e}");
    }
    Ok(
        json!({"facility": facility, "result": "applied", "applied": applied, "ignored": ignored, "as_of": as_of}),
    )
}

/// A fulfillment center's signed inventory push: the signature is checked
/// with the facility's secret before the snapshot is applied.
#[allow(clippy::too_many_arguments)]
pub fn fc_push(
    db: &dyn Db,
    kv: &dyn Kv,
    cfg: &Config<'_>,
    facility: &str,
    signature_header: &str,
    body: &[u8],
    now: DateTime<Utc>,
    fx: &mut Effects,
) -> Result<Json> {
    let r = db.execute(
        "SELECT secret_variable FROM facilities WHERE id = ?",
        params![facility],
    )?;
    // Same answer for an unknown facility and a bad signature: nothing to probe.
    let secret = r
        .first()
        .and_then(|f| f.opt_str("secret_variable"))
        .and_then(|v| (cfg.secret)(&v))
        .unwrap_or_default();
    if !crate::kernel::signature::verify_timestamped(
        secret.as_bytes(),
        signature_header,
        body,
        now.timestamp(),
        SIGNATURE_TOLERANCE_SECS,
    ) {
        return Err(Error::unauthorized(
            "the Waybill-Signature header (t=<unix seconds>,v1=<hex HMAC-SHA256 of \"t.body\">) does not verify for this facility",
        ));
    }
    apply_snapshot(db, kv, facility, body, "push", now, fx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::inventory::handle;
    use crate::http::{Request, Response, Tokens};
    use crate::kernel::db::native::NativeDb;
    use crate::kernel::kv::MemoryKv;

    fn setup() -> NativeDb {
        let db = NativeDb::memory();
        crate::kernel::schema::migrate(&db).unwrap();
        db
    }

    fn call(db: &NativeDb, kv: &MemoryKv, m: &str, path: &str, body: Json) -> (Response, Effects) {
        let secret = |name: &str| (name == "fc_secret_a").then(|| "fc-secret".to_string());
        let tokens = Tokens::parse("write:write-token-1,read:read-token-1");
        let cfg = Config { secret: &secret };
        let req = Request::new(m, path)
            .with_header("authorization", "Bearer write-token-1")
            .with_header("content-type", "application/json")
            .with_body(body.to_string());
        handle(db, kv, &tokens, &cfg, &req, Utc::now())
    }

    #[test]
    fn facilities_products_and_stock_validate_and_change_nothing_on_error() {
        let db = setup();
        let kv = MemoryKv::default();
        let (r, _) = call(
            &db,
            &kv,
            "PUT",
            "/api/facilities/berlin",
            json!({"name": "Berlin", "type": "warehouse", "countries": ["de", "AT"], "latitude": 52.5, "longitude": 13.4}),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json_body()["countries"], json!(["DE", "AT"]));
        let (r, _) = call(
            &db,
            &kv,
            "PUT",
            "/api/facilities/bad",
            json!({"name": "", "type": "castle", "priority": 101, "latitude": 91}),
        );
        assert_eq!(r.status, 422);
        let ptrs: Vec<String> = r.json_body()["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["pointer"].as_str().unwrap().to_string())
            .collect();
        assert!(
            ptrs.contains(&"/name".into())
                && ptrs.contains(&"/type".into())
                && ptrs.contains(&"/priority".into()),
            "{ptrs:?}"
        );
        let (r, _) = call(
            &db,
            &kv,
            "PUT",
            "/api/products/SKU-1",
            json!({"name": "Mug", "backorderable": true, "parts": {"nowhere": "P1"}}),
        );
        assert_eq!(r.status, 422);
        let (r, _) = call(
            &db,
            &kv,
            "PUT",
            "/api/products/SKU-1",
            json!({"name": "Mug", "backorderable": true, "parts": {"berlin": "P1"}}),
        );
        assert_eq!(r.status, 201);
        // Receipt: unknown SKU, unknown facility, negative quantity: 422, nothing stored.
        for bad in [
            json!({"facility": "berlin", "lines": [{"sku": "NOPE", "quantity": 1}]}),
            json!({"facility": "paris", "lines": [{"sku": "SKU-1", "quantity": 1}]}),
            json!({"facility": "berlin", "lines": [{"sku": "SKU-1", "quantity": -3}]}),
        ] {
            let (r, fx) = call(&db, &kv, "POST", "/api/stock/receipts", bad);
            assert_eq!(r.status, 422);
            assert!(fx.restocked.is_empty());
        }
        assert!(db.execute("SELECT * FROM stock", &[]).unwrap().is_empty());
        let (r, fx) = call(
            &db,
            &kv,
            "POST",
            "/api/stock/receipts",
            json!({"facility": "berlin", "lines": [{"sku": "SKU-1", "quantity": 5}]}),
        );
        assert_eq!(r.status, 201);
        assert_eq!(fx.restocked, vec!["SKU-1".to_string()]);
        let (r, _) = call(
            &db,
            &kv,
            "POST",
            "/api/stock/adjustments",
            json!({"facility": "berlin", "sku": "SKU-1", "delta": -6, "reason": "damaged"}),
        );
        assert_eq!(r.status, 409, "cannot go negative");
        let (r, fx) = call(
            &db,
            &kv,
            "POST",
            "/api/stock/adjustments",
            json!({"facility": "berlin", "sku": "SKU-1", "delta": -2, "reason": "damaged"}),
        );
        assert_eq!(
            (r.status, r.json_body()["on_hand"].clone()),
            (200, json!(3))
        );
        assert!(fx.restocked.is_empty(), "a decrease releases nothing");
        let (r, _) = call(&db, &kv, "GET", "/api/stock/SKU-1", json!({}));
        assert_eq!(r.json_body()["available"], 3);
        let moves = db
            .execute(
                "SELECT kind, on_hand_delta FROM stock_movements ORDER BY id",
                &[],
            )
            .unwrap();
        assert_eq!(moves.len(), 2);
    }

    #[test]
    fn keys_import_as_json_and_csv_without_duplicates() {
        let db = setup();
        let kv = MemoryKv::default();
        call(
            &db,
            &kv,
            "PUT",
            "/api/products/SOFT",
            json!({"name": "Soft", "digital": true, "low_stock_threshold": 2}),
        );
        let (r, fx) = call(
            &db,
            &kv,
            "POST",
            "/api/license-keys/SOFT",
            json!({"keys": ["A-1", "A-2", "A-2"]}),
        );
        assert_eq!(r.status, 201);
        assert_eq!(
            (
                r.json_body()["imported"].clone(),
                r.json_body()["duplicates"].clone()
            ),
            (json!(2), json!(1))
        );
        assert_eq!(fx.restocked, vec!["SOFT".to_string()]);
        let secret = |_: &str| None;
        let tokens = Tokens::parse("write:write-token-1");
        let cfg = Config { secret: &secret };
        let req = Request::new("POST", "/api/license-keys/SOFT")
            .with_header("authorization", "Bearer write-token-1")
            .with_header("content-type", "text/csv")
            .with_body("license_key,batch\nA-3,7\nA-1,7\n");
        let (r, _) = handle(&db, &kv, &tokens, &cfg, &req, Utc::now());
        assert_eq!(
            r.json_body()["available"],
            3,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let (r, _) = call(
            &db,
            &kv,
            "POST",
            "/api/license-keys/NOPE",
            json!({"keys": ["x"]}),
        );
        assert_eq!(r.status, 404);
    }

    #[test]
    fn secret_variables_are_names_spin_declares_and_old_names_follow_the_rename() {
        let db = setup();
        let kv = MemoryKv::default();
        let put = |name: &str| {
            call(
                &db,
                &kv,
                "PUT",
                "/api/facilities/fc",
                json!({"name": "FC", "type": "fulfillment_center", "secret_variable": name}),
            )
            .0
        };
        let stored = || {
            db.execute(
                "SELECT secret_variable FROM facilities WHERE id = 'fc'",
                &[],
            )
            .unwrap()
            .first()
            .and_then(|r| r.opt_str("secret_variable"))
        };
        assert!(put("fc_secret_b").status < 300);
        assert_eq!(stored().as_deref(), Some("fc_secret_b"));
        // A name from before the rename is taken under its new name.
        assert!(put("fc_secret_3").status < 300);
        assert_eq!(stored().as_deref(), Some("fc_secret_c"));
        // A variable no component declares could never be read: refused, nothing changed.
        let r = put("fc_secret_d");
        assert_eq!(r.status, 422);
        assert_eq!(stored().as_deref(), Some("fc_secret_c"));
    }

    #[test]
    fn the_migration_renames_the_secret_variables_of_saved_facilities() {
        let db = crate::kernel::db::native::NativeDb::memory();
        crate::kernel::schema::migrate(&db).unwrap();
        crate::testkit::facility(&db, "fc1", "FC", "fulfillment_center", "[]", 0.0, 0.0);
        crate::testkit::facility(&db, "fc2", "FC", "fulfillment_center", "[]", 0.0, 0.0);
        db.execute(
            "UPDATE facilities SET secret_variable = 'fc_secret_2' WHERE id = 'fc1'",
            &[],
        )
        .unwrap();
        db.execute(
            "UPDATE facilities SET secret_variable = 'custom' WHERE id = 'fc2'",
            &[],
        )
        .unwrap();
        db.execute(
            &format!(
                "PRAGMA user_version = {}",
                crate::kernel::schema::LATEST - 1
            ),
            &[],
        )
        .unwrap();
        crate::kernel::schema::migrate(&db).unwrap();
        let rows = db
            .execute(
                "SELECT id, secret_variable FROM facilities ORDER BY id",
                &[],
            )
            .unwrap();
        assert_eq!(
            rows.iter()
                .next()
                .and_then(|r| r.opt_str("secret_variable"))
                .as_deref(),
            Some("fc_secret_b")
        );
        assert_eq!(
            rows.iter()
                .nth(1)
                .and_then(|r| r.opt_str("secret_variable"))
                .as_deref(),
            Some("custom")
        );
    }

    #[test]
    fn fc_push_needs_the_signature() {
        let db = setup();
        let kv = MemoryKv::default();
        call(
            &db,
            &kv,
            "PUT",
            "/api/facilities/fc",
            json!({"name": "FC", "type": "fulfillment_center", "secret_variable": "fc_secret_a"}),
        );
        call(
            &db,
            &kv,
            "PUT",
            "/api/products/SKU-1",
            json!({"name": "Mug", "parts": {"fc": "FC-001"}}),
        );
        let body = json!({"as_of": "2026-11-20T10:00:00Z", "levels": [{"part_number": "FC-001", "on_hand": 7}, {"sku": "OTHER", "on_hand": 1}]}).to_string();
        let secret = |name: &str| (name == "fc_secret_a").then(|| "fc-secret".to_string());
        let tokens = Tokens::default();
        let cfg = Config { secret: &secret };
        let now = Utc::now();
        let push = |sig: &str| {
            Request::new("POST", "/callbacks/fc/fc/inventory")
                .with_header("waybill-signature", sig)
                .with_body(body.clone())
        };
        let bad =
            crate::kernel::signature::sign_timestamped(b"wrong", now.timestamp(), body.as_bytes());
        let (r, _) = handle(&db, &kv, &tokens, &cfg, &push(&bad), now);
        assert_eq!(r.status, 401);
        assert!(db.execute("SELECT * FROM stock", &[]).unwrap().is_empty());
        let good = crate::kernel::signature::sign_timestamped(
            b"fc-secret",
            now.timestamp(),
            body.as_bytes(),
        );
        let (r, fx) = handle(&db, &kv, &tokens, &cfg, &push(&good), now);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json_body()["ignored"], json!(["OTHER"]));
        assert_eq!(fx.restocked, vec!["SKU-1".to_string()]);
        assert!(kv.get(&snapshot_key("fc")).unwrap().is_some());
        // An older snapshot is stale and changes nothing.
        let old = json!({"as_of": "2026-11-19T10:00:00Z", "levels": [{"part_number": "FC-001", "on_hand": 0}]}).to_string();
        let sig = crate::kernel::signature::sign_timestamped(
            b"fc-secret",
            now.timestamp(),
            old.as_bytes(),
        );
        let req = Request::new("POST", "/callbacks/fc/fc/inventory")
            .with_header("waybill-signature", &sig)
            .with_body(old);
        let (r, _) = handle(&db, &kv, &tokens, &cfg, &req, now);
        assert_eq!(r.json_body()["result"], "stale");
        let n = db.execute("SELECT on_hand FROM stock", &[]).unwrap();
        assert_eq!(n.first().unwrap().i64("on_hand"), 7);
    }
}
