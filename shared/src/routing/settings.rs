//! Routing settings: the routing configuration per channel (`routing_config`)
//! and the postal-prefix centroids used to place destinations (`geo_centroids`).

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::kernel::db::{transaction, Db};
use crate::kernel::error::{Error, FieldError, Result};
use crate::kernel::time::ts;
use crate::params;
use crate::routing::engine;

/// The routing configuration of a channel, else the default (`*`), else built-in.
pub fn load_config(db: &dyn Db, channel: &str) -> Result<engine::Config> {
    let r = crate::kernel::db::reference(
        db,
        &["routing_config"],
        "SELECT config FROM routing_config WHERE channel IN (?, '*') ORDER BY channel = '*' LIMIT 1",
        params![channel],
    )?;
    Ok(r.first()
        .and_then(|c| serde_json::from_str(&c.str("config")).ok())
        .unwrap_or_default())
}

/// Every stored configuration, with the built-in default.
pub fn configs_view(db: &dyn Db) -> Result<Json> {
    let r = db.execute(
        "SELECT channel, config, updated_at FROM routing_config ORDER BY channel",
        &[],
    )?;
    Ok(json!({
        "built_in_default": engine::Config::default(),
        "configs": r.iter().map(|c| json!({"channel": c.str("channel"), "updated_at": c.str("updated_at"),
            "config": serde_json::from_str::<Json>(&c.str("config")).unwrap_or(Json::Null)})).collect::<Vec<_>>(),
    }))
}

/// The configuration a channel routes with.
pub fn effective_view(db: &dyn Db, channel: &str) -> Result<Json> {
    Ok(json!({"channel": channel, "effective": load_config(db, channel)?}))
}

/// Replaces a channel's configuration (`*` for every channel).
pub fn put_config(db: &dyn Db, channel: &str, v: Json, now: DateTime<Utc>) -> Result<Json> {
    if channel.is_empty() || channel.len() > 100 {
        return Err(Error::bad_request(
            "a channel name is 1-100 characters ('*' or 'default' for every channel)",
        ));
    }
    let cfg: engine::Config = serde_json::from_value(v)
        .map_err(|e| Error::invalid(vec![FieldError::new("", e.to_string())]))?;
    let errs = cfg.validate();
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    transaction(db, |db| {
        db.execute(
            "INSERT INTO routing_config (channel, config, updated_at) VALUES (?, ?, ?)
             ON CONFLICT (channel) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
            params![channel, serde_json::to_string(&cfg).unwrap_or_default(), ts(now)],
        )?;
        Ok::<_, Error>(())
    })?;
    Ok(json!({"channel": channel, "config": cfg}))
}

/// The loaded centroids.
pub fn centroids_view(db: &dyn Db) -> Result<Json> {
    let r = db.execute(
        "SELECT * FROM geo_centroids ORDER BY country, postal_prefix LIMIT 10000",
        &[],
    )?;
    Ok(
        json!({"centroids": r.iter().map(|c| json!({"country": c.str("country"),
        "postal_prefix": c.str("postal_prefix"), "latitude": c.opt_f64("latitude"), "longitude": c.opt_f64("longitude")})).collect::<Vec<_>>()}),
    )
}

/// Upserts centroids; every row is checked before any is written.
pub fn put_centroids(db: &dyn Db, v: &Json) -> Result<Json> {
    let Some(list) = v["centroids"].as_array() else {
        return Err(Error::invalid(vec![FieldError::new(
            "/centroids",
            "required: [{country, postal_prefix, latitude, longitude}]",
        )]));
    };
    let mut rows = Vec::new();
    let mut errs = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let country = c["country"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let prefix = c["postal_prefix"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let (la, lo) = (c["latitude"].as_f64(), c["longitude"].as_f64());
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
            errs.push(FieldError::new(
                format!("/centroids/{i}/country"),
                "an ISO 3166-1 alpha-2 code",
            ));
        }
        if prefix.len() > 10 || !prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
            errs.push(FieldError::new(
                format!("/centroids/{i}/postal_prefix"),
                "up to 10 letters or digits ('' for the whole country)",
            ));
        }
        match (la, lo) {
            (Some(a), Some(b)) if (-90.0..=90.0).contains(&a) && (-180.0..=180.0).contains(&b) => {
                rows.push((country, prefix, a, b))
            }
            _ => errs.push(FieldError::new(
                format!("/centroids/{i}"),
                "latitude -90..90 and longitude -180..180 are required",
            )),
        }
    }
    if list.len() > 10_000 {
        errs.push(FieldError::new("/centroids", "at most 10000 per request"));
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    transaction(db, |db| {
        for (c, p, a, b) in &rows {
            db.execute(
                "INSERT INTO geo_centroids (country, postal_prefix, latitude, longitude) VALUES (?, ?, ?, ?)
                 ON CONFLICT (country, postal_prefix) DO UPDATE SET latitude = excluded.latitude, longitude = excluded.longitude",
                params![c.clone(), p.clone(), *a, *b],
            )?;
        }
        Ok::<_, Error>(())
    })?;
    Ok(json!({"upserted": rows.len()}))
}
