use super::*;
use crate::kernel::db::native::NativeDb;
use crate::kernel::db::transaction;
use crate::routing::allocation::{process_order, Trigger};

use crate::testkit::{self, one};

fn setup() -> NativeDb {
    let db = testkit::db();
    testkit::facility(&db, "wh", "wh", "warehouse", "[\"DE\", \"AT\"]", 52.5, 13.4);
    for sku in ["A", "B"] {
        testkit::product(&db, sku, 0, true);
    }
    db
}

fn stock(db: &NativeDb, sku: &str, n: i64) {
    testkit::stock(db, "wh", sku, n);
}

fn order(db: &NativeDb, ext: &str) -> String {
    let v = json!({"external_id": ext, "currency": "EUR", "financial_status": "authorized",
        "shipping_address": {"line1": "x", "city": "Berlin", "country_code": "DE"},
        "lines": [{"sku": "A", "quantity": 2, "unit_price": "10.00", "tax": "3.80"},
                  {"sku": "B", "quantity": 1, "unit_price": "7.00", "tax": "1.33"}],
        "shipping_lines": [{"method": "standard", "price": "4.90"}]});
    let id = testkit::api_order(db, &v);
    process_order(db, &id, Trigger::Intake, Utc::now()).unwrap();
    id
}

/// The order's stored document.
fn stored_doc(db: &NativeDb, id: &str) -> Json {
    serde_json::from_str(
        &db.execute("SELECT doc FROM orders WHERE id = ?", params![id])
            .unwrap()
            .first()
            .unwrap()
            .str("doc"),
    )
    .unwrap()
}

fn pay(db: &NativeDb, id: &str) -> (i64, i64, i64, i64) {
    let r = db
        .execute("SELECT * FROM payments WHERE order_id = ?", params![id])
        .unwrap();
    let r = r.first().unwrap();
    (
        r.i64("authorized_minor"),
        r.i64("captured_minor"),
        r.i64("refunded_minor"),
        r.i64("voided_minor"),
    )
}

#[test]
fn an_address_change_before_release_is_routed_and_refused_after() {
    let db = setup();
    let id = order(&db, "c1"); // no stock: everything backordered
    let r = transaction(&db, |db| {
        change(db, &id, &json!({"shipping_address": {"line1": "Ring 1", "city": "Wien", "postal_code": "1010", "country_code": "AT"},
                                "shipping_method": "pickup-point", "shipping_price": "2.90"}), "t", Utc::now())
    })
    .unwrap();
    assert_eq!(
        r["changed"],
        json!(["shipping_address", "shipping_method", "shipping_price"])
    );
    // The shop's price for the new method: 2.00 less on the total, voided.
    assert_eq!(
        r["payment"],
        json!({"difference_minor": -200, "voided_minor": 200})
    );
    assert_eq!(
        one(
            &db,
            &format!("SELECT total_minor AS n FROM orders WHERE id = '{id}'")
        ),
        3503
    );
    let doc = stored_doc(&db, &id);
    assert_eq!(
        (
            doc["shipping_address"]["city"].as_str(),
            doc["shipping_lines_minor"][0]["method"].as_str()
        ),
        (Some("Wien"), Some("pickup-point"))
    );
    assert_eq!(
        (
            doc["shipping_lines_minor"][0]["price"].as_i64(),
            doc["shipping_lines"][0]["price"]["amount"].as_str()
        ),
        (Some(290), Some("2.90"))
    );
    stock(&db, "A", 5);
    stock(&db, "B", 5);
    crate::routing::allocation::release_backorders(&db, None, None, Utc::now(), 10).unwrap();
    assert_eq!(
        one(
            &db,
            "SELECT COUNT(*) AS n FROM fulfillment_orders WHERE status = 'open'"
        ),
        1
    );
    let e = transaction(&db, |db| {
        change(
            db,
            &id,
            &json!({"shipping_address": {"line1": "y", "city": "Graz", "country_code": "AT"}}),
            "t",
            Utc::now(),
        )
    })
    .unwrap_err();
    assert_eq!(e.status(), 409);
    assert!(e.detail.contains("after release"), "{}", e.detail);
    // A note may still change.
    transaction(&db, |db| {
        change(db, &id, &json!({"note": "ring twice"}), "t", Utc::now())
    })
    .unwrap();
    let bad = transaction(&db, |db| {
        change(db, &id, &json!({"colour": "red"}), "t", Utc::now())
    })
    .unwrap_err();
    assert_eq!(bad.status(), 422);
}

