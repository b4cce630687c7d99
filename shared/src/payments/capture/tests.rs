use super::*;
use crate::kernel::db::native::NativeDb;
use crate::routing::allocation::{process_order, Trigger};
use std::cell::RefCell;

use crate::testkit;

fn setup() -> NativeDb {
    let db = testkit::db();
    testkit::facility(&db, "wh", "wh", "warehouse", "[]", 53.5, 10.0);
    for sku in ["A", "B"] {
        testkit::product(&db, sku, 0, true);
    }
    db
}

fn stock(db: &NativeDb, sku: &str, n: i64) {
    testkit::stock(db, "wh", sku, n);
}

/// An authorized order: 3 × A and 2 × B with awkward amounts, shipping, tax.
fn order(db: &NativeDb, ext: &str, currency: &str, payment: Json) -> String {
    let (a, b, ship) = match currency {
        "JPY" => ("1001", "333", "500"),
        "KWD" => ("10.001", "3.333", "1.250"),
        _ => ("10.01", "3.33", "4.99"),
    };
    let v = json!({
        "external_id": ext, "currency": currency, "placed_at": "2026-11-20T10:00:00Z",
        "financial_status": "authorized", "payment": payment,
        "shipping_address": {"line1": "x", "city": "Hamburg", "country_code": "DE", "latitude": 53.5, "longitude": 10.0},
        "lines": [
            {"sku": "A", "quantity": 3, "unit_price": a, "discount": if currency == "JPY" { "100" } else { "1.00" }, "tax": if currency == "JPY" { "301" } else { "5.71" }},
            {"sku": "B", "quantity": 2, "unit_price": b, "tax": if currency == "JPY" { "67" } else { "1.27" }},
        ],
        "shipping_lines": [{"method": "standard", "price": ship, "tax": if currency == "JPY" { "50" } else { "0.95" }}],
    });
    testkit::api_order(db, &v)
}

fn route(db: &NativeDb, id: &str) -> crate::routing::allocation::Outcome {
    process_order(db, id, Trigger::Intake, Utc::now()).unwrap()
}

fn one(db: &NativeDb, sql: &str, p: &[Value]) -> i64 {
    db.execute(sql, p).unwrap().first().unwrap().i64("n")
}

fn captured(db: &NativeDb, id: &str) -> Vec<i64> {
    db.execute(
        "SELECT amount_minor FROM payment_transactions WHERE order_id = ? AND kind = 'capture' AND status = 'succeeded' ORDER BY created_at",
        params![id],
    )
    .unwrap()
    .iter()
    .map(|r| r.i64("amount_minor"))
    .collect()
}

fn fin(db: &NativeDb, id: &str) -> String {
    db.execute(
        "SELECT financial_status FROM orders WHERE id = ?",
        params![id],
    )
    .unwrap()
    .str("financial_status")
}

fn total(db: &NativeDb, id: &str) -> i64 {
    one(
        db,
        "SELECT total_minor AS n FROM orders WHERE id = ?",
        params![id],
    )
}

