//! Fulfillment-center inventory feeds: pulled snapshots and pushed levels.

use super::*;

/// The KV key of a facility's latest inventory snapshot.
pub fn snapshot_key(facility: &str) -> String {
    format!("fc-inventory/{facility}")
}

/// A facility's inventory endpoint and signing secret (for the pull).
pub struct PullTarget {
    pub url: String,
    pub secret: String,
}

impl PullTarget {
    /// The signed headers of a pull: `Waybill-Signature` `t=...,v1=...,v2=...`
    /// over the empty body (`v2` bound to `GET` and the endpoint's path).
    pub fn headers(&self, now: DateTime<Utc>) -> Vec<(String, String)> {
        let path = url::Url::parse(&self.url)
            .map(|u| u.path().to_string())
            .unwrap_or_else(|_| "/".into());
        let sig = crate::kernel::signature::sign_request(
            self.secret.as_bytes(),
            now.timestamp(),
            "GET",
            &path,
            b"",
        );
        vec![
            ("accept".to_string(), "application/json".to_string()),
            ("waybill-signature".to_string(), sig),
        ]
    }
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
    // Checked again at each pull: the row may predate a narrower list.
    cfg.receivers.check(url).map_err(|e| {
        Error::unprocessable(format!(
            "facility '{facility}': endpoints.inventory_url is refused: {e}"
        ))
    })?;
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
    let (levels, as_of) = parse_snapshot(body)?;
    let parsed = parse_levels(&levels)?;
    // The newest snapshot applied so far is the facility's watermark, read and
    // moved under the write lock with the levels: an older snapshot changes
    // nothing, however many instances or key-value stores there are.
    let mark = as_of
        .as_deref()
        .and_then(crate::kernel::time::parse_time)
        .unwrap_or(now);
    let outcome = transaction(db, |db| {
        let applied_as_of = db
            .execute(
                "SELECT as_of FROM inventory_watermarks WHERE facility_id = ?",
                params![facility],
            )?
            .first()
            .map(|r| r.str("as_of"));
        let newer = applied_as_of
            .as_deref()
            .and_then(crate::kernel::time::parse_time)
            .filter(|old| mark < *old);
        if as_of.is_some() && newer.is_some() {
            return Ok::<_, Error>(Err(applied_as_of));
        }
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
        // A snapshot without `as_of` counts as taken when it arrived.
        db.execute(
            "INSERT INTO inventory_watermarks (facility_id, as_of, kind, applied_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (facility_id) DO UPDATE SET as_of = excluded.as_of, kind = excluded.kind, applied_at = excluded.applied_at",
            params![facility, ts(mark), kind, ts(now)],
        )?;
        Ok(Ok((applied, ignored)))
    })?;
    let (applied, ignored) = match outcome {
        Ok(v) => v,
        Err(applied_as_of) => {
            return Ok(
                json!({"facility": facility, "result": "stale", "as_of": as_of, "applied_as_of": applied_as_of}),
            )
        }
    };
    // A copy of the last snapshot for whoever inspects the store; nothing
    // decides on it (key-value holds only what can be rebuilt).
    let snapshot = json!({"facility": facility, "as_of": as_of.clone().unwrap_or_else(|| ts(now)), "received_at": ts(now), "kind": kind, "levels": levels});
    if let Err(e) = kv.set(&snapshot_key(facility), snapshot.to_string().as_bytes()) {
        eprintln!("inventory: snapshot not cached for {facility}: {e}");
    }
    Ok(
        json!({"facility": facility, "result": "applied", "applied": applied, "ignored": ignored, "as_of": as_of}),
    )
}

/// A snapshot body: an object with `levels` (and optionally `as_of`), or a
/// bare array of levels.
fn parse_snapshot(body: &[u8]) -> Result<(Vec<Json>, Option<String>)> {
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
    Ok((levels, as_of))
}

/// Each level: a SKU or the facility's part number, and the units on hand.
fn parse_levels(levels: &[Json]) -> Result<Vec<(&'static str, String, i64)>> {
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
    Ok(parsed)
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
    path: &str,
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
    let Some(used) = crate::kernel::signature::verified_request(
        secret.as_bytes(),
        signature_header,
        "POST",
        path,
        body,
        now.timestamp(),
        SIGNATURE_TOLERANCE_SECS,
    ) else {
        return Err(Error::unauthorized(
            "the Waybill-Signature header (t=<unix seconds>,v2=<hex HMAC-SHA256 of \"t.POST.<path>.body\">) does not verify for this facility",
        ));
    };
    // The signature is booked with the snapshot (its levels are written in a
    // savepoint of this transaction): a replay is refused, a failed push is not.
    transaction(db, |db| {
        if !crate::kernel::replay::first_use(db, &used, now)? {
            return Err(Error::unauthorized(
                "this Waybill-Signature was used before: sign each push anew (a fresh t)",
            ));
        }
        apply_snapshot(db, kv, facility, body, "push", now, fx)
    })
}
