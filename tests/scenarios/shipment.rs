//! Fulfillment execution through the real components on tests/host: an order
//! split between an external fulfillment center (a local fake receiving the
//! signed release) and an in-house store (pick, pack, handover), tracked by
//! EasyPost, AfterShip and Shippo callbacks in their own payload shapes until
//! the order is delivered; short picks; rate lookups at bracket edges; wrong
//! signatures, duplicates and unknown orders.

use serde_json::{json, Value};
use waybill::kernel::signature;
use waybill_host::RunningApp;
use waybill_scenarios::*;

const EASYPOST_SECRET: &str = "test-easypost-secret";
const AFTERSHIP_SECRET: &str = "test-aftership-secret";
const SHIPPO_TOKEN: &str = "test-shippo-token";

async fn app(fc_port: u16) -> RunningApp {
    start_with(&[
        ("fc_secret_a", FC_SECRET),
        (
            "fc_extra_outbound_host",
            &format!("http://127.0.0.1:{fc_port}"),
        ),
        ("easypost_webhook_secret", EASYPOST_SECRET),
        ("aftership_webhook_secret", AFTERSHIP_SECRET),
        ("shippo_webhook_token", SHIPPO_TOKEN),
    ])
    .await
}

async fn place(app: &RunningApp, ext: &str, lines: &[(&str, i64)], pickup: Option<&str>) -> String {
    let body = json!({
        "external_id": ext, "currency": "EUR", "placed_at": "2026-11-20T10:00:00Z",
        "customer": {"email": format!("{ext}@example.com"), "first_name": "Kim"},
        "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
        "lines": lines.iter().map(|(s, q)| json!({"sku": s, "name": format!("Item {s}"), "quantity": q, "unit_price": "10.00"})).collect::<Vec<_>>(),
        "shipping_lines": [{"method": "standard", "price": "4.90"}],
        "financial_status": "paid",
        "pickup_location": pickup,
    });
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
    id
}

async fn fc_callback(app: &RunningApp, facility: &str, body: &Value, secret: &str) -> Reply {
    let raw = body.to_string();
    let sig = center_signature(
        secret,
        chrono::Utc::now().timestamp(),
        &format!("/callbacks/fc/{facility}/shipments"),
        &raw,
    );
    fc_send(app, facility, raw, &sig).await
}

/// A center's shipments callback with the signature as given.
async fn fc_send(app: &RunningApp, facility: &str, raw: String, sig: &str) -> Reply {
    send(
        app,
        "POST",
        &format!("/callbacks/fc/{facility}/shipments"),
        &[
            ("content-type", "application/json"),
            ("waybill-signature", &sig),
        ],
        raw,
    )
    .await
}

async fn easypost(app: &RunningApp, body: &[u8], secret: &str) -> Reply {
    let sig = format!(
        "hmac-sha256-hex={}",
        signature::hex(&signature::hmac_sha256(secret.as_bytes(), body))
    );
    send(
        app,
        "POST",
        "/callbacks/carriers/easypost",
        &[
            ("content-type", "application/json"),
            ("x-hmac-signature", &sig),
        ],
        body.to_vec(),
    )
    .await
}

async fn aftership(app: &RunningApp, body: &[u8], secret: &str) -> Reply {
    let sig = signature::base64_hmac(secret.as_bytes(), body);
    send(
        app,
        "POST",
        "/callbacks/carriers/aftership",
        &[
            ("content-type", "application/json"),
            ("aftership-hmac-sha256", &sig),
        ],
        body.to_vec(),
    )
    .await
}

async fn shippo(app: &RunningApp, body: &[u8], token: &str) -> Reply {
    send(
        app,
        "POST",
        &format!("/callbacks/carriers/shippo?token={token}"),
        &[("content-type", "application/json")],
        body.to_vec(),
    )
    .await
}

fn carrier_fixture(name: &str, tracking: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture(&format!("carriers/{name}"))).unwrap();
    match name {
        n if n.starts_with("easypost") => v["result"]["tracking_code"] = json!(tracking),
        n if n.starts_with("aftership") => v["msg"]["tracking_number"] = json!(tracking),
        _ => v["data"]["tracking_number"] = json!(tracking),
    }
    serde_json::to_vec(&v).unwrap()
}