#[test]
fn partial_releases_capture_exactly_what_is_released_and_add_up_to_the_total() {
    for cur in ["JPY", "EUR", "KWD"] {
        let db = setup();
        stock(&db, "A", 2);
        let id = order(&db, cur, cur, json!({}));
        let o = route(&db, &id);
        assert_eq!((o.released, o.backordered), (2, 3), "{cur}");
        let first = captured(&db, &id);
        assert_eq!(first.len(), 1, "{cur}");
        assert_eq!(fin(&db, &id), "partially_paid");
        // 2 of 3 A: ⌊net·2/3⌋ + ⌊tax·2/3⌋ + all shipping and its tax.
        let t: Vec<i64> = db
            .execute(
                "SELECT subtotal_minor - discount_minor AS net, tax_minor FROM order_lines WHERE order_id = ? ORDER BY line_no",
                params![id.clone()],
            )
            .unwrap()
            .iter()
            .flat_map(|r| [r.i64("net"), r.i64("tax_minor")])
            .collect();
        let ship_total = total(&db, &id) - t.iter().sum::<i64>();
        assert_eq!(first[0], t[0] * 2 / 3 + t[1] * 2 / 3 + ship_total, "{cur}");
        stock(&db, "A", 3);
        stock(&db, "B", 2);
        crate::routing::allocation::release_backorders(&db, None, None, Utc::now(), 10).unwrap();
        let all = captured(&db, &id);
        assert_eq!(all.len(), 2, "{cur}: one capture per fulfillment order");
        assert_eq!(
            all.iter().sum::<i64>(),
            total(&db, &id),
            "{cur}: captures add up to the total"
        );
        assert_eq!(fin(&db, &id), "paid");
        let inv: Vec<String> = db
            .execute("SELECT number FROM invoices ORDER BY seq", &[])
            .unwrap()
            .iter()
            .map(|r| r.str("number"))
            .collect();
        assert_eq!(inv, ["INV-000001", "INV-000002"]);
        let doc: Json = serde_json::from_str(
            &db.execute("SELECT doc FROM invoices WHERE seq = 2", &[])
                .unwrap()
                .str("doc"),
        )
        .unwrap();
        assert_eq!(doc["number"], "INV-000002");
        assert_eq!(doc["total"]["minor"], all[1]);
        assert_eq!(
            doc["fulfillment_order"].as_str().unwrap().ends_with("-F2"),
            true
        );
        assert_eq!(
            one(&db, "SELECT COUNT(*) AS n FROM outbox WHERE topic IN ('payment.captured', 'invoice.created')", &[]),
            4,
            "{cur}: subscribers hear of each capture and invoice"
        );
        // Nothing is captured twice: a second pass changes nothing.
        route(&db, &id);
        assert_eq!(captured(&db, &id).len(), 2);
    }
}