#[test]
fn a_new_shipping_method_is_priced_from_the_rate_table_and_the_difference_authorized() {
    let db = setup();
    crate::fulfillment::put_rates(
        &db,
        &json!({"zones": [{"country": "DE", "postal_prefix": "", "zone": "de"}],
                "rates": [{"carrier": "dhl", "service": "express", "zone": "de", "max_weight_grams": 5000, "price": "12.50", "currency": "EUR"},
                          {"carrier": "ups", "service": "express", "zone": "de", "max_weight_grams": 5000, "price": "14.00", "currency": "EUR"},
                          {"carrier": "dhl", "service": "parcel", "zone": "de", "max_weight_grams": 5000, "price": "3.00", "currency": "EUR"}]}),
    )
    .unwrap();
    let v = json!({"external_id": "rp-1", "currency": "EUR", "financial_status": "authorized",
        "shipping_address": {"line1": "x", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
        "lines": [{"sku": "A", "quantity": 1, "unit_price": "10.00"}],
        "shipping_lines": [{"method": "standard", "price": "4.90", "tax": "0.93"}]});
    let id = testkit::api_order(&db, &v);
    process_order(&db, &id, Trigger::Intake, Utc::now()).unwrap();
    let total = |db: &NativeDb| {
        one(
            db,
            &format!("SELECT total_minor AS n FROM orders WHERE id = '{id}'"),
        )
    };
    assert_eq!(total(&db), 1583);
    // No rate for the method and no price given: refused, nothing changes.
    let events = one(&db, "SELECT COUNT(*) AS n FROM order_events");
    let e = transaction(&db, |db| {
        change(
            db,
            &id,
            &json!({"shipping_method": "overnight"}),
            "t",
            Utc::now(),
        )
    })
    .unwrap_err();
    assert_eq!(e.status(), 422);
    assert_eq!(e.errors[0].pointer, "/shipping_price", "{e:?}");
    assert_eq!(one(&db, "SELECT COUNT(*) AS n FROM order_events"), events);
    assert_eq!(total(&db), 1583);
    // The cheapest express rate; the old line's 19 % tax on it (12.50 × 0.93 / 4.90 = 2.37).
    let r = transaction(&db, |db| {
        change(
            db,
            &id,
            &json!({"shipping_method": "express"}),
            "t",
            Utc::now(),
        )
    })
    .unwrap();
    let priced = &r["payment"];
    assert_eq!(priced["difference_minor"], 1250 + 237 - 490 - 93, "{r}");
    assert_eq!(total(&db), 1583 + 904);
    assert_eq!(priced["awaiting_authorization_minor"], 904, "{r}");
    assert_eq!(
        one(&db, &format!("SELECT COUNT(*) AS n FROM order_holds WHERE order_id = '{id}' AND reason = 'awaiting_payment' AND released_at IS NULL")),
        1,
        "the dearer method waits for its authorization"
    );
    let doc = stored_doc(&db, &id);
    assert_eq!(
        (
            doc["shipping_lines_minor"][0]["price"].as_i64(),
            doc["shipping_lines_minor"][0]["tax"].as_i64(),
            doc["shipping_lines_minor"][0]["title"].as_str()
        ),
        (Some(1250), Some(237), Some("express"))
    );
    let ev = db
        .execute(
            "SELECT data FROM order_events WHERE order_id = ? AND kind = 'order.changed' ORDER BY id DESC LIMIT 1",
            params![id.clone()],
        )
        .unwrap();
    let data: Json = serde_json::from_str(&ev.first().unwrap().str("data")).unwrap();
    assert_eq!(
        data["shipping_price"]["priced_by"]["carrier"], "dhl",
        "{data}"
    );
    // A price without a method is refused.
    let e = transaction(&db, |db| {
        change(db, &id, &json!({"shipping_price": "1.00"}), "t", Utc::now())
    })
    .unwrap_err();
    assert_eq!(e.status(), 422);
}

#[test]
fn cancelling_lines_of_a_partly_released_order_gives_back_stock_and_money_exactly() {
    let db = setup();
    stock(&db, "A", 2);
    let id = order(&db, "c2");
    // A released and captured (2 × 10.00 + 3.80 tax + 4.90 shipping); B backordered, not captured.
    let (auth, captured, _, _) = pay(&db, &id);
    assert_eq!(
        (auth, captured),
        (2000 + 380 + 700 + 133 + 490, 2000 + 380 + 490)
    );
    // Cancel B: the authorization shrinks by exactly B's amount.
    transaction(&db, |db| {
        cancel(
            db,
            &id,
            &json!({"lines": [{"line_no": 2, "quantity": 1}]}),
            "t",
            Utc::now(),
        )
    })
    .unwrap();
    let (_, _, refunded, voided) = pay(&db, &id);
    assert_eq!((refunded, voided), (0, 700 + 133));
    // Cancel one A (released, picking not started): its reservation comes back, its share is refunded.
    transaction(&db, |db| {
        cancel(
            db,
            &id,
            &json!({"lines": [{"line_no": 1, "quantity": 1}], "reason": "customer"}),
            "t",
            Utc::now(),
        )
    })
    .unwrap();
    assert_eq!(
        one(&db, "SELECT reserved AS n FROM stock WHERE sku = 'A'"),
        1
    );
    let (_, _, refunded, _) = pay(&db, &id);
    assert_eq!(
        refunded,
        1000 + 190,
        "one unit's net and tax, shipping kept"
    );
    let checklist = db
        .execute("SELECT data FROM fulfillment_jobs WHERE kind = 'pick'", &[])
        .unwrap()
        .first()
        .unwrap()
        .str("data");
    assert!(
        checklist.contains("\"quantity\":1"),
        "the pick list follows: {checklist}"
    );
    // The rest: the whole order is cancelled and the rest refunded with shipping.
    transaction(&db, |db| cancel(db, &id, &json!({}), "t", Utc::now())).unwrap();
    let (_, captured, refunded, _) = pay(&db, &id);
    assert_eq!(refunded, captured, "everything captured came back");
    let o = db
        .execute(
            "SELECT status, financial_status FROM orders WHERE id = ?",
            params![id.clone()],
        )
        .unwrap();
    assert_eq!(
        (
            o.first().unwrap().str("status"),
            o.first().unwrap().str("financial_status")
        ),
        ("cancelled".into(), "refunded".into())
    );
    assert_eq!(
        one(&db, "SELECT reserved AS n FROM stock WHERE sku = 'A'"),
        0
    );
    assert_eq!(
        one(
            &db,
            "SELECT COUNT(*) AS n FROM fulfillment_orders WHERE status = 'cancelled'"
        ),
        1
    );
}

#[test]
fn shipped_units_cannot_be_cancelled_and_bad_requests_change_nothing() {
    let db = setup();
    db.execute(
        "UPDATE facilities SET type = 'fulfillment_center' WHERE id = 'wh'",
        &[],
    )
    .unwrap();
    stock(&db, "A", 2);
    stock(&db, "B", 1);
    let id = order(&db, "c3");
    let number = db
        .execute(
            "SELECT number FROM orders WHERE id = ?",
            params![id.clone()],
        )
        .unwrap()
        .first()
        .unwrap()
        .str("number");
    transaction(&db, |db| {
        crate::flows::shipping::center_event(
            db,
            "wh",
            &json!({"order_number": number, "tracking_number": "T1"}),
            Utc::now(),
        )
    })
    .unwrap();
    let before = one(&db, "SELECT (SELECT COUNT(*) FROM order_events) + (SELECT COUNT(*) FROM payment_transactions) AS n");
    let e = transaction(&db, |db| cancel(db, &id, &json!({}), "t", Utc::now())).unwrap_err();
    assert_eq!(e.status(), 409, "a shipped order: {}", e.detail);
    for body in [
        json!({"lines": [{"line_no": 9, "quantity": 1}]}),
        json!({"lines": [{"line_no": 1, "quantity": 0}]}),
        json!({"lines": []}),
        json!({"why": "no"}),
    ] {
        assert_eq!(
            transaction(&db, |db| cancel(db, &id, &body, "t", Utc::now()))
                .unwrap_err()
                .status(),
            422,
            "{body}"
        );
    }
    assert_eq!(one(&db, "SELECT (SELECT COUNT(*) FROM order_events) + (SELECT COUNT(*) FROM payment_transactions) AS n"), before);
}

#[test]
fn a_substitute_is_routed_and_its_price_difference_handled() {
    let db = setup();
    db.execute(
        "INSERT INTO products (sku, name, weight_grams, backorderable, digital, low_stock_threshold, updated_at) VALUES ('C', 'C', 0, 1, 0, 0, ''), ('D', 'D', 0, 1, 0, 0, '')",
        &[],
    )
    .unwrap();
    stock(&db, "A", 2);
    stock(&db, "C", 5);
    stock(&db, "D", 5);
    let id = order(&db, "s1"); // A released and captured; B (7.00 + 1.33 tax) backordered
    let (auth, ..) = pay(&db, &id);
    // B → C at 5.00: 2.00 cheaper (+ its tax at B's rate 19%: 0.95 instead of 1.33).
    let r = transaction(&db, |db| {
        substitute(
            db,
            &id,
            &json!({"line_no": 2, "sku": "C", "unit_price": "5.00"}),
            "t",
            Utc::now(),
        )
    })
    .unwrap();
    assert_eq!(r["new_line_no"], 3);
    assert_eq!(r["payment"]["difference_minor"], (500 + 95) - (700 + 133));
    assert_eq!(r["routing"]["released"], 1, "the substitute ships at once");
    let (a2, captured, _, voided) = pay(&db, &id);
    assert_eq!(a2, auth);
    assert_eq!(
        voided,
        700 + 133 - 500 - 95,
        "the authorization shrinks by the difference"
    );
    assert_eq!(captured, 2000 + 380 + 490 + 500 + 95);
    let total = one(
        &db,
        &format!("SELECT total_minor AS n FROM orders WHERE id = '{id}'"),
    );
    assert_eq!(total, captured, "the order total follows");
    // A dearer substitute waits for the difference to be authorized.
    stock(&db, "A", 4);
    let id2 = order(&db, "s2");
    let r = transaction(&db, |db| {
        substitute(
            db,
            &id2,
            &json!({"line_no": 2, "sku": "D", "unit_price": "9.00"}),
            "t",
            Utc::now(),
        )
    })
    .unwrap();
    assert_eq!(r["routing"]["released"], 0);
    let short = r["payment"]["awaiting_authorization_minor"]
        .as_i64()
        .unwrap();
    assert_eq!(short, (900 + 171) - (700 + 133));
    assert_eq!(
        store::open_hold_reasons(&db, &id2).unwrap(),
        vec!["awaiting_payment".to_string()]
    );
    let (a, ..) = pay(&db, &id2);
    transaction(&db, |db| {
        crate::flows::payments::retry(
            db,
            &id2,
            &json!({"amount_minor": a + short}),
            "t",
            Utc::now(),
        )
    })
    .unwrap();
    assert!(store::open_hold_reasons(&db, &id2).unwrap().is_empty());
    let (_, captured, ..) = pay(&db, &id2);
    assert_eq!(captured, a + short, "everything captured once authorized");
    // Released units cannot be substituted; unknown SKUs are refused.
    let e = transaction(&db, |db| {
        substitute(
            db,
            &id2,
            &json!({"line_no": 1, "sku": "C"}),
            "t",
            Utc::now(),
        )
    })
    .unwrap_err();
    assert_eq!(e.status(), 422);
    let e = transaction(&db, |db| {
        substitute(
            db,
            &id2,
            &json!({"line_no": 2, "sku": "ZZZ"}),
            "t",
            Utc::now(),
        )
    })
    .unwrap_err();
    assert_eq!(e.status(), 422);
}
