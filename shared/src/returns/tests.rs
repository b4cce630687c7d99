use super::*;
use crate::kernel::db::native::NativeDb;
use crate::kernel::db::transaction;
use crate::routing::allocation::{process_order, Trigger};

use crate::testkit;

fn setup() -> NativeDb {
    let db = testkit::db();
    testkit::facility(&db, "fc", "FC", "fulfillment_center", "[]", 52.5, 13.4);
    for sku in ["A", "B"] {
        testkit::product(&db, sku, 0, false);
        testkit::stock(&db, "fc", sku, 10);
    }
    db
}

/// A paid order of 3 × A (10.00, 1.90 tax each) and 1 × B, shipped whole.
fn shipped_order(db: &NativeDb, ext: &str) -> String {
    let v = json!({"external_id": ext, "currency": "EUR", "financial_status": "paid",
        "shipping_address": {"line1": "x", "city": "Berlin", "country_code": "DE"},
        "lines": [{"sku": "A", "quantity": 3, "unit_price": "10.00", "tax": "5.70"},
                  {"sku": "B", "quantity": 1, "unit_price": "5.00", "tax": "0.95"}],
        "shipping_lines": [{"method": "standard", "price": "4.90"}]});
    let id = testkit::api_order(db, &v);
    process_order(db, &id, Trigger::Intake, Utc::now()).unwrap();
    let number = db
        .execute(
            "SELECT number FROM orders WHERE id = ?",
            params![id.clone()],
        )
        .unwrap()
        .first()
        .unwrap()
        .str("number");
    transaction(db, |db| {
        crate::flows::shipping::center_event(
            db,
            "fc",
            &json!({"order_number": number, "tracking_number": format!("T-{ext}")}),
            Utc::now(),
        )
    })
    .unwrap();
    id
}

use testkit::one as n;

fn refunds(db: &NativeDb, id: &str) -> Vec<i64> {
    db.execute(
        "SELECT amount_minor FROM payment_transactions WHERE order_id = ? AND kind = 'refund' AND status = 'succeeded' ORDER BY created_at",
        params![id],
    )
    .unwrap()
    .iter()
    .map(|r| r.i64("amount_minor"))
    .collect()
}

#[test]
fn good_units_restock_and_refund_exactly_damaged_ones_refund_without_restock() {
    let db = setup();
    let id = shipped_order(&db, "r1");
    assert_eq!(n(&db, "SELECT on_hand AS n FROM stock WHERE sku = 'A'"), 7);
    let rid = transaction(&db, |db| {
        request(
            db,
            &id,
            &json!({"lines": [{"line_no": 1, "quantity": 2, "reason": "too small"}]}),
            "t",
            Utc::now(),
        )
    })
    .unwrap();
    // Received before approval: refused.
    assert_eq!(
        transaction(&db, |db| crate::flows::returns::receive(
            db,
            &rid,
            &json!({}),
            "t",
            Utc::now()
        ))
        .unwrap_err()
        .status(),
        409
    );
    transaction(&db, |db| approve(db, &rid, &json!({}), "t", Utc::now())).unwrap();
    let v = view(&db, &rid).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["facility"].as_str()),
        (Some("approved"), Some("fc")),
        "{v}"
    );
    assert_eq!(v["return_label"]["to"]["facility"], "fc");
    // One good, one damaged.
    let skus = transaction(&db, |db| {
        crate::flows::returns::receive(db, &rid, &json!({"lines": [{"line_no": 1, "quantity": 1, "condition": "good"},
                                            {"line_no": 1, "quantity": 1, "condition": "damaged"}]}), "t", Utc::now())
    })
    .unwrap();
    assert_eq!(skus.restocked, vec!["A".to_string()]);
    assert_eq!(
        n(&db, "SELECT on_hand AS n FROM stock WHERE sku = 'A'"),
        8,
        "only the good unit is back in stock"
    );
    // 2 of 3 A (subtotal 30.00, tax 5.70): ⌊3000·2/3⌋ + ⌊570·2/3⌋ = 2000 + 380.
    assert_eq!(
        refunds(&db, &id),
        vec![2 * 1000 + 2 * 190],
        "items and their tax, no shipping"
    );
    let v = view(&db, &rid).unwrap();
    assert_eq!(
        (
            v["status"].as_str(),
            v["lines"][0]["restocked"].as_i64(),
            v["lines"][0]["scrapped"].as_i64()
        ),
        (Some("received"), Some(1), Some(1))
    );
    assert_eq!(v["refund"]["amount"]["minor"], 2380);
    let o = db
        .execute(
            "SELECT fulfillment_status, financial_status FROM orders WHERE id = ?",
            params![id.clone()],
        )
        .unwrap();
    assert_eq!(
        o.first().unwrap().str("fulfillment_status"),
        "partially_returned"
    );
    assert_eq!(
        o.first().unwrap().str("financial_status"),
        "partially_refunded"
    );
    assert_eq!(n(&db, "SELECT COUNT(*) AS n FROM credit_memos"), 1);

    // Resolution none: received, restocked, nothing refunded.
    let r2 = transaction(&db, |db| {
        request(
            db,
            &id,
            &json!({"lines": [{"line_no": 2, "quantity": 1}], "resolution": "none"}),
            "t",
            Utc::now(),
        )
    })
    .unwrap();
    transaction(&db, |db| {
        approve(db, &r2, &json!({"facility": "fc"}), "t", Utc::now())
    })
    .unwrap();
    transaction(&db, |db| {
        crate::flows::returns::receive(db, &r2, &json!({}), "t", Utc::now())
    })
    .unwrap();
    assert_eq!(refunds(&db, &id).len(), 1, "no second refund");
    assert_eq!(n(&db, "SELECT on_hand AS n FROM stock WHERE sku = 'B'"), 10);
}

