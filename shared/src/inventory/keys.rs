//! Licence-key pools: imports and the pool view (keys are claimed by
//! [`super::stock::claim_keys`]).

use super::*;

/// The licence-key pool of a digital SKU.
pub fn pool(db: &dyn Db, sku: &str) -> Result<Json> {
    let r = db.execute(
        "SELECT digital, low_stock_threshold,
            (SELECT COUNT(*) FROM license_keys k WHERE k.sku = p.sku AND k.order_id IS NULL) AS available,
            (SELECT COUNT(*) FROM license_keys k WHERE k.sku = p.sku AND k.order_id IS NOT NULL) AS assigned,
            (SELECT COUNT(*) FROM license_keys k WHERE k.sku = p.sku AND k.order_id IS NOT NULL AND k.delivered_at IS NULL) AS held,
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
                "held_for_capture": p.i64("held"),
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
