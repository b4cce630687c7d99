//! Returns (RMA) through the real components on tests/host: a shipped order's
//! units come back in good condition (restocked, refunded exactly) or damaged
//! (refunded, not restocked), a return received without a refund, and bad
//! requests that change nothing.

use serde_json::{json, Value};
use waybill_host::RunningApp;
use waybill_scenarios::*;

async fn shipped(app: &RunningApp) -> (String, String) {
    for (path, body) in [
        (
            "/api/facilities/fc-berlin",
            json!({"name": "Berlin FC", "type": "fulfillment_center", "countries": ["DE"],
            "latitude": 52.5, "longitude": 13.4, "secret_variable": "fc_secret_a"}),
        ),
        ("/api/products/MUG", json!({"name": "Mug"})),
    ] {
        let r = write(app, "PUT", path, &body).await;
        assert_eq!(r.status, 201, "{}", r.json);
    }
    let r = write(
        app,
        "POST",
        "/api/stock/receipts",
        &json!({"facility": "fc-berlin", "lines": [{"sku": "MUG", "quantity": 10}]}),
    )
    .await;
    assert_eq!(r.status, 201);
    let body = json!({"external_id": "ret-1", "currency": "EUR", "financial_status": "paid",
        "customer": {"email": "ret@example.com"},
        "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
        "lines": [{"sku": "MUG", "name": "Mug", "quantity": 3, "unit_price": "10.00", "tax": "5.70"}],
        "shipping_lines": [{"method": "standard", "price": "4.90"}]});
    let r = post_api(
        app,
        "/api/orders",
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let (id, number) = (
        r.json["id"].as_str().unwrap().to_string(),
        r.json["number"].as_str().unwrap().to_string(),
    );
    eventually("released", || async {
        count(app, &format!("SELECT COUNT(*) FROM fulfillment_orders WHERE order_id = '{id}' AND status = 'open'")) == 1
    })
    .await;
    let raw = json!({"order_number": number, "tracking_number": "1ZRET"}).to_string();
    let sig = center_signature(
        FC_SECRET,
        chrono::Utc::now().timestamp(),
        "/callbacks/fc/fc-berlin/shipments",
        &raw,
    );
    let r = send(
        app,
        "POST",
        "/callbacks/fc/fc-berlin/shipments",
        &[
            ("content-type", "application/json"),
            ("waybill-signature", &sig),
        ],
        raw,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    (id, number)
}

fn stock(app: &RunningApp) -> i64 {
    count(
        app,
        "SELECT on_hand FROM stock WHERE sku = 'MUG' AND facility_id = 'fc-berlin'",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn returns_restock_good_units_and_refund_exactly_what_came_back() {
    let app = start_with(&[("fc_secret_a", FC_SECRET)]).await;
    let (id, number) = shipped(&app).await;
    assert_eq!(stock(&app), 7);

    let r = write(&app, "POST", &format!("/api/orders/{number}/returns"),
        &json!({"lines": [{"line_no": 1, "quantity": 2, "reason": "wrong colour"}], "resolution": "refund"})).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let rma = r.json["number"].as_str().unwrap().to_string();
    assert_eq!(rma, "RMA-000001");
    let r = write(
        &app,
        "POST",
        &format!("/api/returns/{rma}/approve"),
        &json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["return_label"]["to"]["facility"].as_str()),
        (200, Some("fc-berlin")),
        "{}",
        r.json
    );
    let r = write(&app, "POST", &format!("/api/returns/{rma}/receive"), &json!({"lines": [
        {"line_no": 1, "quantity": 1, "condition": "good"}, {"line_no": 1, "quantity": 1, "condition": "damaged"}]})).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["status"], "received");
    // 2 of 3 mugs: ⌊3000·2/3⌋ + ⌊570·2/3⌋ = 2380; no shipping.
    assert_eq!(r.json["refund"]["amount"]["minor"], 2380, "{}", r.json);
    assert_eq!(r.json["refund"]["status"], "succeeded");
    assert_eq!(
        stock(&app),
        8,
        "the good mug is back in stock, the damaged one is not"
    );
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(
        (
            o["fulfillment_status"].as_str(),
            o["financial_status"].as_str()
        ),
        (Some("partially_returned"), Some("partially_refunded"))
    );
    assert_eq!(o["lines"][0]["quantity"]["returned"], 2);
    let pay = get(&app, &format!("/api/payments/orders/{id}")).await.json;
    assert_eq!(pay["credit_memos"][0]["total"]["minor"], 2380);

    // The last mug comes back under resolution none: received, restocked, no refund.
    let r = write(
        &app,
        "POST",
        &format!("/api/orders/{id}/returns"),
        &json!({"lines": [{"line_no": 1, "quantity": 1}], "resolution": "none"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let second = r.json["id"].as_str().unwrap().to_string();
    assert_eq!(
        write(
            &app,
            "POST",
            &format!("/api/returns/{second}/approve"),
            &json!({})
        )
        .await
        .status,
        200
    );
    let r = write(
        &app,
        "POST",
        &format!("/api/returns/{second}/receive"),
        &json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["refund"].clone()),
        (200, Value::Null),
        "{}",
        r.json
    );
    assert_eq!(stock(&app), 9);
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM credit_memos"),
        1,
        "no second refund"
    );
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(o["fulfillment_status"], "returned");
    let list = get(&app, &format!("/api/orders/{id}/returns")).await.json;
    assert_eq!(list["returns"].as_array().unwrap().len(), 2);
    let ev = get(&app, &format!("/api/orders/{id}/events"))
        .await
        .json
        .to_string();
    for k in ["return.requested", "return.approved", "return.received"] {
        assert!(ev.contains(k), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_returns_answer_problems_and_change_nothing() {
    let app = start_with(&[("fc_secret_a", FC_SECRET)]).await;
    let (id, _) = shipped(&app).await;
    let snap = || {
        [
            "returns",
            "return_lines",
            "payment_transactions",
            "stock_movements",
        ]
        .map(|t| count(&app, &format!("SELECT COUNT(*) FROM {t}")))
    };
    let before = snap();
    let path = format!("/api/orders/{id}/returns");
    for (body, status) in [
        (json!({"lines": [{"line_no": 1, "quantity": 4}]}), 422),
        (json!({"lines": [{"line_no": 7, "quantity": 1}]}), 422),
        (
            json!({"lines": [{"line_no": 1, "quantity": 1}], "resolution": "swap"}),
            422,
        ),
        (
            json!({"lines": [{"line_no": 1, "quantity": 1}], "colour": "red"}),
            422,
        ),
        (json!({}), 422),
    ] {
        let r = write(&app, "POST", &path, &body).await;
        assert_eq!(r.status, status, "{body}: {}", r.json);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    assert_eq!(
        post_api(
            &app,
            &path,
            &[("content-type", "application/json")],
            "{nope"
        )
        .await
        .status,
        400
    );
    assert_eq!(
        write(
            &app,
            "POST",
            "/api/orders/WB-999999/returns",
            &json!({"lines": [{"line_no": 1, "quantity": 1}]})
        )
        .await
        .status,
        404
    );
    assert_eq!(
        write(&app, "POST", "/api/returns/RMA-999999/receive", &json!({}))
            .await
            .status,
        404
    );
    let r = send(
        &app,
        "POST",
        &path,
        &[("authorization", &format!("Bearer {READ_TOKEN}"))],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(snap(), before, "nothing changed");
    // Receiving before approval is a conflict.
    let r = write(
        &app,
        "POST",
        &path,
        &json!({"lines": [{"line_no": 1, "quantity": 1}]}),
    )
    .await;
    let rma = r.json["number"].as_str().unwrap().to_string();
    assert_eq!(
        write(
            &app,
            "POST",
            &format!("/api/returns/{rma}/receive"),
            &json!({})
        )
        .await
        .status,
        409
    );
    assert_eq!(
        write(
            &app,
            "POST",
            &format!("/api/returns/{rma}/reject"),
            &json!({"reason": "outside the return window"})
        )
        .await
        .status,
        200
    );
    assert_eq!(
        write(
            &app,
            "POST",
            &format!("/api/returns/{rma}/approve"),
            &json!({})
        )
        .await
        .status,
        409
    );
    assert_eq!(
        get(&app, &format!("/api/returns/{rma}")).await.json["status"],
        "rejected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exchange_ships_the_replacement_and_charges_nothing_more() {
    let app = start_with(&[("fc_secret_a", FC_SECRET)]).await;
    let (id, number) = shipped(&app).await;
    let captured_before = count(
        &app,
        "SELECT COALESCE(SUM(amount_minor), 0) FROM payment_transactions WHERE kind = 'capture'",
    );
    let r = write(&app, "POST", &format!("/api/orders/{number}/returns"),
        &json!({"lines": [{"line_no": 1, "quantity": 1, "reason": "chipped"}], "resolution": "exchange"})).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let rma = r.json["number"].as_str().unwrap().to_string();
    assert_eq!(
        write(
            &app,
            "POST",
            &format!("/api/returns/{rma}/approve"),
            &json!({})
        )
        .await
        .status,
        200
    );
    let r = write(
        &app,
        "POST",
        &format!("/api/returns/{rma}/receive"),
        &json!({"lines": [{"line_no": 1, "quantity": 1, "condition": "damaged"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let rep = r.json["replacement_order_id"].as_str().unwrap().to_string();
    eventually("the replacement is released", || async {
        count(&app, &format!("SELECT COUNT(*) FROM fulfillment_orders WHERE order_id = '{rep}' AND status = 'open'")) == 1
    })
    .await;
    let o = get(&app, &format!("/api/orders/{rep}")).await.json;
    assert_eq!(o["totals"]["total"]["minor"], 0, "{o}");
    assert_eq!(o["external_number"], format!("{number}-X"));
    assert_eq!(o["lines"][0]["sku"], "MUG");
    assert_eq!(o["lines"][0]["quantity"]["released"], 1);
    assert_eq!(count(&app, "SELECT COALESCE(SUM(amount_minor), 0) FROM payment_transactions WHERE kind = 'capture'"), captured_before, "no new charge");
    assert_eq!(count(&app, &format!("SELECT COUNT(*) FROM payment_transactions WHERE order_id = '{id}' AND kind = 'refund'")), 0, "no refund");
    assert_eq!(
        stock(&app),
        7,
        "the damaged mug is not restocked; the replacement is reserved until it ships"
    );
    assert_eq!(
        count(&app, "SELECT reserved FROM stock WHERE sku = 'MUG'"),
        1
    );
}
