//! The rate table: zones, rates per carrier and service, quotes.

use super::*;

/// A rate table row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub carrier: String,
    pub service: String,
    pub zone: String,
    pub max_weight_grams: i64,
    pub price_minor: i64,
    pub currency: String,
}

/// The destination's zone: the longest postal prefix configured for the
/// country, else the country's own entry (prefix ""), else `None`.
pub fn zone_for(db: &dyn Db, country: &str, postal_code: &str) -> Result<Option<String>> {
    let r = db.execute(
        "SELECT zone FROM shipping_zones WHERE country = ? AND substr(?, 1, length(postal_prefix)) = postal_prefix
         ORDER BY length(postal_prefix) DESC LIMIT 1",
        params![country.to_ascii_uppercase(), postal_code.replace(' ', "").to_ascii_uppercase()],
    )?;
    Ok(r.first().map(|r| r.str("zone")))
}

/// The price of a parcel: per (carrier, service), the first weight bracket
/// whose upper bound (inclusive) holds the weight, in the destination's zone.
/// Cheapest first.
pub fn quote(
    db: &dyn Db,
    country: &str,
    postal_code: &str,
    weight_grams: i64,
    carrier: Option<&str>,
    service: Option<&str>,
) -> Result<(Option<String>, Vec<Rate>)> {
    let Some(zone) = zone_for(db, country, postal_code)? else {
        return Ok((None, Vec::new()));
    };
    let r = db.execute(
        "SELECT r.* FROM shipping_rates r
         WHERE r.zone = ?1 AND r.max_weight_grams >= ?2 AND (?3 IS NULL OR r.carrier = ?3) AND (?4 IS NULL OR r.service = ?4)
           AND r.max_weight_grams = (SELECT MIN(x.max_weight_grams) FROM shipping_rates x
               WHERE x.carrier = r.carrier AND x.service = r.service AND x.zone = r.zone AND x.max_weight_grams >= ?2)
         ORDER BY r.price_minor, r.carrier, r.service",
        params![zone.clone(), weight_grams, carrier, service],
    )?;
    Ok((
        Some(zone),
        r.iter()
            .map(|x| Rate {
                carrier: x.str("carrier"),
                service: x.str("service"),
                zone: x.str("zone"),
                max_weight_grams: x.i64("max_weight_grams"),
                price_minor: x.i64("price_minor"),
                currency: x.str("currency"),
            })
            .collect(),
    ))
}

pub(crate) fn rate_json(r: &Rate) -> Json {
    let price = crate::kernel::money::Currency::from_code(&r.currency)
        .map(|c| {
            serde_json::to_value(crate::kernel::money::Money::new(r.price_minor, c))
                .unwrap_or(Json::Null)
        })
        .unwrap_or(Json::Null);
    json!({"carrier": r.carrier, "service": r.service, "zone": r.zone, "max_weight_grams": r.max_weight_grams, "price": price})
}

