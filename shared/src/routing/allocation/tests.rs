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
    let own =
        d(json!({"country_code": "de", "postal_code": "10115", "latitude": 1.0, "longitude": 2.0}));
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