#[test]
fn an_exchange_ships_a_replacement_and_charges_nothing_more() {
    let db = setup();
    let id = shipped_order(&db, "x1");
    let bad = transaction(&db, |db| {
        request(
            db,
            &id,
            &json!({"lines": [{"line_no": 1, "quantity": 1}], "resolution": "exchange",
                                 "replacement": [{"sku": "NOPE", "quantity": 1}]}),
            "t",
            Utc::now(),
        )
    });
    assert_eq!(bad.unwrap_err().status(), 422);
    let rid = transaction(&db, |db| {
        request(db, &id, &json!({"lines": [{"line_no": 1, "quantity": 1, "reason": "broken handle"}], "resolution": "exchange"}), "t", Utc::now())
    })
    .unwrap();
    transaction(&db, |db| approve(db, &rid, &json!({}), "t", Utc::now())).unwrap();
    let got = transaction(&db, |db| {
        crate::flows::returns::receive(
            db,
            &rid,
            &json!({"lines": [{"line_no": 1, "quantity": 1, "condition": "damaged"}]}),
            "t",
            Utc::now(),
        )
    })
    .unwrap();
    let rep = got.replacement_order.expect("a replacement order");
    assert!(refunds(&db, &id).is_empty(), "an exchange refunds nothing");
    process_order(&db, &rep, Trigger::Intake, Utc::now()).unwrap();
    let o = db
        .execute(
            "SELECT total_minor, financial_status, status FROM orders WHERE id = ?",
            params![rep.clone()],
        )
        .unwrap();
    let o = o.first().unwrap();
    assert_eq!(
        (
            o.i64("total_minor"),
            o.str("financial_status"),
            o.str("status")
        ),
        (0, "paid".into(), "processing".into())
    );
    assert_eq!(n(&db, &format!("SELECT COUNT(*) AS n FROM fulfillment_orders WHERE order_id = '{rep}' AND status = 'open'")), 1, "the refill is released");
    assert_eq!(
        n(&db, &format!("SELECT COALESCE(SUM(amount_minor), 0) AS n FROM payment_transactions WHERE order_id = '{rep}'")),
        0,
        "nothing charged for the replacement"
    );
    assert_eq!(
        view(&db, &rid).unwrap()["replacement_order_id"],
        rep.as_str()
    );
    // Receiving again creates no second replacement.
    assert_eq!(
        transaction(&db, |db| crate::flows::returns::receive(
            db,
            &rid,
            &json!({}),
            "t",
            Utc::now()
        ))
        .unwrap_err()
        .status(),
        409
    );
}