async fn job_of(app: &RunningApp, facility: &str, kind: &str) -> Value {
    let r = get(
        app,
        &format!("/api/fulfillment/jobs?facility={facility}&kind={kind}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    r.json["jobs"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or(Value::Null)
}

fn problem(r: &Reply, status: u16) {
    assert_eq!(r.status, status, "{}", r.json);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
}

fn snapshot(app: &RunningApp) -> [i64; 6] {
    [
        "shipments",
        "parcels",
        "tracking_events",
        "fulfillment_jobs",
        "stock_movements",
        "order_events",
    ]
    .map(|t| count(app, &format!("SELECT COUNT(*) FROM {t}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_order_ships_from_a_center_and_a_store_and_ends_delivered() {
    let fc = Receiver::start(0, 200).await;
    fc.set_body(&json!({"status": "accepted", "reference": "PAR-77"}));
    let app = app(fc.port).await;
    put_ok(
        &app,
        "/api/facilities/store-hamburg",
        json!({"name": "Hamburg Store", "type": "store", "services": ["ship", "click_collect"],
        "countries": ["DE"], "latitude": 53.55, "longitude": 9.99}),
    )
    .await;
    put_ok(&app, "/api/facilities/fc-paris", json!({"name": "Paris FC", "type": "fulfillment_center", "countries": ["FR", "DE"],
        "latitude": 48.86, "longitude": 2.35, "endpoints": {"orders_url": format!("http://127.0.0.1:{}/orders", fc.port)},
        "secret_variable": "fc_secret_a"})).await;
    put_ok(
        &app,
        "/api/products/MUG",
        json!({"name": "Mug", "weight_grams": 350}),
    )
    .await;
    put_ok(
        &app,
        "/api/products/TEE",
        json!({"name": "Tee", "weight_grams": 200, "parts": {"fc-paris": "PAR-TEE-01"}}),
    )
    .await;
    put_ok(&app, "/api/fulfillment/rates", json!({"zones": [{"country": "DE", "postal_prefix": "", "zone": "de"}],
        "rates": [{"carrier": "usps", "service": "priority", "zone": "de", "max_weight_grams": 1000, "price": "5.90", "currency": "EUR"}]})).await;
    receive_stock(&app, "store-hamburg", "MUG", 2).await;
    receive_stock(&app, "fc-paris", "TEE", 4).await;
    put_ok(
        &app,
        "/api/fulfillment/bins/store-hamburg/MUG",
        json!({"bin": "A-01-3"}),
    )
    .await;

    let id = place(&app, "split-1", &[("MUG", 2), ("TEE", 1)], None).await;
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    let number = o["number"].as_str().unwrap().to_string();

    // The center receives the signed release with its part number.
    eventually("the center got the release", || async {
        !fc.received().is_empty()
    })
    .await;
    let req = fc.received()[0].clone();
    assert_eq!(req.path, "/orders");
    let sig = req.header("waybill-signature").unwrap().to_string();
    assert!(signature::verify_timestamped(
        FC_SECRET.as_bytes(),
        &sig,
        &req.body,
        chrono::Utc::now().timestamp(),
        300
    ));
    let body = req.json();
    assert_eq!(body["order_number"], number.as_str());
    assert_eq!(body["lines"][0]["part_number"], "PAR-TEE-01");
    assert_eq!(body["shipping_method"], "standard");
    assert_eq!(body["shipping_address"]["city"], "Berlin");
    let fc_fo = body["fulfillment_order"].as_str().unwrap().to_string();
    eventually("the center accepted", || async {
        count(&app, &format!("SELECT COUNT(*) FROM fulfillment_orders WHERE name = '{fc_fo}' AND request_status = 'accepted'")) == 1
    })
    .await;

    // A wrong signature changes nothing; the confirmation ships once.
    let confirm = json!({"order_number": number, "ship_date": "2026-11-21", "tracking_number": "1Z9999W99999999999",
                         "carrier": "ups", "shipping_method": "standard"});
    let before = snapshot(&app);
    problem(
        &fc_callback(&app, "fc-paris", &confirm, "wrong-secret").await,
        401,
    );
    assert_eq!(snapshot(&app), before);
    // The tracking link goes into the customer's e-mail: http(s) only.
    for bad in [
        "javascript:alert(document.cookie)",
        "data:text/html,<script>",
        "//evil.example/x",
    ] {
        let mut c = confirm.clone();
        c["tracking_url"] = json!(bad);
        let r = fc_callback(&app, "fc-paris", &c, FC_SECRET).await;
        problem(&r, 422);
        assert_eq!(r.json["errors"][0]["pointer"], "/tracking_url", "{bad}");
    }
    assert_eq!(snapshot(&app), before);
    let raw = confirm.to_string();
    let now = chrono::Utc::now().timestamp();
    // Bound to the endpoint: signed for another one, or without the method
    // and path (v1), it is refused.
    for wrong in [
        center_signature(FC_SECRET, now, "/callbacks/fc/fc-paris/inventory", &raw),
        signature::sign_timestamped(FC_SECRET.as_bytes(), now, raw.as_bytes()),
    ] {
        problem(&fc_send(&app, "fc-paris", raw.clone(), &wrong).await, 401);
    }
    assert_eq!(snapshot(&app), before);
    let signed = center_signature(FC_SECRET, now, "/callbacks/fc/fc-paris/shipments", &raw);
    let r = fc_send(&app, "fc-paris", raw.clone(), &signed).await;
    assert_eq!(
        (r.status, r.json["result"].as_str()),
        (200, Some("shipped")),
        "{}",
        r.json
    );
    // The same signed request again is a replay: refused, nothing changes.
    let r = fc_send(&app, "fc-paris", raw.clone(), &signed).await;
    problem(&r, 401);
    assert!(r.json["detail"].as_str().unwrap().contains("used before"));
    // Signed anew, the same confirmation is recognised as a duplicate.
    let again = center_signature(FC_SECRET, now - 1, "/callbacks/fc/fc-paris/shipments", &raw);
    let r = fc_send(&app, "fc-paris", raw, &again).await;
    assert_eq!(r.json["result"], "duplicate", "{}", r.json);
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM shipments"),
        1,
        "no second shipment"
    );
    problem(
        &fc_callback(
            &app,
            "fc-paris",
            &json!({"order_number": "WB-999999", "tracking_number": "X"}),
            FC_SECRET,
        )
        .await,
        404,
    );

    // The store: pick (checklist with the bin), pack, the carrier pickup list, handover.
    let pick = job_of(&app, "store-hamburg", "pick").await;
    assert_eq!(pick["data"]["checklist"][0]["bin"], "A-01-3");
    assert_eq!(pick["data"]["checklist"][0]["quantity"], 2);
    let pid = pick["id"].as_str().unwrap();
    assert_eq!(
        write(
            &app,
            "POST",
            &format!("/api/fulfillment/jobs/{pid}/start"),
            &json!({})
        )
        .await
        .status,
        200
    );
    let r = write(
        &app,
        "POST",
        &format!("/api/fulfillment/pick-jobs/{pid}/complete"),
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let pack = job_of(&app, "store-hamburg", "pack").await;
    let kid = pack["id"].as_str().unwrap();
    // A parcel the rate table prices no rate for (a service it does not list,
    // or over its heaviest weight) is 422, and the pack job stays open.
    for (service, weight) in [("express", 380), ("priority", 5000)] {
        let r = write(&app, "POST", &format!("/api/fulfillment/pack-jobs/{kid}/complete"), &json!({
            "carrier": "usps", "service": service,
            "parcels": [{"tracking_number": "EZ4000000004", "weight_grams": weight, "items": [{"line_no": 1, "quantity": 2}]}]})).await;
        problem(&r, 422);
        assert_eq!(r.json["errors"][0]["pointer"], "/parcels/0", "{}", r.json);
        assert!(r.json["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("no rate for usps"));
    }
    assert_eq!(
        job_of(&app, "store-hamburg", "pack").await["status"],
        "open"
    );
    let r = write(&app, "POST", &format!("/api/fulfillment/pack-jobs/{kid}/complete"), &json!({
        "carrier": "usps", "service": "priority",
        "parcels": [
            {"tracking_number": "EZ4000000004", "items": [{"line_no": 1, "quantity": 1}]},
            {"tracking_number": "9205590164917312751089", "weight_grams": 380, "length_mm": 200, "width_mm": 150, "height_mm": 120,
             "items": [{"line_no": 1, "quantity": 1}]}
        ]})).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let pickups = get(
        &app,
        "/api/fulfillment/carrier-pickups?facility=store-hamburg",
    )
    .await
    .json;
    assert_eq!(pickups["carriers"][0]["carrier"], "usps");
    assert_eq!(pickups["carriers"][0]["parcels"], 2);
    let hand = job_of(&app, "store-hamburg", "handover").await;
    assert_eq!(
        hand["data"]["parcels"][0]["label"]["cost"]["price"]["amount"], "5.90",
        "priced from the rate table"
    );
    assert_eq!(hand["data"]["parcels"][0]["label"]["weight_grams"], 350);
    // Each parcel's return label: from the customer's address back to this
    // store, with the carrier and service of the outbound label, its own reference.
    let fo_name = hand["fulfillment_order"].as_str().unwrap();
    for (i, p) in hand["data"]["parcels"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let rl = &p["return_label"];
        assert_eq!(rl["reference"], format!("RMA-{fo_name}-{}", i + 1), "{rl}");
        assert_eq!(rl["from"], p["label"]["destination"], "{rl}");
        assert_eq!(
            rl["from"]["postal_code"], "10117",
            "the customer's address: {rl}"
        );
        assert_eq!(
            (rl["to"]["facility"].as_str(), rl["to"]["name"].as_str()),
            (Some("store-hamburg"), Some("Hamburg Store")),
            "{rl}"
        );
        assert_eq!(
            (rl["carrier"].as_str(), rl["service"].as_str()),
            (Some("usps"), Some("priority"))
        );
    }
    let hid = hand["id"].as_str().unwrap();
    let r = write(
        &app,
        "POST",
        &format!("/api/fulfillment/handover-jobs/{hid}/complete"),
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(
        (o["fulfillment_status"].as_str(), o["status"].as_str()),
        (Some("fulfilled"), Some("completed"))
    );

    // Tracking in each carrier's own shape, wrong signatures first.
    let ep = carrier_fixture("easypost-tracker-updated.json", "EZ4000000004");
    let af = carrier_fixture("aftership-tracking-update.json", "1Z9999W99999999999");
    let sh = carrier_fixture("shippo-track-updated.json", "9205590164917312751089");
    let before = snapshot(&app);
    problem(&easypost(&app, &ep, "nope").await, 401);
    problem(&aftership(&app, &af, "nope").await, 401);
    problem(&shippo(&app, &sh, "nope").await, 401);
    assert_eq!(snapshot(&app), before, "wrong signatures change nothing");
    let r = easypost(&app, &ep, EASYPOST_SECRET).await;
    assert_eq!(
        (r.status, r.json["status"].as_str()),
        (200, Some("delivered")),
        "{}",
        r.json
    );
    let r = aftership(&app, &af, AFTERSHIP_SECRET).await;
    assert_eq!(r.json["result"], "delivered", "{}", r.json);
    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(o["fulfillment_status"], "partially_delivered");
    let r = shippo(&app, &sh, SHIPPO_TOKEN).await;
    assert_eq!(r.json["result"], "delivered", "{}", r.json);
    let r = shippo(&app, &sh, SHIPPO_TOKEN).await;
    assert_eq!(r.json["result"], "duplicate", "the same update twice");
    let r = easypost(
        &app,
        &carrier_fixture("easypost-tracker-updated.json", "EZ-UNKNOWN"),
        EASYPOST_SECRET,
    )
    .await;
    assert_eq!(
        (r.status, r.json["result"].as_str()),
        (200, Some("unknown_tracking_number"))
    );

    let o = get(&app, &format!("/api/orders/{id}")).await.json;
    assert_eq!(o["fulfillment_status"], "delivered", "{o}");
    assert_eq!(o["lines"][0]["quantity"]["delivered"], 2);
    assert_eq!(o["lines"][1]["quantity"]["delivered"], 1);
    let sh = get(&app, &format!("/api/orders/{id}/shipments")).await.json;
    let ships = sh["shipments"].as_array().unwrap();
    assert_eq!(ships.len(), 2);
    assert!(ships.iter().all(|s| s["status"] == "delivered"), "{sh}");
    let store = ships
        .iter()
        .find(|s| s["facility"] == "store-hamburg")
        .unwrap();
    assert_eq!(store["parcels"].as_array().unwrap().len(), 2);
    assert_eq!(store["parcels"][1]["dimensions_mm"], json!([200, 150, 120]));
    assert_eq!(store["parcels"][0]["tracking"][0]["provider"], "easypost");
    let kinds: Vec<String> = get(&app, &format!("/api/orders/{id}/events")).await.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    for k in [
        "order.received",
        "routing.decided",
        "fulfillment_order.released",
        "fulfillment_request.accepted",
        "pick_job.opened",
        "pick_job.closed",
        "pack_job.closed",
        "shipment.shipped",
        "tracking.updated",
        "shipment.delivered",
    ] {
        assert!(
            kinds.iter().any(|x| x == k),
            "{k} missing from the timeline: {kinds:?}"
        );
    }
    assert_eq!(
        kinds.iter().filter(|k| *k == "shipment.delivered").count(),
        2
    );
    eventually("two shipment e-mails", || async {
        count(
            &app,
            "SELECT COUNT(*) FROM mailbox WHERE subject LIKE '%is on its way'",
        ) == 2
    })
    .await;
    let mail = get(&app, "/api/notifications/mailbox").await.json;
    let text = mail.to_string();
    assert!(
        text.contains("1Z9999W99999999999") && text.contains("EZ4000000004"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_pick_reroutes_or_backorders_as_configured() {
    let fc = Receiver::start(0, 200).await;
    let app = app(fc.port).await;
    put_ok(&app, "/api/facilities/north", json!({"name": "North", "type": "warehouse", "countries": ["DE"], "latitude": 52.6, "longitude": 13.4})).await;
    put_ok(&app, "/api/facilities/south", json!({"name": "South", "type": "warehouse", "countries": ["DE"], "latitude": 48.1, "longitude": 11.6})).await;
    put_ok(
        &app,
        "/api/products/CUP",
        json!({"name": "Cup", "backorderable": true}),
    )
    .await;
    receive_stock(&app, "north", "CUP", 2).await;
    receive_stock(&app, "south", "CUP", 5).await;
    for (i, policy) in ["reroute", "backorder"].into_iter().enumerate() {
        put_ok(
            &app,
            "/api/fulfillment/settings",
            json!({"short_pick": policy}),
        )
        .await;
        let id = place(&app, &format!("short-{policy}"), &[("CUP", 2)], None).await;
        let jobs = get(&app, "/api/fulfillment/jobs?kind=pick&status=open")
            .await
            .json;
        let pick = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["order_id"] == id.as_str())
            .cloned()
            .unwrap();
        let fac = pick["facility"].as_str().unwrap().to_string();
        let r = write(
            &app,
            "POST",
            &format!(
                "/api/fulfillment/pick-jobs/{}/complete",
                pick["id"].as_str().unwrap()
            ),
            &json!({"lines": [{"line_no": 1, "picked": 1}]}),
        )
        .await;
        assert_eq!(
            (r.status, r.json["short"].as_i64()),
            (200, Some(1)),
            "{}",
            r.json
        );
        let o = get(&app, &format!("/api/orders/{id}")).await.json;
        let q = &o["lines"][0]["quantity"];
        if policy == "reroute" {
            assert_eq!(fac, "north", "Berlin is nearer");
            assert_eq!(q["backordered"], 0, "{o}");
            assert_eq!(
                q["released"], 2,
                "one unit at north, the missing one re-routed: {o}"
            );
            let r = get(&app, &format!("/api/orders/{id}/routing")).await.json;
            assert!(r.to_string().contains("south"), "{r}");
        } else {
            assert_eq!(q["backordered"], 1, "{o}");
            assert_eq!(q["released"], 1, "{o}");
        }
        let ev = get(&app, &format!("/api/orders/{id}/events"))
            .await
            .json
            .to_string();
        assert!(ev.contains("fulfillment_order.short_pick"), "{i}");
    }
    // The missing units left the count where they were missing.
    let s = get(&app, "/api/stock/CUP").await.json.to_string();
    assert!(
        s.contains("short_pick")
            || count(
                &app,
                "SELECT COUNT(*) FROM stock_movements WHERE kind = 'short_pick'"
            ) == 2,
        "{s}"
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM stock_movements WHERE kind = 'short_pick'"
        ),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_lookups_at_bracket_edges_and_bad_requests() {
    let fc = Receiver::start(0, 200).await;
    let app = app(fc.port).await;
    put_ok(&app, "/api/fulfillment/rates", json!({
        "zones": [{"country": "DE", "postal_prefix": "", "zone": "de"}, {"country": "DE", "postal_prefix": "2", "zone": "de-north"},
                  {"country": "AT", "postal_prefix": "", "zone": "eu1"}],
        "rates": [
            {"carrier": "dhl", "service": "parcel", "zone": "de", "max_weight_grams": 1000, "price": "4.99", "currency": "EUR"},
            {"carrier": "dhl", "service": "parcel", "zone": "de", "max_weight_grams": 31500, "price": "16.49", "currency": "EUR"},
            {"carrier": "dhl", "service": "parcel", "zone": "de-north", "max_weight_grams": 1000, "price": "3.99", "currency": "EUR"},
            {"carrier": "dhl", "service": "parcel", "zone": "eu1", "max_weight_grams": 5000, "price": "13.99", "currency": "EUR"}
        ]})).await;
    let q = |country: &str, postal: &str, w: i64| {
        format!(
            "/api/fulfillment/rates/quote?country={country}&postal_code={postal}&weight_grams={w}"
        )
    };
    for (country, postal, w, zone, price) in [
        ("DE", "10117", 1000, "de", Some("4.99")),
        ("DE", "10117", 1001, "de", Some("16.49")),
        ("DE", "10117", 31500, "de", Some("16.49")),
        ("DE", "10117", 31501, "de", None),
        ("DE", "20095", 1000, "de-north", Some("3.99")),
        ("DE", "20095", 1001, "de-north", None),
        ("AT", "1010", 5000, "eu1", Some("13.99")),
    ] {
        let r = get(&app, &q(country, postal, w)).await;
        assert_eq!(r.status, 200, "{}", r.json);
        assert_eq!(r.json["zone"], zone, "{country} {postal} {w}");
        assert_eq!(
            r.json["rates"][0]["price"]["amount"].as_str(),
            price,
            "{country} {postal} {w}: {}",
            r.json
        );
    }
    problem(
        &get(&app, "/api/fulfillment/rates/quote?country=DE").await,
        422,
    );
    problem(
        &get(
            &app,
            "/api/fulfillment/rates/quote?country=Germany&weight_grams=5",
        )
        .await,
        422,
    );
    let before = count(&app, "SELECT COUNT(*) FROM shipping_rates");
    problem(
        &write(
            &app,
            "PUT",
            "/api/fulfillment/rates",
            &json!({"zones": [], "rates": [{"carrier": "dhl", "service": "x", "zone": "mars",
        "max_weight_grams": 10, "price": "1", "currency": "EUR"}]}),
        )
        .await,
        422,
    );
    assert_eq!(count(&app, "SELECT COUNT(*) FROM shipping_rates"), before);
    problem(
        &write(
            &app,
            "PUT",
            "/api/fulfillment/settings",
            &json!({"short_pick": "sometimes"}),
        )
        .await,
        422,
    );
    problem(
        &write(
            &app,
            "POST",
            "/api/fulfillment/pick-jobs/nope/complete",
            &json!({}),
        )
        .await,
        404,
    );
    problem(
        &send(&app, "GET", "/api/fulfillment/jobs", &[], Vec::new()).await,
        401,
    );
    problem(&get(&app, "/api/fulfillment/jobs?kind=sort").await, 422);
    // Callbacks for carriers Waybill does not know, or a facility without a secret.
    problem(
        &send(
            &app,
            "POST",
            "/callbacks/carriers/fedex",
            &[],
            b"{}".to_vec(),
        )
        .await,
        404,
    );
    problem(
        &fc_callback(&app, "nowhere", &json!({"order_number": "WB-1"}), FC_SECRET).await,
        401,
    );
}