pub fn put_rates(db: &dyn Db, v: &Json) -> Result<Json> {
    let mut errs = Vec::new();
    let zones = parse_zones(v, &mut errs);
    let mut rates = Vec::new();
    for (i, r) in v["rates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let p = format!("/rates/{i}");
        let text = |k: &str, errs: &mut Vec<FieldError>| -> String {
            match r[k].as_str() {
                Some(s) if !s.trim().is_empty() && s.len() <= 64 => s.to_string(),
                _ => {
                    errs.push(FieldError::new(
                        format!("{p}/{k}"),
                        "must be a name of 1 to 64 characters",
                    ));
                    String::new()
                }
            }
        };
        let carrier = text("carrier", &mut errs);
        let service = text("service", &mut errs);
        let zone = text("zone", &mut errs);
        let max = r["max_weight_grams"]
            .as_i64()
            .filter(|w| (1..=1_000_000).contains(w));
        if max.is_none() {
            errs.push(FieldError::new(
                format!("{p}/max_weight_grams"),
                "must be an integer from 1 to 1,000,000",
            ));
        }
        let currency = r["currency"]
            .as_str()
            .and_then(crate::kernel::money::Currency::from_code);
        if currency.is_none() {
            errs.push(FieldError::new(
                format!("{p}/currency"),
                "must be an ISO 4217 code",
            ));
        }
        let price = match (&r["price"], currency) {
            (Json::String(s), Some(c)) => c.parse_amount(s).ok().filter(|m| *m >= 0),
            (Json::Number(n), Some(c)) => c.parse_amount(&n.to_string()).ok().filter(|m| *m >= 0),
            _ => None,
        };
        if price.is_none() {
            errs.push(FieldError::new(
                format!("{p}/price"),
                "must be a non-negative decimal amount",
            ));
        }
        if !zone.is_empty() && !zones.iter().any(|z| z.2 == zone) {
            errs.push(FieldError::new(
                format!("{p}/zone"),
                format!("zone '{zone}' is not defined in zones"),
            ));
        }
        if let (Some(m), Some(pr), Some(c)) = (max, price, currency) {
            rates.push((carrier, service, zone, m, pr, c.code().to_string()));
        }
    }
    if v.get("zones").is_none() || v.get("rates").is_none() {
        errs.push(FieldError::new(
            "/",
            "zones and rates are both required (the table is replaced whole)",
        ));
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    db.execute("DELETE FROM shipping_zones", &[])?;
    db.execute("DELETE FROM shipping_rates", &[])?;
    for (c, p, z) in &zones {
        db.execute(
            "INSERT INTO shipping_zones (country, postal_prefix, zone) VALUES (?, ?, ?)
             ON CONFLICT (country, postal_prefix) DO UPDATE SET zone = excluded.zone",
            params![c.clone(), p.clone(), z.clone()],
        )?;
    }
    for (c, s, z, m, p, cur) in &rates {
        db.execute(
            "INSERT INTO shipping_rates (carrier, service, zone, max_weight_grams, price_minor, currency) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (carrier, service, zone, max_weight_grams) DO UPDATE SET price_minor = excluded.price_minor, currency = excluded.currency",
            params![c.clone(), s.clone(), z.clone(), *m, *p, cur.clone()],
        )?;
    }
    rates_view(db)
}

/// The zone table: (country, postal prefix, zone) rows.
fn parse_zones(v: &Json, errs: &mut Vec<FieldError>) -> Vec<(String, String, String)> {
    let mut zones = Vec::new();
    for (i, z) in v["zones"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let p = format!("/zones/{i}");
        let country = z["country"].as_str().unwrap_or("");
        if country.len() != 2 || !country.chars().all(|c| c.is_ascii_alphabetic()) {
            errs.push(FieldError::new(
                format!("{p}/country"),
                "must be an ISO 3166-1 alpha-2 code",
            ));
        }
        let prefix = z["postal_prefix"].as_str().unwrap_or("");
        if prefix.len() > 16 {
            errs.push(FieldError::new(
                format!("{p}/postal_prefix"),
                "at most 16 characters",
            ));
        }
        match z["zone"].as_str() {
            Some(zone) if !zone.trim().is_empty() && zone.len() <= 64 => zones.push((
                country.to_ascii_uppercase(),
                prefix.replace(' ', "").to_ascii_uppercase(),
                zone.to_string(),
            )),
            _ => errs.push(FieldError::new(
                format!("{p}/zone"),
                "must be a name of 1 to 64 characters",
            )),
        }
    }
    zones
}

pub fn rates_view(db: &dyn Db) -> Result<Json> {
    let zones: Vec<Json> = db
        .execute("SELECT * FROM shipping_zones ORDER BY country, postal_prefix", &[])?
        .iter()
        .map(|z| json!({"country": z.str("country"), "postal_prefix": z.str("postal_prefix"), "zone": z.str("zone")}))
        .collect();
    let rates: Vec<Json> = db
        .execute(
            "SELECT * FROM shipping_rates ORDER BY carrier, service, zone, max_weight_grams",
            &[],
        )?
        .iter()
        .map(|x| {
            rate_json(&Rate {
                carrier: x.str("carrier"),
                service: x.str("service"),
                zone: x.str("zone"),
                max_weight_grams: x.i64("max_weight_grams"),
                price_minor: x.i64("price_minor"),
                currency: x.str("currency"),
            })
        })
        .collect();
    Ok(json!({"zones": zones, "rates": rates}))
}

/// Rates for a destination and weight; the query is checked first.
pub fn quote_view(
    db: &dyn Db,
    country: &str,
    postal: &str,
    weight: Option<i64>,
    carrier: Option<&str>,
    service: Option<&str>,
) -> Result<Json> {
    let mut errs = Vec::new();
    if country.len() != 2 {
        errs.push(FieldError::new(
            "country",
            "an ISO 3166-1 alpha-2 code is required",
        ));
    }
    if weight.is_none() {
        errs.push(FieldError::new(
            "weight_grams",
            "a positive integer is required",
        ));
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    let (zone, rates) = quote(db, country, postal, weight.unwrap_or(0), carrier, service)?;
    Ok(
        json!({"zone": zone, "weight_grams": weight, "rates": rates.iter().map(rate_json).collect::<Vec<_>>()}),
    )
}
