//! Routing and inventory through the real components on tests/host: splits,
//! click & collect, backorders released FIFO (receipt, FC push, FC pull),
//! concurrency without overselling, licence keys, and the bad-input matrix.

use serde_json::{json, Value};
use waybill_host::RunningApp;
use waybill_scenarios::*;

async fn app_with_fc(fc_port: u16) -> RunningApp {
    start_with(&[
        ("fc_secret_a", FC_SECRET),
        (
            "fc_extra_outbound_host",
            &format!("http://127.0.0.1:{fc_port}"),
        ),
    ])
    .await
}

/// Four facilities: two German warehouses, a Hamburg store with click &
/// collect, and an external fulfillment center in Paris.
async fn facilities(app: &RunningApp, fc_port: u16) {
    for (id, body) in [
        (
            "berlin",
            json!({"name": "Berlin DC", "type": "warehouse", "countries": ["DE", "AT"], "latitude": 52.52, "longitude": 13.40, "priority": 50}),
        ),
        (
            "munich",
            json!({"name": "Munich DC", "type": "warehouse", "countries": ["DE", "AT"], "latitude": 48.14, "longitude": 11.58, "priority": 50}),
        ),
        (
            "store-hamburg",
            json!({"name": "Hamburg Store", "type": "store", "services": ["ship", "click_collect"], "countries": ["DE"], "latitude": 53.55, "longitude": 9.99, "priority": 20, "daily_capacity": 50}),
        ),
        (
            "fc-paris",
            json!({"name": "Paris FC", "type": "fulfillment_center", "countries": ["FR", "DE"], "latitude": 48.86, "longitude": 2.35, "priority": 40,
            "endpoints": {"orders_url": format!("http://127.0.0.1:{fc_port}/orders"), "inventory_url": format!("http://127.0.0.1:{fc_port}/inventory")},
            "secret_variable": "fc_secret_a"}),
        ),
    ] {
        let r = write(app, "PUT", &format!("/api/facilities/{id}"), &body).await;
        assert_eq!(r.status, 201, "{id}: {}", r.json);
    }
}

async fn product(app: &RunningApp, sku: &str, body: Value) {
    let r = write(app, "PUT", &format!("/api/products/{sku}"), &body).await;
    assert!(r.status == 201 || r.status == 200, "{sku}: {}", r.json);
}

async fn receive(app: &RunningApp, facility: &str, sku: &str, qty: i64) -> Reply {
    write(
        app,
        "POST",
        "/api/stock/receipts",
        // Each receipt its own delivery note: a reference is booked once per facility.
        &json!({"facility": facility, "reference": format!("PO-{}", next_reference()), "lines": [{"sku": sku, "quantity": qty}]}),
    )
    .await
}

fn order(ext: &str, placed_at: &str, lines: &[(&str, i64)]) -> Value {
    json!({
        "external_id": ext,
        "currency": "EUR",
        "placed_at": placed_at,
        "customer": {"email": format!("{ext}@example.com"), "first_name": "Kim"},
        "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
        "lines": lines.iter().map(|(sku, q)| json!({"sku": sku, "name": format!("Item {sku}"), "quantity": q, "unit_price": "10.00"})).collect::<Vec<_>>(),
        "shipping_lines": [{"method": "standard", "price": "4.90"}],
        "financial_status": "authorized",
    })
}

