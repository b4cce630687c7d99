//! Payments through the real components on tests/host against a local fake of
//! Stripe's PaymentIntents API: partial releases capture exactly what is
//! released (JPY, EUR, KWD), a timeout after Stripe captured is retried into
//! one capture, a decline holds the fulfillment order as an action item,
//! invoice numbers stay gap-free under 50 concurrent captures, refunds make
//! credit memos, cancelling voids, and bad input changes nothing.

use serde_json::{json, Value};
use waybill_host::RunningApp;
use waybill_scenarios::stripe::{FakeStripe, STRIPE_KEY};
use waybill_scenarios::*;

async fn app(stripe: &FakeStripe, extra: &[(&str, &str)]) -> RunningApp {
    let base = stripe.base();
    let mut vars = vec![
        ("stripe_api_base", base.as_str()),
        ("stripe_secret_key", STRIPE_KEY),
    ];
    vars.extend_from_slice(extra);
    let app = start_with(&vars).await;
    let r = write(
        &app,
        "PUT",
        "/api/facilities/berlin",
        &json!({"name": "Berlin DC", "type": "warehouse", "countries": ["DE"], "latitude": 52.52, "longitude": 13.40}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    for sku in ["MUG", "TEE"] {
        let r = write(
            &app,
            "PUT",
            &format!("/api/products/{sku}"),
            &json!({"name": sku, "backorderable": true}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.json);
    }
    app
}

async fn receive(app: &RunningApp, lines: Value) {
    let r = write(
        app,
        "POST",
        "/api/stock/receipts",
        // Each receipt its own delivery note: a reference is booked once per facility.
        &json!({"facility": "berlin", "reference": format!("PO-{}", next_reference()), "lines": lines}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
}

async fn place(app: &RunningApp, body: &Value) -> Value {
    let r = post_api(
        app,
        "/api/orders",
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    r.json
}

fn stripe_order(ext: &str, currency: &str, pi: &str, lines: Value, shipping: Value) -> Value {
    json!({
        "external_id": ext, "currency": currency, "placed_at": "2026-11-20T10:00:00Z",
        "customer": {"email": format!("{ext}@example.com"), "first_name": "Kim"},
        "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
        "lines": lines, "shipping_lines": [shipping],
        "financial_status": "authorized",
        "payment": {"gateway": "stripe", "reference": pi},
    })
}

fn fo_statuses(app: &RunningApp, id: &str) -> Vec<String> {
    app.sql(
        "default",
        &format!("SELECT status FROM fulfillment_orders WHERE order_id = '{id}' ORDER BY name"),
        &[],
    )
    .unwrap()
    .rows
    .iter()
    .map(|r| match &r[0] {
        waybill_host::SqlValue::Text(s) => s.clone(),
        o => panic!("{o:?}"),
    })
    .collect()
}

/// Minor units from a decimal string in a currency with `exp` decimals.
fn minor(s: &str, exp: u32) -> i64 {
    let (i, f) = s.split_once('.').unwrap_or((s, ""));
    let f = format!("{f:0<width$}", width = exp as usize);
    i.parse::<i64>().unwrap() * 10i64.pow(exp)
        + if exp == 0 {
            0
        } else {
            f.parse::<i64>().unwrap()
        }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_releases_capture_exactly_what_is_released_in_jpy_eur_and_kwd() {
    let stripe = FakeStripe::start().await;
    let app = app(&stripe, &[]).await;
    // (currency, decimals, MUG price, MUG discount, MUG tax, TEE price, TEE tax, shipping, shipping tax)
    let cases = [
        ("JPY", 0, "1001", "100", "301", "333", "67", "500", "50"),
        (
            "EUR", 2, "10.01", "1.00", "5.71", "3.33", "1.27", "4.99", "0.95",
        ),
        (
            "KWD", 3, "10.001", "1.000", "5.713", "3.333", "1.271", "1.250", "0.095",
        ),
    ];
    for (i, (cur, exp, mp, md, mt, tp, tt, sp, st)) in cases.into_iter().enumerate() {
        let m = |s: &str| minor(s, exp);
        let mug_net = 3 * m(mp) - m(md);
        let tee_net = 2 * m(tp);
        let total = mug_net + m(mt) + tee_net + m(tt) + m(sp) + m(st);
        let pi = format!("pi_{}", cur.to_lowercase());
        stripe.authorize(&pi, total, cur, true);
        // Two mugs in stock: the first release is 2 of 3 mugs; the tees wait.
        receive(&app, json!([{"sku": "MUG", "quantity": 2}])).await;
        let placed = place(
            &app,
            &stripe_order(
                &format!("cur-{cur}"),
                cur,
                &pi,
                json!([
                    {"sku": "MUG", "name": "Mug", "quantity": 3, "unit_price": mp, "discount": md, "tax": mt},
                    {"sku": "TEE", "name": "Tee", "quantity": 2, "unit_price": tp, "tax": tt},
                ]),
                json!({"method": "standard", "price": sp, "tax": st}),
            ),
        )
        .await;
        assert_eq!(placed["totals"]["total"]["minor"], total, "{cur}: {placed}");
        let id = placed["id"].as_str().unwrap().to_string();
        eventually("the first capture", || async {
            stripe.intent(&pi).captures.len() == 1
        })
        .await;
        eventually("the first release", || async {
            fo_statuses(&app, &id) == ["open"]
        })
        .await;
        let first = mug_net * 2 / 3 + m(mt) * 2 / 3 + m(sp) + m(st);
        assert_eq!(stripe.intent(&pi).captures, vec![first], "{cur}");
        let calls = stripe.calls(&format!("/v1/payment_intents/{pi}/capture"));
        assert!(
            calls[0].1.contains("final_capture=false"),
            "{cur}: more captures follow: {}",
            calls[0].1
        );
        let o = get(&app, &format!("/api/orders/{id}")).await.json;
        assert_eq!(o["financial_status"], "partially_paid", "{cur}");

        receive(
            &app,
            json!([{"sku": "MUG", "quantity": 1}, {"sku": "TEE", "quantity": 2}]),
        )
        .await;
        eventually("the second capture", || async {
            stripe.intent(&pi).captures.len() == 2
        })
        .await;
        eventually("the second release", || async {
            fo_statuses(&app, &id) == ["open", "open"]
        })
        .await;
        let intent = stripe.intent(&pi);
        assert_eq!(
            intent.captures.iter().sum::<i64>(),
            total,
            "{cur}: the captures add up to the order total"
        );
        assert_eq!(
            (intent.status.as_str(), intent.amount_received),
            ("succeeded", total),
            "{cur}"
        );
        let calls = stripe.calls(&format!("/v1/payment_intents/{pi}/capture"));
        assert!(
            !calls[1].1.contains("final_capture"),
            "{cur}: the last capture is final"
        );
        assert_ne!(
            calls[0].0, calls[1].0,
            "{cur}: one idempotency key per capture"
        );

        let pay = get(&app, &format!("/api/payments/orders/{id}")).await;
        assert_eq!(pay.status, 200);
        assert_eq!(pay.json["financial_status"], "paid", "{cur}");
        assert_eq!(pay.json["captured"]["minor"], total);
        let inv = get(&app, &format!("/api/invoices?order={id}")).await.json;
        let items = inv["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{cur}: an invoice per capture");
        assert_eq!(
            items
                .iter()
                .map(|d| d["total"]["minor"].as_i64().unwrap())
                .sum::<i64>(),
            total
        );
        assert_eq!(items[0]["number"], format!("INV-{:06}", 2 * i + 1));
        assert_eq!(items[0]["lines"][0]["quantity"], 2);
        assert_eq!(items[0]["shipping"]["minor"], m(sp));
        assert_eq!(items[1]["lines"].as_array().unwrap().len(), 2);
        let one = get(
            &app,
            &format!("/api/invoices/{}", items[1]["number"].as_str().unwrap()),
        )
        .await;
        assert_eq!(one.status, 200);
        assert_eq!(one.json["order_id"], id.as_str());
        assert!(one.json["fulfillment_order"]
            .as_str()
            .unwrap()
            .ends_with("-F2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timeout_after_stripe_captured_is_retried_into_one_capture() {
    let stripe = FakeStripe::start().await;
    let app = app(&stripe, &[("payment_timeout_ms", "300")]).await;
    let r = write(
        &app,
        "PUT",
        "/api/payments/settings",
        &json!({"retry_base_seconds": 0}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    receive(&app, json!([{"sku": "MUG", "quantity": 5}])).await;
    stripe.authorize("pi_slow", 2000 + 490, "EUR", true);
    // Stripe captures, but its answer comes after Waybill stopped waiting.
    stripe.with(|s| s.hang_next_capture_ms = 1500);
    let placed = place(
        &app,
        &stripe_order(
            "slow-1",
            "EUR",
            "pi_slow",
            json!([{"sku": "MUG", "name": "Mug", "quantity": 2, "unit_price": "10.00"}]),
            json!({"method": "standard", "price": "4.90"}),
        ),
    )
    .await;
    let id = placed["id"].as_str().unwrap().to_string();
    eventually("the first attempt timed out", || async {
        count(&app, &format!("SELECT COUNT(*) FROM payment_transactions WHERE order_id = '{id}' AND attempts = 1 AND error_code = 'transport'")) == 1
    })
    .await;
    assert_eq!(
        stripe.intent("pi_slow").captures,
        vec![2490],
        "Stripe did capture"
    );
    assert_eq!(
        fo_statuses(&app, &id),
        ["scheduled"],
        "not released while the outcome is unknown"
    );
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(o["lines"][0]["quantity"]["released"], 0);

    let r = post_api(&app, "/api/payments/sweep", &[], Vec::new()).await;
    assert_eq!(r.status, 200, "{}", r.json);
    eventually("the retry settled the capture", || async {
        fo_statuses(&app, &id) == ["open"]
    })
    .await;
    let calls = stripe.calls("/v1/payment_intents/pi_slow/capture");
    assert!(calls.len() >= 2, "retried: {calls:?}");
    assert!(
        calls.iter().all(|c| c.0 == calls[0].0),
        "the same Idempotency-Key every time"
    );
    assert_eq!(
        stripe.intent("pi_slow").captures,
        vec![2490],
        "one capture at Stripe"
    );
    assert_eq!(
        count(
            &app,
            &format!("SELECT COUNT(*) FROM invoices WHERE order_id = '{id}'")
        ),
        1
    );
    assert_eq!(
        count(&app, &format!("SELECT COUNT(*) FROM payment_transactions WHERE order_id = '{id}' AND status = 'succeeded'")),
        1
    );
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(
        (
            o["financial_status"].as_str(),
            o["lines"][0]["quantity"]["released"].as_i64()
        ),
        (Some("paid"), Some(2))
    );
    let ev = get(&app, &format!("/api/orders/{id}/events")).await.json;
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"payment.capture_retry") && kinds.contains(&"payment.captured"),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decline_holds_the_fulfillment_order_as_an_action_item() {
    let stripe = FakeStripe::start().await;
    let app = app(&stripe, &[]).await;
    receive(&app, json!([{"sku": "MUG", "quantity": 5}])).await;
    stripe.authorize("pi_declined", 1000, "EUR", false);
    stripe.with(|s| {
        s.intents.get_mut("pi_declined").unwrap().decline = Some("insufficient_funds".into())
    });
    let placed = place(
        &app,
        &stripe_order(
            "decl-1",
            "EUR",
            "pi_declined",
            json!([{"sku": "MUG", "name": "Mug", "quantity": 1, "unit_price": "10.00"}]),
            json!({"method": "standard", "price": "0.00"}),
        ),
    )
    .await;
    let id = placed["id"].as_str().unwrap().to_string();
    eventually("the decline", || async {
        fo_statuses(&app, &id) == ["on_hold"]
    })
    .await;
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(o["status"], "on_hold");
    assert_eq!(o["holds"][0]["reason"], "payment_failed");
    assert_eq!(
        o["lines"][0]["quantity"]["released"], 0,
        "nothing is released"
    );
    assert_eq!(o["financial_status"], "authorized");
    assert_eq!(count(&app, &format!("SELECT COUNT(*) FROM outbox WHERE topic = 'fulfillment_order.released' AND order_id = '{id}'")), 0);
    let list = get(&app, "/api/orders?hold_reason=payment_failed")
        .await
        .json;
    assert_eq!(list["orders"][0]["id"], id.as_str());
    let items = get(&app, "/api/payments/action-items").await.json;
    assert_eq!(items["items"][0]["order_id"], id.as_str());
    assert_eq!(items["items"][0]["error"]["code"], "insufficient_funds");
    assert!(items["items"][0]["fulfillment_order"]
        .as_str()
        .unwrap()
        .ends_with("-F1"));
    // The sweep does not retry a decline by itself.
    post_api(&app, "/api/payments/sweep", &[], Vec::new()).await;
    assert_eq!(stripe.calls("/capture").len(), 1);

    // The customer authorizes again; the operator retries with the new PaymentIntent.
    stripe.authorize("pi_second", 1000, "EUR", false);
    let r = write(
        &app,
        "POST",
        &format!("/api/payments/orders/{id}/retry"),
        &json!({"reference": "pi_second"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(fo_statuses(&app, &id), ["open"]);
    assert_eq!(stripe.intent("pi_second").captures, vec![1000]);
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(
        (o["status"].as_str(), o["financial_status"].as_str()),
        (Some("processing"), Some("paid"))
    );
    assert_eq!(
        get(&app, "/api/payments/action-items").await.json["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invoice_numbers_are_gap_free_under_50_concurrent_captures() {
    let stripe = FakeStripe::start().await;
    let app = app(&stripe, &[]).await;
    receive(&app, json!([{"sku": "MUG", "quantity": 100}])).await;
    for i in 0..50 {
        stripe.authorize(&format!("pi_c{i}"), 1000, "EUR", false);
    }
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let a = app.clone();
        tasks.push(tokio::spawn(async move {
            place(
                &a,
                &stripe_order(
                    &format!("conc-{i}"),
                    "EUR",
                    &format!("pi_c{i}"),
                    json!([{"sku": "MUG", "name": "Mug", "quantity": 1, "unit_price": "10.00"}]),
                    json!({"method": "standard", "price": "0.00"}),
                ),
            )
            .await
        }));
        // Sweeps race the chained workers for the same captures.
        if i % 10 == 0 {
            let a = app.clone();
            tasks.push(tokio::spawn(async move {
                post_api(&a, "/api/payments/sweep", &[], Vec::new())
                    .await
                    .json
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually("50 captures settled", || async {
        count(&app, "SELECT COUNT(*) FROM payment_transactions WHERE kind = 'capture' AND status = 'succeeded'") == 50
    })
    .await;
    assert_eq!(count(&app, "SELECT COUNT(*) FROM invoices"), 50);
    assert_eq!(count(&app, "SELECT MIN(seq) FROM invoices"), 1);
    assert_eq!(count(&app, "SELECT MAX(seq) FROM invoices"), 50, "no gaps");
    assert_eq!(
        count(&app, "SELECT COUNT(DISTINCT number) FROM invoices"),
        50
    );
    assert_eq!(
        count(&app, "SELECT COUNT(DISTINCT transaction_id) FROM invoices"),
        50
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM invoices WHERE number <> printf('INV-%06d', seq)"
        ),
        0
    );
    let captures: usize = (0..50)
        .map(|i| stripe.intent(&format!("pi_c{i}")).captures.len())
        .sum();
    assert_eq!(captures, 50, "each PaymentIntent captured once");
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM fulfillment_orders WHERE status = 'open'"
        ),
        50
    );
    let page = get(&app, "/api/invoices?limit=20").await.json;
    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    assert_eq!(page["next_after"], "INV-000020");
    let next = get(&app, "/api/invoices?limit=50&after=INV-000020")
        .await
        .json;
    assert_eq!(next["items"][0]["number"], "INV-000021");
    assert_eq!(next["items"].as_array().unwrap().len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_make_credit_memos_and_cancelling_voids_the_rest() {
    let stripe = FakeStripe::start().await;
    let app = app(&stripe, &[]).await;
    receive(&app, json!([{"sku": "MUG", "quantity": 3}])).await;
    stripe.authorize("pi_ref", 3 * 1000 + 300 + 500, "EUR", true);
    let placed = place(
        &app,
        &stripe_order(
            "ref-1",
            "EUR",
            "pi_ref",
            json!([{"sku": "MUG", "name": "Mug", "quantity": 3, "unit_price": "10.00", "tax": "3.00"}]),
            json!({"method": "standard", "price": "5.00"}),
        ),
    )
    .await;
    let id = placed["id"].as_str().unwrap().to_string();
    eventually("captured", || async { fo_statuses(&app, &id) == ["open"] }).await;
    let r = write(
        &app,
        "POST",
        &format!("/api/payments/orders/{id}/refunds"),
        &json!({"lines": [{"line_no": 1, "quantity": 1}], "reason": "arrived broken"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["refund"]["status"], "succeeded");
    assert_eq!(
        r.json["refund"]["amount"]["minor"], 1100,
        "one mug and its tax, no shipping"
    );
    assert_eq!(
        stripe.with(|s| s.refunds.clone()),
        vec![("pi_ref".to_string(), 1100)]
    );
    assert_eq!(r.json["payment"]["financial_status"], "partially_refunded");
    let memo = get(&app, "/api/credit-memos/CM-000001").await;
    assert_eq!(memo.status, 200, "{}", memo.json);
    assert_eq!(
        (
            memo.json["total"]["minor"].as_i64(),
            memo.json["reason"].as_str()
        ),
        (Some(1100), Some("arrived broken"))
    );
    assert_eq!(
        get(&app, &format!("/api/credit-memos?order={id}"))
            .await
            .json["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A Shopify order authorized through the shop (manual ledger): two of three
    // units have no stock and are backordered; the shop cancels the order.
    receive(&app, json!([{"sku": "MUG", "quantity": 1}])).await;
    let mut v: Value = serde_json::from_slice(&fixture("shopify/orders-create.json")).unwrap();
    v["id"] = json!(777001);
    v["shipping_address"]["country_code"] = json!("DE");
    v["shipping_address"]["country"] = json!("Germany");
    let skus = ["MUG", "TEE", "TEE"];
    for (i, l) in v["line_items"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        l["sku"] = json!(skus[i]);
    }
    let body = serde_json::to_vec(&v).unwrap();
    assert_eq!(
        shopify(&app, "orders/create", "ev-1", &body).await.status,
        200
    );
    let key = "shopify:777001";
    eventually("routed", || async {
        get(&app, &format!("/api/orders/{key}")).await.json["status"] == "processing"
    })
    .await;
    // The shop reports the authorization (Shopify's Transaction resource).
    let txn = |id: i64, kind: &str, amount: &str| {
        serde_json::to_vec(&json!({
            "id": id, "order_id": 777001, "kind": kind, "gateway": "bogus", "status": "success",
            "message": null, "created_at": "2026-11-20T11:57:11-04:00", "test": false,
            "authorization": "authorization-key", "location_id": null, "user_id": null, "parent_id": null,
            "processed_at": "2026-11-20T11:57:11-04:00", "device_id": null, "error_code": null,
            "source_name": "web", "receipt": {"testcase": true, "authorization": "123456"},
            "amount": amount, "currency": "USD", "payment_id": "#1001.1",
            "manual_payment_gateway": false, "authorization_expires_at": "2099-11-27T11:57:11-04:00",
            "admin_graphql_api_id": format!("gid://shopify/OrderTransaction/{id}")
        }))
        .unwrap()
    };
    let r = shopify(
        &app,
        "order_transactions/create",
        "ev-t1",
        &txn(389404469, "authorization", "598.94"),
    )
    .await;
    assert_eq!(
        (r.status, r.json["result"].as_str()),
        (200, Some("authorization_recorded")),
        "{}",
        r.json
    );
    let r = shopify(
        &app,
        "order_transactions/create",
        "ev-t1",
        &txn(389404469, "authorization", "598.94"),
    )
    .await;
    assert_eq!(r.json["result"], "duplicate_delivery");
    let pay = get(&app, &format!("/api/payments/orders/{key}")).await.json;
    assert_eq!(pay["gateway"], "manual");
    assert_eq!(pay["reference"], "authorization-key");
    assert_eq!(
        pay["authorization_expires_at"],
        "2099-11-27T15:57:11.000000Z"
    );
    let captured = pay["captured"]["minor"].as_i64().unwrap();
    let authorized = pay["authorized"]["minor"].as_i64().unwrap();
    assert!(captured > 0 && captured < authorized, "{pay}");
    // A refund made in Shopify is booked with a credit memo, once.
    let r = shopify(
        &app,
        "order_transactions/create",
        "ev-t2",
        &txn(389404470, "refund", "10.00"),
    )
    .await;
    assert_eq!(r.json["result"], "refunded", "{}", r.json);
    let r = shopify(
        &app,
        "order_transactions/create",
        "ev-t3",
        &txn(389404470, "refund", "10.00"),
    )
    .await;
    assert_eq!(
        r.json["result"], "duplicate",
        "the same transaction under another event id"
    );
    let pay = get(&app, &format!("/api/payments/orders/{key}")).await.json;
    assert_eq!(
        (
            pay["refunded"]["minor"].as_i64(),
            pay["financial_status"].as_str()
        ),
        (Some(1000), Some("partially_refunded"))
    );
    assert_eq!(pay["credit_memos"][0]["number"], "CM-000002");
    // The shop cancels: the released mug (not picked yet) is cancelled too, the rest of
    // what was captured goes back, and the unreleased rest of the authorization is voided.
    v["cancelled_at"] = json!("2026-11-21T10:00:00Z");
    let body = serde_json::to_vec(&v).unwrap();
    assert_eq!(
        shopify(&app, "orders/cancelled", "ev-2", &body)
            .await
            .status,
        200
    );
    let pay = get(&app, &format!("/api/payments/orders/{key}")).await.json;
    assert_eq!(
        pay["voided"]["minor"],
        authorized - captured,
        "the unreleased rest is voided: {pay}"
    );
    assert_eq!(
        pay["refunded"]["minor"], captured,
        "everything captured came back, once: {pay}"
    );
    assert_eq!(pay["financial_status"], "refunded");
    let o = get(&app, &format!("/api/orders/{key}")).await.json;
    assert_eq!(o["status"], "cancelled", "{o}");
    // The shop's own refund of the same money afterwards books nothing twice.
    let r = shopify(
        &app,
        "order_transactions/create",
        "ev-t6",
        &txn(389404471, "refund", "5.00"),
    )
    .await;
    assert_eq!(r.json["result"], "recorded", "{}", r.json);
    assert_eq!(
        get(&app, &format!("/api/payments/orders/{key}")).await.json["refunded"]["minor"],
        captured
    );
    // A transaction for an order Waybill does not know is acknowledged, not failed.
    let mut other: Value = serde_json::from_slice(&txn(5, "authorization", "1.00")).unwrap();
    other["order_id"] = json!(123);
    let r = shopify(
        &app,
        "order_transactions/create",
        "ev-t4",
        &serde_json::to_vec(&other).unwrap(),
    )
    .await;
    assert_eq!(
        (r.status, r.json["result"].as_str()),
        (200, Some("ignored"))
    );
    let r = shopify(
        &app,
        "order_transactions/create",
        "ev-t5",
        &txn(6, "bogus", "1.00"),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_payment_requests_answer_problems_and_change_nothing() {
    let stripe = FakeStripe::start().await;
    let app = app(&stripe, &[]).await;
    receive(&app, json!([{"sku": "MUG", "quantity": 1}])).await;
    stripe.authorize("pi_bad", 1000, "EUR", false);
    let placed = place(
        &app,
        &stripe_order(
            "bad-1",
            "EUR",
            "pi_bad",
            json!([{"sku": "MUG", "name": "Mug", "quantity": 1, "unit_price": "10.00"}]),
            json!({"method": "standard", "price": "0.00"}),
        ),
    )
    .await;
    let id = placed["id"].as_str().unwrap().to_string();
    eventually("captured", || async { fo_statuses(&app, &id) == ["open"] }).await;
    let snapshot = || {
        [
            "payment_transactions",
            "invoices",
            "credit_memos",
            "payments",
            "settings",
            "order_holds",
        ]
        .map(|t| count(&app, &format!("SELECT COUNT(*) FROM {t}")))
    };
    let before = snapshot();
    let refunds = format!("/api/payments/orders/{id}/refunds");
    for (method, path, body, status) in [
        (
            "POST",
            refunds.as_str(),
            json!({"lines": [{"line_no": 1, "quantity": 2}]}),
            422,
        ),
        (
            "POST",
            refunds.as_str(),
            json!({"lines": [{"line_no": 9, "quantity": 1}]}),
            422,
        ),
        (
            "POST",
            refunds.as_str(),
            json!({"lines": [{"line_no": 1, "quantity": 0}]}),
            422,
        ),
        ("POST", refunds.as_str(), json!({"amount_minor": 1001}), 422),
        ("POST", refunds.as_str(), json!({"amount_minor": -5}), 422),
        ("POST", refunds.as_str(), json!({}), 422),
        (
            "POST",
            refunds.as_str(),
            json!({"lines": [], "bogus": 1}),
            422,
        ),
        (
            "POST",
            "/api/payments/orders/WB-999999/refunds",
            json!({"amount_minor": 1}),
            404,
        ),
        (
            "PUT",
            "/api/payments/settings",
            json!({"capture_at": "never"}),
            422,
        ),
        (
            "PUT",
            "/api/payments/settings",
            json!({"retry_base_seconds": -1}),
            422,
        ),
        (
            "PUT",
            "/api/payments/settings",
            json!({"colour": "red"}),
            422,
        ),
        (
            "POST",
            &format!("/api/payments/orders/{id}/retry"),
            json!({"reference": 5}),
            422,
        ),
        (
            "POST",
            &format!("/api/payments/orders/{id}/retry"),
            json!({"authorization_expires_at": "soon"}),
            422,
        ),
    ] {
        let r = write(&app, method, path, &body).await;
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.json);
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{path}"
        );
    }
    let r = post_api(
        &app,
        &refunds,
        &[("content-type", "application/json")],
        "{not json",
    )
    .await;
    assert_eq!(r.status, 400);
    for path in [
        "/api/invoices/INV-999999",
        "/api/credit-memos/CM-1",
        "/api/payments/orders/nope",
    ] {
        assert_eq!(get(&app, path).await.status, 404, "{path}");
    }
    assert_eq!(get(&app, "/api/invoices?limit=0").await.status, 422);
    assert_eq!(get(&app, "/api/invoices?after=x").await.status, 422);
    let r = send(&app, "GET", "/api/invoices", &[], Vec::new()).await;
    assert_eq!(r.status, 401);
    let r = send(
        &app,
        "POST",
        &refunds,
        &[
            ("authorization", &format!("Bearer {READ_TOKEN}")),
            ("content-type", "application/json"),
        ],
        json!({"amount_minor": 1}).to_string(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(snapshot(), before, "nothing changed");
    assert_eq!(stripe.calls("/v1/refunds").len(), 0);
    // A pending order has no payment to refund.
    let pending = place(
        &app,
        &json!({"external_id": "pend-1", "currency": "EUR",
                "shipping_address": {"line1": "x", "city": "Berlin", "country_code": "DE"},
                "lines": [{"sku": "TEE", "quantity": 1, "unit_price": "1.00"}]}),
    )
    .await;
    let r = write(
        &app,
        "POST",
        &format!(
            "/api/payments/orders/{}/refunds",
            pending["id"].as_str().unwrap()
        ),
        &json!({"amount_minor": 1}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.json);
}

/// A release whose share of the payment is zero (a free unit whose order's
/// shipping was taken with the first capture) is booked without a gateway call:
/// Stripe refuses a zero capture, which would have held the order as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_capture_is_never_sent() {
    let stripe = FakeStripe::start().await;
    let app = app(&stripe, &[]).await;
    let total = 1000 + 490;
    stripe.authorize("pi_free", total, "EUR", true);
    receive(&app, json!([{"sku": "MUG", "quantity": 1}])).await;
    let placed = place(
        &app,
        &stripe_order(
            "free-1",
            "EUR",
            "pi_free",
            json!([
                {"sku": "MUG", "name": "Mug", "quantity": 1, "unit_price": "10.00"},
                {"sku": "TEE", "name": "Gift tee", "quantity": 1, "unit_price": "0.00"},
            ]),
            json!({"method": "standard", "price": "4.90"}),
        ),
    )
    .await;
    let id = placed["id"].as_str().unwrap().to_string();
    eventually("the first capture", || async {
        stripe.intent("pi_free").captures.len() == 1
    })
    .await;
    assert_eq!(stripe.intent("pi_free").captures, vec![total]);
    // The gift arrives: its release owes nothing.
    receive(&app, json!([{"sku": "TEE", "quantity": 1}])).await;
    eventually("the second release", || async {
        fo_statuses(&app, &id) == ["open", "open"]
    })
    .await;
    let calls = stripe.calls("/v1/payment_intents/pi_free/capture");
    assert_eq!(calls.len(), 1, "no second call: {calls:?}");
    assert!(!calls.iter().any(|c| c.1.contains("amount_to_capture=0")));
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert!(o["holds"].as_array().unwrap().is_empty(), "{o}");
    assert_eq!(
        count(
            &app,
            &format!("SELECT COUNT(*) FROM payment_transactions WHERE order_id = '{id}' AND kind = 'capture' AND status = 'succeeded'")
        ),
        2
    );
    app.stop().await;
}

/// A capture still open when Stripe has forgotten its idempotency key (24 h)
/// is never sent under that key again: Stripe's state is read first. Captured
/// there → booked with no second call; nothing there → sent under a new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_past_the_key_lifetime_is_reconciled_before_it_is_sent_again() {
    let stripe = FakeStripe::start().await;
    let app = app(&stripe, &[("payment_timeout_ms", "300")]).await;
    let r = write(
        &app,
        "PUT",
        "/api/payments/settings",
        &json!({"retry_base_seconds": 0}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    receive(&app, json!([{"sku": "MUG", "quantity": 5}])).await;
    let order = |ext: &str, pi: &str| {
        stripe_order(
            ext,
            "EUR",
            pi,
            json!([{"sku": "MUG", "name": "Mug", "quantity": 2, "unit_price": "10.00"}]),
            json!({"method": "standard", "price": "4.90"}),
        )
    };
    let age_and_forget = |id: &str| {
        app.sql(
            "default",
            &format!("UPDATE payment_transactions SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-25 hours'), next_attempt_at = created_at WHERE order_id = '{id}'"),
            &[],
        )
        .unwrap();
        stripe.forget_keys();
    };

    // 1. Stripe captured, but the answer never came back.
    stripe.authorize("pi_took", 2490, "EUR", true);
    stripe.with(|s| s.hang_next_capture_ms = 1500);
    let took = place(&app, &order("recon-1", "pi_took")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually("the first attempt timed out", || async {
        count(&app, &format!("SELECT COUNT(*) FROM payment_transactions WHERE order_id = '{took}' AND error_code = 'transport'")) == 1
    })
    .await;
    assert_eq!(stripe.intent("pi_took").captures, vec![2490]);
    age_and_forget(&took);
    let r = post_api(&app, "/api/payments/sweep", &[], Vec::new()).await;
    assert_eq!(r.status, 200, "{}", r.json);
    eventually("booked from Stripe's state", || async {
        fo_statuses(&app, &took) == ["open"]
    })
    .await;
    assert_eq!(
        stripe.calls("/v1/payment_intents/pi_took/capture").len(),
        1,
        "no second capture call"
    );
    assert_eq!(stripe.intent("pi_took").captures, vec![2490]);

    // 2. Stripe failed before capturing anything.
    stripe.authorize("pi_none", 2490, "EUR", true);
    stripe.with(|s| s.fail_next_capture = true);
    let none = place(&app, &order("recon-2", "pi_none")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually("the first attempt failed", || async {
        stripe.calls("/v1/payment_intents/pi_none/capture").len() == 1
            && count(&app, &format!("SELECT COUNT(*) FROM payment_transactions WHERE order_id = '{none}' AND attempts = 1 AND lease_until IS NULL")) == 1
    })
    .await;
    assert!(stripe.intent("pi_none").captures.is_empty());
    age_and_forget(&none);
    let r = post_api(&app, "/api/payments/sweep", &[], Vec::new()).await;
    assert_eq!(r.status, 200, "{}", r.json);
    eventually("captured under a new key", || async {
        fo_statuses(&app, &none) == ["open"]
    })
    .await;
    let calls = stripe.calls("/v1/payment_intents/pi_none/capture");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_ne!(
        calls[0].0, calls[1].0,
        "a new Idempotency-Key after reconciling"
    );
    assert_eq!(stripe.intent("pi_none").captures, vec![2490]);
    for id in [&took, &none] {
        let ev = get(&app, &format!("/api/orders/{id}/events")).await.json;
        assert!(
            ev.to_string().contains("payment.capture_reconciled"),
            "{ev}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn licence_keys_wait_for_their_capture_and_the_last_capture_is_final() {
    let stripe = FakeStripe::start().await;
    let app = app(&stripe, &[]).await;
    receive(&app, json!([{"sku": "MUG", "quantity": 5}])).await;
    let r = write(
        &app,
        "PUT",
        "/api/products/KEY-PRO",
        &json!({"name": "Pro licence", "digital": true}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let r = write(
        &app,
        "POST",
        "/api/license-keys/KEY-PRO",
        &json!({"keys": ["PRO-1", "PRO-2", "PRO-3"]}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    // The card is declined: neither the mug nor the keys may go out.
    stripe.authorize("pi_keys_1", 5990, "EUR", true);
    stripe.with(|s| {
        s.intents.get_mut("pi_keys_1").unwrap().decline = Some("insufficient_funds".into())
    });
    let placed = place(
        &app,
        &stripe_order(
            "keys-1",
            "EUR",
            "pi_keys_1",
            json!([{"sku": "MUG", "name": "Mug", "quantity": 1, "unit_price": "10.00"},
                   {"sku": "KEY-PRO", "name": "Pro licence", "quantity": 2, "unit_price": "24.95"}]),
            json!({"method": "standard", "price": "0.00"}),
        ),
    )
    .await;
    let id = placed["id"].as_str().unwrap().to_string();
    eventually("both captures declined", || async {
        count(&app, &format!("SELECT COUNT(*) FROM payment_transactions WHERE order_id = '{id}' AND status = 'failed'")) == 2
    })
    .await;
    let delivered = |app: &RunningApp| {
        count(
            app,
            &format!("SELECT COUNT(*) FROM outbox WHERE topic = 'license.assigned' AND order_id = '{id}'"),
        )
    };
    assert_eq!(delivered(&app), 0, "no key before the money");
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(o["holds"][0]["reason"], "payment_failed", "{o}");
    let keys = &o["lines"][1]["quantity"];
    assert_eq!(
        (keys["allocated"].as_i64(), keys["shipped"].as_i64()),
        (Some(2), Some(0)),
        "{o}"
    );
    let pool = get(&app, "/api/license-keys/KEY-PRO").await.json;
    assert_eq!(
        (
            pool["available"].as_i64(),
            pool["held_for_capture"].as_i64()
        ),
        (Some(1), Some(2)),
        "the keys stay held for the order: {pool}"
    );

    // A new authorization: the mug and the keys are captured, the keys' capture
    // (the last) is final, and only then do the keys reach the customer.
    stripe.authorize("pi_keys_2", 5990, "EUR", true);
    let r = write(
        &app,
        "POST",
        &format!("/api/payments/orders/{id}/retry"),
        &json!({"reference": "pi_keys_2"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let pi = stripe.intent("pi_keys_2");
    assert_eq!(pi.captures, vec![1000, 4990]);
    assert_eq!(pi.status, "succeeded", "the last capture is final");
    let bodies: Vec<String> = stripe
        .calls("/pi_keys_2/capture")
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert!(bodies[0].contains("final_capture=false"), "{bodies:?}");
    assert!(!bodies[1].contains("final_capture"), "{bodies:?}");
    assert_eq!(delivered(&app), 1);
    let row = app
        .sql(
            "default",
            &format!(
                "SELECT payload FROM outbox WHERE topic = 'license.assigned' AND order_id = '{id}'"
            ),
            &[],
        )
        .unwrap();
    let payload: Value = match &row.rows[0][0] {
        waybill_host::SqlValue::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(payload["license_keys"], json!(["PRO-1", "PRO-2"]));
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    let keys = &o["lines"][1]["quantity"];
    assert_eq!(
        (
            keys["allocated"].as_i64(),
            keys["shipped"].as_i64(),
            keys["delivered"].as_i64()
        ),
        (Some(0), Some(2), Some(2)),
        "{o}"
    );
    assert_eq!(o["financial_status"], "paid", "{o}");
    assert_eq!(
        count(
            &app,
            &format!("SELECT SUM(amount_minor) FROM invoices WHERE order_id = '{id}'")
        ),
        5990
    );

    // A key held for a capture still open goes back to the pool when the
    // line is cancelled, and nothing is captured for it.
    stripe.authorize("pi_keys_3", 2495, "EUR", true);
    stripe.with(|s| s.intents.get_mut("pi_keys_3").unwrap().decline = Some("do_not_honor".into()));
    let placed = place(
        &app,
        &stripe_order(
            "keys-2",
            "EUR",
            "pi_keys_3",
            json!([{"sku": "KEY-PRO", "name": "Pro licence", "quantity": 1, "unit_price": "24.95"}]),
            json!({"method": "standard", "price": "0.00"}),
        ),
    )
    .await;
    let id2 = placed["id"].as_str().unwrap().to_string();
    eventually("the decline", || async {
        count(&app, &format!("SELECT COUNT(*) FROM payment_transactions WHERE order_id = '{id2}' AND status = 'failed'")) == 1
    })
    .await;
    assert_eq!(
        get(&app, "/api/license-keys/KEY-PRO").await.json["available"],
        0
    );
    let r = write(
        &app,
        "POST",
        &format!("/api/orders/{id2}/cancel"),
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let pool = get(&app, "/api/license-keys/KEY-PRO").await.json;
    assert_eq!(
        (
            pool["available"].as_i64(),
            pool["held_for_capture"].as_i64()
        ),
        (Some(1), Some(0)),
        "{pool}"
    );
    assert_eq!(
        count(&app, &format!("SELECT COUNT(*) FROM payment_transactions WHERE order_id = '{id2}' AND kind = 'capture' AND status IN ('pending', 'succeeded')")),
        0
    );
    assert_eq!(stripe.intent("pi_keys_3").captures, Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_multicapture_a_split_order_is_captured_once_at_the_end() {
    let stripe = FakeStripe::start().await;
    let app = app(&stripe, &[]).await;
    let tx_statuses = |app: &RunningApp, id: &str| -> Vec<String> {
        app.sql(
            "default",
            &format!("SELECT status FROM payment_transactions WHERE order_id = '{id}' AND kind = 'capture' ORDER BY created_at, id"),
            &[],
        )
        .unwrap()
        .rows
        .iter()
        .map(|r| match &r[0] {
            waybill_host::SqlValue::Text(s) => s.clone(),
            o => panic!("{o:?}"),
        })
        .collect()
    };
    // One mug of two in stock, on an authorization without multicapture: the
    // first part is released, its capture deferred.
    let first_part = |ext: &'static str, pi: &'static str| {
        let (app, stripe) = (&app, &stripe);
        async move {
            receive(app, json!([{"sku": "MUG", "quantity": 1}])).await;
            stripe.authorize(pi, 2000, "EUR", false);
            let placed = place(
                app,
                &stripe_order(
                    ext,
                    "EUR",
                    pi,
                    json!([{"sku": "MUG", "name": "Mug", "quantity": 2, "unit_price": "10.00"}]),
                    json!({"method": "standard", "price": "0.00"}),
                ),
            )
            .await;
            let id = placed["id"].as_str().unwrap().to_string();
            eventually("the first part released", || async {
                fo_statuses(app, &id) == ["open"]
            })
            .await;
            assert_eq!(tx_statuses(app, &id), ["deferred"]);
            id
        }
    };
    let id = first_part("once-1", "pi_once").await;
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(o["holds"], json!([]), "no payment hold: {o}");
    assert_eq!(o["financial_status"], "authorized");
    assert!(stripe.intent("pi_once").captures.is_empty());
    assert_eq!(
        stripe.calls("/pi_once/capture").len(),
        1,
        "one refused partial capture, nothing sent again"
    );
    // The second mug arrives: the last part captures both, once, as final.
    receive(&app, json!([{"sku": "MUG", "quantity": 1}])).await;
    eventually("the last capture", || async {
        stripe.intent("pi_once").status == "succeeded"
    })
    .await;
    assert_eq!(stripe.intent("pi_once").captures, vec![2000]);
    let last = stripe.calls("/pi_once/capture").pop().unwrap().1;
    assert!(!last.contains("final_capture"), "{last}");
    eventually("both parts booked", || async {
        tx_statuses(&app, &id) == ["succeeded", "succeeded"]
    })
    .await;
    assert_eq!(fo_statuses(&app, &id), ["open", "open"]);
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT COUNT(*) FROM invoices WHERE order_id = '{id}' AND amount_minor = 1000"
            )
        ),
        2,
        "an invoice per part"
    );
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(o["financial_status"], "paid", "{o}");

    // The rest is cancelled instead: what was released is captured at once.
    let id2 = first_part("once-2", "pi_once_2").await;
    let r = write(
        &app,
        "POST",
        &format!("/api/orders/{id2}/cancel"),
        &json!({"lines": [{"line_no": 1, "quantity": 1}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    post_api(&app, "/api/payments/sweep", &[], Vec::new()).await;
    eventually("the released part captured", || async {
        stripe.intent("pi_once_2").status == "succeeded"
    })
    .await;
    assert_eq!(stripe.intent("pi_once_2").captures, vec![1000]);
    assert_eq!(tx_statuses(&app, &id2), ["succeeded"]);
}
