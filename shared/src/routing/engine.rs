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
    let nl = req.lines.len();

    // Per facility, once: fences, distance, tie-break key, stock per line.
    let mut fences_of: Vec<Vec<&'static str>> = Vec::with_capacity(fac.len());
    let mut km_of: Vec<Option<f64>> = Vec::with_capacity(fac.len());
    let mut eligible: Vec<usize> = Vec::new();
    for f in &fac {
        let mut fences: Vec<&'static str> = Vec::new();
        if !f.active {
            fences.push("inactive");
        }
        if !f.services.contains(&req.service) {
            fences.push("service");
        }
        if req.service == Service::Ship {
            if let Some(c) = &req.destination.country {
                if !f.countries.is_empty() && !f.countries.iter().any(|x| x.eq_ignore_ascii_case(c))
                {
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
        km_of.push(match (f.location, req.destination.location) {
            (Some(a), Some(b)) => Some(haversine_km(a, b)),
            _ => None,
        });
        if fences.is_empty() {
            eligible.push(fences_of.len());
        }
        fences_of.push(fences);
    }
    // Static parts of the rating, for eligible facilities only.
    struct Static {
        facility: usize,
        distance: i64,
        workload: i64,
        priority: i64,
        tie: u64,
        stock: Vec<i64>,
    }
    let statics: Vec<Static> = eligible
        .iter()
        .map(|&i| {
            let f = fac[i];
            let distance = km_of[i].map(|km| 1.0 / (1.0 + km / 500.0)).unwrap_or(0.5);
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
        })
        .collect();

    let w = cfg.weights;
    let wsum = (w.distance as i64 + w.stock as i64 + w.workload as i64 + w.priority as i64).max(1);
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
        struct Rating {
            k: usize,
            stock: i64,
            score: i64,
            fills_all: bool,
            takes: Vec<i64>,
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
        let pick = ratings
            .iter()
            .find(|r| r.fills_all)
            .map(|r| (r, "fills every remaining unit; the best score among those that do"))
            .or_else(|| {
                ratings.iter().find(|r| r.takes.iter().any(|&t| t > 0)).map(|r| {
                    (r, "no candidate fills every remaining unit; the best score among those that can contribute")
                })
            });
        let mut listed: Vec<&Rating> = ratings.iter().take(EXPLAIN_TOP).collect();
        if let Some((r, _)) = pick {
            if !listed.iter().any(|x| x.k == r.k) {
                listed.push(r);
            }
        }
        let ratings_json: Vec<Json> = listed
            .iter()
            .map(|r| {
                let st = &statics[r.k];
                named.insert(st.facility);
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
    // Candidates by name: all of them for small networks; else the rated ones
    // shown above and the first fenced ones, with counts for the rest.
    let mut fenced_by: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &fences_of {
        for x in f {
            *fenced_by.entry(x).or_default() += 1;
        }
    }
    let show_all = fac.len() <= EXPLAIN_CANDIDATES;
    let mut fenced_shown = 0;
    let mut candidates_json = Vec::new();
    for (i, f) in fac.iter().enumerate() {
        let fenced = !fences_of[i].is_empty();
        let show = show_all || named.contains(&i) || (fenced && fenced_shown < EXPLAIN_CANDIDATES);
        if !show {
            continue;
        }
        if fenced {
            fenced_shown += 1;
        }
        candidates_json.push(json!({
            "facility": f.id,
            "type": f.kind.as_str(),
            "eligible": !fenced,
            "fences": fences_of[i],
            "distance_km": km_of[i].map(|k| (k * 10.0).round() / 10.0),
        }));
    }
    let explanation = json!({
        "formula": "score = (wd*distance + ws*stock + ww*workload + wp*priority) / (wd+ws+ww+wp); distance = 1/(1+km/500), 0.5 without coordinates; stock = share of remaining units available; workload = 1 - open/daily_capacity; priority = priority/100; ties: lowest fnv1a64(order_id:facility_id)",
        "weights": w,
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
        "candidates_summary": {"total": fac.len(), "eligible": eligible.len(), "fenced_by": fenced_by},
        "candidates": candidates_json,
        "rounds": rounds,
        "parts": parts,
        "unassigned": unassigned,
    });
    Decision {
        parts,
        unassigned,
        explanation,
    }
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
mod tests {
    use super::*;

    fn fac(id: &str, loc: (f64, f64), prio: i64) -> Facility {
        Facility {
            id: id.into(),
            kind: FacilityType::Warehouse,
            services: vec![Service::Ship],
            countries: vec![],
            shipping_methods: vec![],
            location: Some(loc),
            daily_capacity: None,
            priority: prio,
            active: true,
        }
    }

    fn demand(items: &[(&str, i64)]) -> Vec<Demand> {
        items
            .iter()
            .enumerate()
            .map(|(i, (s, q))| Demand {
                line_no: i as i64 + 1,
                sku: s.to_string(),
                quantity: *q,
            })
            .collect()
    }

    fn supply(rows: &[(&str, &str, i64)]) -> Supply {
        let mut s = Supply::default();
        for (f, k, q) in rows {
            s.set(f, k, *q);
        }
        s
    }

    fn req<'a>(lines: Vec<Demand>) -> Request<'a> {
        Request {
            order_id: "0190-order",
            destination: Destination {
                country: Some("DE".into()),
                location: Some((52.52, 13.40)), // Berlin
                location_source: "order".into(),
            },
            shipping_method: Some("standard".into()),
            service: Service::Ship,
            preselected: None,
            lines,
        }
    }

    const BERLIN: (f64, f64) = (52.52, 13.40);
    const MUNICH: (f64, f64) = (48.14, 11.58);
    const PARIS: (f64, f64) = (48.86, 2.35);

    #[test]
    fn tie_break_is_fnv1a_64() {
        // FNV-1a 64 of "a:b" (reference value computed independently).
        let mut h: u64 = 0xcbf29ce484222325;
        for b in b"a:b" {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        assert_eq!(tie_break("a", "b"), h);
        assert_eq!(
            tie_break("", ""),
            0xaf63_b74c_8601_adad,
            "FNV-1a 64 of \":\" (computed with Python)"
        );
        assert_ne!(tie_break("o1", "f1"), tie_break("o2", "f1"));
    }

    #[test]
    fn haversine_is_about_right() {
        let d = haversine_km(BERLIN, MUNICH);
        assert!((d - 504.0).abs() < 5.0, "{d}");
        assert!(haversine_km(PARIS, PARIS) < 1e-9);
    }

    #[test]
    fn centroid_table_is_sorted_for_binary_search() {
        assert!(COUNTRY_CENTROIDS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(country_centroid("DE"), Some((51.2, 10.4)));
        assert_eq!(country_centroid("XX"), None);
    }

    #[test]
    fn fences_exclude_what_they_must() {
        let mut inactive = fac("a-inactive", BERLIN, 50);
        inactive.active = false;
        let mut france_only = fac("b-fr-only", BERLIN, 50);
        france_only.countries = vec!["FR".into()];
        let mut express_only = fac("c-express", BERLIN, 50);
        express_only.shipping_methods = vec!["express".into()];
        let mut store = fac("d-store", BERLIN, 50);
        store.services = vec![Service::ClickCollect];
        let ok = fac("e-ok", MUNICH, 50);
        let all = vec![inactive, france_only, express_only, store, ok];
        let s = supply(&[
            ("a-inactive", "X", 9),
            ("b-fr-only", "X", 9),
            ("c-express", "X", 9),
            ("d-store", "X", 9),
            ("e-ok", "X", 9),
        ]);
        let d = route(&req(demand(&[("X", 2)])), &all, &s, &Config::default());
        assert_eq!(d.parts.len(), 1);
        assert_eq!(d.parts[0].facility, "e-ok");
        let fences: Vec<(String, Json)> = d.explanation["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["facility"].as_str().unwrap().to_string(),
                    c["fences"].clone(),
                )
            })
            .collect();
        assert_eq!(fences[0], ("a-inactive".into(), json!(["inactive"])));
        assert_eq!(fences[1], ("b-fr-only".into(), json!(["country"])));
        assert_eq!(fences[2], ("c-express".into(), json!(["shipping_method"])));
        assert_eq!(fences[3], ("d-store".into(), json!(["service"])));
        assert_eq!(fences[4], ("e-ok".into(), json!([])));

        // Click & collect: only the preselected store, country and method do not apply.
        let mut r = req(demand(&[("X", 2)]));
        r.service = Service::ClickCollect;
        r.preselected = Some("d-store".into());
        let d = route(&r, &all, &s, &Config::default());
        assert_eq!(d.parts.len(), 1);
        assert_eq!(d.parts[0].facility, "d-store");
        // Complete-stock fence: only facilities with everything; never a split.
        let s2 = supply(&[("e-ok", "X", 1), ("e-ok", "Y", 5)]);
        let cfg = Config {
            complete_stock: true,
            ..Config::default()
        };
        let d = route(&req(demand(&[("X", 2), ("Y", 1)])), &all, &s2, &cfg);
        assert!(d.parts.is_empty());
        assert_eq!(d.unassigned.len(), 2);
        assert_eq!(
            d.explanation["candidates"][4]["fences"],
            json!(["complete_stock"])
        );
    }

    #[test]
    fn ratings_rank_as_the_formula_says() {
        // Same stock everywhere: Berlin is nearest; Paris has top priority.
        let all = vec![
            fac("berlin", BERLIN, 10),
            fac("munich", MUNICH, 10),
            fac("paris", PARIS, 60),
        ];
        let s = supply(&[("berlin", "X", 5), ("munich", "X", 5), ("paris", "X", 5)]);
        let d = route(&req(demand(&[("X", 1)])), &all, &s, &Config::default());
        let ratings = d.explanation["rounds"][0]["ratings"]
            .as_array()
            .unwrap()
            .clone();
        // Recompute every score from its components and the weights.
        let w = Weights::default();
        for r in &ratings {
            let expect = (w.distance as f64 * r["distance"].as_f64().unwrap()
                + w.stock as f64 * r["stock"].as_f64().unwrap()
                + w.workload as f64 * r["workload"].as_f64().unwrap()
                + w.priority as f64 * r["priority"].as_f64().unwrap())
                / 20.0;
            assert!((expect - r["score"].as_f64().unwrap()).abs() < 2e-6, "{r}");
        }
        let scores: Vec<f64> = ratings
            .iter()
            .map(|r| r["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "sorted best first");
        // Default weights: distance 5 beats priority 4 here (Berlin is 0 km away).
        assert_eq!(d.parts[0].facility, "berlin");
        // Weight priority to 10 and distance to 1: Paris wins.
        let cfg = Config {
            weights: Weights {
                distance: 1,
                stock: 1,
                workload: 1,
                priority: 10,
            },
            ..Config::default()
        };
        let d = route(&req(demand(&[("X", 1)])), &all, &s, &cfg);
        assert_eq!(d.parts[0].facility, "paris");
        // Workload: Berlin full today, capacity 10 with 10 open.
        let mut busy = all.clone();
        busy[0].daily_capacity = Some(10);
        let mut s2 = s.clone();
        s2.open_orders.insert("berlin".into(), 10);
        let d = route(&req(demand(&[("X", 1)])), &busy, &s2, &Config::default());
        assert_eq!(
            d.explanation["rounds"][0]["ratings"][2]["workload"],
            json!(0.0)
        );
        assert_ne!(d.parts[0].facility, "berlin");
    }

    #[test]
    fn ties_break_by_hash_not_by_input_order() {
        let all = vec![
            fac("x1", BERLIN, 50),
            fac("x2", BERLIN, 50),
            fac("x3", BERLIN, 50),
        ];
        let s = supply(&[("x1", "X", 1), ("x2", "X", 1), ("x3", "X", 1)]);
        let d = route(&req(demand(&[("X", 1)])), &all, &s, &Config::default());
        let winner = ["x1", "x2", "x3"]
            .into_iter()
            .min_by_key(|f| tie_break("0190-order", f))
            .unwrap();
        assert_eq!(d.parts[0].facility, winner);
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(
            route(&req(demand(&[("X", 1)])), &rev, &s, &Config::default()),
            d
        );
    }

    #[test]
    fn a_complete_facility_beats_a_better_rated_partial_one() {
        let all = vec![fac("near", BERLIN, 100), fac("far", PARIS, 0)];
        let s = supply(&[
            ("near", "X", 1),
            ("near", "Y", 1),
            ("far", "X", 2),
            ("far", "Y", 1),
        ]);
        let d = route(
            &req(demand(&[("X", 2), ("Y", 1)])),
            &all,
            &s,
            &Config::default(),
        );
        assert_eq!(d.parts.len(), 1);
        assert_eq!(d.parts[0].facility, "far");
    }

    #[test]
    fn split_takes_whole_lines_where_it_can_and_respects_the_maximum() {
        let all = vec![
            fac("a", BERLIN, 50),
            fac("b", MUNICH, 50),
            fac("c", PARIS, 50),
        ];
        // a has X, b has Y, c has Z: three parts needed.
        let s = supply(&[("a", "X", 3), ("a", "Y", 1), ("b", "Y", 2), ("c", "Z", 1)]);
        let d = route(
            &req(demand(&[("X", 3), ("Y", 2), ("Z", 1)])),
            &all,
            &s,
            &Config::default(),
        );
        assert_eq!(d.parts.len(), 3);
        assert!(d.unassigned.is_empty());
        // Y is not split across a (1 unit) and b (2 units): b takes it whole.
        let a = d.parts.iter().find(|p| p.facility == "a").unwrap();
        assert_eq!(a.lines, demand(&[("X", 3)]));
        let b = d.parts.iter().find(|p| p.facility == "b").unwrap();
        assert_eq!(b.lines.len(), 1);
        assert_eq!((b.lines[0].sku.as_str(), b.lines[0].quantity), ("Y", 2));
        // Maximum 2 parts: Z stays unassigned.
        let cfg = Config {
            max_parts: 2,
            ..Config::default()
        };
        let d = route(
            &req(demand(&[("X", 3), ("Y", 2), ("Z", 1)])),
            &all,
            &s,
            &cfg,
        );
        assert_eq!(d.parts.len(), 2);
        assert_eq!(d.unassigned.iter().map(|u| u.quantity).sum::<i64>(), 1);
    }

    #[test]
    fn a_line_is_split_only_when_nobody_holds_it_whole() {
        let all = vec![fac("a", BERLIN, 50), fac("b", MUNICH, 50)];
        let s = supply(&[("a", "X", 3), ("b", "X", 4)]);
        let d = route(&req(demand(&[("X", 6)])), &all, &s, &Config::default());
        assert_eq!(d.parts.len(), 2);
        assert_eq!(d.parts.iter().map(|p| p.lines[0].quantity).sum::<i64>(), 6);
        assert!(d.unassigned.is_empty());
    }

    /// A small deterministic generator for the property tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn random_case(rng: &mut Rng) -> (Vec<Facility>, Supply, Vec<Demand>, Config, Option<String>) {
        let nf = 1 + rng.below(8) as usize;
        let skus = ["A", "B", "C", "D", "E"];
        let mut facilities = Vec::new();
        let mut s = Supply::default();
        for i in 0..nf {
            let mut f = fac(
                &format!("f{i}"),
                (40.0 + rng.below(20) as f64, rng.below(30) as f64),
                rng.below(101) as i64,
            );
            f.active = rng.below(6) != 0;
            if rng.below(4) == 0 {
                f.countries = vec![["DE", "FR"][rng.below(2) as usize].into()];
            }
            if rng.below(5) == 0 {
                f.shipping_methods = vec![["standard", "express"][rng.below(2) as usize].into()];
            }
            if rng.below(5) == 0 {
                f.services = vec![Service::ClickCollect];
            }
            if rng.below(3) == 0 {
                f.daily_capacity = Some(1 + rng.below(20) as i64);
                s.open_orders.insert(f.id.clone(), rng.below(25) as i64);
            }
            for k in skus {
                if rng.below(2) == 0 {
                    s.set(&f.id, k, rng.below(6) as i64);
                }
            }
            facilities.push(f);
        }
        let nl = 1 + rng.below(4) as usize;
        let lines: Vec<Demand> = (0..nl)
            .map(|i| Demand {
                line_no: i as i64 + 1,
                sku: skus[i].into(),
                quantity: 1 + rng.below(6) as i64,
            })
            .collect();
        let cfg = Config {
            weights: Weights {
                distance: 1 + rng.below(10) as u8,
                stock: 1 + rng.below(10) as u8,
                workload: 1 + rng.below(10) as u8,
                priority: 1 + rng.below(10) as u8,
            },
            max_parts: 1 + rng.below(4) as u32,
            complete_stock: rng.below(6) == 0,
        };
        let pre = (rng.below(8) == 0).then(|| format!("f{}", rng.below(nf as u64)));
        (facilities, s, lines, cfg, pre)
    }

    fn eligible(f: &Facility, r: &Request<'_>) -> bool {
        f.active
            && f.services.contains(&r.service)
            && (f.countries.is_empty()
                || f.countries
                    .iter()
                    .any(|c| Some(c) == r.destination.country.as_ref()))
            && (f.shipping_methods.is_empty()
                || f.shipping_methods
                    .iter()
                    .any(|m| Some(m) == r.shipping_method.as_ref()))
            && r.preselected.as_ref().is_none_or(|p| p == &f.id)
    }

    #[test]
    fn properties_hold_for_random_inputs() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..3000 {
            let (facilities, s, lines, cfg, pre) = random_case(&mut rng);
            let mut r = req(lines.clone());
            r.preselected = pre;
            let d = route(&r, &facilities, &s, &cfg);
            let ctx = format!("case {case}: {}", d.explanation);

            // The same input always gives the same decision, whatever the facility order.
            let mut shuffled = facilities.clone();
            shuffled.rotate_left(case % facilities.len());
            assert_eq!(route(&r, &shuffled, &s, &cfg), d, "{ctx}");

            // Fences: nothing fenced is chosen.
            for p in &d.parts {
                let f = facilities.iter().find(|f| f.id == p.facility).unwrap();
                assert!(eligible(f, &r), "fenced facility chosen: {ctx}");
                if cfg.complete_stock {
                    assert!(
                        lines.iter().all(|l| s.get(&f.id, &l.sku) >= l.quantity),
                        "{ctx}"
                    );
                }
            }
            // The maximum, no facility twice, no empty part.
            let max = if cfg.complete_stock {
                1
            } else {
                cfg.max_parts as usize
            };
            assert!(d.parts.len() <= max, "{ctx}");
            let mut ids: Vec<&str> = d.parts.iter().map(|p| p.facility.as_str()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), d.parts.len(), "{ctx}");
            assert!(d
                .parts
                .iter()
                .all(|p| p.lines.iter().all(|l| l.quantity > 0) && !p.lines.is_empty()));
            // Conservation, and never more than a facility has.
            for l in &lines {
                let placed: i64 = d
                    .parts
                    .iter()
                    .flat_map(|p| {
                        p.lines
                            .iter()
                            .filter(|x| x.line_no == l.line_no)
                            .map(|x| x.quantity)
                    })
                    .sum();
                let left: i64 = d
                    .unassigned
                    .iter()
                    .filter(|u| u.line_no == l.line_no)
                    .map(|u| u.quantity)
                    .sum();
                assert_eq!(placed + left, l.quantity, "{ctx}");
            }
            for p in &d.parts {
                for l in &p.lines {
                    assert!(l.quantity <= s.get(&p.facility, &l.sku), "{ctx}");
                }
            }
            // No more parts than needed: one facility able to fill everything means one part.
            let complete: Vec<&Facility> = facilities
                .iter()
                .filter(|f| {
                    eligible(f, &r) && lines.iter().all(|l| s.get(&f.id, &l.sku) >= l.quantity)
                })
                .collect();
            if !complete.is_empty() {
                assert_eq!(d.parts.len(), 1, "{ctx}");
                assert!(d.unassigned.is_empty(), "{ctx}");
            }
            // Every additional part was needed: after the parts before it, units
            // remained that it supplied.
            // A line split over parts only when no eligible facility held it whole.
            for l in &lines {
                let n = d
                    .parts
                    .iter()
                    .filter(|p| p.lines.iter().any(|x| x.line_no == l.line_no))
                    .count();
                if n > 1 {
                    assert!(
                        !facilities
                            .iter()
                            .any(|f| eligible(f, &r) && s.get(&f.id, &l.sku) >= l.quantity),
                        "needless split of line {}: {ctx}",
                        l.line_no
                    );
                }
            }
            // Greedy stops only when it must: nothing unassigned while an unchosen
            // eligible facility still has stock for it and parts remain.
            if d.parts.len() < max {
                for u in &d.unassigned {
                    let spare = facilities.iter().any(|f| {
                        eligible(f, &r)
                            && !d.parts.iter().any(|p| p.facility == f.id)
                            && s.get(&f.id, &u.sku) > 0
                    });
                    assert!(!spare || cfg.complete_stock, "stopped early: {ctx}");
                }
            }
            // The first choice has the best score among those that fill everything
            // (or among all contributors), ties by the hash.
            if let Some(first) = d.explanation["rounds"][0]["chosen"].as_str() {
                let ratings = d.explanation["rounds"][0]["ratings"].as_array().unwrap();
                let any_full = ratings.iter().any(|x| x["fills_all"] == json!(true));
                let best = ratings
                    .iter()
                    .find(|x| !any_full || x["fills_all"] == json!(true))
                    .unwrap();
                if any_full {
                    assert_eq!(best["facility"].as_str(), Some(first), "{ctx}");
                }
            }
        }
    }
}
