//! What a routing pass reads before it decides: facilities, the destination,
//! products, supply, and the order's lines with their buckets (`prepare`).

use super::*;
use crate::kernel::db::reference;

pub fn load_facilities(db: &dyn Db) -> Result<Vec<Facility>> {
    let r = reference(
        db,
        &["facilities"],
        "SELECT id, type, services, countries, shipping_methods, latitude, longitude, daily_capacity, priority, active
         FROM facilities ORDER BY id",
        &[],
    )?;
    Ok(r.iter()
        .map(|f| Facility {
            id: f.str("id"),
            kind: FacilityType::parse(&f.str("type")).unwrap_or(FacilityType::Warehouse),
            services: serde_json::from_str(&f.str("services")).unwrap_or_default(),
            countries: serde_json::from_str(&f.str("countries")).unwrap_or_default(),
            shipping_methods: serde_json::from_str(&f.str("shipping_methods")).unwrap_or_default(),
            location: f.opt_f64("latitude").zip(f.opt_f64("longitude")),
            daily_capacity: f.opt_i64("daily_capacity"),
            priority: f.i64("priority"),
            active: f.i64("active") != 0,
        })
        .collect())
}

/// Destination coordinates: the order's own, else the longest loaded postal
/// prefix centroid, else the country centroid (loaded, then built in).
pub fn destination(db: &dyn Db, address: &Json) -> Result<Destination> {
    let country = address["country_code"]
        .as_str()
        .map(|c| c.to_ascii_uppercase())
        .filter(|c| !c.is_empty());
    if let (Some(la), Some(lo)) = (address["latitude"].as_f64(), address["longitude"].as_f64()) {
        return Ok(Destination {
            country,
            location: Some((la, lo)),
            location_source: "order".into(),
        });
    }
    let Some(c) = country.clone() else {
        return Ok(Destination {
            country,
            location: None,
            location_source: "none".into(),
        });
    };
    let postal: String = address["postal_code"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_uppercase();
    let r = reference(
        db,
        &["geo_centroids"],
        "SELECT postal_prefix, latitude, longitude FROM geo_centroids
         WHERE country = ? AND ? LIKE postal_prefix || '%' ORDER BY length(postal_prefix) DESC LIMIT 1",
        params![c.clone(), postal],
    )?;
    if let Some(g) = r.first() {
        let prefix = g.str("postal_prefix");
        return Ok(Destination {
            country,
            location: g.opt_f64("latitude").zip(g.opt_f64("longitude")),
            location_source: if prefix.is_empty() {
                format!("centroid:{c}")
            } else {
                format!("centroid:{c}-{prefix}")
            },
        });
    }
    Ok(Destination {
        location: engine::country_centroid(&c),
        location_source: if engine::country_centroid(&c).is_some() {
            format!("centroid:{c}")
        } else {
            "none".into()
        },
        country,
    })
}

pub(crate) struct Product {
    pub(crate) backorderable: bool,
    pub(crate) digital: bool,
    pub(crate) threshold: i64,
}

/// `?,?,...` and the parameters for an `IN (...)` over `items`.
pub(crate) fn in_list<'a>(items: impl IntoIterator<Item = &'a String>) -> (String, Vec<Value>) {
    let p: Vec<Value> = items.into_iter().map(Value::from).collect();
    (vec!["?"; p.len()].join(","), p)
}

pub(crate) fn products(db: &dyn Db, skus: &BTreeSet<String>) -> Result<BTreeMap<String, Product>> {
    if skus.is_empty() {
        return Ok(BTreeMap::new());
    }
    let (ph, p) = in_list(skus);
    let r = reference(
        db,
        &["products"],
        &format!("SELECT sku, backorderable, digital, low_stock_threshold FROM products WHERE sku IN ({ph})"),
        &p,
    )?;
    Ok(r.iter()
        .map(|x| {
            (
                x.str("sku"),
                Product {
                    backorderable: x.i64("backorderable") != 0,
                    digital: x.i64("digital") != 0,
                    threshold: x.i64("low_stock_threshold"),
                },
            )
        })
        .collect())
}

pub(crate) fn supply(db: &dyn Db, skus: &BTreeSet<String>) -> Result<Supply> {
    let mut s = Supply::default();
    if skus.is_empty() {
        return Ok(s);
    }
    let (ph, p) = in_list(skus);
    let r = db.execute(
        &format!("SELECT facility_id, sku, on_hand - reserved AS available FROM stock WHERE sku IN ({ph})"),
        &p,
    )?;
    for x in r.iter() {
        s.set(&x.str("facility_id"), &x.str("sku"), x.i64("available"));
    }
    let r = db.execute(
        "SELECT facility_id, COUNT(*) AS n FROM fulfillment_orders WHERE status IN ('on_hold', 'scheduled', 'open', 'in_progress') GROUP BY facility_id",
        &[],
    )?;
    for x in r.iter() {
        s.open_orders.insert(x.str("facility_id"), x.i64("n"));
    }
    Ok(s)
}

/// Units available now per SKU, over every facility (physical) or the key pool (digital).
pub(crate) fn available_any(db: &dyn Db, skus: &BTreeSet<String>) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    if skus.is_empty() {
        return Ok(out);
    }
    let (ph, p) = in_list(skus);
    let mut params2 = p.clone();
    params2.extend(p.iter().cloned());
    let r = db.execute(
        &format!(
            "SELECT sku, SUM(n) AS n FROM (
                SELECT s.sku, MAX(s.on_hand - s.reserved, 0) AS n FROM stock s JOIN facilities f ON f.id = s.facility_id
                  WHERE f.active = 1 AND s.sku IN ({ph})
                UNION ALL
                SELECT sku, COUNT(*) AS n FROM license_keys WHERE order_id IS NULL AND sku IN ({ph}) GROUP BY sku
             ) GROUP BY sku"
        ),
        &params2,
    )?;
    for x in r.iter() {
        out.insert(x.str("sku"), x.i64("n"));
    }
    Ok(out)
}

