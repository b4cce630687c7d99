//! Intake and order queries through the compiled intake and orders components
//! on tests/host, with payloads in the platforms' documented shapes.

use serde_json::{json, Value};
use waybill_scenarios::*;

fn amount(v: &Value) -> &str {
    v["amount"].as_str().unwrap_or("<missing>")
}

fn assert_problem(r: &Reply, status: u16) {
    assert_eq!(r.status, status, "{}", r.json);
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{}",
        r.json
    );
    assert_eq!(r.json["status"], json!(status));
    assert!(
        r.json["type"].as_str().unwrap().starts_with("https://"),
        "{}",
        r.json
    );
    assert!(!r.json["detail"].as_str().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopify_order_becomes_the_canonical_order_with_exact_money() {
    let app = start().await;
    let r = shopify(
        &app,
        "orders/create",
        "evt-1",
        &fixture("shopify/orders-create.json"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["result"], "created");
    let o = get(&app, "/api/orders/shopify:450789469").await;
    assert_eq!(o.status, 200, "{}", o.json);
    let o = o.json;
    assert!(o["number"].as_str().unwrap().starts_with("WB-"));
    assert_eq!(o["external_number"], "#1001");
    assert_eq!(o["channel"], "shopify");
    assert_eq!(o["currency"], "USD");
    assert_eq!(amount(&o["totals"]["subtotal"]), "597.00");
    assert_eq!(amount(&o["totals"]["discount"]), "10.00");
    assert_eq!(amount(&o["totals"]["tax"]), "11.94");
    assert_eq!(amount(&o["totals"]["shipping"]), "0.00");
    assert_eq!(amount(&o["totals"]["total"]), "598.94");
    assert_eq!(o["totals"]["total"]["minor"], 59894);
    let lines = o["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["sku"], "IPOD2008GREEN");
    assert_eq!(amount(&lines[0]["unit_price"]), "199.00");
    assert_eq!(amount(&lines[0]["discount"]), "3.34");
    assert_eq!(amount(&lines[1]["discount"]), "3.33");
    assert_eq!(amount(&lines[0]["tax"]), "3.98");
    assert_eq!(lines[0]["quantity"]["ordered"], 1);
    assert_eq!(lines[0]["quantity"]["open"], 1);
    assert_eq!(o["status"], "received");
    assert_eq!(o["fulfillment_status"], "unfulfilled");
    assert_eq!(o["financial_status"], "authorized");
    assert_eq!(o["holds"], json!([]));
    assert_eq!(o["customer"]["email"], "bob.norman@mail.example.com");
    assert_eq!(o["shipping_address"]["country_code"], "US");
    assert_eq!(o["shipping_address"]["region"], "KY");
    assert_eq!(o["shipping_address"]["postal_code"], "40202");
    assert_eq!(o["shipping_lines"][0]["method"], "Free Shipping");
    assert_eq!(o["tags"], json!(["vip", "engraved"]));
    assert_eq!(o["placed_at"], "2008-01-10T16:00:00.000000Z");
    // The same order by id and by number.
    let id = o["id"].as_str().unwrap();
    assert_eq!(
        get(&app, &format!("/api/orders/{id}")).await.json["id"],
        o["id"]
    );
    assert_eq!(
        get(
            &app,
            &format!("/api/orders/{}", o["number"].as_str().unwrap())
        )
        .await
        .json["id"],
        o["id"]
    );
    // The timeline and the confirmation in the outbox, written with the order.
    let ev = get(&app, &format!("/api/orders/{id}/events")).await.json;
    assert_eq!(ev["events"][0]["kind"], "order.received");
    assert_eq!(ev["events"][0]["actor"], "source:shopify");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM outbox WHERE topic = 'order.received'"
        ),
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn woocommerce_order_maps_with_tax_outside_line_totals() {
    let app = start().await;
    // WooCommerce confirms a new webhook with an unsigned form ping.
    let ping = send(
        &app,
        "POST",
        "/webhooks/woocommerce",
        &[("content-type", "application/x-www-form-urlencoded")],
        "webhook_id=12",
    )
    .await;
    assert_eq!(ping.status, 200);
    assert_eq!(count(&app, "SELECT count(*) FROM orders"), 0);
    let r = woocommerce(
        &app,
        "order.created",
        "d-1",
        &fixture("woocommerce/order.json"),
    )
    .await;
    assert_eq!(r.json["result"], "created", "{}", r.json);
    let o = get(&app, "/api/orders/woocommerce:727").await.json;
    assert_eq!(amount(&o["totals"]["subtotal"]), "18.00");
    assert_eq!(amount(&o["totals"]["shipping"]), "10.00");
    assert_eq!(amount(&o["totals"]["tax"]), "1.35");
    assert_eq!(amount(&o["totals"]["total"]), "29.35");
    assert_eq!(o["financial_status"], "paid");
    assert_eq!(o["lines"][0]["quantity"]["ordered"], 2);
    assert_eq!(amount(&o["lines"][0]["unit_price"]), "3.00");
    assert_eq!(o["shipping_lines"][0]["method"], "flat_rate");
    assert_eq!(o["customer"]["email"], "john.doe@example.com");
    assert_eq!(o["placed_at"], "2017-03-22T19:28:02.000000Z");
    assert_eq!(o["holds"], json!([]));
    // Deleting it in WooCommerce cancels it here.
    let del = woocommerce(&app, "order.deleted", "d-2", br#"{"id":727}"#).await;
    assert_eq!(del.json["result"], "cancelled", "{}", del.json);
    let o = get(&app, "/api/orders/woocommerce:727").await.json;
    assert_eq!(o["status"], "cancelled");
    assert_eq!(o["lines"][0]["quantity"]["cancelled"], 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn woocommerce_pending_payment_holds_and_missing_sku_needs_review() {
    let app = start().await;
    let mut v: Value = serde_json::from_slice(&fixture("woocommerce/order.json")).unwrap();
    v["id"] = json!(728);
    v["status"] = json!("on-hold");
    v["line_items"][0]["sku"] = json!("");
    let body = serde_json::to_vec(&v).unwrap();
    let r = woocommerce(&app, "order.created", "d-9", &body).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let o = get(&app, "/api/orders/woocommerce:728").await.json;
    assert_eq!(o["status"], "on_hold");
    let reasons: Vec<&str> = o["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"awaiting_payment"), "{reasons:?}");
    assert!(reasons.contains(&"manual_review"), "{reasons:?}");
    assert_eq!(o["lines"][0]["sku"], "woo-product-93");
    // Payment arrives: the update releases the awaiting-payment hold.
    v["status"] = json!("processing");
    let r = woocommerce(
        &app,
        "order.updated",
        "d-10",
        &serde_json::to_vec(&v).unwrap(),
    )
    .await;
    assert_eq!(r.json["result"], "updated", "{}", r.json);
    let o = get(&app, "/api/orders/woocommerce:728").await.json;
    let reasons: Vec<&str> = o["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, vec!["manual_review"]);
    assert_eq!(o["financial_status"], "paid");
    let list = get(&app, "/api/orders?hold_reason=manual_review")
        .await
        .json;
    assert_eq!(list["orders"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commercetools_order_created_message_maps_gross_prices() {
    let app = start().await;
    let body = fixture("commercetools/order-created.json");
    let secret_header = [
        ("content-type", "application/json"),
        ("x-waybill-secret", CT_SECRET),
    ];
    let r = send(
        &app,
        "POST",
        "/webhooks/commercetools",
        &secret_header,
        body.clone(),
    )
    .await;
    assert_eq!(r.json["result"], "created", "{}", r.json);
    let o = get(
        &app,
        "/api/orders/commercetools:9e3d2b1a-6c4f-4f1e-8a7b-2d5c9e0f1a23",
    )
    .await
    .json;
    assert_eq!(o["external_number"], "CT-10001");
    assert_eq!(o["currency"], "EUR");
    assert_eq!(o["totals"]["taxes_included"], true);
    assert_eq!(amount(&o["totals"]["subtotal"]), "30.00");
    assert_eq!(amount(&o["totals"]["shipping"]), "4.90");
    assert_eq!(amount(&o["totals"]["tax"]), "5.57");
    assert_eq!(amount(&o["totals"]["total"]), "34.90");
    assert_eq!(o["lines"][0]["sku"], "SOCK-WOOL-M");
    assert_eq!(o["lines"][0]["name"], "Wool Socks");
    assert_eq!(o["shipping_address"]["line1"], "Heidestraße 17");
    assert_eq!(o["customer"]["email"], "erika.mustermann@example.de");
    assert_eq!(o["holds"], json!([]));
    // Redelivery of the same message id changes nothing.
    let again = send(
        &app,
        "POST",
        "/webhooks/commercetools",
        &secret_header,
        body.clone(),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["result"], "already_received");
    // The same message wrapped in a Google Pub/Sub push envelope.
    use base64::Engine as _;
    let wrapped = json!({"message": {"data": base64::engine::general_purpose::STANDARD.encode(&body), "messageId": "1"}, "subscription": "projects/p/subscriptions/s"});
    let r = send(
        &app,
        "POST",
        "/webhooks/commercetools",
        &secret_header,
        wrapped.to_string(),
    )
    .await;
    assert_eq!(r.json["result"], "already_received", "{}", r.json);
    assert_eq!(r.json["order_id"], again.json["order_id"]);
    // A wrong secret is refused and stores nothing.
    let bad = send(
        &app,
        "POST",
        "/webhooks/commercetools",
        &[("x-waybill-secret", "nope")],
        body,
    )
    .await;
    assert_problem(&bad, 401);
    assert_eq!(count(&app, "SELECT count(*) FROM orders"), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_order_in_jpy_and_idempotency_key_semantics() {
    let app = start().await;
    let body = fixture("api/order-jpy.json");
    let key = [
        ("content-type", "application/json"),
        ("idempotency-key", "k-123"),
    ];
    let first = post_api(&app, "/api/orders", &key, body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.json);
    assert!(first
        .header("location")
        .unwrap()
        .starts_with("/api/orders/"));
    let t = &first.json["totals"];
    assert_eq!(
        (
            amount(&t["subtotal"]),
            amount(&t["discount"]),
            amount(&t["shipping"]),
            amount(&t["tax"]),
            amount(&t["total"])
        ),
        ("8100", "300", "800", "794", "9394")
    );
    assert_eq!(first.json["financial_status"], "authorized");
    // Same key, same body: the stored response, replayed.
    let again = post_api(&app, "/api/orders", &key, body.clone()).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json["id"], first.json["id"]);
    // Same key, another body: 422.
    let mut other: Value = serde_json::from_slice(&body).unwrap();
    other["note"] = json!("changed");
    let conflict = post_api(&app, "/api/orders", &key, other.to_string()).await;
    assert_problem(&conflict, 422);
    // No key, same external id: 409 naming the existing order.
    let dup = post_api(
        &app,
        "/api/orders",
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await;
    assert_problem(&dup, 409);
    assert_eq!(count(&app, "SELECT count(*) FROM orders"), 1);
    // 20 concurrent requests with one new key create one order.
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["external_id"] = json!("CRM-JP-2");
    let body2 = v.to_string();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = app.url("/api/orders");
        let b = body2.clone();
        tasks.push(tokio::spawn(async move {
            waybill_host::client::request(
                "POST",
                &url,
                &[
                    ("authorization", "Bearer test-write-token"),
                    ("idempotency-key", "k-conc"),
                ],
                b,
            )
            .await
            .unwrap()
            .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM orders WHERE external_id = 'CRM-JP-2'"
        ),
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_deliveries_make_exactly_one_order() {
    let app = start().await;
    let body = fixture("shopify/orders-create.json");
    // Same event id, 20 times at once.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = app.url("/webhooks/shopify");
        let b = body.clone();
        let sig = sign(&b);
        tasks.push(tokio::spawn(async move {
            waybill_host::client::request(
                "POST",
                &url,
                &[
                    ("x-shopify-topic", "orders/create"),
                    ("x-shopify-hmac-sha256", &sig),
                    ("x-shopify-event-id", "same-event"),
                ],
                b,
            )
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    // Different event ids for the same Shopify order, 20 at once.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = app.url("/webhooks/shopify");
        let b = body.clone();
        let sig = sign(&b);
        tasks.push(tokio::spawn(async move {
            waybill_host::client::request(
                "POST",
                &url,
                &[
                    ("x-shopify-topic", "orders/create"),
                    ("x-shopify-hmac-sha256", &sig),
                    ("x-shopify-event-id", &format!("event-{i}")),
                ],
                b,
            )
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, 200);
    }
    assert_eq!(count(&app, "SELECT count(*) FROM orders"), 1);
    // The order's other rows are written when the routing worker takes it up,
    // after the answers (a read through the API would take it up at once).
    eventually("the order taken up", || async {
        count(&app, "SELECT count(*) FROM orders WHERE intake IS NULL") == 1
    })
    .await;
    assert_eq!(count(&app, "SELECT count(*) FROM order_lines"), 3);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM order_events WHERE kind = 'order.received'"
        ),
        1
    );
    assert_eq!(count(&app, "SELECT count(*) FROM outbox"), 1);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM webhook_receipts WHERE delivery_id = 'same-event'"
        ),
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_signatures_answer_401_and_store_nothing() {
    let app = start().await;
    let body = fixture("shopify/orders-create.json");
    let wrong = waybill::kernel::signature::base64_hmac(b"another-secret", &body);
    for headers in [
        vec![
            ("x-shopify-topic", "orders/create"),
            ("x-shopify-hmac-sha256", wrong.as_str()),
        ],
        vec![("x-shopify-topic", "orders/create")],
        vec![
            ("x-shopify-topic", "orders/create"),
            ("x-shopify-hmac-sha256", "garbage"),
        ],
    ] {
        let r = send(&app, "POST", "/webhooks/shopify", &headers, body.clone()).await;
        assert_problem(&r, 401);
    }
    // A valid signature over a different body does not verify either.
    let r = send(
        &app,
        "POST",
        "/webhooks/shopify",
        &[
            ("x-shopify-topic", "orders/create"),
            ("x-shopify-hmac-sha256", &sign(b"{}")),
        ],
        body.clone(),
    )
    .await;
    assert_problem(&r, 401);
    let woo = fixture("woocommerce/order.json");
    let r = send(
        &app,
        "POST",
        "/webhooks/woocommerce",
        &[
            ("x-wc-webhook-topic", "order.created"),
            ("x-wc-webhook-signature", &wrong),
        ],
        woo,
    )
    .await;
    assert_problem(&r, 401);
    assert_eq!(count(&app, "SELECT count(*) FROM orders"), 0);
    assert_eq!(count(&app, "SELECT count(*) FROM webhook_receipts"), 0);
    assert_eq!(count(&app, "SELECT count(*) FROM outbox"), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_matrix_answers_problem_json_and_stores_nothing() {
    let app = start().await;
    let base: Value = serde_json::from_slice(&fixture("api/order-jpy.json")).unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        v.to_string()
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("malformed JSON", "{\"external_id\": ".to_string(), 400, ""),
        ("empty body", String::new(), 400, ""),
        (
            "wrong type",
            with(&|v| v["lines"][0]["quantity"] = json!("three")),
            422,
            "/lines/0/quantity",
        ),
        (
            "fractional quantity",
            with(&|v| v["lines"][0]["quantity"] = json!(1.5)),
            422,
            "/lines/0/quantity",
        ),
        (
            "negative quantity",
            with(&|v| v["lines"][0]["quantity"] = json!(-1)),
            422,
            "/lines/0/quantity",
        ),
        (
            "zero quantity",
            with(&|v| v["lines"][0]["quantity"] = json!(0)),
            422,
            "/lines/0/quantity",
        ),
        (
            "unknown currency",
            with(&|v| v["currency"] = json!("ABC")),
            422,
            "/currency",
        ),
        (
            "too many decimals",
            with(&|v| v["lines"][0]["unit_price"] = json!("12.5")),
            422,
            "/lines/0/unit_price",
        ),
        ("no lines", with(&|v| v["lines"] = json!([])), 422, "/lines"),
        (
            "lines missing",
            with(&|v| {
                v.as_object_mut().unwrap().remove("lines");
            }),
            422,
            "/lines",
        ),
        (
            "bad email",
            with(&|v| v["customer"]["email"] = json!("not-an-email")),
            422,
            "/customer/email",
        ),
        (
            "bad country",
            with(&|v| v["shipping_address"]["country_code"] = json!("Japan")),
            422,
            "/shipping_address/country_code",
        ),
        (
            "discount above subtotal",
            with(&|v| v["lines"][1]["discount"] = json!("99999")),
            422,
            "/lines/1/discount",
        ),
        ("not an object", "[1,2]".to_string(), 422, ""),
    ];
    for (name, body, status, pointer) in cases {
        let r = post_api(
            &app,
            "/api/orders",
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_problem(&r, status);
        if !pointer.is_empty() {
            let errors = r.json["errors"].as_array().cloned().unwrap_or_default();
            let ptrs: Vec<&str> = errors
                .iter()
                .filter_map(|e| e["pointer"].as_str())
                .collect();
            assert!(ptrs.contains(&pointer), "{name}: {ptrs:?} in {}", r.json);
        }
    }
    // Over 1 MiB.
    let huge = format!("{{\"note\": \"{}\"}}", "x".repeat(1024 * 1024 + 10));
    assert_problem(
        &post_api(
            &app,
            "/api/orders",
            &[("content-type", "application/json")],
            huge,
        )
        .await,
        413,
    );
    // Wrong media type; no token; read-only token.
    assert_problem(
        &post_api(
            &app,
            "/api/orders",
            &[("content-type", "text/plain")],
            base.to_string(),
        )
        .await,
        415,
    );
    assert_problem(
        &send(&app, "POST", "/api/orders", &[], base.to_string()).await,
        401,
    );
    assert_problem(
        &send(
            &app,
            "POST",
            "/api/orders",
            &[("authorization", &format!("Bearer {READ_TOKEN}"))],
            base.to_string(),
        )
        .await,
        403,
    );
    // A Shopify payload that is not an order.
    let junk = br#"{"id": 1, "currency": "USD", "line_items": "nope"}"#;
    assert_problem(&shopify(&app, "orders/create", "junk-1", junk).await, 422);
    assert_problem(
        &shopify(&app, "orders/create", "junk-2", b"{not json").await,
        400,
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders"), 0);
    assert_eq!(count(&app, "SELECT count(*) FROM order_lines"), 0);
    assert_eq!(count(&app, "SELECT count(*) FROM outbox"), 0);
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_receipts"),
        0,
        "a rejected delivery is not recorded, so its retry is processed"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_batch_with_one_bad_order_stores_the_good_ones() {
    let app = start().await;
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<orders>
  <order>
    <external_id>CRM-100</external_id><currency>KWD</currency><channel>crm</channel>
    <customer><email>a@example.com</email></customer>
    <shipping_address><line1>Block 1</line1><city>Kuwait City</city><country_code>KW</country_code></shipping_address>
    <lines><line><sku>DATES-1KG</sku><name>Dates</name><quantity>3</quantity><unit_price>1.005</unit_price><tax>0.150</tax></line></lines>
  </order>
  <order>
    <external_id>CRM-101</external_id><currency>KWD</currency>
    <shipping_address><line1>Block 2</line1><city>Kuwait City</city><country_code>KW</country_code></shipping_address>
    <lines><line><sku>DATES-1KG</sku><quantity>-2</quantity><unit_price>1.005</unit_price></line></lines>
  </order>
  <order>
    <external_id>CRM-102</external_id><currency>KWD</currency>
    <shipping_address><line1>Block 3</line1><city>Kuwait City</city><country_code>KW</country_code></shipping_address>
    <lines><line><sku>TEA</sku><quantity>1</quantity><unit_price>2.500</unit_price></line></lines>
  </order>
</orders>"#;
    let r = post_api(
        &app,
        "/api/orders/batch",
        &[("content-type", "application/xml")],
        xml,
    )
    .await;
    assert_eq!(r.status, 207, "{}", r.json);
    assert_eq!(r.json["accepted"], 2);
    assert_eq!(r.json["rejected"], 1);
    let bad = &r.json["results"][1];
    assert_eq!(bad["status"], 422);
    assert_eq!(
        bad["problem"]["errors"][0]["pointer"],
        "/orders/1/lines/0/quantity"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders"), 2);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM orders WHERE external_id = 'CRM-101'"
        ),
        0
    );
    let o = get(&app, "/api/orders/api:CRM-100").await.json;
    assert_eq!(amount(&o["totals"]["total"]), "3.165");
    // Sending the batch again: the good ones exist, nothing is duplicated.
    let again = post_api(
        &app,
        "/api/orders/batch",
        &[("content-type", "application/xml")],
        xml,
    )
    .await;
    assert_eq!(again.json["results"][0]["result"], "exists");
    assert_eq!(count(&app, "SELECT count(*) FROM orders"), 2);
    // A batch where every order is bad: 422 problem+json, nothing stored.
    let all_bad = "<orders><order><external_id>X</external_id><currency>KWD</currency><lines/></order></orders>";
    assert_problem(
        &post_api(
            &app,
            "/api/orders/batch",
            &[("content-type", "application/xml")],
            all_bad,
        )
        .await,
        422,
    );
    // Malformed XML: 400.
    assert_problem(
        &post_api(
            &app,
            "/api/orders/batch",
            &[("content-type", "application/xml")],
            "<orders><order>",
        )
        .await,
        400,
    );
    // The JSON form of a batch.
    let json_batch = json!([{"external_id": "CRM-200", "currency": "EUR", "shipping_address": {"line1": "x", "city": "y", "country_code": "DE"},
        "lines": [{"sku": "A", "quantity": 1, "unit_price": "1.00"}]}]);
    let r = post_api(
        &app,
        "/api/orders/batch",
        &[("content-type", "application/json")],
        json_batch.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(count(&app, "SELECT count(*) FROM orders"), 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopify_updates_before_release_apply_and_cancellation_cancels() {
    let app = start().await;
    let mut v: Value = serde_json::from_slice(&fixture("shopify/orders-create.json")).unwrap();
    shopify(
        &app,
        "orders/create",
        "e-1",
        &serde_json::to_vec(&v).unwrap(),
    )
    .await;
    v["line_items"][2]["quantity"] = json!(2);
    v["total_price"] = json!("809.88");
    v["line_items"][2]["tax_lines"][0]["price"] = json!("15.92");
    v["total_tax"] = json!("23.88");
    let r = shopify(
        &app,
        "orders/updated",
        "e-2",
        &serde_json::to_vec(&v).unwrap(),
    )
    .await;
    assert_eq!(r.json["result"], "updated", "{}", r.json);
    let o = get(&app, "/api/orders/shopify:450789469").await.json;
    assert_eq!(o["lines"][2]["quantity"]["ordered"], 2);
    assert_eq!(amount(&o["totals"]["total"]), "809.88");
    assert_eq!(o["holds"], json!([]));
    // The same content again under a new event id: nothing changes.
    let r = shopify(
        &app,
        "orders/updated",
        "e-3",
        &serde_json::to_vec(&v).unwrap(),
    )
    .await;
    assert_eq!(r.json["result"], "unchanged");
    v["cancelled_at"] = json!("2008-01-11T11:00:00-05:00");
    v["cancel_reason"] = json!("customer");
    let r = shopify(
        &app,
        "orders/cancelled",
        "e-4",
        &serde_json::to_vec(&v).unwrap(),
    )
    .await;
    assert_eq!(r.json["result"], "cancelled", "{}", r.json);
    let o = get(&app, "/api/orders/shopify:450789469").await.json;
    assert_eq!(o["status"], "cancelled");
    assert!(o["cancelled_at"].is_string());
    assert_eq!(o["lines"][2]["quantity"]["cancelled"], 2);
    let kinds: Vec<String> = get(&app, "/api/orders/shopify:450789469/events").await.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "order.received",
            "order.updated",
            "order.cancelled",
            "payment.voided"
        ]
    );
    // Nothing was captured: the whole authorization is given back.
    assert_eq!(o["financial_status"], "voided");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM outbox WHERE topic = 'order.cancelled'"
        ),
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_list_filters_search_and_cursor_pagination() {
    let app = start().await;
    let base: Value = serde_json::from_slice(&fixture("api/order-jpy.json")).unwrap();
    for i in 0..5 {
        let mut v = base.clone();
        v["external_id"] = json!(format!("L-{i}"));
        v["customer"]["email"] = json!(if i % 2 == 0 {
            "even@example.com"
        } else {
            "odd@example.com"
        });
        if i == 4 {
            v["lines"][0]["sku"] = json!("SPECIAL-SKU");
            v["channel"] = json!("b2b");
        }
        let r = post_api(
            &app,
            "/api/orders",
            &[("content-type", "application/json")],
            v.to_string(),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.json);
    }
    let all = get(&app, "/api/orders").await; // via intake, forwarded to the orders component
    assert_eq!(all.status, 200, "{}", all.json);
    assert_eq!(all.json["orders"].as_array().unwrap().len(), 5);
    assert_eq!(all.json["orders"][0]["external_id"], "L-4", "newest first");
    assert_eq!(
        get(&app, "/api/orders?email=EVEN@example.com").await.json["orders"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        get(&app, "/api/orders?sku=SPECIAL-SKU").await.json["orders"][0]["external_id"],
        "L-4"
    );
    assert_eq!(
        get(&app, "/api/orders?channel=b2b").await.json["orders"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        get(&app, "/api/orders?q=odd%40").await.json["orders"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        get(&app, "/api/orders?q=yamada").await.json["orders"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        get(&app, "/api/orders?status=received").await.json["orders"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        get(&app, "/api/orders?status=cancelled").await.json["orders"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        get(
            &app,
            "/api/orders?created_from=2000-01-01&created_to=2999-01-01"
        )
        .await
        .json["orders"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        get(&app, "/api/orders?created_from=2999-01-01").await.json["orders"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // Pages of 2: every order exactly once.
    let mut seen = Vec::new();
    let mut path = "/api/orders?limit=2".to_string();
    loop {
        let page = get(&app, &path).await.json;
        assert!(page["orders"].is_array(), "{path}: {page}");
        for o in page["orders"].as_array().unwrap() {
            seen.push(o["external_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/orders/?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, vec!["L-4", "L-3", "L-2", "L-1", "L-0"]);
    // Bad filters are the client's mistake.
    assert_problem(&get(&app, "/api/orders?status=lost").await, 400);
    assert_problem(&get(&app, "/api/orders?limit=0").await, 400);
    assert_problem(&get(&app, "/api/orders?colour=red").await, 400);
    assert_problem(&get(&app, "/api/orders?cursor=%%%").await, 400);
    assert_problem(&get(&app, "/api/orders?created_from=yesterday").await, 400);
    assert_problem(&get(&app, "/api/orders/WB-1").await, 404);
    assert_problem(
        &send(&app, "GET", "/api/orders", &[], Vec::new()).await,
        401,
    );
    assert_problem(
        &send(
            &app,
            "GET",
            "/api/orders/x",
            &[("authorization", "Bearer wrong-token-1")],
            Vec::new(),
        )
        .await,
        401,
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_update_after_release_is_recorded_and_held_not_applied() {
    let app = start().await;
    let mut v: Value = serde_json::from_slice(&fixture("shopify/orders-create.json")).unwrap();
    shopify(
        &app,
        "orders/create",
        "r-1",
        &serde_json::to_vec(&v).unwrap(),
    )
    .await;
    // The order as the API shows it (its lines written, if the worker has not yet).
    assert_eq!(
        get(&app, "/api/orders/shopify:450789469").await.json["lines"][0]["quantity"]["ordered"],
        1
    );
    // Simulate a release of the first line (the routing component's work).
    app.sql(
        "default",
        "UPDATE order_lines SET qty_released = 1 WHERE line_no = 1",
        &[],
    )
    .unwrap();
    // Payment state, tags and notes may change after release: applied, no hold.
    let mut paid = v.clone();
    paid["financial_status"] = json!("paid");
    paid["tags"] = json!("vip, repeat");
    paid["note"] = json!("gift wrap");
    let r = shopify(
        &app,
        "orders/updated",
        "r-1b",
        &serde_json::to_vec(&paid).unwrap(),
    )
    .await;
    assert_eq!(r.json["result"], "updated", "{}", r.json);
    let o = get(&app, "/api/orders/shopify:450789469").await.json;
    assert_eq!(o["financial_status"], "paid");
    assert_eq!(o["note"], "gift wrap");
    assert!(o["holds"].as_array().unwrap().is_empty(), "{o}");
    // A change to what is being fulfilled is not applied: recorded and held.
    v["line_items"][0]["quantity"] = json!(5);
    let r = shopify(
        &app,
        "orders/updated",
        "r-2",
        &serde_json::to_vec(&v).unwrap(),
    )
    .await;
    assert_eq!(r.json["result"], "flagged", "{}", r.json);
    let o = get(&app, "/api/orders/shopify:450789469").await.json;
    assert_eq!(o["lines"][0]["quantity"]["ordered"], 1, "not applied");
    assert_eq!(o["status"], "on_hold");
    assert_eq!(o["holds"][0]["reason"], "manual_review");
    let kinds: Vec<String> = get(&app, "/api/orders/shopify:450789469/events").await.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.contains(&"order.source_update_after_release".to_string()),
        "{kinds:?}"
    );
    // A cancellation at the source now cancels only what was not released.
    let cancel = shopify(
        &app,
        "orders/cancelled",
        "r-3",
        &serde_json::to_vec(&v).unwrap(),
    )
    .await;
    assert_eq!(cancel.json["result"], "cancelled");
    let o = get(&app, "/api/orders/shopify:450789469").await.json;
    assert_eq!(
        o["lines"][0]["quantity"]["cancelled"], 0,
        "the released unit stays"
    );
    assert_eq!(o["lines"][1]["quantity"]["cancelled"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_idempotency_keys_and_old_receipts_are_purged_hourly() {
    let app = start().await;
    shopify(
        &app,
        "orders/create",
        "old-1",
        &fixture("shopify/orders-create.json"),
    )
    .await;
    let body = fixture("api/order-jpy.json");
    post_api(
        &app,
        "/api/orders",
        &[
            ("content-type", "application/json"),
            ("idempotency-key", "k-old"),
        ],
        body,
    )
    .await;
    // The webhook's receipt is written when the routing worker takes the
    // order up, after the answer: age it once it is there.
    eventually("the webhook's order taken up", || async {
        count(&app, "SELECT count(*) FROM orders WHERE intake IS NOT NULL") == 0
    })
    .await;
    app.sql(
        "default",
        "UPDATE idempotency_keys SET expires_at = '2000-01-01T00:00:00.000000Z'",
        &[],
    )
    .unwrap();
    app.sql(
        "default",
        "UPDATE webhook_receipts SET received_at = '2000-01-01T00:00:00.000000Z'",
        &[],
    )
    .unwrap();
    app.fire_cron("housekeeping-cron").await.unwrap();
    assert_eq!(count(&app, "SELECT count(*) FROM idempotency_keys"), 0);
    assert_eq!(count(&app, "SELECT count(*) FROM webhook_receipts"), 0);
    assert_eq!(
        count(&app, "SELECT count(*) FROM orders"),
        2,
        "orders are never purged"
    );
    app.stop().await;
}
