//! The catalog: facilities (type, services, fences, endpoints, secrets) and
//! products.

use super::*;

pub fn facility_exists(db: &dyn Db, id: &str) -> Result<bool> {
    Ok(!db
        .execute("SELECT 1 FROM facilities WHERE id = ?", params![id])?
        .is_empty())
}

pub(crate) fn strings(
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

/// An endpoint Waybill will call: an http(s) URL whose host the operator
/// allows (`outbound_receivers`, see [`crate::kernel::url`]).
pub(crate) fn url_field(
    v: &Json,
    field: &str,
    receivers: &Receivers,
    errs: &mut Vec<FieldError>,
) -> Option<String> {
    match &v[field] {
        Json::Null => None,
        Json::String(s) => match receivers.check(s) {
            Ok(_) => Some(s.trim().to_string()),
            Err(e) => {
                errs.push(FieldError::new(format!("/endpoints/{field}"), e));
                None
            }
        },
        _ => {
            errs.push(FieldError::new(
                format!("/endpoints/{field}"),
                "must be an http(s) URL",
            ));
            None
        }
    }
}

/// `POST /api/facilities`: a new facility under the id the body names.
pub fn create_facility(
    db: &dyn Db,
    v: &Json,
    receivers: &Receivers,
    now: DateTime<Utc>,
    fx: &mut Effects,
) -> Result<Json> {
    let id = v["id"].as_str().unwrap_or_default().to_string();
    if !ok_id(&id) {
        return Err(Error::invalid(vec![FieldError::new(
            "/id",
            "required: 1-64 of a-z, 0-9, '-', '_'",
        )]));
    }
    if facility_exists(db, &id)? {
        return Err(Error::conflict(format!(
            "facility '{id}' exists; PUT /api/facilities/{id} replaces it"
        )));
    }
    put_facility(db, &id, v, receivers, now, fx)
}

/// `PUT /api/facilities/{id}`: creates or replaces; true when it was created.
pub fn replace_facility(
    db: &dyn Db,
    id: &str,
    v: &Json,
    receivers: &Receivers,
    now: DateTime<Utc>,
    fx: &mut Effects,
) -> Result<(bool, Json)> {
    if !ok_id(id) {
        return Err(Error::bad_request(
            "a facility id is 1-64 of a-z, 0-9, '-', '_'",
        ));
    }
    let created = !facility_exists(db, id)?;
    Ok((created, put_facility(db, id, v, receivers, now, fx)?))
}

/// Creates or replaces a facility. An active facility's stock may now reach
/// waiting orders (activated, or new countries, methods or services), so its
/// SKUs with stock are reported for backorder release.
pub fn put_facility(
    db: &dyn Db,
    id: &str,
    v: &Json,
    receivers: &Receivers,
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
    let (lat, lon) = location(v, &mut errs);
    let (capacity, priority) = capacity_and_priority(v, &mut errs);
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
        "orders_url": url_field(ep, "orders_url", receivers, &mut errs),
        "inventory_url": url_field(ep, "inventory_url", receivers, &mut errs),
        "cancel_url": url_field(ep, "cancel_url", receivers, &mut errs),
    });
    let secret_variable = secret_variable(v, &mut errs);
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

/// `latitude` and `longitude`: both or neither, each in range.
fn location(v: &Json, errs: &mut Vec<FieldError>) -> (Option<f64>, Option<f64>) {
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
    (lat, lon)
}

/// `daily_capacity` (None: unlimited) and `priority` (0 to 100, default 50).
fn capacity_and_priority(v: &Json, errs: &mut Vec<FieldError>) -> (Option<i64>, i64) {
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
    (capacity, priority)
}

/// `secret_variable`: one of the Spin variables declared for center secrets.
fn secret_variable(v: &Json, errs: &mut Vec<FieldError>) -> Option<String> {
    match &v["secret_variable"] {
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
    }
}

pub(crate) fn facility_json(f: &crate::kernel::db::Row<'_>) -> Json {
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