pub(crate) struct Line {
    pub(crate) line_no: i64,
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) buckets: crate::orders::model::Buckets,
    pub(crate) unplaced: i64,
}

/// What a routing pass read: the order, its lines and holds, the catalog
/// entries, the plan. Reads only.
pub struct Prepared {
    pub(crate) order_id: String,
    pub(crate) number: String,
    pub(crate) placed_at: String,
    pub(crate) version: i64,
    pub(crate) closed: bool,
    pub(crate) doc: Json,
    pub(crate) email: Option<String>,
    pub(crate) customer_name: Option<String>,
    pub(crate) lines: Vec<Line>,
    pub(crate) holds: Vec<String>,
    pub(crate) catalog: BTreeMap<String, Product>,
    /// Allocated fulfillment orders waiting for release.
    pub(crate) has_held_work: bool,
    pub(crate) existing_fos: i64,
    /// The facilities' own part numbers, by (SKU, facility).
    pub(crate) parts: BTreeMap<(String, String), String>,
    /// None: nothing physical to place, or no active facility.
    pub(crate) planned: Option<Planned>,
    pub(crate) no_facility: bool,
}

pub(crate) fn prepare(db: &dyn Db, order_id: &str) -> Result<Option<Prepared>> {
    let Some(o) = db
        .execute(
            "SELECT number, channel, status, placed_at, version, closed_at, doc, customer_email, customer_name,
                (SELECT COUNT(*) FROM fulfillment_orders f WHERE f.order_id = orders.id) AS fos,
                (SELECT COUNT(*) FROM fulfillment_orders f WHERE f.order_id = orders.id AND f.status = 'on_hold') AS held_fos
             FROM orders WHERE id = ?",
            params![order_id],
        )?
        .first()
        .map(|r| {
            (
                r.str("number"),
                r.str("channel"),
                r.str("status"),
                r.str("placed_at"),
                r.i64("version"),
                r.opt_str("closed_at").is_some(),
                serde_json::from_str::<Json>(&r.str("doc")).unwrap_or(Json::Null),
                r.opt_str("customer_email"),
                r.opt_str("customer_name"),
                r.i64("fos"),
                r.i64("held_fos"),
            )
        })
    else {
        return Ok(None);
    };
    let (
        number,
        channel,
        status,
        placed_at,
        version,
        closed,
        doc,
        email,
        customer_name,
        fos,
        held_fos,
    ) = o;
    if status == "cancelled" || status == "closed" {
        return Ok(None);
    }
    let lines: Vec<Line> = db
        .execute(
            "SELECT * FROM order_lines WHERE order_id = ? ORDER BY line_no",
            params![order_id],
        )?
        .iter()
        .map(|l| {
            let b = store::buckets(&l);
            let unplaced = (b.ordered - b.cancelled - b.allocated - b.released - b.shipped).max(0);
            Line {
                line_no: l.i64("line_no"),
                sku: l.str("sku"),
                name: l.str("name"),
                buckets: b,
                unplaced,
            }
        })
        .collect();
    let holds = store::open_hold_reasons(db, order_id)?;
    let skus: BTreeSet<String> = lines
        .iter()
        .filter(|l| l.unplaced > 0)
        .map(|l| l.sku.clone())
        .collect();
    let catalog = products(db, &skus)?;
    let physical: Vec<Demand> = lines
        .iter()
        .filter(|l| l.unplaced > 0 && !catalog.get(&l.sku).is_some_and(|p| p.digital))
        .map(|l| Demand {
            line_no: l.line_no,
            sku: l.sku.clone(),
            quantity: l.unplaced,
        })
        .collect();
    let mut planned = None;
    let mut no_facility = false;
    if !physical.is_empty() {
        let facilities = load_facilities(db)?;
        if facilities.iter().any(|f| f.active) {
            planned = Some(plan(db, order_id, &channel, &doc, physical, &facilities)?);
        } else {
            no_facility = true;
        }
    }
    Ok(Some(Prepared {
        order_id: order_id.to_string(),
        number,
        placed_at,
        version,
        closed,
        doc,
        email,
        customer_name,
        lines,
        holds,
        catalog,
        has_held_work: held_fos > 0,
        existing_fos: fos,
        parts: part_numbers(db, &skus)?,
        planned,
        no_facility,
    }))
}

impl Prepared {
    pub(crate) fn part_number(&self, sku: &str, facility: &str) -> Option<String> {
        self.parts
            .get(&(sku.to_string(), facility.to_string()))
            .cloned()
    }
}

pub(crate) fn part_numbers(
    db: &dyn Db,
    skus: &BTreeSet<String>,
) -> Result<BTreeMap<(String, String), String>> {
    if skus.is_empty() {
        return Ok(BTreeMap::new());
    }
    let (ph, p) = in_list(skus);
    Ok(reference(
        db,
        &["product_parts"],
        &format!("SELECT sku, facility_id, part_number FROM product_parts WHERE sku IN ({ph})"),
        &p,
    )?
    .iter()
    .map(|r| ((r.str("sku"), r.str("facility_id")), r.str("part_number")))
    .collect())
}
