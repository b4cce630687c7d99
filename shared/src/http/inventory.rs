//! The inventory component's routes: facilities, products, stock, receipts and
//! adjustments, licence-key pools (token scopes), and the fulfillment centers'
//! signed inventory push (`/callbacks/fc/{facility}/inventory`).

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::http::{idempotency_scope, idempotent, segments, Request, Response, Tokens};
use crate::inventory::{self, Config, Effects, MAX_KEYS_PER_IMPORT};
use crate::kernel::db::Db;
use crate::kernel::error::{Error, ErrorKind, FieldError, Result};
use crate::kernel::kv::Kv;

fn method_not_allowed(req: &Request) -> Error {
    Error::new(
        ErrorKind::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method, req.path),
    )
}

/// The inventory API. Returns the answer and what the caller must follow up.
pub fn handle(
    db: &dyn Db,
    kv: &dyn Kv,
    tokens: &Tokens,
    cfg: &Config<'_>,
    req: &Request,
    now: DateTime<Utc>,
) -> (Response, Effects) {
    let mut fx = Effects::default();
    let r = route(db, kv, tokens, cfg, req, now, &mut fx);
    if r.is_err() {
        fx.restocked.clear();
    }
    (r.into(), fx)
}

#[allow(clippy::too_many_arguments)]
fn route(
    db: &dyn Db,
    kv: &dyn Kv,
    tokens: &Tokens,
    cfg: &Config<'_>,
    req: &Request,
    now: DateTime<Utc>,
    fx: &mut Effects,
) -> Result<Response> {
    let segs = segments(&req.path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    if let ["callbacks", "fc", facility, "inventory"] = segs.as_slice() {
        if m != "POST" {
            return Err(method_not_allowed(req));
        }
        req.check_size()?;
        let sig = req.header("waybill-signature").unwrap_or_default();
        let out = inventory::fc_push(db, kv, cfg, facility, sig, &req.path, &req.body, now, fx)?;
        return Ok(Response::json(200, &out));
    }
    tokens.authorize_route(req)?;
    let ok = |v: Json| Ok(Response::json(200, &v));
    match (m, segs.as_slice()) {
        ("GET", ["api", "facilities"]) => ok(inventory::list_facilities(db)?),
        ("POST", ["api", "facilities"]) => Ok(Response::json(
            201,
            &inventory::create_facility(db, &req.json_object()?, cfg.receivers, now, fx)?,
        )),
        ("GET", ["api", "facilities", id]) => ok(inventory::get_facility(db, id)?),
        ("PUT", ["api", "facilities", id]) => {
            let (created, v) =
                inventory::replace_facility(db, id, &req.json_object()?, cfg.receivers, now, fx)?;
            Ok(Response::json(if created { 201 } else { 200 }, &v))
        }
        ("GET", ["api", "products"]) => ok(inventory::list_products(db)?),
        ("GET", ["api", "products", sku]) => ok(inventory::get_product(db, sku)?),
        ("PUT", ["api", "products", sku]) => {
            let (created, v) = inventory::put_product(db, sku, &req.json_object()?, now)?;
            Ok(Response::json(if created { 201 } else { 200 }, &v))
        }
        ("GET", ["api", "stock"]) => ok(inventory::list_stock(
            db,
            req.query_param("sku"),
            req.query_param("facility"),
        )?),
        ("GET", ["api", "stock", sku]) => ok(inventory::availability(db, sku)?),
        ("GET", ["api", "stock", sku, "movements"]) => ok(inventory::movements(
            db,
            sku,
            req.query_param("facility"),
            movements_limit(req)?,
        )?),
        ("PUT", ["api", "stock", sku, facility]) => ok(inventory::set_level(
            db,
            sku,
            facility,
            &req.json_object()?,
            now,
            fx,
        )?),
        ("POST", ["api", "stock", "receipts"]) => {
            let v = req.json_object()?;
            idempotent(db, req, &idempotency_scope(req), now, |db| {
                Ok(Response::json(201, &inventory::receipt(db, &v, now, fx)?))
            })
        }
        ("POST", ["api", "stock", "adjustments"]) => {
            let v = req.json_object()?;
            idempotent(db, req, &idempotency_scope(req), now, |db| {
                Ok(Response::json(
                    200,
                    &inventory::adjustment(db, &v, now, fx)?,
                ))
            })
        }
        ("GET", ["api", "license-keys", sku]) => ok(inventory::pool(db, sku)?),
        ("POST", ["api", "license-keys", sku]) => {
            let keys = parse_keys(req)?;
            Ok(Response::json(
                201,
                &inventory::import_keys(db, sku, &keys, now, fx)?,
            ))
        }
        (_, ["api", "facilities" | "products" | "stock" | "license-keys", ..]) => {
            if matches!(
                segs.as_slice(),
                ["api", "facilities"]
                    | ["api", "facilities", _]
                    | ["api", "products"]
                    | ["api", "products", _]
                    | ["api", "stock"]
                    | ["api", "stock", _]
                    | ["api", "stock", _, _]
                    | ["api", "license-keys", _]
            ) {
                Err(method_not_allowed(req))
            } else {
                Err(Error::not_found(format!(
                    "no inventory endpoint at {}",
                    req.path
                )))
            }
        }
        _ => Err(Error::not_found(format!(
            "no inventory endpoint at {}",
            req.path
        ))),
    }
}

/// `?limit=` of the movement log: 1 to 1000, 100 by default.
fn movements_limit(req: &Request) -> Result<i64> {
    Ok(match req.query_param("limit") {
        None => 100,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                Error::invalid(vec![FieldError::new(
                    "?limit",
                    "a whole number from 1 to 1000",
                )])
            })?,
    })
}

