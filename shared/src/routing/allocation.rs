//! Applying routing to stored orders: reservation, fulfillment orders,
//! backorders, holds, licence keys and release, each pass in one transaction.
//!
//! Units of a line move through exclusive buckets: *pending* (ordered less
//! cancelled, allocated, released and shipped, not yet placed), *backordered*
//! (pending and waiting for stock on a backorderable SKU), *allocated* (reserved
//! at a facility in a fulfillment order not yet released), *released*, *shipped*.
//!
//! Reservation is one conditional statement per (facility, SKU)
//! ([`crate::inventory::stock::reserve`]) and licence keys are claimed with one
//! conditional statement ([`crate::inventory::stock::claim_keys`]). Neither
//! reads then writes, so no number of concurrent instances can oversell.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::fulfillment::status::{set_status, FoStatus};
use crate::fulfillment::store as fstore;
use crate::inventory::stock::{self, Reservation};
use crate::kernel::db::{transaction, Db, Value};
use crate::kernel::error::{Error, Result};
use crate::kernel::time::ts;
use crate::orders::lines;
use crate::orders::model::{HoldReason, NewOrder};
use crate::orders::store::{self, record_event};
use crate::params;
use crate::routing::engine::{self, Demand, Destination, Facility, FacilityType, Service, Supply};

/// Holds that stop a release (every reason but `out_of_stock`, which concerns
/// only the units that could not be placed).
pub fn blocks_release(reason: &str) -> bool {
    reason != HoldReason::OutOfStock.as_str()
}

/// Units of a line not yet placed anywhere (includes backordered units).
/// The expression is the one of the partial index `order_lines_unplaced`.
const UNPLACED: &str = "qty_ordered - qty_cancelled - qty_allocated - qty_released - qty_shipped";

