//! The routing engine: which facility (or facilities) should fulfil which units.

//! Pure: no storage, no clock, no randomness. Given the same input it returns the
//! same [`Decision`], so any stored decision can be replayed and explained.
//!
//! 1. **Fences** remove facilities: `inactive`, `service` (the order needs ship or
//!    click & collect), `country` (destination not served), `shipping_method`
//!    (method not offered), `preselected` (click & collect or a merchant override
//!    names one facility) and, when configured, `complete_stock` (the facility
//!    cannot fill every remaining unit).
//! 2. **Ratings** score each remaining facility in [0, 1]:
//!    - distance `= 1 / (1 + km / 500)` (haversine, facility to destination;
//!      0.5 when either side has no coordinates),
//!    - stock `= Σ min(available, wanted) / Σ wanted` over the remaining lines,
//!    - workload `= max(0, 1 - open fulfillment orders / daily capacity)` (1 without a capacity),
//!    - priority `= priority / 100` (the facility's 0-100 preference).
//!
//!    `score = (wd·distance + ws·stock + ww·workload + wp·priority) / (wd + ws + ww + wp)`
//!    with the channel's weights 1-10, kept in millionths so comparisons are exact.
//!    Ties break by FNV-1a 64 of `order_id:facility_id`, lowest first:
//!    deterministic and replayable, never random.
//! 3. **Choice per part**: if any candidate can fill every remaining unit, the
//!    best-scored of those takes the whole remainder (no split). Otherwise the
//!    best-scored candidate that can contribute takes what it can, and the rest is
//!    re-rated without the facilities already chosen, up to `max_parts` parts.
//!    A line is never split needlessly: a facility takes part of a line only when
//!    no other candidate can take that line whole (or on the last allowed part).
//! 4. What no facility can take stays **unassigned** (backordered or held by the caller).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

pub use crate::inventory::facility::{FacilityType, Service};

/// What routing needs to know about a facility.
#[derive(Debug, Clone, PartialEq)]
pub struct Facility {
    pub id: String,
    pub kind: FacilityType,
    pub services: Vec<Service>,
    /// ISO 3166-1 alpha-2 codes served; empty = every country.
    pub countries: Vec<String>,
    /// Shipping method codes offered; empty = every method.
    pub shipping_methods: Vec<String>,
    pub location: Option<(f64, f64)>,
    /// Fulfillment orders per day; `None` or 0 = unlimited.
    pub daily_capacity: Option<i64>,
    /// 0-100, higher preferred.
    pub priority: i64,
    pub active: bool,
}

/// Rating weights, each 1-10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    pub distance: u8,
    pub stock: u8,
    pub workload: u8,
    pub priority: u8,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            distance: 5,
            stock: 8,
            workload: 3,
            priority: 4,
        }
    }
}

/// Routing configuration for one channel (or `*`, the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub weights: Weights,
    /// The most facilities one routing pass may split an order across (1 = never split).
    #[serde(default = "default_max_parts")]
    pub max_parts: u32,
    /// Only facilities holding every remaining unit are considered (no split).
    #[serde(default)]
    pub complete_stock: bool,
}

fn default_max_parts() -> u32 {
    3
}

impl Default for Config {
    fn default() -> Self {
        Config {
            weights: Weights::default(),
            max_parts: default_max_parts(),
            complete_stock: false,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Vec<crate::kernel::error::FieldError> {
        let mut errs = Vec::new();
        let w = self.weights;
        for (name, v) in [
            ("distance", w.distance),
            ("stock", w.stock),
            ("workload", w.workload),
            ("priority", w.priority),
        ] {
            if !(1..=10).contains(&v) {
                errs.push(crate::kernel::error::FieldError::new(
                    format!("/weights/{name}"),
                    "must be between 1 and 10",
                ));
            }
        }
        if !(1..=20).contains(&self.max_parts) {
            errs.push(crate::kernel::error::FieldError::new(
                "/max_parts",
                "must be between 1 and 20",
            ));
        }
        errs
    }
}

/// Units of one order line to place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Demand {
    pub line_no: i64,
    pub sku: String,
    pub quantity: i64,
}

/// Where the order goes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Destination {
    pub country: Option<String>,
    pub location: Option<(f64, f64)>,
    /// Where the coordinates came from: `order`, `centroid:DE`, `centroid:DE-10`, or `none`.
    pub location_source: String,
}

