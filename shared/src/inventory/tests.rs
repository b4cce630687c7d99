use super::*;
use crate::http::inventory::handle;
use crate::http::{Request, Response, Tokens};
use crate::kernel::db::native::NativeDb;
use crate::kernel::kv::MemoryKv;

fn setup() -> NativeDb {
    let db = NativeDb::memory();
    crate::kernel::schema::migrate(&db).unwrap();
    db
}

fn call(db: &NativeDb, kv: &MemoryKv, m: &str, path: &str, body: Json) -> (Response, Effects) {
    let secret = |name: &str| (name == "fc_secret_a").then(|| "fc-secret".to_string());
    let tokens = Tokens::parse("write:write-token-1,read:read-token-1");
    let receivers = crate::kernel::url::Receivers::parse("fc.example, 127.0.0.1");
    let cfg = Config {
        secret: &secret,
        receivers: &receivers,
    };
    let req = Request::new(m, path)
        .with_header("authorization", "Bearer write-token-1")
        .with_header("content-type", "application/json")
        .with_body(body.to_string());
    handle(db, kv, &tokens, &cfg, &req, Utc::now())
}

#[test]
fn facilities_products_and_stock_validate_and_change_nothing_on_error() {
    let db = setup();
    let kv = MemoryKv::default();
    let (r, _) = call(
        &db,
        &kv,
        "PUT",
        "/api/facilities/berlin",
        json!({"name": "Berlin", "type": "warehouse", "countries": ["de", "AT"], "latitude": 52.5, "longitude": 13.4}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json_body()["countries"], json!(["DE", "AT"]));
    let (r, _) = call(
        &db,
        &kv,
        "PUT",
        "/api/facilities/bad",
        json!({"name": "", "type": "castle", "priority": 101, "latitude": 91}),
    );
    assert_eq!(r.status, 422);
    let ptrs: Vec<String> = r.json_body()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ptrs.contains(&"/name".into())
            && ptrs.contains(&"/type".into())
            && ptrs.contains(&"/priority".into()),
        "{ptrs:?}"
    );
    let (r, _) = call(
        &db,
        &kv,
        "PUT",
        "/api/products/SKU-1",
        json!({"name": "Mug", "backorderable": true, "parts": {"nowhere": "P1"}}),
    );
    assert_eq!(r.status, 422);
    let (r, _) = call(
        &db,
        &kv,
        "PUT",
        "/api/products/SKU-1",
        json!({"name": "Mug", "backorderable": true, "parts": {"berlin": "P1"}}),
    );
    assert_eq!(r.status, 201);
    // Receipt: unknown SKU, unknown facility, negative quantity: 422, nothing stored.
    for bad in [
        json!({"facility": "berlin", "lines": [{"sku": "NOPE", "quantity": 1}]}),
        json!({"facility": "paris", "lines": [{"sku": "SKU-1", "quantity": 1}]}),
        json!({"facility": "berlin", "lines": [{"sku": "SKU-1", "quantity": -3}]}),
    ] {
        let (r, fx) = call(&db, &kv, "POST", "/api/stock/receipts", bad);
        assert_eq!(r.status, 422);
        assert!(fx.restocked.is_empty());
    }
    assert!(db.execute("SELECT * FROM stock", &[]).unwrap().is_empty());
    let (r, fx) = call(
        &db,
        &kv,
        "POST",
        "/api/stock/receipts",
        json!({"facility": "berlin", "lines": [{"sku": "SKU-1", "quantity": 5}]}),
    );
    assert_eq!(r.status, 201);
    assert_eq!(fx.restocked, vec!["SKU-1".to_string()]);
    let (r, _) = call(
        &db,
        &kv,
        "POST",
        "/api/stock/adjustments",
        json!({"facility": "berlin", "sku": "SKU-1", "delta": -6, "reason": "damaged"}),
    );
    assert_eq!(r.status, 409, "cannot go negative");
    let (r, fx) = call(
        &db,
        &kv,
        "POST",
        "/api/stock/adjustments",
        json!({"facility": "berlin", "sku": "SKU-1", "delta": -2, "reason": "damaged"}),
    );
    assert_eq!(
        (r.status, r.json_body()["on_hand"].clone()),
        (200, json!(3))
    );
    assert!(fx.restocked.is_empty(), "a decrease releases nothing");
    let (r, _) = call(&db, &kv, "GET", "/api/stock/SKU-1", json!({}));
    assert_eq!(r.json_body()["available"], 3);
    let moves = db
        .execute(
            "SELECT kind, on_hand_delta FROM stock_movements ORDER BY id",
            &[],
        )
        .unwrap();
    assert_eq!(moves.len(), 2);
}