pub fn load_facilities(db: &dyn Db) -> Result<Vec<Facility>> {
    let r = db.execute(
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
    let r = db.execute(
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

struct Product {
    backorderable: bool,
    digital: bool,
    threshold: i64,
}

/// `?,?,...` and the parameters for an `IN (...)` over `items`.
fn in_list<'a>(items: impl IntoIterator<Item = &'a String>) -> (String, Vec<Value>) {
    let p: Vec<Value> = items.into_iter().map(Value::from).collect();
    (vec!["?"; p.len()].join(","), p)
}

fn products(db: &dyn Db, skus: &BTreeSet<String>) -> Result<BTreeMap<String, Product>> {
    if skus.is_empty() {
        return Ok(BTreeMap::new());
    }
    let (ph, p) = in_list(skus);
    let r = db.execute(
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

fn supply(db: &dyn Db, skus: &BTreeSet<String>) -> Result<Supply> {
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
fn available_any(db: &dyn Db, skus: &BTreeSet<String>) -> Result<BTreeMap<String, i64>> {
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

/// What one pass did to an order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub allocated: i64,
    pub backordered: i64,
    pub held: i64,
    pub released: i64,
    pub keys: i64,
    /// Units allocated whose capture the gateway has yet to confirm.
    pub awaiting_capture: i64,
    pub changed: bool,
}

/// Why a pass runs, for the timeline and the stored decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The order arrived or changed (chained from intake).
    Intake,
    /// Stock arrived for a SKU it waits for.
    Backorder,
    /// The scheduled sweep.
    Sweep,
}

impl Trigger {
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Intake => "intake",
            Trigger::Backorder => "backorder_release",
            Trigger::Sweep => "sweep",
        }
    }
}

/// Routes an order, after giving older orders waiting for the same SKUs their
/// turn: every pass checks backorders first. The plan is made from a snapshot
/// read outside the write lock; under the lock the order's version is checked
/// (re-planned if it moved) and every reservation is conditional, so a stock
/// change in between can only make a reservation miss, never oversell.
pub fn process_order(
    db: &dyn Db,
    order_id: &str,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> Result<Outcome> {
    let reader = crate::kernel::db::Patient(db);
    let Some(snapshot) = prepare(&reader, order_id)? else {
        return Ok(Outcome::default());
    };
    let skus: Vec<String> = snapshot
        .lines
        .iter()
        .filter(|l| l.unplaced > 0)
        .map(|l| l.sku.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if skus.is_empty() && !snapshot.has_held_work {
        return Ok(Outcome::default());
    }
    let mut snapshot = Some(snapshot);
    if !skus.is_empty() {
        let placed = snapshot
            .as_ref()
            .map(|s| s.placed_at.clone())
            .unwrap_or_default();
        if release_backorders(db, Some(&skus), Some((&placed, order_id)), now, 50)? > 0 {
            snapshot = None; // stock moved: plan again under the lock
        }
    }
    let optimistic = transaction(db, |db| -> std::result::Result<Outcome, PassError> {
        let current = db
            .execute("SELECT version FROM orders WHERE id = ?", params![order_id])?
            .first()
            .map(|r| r.i64("version"));
        let (prepared, strict) = match snapshot {
            Some(s) if Some(s.version) == current => (Some(s), true),
            _ => (prepare(db, order_id)?, false),
        };
        match prepared {
            Some(p) => apply(db, p, trigger, now, strict),
            None => Ok(Outcome::default()),
        }
    });
    match optimistic {
        Ok(o) => Ok(o),
        // Stock moved between the snapshot and the lock: plan again inside it.
        Err(PassError::StockMoved) => transaction(db, |db| route_order(db, order_id, trigger, now)),
        Err(PassError::Failed(e)) => Err(e),
    }
}

/// Why a routing pass stopped (and rolled back).
#[derive(Debug)]
pub enum PassError {
    /// A reservation of an optimistic pass missed: stock moved since the plan,
    /// which is made again under the lock.
    StockMoved,
    Failed(Error),
}

impl From<Error> for PassError {
    fn from(e: Error) -> Self {
        PassError::Failed(e)
    }
}

impl From<crate::kernel::db::DbError> for PassError {
    fn from(e: crate::kernel::db::DbError) -> Self {
        PassError::Failed(e.into())
    }
}

/// A routing decision for an order's physical units, or why it cannot be made
/// (an unknown pickup location).
pub struct Planned {
    pub service: Service,
    pub decision: std::result::Result<engine::Decision, String>,
}

/// Builds the routing request from the stored order document and runs the
/// engine against current stock. Writes nothing.
pub fn plan(
    db: &dyn Db,
    order_id: &str,
    channel: &str,
    doc: &Json,
    physical: Vec<Demand>,
    facilities: &[Facility],
) -> Result<Planned> {
    let pickup = doc["pickup_location"].as_str().map(str::to_string);
    let mut service = Service::Ship;
    let mut preselected = doc["preferred_facility"].as_str().map(str::to_string);
    if let Some(p) = &pickup {
        service = Service::ClickCollect;
        if !p.is_empty() {
            let by_name = db
                .execute(
                    "SELECT id FROM facilities WHERE id = ?1 OR lower(name) = lower(?1) ORDER BY id <> ?1, id LIMIT 1",
                    params![p.clone()],
                )?
                .first()
                .map(|r| r.str("id"));
            match by_name {
                Some(id) => preselected = Some(id),
                None => {
                    return Ok(Planned {
                        service,
                        decision: Err(format!("pickup location '{p}' is not a known facility")),
                    })
                }
            }
        }
    }
    let req = engine::Request {
        order_id,
        destination: if service == Service::Ship {
            destination(db, &doc["shipping_address"])?
        } else {
            Destination {
                location_source: "none".into(),
                ..Destination::default()
            }
        },
        shipping_method: doc["shipping_lines_minor"][0]["method"]
            .as_str()
            .map(str::to_string),
        service,
        preselected,
        lines: physical,
    };
    let skus: BTreeSet<String> = req.lines.iter().map(|d| d.sku.clone()).collect();
    let sup = supply(db, &skus)?;
    let cfg = crate::routing::settings::load_config(db, channel)?;
    Ok(Planned {
        service,
        decision: Ok(engine::route(&req, facilities, &sup, &cfg)),
    })
}

/// A dry run for an order that is not stored: `{"order": <Waybill order JSON>}`.
/// Returns the decision and its explanation; reserves nothing.
pub fn simulate(db: &dyn Db, o: &NewOrder) -> Result<Json> {
    let doc = json!({
        "shipping_address": o.shipping_address,
        "shipping_lines_minor": o.shipping_lines,
        "pickup_location": o.pickup_location,
        "preferred_facility": o.preferred_facility,
    });
    let skus: BTreeSet<String> = o.lines.iter().map(|l| l.sku.clone()).collect();
    let catalog = products(db, &skus)?;
    let physical: Vec<Demand> = o
        .lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !catalog.get(&l.sku).is_some_and(|p| p.digital))
        .map(|(i, l)| Demand {
            line_no: i as i64 + 1,
            sku: l.sku.clone(),
            quantity: l.quantity,
        })
        .collect();
    let facilities = load_facilities(db)?;
    let planned = plan(db, &o.external_id, &o.channel, &doc, physical, &facilities)?;
    Ok(match planned.decision {
        Ok(d) => {
            json!({"dry_run": true, "parts": d.parts, "unassigned": d.unassigned, "explanation": d.explanation})
        }
        Err(note) => {
            json!({"dry_run": true, "parts": [], "hold": {"reason": "incorrect_address", "note": note}})
        }
    })
}

/// Places every unplaced unit of one order, inside the caller's transaction,
/// then releases what may be released.
pub fn route_order(
    db: &dyn Db,
    order_id: &str,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> Result<Outcome> {
    match prepare(db, order_id)? {
        // Not strict: a missed reservation leaves units unplaced, it never stops the pass.
        Some(p) => apply(db, p, trigger, now, false).map_err(|e| match e {
            PassError::Failed(e) => e,
            PassError::StockMoved => Error::internal("a pass under the lock asked to plan again"),
        }),
        None => Ok(Outcome::default()),
    }
}

struct Line {
    line_no: i64,
    sku: String,
    name: String,
    buckets: crate::orders::model::Buckets,
    unplaced: i64,
}

/// What a routing pass read: the order, its lines and holds, the catalog
/// entries, the plan. Reads only.
pub struct Prepared {
    order_id: String,
    number: String,
    placed_at: String,
    version: i64,
    closed: bool,
    doc: Json,
    email: Option<String>,
    customer_name: Option<String>,
    lines: Vec<Line>,
    holds: Vec<String>,
    catalog: BTreeMap<String, Product>,
    /// Allocated fulfillment orders waiting for release.
    has_held_work: bool,
    existing_fos: i64,
    /// The facilities' own part numbers, by (SKU, facility).
    parts: BTreeMap<(String, String), String>,
    /// None: nothing physical to place, or no active facility.
    planned: Option<Planned>,
    no_facility: bool,
}

fn prepare(db: &dyn Db, order_id: &str) -> Result<Option<Prepared>> {
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
    fn part_number(&self, sku: &str, facility: &str) -> Option<String> {
        self.parts
            .get(&(sku.to_string(), facility.to_string()))
            .cloned()
    }
}

fn part_numbers(
    db: &dyn Db,
    skus: &BTreeSet<String>,
) -> Result<BTreeMap<(String, String), String>> {
    if skus.is_empty() {
        return Ok(BTreeMap::new());
    }
    let (ph, p) = in_list(skus);
    Ok(db
        .execute(
            &format!("SELECT sku, facility_id, part_number FROM product_parts WHERE sku IN ({ph})"),
            &p,
        )?
        .iter()
        .map(|r| ((r.str("sku"), r.str("facility_id")), r.str("part_number")))
        .collect())
}

/// Writes a prepared pass: reservations, fulfillment orders (released at once
/// unless a hold stops it), licence keys, backorders and holds, the decision,
/// the buckets and statuses.
/// `strict`: the plan came from a snapshot read outside the lock; a missed
/// reservation rolls the pass back ([`PassError::StockMoved`]) so it is planned again under
/// the lock. Otherwise a miss (impossible under the lock on SQLite, possible on
/// a server whose reads are not serialised) leaves the units unplaced for the
/// next pass.
fn apply(
    db: &dyn Db,
    p: Prepared,
    trigger: Trigger,
    now: DateTime<Utc>,
    strict: bool,
) -> std::result::Result<Outcome, PassError> {
    let mut out = Outcome::default();
    let actor = "routing";
    // Timeline events and outbox rows of this pass, written in one statement each at the end.
    let mut ev: Vec<(&str, String, Json)> = Vec::new();
    let mut obx: Vec<(&str, Json)> = Vec::new();
    let order_id = p.order_id.as_str();
    let blocked = p.holds.iter().any(|h| blocks_release(h));
    // Released fulfillment orders wait for their capture (capture at release).
    let gated =
        !blocked && p.planned.is_some() && crate::payments::capture::gated(db, &p.order_id)?;
    let mut to_capture: Vec<(String, i64)> = Vec::new();
    let mut released_now: Vec<String> = Vec::new();
    let backorderable = |sku: &str| p.catalog.get(sku).is_some_and(|x| x.backorderable);
    let threshold = |sku: &str| p.catalog.get(sku).map(|x| x.threshold).unwrap_or(0);
    let is_digital = |sku: &str| p.catalog.get(sku).is_some_and(|x| x.digital);
    if p.no_facility
        && !p
            .lines
            .iter()
            .any(|l| l.unplaced > 0 && is_digital(&l.sku) && !blocked)
    {
        // Inventory is not set up: leave the order as it is; the sweep retries.
        return Ok(out);
    }
    // Per line: units newly allocated / released / delivered, and what is left.
    let mut add_alloc: BTreeMap<i64, i64> = BTreeMap::new();
    let mut add_rel: BTreeMap<i64, i64> = BTreeMap::new();
    let mut add_ship: BTreeMap<i64, i64> = BTreeMap::new();
    let mut left: BTreeMap<i64, i64> = BTreeMap::new();
    let mut explanation = json!({});
    let mut fo_ids = Vec::new();
    let mut fo_names = Vec::new();
    let mut held_note: Option<String> = None;
    let mut holds_open = p.holds.len();

    if let Some(planned) = &p.planned {
        let service = planned.service;
        match &planned.decision {
            Err(note) => {
                held_note = Some(note.clone());
                if store::add_hold(db, order_id, HoldReason::IncorrectAddress, note, now, actor)? {
                    holds_open += 1;
                }
                for l in p
                    .lines
                    .iter()
                    .filter(|l| l.unplaced > 0 && !is_digital(&l.sku))
                {
                    left.insert(l.line_no, 0); // held for the address, not for stock
                }
            }
            Ok(decision) => {
                explanation = decision.explanation.clone();
                for d in decision
                    .parts
                    .iter()
                    .flat_map(|x| &x.lines)
                    .chain(&decision.unassigned)
                {
                    *left.entry(d.line_no).or_default() += d.quantity;
                }
                for part in &decision.parts {
                    let mut fo_lines = Vec::new();
                    for d in &part.lines {
                        // The one conditional reservation: no read-then-write race.
                        let got = stock::reserve(db, &d.sku, &part.facility, d.quantity, now)?;
                        if got == Reservation::Short {
                            if strict {
                                return Err(PassError::StockMoved);
                            }
                            continue; // stays unplaced; the next pass retries
                        }
                        *left.get_mut(&d.line_no).expect("line") -= d.quantity;
                        fo_lines.push(d.clone());
                        if threshold(&d.sku) > 0 {
                            crate::inventory::stock::low_stock_check(
                                db,
                                &d.sku,
                                &part.facility,
                                now,
                            )?;
                        }
                    }
                    if fo_lines.is_empty() {
                        continue;
                    }
                    let fo_id = uuid::Uuid::now_v7().to_string();
                    let name =
                        format!("{}-F{}", p.number, p.existing_fos + fo_ids.len() as i64 + 1);
                    let pickup = service == Service::ClickCollect;
                    let status = if blocked {
                        FoStatus::OnHold
                    } else if gated {
                        FoStatus::Scheduled
                    } else {
                        FoStatus::Open
                    };
                    let rows: Vec<fstore::NewLine> = fo_lines
                        .iter()
                        .map(|d| fstore::NewLine {
                            line_no: d.line_no,
                            sku: d.sku.clone(),
                            part_number: p.part_number(&d.sku, &part.facility),
                            quantity: d.quantity,
                        })
                        .collect();
                    fstore::create(
                        db,
                        &fstore::NewFulfillmentOrder {
                            id: &fo_id,
                            order_id,
                            name: &name,
                            facility: &part.facility,
                            status,
                            pickup,
                            lines: &rows,
                        },
                        now,
                    )?;
                    for d in &fo_lines {
                        *if blocked || gated {
                            add_alloc.entry(d.line_no)
                        } else {
                            add_rel.entry(d.line_no)
                        }
                        .or_default() += d.quantity;
                    }
                    let units: i64 = fo_lines.iter().map(|d| d.quantity).sum();
                    if blocked || gated {
                        out.allocated += units;
                        let why = if blocked {
                            "release (on hold)"
                        } else {
                            "its payment capture"
                        };
                        ev.push(("fulfillment_order.created",
                            format!("{name}: {units} unit(s) allocated at {}, waiting for {why}", part.facility),
                            json!({"fulfillment_order": name, "facility": part.facility, "lines": fo_lines, "pickup": pickup})));
                        if gated {
                            to_capture.push((fo_id.clone(), units));
                        }
                    } else {
                        out.allocated += units;
                        out.released += units;
                        let items: Vec<Json> = fo_lines.iter().map(|d| {
                            let name = p.lines.iter().find(|l| l.line_no == d.line_no).map(|l| l.name.clone()).unwrap_or_default();
                            json!({"line_no": d.line_no, "sku": d.sku, "part_number": p.part_number(&d.sku, &part.facility), "name": name, "quantity": d.quantity})
                        }).collect();
                        ev.push(("fulfillment_order.released",
                            format!(
                                "{name}: {units} unit(s) allocated at {} and released",
                                part.facility
                            ),
                            json!({"fulfillment_order": name, "facility": part.facility, "units": units, "lines": fo_lines, "pickup": pickup})));
                        let payload = crate::fulfillment::release::released_payload(
                            &fo_id,
                            &name,
                            order_id,
                            &p.number,
                            &part.facility,
                            pickup,
                            &p.email,
                            &p.customer_name,
                            &p.doc,
                            &items,
                        );
                        obx.push(("fulfillment_order.released", payload));
                        released_now.push(fo_id.clone());
                    }
                    fo_ids.push(fo_id);
                    fo_names.push(name);
                }
            }
        }
    }

    // Licence keys: one per unit, claimed in one conditional statement.
    let digital: Vec<&Line> = p
        .lines
        .iter()
        .filter(|l| l.unplaced > 0 && is_digital(&l.sku) && !blocked)
        .collect();
    for l in &digital {
        let got = stock::claim_keys(db, &l.sku, order_id, l.line_no, l.unplaced, now)?;
        left.insert(l.line_no, l.unplaced - got);
        if got > 0 {
            let keys: Vec<String> = db
                .execute(
                    "SELECT key FROM license_keys WHERE order_id = ? AND line_no = ? AND assigned_at = ? ORDER BY id",
                    params![order_id, l.line_no, ts(now)],
                )?
                .iter()
                .map(|k| k.str("key"))
                .collect();
            *add_ship.entry(l.line_no).or_default() += got;
            out.keys += got;
            ev.push((
                "license.assigned",
                format!("{got} licence key(s) assigned for {}", l.sku),
                json!({"line_no": l.line_no, "sku": l.sku, "quantity": got}),
            ));
            ev.push((
                "shipment.shipped",
                format!("{got} digital unit(s) of {} delivered by e-mail", l.sku),
                json!({"facility": "digital", "units": got, "partial": got < l.unplaced}),
            ));
            obx.push(("license.assigned", json!({"order_id": order_id, "number": p.number, "email": p.email, "customer_name": p.customer_name,
                       "line_no": l.line_no, "sku": l.sku, "name": l.name, "quantity": got,
                       "license_key": keys.join(", "), "license_keys": keys})));
            crate::inventory::stock::pool_low_check(db, &l.sku, now)?;
        }
    }

    // What is left: backordered where the SKU allows it, else held out of stock.
    let mut newly_backordered = Vec::new();
    let mut short = Vec::new();
    let mut new_backordered: BTreeMap<i64, i64> = BTreeMap::new();
    for l in &p.lines {
        let Some(&rest) = left.get(&l.line_no) else {
            continue;
        };
        let target = if backorderable(&l.sku) { rest } else { 0 };
        if target != l.buckets.backordered {
            new_backordered.insert(l.line_no, target);
        }
        if target > l.buckets.backordered {
            newly_backordered.push(json!({"line_no": l.line_no, "sku": l.sku, "name": l.name, "quantity": target - l.buckets.backordered}));
        }
        out.backordered += target;
        if !backorderable(&l.sku) && rest > 0 && held_note.is_none() {
            short.push(format!("{} x {}", rest, l.sku));
            out.held += rest;
        }
    }
    if !newly_backordered.is_empty() {
        let units: i64 = newly_backordered
            .iter()
            .map(|b| b["quantity"].as_i64().unwrap_or(0))
            .sum();
        ev.push((
            "order.backordered",
            format!("{units} unit(s) backordered"),
            json!({"lines": newly_backordered}),
        ));
        obx.push(("order.backordered", json!({"order_id": order_id, "number": p.number, "email": p.email, "customer_name": p.customer_name, "lines": newly_backordered})));
    }
    let had_stock_hold = p.holds.iter().any(|h| h == HoldReason::OutOfStock.as_str());
    if !short.is_empty() {
        if store::add_hold(
            db,
            order_id,
            HoldReason::OutOfStock,
            &format!("no facility can supply {}", short.join(", ")),
            now,
            actor,
        )? {
            holds_open += 1;
        }
    } else if had_stock_hold
        && !left.is_empty()
        && store::release_hold(
            db,
            order_id,
            HoldReason::OutOfStock,
            now,
            actor,
            "every unit is now placed or backordered",
        )?
    {
        holds_open -= 1;
    }

    // The buckets, in one statement.
    let touched: BTreeSet<i64> = add_alloc
        .keys()
        .chain(add_rel.keys())
        .chain(add_ship.keys())
        .chain(new_backordered.keys())
        .copied()
        .collect();
    let mut buckets: Vec<crate::orders::model::Buckets> =
        p.lines.iter().map(|l| l.buckets.clone()).collect();
    if !touched.is_empty() {
        lines::place(
            db,
            order_id,
            &lines::Placement {
                allocated: add_alloc.clone(),
                released: add_rel.clone(),
                shipped: add_ship.clone(),
                backordered: new_backordered.clone(),
            },
        )?;
        for (i, l) in p.lines.iter().enumerate() {
            let b = &mut buckets[i];
            b.allocated += add_alloc.get(&l.line_no).copied().unwrap_or(0);
            b.released += add_rel.get(&l.line_no).copied().unwrap_or(0);
            b.shipped += add_ship.get(&l.line_no).copied().unwrap_or(0);
            b.delivered += add_ship.get(&l.line_no).copied().unwrap_or(0);
            if let Some(v) = new_backordered.get(&l.line_no) {
                b.backordered = *v;
            }
        }
    }

    let placed = out.allocated + out.keys;
    let unchanged =
        placed == 0 && newly_backordered.is_empty() && (short.is_empty() || had_stock_hold);
    let first = unchanged
        && db
            .execute(
                "SELECT 1 FROM routing_decisions WHERE order_id = ? LIMIT 1",
                params![order_id],
            )?
            .is_empty();
    if (!unchanged || first) && !left.is_empty() {
        let summary = format!(
            "{} unit(s) allocated{}{}{}{}{}",
            out.allocated,
            if fo_names.is_empty() {
                String::new()
            } else {
                format!(" in {}", fo_names.join(", "))
            },
            if out.released > 0 {
                " and released".to_string()
            } else {
                String::new()
            },
            if out.keys > 0 {
                format!(", {} licence key(s)", out.keys)
            } else {
                String::new()
            },
            if out.backordered > 0 {
                format!(", {} backordered", out.backordered)
            } else {
                String::new()
            },
            if out.held > 0 {
                format!(", {} out of stock (held)", out.held)
            } else {
                String::new()
            },
        );
        let mut ex = explanation;
        ex["digital"] = json!(digital
            .iter()
            .map(
                |l| json!({"line_no": l.line_no, "sku": l.sku, "wanted": l.unplaced,
            "assigned": l.unplaced - left.get(&l.line_no).copied().unwrap_or(0)})
            )
            .collect::<Vec<_>>());
        db.execute(
            "INSERT INTO routing_decisions (order_id, at, trigger, summary, explanation) VALUES (?, ?, ?, ?, ?)",
            params![order_id, ts(now), trigger.as_str(), summary.clone(), ex.to_string()],
        )?;
        let decision_id = db.last_insert_rowid();
        fstore::link_decision(db, &fo_ids, decision_id)?;
        ev.push((if trigger == Trigger::Backorder {
                "backorder.allocated"
            } else {
                "routing.decided"
            },
            summary.clone(),
            json!({"decision_id": decision_id, "trigger": trigger.as_str(), "allocated": out.allocated, "released": out.released,
                   "keys": out.keys, "backordered": out.backordered, "held": out.held})));
        out.changed = true;
    }
    store::record_batch(db, order_id, now, actor, &ev, &obx)?;
    for fo_id in &released_now {
        crate::fulfillment::on_released(db, fo_id, now)?;
    }
    // Fulfillment orders allocated earlier whose hold is gone.
    if !blocked && p.has_held_work {
        out.released += release(db, order_id, now)?;
        out.changed = true;
        store::refresh_status(db, order_id, now)?;
    } else if out.changed || holds_open != p.holds.len() {
        store::write_status(db, order_id, &buckets, holds_open, p.closed, now)?;
    }
    // Capture what was just allocated; ledger gateways settle (and release) here.
    for (fo_id, units) in &to_capture {
        match crate::payments::capture::capture_fulfillment_order(db, fo_id, now)? {
            crate::payments::capture::Gate::Released => out.released += units,
            crate::payments::capture::Gate::Waiting => out.awaiting_capture += units,
            crate::payments::capture::Gate::Declined => {}
        }
    }
    Ok(out)
}

/// Releases the order's allocated fulfillment orders unless a hold stops it;
/// where the order has a payment to capture, each goes through its capture
/// first ([`crate::payments::capture::capture_fulfillment_order`]).
/// Returns the units released.
pub fn release(db: &dyn Db, order_id: &str, now: DateTime<Utc>) -> Result<i64> {
    if store::open_hold_reasons(db, order_id)?
        .iter()
        .any(|h| blocks_release(h))
    {
        return Ok(0);
    }
    let fos = db.execute(
        "SELECT id FROM fulfillment_orders WHERE order_id = ? AND status = 'on_hold' ORDER BY name",
        params![order_id],
    )?;
    let gated = !fos.is_empty() && crate::payments::capture::gated(db, order_id)?;
    let mut total = 0;
    for f in fos.iter() {
        let fo_id = f.str("id");
        if gated {
            set_status(db, &fo_id, FoStatus::Scheduled, now)?;
            if crate::payments::capture::capture_fulfillment_order(db, &fo_id, now)?
                == crate::payments::capture::Gate::Released
            {
                total += crate::fulfillment::release::units(db, &fo_id)?;
            }
        } else {
            total += crate::fulfillment::release::release(db, &fo_id, now)?;
        }
    }
    Ok(total)
}

/// Gives back the reservations of the order's fulfillment orders that were not
/// released (before the source replaces the order, or on cancellation).
pub fn deallocate_unreleased(
    db: &dyn Db,
    order_id: &str,
    now: DateTime<Utc>,
    actor: &str,
    why: &str,
) -> Result<i64> {
    let rows = db.execute(
        "SELECT f.id, f.name, f.facility_id, fl.line_no, fl.sku, fl.quantity FROM fulfillment_orders f
         JOIN fulfillment_order_lines fl ON fl.fulfillment_order_id = f.id
         WHERE f.order_id = ? AND f.status IN ('on_hold', 'scheduled')",
        params![order_id],
    )?;
    // Captures not yet sent stop here; one in flight settles and, finding its
    // fulfillment order cancelled, is refunded (capture::settle).
    crate::payments::capture::stop_unreleased_captures(db, order_id, now)?;
    let mut total = 0;
    let mut names = BTreeSet::new();
    for r in rows.iter() {
        let q = r.i64("quantity");
        stock::give_back(db, &r.str("sku"), &r.str("facility_id"), q, now)?;
        lines::unallocate(db, order_id, r.i64("line_no"), q)?;
        total += q;
        names.insert((r.str("id"), r.str("name")));
    }
    for (id, name) in &names {
        set_status(db, id, FoStatus::Cancelled, now)?;
        record_event(
            db,
            order_id,
            now,
            actor,
            "fulfillment_order.cancelled",
            &format!("{name} cancelled: {why}"),
            json!({"fulfillment_order": name, "reason": why}),
        )?;
    }
    Ok(total)
}

/// Alerts the merchant once when a facility's stock of a SKU falls under the threshold.

/// Alerts the merchant once when a licence-key pool falls under its threshold.

/// After stock arrives: orders waiting for these SKUs (all SKUs when `None`),
/// oldest first (by order time), each routed in its own transaction, until the
/// stock runs out or `limit` orders were served. `before` restricts to orders
/// placed before (placed_at, id). Returns the orders that changed.
///
/// Waiting means backordered units or an order on hold with unplaced units.
/// Orders never routed yet are not taken here: their own chained call (or the
/// sweep) routes them, so concurrent new orders do not route one another.
pub fn release_backorders(
    db: &dyn Db,
    skus: Option<&[String]>,
    before: Option<(&str, &str)>,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<usize> {
    let p = crate::kernel::db::Patient(db);
    let mut served = 0;
    let mut skipped: BTreeSet<String> = BTreeSet::new();
    let mut after: Option<(String, String)> = None;
    loop {
        if served >= limit {
            break;
        }
        // Only SKUs that have something available are worth a pass.
        let wanted: BTreeSet<String> = match skus {
            Some(s) => s.iter().cloned().collect(),
            None => p
                .execute(
                    &format!("SELECT DISTINCT sku FROM order_lines WHERE {UNPLACED} > 0"),
                    &[],
                )?
                .iter()
                .map(|r| r.str("sku"))
                .collect(),
        };
        let avail = available_any(&p, &wanted)?;
        let live: Vec<String> = wanted
            .into_iter()
            .filter(|s| avail.get(s).copied().unwrap_or(0) > 0)
            .collect();
        if live.is_empty() {
            break;
        }
        let (ph, mut params) = in_list(&live);
        let mut cond = String::new();
        if let Some((t, id)) = before {
            cond.push_str(" AND (o.placed_at < ? OR (o.placed_at = ? AND o.id < ?))");
            params.extend([Value::from(t), Value::from(t), Value::from(id)]);
        }
        if let Some((t, id)) = &after {
            cond.push_str(" AND (o.placed_at > ? OR (o.placed_at = ? AND o.id > ?))");
            params.extend([Value::from(t), Value::from(t), Value::from(id)]);
        }
        let next = p.execute(
            &format!(
                "SELECT o.id, o.placed_at FROM order_lines l JOIN orders o ON o.id = l.order_id
                 WHERE l.sku IN ({ph}) AND {UNPLACED_LINE} > 0 AND (l.qty_backordered > 0 OR o.status = 'on_hold'){cond}
                 ORDER BY o.placed_at, o.id LIMIT 1"
            ),
            &params,
        )?;
        let Some(row) = next.first() else { break };
        let (id, placed) = (row.str("id"), row.str("placed_at"));
        after = Some((placed, id.clone()));
        if skipped.contains(&id) {
            continue;
        }
        let o = transaction(db, |db| route_order(db, &id, Trigger::Backorder, now))?;
        if o.changed || o.released > 0 {
            served += 1;
        } else {
            skipped.insert(id);
        }
    }
    Ok(served)
}

/// [`UNPLACED`] on the alias `l`.
const UNPLACED_LINE: &str =
    "l.qty_ordered - l.qty_cancelled - l.qty_allocated - l.qty_released - l.qty_shipped";

/// The scheduled pass: orders never routed (a chained call failed or
/// inventory was not set up), allocated work whose holds were lifted, then
/// backorders for every SKU with stock. Returns (orders routed, released, backorders served).
pub fn sweep(db: &dyn Db, now: DateTime<Utc>, limit: i64) -> Result<(usize, usize, usize)> {
    let p = crate::kernel::db::Patient(db);
    // Never routed: the chained call failed, or inventory was not set up yet.
    // (Racing a chained call in flight is harmless: routing only places unplaced units.)
    let received: Vec<String> = p
        .execute(
            "SELECT id FROM orders o WHERE status IN ('received', 'on_hold')
               AND NOT EXISTS (SELECT 1 FROM routing_decisions d WHERE d.order_id = o.id)
             ORDER BY placed_at, id LIMIT ?",
            params![limit],
        )?
        .iter()
        .map(|r| r.str("id"))
        .collect();
    let mut routed = 0;
    for id in &received {
        if process_order(db, id, Trigger::Sweep, now)?.changed {
            routed += 1;
        }
    }
    let waiting: Vec<String> = p
        .execute(
            "SELECT DISTINCT f.order_id FROM fulfillment_orders f
             WHERE f.status = 'on_hold' AND NOT EXISTS (
                SELECT 1 FROM order_holds h WHERE h.order_id = f.order_id AND h.released_at IS NULL AND h.reason <> 'out_of_stock')
             LIMIT ?",
            params![limit],
        )?
        .iter()
        .map(|r| r.str("order_id"))
        .collect();
    let mut released = 0;
    for id in &waiting {
        if transaction(db, |db| route_order(db, id, Trigger::Sweep, now))?.released > 0 {
            released += 1;
        }
    }
    let served = release_backorders(db, None, None, now, limit as usize)?;
    Ok((routed, released, served))
}

/// The stored routing decisions of an order, newest first, with its fulfillment orders.
pub fn routing_view(db: &dyn Db, order_id: &str) -> Result<Json> {
    let d = db.execute(
        "SELECT id, at, trigger, summary, explanation FROM routing_decisions WHERE order_id = ? ORDER BY id DESC",
        params![order_id],
    )?;
    let f = db.execute(
        "SELECT id, name, facility_id, status, request_status, pickup, decision_id, created_at, released_at FROM fulfillment_orders
         WHERE order_id = ? ORDER BY name",
        params![order_id],
    )?;
    let mut fos = Vec::new();
    for x in f.iter() {
        let lines = db.execute(
            "SELECT line_no, sku, part_number, quantity FROM fulfillment_order_lines WHERE fulfillment_order_id = ? ORDER BY line_no",
            params![x.str("id")],
        )?;
        fos.push(json!({
            "id": x.str("id"), "name": x.str("name"), "facility": x.str("facility_id"), "status": x.str("status"),
            "request_status": x.str("request_status"), "pickup": x.i64("pickup") != 0, "decision_id": x.opt_i64("decision_id"),
            "created_at": x.str("created_at"), "released_at": x.opt_str("released_at"),
            "lines": lines.iter().map(|l| json!({"line_no": l.i64("line_no"), "sku": l.str("sku"), "part_number": l.opt_str("part_number"), "quantity": l.i64("quantity")})).collect::<Vec<_>>(),
        }));
    }
    Ok(json!({
        "order_id": order_id,
        "fulfillment_orders": fos,
        "decisions": d.iter().map(|x| json!({
            "id": x.i64("id"), "at": x.str("at"), "trigger": x.str("trigger"), "summary": x.str("summary"),
            "explanation": serde_json::from_str::<Json>(&x.str("explanation")).unwrap_or(Json::Null),
        })).collect::<Vec<_>>(),
    }))
}

/// Routes each order once (at most 1000) and reports per order what happened;
/// an order that fails is reported and left to the sweep.
pub fn route_orders(db: &dyn Db, ids: &[String], now: DateTime<Utc>) -> Json {
    let mut results = Vec::new();
    for id in ids.iter().take(1000) {
        match process_order(db, id, Trigger::Intake, now) {
            Ok(o) => results.push(json!({"order_id": id, "allocated": o.allocated, "backordered": o.backordered,
                "held": o.held, "released": o.released, "keys": o.keys, "awaiting_capture": o.awaiting_capture})),
            Err(e) => {
                eprintln!("routing: order {id} not routed (the sweep will retry): {e}");
                results.push(json!({"order_id": id, "error": e.detail}));
            }
        }
    }
    json!({"results": results})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::db::native::NativeDb;

    fn setup() -> NativeDb {
        let db = NativeDb::memory();
        crate::kernel::schema::migrate(&db).unwrap();
        let now = ts(Utc::now());
        for (id, lat) in [("north", 53.5), ("south", 48.1)] {
            db.execute(
                "INSERT INTO facilities (id, name, type, services, countries, shipping_methods, latitude, longitude, priority, active, endpoints, created_at, updated_at)
                 VALUES (?, ?, 'warehouse', '[\"ship\"]', '[]', '[]', ?, 10.0, 50, 1, '{}', ?, ?)",
                params![id, id, lat, now.clone(), now.clone()],
            )
            .unwrap();
        }
        for (sku, bo) in [("A", 0i64), ("B", 1i64)] {
            db.execute(
                "INSERT INTO products (sku, name, weight_grams, backorderable, digital, low_stock_threshold, updated_at) VALUES (?, ?, 0, ?, 0, 0, ?)",
                params![sku, sku, bo, now.clone()],
            )
            .unwrap();
        }
        db
    }

    fn stock(db: &NativeDb, facility: &str, sku: &str, n: i64) {
        db.execute(
            "INSERT INTO stock (sku, facility_id, on_hand, updated_at) VALUES (?, ?, ?, '') ON CONFLICT (sku, facility_id) DO UPDATE SET on_hand = excluded.on_hand",
            params![sku, facility, n],
        )
        .unwrap();
    }

    fn order(db: &NativeDb, ext: &str, lines: &[(&str, i64)]) -> String {
        let v = json!({
            "external_id": ext, "currency": "EUR", "placed_at": "2026-11-20T10:00:00Z",
            "shipping_address": {"line1": "x", "city": "Hamburg", "country_code": "DE", "latitude": 53.5, "longitude": 10.0},
            "lines": lines.iter().map(|(s, q)| json!({"sku": s, "quantity": q, "unit_price": "1.00"})).collect::<Vec<_>>(),
        });
        let o = crate::intake::sources::api::map_order(&v, "", Utc::now()).unwrap();
        transaction(db, |db| {
            crate::flows::intake::place(db, &o, Utc::now(), "test")
        })
        .unwrap()
        .id
    }

    fn reserved(db: &NativeDb) -> i64 {
        db.execute("SELECT COALESCE(SUM(reserved), 0) AS n FROM stock", &[])
            .unwrap()
            .first()
            .unwrap()
            .i64("n")
    }

    fn hold(db: &NativeDb, id: &str, reason: HoldReason) {
        transaction(db, |db| {
            crate::orders::store::add_hold(db, id, reason, "check", Utc::now(), "test")
        })
        .unwrap();
    }

    fn buckets(db: &NativeDb, id: &str) -> Vec<crate::orders::model::Buckets> {
        crate::orders::store::load_buckets(db, id).unwrap()
    }

    #[test]
    fn held_orders_reserve_but_do_not_release_until_the_hold_is_lifted() {
        let db = setup();
        stock(&db, "north", "A", 5);
        let id = order(&db, "o1", &[("A", 2)]);
        hold(&db, &id, HoldReason::HighFraudRisk);
        let o = process_order(&db, &id, Trigger::Intake, Utc::now()).unwrap();
        assert_eq!((o.allocated, o.released), (2, 0));
        assert_eq!(buckets(&db, &id)[0].allocated, 2);
        assert_eq!(reserved(&db), 2);
        // The sweep releases once the hold is gone.
        transaction(&db, |db| {
            crate::orders::store::release_hold(
                db,
                &id,
                HoldReason::HighFraudRisk,
                Utc::now(),
                "test",
                "ok",
            )
        })
        .unwrap();
        let (_, released, _) = sweep(&db, Utc::now(), 10).unwrap();
        assert_eq!(released, 1);
        assert_eq!(buckets(&db, &id)[0].released, 2);
        assert_eq!(
            reserved(&db),
            2,
            "released units stay reserved until they ship"
        );
    }

    #[test]
    fn cancelling_gives_back_unreleased_reservations() {
        let db = setup();
        stock(&db, "north", "A", 5);
        let id = order(&db, "o1", &[("A", 3)]);
        hold(&db, &id, HoldReason::ManualReview);
        process_order(&db, &id, Trigger::Intake, Utc::now()).unwrap();
        assert_eq!(reserved(&db), 3);
        transaction(&db, |db| {
            crate::flows::intake::cancel_open_units(db, &id, "customer asked", Utc::now(), "test")
        })
        .unwrap();
        assert_eq!(reserved(&db), 0);
        let b = &buckets(&db, &id)[0];
        assert_eq!((b.cancelled, b.allocated), (3, 0));
        let st = db
            .execute("SELECT status FROM fulfillment_orders", &[])
            .unwrap();
        assert_eq!(st.first().unwrap().str("status"), "cancelled");
    }

    #[test]
    fn shortfalls_backorder_or_hold_and_stock_arrival_clears_them_oldest_first() {
        let db = setup();
        stock(&db, "south", "A", 1);
        let first = order(&db, "o1", &[("A", 2), ("B", 1)]);
        let o = process_order(&db, &first, Trigger::Intake, Utc::now()).unwrap();
        assert_eq!((o.allocated, o.backordered, o.held), (1, 1, 1));
        assert_eq!(
            crate::orders::store::open_hold_reasons(&db, &first).unwrap(),
            vec!["out_of_stock".to_string()]
        );
        // The allocated unit is released despite the stock hold: only the missing unit waits.
        assert_eq!(buckets(&db, &first)[0].released, 1);
        let second = order(&db, "o2", &[("B", 1)]);
        process_order(&db, &second, Trigger::Intake, Utc::now()).unwrap();
        assert_eq!(buckets(&db, &second)[0].backordered, 1);
        // One B arrives: the older order gets it; then one A: the hold lifts.
        stock(&db, "north", "B", 1);
        assert_eq!(
            release_backorders(&db, Some(&["B".to_string()]), None, Utc::now(), 10).unwrap(),
            1
        );
        assert_eq!(buckets(&db, &first)[1].released, 1);
        assert_eq!(buckets(&db, &second)[0].backordered, 1);
        stock(&db, "north", "A", 1);
        release_backorders(&db, None, None, Utc::now(), 10).unwrap();
        assert!(crate::orders::store::open_hold_reasons(&db, &first)
            .unwrap()
            .is_empty());
        assert_eq!(buckets(&db, &first)[0].released, 2);
        let d = routing_view(&db, &first).unwrap();
        assert_eq!(d["fulfillment_orders"].as_array().unwrap().len(), 3);
        assert_eq!(d["decisions"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn licence_keys_are_assigned_once_and_the_rest_backordered() {
        let db = setup();
        db.execute(
            "INSERT INTO products (sku, name, weight_grams, backorderable, digital, low_stock_threshold, updated_at) VALUES ('K', 'Key', 0, 1, 1, 5, '')",
            &[],
        )
        .unwrap();
        for k in ["k1", "k2"] {
            db.execute(
                "INSERT INTO license_keys (sku, key, imported_at) VALUES ('K', ?, '')",
                params![k],
            )
            .unwrap();
        }
        let id = order(&db, "o1", &[("K", 3), ("A", 1)]);
        stock(&db, "north", "A", 1);
        let o = process_order(&db, &id, Trigger::Intake, Utc::now()).unwrap();
        assert_eq!((o.keys, o.backordered, o.released), (2, 1, 1));
        let b = buckets(&db, &id);
        assert_eq!((b[0].shipped, b[0].delivered, b[0].backordered), (2, 2, 1));
        assert_eq!(b[1].released, 1);
        let n = |sql: &str| db.execute(sql, &[]).unwrap().first().unwrap().i64("n");
        assert_eq!(
            n("SELECT COUNT(*) AS n FROM license_keys WHERE order_id IS NOT NULL"),
            2
        );
        assert_eq!(
            n("SELECT COUNT(*) AS n FROM outbox WHERE topic = 'stock.low'"),
            1
        );
        assert_eq!(
            n("SELECT COUNT(*) AS n FROM outbox WHERE topic = 'license.assigned'"),
            1
        );
        // Routing again assigns nothing twice.
        let o = process_order(&db, &id, Trigger::Sweep, Utc::now()).unwrap();
        assert_eq!((o.keys, o.changed), (0, false));
        assert_eq!(
            n("SELECT COUNT(*) AS n FROM license_keys WHERE order_id IS NOT NULL"),
            2
        );
        let status = db.execute("SELECT status FROM orders", &[]).unwrap();
        assert_eq!(status.first().unwrap().str("status"), "processing");
    }

    #[test]
    fn destinations_use_order_coordinates_then_postal_then_country_centroids() {
        let db = setup();
        db.execute(
            "INSERT INTO geo_centroids (country, postal_prefix, latitude, longitude) VALUES ('DE', '1', 52.5, 13.4), ('DE', '10', 52.52, 13.39)",
            &[],
        )
        .unwrap();
        let d = |a: Json| destination(&db, &a).unwrap();
        let own = d(
            json!({"country_code": "de", "postal_code": "10115", "latitude": 1.0, "longitude": 2.0}),
        );
        assert_eq!(
            (own.location, own.location_source.as_str()),
            (Some((1.0, 2.0)), "order")
        );
        let berlin = d(json!({"country_code": "DE", "postal_code": "10 115"}));
        assert_eq!(
            (berlin.location, berlin.location_source.as_str()),
            (Some((52.52, 13.39)), "centroid:DE-10")
        );
        let hamburg = d(json!({"country_code": "DE", "postal_code": "20095"}));
        assert_eq!(
            hamburg.location_source, "centroid:DE",
            "no loaded prefix: the built-in country centroid"
        );
        let nowhere = d(json!({"country_code": "XX"}));
        assert_eq!(
            (nowhere.location, nowhere.location_source.as_str()),
            (None, "none")
        );
        assert_eq!(d(json!(null)).country, None);
    }

    #[test]
    fn a_plan_overtaken_by_a_stock_change_is_rolled_back_and_made_again() {
        let db = setup();
        stock(&db, "north", "A", 2);
        stock(&db, "south", "A", 2);
        let id = order(&db, "o1", &[("A", 2)]);
        let snapshot = prepare(&db, &id).unwrap().unwrap();
        let planned_at = match &snapshot.planned.as_ref().unwrap().decision {
            Ok(d) => d.parts[0].facility.clone(),
            Err(e) => panic!("{e}"),
        };
        // Another instance takes that facility's stock before this pass gets the lock.
        db.execute(
            "UPDATE stock SET reserved = 2 WHERE facility_id = ?",
            params![planned_at.clone()],
        )
        .unwrap();
        let r = transaction(&db, |db| {
            apply(db, snapshot, Trigger::Intake, Utc::now(), true)
        });
        assert!(matches!(r, Err(PassError::StockMoved)), "{r:?}");
        assert_eq!(reserved(&db), 2, "the optimistic pass left nothing behind");
        assert!(db
            .execute("SELECT 1 FROM fulfillment_orders", &[])
            .unwrap()
            .is_empty());
        // Planned again under the lock: the other facility.
        let o = transaction(&db, |db| route_order(db, &id, Trigger::Intake, Utc::now())).unwrap();
        assert_eq!((o.allocated, o.backordered), (2, 0));
        let fo = db
            .execute("SELECT facility_id FROM fulfillment_orders", &[])
            .unwrap();
        assert_ne!(fo.first().unwrap().str("facility_id"), planned_at);
    }

    #[test]
    fn simulate_writes_nothing() {
        let db = setup();
        stock(&db, "north", "A", 5);
        let body = json!({"order": {"external_id": "sim", "currency": "EUR",
            "shipping_address": {"line1": "x", "city": "Munich", "country_code": "DE", "postal_code": "80331"},
            "lines": [{"sku": "A", "quantity": 2, "unit_price": "1.00"}]}});
        let sim = |b: &Json| {
            crate::intake::sources::api::map_order(&b["order"], "/order", Utc::now())
                .and_then(|o| simulate(&db, &o))
        };
        let r = sim(&body).unwrap();
        assert_eq!(r["parts"][0]["facility"], "north");
        assert_eq!(reserved(&db), 0);
        assert!(sim(&json!({"order": {"lines": []}})).is_err());
    }
}