#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub order_id: &'a str,
    pub destination: Destination,
    pub shipping_method: Option<String>,
    pub service: Service,
    /// A facility named by the order (click & collect) or the merchant.
    pub preselected: Option<String>,
    pub lines: Vec<Demand>,
}

/// Units available per (facility, SKU), and open fulfillment orders per facility.
#[derive(Debug, Clone, Default)]
pub struct Supply {
    available: HashMap<String, HashMap<String, i64>>,
    pub open_orders: BTreeMap<String, i64>,
}

impl Supply {
    pub fn set(&mut self, facility: &str, sku: &str, units: i64) {
        self.available
            .entry(facility.to_string())
            .or_default()
            .insert(sku.to_string(), units);
    }
    pub fn get(&self, facility: &str, sku: &str) -> i64 {
        self.available
            .get(facility)
            .and_then(|m| m.get(sku))
            .copied()
            .unwrap_or(0)
            .max(0)
    }
}

/// How many ratings per round and candidates an explanation lists by name
/// (the rest are counted), so a decision over 1,000 facilities stays small.
pub const EXPLAIN_TOP: usize = 10;
pub const EXPLAIN_CANDIDATES: usize = 50;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Part {
    pub facility: String,
    pub lines: Vec<Demand>,
}

/// A routing decision and its explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub parts: Vec<Part>,
    pub unassigned: Vec<Demand>,
    pub explanation: Json,
}

/// Great-circle distance in km.
pub fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let r = 6371.0088_f64;
    let (la1, lo1) = (a.0.to_radians(), a.1.to_radians());
    let (la2, lo2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * r * h.sqrt().min(1.0).asin()
}

