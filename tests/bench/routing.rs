//! Routing time against facility count and order size.
//!
//! bench-routing [--native-only]
//!
//! For 10, 100 and 1000 facilities and orders of 1, 10 and 50 lines, with stock
//! spread so that no facility holds everything (larger orders split, up to the
//! default 3 parts):
//! - `engine`: `waybill::routing::engine::route` alone (facilities and stock in memory);
//! - `plan`: `waybill::routing::allocation::simulate` on native SQLite (loads facilities,
//!   stock, workload and config, then routes; what a routing pass reads);
//! - `component`: `POST /api/routing/simulate` through the compiled routing
//!   component on tests/host (HTTP, a fresh Wasm instance, SQLite through the
//!   host, the same plan), with `GET /api/routing/config` on the same component
//!   as the in-run floor.
//! Median and p99 over repeated runs, in microseconds.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use waybill::kernel::db::native::NativeDb;
use waybill::kernel::db::Db;

const SKUS: usize = 50;

fn seed_statements(facilities: usize) -> Vec<String> {
    vec![
        format!(
            "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {facilities} - 1)
             INSERT INTO facilities (id, name, type, services, countries, shipping_methods, latitude, longitude, daily_capacity,
                priority, active, endpoints, created_at, updated_at)
             SELECT printf('f%04d', i), 'Facility ' || i, 'warehouse', '[\"ship\"]', '[]', '[]',
                36.0 + (i * 7 % 30), -8.0 + (i * 13 % 38), 100, i % 101, 1, '{{}}', '', '' FROM s"
        ),
        format!(
            "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {SKUS} - 1)
             INSERT INTO products (sku, name, weight_grams, backorderable, digital, low_stock_threshold, updated_at)
             SELECT 'SKU-' || i, 'Item ' || i, 100, 1, 0, 0, '' FROM s"
        ),
        // Sparse stock: each facility holds about a third of the SKUs, 0-6 units each.
        "INSERT INTO stock (sku, facility_id, on_hand, reserved, updated_at)
         SELECT p.sku, f.id, (CAST(substr(f.id, 2) AS INTEGER) * 31 + CAST(substr(p.sku, 5) AS INTEGER) * 17) % 7, 0, ''
         FROM facilities f, products p WHERE (CAST(substr(f.id, 2) AS INTEGER) + CAST(substr(p.sku, 5) AS INTEGER)) % 3 = 0"
            .to_string(),
    ]
}

fn order(lines: usize) -> Value {
    json!({"order": {
        "external_id": format!("bench-{lines}"),
        "currency": "EUR",
        "shipping_address": {"line1": "Hauptstr. 1", "city": "Frankfurt", "postal_code": "60311", "country_code": "DE"},
        "lines": (0..lines).map(|i| json!({"sku": format!("SKU-{i}"), "quantity": 1 + i % 3, "unit_price": "9.90"})).collect::<Vec<_>>(),
        "shipping_lines": [{"method": "standard", "price": "4.90"}],
    }})
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(v[v.len() / 2]),
        us(v[(v.len() * 99 / 100).min(v.len() - 1)]),
    )
}