#[test]
fn keys_import_as_json_and_csv_without_duplicates() {
    let db = setup();
    let kv = MemoryKv::default();
    call(
        &db,
        &kv,
        "PUT",
        "/api/products/SOFT",
        json!({"name": "Soft", "digital": true, "low_stock_threshold": 2}),
    );
    let (r, fx) = call(
        &db,
        &kv,
        "POST",
        "/api/license-keys/SOFT",
        json!({"keys": ["A-1", "A-2", "A-2"]}),
    );
    assert_eq!(r.status, 201);
    assert_eq!(
        (
            r.json_body()["imported"].clone(),
            r.json_body()["duplicates"].clone()
        ),
        (json!(2), json!(1))
    );
    assert_eq!(fx.restocked, vec!["SOFT".to_string()]);
    let secret = |_: &str| None;
    let tokens = Tokens::parse("write:write-token-1");
    let receivers = crate::kernel::url::Receivers::parse("fc.example, 127.0.0.1");
    let cfg = Config {
        secret: &secret,
        receivers: &receivers,
    };
    let req = Request::new("POST", "/api/license-keys/SOFT")
        .with_header("authorization", "Bearer write-token-1")
        .with_header("content-type", "text/csv")
        .with_body("license_key,batch\nA-3,7\nA-1,7\n");
    let (r, _) = handle(&db, &kv, &tokens, &cfg, &req, Utc::now());
    assert_eq!(
        r.json_body()["available"],
        3,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let (r, _) = call(
        &db,
        &kv,
        "POST",
        "/api/license-keys/NOPE",
        json!({"keys": ["x"]}),
    );
    assert_eq!(r.status, 404);
}

#[test]
fn secret_variables_are_names_spin_declares_and_old_names_follow_the_rename() {
    let db = setup();
    let kv = MemoryKv::default();
    let put = |name: &str| {
        call(
            &db,
            &kv,
            "PUT",
            "/api/facilities/fc",
            json!({"name": "FC", "type": "fulfillment_center", "secret_variable": name}),
        )
        .0
    };
    let stored = || {
        db.execute(
            "SELECT secret_variable FROM facilities WHERE id = 'fc'",
            &[],
        )
        .unwrap()
        .first()
        .and_then(|r| r.opt_str("secret_variable"))
    };
    assert!(put("fc_secret_b").status < 300);
    assert_eq!(stored().as_deref(), Some("fc_secret_b"));
    // A name from before the rename is taken under its new name.
    assert!(put("fc_secret_3").status < 300);
    assert_eq!(stored().as_deref(), Some("fc_secret_c"));
    // A variable no component declares could never be read: refused, nothing changed.
    let r = put("fc_secret_d");
    assert_eq!(r.status, 422);
    assert_eq!(stored().as_deref(), Some("fc_secret_c"));
}

#[test]
fn the_migration_renames_the_secret_variables_of_saved_facilities() {
    let db = crate::kernel::db::native::NativeDb::memory();
    crate::kernel::schema::migrate(&db).unwrap();
    crate::testkit::facility(&db, "fc1", "FC", "fulfillment_center", "[]", 0.0, 0.0);
    crate::testkit::facility(&db, "fc2", "FC", "fulfillment_center", "[]", 0.0, 0.0);
    db.execute(
        "UPDATE facilities SET secret_variable = 'fc_secret_2' WHERE id = 'fc1'",
        &[],
    )
    .unwrap();
    db.execute(
        "UPDATE facilities SET secret_variable = 'custom' WHERE id = 'fc2'",
        &[],
    )
    .unwrap();
    // Migration 11 (the rename) once more, as on a database saved before it.
    for sql in crate::kernel::schema::MIGRATIONS[10] {
        db.execute(sql, &[]).unwrap();
    }
    let rows = db
        .execute(
            "SELECT id, secret_variable FROM facilities ORDER BY id",
            &[],
        )
        .unwrap();
    assert_eq!(
        rows.iter()
            .next()
            .and_then(|r| r.opt_str("secret_variable"))
            .as_deref(),
        Some("fc_secret_b")
    );
    assert_eq!(
        rows.iter()
            .nth(1)
            .and_then(|r| r.opt_str("secret_variable"))
            .as_deref(),
        Some("custom")
    );
}

#[test]
fn fc_push_needs_the_signature() {
    let db = setup();
    let kv = MemoryKv::default();
    call(
        &db,
        &kv,
        "PUT",
        "/api/facilities/fc",
        json!({"name": "FC", "type": "fulfillment_center", "secret_variable": "fc_secret_a"}),
    );
    call(
        &db,
        &kv,
        "PUT",
        "/api/products/SKU-1",
        json!({"name": "Mug", "parts": {"fc": "FC-001"}}),
    );
    let body = json!({"as_of": "2026-11-20T10:00:00Z", "levels": [{"part_number": "FC-001", "on_hand": 7}, {"sku": "OTHER", "on_hand": 1}]}).to_string();
    let secret = |name: &str| (name == "fc_secret_a").then(|| "fc-secret".to_string());
    let tokens = Tokens::default();
    let receivers = crate::kernel::url::Receivers::parse("fc.example, 127.0.0.1");
    let cfg = Config {
        secret: &secret,
        receivers: &receivers,
    };
    let now = Utc::now();
    let push = |sig: &str| {
        Request::new("POST", "/callbacks/fc/fc/inventory")
            .with_header("waybill-signature", sig)
            .with_body(body.clone())
    };
    let sign = |secret: &[u8], body: &str| {
        crate::kernel::signature::sign_request_v2(
            secret,
            now.timestamp(),
            "POST",
            "/callbacks/fc/fc/inventory",
            body.as_bytes(),
        )
    };
    let bad = sign(b"wrong", &body);
    let (r, _) = handle(&db, &kv, &tokens, &cfg, &push(&bad), now);
    assert_eq!(r.status, 401);
    assert!(db.execute("SELECT * FROM stock", &[]).unwrap().is_empty());
    // A v1 value (not bound to the facility's endpoint) is not accepted.
    let v1 =
        crate::kernel::signature::sign_timestamped(b"fc-secret", now.timestamp(), body.as_bytes());
    let (r, _) = handle(&db, &kv, &tokens, &cfg, &push(&v1), now);
    assert_eq!(r.status, 401);
    let good = sign(b"fc-secret", &body);
    let (r, fx) = handle(&db, &kv, &tokens, &cfg, &push(&good), now);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json_body()["ignored"], json!(["OTHER"]));
    assert_eq!(fx.restocked, vec!["SKU-1".to_string()]);
    assert!(kv.get(&snapshot_key("fc")).unwrap().is_some());
    // An older snapshot is stale and changes nothing.
    let old = json!({"as_of": "2026-11-19T10:00:00Z", "levels": [{"part_number": "FC-001", "on_hand": 0}]}).to_string();
    let sig = sign(b"fc-secret", &old);
    let req = Request::new("POST", "/callbacks/fc/fc/inventory")
        .with_header("waybill-signature", &sig)
        .with_body(old.clone());
    let (r, _) = handle(&db, &kv, &tokens, &cfg, &req, now);
    assert_eq!(r.json_body()["result"], "stale");
    let n = db.execute("SELECT on_hand FROM stock", &[]).unwrap();
    assert_eq!(n.first().unwrap().i64("on_hand"), 7);
    // The watermark is the database's: another instance with its own (or an
    // emptied) key-value store still answers the older snapshot stale.
    let other_pod = MemoryKv::default();
    let again = crate::kernel::signature::sign_request_v2(
        b"fc-secret",
        now.timestamp() + 1,
        "POST",
        "/callbacks/fc/fc/inventory",
        old.as_bytes(),
    );
    let req = Request::new("POST", "/callbacks/fc/fc/inventory")
        .with_header("waybill-signature", &again)
        .with_body(old);
    let (r, _) = handle(&db, &other_pod, &tokens, &cfg, &req, now);
    assert_eq!(r.json_body()["result"], "stale", "{:?}", r.json_body());
    assert_eq!(
        r.json_body()["applied_as_of"],
        "2026-11-20T10:00:00.000000Z"
    );
    let n = db.execute("SELECT on_hand FROM stock", &[]).unwrap();
    assert_eq!(n.first().unwrap().i64("on_hand"), 7);
}