/// Keys from a JSON body (`{"keys": [...]}`) or CSV (a `key` or `license_key`
/// column, or the first column without a header).
pub fn parse_keys(req: &Request) -> Result<Vec<String>> {
    req.check_size()?;
    let ct = req.content_type();
    let raw: Vec<String> = if ct.contains("csv") || ct.starts_with("text/plain") {
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(&req.body[..]);
        let mut rows = Vec::new();
        for (i, rec) in rd.records().enumerate() {
            let rec = rec.map_err(|e| Error::bad_request(format!("CSV row {}: {e}", i + 1)))?;
            rows.push(rec.iter().map(str::to_string).collect::<Vec<_>>());
        }
        let mut col = 0;
        let mut skip = 0;
        if let Some(h) = rows.first() {
            if let Some(i) = h.iter().position(|c| {
                c.eq_ignore_ascii_case("key")
                    || c.eq_ignore_ascii_case("license_key")
                    || c.eq_ignore_ascii_case("licence_key")
            }) {
                col = i;
                skip = 1;
            }
        }
        rows.into_iter()
            .skip(skip)
            .filter_map(|r| r.get(col).cloned())
            .filter(|k| !k.is_empty())
            .collect()
    } else if ct.is_empty() || ct.contains("json") {
        let v: Json = serde_json::from_slice(&req.body)
            .map_err(|e| Error::bad_request(format!("the body is not valid JSON: {e}")))?;
        let Some(a) = v["keys"].as_array() else {
            return Err(Error::invalid(vec![FieldError::new(
                "/keys",
                "required: an array of licence keys",
            )]));
        };
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for (i, k) in a.iter().enumerate() {
            match k.as_str() {
                Some(s) => out.push(s.trim().to_string()),
                None => errs.push(FieldError::new(format!("/keys/{i}"), "must be a string")),
            }
        }
        if !errs.is_empty() {
            return Err(Error::invalid(errs));
        }
        out
    } else {
        return Err(Error::new(
            ErrorKind::UnsupportedMediaType,
            format!("send application/json or text/csv, not {ct}"),
        ));
    };
    let mut errs = Vec::new();
    for (i, k) in raw.iter().enumerate() {
        if k.is_empty() || k.len() > 512 || k.chars().any(|c| c.is_control()) {
            errs.push(FieldError::new(
                format!("/keys/{i}"),
                "a key is 1-512 characters without control characters",
            ));
        }
    }
    if raw.is_empty() {
        errs.push(FieldError::new("/keys", "no keys in the body"));
    }
    if raw.len() > MAX_KEYS_PER_IMPORT {
        errs.push(FieldError::new(
            "/keys",
            format!("at most {MAX_KEYS_PER_IMPORT} keys per import"),
        ));
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    Ok(raw)
}