/// The deterministic tie-break key (lower wins): 64-bit FNV-1a of
/// `order_id:facility_id`. Stable across platforms and releases (a replayed
/// decision breaks ties the same way); spreads ties over facilities per order.
pub fn tie_break(order_id: &str, facility_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in order_id
        .bytes()
        .chain(std::iter::once(b':'))
        .chain(facility_id.bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn micros(x: f64) -> i64 {
    (x * 1_000_000.0).round() as i64
}

/// The fences that exclude facility `f` for this request (empty: eligible).
/// Each fence is one rule, named as the explanation shows it.
fn fences(f: &Facility, req: &Request<'_>, supply: &Supply, cfg: &Config) -> Vec<&'static str> {
    let mut fences: Vec<&'static str> = Vec::new();
    if !f.active {
        fences.push("inactive");
    }
    if !f.services.contains(&req.service) {
        fences.push("service");
    }
    if req.service == Service::Ship {
        if let Some(c) = &req.destination.country {
            if !f.countries.is_empty() && !f.countries.iter().any(|x| x.eq_ignore_ascii_case(c)) {
                fences.push("country");
            }
        }
        if let Some(m) = &req.shipping_method {
            if !f.shipping_methods.is_empty()
                && !f.shipping_methods.iter().any(|x| x.eq_ignore_ascii_case(m))
            {
                fences.push("shipping_method");
            }
        }
    }
    if let Some(p) = &req.preselected {
        if &f.id != p {
            fences.push("preselected");
        }
    }
    if cfg.complete_stock
        && req
            .lines
            .iter()
            .any(|l| supply.get(&f.id, &l.sku) < l.quantity)
    {
        fences.push("complete_stock");
    }
    fences
}

/// The parts of an eligible facility's rating that do not change between
/// rounds (stock per line is what it has; the stock score depends on the round).
struct Static {
    facility: usize,
    distance: i64,
    workload: i64,
    priority: i64,
    tie: u64,
    stock: Vec<i64>,
}

fn static_rating(
    i: usize,
    f: &Facility,
    km: Option<f64>,
    req: &Request<'_>,
    supply: &Supply,
) -> Static {
    let distance = km.map(|km| 1.0 / (1.0 + km / 500.0)).unwrap_or(0.5);
    let workload = match f.daily_capacity {
        Some(c) if c > 0 => {
            let open = supply.open_orders.get(&f.id).copied().unwrap_or(0);
            (1.0 - open as f64 / c as f64).max(0.0)
        }
        _ => 1.0,
    };
    Static {
        facility: i,
        distance: micros(distance),
        workload: micros(workload),
        priority: micros(f.priority.clamp(0, 100) as f64 / 100.0),
        tie: tie_break(req.order_id, &f.id),
        stock: req
            .lines
            .iter()
            .map(|l| supply.get(&f.id, &l.sku))
            .collect(),
    }
}

/// A candidate's rating in one round and what it would take.
struct Rating {
    k: usize,
    stock: i64,
    score: i64,
    fills_all: bool,
    takes: Vec<i64>,
}

/// Rates the candidates not yet taken for the `remaining` units, best first
/// (score, then the tie-break).
fn rate_round(
    statics: &[Static],
    taken: &[bool],
    remaining: &[i64],
    w: Weights,
    last_part: bool,
) -> Vec<Rating> {
    let nl = remaining.len();
    let wsum = (w.distance as i64 + w.stock as i64 + w.workload as i64 + w.priority as i64).max(1);
    let wanted: i64 = remaining.iter().sum();
    // Per line: how many candidates could take the rest of it whole.
    let mut whole = vec![0usize; nl];
    for (k, st) in statics.iter().enumerate() {
        if taken[k] {
            continue;
        }
        for l in 0..nl {
            if remaining[l] > 0 && st.stock[l] >= remaining[l] {
                whole[l] += 1;
            }
        }
    }
    let mut ratings: Vec<Rating> = Vec::with_capacity(statics.len());
    for (k, st) in statics.iter().enumerate() {
        if taken[k] {
            continue;
        }
        let mut covered = 0;
        let mut takes = vec![0i64; nl];
        for l in 0..nl {
            let a = st.stock[l].min(remaining[l]);
            covered += a;
            // Whole lines, and part of a line only when no other candidate
            // can take that line whole (or on the last allowed part).
            let others_whole = whole[l] - usize::from(a >= remaining[l] && remaining[l] > 0);
            takes[l] = if a >= remaining[l] || a == 0 || last_part || others_whole == 0 {
                a
            } else {
                0
            };
        }
        let stock = micros(covered as f64 / wanted as f64);
        let score = (w.distance as i64 * st.distance
            + w.stock as i64 * stock
            + w.workload as i64 * st.workload
            + w.priority as i64 * st.priority)
            / wsum;
        ratings.push(Rating {
            k,
            stock,
            score,
            fills_all: covered == wanted,
            takes,
        });
    }
    ratings.sort_by(|a, b| {
        b.score
            .cmp(&a.score)
            .then(statics[a.k].tie.cmp(&statics[b.k].tie))
    });
    ratings
}

fn rating_json(r: &Rating, st: &Static, fac: &[&Facility]) -> Json {
    json!({
        "facility": fac[st.facility].id,
        "distance": st.distance as f64 / 1e6,
        "stock": r.stock as f64 / 1e6,
        "workload": st.workload as f64 / 1e6,
        "priority": st.priority as f64 / 1e6,
        "score": r.score as f64 / 1e6,
        "tie_break": format!("{:016x}", st.tie),
        "fills_all": r.fills_all,
    })
}

/// Candidates by name: all of them for small networks; else the rated ones
/// (`named`) and the first fenced ones.
fn candidates_json(
    fac: &[&Facility],
    fences_of: &[Vec<&'static str>],
    km_of: &[Option<f64>],
    named: &BTreeSet<usize>,
) -> Vec<Json> {
    let show_all = fac.len() <= EXPLAIN_CANDIDATES;
    let mut fenced_shown = 0;
    let mut out = Vec::new();
    for (i, f) in fac.iter().enumerate() {
        let fenced = !fences_of[i].is_empty();
        let show = show_all || named.contains(&i) || (fenced && fenced_shown < EXPLAIN_CANDIDATES);
        if !show {
            continue;
        }
        if fenced {
            fenced_shown += 1;
        }
        out.push(json!({
            "facility": f.id,
            "type": f.kind.as_str(),
            "eligible": !fenced,
            "fences": fences_of[i],
            "distance_km": km_of[i].map(|k| (k * 10.0).round() / 10.0),
        }));
    }
    out
}

/// Routes `req` over `facilities` with `supply` under `cfg`.
pub fn route(
    req: &Request<'_>,
    facilities: &[Facility],
    supply: &Supply,
    cfg: &Config,
) -> Decision {
    // Facilities in id order: the input order never matters.
    let mut fac: Vec<&Facility> = facilities.iter().collect();
    fac.sort_by(|a, b| a.id.cmp(&b.id));
    fac.dedup_by(|a, b| a.id == b.id);

    // Per facility, once: fences, distance; for eligible ones the static rating.
    let fences_of: Vec<Vec<&'static str>> =
        fac.iter().map(|f| fences(f, req, supply, cfg)).collect();
    let km_of: Vec<Option<f64>> = fac
        .iter()
        .map(|f| match (f.location, req.destination.location) {
            (Some(a), Some(b)) => Some(haversine_km(a, b)),
            _ => None,
        })
        .collect();
    let eligible: Vec<usize> = (0..fac.len())
        .filter(|&i| fences_of[i].is_empty())
        .collect();
    let statics: Vec<Static> = eligible
        .iter()
        .map(|&i| static_rating(i, fac[i], km_of[i], req, supply))
        .collect();

    let w = cfg.weights;
    let mut remaining: Vec<i64> = req.lines.iter().map(|l| l.quantity).collect();
    let mut taken = vec![false; statics.len()];
    let mut parts: Vec<Part> = Vec::new();
    let mut rounds = Vec::new();
    let mut named: BTreeSet<usize> = BTreeSet::new();
    let max_parts = if cfg.complete_stock {
        1
    } else {
        cfg.max_parts.max(1) as usize
    };

    while remaining.iter().any(|&q| q > 0) && parts.len() < max_parts {
        let wanted: i64 = remaining.iter().sum();
        let last_part = parts.len() + 1 == max_parts;
        let ratings = rate_round(&statics, &taken, &remaining, w, last_part);
        let pick = choose(&ratings);
        let mut listed: Vec<&Rating> = ratings.iter().take(EXPLAIN_TOP).collect();
        if let Some((r, _)) = pick {
            if !listed.iter().any(|x| x.k == r.k) {
                listed.push(r);
            }
        }
        let ratings_json: Vec<Json> = listed
            .iter()
            .map(|r| {
                named.insert(statics[r.k].facility);
                rating_json(r, &statics[r.k], &fac)
            })
            .collect();
        let mut round = json!({
            "part": parts.len() + 1,
            "remaining_units": wanted,
            "ratings": ratings_json,
            "more_candidates": ratings.len().saturating_sub(listed.len()),
        });
        let Some((r, why)) = pick else {
            round["chosen"] = Json::Null;
            round["why"] = json!("no eligible facility has stock for the remaining units");
            rounds.push(round);
            break;
        };
        let mut lines = Vec::new();
        for (l, &t) in r.takes.iter().enumerate() {
            if t > 0 {
                remaining[l] -= t;
                lines.push(Demand {
                    line_no: req.lines[l].line_no,
                    sku: req.lines[l].sku.clone(),
                    quantity: t,
                });
            }
        }
        let facility = fac[statics[r.k].facility].id.clone();
        round["chosen"] = json!(facility);
        round["why"] = json!(why);
        rounds.push(round);
        taken[r.k] = true;
        parts.push(Part { facility, lines });
    }

    let unassigned: Vec<Demand> = req
        .lines
        .iter()
        .zip(&remaining)
        .filter(|(_, &r)| r > 0)
        .map(|(l, &r)| Demand {
            line_no: l.line_no,
            sku: l.sku.clone(),
            quantity: r,
        })
        .collect();
    let explanation = explain(
        req,
        cfg,
        &fac,
        &fences_of,
        &km_of,
        &named,
        eligible.len(),
        &rounds,
        &parts,
        &unassigned,
    );
    Decision {
        parts,
        unassigned,
        explanation,
    }
}

/// The round's choice: the best-rated candidate that fills every remaining
/// unit, else the best-rated one that can contribute; with the reason.
fn choose(ratings: &[Rating]) -> Option<(&Rating, &'static str)> {
    ratings
        .iter()
        .find(|r| r.fills_all)
        .map(|r| (r, "fills every remaining unit; the best score among those that do"))
        .or_else(|| {
            ratings.iter().find(|r| r.takes.iter().any(|&t| t > 0)).map(|r| {
                (r, "no candidate fills every remaining unit; the best score among those that can contribute")
            })
        })
}

/// The decision's explanation: the formula, the inputs, every candidate's
/// fences and the rounds' ratings.
#[allow(clippy::too_many_arguments)]
fn explain(
    req: &Request<'_>,
    cfg: &Config,
    fac: &[&Facility],
    fences_of: &[Vec<&'static str>],
    km_of: &[Option<f64>],
    named: &BTreeSet<usize>,
    eligible: usize,
    rounds: &[Json],
    parts: &[Part],
    unassigned: &[Demand],
) -> Json {
    let mut fenced_by: BTreeMap<&str, usize> = BTreeMap::new();
    for x in fences_of.iter().flatten() {
        *fenced_by.entry(x).or_default() += 1;
    }
    json!({
        "formula": "score = (wd*distance + ws*stock + ww*workload + wp*priority) / (wd+ws+ww+wp); distance = 1/(1+km/500), 0.5 without coordinates; stock = share of remaining units available; workload = 1 - open/daily_capacity; priority = priority/100; ties: lowest fnv1a64(order_id:facility_id)",
        "weights": cfg.weights,
        "max_parts": cfg.max_parts,
        "complete_stock": cfg.complete_stock,
        "service": req.service.as_str(),
        "shipping_method": req.shipping_method,
        "preselected": req.preselected,
        "destination": {
            "country": req.destination.country,
            "latitude": req.destination.location.map(|l| l.0),
            "longitude": req.destination.location.map(|l| l.1),
            "source": req.destination.location_source,
        },
        "demand": req.lines,
        "candidates_summary": {"total": fac.len(), "eligible": eligible, "fenced_by": fenced_by},
        "candidates": candidates_json(&fac, &fences_of, &km_of, &named),
        "rounds": rounds,
        "parts": parts,
        "unassigned": unassigned,
    })
}

/// Approximate geographic centres (latitude, longitude) of common destination
/// countries, used when an order carries no coordinates and no finer centroid
/// was loaded (`geo_centroids`). Rough by design: they rank facilities, they do
/// not quote distances to customers.
pub const COUNTRY_CENTROIDS: &[(&str, f64, f64)] = &[
    ("AE", 23.4, 53.8),
    ("AR", -38.4, -63.6),
    ("AT", 47.5, 14.6),
    ("AU", -25.3, 133.8),
    ("BE", 50.5, 4.5),
    ("BG", 42.7, 25.5),
    ("BR", -14.2, -51.9),
    ("CA", 56.1, -106.3),
    ("CH", 46.8, 8.2),
    ("CL", -35.7, -71.5),
    ("CN", 35.9, 104.2),
    ("CO", 4.6, -74.3),
    ("CY", 35.1, 33.4),
    ("CZ", 49.8, 15.5),
    ("DE", 51.2, 10.4),
    ("DK", 56.3, 9.5),
    ("EE", 58.6, 25.0),
    ("EG", 26.8, 30.8),
    ("ES", 40.5, -3.7),
    ("FI", 61.9, 25.7),
    ("FR", 46.2, 2.2),
    ("GB", 54.0, -2.5),
    ("GR", 39.1, 21.8),
    ("HK", 22.4, 114.1),
    ("HR", 45.1, 15.2),
    ("HU", 47.2, 19.5),
    ("ID", -0.8, 113.9),
    ("IE", 53.4, -8.2),
    ("IL", 31.0, 34.9),
    ("IN", 20.6, 79.0),
    ("IS", 64.9, -19.0),
    ("IT", 41.9, 12.6),
    ("JP", 36.2, 138.3),
    ("KR", 35.9, 127.8),
    ("KW", 29.3, 47.5),
    ("LT", 55.2, 23.9),
    ("LU", 49.8, 6.1),
    ("LV", 56.9, 24.6),
    ("MA", 31.8, -7.1),
    ("MT", 35.9, 14.4),
    ("MX", 23.6, -102.6),
    ("MY", 4.2, 102.0),
    ("NG", 9.1, 8.7),
    ("NL", 52.1, 5.3),
    ("NO", 60.5, 8.5),
    ("NZ", -40.9, 174.9),
    ("PE", -9.2, -75.0),
    ("PH", 12.9, 121.8),
    ("PL", 51.9, 19.1),
    ("PT", 39.4, -8.2),
    ("QA", 25.4, 51.2),
    ("RO", 45.9, 25.0),
    ("RS", 44.0, 21.0),
    ("SA", 23.9, 45.1),
    ("SE", 60.1, 18.6),
    ("SG", 1.35, 103.8),
    ("SI", 46.2, 15.0),
    ("SK", 48.7, 19.7),
    ("TH", 15.9, 100.99),
    ("TR", 39.0, 35.2),
    ("TW", 23.7, 121.0),
    ("UA", 48.4, 31.2),
    ("US", 39.8, -98.6),
    ("VN", 14.1, 108.3),
    ("ZA", -30.6, 22.9),
];

pub fn country_centroid(country: &str) -> Option<(f64, f64)> {
    COUNTRY_CENTROIDS
        .binary_search_by(|(c, _, _)| c.cmp(&country))
        .ok()
        .map(|i| (COUNTRY_CENTROIDS[i].1, COUNTRY_CENTROIDS[i].2))
}

#[cfg(test)]
mod tests;