async fn place(app: &RunningApp, body: &Value) -> String {
    let r = post_api(
        app,
        "/api/orders",
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    r.json["id"].as_str().unwrap().to_string()
}

/// Waits until routing has looked at the order (it runs after intake answers).
async fn routed(app: &RunningApp, id: &str) -> Value {
    eventually("the order is routed", || async {
        count(
            app,
            &format!("SELECT COUNT(*) FROM routing_decisions WHERE order_id = '{id}'"),
        ) > 0
    })
    .await;
    get(app, &format!("/api/orders/{id}")).await.json
}

fn qty(order: &Value, line: usize, bucket: &str) -> i64 {
    order["lines"][line]["quantity"][bucket].as_i64().unwrap()
}

fn stock(app: &RunningApp, facility: &str, sku: &str) -> (i64, i64) {
    let on_hand = count(app, &format!("SELECT COALESCE((SELECT on_hand FROM stock WHERE facility_id = '{facility}' AND sku = '{sku}'), 0)"));
    let reserved = count(app, &format!("SELECT COALESCE((SELECT reserved FROM stock WHERE facility_id = '{facility}' AND sku = '{sku}'), 0)"));
    (on_hand, reserved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_splits_across_facilities_and_explains_why() {
    let fc = Receiver::start(0, 200).await;
    let app = app_with_fc(fc.port).await;
    facilities(&app, fc.port).await;
    product(&app, "MUG", json!({"name": "Mug", "weight_grams": 350})).await;
    product(
        &app,
        "TEE",
        json!({"name": "Tee", "weight_grams": 200, "parts": {"fc-paris": "PAR-TEE-01"}}),
    )
    .await;
    assert_eq!(receive(&app, "berlin", "MUG", 2).await.status, 201);
    assert_eq!(receive(&app, "berlin", "TEE", 1).await.status, 201);
    assert_eq!(receive(&app, "fc-paris", "TEE", 5).await.status, 201);

    let id = place(
        &app,
        &order("split-1", "2026-11-20T10:00:00Z", &[("MUG", 2), ("TEE", 3)]),
    )
    .await;
    let o = routed(&app, &id).await;
    // No facility has both: Berlin takes the mugs whole, Paris the tees whole
    // (Berlin's single tee would split the line needlessly).
    assert_eq!(o["status"], "processing", "{o}");
    assert_eq!((qty(&o, 0, "released"), qty(&o, 1, "released")), (2, 3));
    assert_eq!(stock(&app, "berlin", "MUG"), (2, 2));
    assert_eq!(stock(&app, "berlin", "TEE"), (1, 0));
    assert_eq!(stock(&app, "fc-paris", "TEE"), (5, 3));

    let r = get(&app, &format!("/api/orders/{id}/routing")).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let fos = r.json["fulfillment_orders"].as_array().unwrap();
    assert_eq!(fos.len(), 2, "{}", r.json);
    let by_fac = |f: &str| fos.iter().find(|x| x["facility"] == f).unwrap().clone();
    assert_eq!(by_fac("berlin")["lines"][0]["sku"], "MUG");
    assert_eq!(by_fac("berlin")["status"], "open");
    assert_eq!(
        by_fac("fc-paris")["lines"][0]["part_number"],
        "PAR-TEE-01",
        "the FC's own part number"
    );
    // notify delivers the release to the center, which answers 200: submitted.
    let fc_fo = by_fac("fc-paris")["name"].as_str().unwrap().to_string();
    eventually("the center received the release", || async {
        count(
            &app,
            &format!("SELECT COUNT(*) FROM fulfillment_orders WHERE name = '{fc_fo}' AND request_status = 'submitted'"),
        ) == 1
    })
    .await;
    assert!(fc.received().iter().any(|r| r.path == "/orders"));
    let d = &r.json["decisions"][0]["explanation"];
    assert_eq!(d["rounds"].as_array().unwrap().len(), 2, "{d}");
    assert_eq!(
        d["destination"]["source"], "centroid:DE",
        "no coordinates on the order: the country centroid"
    );
    // The Hamburg store serves DE too; nothing is fenced for this order but the explanation lists all four.
    assert_eq!(d["candidates"].as_array().unwrap().len(), 4);
    for round in d["rounds"].as_array().unwrap() {
        for rating in round["ratings"].as_array().unwrap() {
            for k in ["distance", "stock", "workload", "priority", "score"] {
                assert!(rating[k].is_number(), "{rating}");
            }
        }
    }
    // Events and outbox: two FOs created and released, one release message each.
    let kinds: Vec<String> = get(&app, &format!("/api/orders/{id}/events")).await.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "fulfillment_order.released")
            .count(),
        2,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"routing.decided".to_string()));
    assert_eq!(count(&app, &format!("SELECT COUNT(*) FROM outbox WHERE topic = 'fulfillment_order.released' AND order_id = '{id}'")), 2);

    // A French order: the German-only warehouses and the store are fenced by country.
    let mut fr = order("split-fr", "2026-11-20T10:05:00Z", &[("TEE", 1)]);
    fr["shipping_address"]["country_code"] = json!("FR");
    let id = place(&app, &fr).await;
    routed(&app, &id).await;
    let r = get(&app, &format!("/api/orders/{id}/routing")).await;
    let cands = r.json["decisions"][0]["explanation"]["candidates"]
        .as_array()
        .unwrap()
        .clone();
    for c in &cands {
        let fenced = c["fences"].as_array().unwrap().contains(&json!("country"));
        assert_eq!(fenced, c["facility"] != "fc-paris", "{c}");
    }
    assert_eq!(r.json["fulfillment_orders"][0]["facility"], "fc-paris");
    app.stop().await;
    fc.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn click_and_collect_uses_the_chosen_store() {
    let fc = Receiver::start(0, 200).await;
    let app = app_with_fc(fc.port).await;
    facilities(&app, fc.port).await;
    product(&app, "LAMP", json!({"name": "Lamp"})).await;
    receive(&app, "berlin", "LAMP", 10).await;
    receive(&app, "store-hamburg", "LAMP", 1).await;

    let mut o = order("cc-1", "2026-11-20T09:00:00Z", &[("LAMP", 1)]);
    o["pickup_location"] = json!("Hamburg Store"); // by name, as WooCommerce sends it
    let id = place(&app, &o).await;
    let view = routed(&app, &id).await;
    assert_eq!(qty(&view, 0, "released"), 1, "{view}");
    let r = get(&app, &format!("/api/orders/{id}/routing")).await;
    assert_eq!(
        r.json["fulfillment_orders"][0]["facility"], "store-hamburg",
        "{}",
        r.json
    );
    assert_eq!(r.json["fulfillment_orders"][0]["pickup"], true);
    let ex = &r.json["decisions"][0]["explanation"];
    assert_eq!(ex["service"], "click_collect");
    let berlin = ex["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["facility"] == "berlin")
        .unwrap()
        .clone();
    assert_eq!(
        berlin["fences"],
        json!(["service", "preselected"]),
        "{berlin}"
    );

    // The store is now empty: a second pickup there waits (not backorderable: held).
    let mut o2 = order("cc-2", "2026-11-20T09:05:00Z", &[("LAMP", 1)]);
    o2["pickup_location"] = json!("store-hamburg");
    let id2 = place(&app, &o2).await;
    let v2 = routed(&app, &id2).await;
    assert_eq!(v2["status"], "on_hold", "{v2}");
    assert_eq!(v2["holds"][0]["reason"], "out_of_stock");
    assert_eq!(
        stock(&app, "berlin", "LAMP"),
        (10, 0),
        "never shipped from elsewhere"
    );

    // An unknown pickup location is an address problem for the operator.
    let mut o3 = order("cc-3", "2026-11-20T09:10:00Z", &[("LAMP", 1)]);
    o3["pickup_location"] = json!("Atlantis");
    let id3 = place(&app, &o3).await;
    let v3 = routed(&app, &id3).await;
    assert_eq!(v3["holds"][0]["reason"], "incorrect_address", "{v3}");

    // Stock arrives at the store: the held pickup is released and its hold lifted.
    let r = receive(&app, "store-hamburg", "LAMP", 1).await;
    assert_eq!(r.json["backorders"]["orders_served"], 1, "{}", r.json);
    let v2 = get(&app, &format!("/api/orders/{id2}")).await.json;
    assert_eq!(
        (v2["status"].as_str(), qty(&v2, 0, "released")),
        (Some("processing"), 1),
        "{v2}"
    );
    app.stop().await;
    fc.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backorders_are_released_fifo_by_receipt_fc_push_and_pull() {
    let fc = Receiver::start(0, 200).await;
    let app = app_with_fc(fc.port).await;
    facilities(&app, fc.port).await;
    product(
        &app,
        "GADGET",
        json!({"name": "Gadget", "backorderable": true, "parts": {"fc-paris": "P-GADGET"}}),
    )
    .await;
    receive(&app, "munich", "GADGET", 1).await;

    // Placed in this order (the requests arrive in another order on purpose).
    let c = place(
        &app,
        &order("bo-c", "2026-11-20T08:03:00Z", &[("GADGET", 2)]),
    )
    .await;
    let a = place(
        &app,
        &order("bo-a", "2026-11-20T08:01:00Z", &[("GADGET", 2)]),
    )
    .await;
    let b = place(
        &app,
        &order("bo-b", "2026-11-20T08:02:00Z", &[("GADGET", 1)]),
    )
    .await;
    for id in [&a, &b, &c] {
        routed(&app, id).await;
    }
    // The single unit went to whoever routed first; every other unit is backordered.
    let backordered = count(
        &app,
        "SELECT SUM(qty_backordered) FROM order_lines WHERE sku = 'GADGET'",
    );
    assert_eq!(backordered, 4);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM outbox WHERE topic = 'order.backordered'"
        ),
        3 - (count(
            &app,
            "SELECT COUNT(*) FROM order_lines WHERE sku = 'GADGET' AND qty_backordered = 0"
        ))
    );
    let before: Vec<(String, i64)> = [&a, &b, &c]
        .iter()
        .map(|id| {
            (
                id.to_string(),
                count(
                    &app,
                    &format!("SELECT qty_backordered FROM order_lines WHERE order_id = '{id}'"),
                ),
            )
        })
        .collect();

    // A receipt of 2: the oldest backorders first (A before B before C), partially where it must.
    let r = receive(&app, "berlin", "GADGET", 2).await;
    assert_eq!(r.status, 201);
    let bo = |id: &str| {
        count(
            &app,
            &format!("SELECT qty_backordered FROM order_lines WHERE order_id = '{id}'"),
        )
    };
    let mut left = 2;
    for (id, n) in &before {
        let served = (*n).min(left);
        left -= served;
        assert_eq!(bo(id), n - served, "FIFO by order time: {before:?}");
    }

    // The FC pushes its levels (signed): the rest is released from Paris.
    let push = json!({"as_of": "2026-11-21T06:00:00Z", "levels": [{"part_number": "P-GADGET", "on_hand": 10}]}).to_string();
    let bad = center_signature(
        "wrong",
        chrono::Utc::now().timestamp(),
        "/callbacks/fc/fc-paris/inventory",
        &push,
    );
    let r = send(
        &app,
        "POST",
        "/callbacks/fc/fc-paris/inventory",
        &[
            ("waybill-signature", &bad),
            ("content-type", "application/json"),
        ],
        push.clone(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        stock(&app, "fc-paris", "GADGET"),
        (0, 0),
        "a bad signature changes nothing"
    );
    let sig = center_signature(
        FC_SECRET,
        chrono::Utc::now().timestamp(),
        "/callbacks/fc/fc-paris/inventory",
        &push,
    );
    let r = send(
        &app,
        "POST",
        "/callbacks/fc/fc-paris/inventory",
        &[
            ("waybill-signature", &sig),
            ("content-type", "application/json"),
        ],
        push.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    // The same signed push again is a replay: refused.
    let r = send(
        &app,
        "POST",
        "/callbacks/fc/fc-paris/inventory",
        &[
            ("waybill-signature", &sig),
            ("content-type", "application/json"),
        ],
        push,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.json);
    assert!(r.json["detail"].as_str().unwrap().contains("used before"));
    assert_eq!(
        count(
            &app,
            "SELECT SUM(qty_backordered) FROM order_lines WHERE sku = 'GADGET'"
        ),
        0
    );
    for id in [&a, &b, &c] {
        let o = get(&app, &format!("/api/orders/{id}")).await.json;
        assert_eq!(qty(&o, 0, "released"), qty(&o, 0, "ordered"), "{o}");
        assert!(o["holds"].as_array().unwrap().is_empty());
    }
    let events = get(&app, &format!("/api/orders/{c}/events")).await.json;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "backorder.allocated"),
        "{events}"
    );
    let (on_hand, reserved) = stock(&app, "fc-paris", "GADGET");
    assert_eq!(
        (on_hand, reserved),
        (10, 2),
        "Paris took the two units Berlin could not supply"
    );

    // Pull: Waybill asks the FC (signed GET) and keeps the snapshot in key-value.
    fc.set_body(&json!({"as_of": "2026-11-21T07:00:00Z", "levels": [{"part_number": "P-GADGET", "on_hand": 4}]}));
    let r = write(
        &app,
        "POST",
        "/api/facilities/fc-paris/inventory/sync",
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["applied"], 1);
    let req = fc
        .received()
        .into_iter()
        .find(|x| x.path == "/inventory")
        .expect("the FC was asked");
    let sig = req.header("waybill-signature").unwrap();
    assert!(waybill::kernel::signature::verify_timestamped(
        FC_SECRET.as_bytes(),
        sig,
        b"",
        chrono::Utc::now().timestamp(),
        300
    ));
    assert!(waybill::kernel::signature::verified_request(
        FC_SECRET.as_bytes(),
        sig,
        "GET",
        "/inventory",
        b"",
        chrono::Utc::now().timestamp(),
        300
    )
    .is_some());
    assert_eq!(stock(&app, "fc-paris", "GADGET").0, 4);
    let snap: Value = serde_json::from_slice(
        &app.kv_get("default", "fc-inventory/fc-paris")
            .unwrap()
            .expect("snapshot"),
    )
    .unwrap();
    assert_eq!(snap["levels"][0]["on_hand"], 4);
    app.stop().await;
    fc.stop();
}

/// After a race for the 50 widgets: exactly 50 reserved and placed, no stock
/// level below zero.
fn assert_fifty_widgets_reserved(app: &RunningApp) {
    assert_eq!(
        count(app, "SELECT SUM(reserved) FROM stock WHERE sku = 'WIDGET'"),
        50
    );
    assert_eq!(
        count(
            app,
            "SELECT COUNT(*) FROM stock WHERE on_hand - reserved < 0 OR reserved < 0"
        ),
        0
    );
    assert_eq!(
        count(
            app,
            "SELECT SUM(qty_allocated + qty_released) FROM order_lines WHERE sku = 'WIDGET'"
        ),
        50
    );
}

/// The same race through the one-statement intake (issue #16): 200 Shopify
/// webhooks at once, each order's rows pending until a worker batch takes
/// them up, across many kicks that mostly find the worker busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_webhooks_are_taken_up_once_and_never_oversell() {
    let fc = Receiver::start(0, 200).await;
    let app = app_with_fc(fc.port).await;
    facilities(&app, fc.port).await;
    product(
        &app,
        "WIDGET",
        json!({"name": "Widget", "backorderable": true}),
    )
    .await;
    receive(&app, "berlin", "WIDGET", 20).await;
    receive(&app, "munich", "WIDGET", 20).await;
    receive(&app, "store-hamburg", "WIDGET", 10).await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let q = if i % 3 == 0 { 2 } else { 1 };
            let body = json!({
                "id": 7_000_000 + i, "name": format!("#R{i}"), "email": "race@example.com", "currency": "EUR",
                "created_at": format!("2026-11-20T12:{:02}:{:02}+00:00", i / 60, i % 60),
                "financial_status": "paid", "taxes_included": true, "total_price": format!("{}.00", 10 * q),
                "shipping_address": {"first_name": "R", "last_name": "Ace", "address1": "Hauptstr. 1", "city": "Berlin", "zip": "10115", "country_code": "DE"},
                "line_items": [{"id": 1, "sku": "WIDGET", "name": "Widget", "quantity": q, "price": "10.00",
                    "requires_shipping": true, "tax_lines": [{"price": format!("{}.60", q), "rate": 0.19, "title": "MwSt"}],
                    "discount_allocations": []}],
                "shipping_lines": []
            });
            let r = shopify(&app, "orders/create", &format!("race-{i}"), body.to_string().as_bytes()).await;
            (r.status, r.json["result"].as_str().unwrap_or_default().to_string())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), (200, "created".to_string()));
    }
    eventually("every order is taken up and routed", || async {
        count(
            &app,
            "SELECT COUNT(*) FROM orders WHERE intake IS NOT NULL OR status = 'received'",
        ) == 0
    })
    .await;
    // Each order's rows written once.
    assert_eq!(count(&app, "SELECT COUNT(*) FROM order_lines"), 200);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM payments"), 200);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM webhook_receipts"), 200);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM order_events WHERE kind = 'order.received'"
        ),
        200
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM outbox WHERE topic = 'order.received'"
        ),
        200
    );
    // Exactly the 50 units reserved, none below zero, the rest backordered.
    assert_fifty_widgets_reserved(&app);
    assert_eq!(
        count(&app, "SELECT SUM(qty_ordered - qty_allocated - qty_released - qty_backordered) FROM order_lines"),
        0,
        "every unit reserved or backordered"
    );
    let app = std::sync::Arc::try_unwrap(app).ok().expect("one owner");
    app.stop().await;
    fc.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_orders_never_oversell_fifty_units() {
    let fc = Receiver::start(0, 200).await;
    let app = app_with_fc(fc.port).await;
    facilities(&app, fc.port).await;
    product(
        &app,
        "WIDGET",
        json!({"name": "Widget", "backorderable": true}),
    )
    .await;
    receive(&app, "berlin", "WIDGET", 20).await;
    receive(&app, "munich", "WIDGET", 20).await;
    receive(&app, "store-hamburg", "WIDGET", 10).await;

    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let q = if i % 3 == 0 { 2 } else { 1 };
            let body = order(
                &format!("race-{i:03}"),
                &format!("2026-11-20T12:{:02}:{:02}Z", i / 60, i % 60),
                &[("WIDGET", q)],
            );
            post_api(
                &app,
                "/api/orders",
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    eventually("every order is routed", || async {
        count(
            &app,
            "SELECT COUNT(*) FROM orders WHERE status = 'received'",
        ) == 0
    })
    .await;
    // Exactly the 50 units are reserved, none below zero.
    assert_fifty_widgets_reserved(&app);
    assert_eq!(
        count(
            &app,
            "SELECT SUM(quantity) FROM fulfillment_order_lines WHERE sku = 'WIDGET'"
        ),
        50
    );
    // Reservations match fulfillment orders per facility.
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM stock s WHERE s.reserved <> (SELECT COALESCE(SUM(fl.quantity), 0) FROM fulfillment_order_lines fl JOIN fulfillment_orders f ON f.id = fl.fulfillment_order_id WHERE f.facility_id = s.facility_id AND fl.sku = s.sku AND f.status <> 'cancelled')"),
        0
    );
    // Every unit is allocated/released or backordered; nothing lost, nothing twice.
    assert_eq!(count(&app, "SELECT COUNT(*) FROM order_lines WHERE qty_allocated + qty_released + qty_backordered <> qty_ordered"), 0);
    assert_eq!(count(&app, "SELECT SUM(qty_ordered) FROM order_lines"), 267);
    assert_eq!(
        count(&app, "SELECT SUM(qty_backordered) FROM order_lines"),
        217
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM orders WHERE status NOT IN ('processing', 'on_hold')"
        ),
        0
    );
    let app = std::sync::Arc::try_unwrap(app).ok().expect("one owner");
    app.stop().await;
    fc.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_orders_share_sixty_licence_keys() {
    let app = start().await;
    // Keys need no facility.
    product(&app, "KEY-PRO", json!({"name": "Pro licence", "digital": true, "backorderable": true, "low_stock_threshold": 10})).await;
    let mut csv = String::from("license_key\n");
    for i in 0..60 {
        csv.push_str(&format!("PRO-{i:04}-XKCD\n"));
    }
    let r = send(
        &app,
        "POST",
        "/api/license-keys/KEY-PRO",
        &[
            ("authorization", &format!("Bearer {WRITE_TOKEN}")),
            ("content-type", "text/csv"),
        ],
        csv,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["available"], 60);

    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let body = order(
                &format!("key-{i:03}"),
                &format!("2026-11-20T13:{:02}:{:02}Z", i / 60, i % 60),
                &[("KEY-PRO", 1)],
            );
            post_api(
                &app,
                "/api/orders",
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    eventually("every order is routed", || async {
        count(
            &app,
            "SELECT COUNT(*) FROM orders WHERE status = 'received'",
        ) == 0
    })
    .await;
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM license_keys WHERE order_id IS NOT NULL"
        ),
        60
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(DISTINCT key) FROM license_keys WHERE order_id IS NOT NULL"
        ),
        60
    );
    assert_eq!(count(&app, "SELECT COUNT(*) FROM (SELECT order_id FROM license_keys WHERE order_id IS NOT NULL GROUP BY order_id HAVING COUNT(*) > 1)"), 0, "one key per unit");
    assert_eq!(
        count(&app, "SELECT SUM(qty_backordered) FROM order_lines"),
        40
    );
    assert_eq!(count(&app, "SELECT SUM(qty_shipped) FROM order_lines"), 60);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM outbox WHERE topic = 'license.assigned'"
        ),
        60
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM outbox WHERE topic = 'order.backordered'"
        ),
        40
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM outbox WHERE topic = 'stock.low'"
        ),
        1,
        "one low-stock alert"
    );
    // The key reaches the customer in the "download ready" e-mail.
    let row = app
        .sql(
            "default",
            "SELECT payload FROM outbox WHERE topic = 'license.assigned' LIMIT 1",
            &[],
        )
        .unwrap();
    let payload: Value = match &row.rows[0][0] {
        waybill_host::SqlValue::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(
        payload["license_key"].as_str().unwrap().starts_with("PRO-"),
        "{payload}"
    );

    // 40 more keys: the backorders are filled, oldest first, and the alert re-arms.
    let more: Vec<String> = (60..100).map(|i| format!("PRO-{i:04}-XKCD")).collect();
    let r = write(
        &app,
        "POST",
        "/api/license-keys/KEY-PRO",
        &json!({"keys": more}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["backorders"]["orders_served"], 40, "{}", r.json);
    assert_eq!(
        count(&app, "SELECT SUM(qty_backordered) FROM order_lines"),
        0
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(DISTINCT key) FROM license_keys WHERE order_id IS NOT NULL"
        ),
        100
    );
    let app = std::sync::Arc::try_unwrap(app).ok().expect("one owner");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inventory_input_answers_problems_and_changes_nothing() {
    let fc = Receiver::start(0, 200).await;
    let app = app_with_fc(fc.port).await;
    facilities(&app, fc.port).await;
    product(&app, "MUG", json!({"name": "Mug"})).await;
    receive(&app, "berlin", "MUG", 3).await;
    let snapshot = |app: &RunningApp| {
        (
            count(app, "SELECT COUNT(*) FROM stock_movements"),
            count(app, "SELECT SUM(on_hand) FROM stock"),
            count(app, "SELECT COUNT(*) FROM facilities"),
            count(app, "SELECT COUNT(*) FROM products"),
            count(app, "SELECT COUNT(*) FROM routing_config"),
        )
    };
    let before = snapshot(&app);
    let cases: Vec<(&str, &str, Value, u16)> = vec![
        (
            "POST",
            "/api/stock/receipts",
            json!({"facility": "berlin", "lines": [{"sku": "NOPE", "quantity": 1}]}),
            422,
        ),
        (
            "POST",
            "/api/stock/receipts",
            json!({"facility": "atlantis", "lines": [{"sku": "MUG", "quantity": 1}]}),
            422,
        ),
        (
            "POST",
            "/api/stock/receipts",
            json!({"facility": "berlin", "lines": [{"sku": "MUG", "quantity": -5}]}),
            422,
        ),
        (
            "POST",
            "/api/stock/receipts",
            json!({"facility": "berlin", "lines": []}),
            422,
        ),
        (
            "POST",
            "/api/stock/adjustments",
            json!({"facility": "berlin", "sku": "MUG", "delta": -4, "reason": "lost"}),
            409,
        ),
        (
            "POST",
            "/api/stock/adjustments",
            json!({"facility": "berlin", "sku": "MUG", "delta": 2}),
            422,
        ),
        ("PUT", "/api/stock/MUG/atlantis", json!({"on_hand": 5}), 404),
        ("PUT", "/api/stock/NOPE/berlin", json!({"on_hand": 5}), 404),
        ("PUT", "/api/stock/MUG/berlin", json!({"on_hand": -1}), 422),
        (
            "PUT",
            "/api/facilities/Bad%20Id",
            json!({"name": "x", "type": "warehouse"}),
            400,
        ),
        (
            "PUT",
            "/api/facilities/new",
            json!({"name": "x", "type": "warehouse", "countries": ["Germany"]}),
            422,
        ),
        (
            "PUT",
            "/api/products/NEW",
            json!({"name": "x", "parts": {"atlantis": "A1"}}),
            422,
        ),
        (
            "PUT",
            "/api/routing/config/web",
            json!({"weights": {"distance": 0, "stock": 11, "workload": 1, "priority": 1}}),
            422,
        ),
        (
            "PUT",
            "/api/routing/config/web",
            json!({"max_parts": 2, "colour": "red"}),
            422,
        ),
        ("POST", "/api/license-keys/MUG", json!({"keys": ["k"]}), 422),
        (
            "POST",
            "/api/license-keys/NOPE",
            json!({"keys": ["k"]}),
            404,
        ),
    ];
    for (m, path, body, status) in cases {
        let r = write(&app, m, path, &body).await;
        assert_eq!(r.status, status, "{m} {path} {body}: {}", r.json);
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{m} {path}"
        );
        assert!(r.json["detail"].is_string(), "{}", r.json);
    }
    // Not JSON at all.
    let r = send(
        &app,
        "POST",
        "/api/stock/receipts",
        &[("authorization", &format!("Bearer {WRITE_TOKEN}"))],
        "{oops",
    )
    .await;
    assert_eq!(r.status, 400);
    // Read tokens cannot write; no token cannot read.
    let r = send(
        &app,
        "POST",
        "/api/stock/receipts",
        &[("authorization", &format!("Bearer {READ_TOKEN}"))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(&app, "GET", "/api/facilities", &[], "").await;
    assert_eq!(r.status, 401);
    // Pushes: unknown facility and bad signature look the same (401), expired timestamps too.
    let body = json!({"levels": [{"sku": "MUG", "on_hand": 99}]}).to_string();
    let now = chrono::Utc::now().timestamp();
    let old = center_signature(
        FC_SECRET,
        now - 3600,
        "/callbacks/fc/fc-paris/inventory",
        &body,
    );
    for (path, sig) in [
        (
            "/callbacks/fc/atlantis/inventory",
            center_signature(FC_SECRET, now, "/callbacks/fc/atlantis/inventory", &body),
        ),
        ("/callbacks/fc/fc-paris/inventory", old),
        // Signed for the center's other endpoint, or with the unbound v1 form.
        (
            "/callbacks/fc/fc-paris/inventory",
            center_signature(FC_SECRET, now, "/callbacks/fc/fc-paris/shipments", &body),
        ),
        (
            "/callbacks/fc/fc-paris/inventory",
            waybill::kernel::signature::sign_timestamped(
                FC_SECRET.as_bytes(),
                now,
                body.as_bytes(),
            ),
        ),
        ("/callbacks/fc/berlin/inventory", "t=1,v1=00".to_string()),
    ] {
        let r = send(
            &app,
            "POST",
            path,
            &[("waybill-signature", &sig)],
            body.clone(),
        )
        .await;
        assert_eq!(r.status, 401, "{path}");
    }
    assert_eq!(snapshot(&app), before, "nothing changed");
    // The valid versions work: the matrix above failed for its reasons only.
    assert_eq!(
        write(
            &app,
            "PUT",
            "/api/stock/MUG/berlin",
            &json!({"on_hand": 5, "reason": "cycle count"})
        )
        .await
        .status,
        200
    );
    assert_eq!(get(&app, "/api/stock/MUG").await.json["available"], 5);
    app.stop().await;
    fc.stop();
}

/// An order placed while the only facility was inactive, whose chained
/// routing call found nowhere to route it, and the facility active since:
/// only a sweep (the cron's or the maintenance route's) routes it now.
async fn an_order_the_chained_routing_could_not_route(
    app: &RunningApp,
    external_id: &str,
) -> String {
    let r = write(
        app,
        "PUT",
        "/api/facilities/main",
        &json!({"name": "Main", "type": "warehouse", "active": false}),
    )
    .await;
    assert_eq!(r.status, 201);
    product(app, "BOOK", json!({"name": "Book"})).await;
    let r = receive(app, "main", "BOOK", 5).await;
    assert_eq!(r.json["backorders"]["orders_served"], 0, "{}", r.json);
    let id = place(
        app,
        &order(external_id, "2026-11-20T07:00:00Z", &[("BOOK", 2)]),
    )
    .await;
    // The chained routing call has looked at it (and found no facility).
    eventually("the worker took the order up", || async {
        count(app, "SELECT COUNT(*) FROM orders WHERE intake IS NOT NULL") == 0
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        get(app, &format!("/api/orders/{id}")).await.json["status"],
        "received"
    );
    assert_eq!(count(app, "SELECT COUNT(*) FROM routing_decisions"), 0);
    // Activating the facility releases orders already waiting for its stock;
    // this one was never routed, so it stays received.
    let r = write(
        app,
        "PUT",
        "/api/facilities/main",
        &json!({"name": "Main", "type": "warehouse", "active": true}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        get(app, &format!("/api/orders/{id}")).await.json["status"],
        "received"
    );
    id
}

/// The order of [`an_order_the_chained_routing_could_not_route`] after a
/// sweep: released in full, by one sweep decision.
async fn routed_by_one_sweep(app: &RunningApp, id: &str) {
    let o = get(app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(
        (o["status"].as_str(), qty(&o, 0, "released")),
        (Some("processing"), 2),
        "{o}"
    );
    assert_eq!(
        count(
            app,
            "SELECT COUNT(*) FROM routing_decisions WHERE trigger = 'sweep'"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cron_sweep_routes_what_the_chained_call_could_not() {
    let app = start().await;
    let id = an_order_the_chained_routing_could_not_route(&app, "sweep-1").await;
    // ...until the scheduled sweep runs.
    app.fire_cron("routing-cron")
        .await
        .expect("routing-cron runs");
    routed_by_one_sweep(&app, &id).await;
    // A second run finds nothing to do.
    app.fire_cron("routing-cron")
        .await
        .expect("routing-cron runs");
    assert_eq!(count(&app, "SELECT COUNT(*) FROM routing_decisions"), 1);
    app.stop().await;
}

/// Where a platform runs no cron triggers (containerd-shim-spin), a
/// Kubernetes CronJob calls `POST /api/maintenance/{schedule}` with a token of
/// the `maintenance` scope: the route runs its cron component's work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_maintenance_routes_run_the_schedules_work_where_no_cron_runs() {
    let tokens = format!("write:{WRITE_TOKEN},read:{READ_TOKEN},maintenance:cron-job-token-1");
    let app = start_with(&[("api_tokens", tokens.as_str())]).await;
    let run = |schedule: &'static str, token: &'static str| {
        let app = &app;
        async move {
            let auth = format!("Bearer {token}");
            send(
                app,
                "POST",
                &format!("/api/maintenance/{schedule}"),
                &[("authorization", auth.as_str())],
                "",
            )
            .await
        }
    };
    let id = an_order_the_chained_routing_could_not_route(&app, "maint-1").await;
    // Without the scope nothing runs.
    let r = run("routing", READ_TOKEN).await;
    assert_eq!(r.status, 403, "{}", r.json);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(run("routing", "not-a-token-at-all").await.status, 401);
    let r = send(
        &app,
        "GET",
        "/api/maintenance/routing",
        &[("authorization", "Bearer cron-job-token-1")],
        "",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(
        get(&app, &format!("/api/orders/{id}")).await.json["status"],
        "received"
    );
    // The routing schedule's work: the sweep routes the order.
    let r = run("routing", "cron-job-token-1").await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        (
            r.json["schedule"].as_str(),
            r.json["cron_component"].as_str(),
            r.json["result"]["routed"].as_i64()
        ),
        (Some("routing"), Some("routing-cron"), Some(1)),
        "{}",
        r.json
    );
    routed_by_one_sweep(&app, &id).await;
    // Every other schedule answers with what its work did.
    let r = run("notify", "cron-job-token-1").await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert!(r.json["result"]["delivered"].is_number(), "{}", r.json);
    let r = run("report", "cron-job-token-1").await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["result"]["generated"], true, "{}", r.json);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM daily_reports"), 1);
    let r = run("housekeeping", "cron-job-token-1").await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert!(r.json["result"].is_object(), "{}", r.json);
    let r = run("inventory", "cron-job-token-1").await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        r.json["result"]["facilities"],
        json!({}),
        "no facility has an inventory endpoint"
    );
    let r = run("capture", "cron-job-token-1").await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert!(r.json["result"]["succeeded"].is_number(), "{}", r.json);
    // Run again, the routing work finds nothing to do.
    let r = run("routing", "cron-job-token-1").await;
    assert_eq!(r.json["result"]["routed"], 0, "{}", r.json);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM routing_decisions"), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scheduled_pull_reads_every_center_and_the_sweep_releases_backorders() {
    let fc = Receiver::start(0, 200).await;
    let app = app_with_fc(fc.port).await;
    facilities(&app, fc.port).await;
    product(
        &app,
        "GADGET",
        json!({"name": "Gadget", "backorderable": true, "parts": {"fc-paris": "P-GADGET"}}),
    )
    .await;
    let id = place(
        &app,
        &order("pull-1", "2026-11-20T06:00:00Z", &[("GADGET", 3)]),
    )
    .await;
    let o = routed(&app, &id).await;
    assert_eq!(qty(&o, 0, "backordered"), 3, "{o}");
    // The center answers the signed GET with its levels (by its own part number).
    fc.set_body(&json!({"as_of": "2026-11-21T05:00:00Z", "levels": [{"part_number": "P-GADGET", "on_hand": 8}]}));
    app.fire_cron("inventory-cron")
        .await
        .expect("inventory-cron runs");
    let asked: Vec<_> = fc
        .received()
        .into_iter()
        .filter(|r| r.path == "/inventory")
        .collect();
    assert_eq!(
        asked.len(),
        1,
        "only the facility with an inventory_url is pulled"
    );
    assert!(waybill::kernel::signature::verify_timestamped(
        FC_SECRET.as_bytes(),
        asked[0].header("waybill-signature").unwrap(),
        b"",
        chrono::Utc::now().timestamp(),
        300
    ));
    assert_eq!(stock(&app, "fc-paris", "GADGET"), (8, 0));
    assert!(app
        .kv_get("default", "fc-inventory/fc-paris")
        .unwrap()
        .is_some());
    // A cron component cannot chain: routing-cron's sweep releases the backorder.
    app.fire_cron("routing-cron")
        .await
        .expect("routing-cron runs");
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(
        (qty(&o, 0, "backordered"), qty(&o, 0, "released")),
        (0, 3),
        "{o}"
    );
    assert_eq!(stock(&app, "fc-paris", "GADGET"), (8, 3));
    // A failing center changes nothing and does not stop the run.
    fc.status.store(503, std::sync::atomic::Ordering::SeqCst);
    app.fire_cron("inventory-cron")
        .await
        .expect("inventory-cron survives a failing center");
    assert_eq!(stock(&app, "fc-paris", "GADGET"), (8, 3));
    app.stop().await;
    fc.stop();
}