#[test]
fn an_expired_or_short_authorization_holds_the_fulfillment_order_until_retried() {
    let db = setup();
    stock(&db, "A", 3);
    stock(&db, "B", 2);
    let id = order(
        &db,
        "x1",
        "EUR",
        json!({"gateway": "manual", "authorization_expires_at": "2020-01-01T00:00:00Z"}),
    );
    let o = route(&db, &id);
    assert_eq!(o.released, 0, "nothing is released");
    let fo = db
        .execute(
            "SELECT status FROM fulfillment_orders WHERE order_id = ?",
            params![id.clone()],
        )
        .unwrap()
        .str("status");
    assert_eq!(fo, "on_hold");
    assert_eq!(
        store::open_hold_reasons(&db, &id).unwrap(),
        vec!["payment_failed".to_string()]
    );
    assert_eq!(
        one(
            &db,
            "SELECT COUNT(*) AS n FROM outbox WHERE topic = 'fulfillment_order.released'",
            &[]
        ),
        0
    );
    let items = action_items(&db).unwrap();
    assert_eq!(items["items"][0]["error"]["code"], "authorization_expired");
    // The sweep does not retry a decline on its own ...
    crate::routing::allocation::sweep(&db, Utc::now(), 10).unwrap();
    assert!(captured(&db, &id).is_empty());
    // ... the operator does, with a fresh authorization.
    transaction(&db, |db| {
        crate::flows::payments::retry(
            db,
            &id,
            &json!({"authorization_expires_at": "2099-01-01T00:00:00Z"}),
            "test",
            Utc::now(),
        )
    })
    .unwrap();
    assert_eq!(captured(&db, &id), vec![total(&db, &id)]);
    assert!(store::open_hold_reasons(&db, &id).unwrap().is_empty());
    assert_eq!(fin(&db, &id), "paid");
    assert_eq!(
        action_items(&db).unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // An authorization smaller than what is released is declined too.
    let short = order(&db, "x2", "EUR", json!({"amount": "1.00"}));
    stock(&db, "A", 6);
    stock(&db, "B", 4);
    route(&db, &short);
    assert!(captured(&db, &short).is_empty());
    let e = db
        .execute(
            "SELECT error_code FROM payment_transactions WHERE order_id = ?",
            params![short],
        )
        .unwrap()
        .str("error_code");
    assert_eq!(e, "amount_exceeds_authorization");
}

/// A fake Stripe: remembers every idempotency key's answer as Stripe does.
struct FakeStripe {
    seen: RefCell<BTreeMap<String, (u16, Vec<u8>)>>,
    captures: RefCell<Vec<i64>>,
    /// Answers to give, in turn, before the real one (None: drop the connection after capturing).
    script: RefCell<Vec<Option<u16>>>,
}

impl Http for FakeStripe {
    fn post_form(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &str,
    ) -> std::result::Result<(u16, Vec<u8>), String> {
        let key = headers
            .iter()
            .find(|(k, _)| k == "idempotency-key")
            .map(|(_, v)| v.clone())
            .unwrap();
        if let Some(r) = self.seen.borrow().get(&key) {
            return Ok(r.clone());
        }
        let step = if self.script.borrow().is_empty() {
            Some(200)
        } else {
            self.script.borrow_mut().remove(0)
        };
        if step == Some(402) {
            let r = (402, br#"{"error":{"type":"card_error","code":"card_declined","decline_code":"generic_decline","message":"Your card was declined."}}"#.to_vec());
            self.seen.borrow_mut().insert(key, r.clone());
            return Ok(r);
        }
        if step == Some(503) {
            return Ok((
                503,
                br#"{"error":{"type":"api_error","message":"try later"}}"#.to_vec(),
            ));
        }
        let amount: i64 = form_urlencoded::parse(body.as_bytes())
            .find(|(k, _)| k == "amount_to_capture" || k == "amount")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        if url.ends_with("/capture") {
            self.captures.borrow_mut().push(amount);
        }
        let r = (
            200,
            json!({"id": "pi_1", "object": "payment_intent", "latest_charge": "ch_1"})
                .to_string()
                .into_bytes(),
        );
        self.seen.borrow_mut().insert(key, r.clone());
        match step {
            None => Err("connection reset before the answer".into()),
            _ => Ok(r),
        }
    }
}

fn stripe() -> StripeConfig {
    StripeConfig {
        api_base: "http://stripe.test".into(),
        secret_key: "sk_test".into(),
    }
}

#[test]
fn stripe_captures_wait_for_the_gateway_and_a_lost_answer_is_retried_with_the_same_key() {
    let db = setup();
    put_settings(&db, &json!({"retry_base_seconds": 0})).unwrap();
    stock(&db, "A", 3);
    stock(&db, "B", 2);
    let id = order(
        &db,
        "s1",
        "EUR",
        json!({"gateway": "stripe", "reference": "pi_1"}),
    );
    let o = route(&db, &id);
    assert_eq!((o.released, o.awaiting_capture), (0, 5));
    let fo = || {
        db.execute(
            "SELECT status FROM fulfillment_orders WHERE order_id = ?",
            params![id.clone()],
        )
        .unwrap()
        .str("status")
    };
    assert_eq!(fo(), "scheduled");
    let fake = FakeStripe {
        seen: RefCell::new(BTreeMap::new()),
        captures: RefCell::new(Vec::new()),
        script: RefCell::new(vec![None]),
    };
    let p = process_due(&db, &fake, &stripe(), None, Utc::now(), 10).unwrap();
    assert_eq!(
        p.retrying, 1,
        "the connection dropped after Stripe captured"
    );
    assert_eq!(
        fo(),
        "scheduled",
        "not released while the outcome is unknown"
    );
    let p = process_due(&db, &fake, &stripe(), None, Utc::now(), 10).unwrap();
    assert_eq!(p.succeeded, 1, "the retry gets Stripe's stored answer");
    assert_eq!(fake.captures.borrow().len(), 1, "Stripe captured once");
    assert_eq!(fo(), "open");
    assert_eq!(captured(&db, &id), vec![total(&db, &id)]);
    assert_eq!(
        one(
            &db,
            "SELECT attempts AS n FROM payment_transactions WHERE order_id = ?",
            params![id.clone()]
        ),
        2
    );
    assert!(!has_due(&db, Utc::now()).unwrap());

    // A decline holds the fulfillment order; nothing is released.
    let d = order(
        &db,
        "s2",
        "EUR",
        json!({"gateway": "stripe", "reference": "pi_2"}),
    );
    stock(&db, "A", 6);
    stock(&db, "B", 4);
    route(&db, &d);
    *fake.script.borrow_mut() = vec![Some(503), Some(402)];
    let p = process_due(&db, &fake, &stripe(), None, Utc::now(), 10).unwrap();
    assert_eq!(p.retrying, 1, "a 503 is retried");
    let p = process_due(&db, &fake, &stripe(), None, Utc::now(), 10).unwrap();
    assert_eq!(p.declined, 1);
    let st = db
        .execute(
            "SELECT status FROM fulfillment_orders WHERE order_id = ?",
            params![d.clone()],
        )
        .unwrap()
        .str("status");
    assert_eq!(st, "on_hold");
    assert_eq!(
        store::open_hold_reasons(&db, &d).unwrap(),
        vec!["payment_failed".to_string()]
    );
    let b = store::load_buckets(&db, &d).unwrap();
    assert_eq!(b.iter().map(|b| b.released).sum::<i64>(), 0);
    assert_eq!(fake.captures.borrow().len(), 1);

    // Stripe without a secret key: an action item at once, not hours of retries.
    let n = order(
        &db,
        "s3",
        "EUR",
        json!({"gateway": "stripe", "reference": "pi_3"}),
    );
    stock(&db, "A", 9);
    stock(&db, "B", 6);
    route(&db, &n);
    let unconfigured = StripeConfig {
        api_base: "http://stripe.test".into(),
        secret_key: String::new(),
    };
    let p = process_due(&db, &fake, &unconfigured, None, Utc::now(), 10).unwrap();
    assert_eq!(p.declined, 1);
    let code = db
        .execute(
            "SELECT error_code FROM payment_transactions WHERE order_id = ?",
            params![n],
        )
        .unwrap()
        .str("error_code");
    assert_eq!(code, "gateway_not_configured");
    assert_eq!(fake.captures.borrow().len(), 1, "nothing was sent");
}

#[test]
fn cancelling_voids_the_rest_and_refunds_follow_capture_shares() {
    let db = setup();
    stock(&db, "A", 3);
    let id = order(&db, "c1", "EUR", json!({}));
    route(&db, &id);
    let first = captured(&db, &id)[0];
    // Refund 1 of the 3 captured A: a third of the line's net and tax, no shipping.
    let r = RefundRequest {
        lines: BTreeMap::from([(1, 1)]),
        reason: "damaged".into(),
        ..Default::default()
    };
    transaction(&db, |db| refund(db, &id, &r, "test", Utc::now())).unwrap();
    let amount = one(
        &db,
        "SELECT amount_minor AS n FROM payment_transactions WHERE kind = 'refund'",
        &[],
    );
    let (net, tax) = (3003 - 100, 571);
    assert_eq!(amount, net / 3 + tax / 3);
    assert_eq!(fin(&db, &id), "partially_refunded");
    let cm = db
        .execute("SELECT number FROM credit_memos", &[])
        .unwrap()
        .str("number");
    assert_eq!(cm, "CM-000001");
    // More than captured is refused and changes nothing.
    let too_many = RefundRequest {
        lines: BTreeMap::from([(1, 3)]),
        ..Default::default()
    };
    let e = transaction(&db, |db| refund(db, &id, &too_many, "test", Utc::now())).unwrap_err();
    assert_eq!(e.status(), 422);
    let none = RefundRequest {
        lines: BTreeMap::from([(2, 1)]),
        ..Default::default()
    };
    assert_eq!(
        transaction(&db, |db| refund(db, &id, &none, "test", Utc::now()))
            .unwrap_err()
            .status(),
        422,
        "line 2 was never captured"
    );
    // The backordered B are cancelled: the authorization is reduced to what was captured.
    transaction(&db, |db| {
        crate::flows::changes::cancel(
            db,
            &id,
            &json!({"lines": [{"line_no": 2, "quantity": 2}], "reason": "customer asked"}),
            "test",
            Utc::now(),
        )
    })
    .unwrap();
    let p = load_payment(&db, &id).unwrap().unwrap();
    assert_eq!(p.voided, total(&db, &id) - first);
    assert_eq!(p.captured, first);
    assert_eq!(fin(&db, &id), "partially_refunded");
}

#[test]
fn prepaid_orders_get_invoices_and_keep_their_state() {
    let db = setup();
    stock(&db, "A", 3);
    stock(&db, "B", 2);
    let v = json!({"external_id": "p1", "currency": "EUR", "financial_status": "paid",
        "shipping_address": {"line1": "x", "city": "Hamburg", "country_code": "DE"},
        "lines": [{"sku": "A", "quantity": 1, "unit_price": "2.00"}]});
    let o = crate::intake::sources::api::map_order(&v, "", Utc::now()).unwrap();
    let id = transaction(&db, |db| {
        crate::flows::intake::place(db, &o, Utc::now(), "t")
    })
    .unwrap()
    .id;
    route(&db, &id);
    assert_eq!(captured(&db, &id), vec![200]);
    assert_eq!(fin(&db, &id), "paid");
    // Pending orders release without a capture (nothing was authorized).
    let v = json!({"external_id": "p2", "currency": "EUR",
        "shipping_address": {"line1": "x", "city": "Hamburg", "country_code": "DE"}, "lines": [{"sku": "A", "quantity": 1, "unit_price": "2.00"}]});
    let o = crate::intake::sources::api::map_order(&v, "", Utc::now()).unwrap();
    let id = transaction(&db, |db| {
        crate::flows::intake::place(db, &o, Utc::now(), "t")
    })
    .unwrap()
    .id;
    assert_eq!(route(&db, &id).released, 1);
    assert!(captured(&db, &id).is_empty());
    assert_eq!(fin(&db, &id), "pending");
}

#[test]
fn capture_at_shipment_releases_at_once_and_captures_when_shipped() {
    let db = setup();
    put_settings(&db, &json!({"capture_at": "shipment"})).unwrap();
    stock(&db, "A", 3);
    stock(&db, "B", 2);
    let id = order(&db, "sh1", "EUR", json!({}));
    assert_eq!(
        route(&db, &id).released,
        5,
        "released without waiting for money"
    );
    assert!(captured(&db, &id).is_empty());
    assert_eq!(fin(&db, &id), "authorized");
    let fo = db
        .execute(
            "SELECT id FROM fulfillment_orders WHERE order_id = ?",
            params![id.clone()],
        )
        .unwrap()
        .str("id");
    let g = transaction(&db, |db| capture_shipped(db, &fo, Utc::now())).unwrap();
    assert_eq!(g, Gate::Released);
    assert_eq!(captured(&db, &id), vec![total(&db, &id)]);
    assert_eq!(fin(&db, &id), "paid");
    // Shipping twice captures once.
    transaction(&db, |db| capture_shipped(db, &fo, Utc::now())).unwrap();
    assert_eq!(captured(&db, &id).len(), 1);
    // With capture at release, the shipment hook does nothing.
    put_settings(&db, &json!({"capture_at": "release"})).unwrap();
    transaction(&db, |db| capture_shipped(db, &fo, Utc::now())).unwrap();
    assert_eq!(captured(&db, &id).len(), 1);
}

#[test]
fn financial_status_derivation() {
    use FinancialStatus::*;
    let d = derive_financial;
    assert_eq!(d("none", 0, 0, 0, 0), None);
    assert_eq!(d("manual", 100, 0, 0, 0), Some(Authorized));
    assert_eq!(d("manual", 100, 40, 0, 0), Some(PartiallyPaid));
    assert_eq!(d("manual", 100, 40, 0, 60), Some(Paid));
    assert_eq!(d("manual", 100, 0, 0, 100), Some(Voided));
    assert_eq!(d("stripe", 100, 100, 30, 0), Some(PartiallyRefunded));
    assert_eq!(d("stripe", 100, 100, 100, 0), Some(Refunded));
    assert_eq!(d("prepaid", 100, 50, 0, 0), None);
    assert_eq!(d("prepaid", 100, 50, 60, 0), Some(PartiallyRefunded));
}
