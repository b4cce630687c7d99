//! Order changes and cancellations through the real components on tests/host:
//! an address change before release is applied and routed, after release it is
//! refused with 409; cancelling lines of a partly released order gives back
//! stock and reduces the authorization and the capture exactly (in-house and
//! at an external center that accepts the cancellation request); the order
//! API answers "where is my order" in one call; bad requests change nothing.

use serde_json::{json, Value};
use waybill::kernel::signature;
use waybill_host::RunningApp;
use waybill_scenarios::*;

async fn place(app: &RunningApp, ext: &str, lines: Value) -> (String, String) {
    let body = json!({"external_id": ext, "currency": "EUR", "financial_status": "authorized",
        "customer": {"email": format!("{ext}@example.com")},
        "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
        "lines": lines, "shipping_lines": [{"method": "standard", "price": "4.90"}]});
    let r = post_api(
        app,
        "/api/orders",
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let id = r.json["id"].as_str().unwrap().to_string();
    eventually("routed", || async {
        count(
            app,
            &format!("SELECT COUNT(*) FROM routing_decisions WHERE order_id = '{id}'"),
        ) > 0
    })
    .await;
    (id, r.json["number"].as_str().unwrap().to_string())
}

fn payment(app: &RunningApp, id: &str) -> (i64, i64, i64, i64) {
    let q = |c: &str| {
        count(
            app,
            &format!("SELECT {c} FROM payments WHERE order_id = '{id}'"),
        )
    };
    (
        q("authorized_minor"),
        q("captured_minor"),
        q("refunded_minor"),
        q("voided_minor"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_address_change_is_routed_before_release_and_refused_after() {
    let app = start().await;
    put_ok(&app, "/api/facilities/berlin", json!({"name": "Berlin", "type": "warehouse", "countries": ["DE"], "latitude": 52.5, "longitude": 13.4})).await;
    put_ok(&app, "/api/facilities/vienna", json!({"name": "Vienna", "type": "warehouse", "countries": ["AT"], "latitude": 48.2, "longitude": 16.37})).await;
    put_ok(
        &app,
        "/api/products/MUG",
        json!({"name": "Mug", "backorderable": true}),
    )
    .await;
    let (id, _) = place(
        &app,
        "move-1",
        json!([{"sku": "MUG", "quantity": 1, "unit_price": "10.00"}]),
    )
    .await;
    put_ok(
        &app,
        "/api/fulfillment/rates",
        json!({"zones": [{"country": "AT", "postal_prefix": "", "zone": "at"}],
               "rates": [{"carrier": "post-at", "service": "express", "zone": "at", "max_weight_grams": 5000, "price": "6.90", "currency": "EUR"}]}),
    )
    .await;
    let r = send(&app, "PATCH", &format!("/api/orders/{id}"),
        &[("authorization", &format!("Bearer {WRITE_TOKEN}")), ("content-type", "application/json")],
        json!({"shipping_address": {"line1": "Ring 1", "city": "Wien", "postal_code": "1010", "country_code": "AT"}, "shipping_method": "express"}).to_string()).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["shipping_address"]["city"], "Wien");
    assert_eq!(
        r.json["change"]["changed"],
        json!(["shipping_address", "shipping_method", "shipping_price"])
    );
    // Express to Austria costs 2.00 more than the authorization: re-priced from
    // the rate table, the order waits for the difference.
    assert_eq!(
        r.json["shipping_lines"][0]["price"]["minor"], 690,
        "{}",
        r.json
    );
    assert_eq!(r.json["shipping_lines"][0]["title"], "express");
    assert_eq!(r.json["totals"]["total"]["minor"], 1690);
    assert_eq!(
        r.json["change"]["payment"]["awaiting_authorization_minor"], 200,
        "{}",
        r.json
    );
    assert_eq!(
        r.json["holds"][0]["reason"], "awaiting_payment",
        "{}",
        r.json
    );
    receive_stock(&app, "berlin", "MUG", 5).await;
    receive_stock(&app, "vienna", "MUG", 5).await;
    assert_eq!(
        count(&app, &format!("SELECT COUNT(*) FROM fulfillment_orders WHERE order_id = '{id}' AND status = 'open'")),
        0,
        "nothing is released before the difference is authorized"
    );
    let r = send(
        &app,
        "POST",
        &format!("/api/payments/orders/{id}/retry"),
        &[
            ("authorization", &format!("Bearer {WRITE_TOKEN}")),
            ("content-type", "application/json"),
        ],
        json!({"amount_minor": 1690}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    eventually("released to Vienna", || async {
        count(&app, &format!("SELECT COUNT(*) FROM fulfillment_orders WHERE order_id = '{id}' AND facility_id = 'vienna' AND status = 'open'")) == 1
    })
    .await;
    let before = count(&app, "SELECT COUNT(*) FROM order_events");
    let r = send(&app, "PATCH", &format!("/api/orders/{id}"),
        &[("authorization", &format!("Bearer {WRITE_TOKEN}")), ("content-type", "application/json")],
        json!({"shipping_address": {"line1": "Hauptplatz 1", "city": "Graz", "country_code": "AT"}}).to_string()).await;
    assert_eq!(r.status, 409, "{}", r.json);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(
        r.json["detail"].as_str().unwrap().contains("after release"),
        "{}",
        r.json
    );
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM order_events"),
        before,
        "nothing changed"
    );
    // Where is my order: one call.
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(o["fulfillment_orders"][0]["facility"], "vienna");
    assert_eq!(o["payment"]["captured"]["minor"], 1690);
    // Released, not shipped yet: one fulfillment order with the unit, nothing
    // shipped or returned.
    let fos = o["fulfillment_orders"].as_array().unwrap();
    assert_eq!(fos.len(), 1, "{o}");
    assert_eq!(fos[0]["status"], "open", "{o}");
    assert_eq!(fos[0]["units"], 1, "{o}");
    assert_eq!(
        fos[0]["name"],
        format!("{}-F1", o["number"].as_str().unwrap())
    );
    assert_eq!(o["lines"][0]["quantity"]["released"], 1, "{o}");
    assert_eq!(o["shipments"], json!([]), "{o}");
    assert_eq!(o["returns"], json!([]), "{o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_lines_gives_back_stock_and_money_exactly() {
    let fc = Receiver::start(0, 200).await;
    let app = start_with(&[
        ("fc_secret_a", FC_SECRET),
        (
            "fc_extra_outbound_host",
            &format!("http://127.0.0.1:{}", fc.port),
        ),
    ])
    .await;
    put_ok(&app, "/api/facilities/berlin", json!({"name": "Berlin", "type": "warehouse", "countries": ["DE"], "latitude": 52.5, "longitude": 13.4})).await;
    put_ok(&app, "/api/facilities/fc-paris", json!({"name": "Paris FC", "type": "fulfillment_center", "countries": ["DE"], "latitude": 48.86, "longitude": 2.35,
        "endpoints": {"orders_url": format!("http://127.0.0.1:{}/orders", fc.port), "cancel_url": format!("http://127.0.0.1:{}/cancel", fc.port)},
        "secret_variable": "fc_secret_a"})).await;
    for sku in ["MUG", "TEE", "CAP"] {
        put_ok(
            &app,
            &format!("/api/products/{sku}"),
            json!({"name": sku, "backorderable": true}),
        )
        .await;
    }
    receive_stock(&app, "berlin", "MUG", 2).await;
    receive_stock(&app, "fc-paris", "CAP", 1).await;
    // MUG released at Berlin, CAP released at the Paris FC, TEE backordered.
    let (id, _) = place(
        &app,
        "cancel-1",
        json!([
        {"sku": "MUG", "quantity": 2, "unit_price": "10.00", "tax": "3.80"},
        {"sku": "TEE", "quantity": 1, "unit_price": "7.00", "tax": "1.33"},
        {"sku": "CAP", "quantity": 1, "unit_price": "5.00"}]),
    )
    .await;
    let (auth, captured, _, _) = payment(&app, &id);
    assert_eq!(auth, 2380 + 833 + 500 + 490);
    assert_eq!(
        captured,
        2380 + 500 + 490,
        "MUG (with shipping) and CAP captured; TEE waits"
    );

    // TEE (backordered): the authorization shrinks by exactly its amount.
    let r = write(
        &app,
        "POST",
        &format!("/api/orders/{id}/cancel"),
        &json!({"lines": [{"line_no": 2, "quantity": 1}], "reason": "changed mind"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(payment(&app, &id).3, 833, "voided exactly the tee");
    // One MUG (released in-house, not picked yet): stock back, its share refunded.
    let r = write(
        &app,
        "POST",
        &format!("/api/orders/{id}/cancel"),
        &json!({"lines": [{"line_no": 1, "quantity": 1}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        count(&app, "SELECT reserved FROM stock WHERE sku = 'MUG'"),
        1
    );
    assert_eq!(payment(&app, &id).2, 1190, "one mug's net and tax refunded");
    // CAP at the center: a signed cancellation request; the center accepts by callback.
    let r = write(
        &app,
        "POST",
        &format!("/api/orders/{id}/cancel"),
        &json!({"lines": [{"line_no": 3, "quantity": 1}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        r.json["cancellation"]["cancellation_requested"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    eventually("the center got the cancellation request", || async {
        fc.received().iter().any(|x| x.path == "/cancel")
    })
    .await;
    let req = fc
        .received()
        .into_iter()
        .find(|x| x.path == "/cancel")
        .unwrap();
    assert!(signature::verify_timestamped(
        FC_SECRET.as_bytes(),
        req.header("waybill-signature").unwrap(),
        &req.body,
        chrono::Utc::now().timestamp(),
        300
    ));
    // Its own Idempotency-Key: not the release's.
    let release = fc
        .received()
        .into_iter()
        .find(|x| x.path != "/cancel")
        .expect("the release request");
    let (rk, ck) = (
        release.header("idempotency-key").unwrap().to_string(),
        req.header("idempotency-key").unwrap().to_string(),
    );
    assert!(
        rk.starts_with("fo-") && ck.starts_with(&format!("{rk}-cancel-")),
        "{rk} / {ck}"
    );
    let fo = req.json()["fulfillment_order"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        payment(&app, &id).2,
        1190,
        "nothing refunded before the center agrees"
    );
    let raw = json!({"type": "cancellation_accepted", "fulfillment_order": fo}).to_string();
    let sig = center_signature(
        FC_SECRET,
        chrono::Utc::now().timestamp(),
        "/callbacks/fc/fc-paris/shipments",
        &raw,
    );
    let r = send(
        &app,
        "POST",
        "/callbacks/fc/fc-paris/shipments",
        &[
            ("content-type", "application/json"),
            ("waybill-signature", &sig),
        ],
        raw,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        payment(&app, &id).2,
        1190 + 500,
        "the cap refunded once the center cancelled"
    );
    assert_eq!(
        count(&app, "SELECT reserved FROM stock WHERE sku = 'CAP'"),
        0
    );
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(o["lines"][2]["quantity"]["cancelled"], 1);
    let f = o["fulfillment_orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == fo.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (f["status"].as_str(), f["request_status"].as_str()),
        (Some("cancelled"), Some("cancellation_accepted"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_delivered_order_and_bad_changes_are_refused() {
    let app = start_with(&[
        ("fc_secret_a", FC_SECRET),
        ("easypost_webhook_secret", "ep-secret"),
    ])
    .await;
    put_ok(&app, "/api/facilities/fc-berlin", json!({"name": "FC", "type": "fulfillment_center", "countries": ["DE"], "latitude": 52.5, "longitude": 13.4, "secret_variable": "fc_secret_a"})).await;
    put_ok(&app, "/api/products/MUG", json!({"name": "Mug"})).await;
    receive_stock(&app, "fc-berlin", "MUG", 3).await;
    let (id, number) = place(
        &app,
        "done-1",
        json!([{"sku": "MUG", "quantity": 1, "unit_price": "10.00"}]),
    )
    .await;
    let raw = json!({"order_number": number, "tracking_number": "T-DONE"}).to_string();
    let sig = center_signature(
        FC_SECRET,
        chrono::Utc::now().timestamp(),
        "/callbacks/fc/fc-berlin/shipments",
        &raw,
    );
    let r = send(
        &app,
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
    // The carrier delivers it (EasyPost's tracker.updated).
    let mut ev: Value =
        serde_json::from_slice(&fixture("carriers/easypost-tracker-updated.json")).unwrap();
    ev["result"]["tracking_code"] = json!("T-DONE");
    let body = serde_json::to_vec(&ev).unwrap();
    let sig = format!(
        "hmac-sha256-hex={}",
        signature::hex(&signature::hmac_sha256(b"ep-secret", &body))
    );
    let r = send(
        &app,
        "POST",
        "/callbacks/carriers/easypost",
        &[
            ("content-type", "application/json"),
            ("x-hmac-signature", &sig),
        ],
        body,
    )
    .await;
    assert_eq!(r.json["result"], "delivered", "{}", r.json);
    assert_eq!(
        get(&app, &format!("/api/orders/{id}")).await.json["fulfillment_status"],
        "delivered"
    );
    let snap = || {
        [
            "order_events",
            "payment_transactions",
            "order_lines",
            "stock_movements",
        ]
        .map(|t| count(&app, &format!("SELECT COUNT(*) FROM {t}")))
    };
    let cancelled = || {
        count(
            &app,
            "SELECT COALESCE(SUM(qty_cancelled), 0) FROM order_lines",
        )
    };
    let before = (snap(), cancelled());
    let r = write(
        &app,
        "POST",
        &format!("/api/orders/{id}/cancel"),
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.json);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    for body in [
        json!({"lines": [{"line_no": 5, "quantity": 1}]}),
        json!({"lines": [{"line_no": 1, "quantity": -1}]}),
        json!({"lines": "all"}),
        json!({"because": "x"}),
    ] {
        let r = write(&app, "POST", &format!("/api/orders/{id}/cancel"), &body).await;
        assert_eq!(r.status, 422, "{body}: {}", r.json);
    }
    let r = write(
        &app,
        "POST",
        &format!("/api/orders/{id}/cancel"),
        &json!({"lines": [{"line_no": 1, "quantity": 1}]}),
    )
    .await;
    assert_eq!(r.status, 409, "the only unit shipped: {}", r.json);
    for body in [
        json!({"colour": "red"}),
        json!({"shipping_address": {"city": "Nowhere"}}),
        json!({}),
    ] {
        let r = send(
            &app,
            "PATCH",
            &format!("/api/orders/{id}"),
            &[
                ("authorization", &format!("Bearer {WRITE_TOKEN}")),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await;
        assert!(r.status == 422 || r.status == 409, "{body}: {}", r.json);
    }
    assert_eq!(
        write(&app, "POST", "/api/orders/WB-999999/cancel", &json!({}))
            .await
            .status,
        404
    );
    assert_eq!((snap(), cancelled()), before, "nothing changed");
}
