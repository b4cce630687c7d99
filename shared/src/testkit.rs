//! Fixtures for the native unit tests: a migrated in-memory database,
//! facilities, products, stock and API orders written the way the services
//! write them.

use chrono::Utc;
use serde_json::Value as Json;

use crate::kernel::db::native::NativeDb;
use crate::kernel::db::{transaction, Db};
use crate::params;

/// A migrated in-memory database.
pub fn db() -> NativeDb {
    let db = NativeDb::memory();
    crate::kernel::schema::migrate(&db).unwrap();
    db
}

/// An active facility serving `countries` (a JSON array; `[]` = all) by ship.
pub fn facility(
    db: &NativeDb,
    id: &str,
    name: &str,
    kind: &str,
    countries: &str,
    lat: f64,
    lon: f64,
) {
    let now = crate::kernel::time::ts(Utc::now());
    db.execute(
        "INSERT INTO facilities (id, name, type, services, countries, shipping_methods, latitude, longitude, priority, active, endpoints, created_at, updated_at)
         VALUES (?, ?, ?, '[\"ship\"]', ?, '[]', ?, ?, 50, 1, '{}', ?, ?)",
        params![id, name, kind, countries, lat, lon, now.clone(), now],
    )
    .unwrap();
}

pub fn product(db: &NativeDb, sku: &str, weight_grams: i64, backorderable: bool) {
    db.execute(
        "INSERT INTO products (sku, name, weight_grams, backorderable, digital, low_stock_threshold, updated_at) VALUES (?, ?, ?, ?, 0, 0, ?)",
        params![sku, sku, weight_grams, backorderable, crate::kernel::time::ts(Utc::now())],
    )
    .unwrap();
}

/// Sets the units on hand of a SKU at a facility.
pub fn stock(db: &NativeDb, facility: &str, sku: &str, n: i64) {
    db.execute(
        "INSERT INTO stock (sku, facility_id, on_hand, updated_at) VALUES (?, ?, ?, '') ON CONFLICT (sku, facility_id) DO UPDATE SET on_hand = excluded.on_hand",
        params![sku, facility, n],
    )
    .unwrap();
}

/// Stores an order given as the API's JSON; returns its id.
pub fn api_order(db: &NativeDb, v: &Json) -> String {
    let o = crate::intake::sources::api::map_order(v, "", Utc::now()).unwrap();
    transaction(db, |db| {
        crate::flows::intake::place(db, &o, Utc::now(), "test")
    })
    .unwrap()
    .id
}

/// One number from SQL (the column is named `n`).
pub fn one(db: &dyn Db, sql: &str) -> i64 {
    db.execute(sql, &[]).unwrap().first().unwrap().i64("n")
}
