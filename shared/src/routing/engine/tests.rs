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
    let (mut checked, mut close) = (0, 0);
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
            .filter(|f| eligible(f, &r) && lines.iter().all(|l| s.get(&f.id, &l.sku) >= l.quantity))
            .collect();
        if !complete.is_empty() {
            assert_eq!(d.parts.len(), 1, "{ctx}");
            assert!(d.unassigned.is_empty(), "{ctx}");
        }
        // Every additional part was needed: before each part that another part
        // follows, no facility not chosen yet could fill everything that
        // remained at that point (one that could would have taken it all).
        for k in 0..d.parts.len().saturating_sub(1) {
            let remaining: Vec<(&str, i64)> = lines
                .iter()
                .map(|l| {
                    let before: i64 = d.parts[..k]
                        .iter()
                        .flat_map(|p| p.lines.iter().filter(|x| x.line_no == l.line_no))
                        .map(|x| x.quantity)
                        .sum();
                    (l.sku.as_str(), l.quantity - before)
                })
                .collect();
            let could = facilities.iter().find(|f| {
                eligible(f, &r)
                    && !d.parts[..k].iter().any(|p| p.facility == f.id)
                    && remaining.iter().all(|(sku, q)| s.get(&f.id, sku) >= *q)
            });
            assert!(
                could.is_none(),
                "part {} was not needed: {} could fill the rest: {ctx}",
                k + 2,
                could.map(|f| f.id.as_str()).unwrap_or("")
            );
        }
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
        // The first choice is the best by the documented formula, computed here
        // from the inputs (not from the engine's ratings): among the facilities
        // that fill everything, else among those that can contribute; ties by
        // the FNV-1a hash. Near-ties (within the engine's millionths) accept either.
        match oracle_first_choice(&r, &facilities, &s, &lines, &cfg) {
            Oracle::Nobody => assert!(d.parts.is_empty(), "{ctx}"),
            Oracle::Close => close += 1,
            Oracle::Best(id) => {
                checked += 1;
                assert_eq!(d.parts[0].facility, id, "first choice: {ctx}");
            }
        }
    }
    assert!(
        checked > 1500 && close < 100,
        "the first-choice property was checked {checked} times ({close} near-ties)"
    );
}

enum Oracle {
    Nobody,
    Close,
    Best(String),
}

/// The documented rating (engine.rs, module docs), computed independently.
fn oracle_first_choice(
    r: &Request<'_>,
    facilities: &[Facility],
    s: &Supply,
    lines: &[Demand],
    cfg: &Config,
) -> Oracle {
    fn km(a: (f64, f64), b: (f64, f64)) -> f64 {
        let rad = |d: f64| d * std::f64::consts::PI / 180.0;
        let (dla, dlo) = (rad(b.0 - a.0), rad(b.1 - a.1));
        let h =
            (dla / 2.0).sin().powi(2) + rad(a.0).cos() * rad(b.0).cos() * (dlo / 2.0).sin().powi(2);
        2.0 * 6371.0088 * h.sqrt().min(1.0).asin()
    }
    fn fnv(order: &str, facility: &str) -> u64 {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in format!("{order}:{facility}").bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        h
    }
    let w = cfg.weights;
    let wsum = (w.distance + w.stock + w.workload + w.priority) as f64;
    let wanted: i64 = lines.iter().map(|l| l.quantity).sum();
    let full = |f: &Facility| lines.iter().all(|l| s.get(&f.id, &l.sku) >= l.quantity);
    let cands: Vec<&Facility> = facilities
        .iter()
        .filter(|f| eligible(f, r) && (!cfg.complete_stock || full(f)))
        .collect();
    let last_part = cfg.complete_stock || cfg.max_parts <= 1;
    // A partial line counts only when no other candidate holds that line whole.
    let contributes = |f: &Facility| {
        lines.iter().any(|l| {
            let a = s.get(&f.id, &l.sku);
            a >= l.quantity
                || (a > 0
                    && (last_part
                        || !cands
                            .iter()
                            .any(|o| o.id != f.id && s.get(&o.id, &l.sku) >= l.quantity)))
        })
    };
    let score = |f: &Facility| {
        let dist = match (f.location, r.destination.location) {
            (Some(a), Some(b)) => 1.0 / (1.0 + km(a, b) / 500.0),
            _ => 0.5,
        };
        let stock = lines
            .iter()
            .map(|l| s.get(&f.id, &l.sku).min(l.quantity))
            .sum::<i64>() as f64
            / wanted as f64;
        let workload = match f.daily_capacity {
            Some(c) if c > 0 => {
                (1.0 - s.open_orders.get(&f.id).copied().unwrap_or(0) as f64 / c as f64).max(0.0)
            }
            _ => 1.0,
        };
        let prio = f.priority.clamp(0, 100) as f64 / 100.0;
        (w.distance as f64 * dist
            + w.stock as f64 * stock
            + w.workload as f64 * workload
            + w.priority as f64 * prio)
            / wsum
    };
    let pool: Vec<&Facility> = if cands.iter().any(|f| full(f)) {
        cands.iter().copied().filter(|f| full(f)).collect()
    } else {
        cands.iter().copied().filter(|f| contributes(f)).collect()
    };
    let mut rated: Vec<(f64, u64, &str)> = pool
        .iter()
        .map(|f| (score(f), fnv(r.order_id, &f.id), f.id.as_str()))
        .collect();
    rated.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    match rated.as_slice() {
        [] => Oracle::Nobody,
        [a, b, ..] if (a.0 - b.0).abs() < 1e-5 && a.0 != b.0 => Oracle::Close,
        [a, ..] => Oracle::Best(a.2.to_string()),
    }
}