/// Runs `f` for about `budget` (at least 10 times).
fn measure(budget: Duration, mut f: impl FnMut()) -> (f64, f64, usize) {
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 10 || (start.elapsed() < budget && times.len() < 5000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    let n = times.len();
    let (p50, p99) = stats(times);
    (p50, p99, n)
}

fn native(facilities: usize, lines: usize) -> ((f64, f64, usize), (f64, f64, usize), usize) {
    let db = NativeDb::memory();
    waybill::kernel::schema::migrate(&db).unwrap();
    for s in seed_statements(facilities) {
        db.execute(&s, &[]).unwrap();
    }
    let body = order(lines);
    let now = chrono::Utc::now();
    // The engine alone, on what the plan loads.
    let facs = waybill::routing::allocation::load_facilities(&db).unwrap();
    let mut supply = waybill::routing::engine::Supply::default();
    for r in db
        .execute(
            "SELECT facility_id, sku, on_hand - reserved AS a FROM stock",
            &[],
        )
        .unwrap()
        .iter()
    {
        supply.set(&r.str("facility_id"), &r.str("sku"), r.i64("a"));
    }
    let req = waybill::routing::engine::Request {
        order_id: "bench",
        destination: waybill::routing::engine::Destination {
            country: Some("DE".into()),
            location: Some((50.11, 8.68)),
            location_source: "order".into(),
        },
        shipping_method: Some("standard".into()),
        service: waybill::routing::engine::Service::Ship,
        preselected: None,
        lines: (0..lines)
            .map(|i| waybill::routing::engine::Demand {
                line_no: i as i64 + 1,
                sku: format!("SKU-{i}"),
                quantity: 1 + (i % 3) as i64,
            })
            .collect(),
    };
    let cfg = waybill::routing::engine::Config::default();
    let parts = waybill::routing::engine::route(&req, &facs, &supply, &cfg)
        .parts
        .len();
    let engine = measure(Duration::from_millis(700), || {
        std::hint::black_box(waybill::routing::engine::route(&req, &facs, &supply, &cfg));
    });
    let plan = measure(Duration::from_millis(700), || {
        let o = waybill::intake::sources::api::map_order(&body["order"], "/order", now).unwrap();
        std::hint::black_box(waybill::routing::allocation::simulate(&db, &o).unwrap());
    });
    (engine, plan, parts)
}

async fn component(
    facilities: usize,
    sizes: &[usize],
) -> Vec<((f64, f64, usize), (f64, f64, usize))> {
    use waybill_scenarios::*;
    let app = start().await;
    let floor_call = || async { get(&app, "/api/routing/config").await };
    assert_eq!(floor_call().await.status, 200); // migrates
    for s in seed_statements(facilities) {
        app.sql("default", &s, &[]).expect("seed");
    }
    let mut out = Vec::new();
    for &lines in sizes {
        let body = order(lines);
        let r = write(&app, "POST", "/api/routing/simulate", &body).await;
        assert_eq!(r.status, 200, "{}", r.json);
        let mut times = Vec::new();
        let start = Instant::now();
        while times.len() < 10 || (start.elapsed() < Duration::from_secs(2) && times.len() < 2000) {
            let t = Instant::now();
            let r = write(&app, "POST", "/api/routing/simulate", &body).await;
            times.push(t.elapsed());
            assert_eq!(r.status, 200);
        }
        let n = times.len();
        let (p50, p99) = stats(times);
        let mut floor = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            floor_call().await;
            floor.push(t.elapsed());
        }
        let (f50, f99) = stats(floor);
        out.push(((p50, p99, n), (f50, f99, 200)));
    }
    app.stop().await;
    out
}

#[tokio::main]
async fn main() {
    let native_only = std::env::args().any(|a| a == "--native-only");
    let sizes = [1usize, 10, 50];
    println!("| facilities | lines | parts | engine p50 / p99 (us) | plan on SQLite p50 / p99 (us) | component p50 / p99 (us) | component floor p50 (us) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for facilities in [10usize, 100, 1000] {
        let comp = if native_only {
            Vec::new()
        } else {
            component(facilities, &sizes).await
        };
        for (k, &lines) in sizes.iter().enumerate() {
            let (engine, plan, parts) = native(facilities, lines);
            let (c, f) = comp
                .get(k)
                .map(|(c, f)| (format!("{:.0} / {:.0}", c.0, c.1), format!("{:.0}", f.0)))
                .unwrap_or_else(|| ("-".into(), "-".into()));
            println!(
                "| {facilities} | {lines} | {parts} | {:.1} / {:.1} | {:.0} / {:.0} | {c} | {f} |",
                engine.0, engine.1, plan.0, plan.1
            );
        }
    }
}