#[test]
fn an_exchange_replaces_no_more_than_comes_back_and_waits_for_it() {
    let db = setup();
    let id = shipped_order(&db, "x2");
    // More replacement units than returned: refused.
    let e = transaction(&db, |db| {
        request(
            db,
            &id,
            &json!({"lines": [{"line_no": 1, "quantity": 2}], "resolution": "exchange",
                    "replacement": [{"sku": "B", "quantity": 2}, {"sku": "A", "quantity": 1}]}),
            "t",
            Utc::now(),
        )
    })
    .unwrap_err();
    assert_eq!(e.status(), 422);
    assert_eq!(e.errors[0].pointer, "/replacement", "{e:?}");
    // Two mugs back for two of another product (like for like in units).
    let rid = transaction(&db, |db| {
        request(
            db,
            &id,
            &json!({"lines": [{"line_no": 1, "quantity": 2}], "resolution": "exchange",
                    "replacement": [{"sku": "B", "quantity": 2}]}),
            "t",
            Utc::now(),
        )
    })
    .unwrap();
    transaction(&db, |db| approve(db, &rid, &json!({}), "t", Utc::now())).unwrap();
    let receive = |q: i64| {
        transaction(&db, |db| {
            crate::flows::returns::receive(
                db,
                &rid,
                &json!({"lines": [{"line_no": 1, "quantity": q}]}),
                "t",
                Utc::now(),
            )
        })
        .unwrap()
    };
    // The first of the two: nothing ships yet.
    assert!(receive(1).replacement_order.is_none());
    assert_eq!(
        n(
            &db,
            "SELECT COUNT(*) AS n FROM orders WHERE external_id LIKE 'exchange-%'"
        ),
        0
    );
    // The second: the replacement of two ships.
    let rep = receive(1).replacement_order.expect("the replacement");
    assert_eq!(
        n(&db, &format!("SELECT SUM(qty_ordered) AS n FROM order_lines WHERE order_id = '{rep}' AND sku = 'B'")),
        2
    );
}

#[test]
fn bad_returns_change_nothing() {
    let db = setup();
    let id = shipped_order(&db, "r2");
    let count = |db: &NativeDb| {
        n(
            db,
            "SELECT (SELECT COUNT(*) FROM returns) + (SELECT COUNT(*) FROM return_lines) AS n",
        )
    };
    for body in [
        json!({"lines": [{"line_no": 1, "quantity": 4}]}),
        json!({"lines": [{"line_no": 9, "quantity": 1}]}),
        json!({"lines": [{"line_no": 1, "quantity": 0}]}),
        json!({"lines": []}),
        json!({"lines": [{"line_no": 1, "quantity": 1}], "resolution": "barter"}),
        json!({"lines": [{"line_no": 1, "quantity": 2}, {"line_no": 1, "quantity": 2}]}),
    ] {
        let e = transaction(&db, |db| request(db, &id, &body, "t", Utc::now())).unwrap_err();
        assert_eq!(e.status(), 422, "{body}");
    }
    assert_eq!(count(&db), 0);
    // Units already on an open return cannot be returned twice.
    let r = transaction(&db, |db| {
        request(
            db,
            &id,
            &json!({"lines": [{"line_no": 1, "quantity": 3}]}),
            "t",
            Utc::now(),
        )
    })
    .unwrap();
    let e = transaction(&db, |db| {
        request(
            db,
            &id,
            &json!({"lines": [{"line_no": 1, "quantity": 1}]}),
            "t",
            Utc::now(),
        )
    })
    .unwrap_err();
    assert_eq!(e.status(), 422);
    transaction(&db, |db| approve(db, &r, &json!({}), "t", Utc::now())).unwrap();
    let e = transaction(&db, |db| {
        crate::flows::returns::receive(
            db,
            &r,
            &json!({"lines": [{"line_no": 1, "quantity": 4}]}),
            "t",
            Utc::now(),
        )
    })
    .unwrap_err();
    assert_eq!(e.status(), 422, "more than expected");
    assert_eq!(
        n(&db, "SELECT on_hand AS n FROM stock WHERE sku = 'A'"),
        7,
        "nothing restocked"
    );
    // Not shipped yet: nothing to return.
    let v = json!({"external_id": "unshipped", "currency": "EUR", "shipping_address": {"line1": "x", "city": "B", "country_code": "DE"},
                   "lines": [{"sku": "A", "quantity": 1, "unit_price": "1.00"}]});
    let o = crate::intake::sources::api::map_order(&v, "", Utc::now()).unwrap();
    let u = transaction(&db, |db| {
        crate::flows::intake::place(db, &o, Utc::now(), "t")
    })
    .unwrap()
    .id;
    let e = transaction(&db, |db| {
        request(
            db,
            &u,
            &json!({"lines": [{"line_no": 1, "quantity": 1}]}),
            "t",
            Utc::now(),
        )
    })
    .unwrap_err();
    assert_eq!(e.status(), 422);
}
