//! The daily report through the compiled report, report-cron and notify
//! components on tests/host: business days across a DST change, in two time
//! zones, every metric against hand-computed values.

use serde_json::{json, Value};
use waybill_scenarios::*;

/// Orders and events around the end of CEST (Europe/Berlin, 2026-10-25: 25 hours).
fn seed(app: &waybill_host::RunningApp) {
    let order = |id: &str,
                 channel: &str,
                 currency: &str,
                 total: i64,
                 created: &str,
                 cancelled: Option<&str>| {
        let cancelled = cancelled
            .map(|c| format!("'{c}'"))
            .unwrap_or_else(|| "NULL".into());
        format!(
            "INSERT INTO orders (id, number, source, external_id, channel, status, fulfillment_status, financial_status, currency,
                total_minor, search_text, placed_at, created_at, updated_at, cancelled_at, doc)
             VALUES ('{id}', 'WB-{id}', 'api', '{id}', '{channel}', 'received', 'unfulfilled', 'paid', '{currency}', {total}, '{id}',
                '{created}', '{created}', '{created}', {cancelled}, '{{}}')"
        )
    };
    let line = |id: &str, qty: i64, cancelled: i64, back: i64| {
        format!(
            "INSERT INTO order_lines (order_id, line_no, sku, name, unit_price_minor, subtotal_minor, discount_minor, tax_minor,
                requires_shipping, qty_ordered, qty_cancelled, qty_backordered) VALUES ('{id}', 1, 'SKU', 'x', 0, 0, 0, 0, 1, {qty}, {cancelled}, {back})"
        )
    };
    let event = |id: &str, kind: &str, at: &str, data: Value| {
        format!("INSERT INTO order_events (order_id, at, actor, kind, summary, data) VALUES ('{id}', '{at}', 'test', '{kind}', '', '{data}')")
    };
    let statements = vec![
        // A: 23:59 on Oct 24 in Berlin (CEST).
        order("A", "shopify", "EUR", 1000, "2026-10-24T21:59:00.000000Z", None),
        line("A", 1, 0, 0),
        // B: midnight Oct 25 in Berlin; one unit on backorder.
        order("B", "shopify", "EUR", 2000, "2026-10-24T22:00:00.000000Z", None),
        line("B", 3, 0, 1),
        // C: 02:30 CEST, the first pass through the repeated hour.
        order("C", "woocommerce", "EUR", 3000, "2026-10-25T00:30:00.000000Z", None),
        line("C", 2, 0, 0),
        // D: 02:30 CET, the second pass; cancelled that morning.
        order("D", "api", "USD", 500, "2026-10-25T01:30:00.000000Z", Some("2026-10-25T05:00:00.000000Z")),
        line("D", 1, 1, 0),
        // E: 23:59:59 CET, the last second of Oct 25.
        order("E", "shopify", "EUR", 4000, "2026-10-25T22:59:59.000000Z", None),
        line("E", 1, 0, 0),
        // F: midnight Oct 26.
        order("F", "shopify", "EUR", 5000, "2026-10-25T23:00:00.000000Z", None),
        line("F", 1, 0, 0),
        event("A", "shipment.shipped", "2026-10-25T07:59:00.000000Z", json!({"facility": "berlin-wh", "units": 1})),
        event("B", "shipment.shipped", "2026-10-25T10:00:00.000000Z", json!({"facility": "berlin-wh", "units": 2, "partial": true})),
        event("B", "shipment.shipped", "2026-10-25T12:00:00.000000Z", json!({"facility": "fc-east", "units": 1})),
        event("C", "shipment.shipped", "2026-10-25T06:30:00.000000Z", json!({"facility": "berlin-wh", "units": 2})),
        event("B", "payment.captured", "2026-10-25T09:00:00.000000Z", json!({"amount_minor": 2000, "currency": "EUR"})),
        event("C", "payment.captured", "2026-10-25T23:30:00.000000Z", json!({"amount_minor": 3000, "currency": "EUR"})),
        event("A", "return.received", "2026-10-25T20:00:00.000000Z", json!({"units": 1})),
        "INSERT INTO order_holds (order_id, reason, note, created_at) VALUES ('D', 'manual_review', 'x', '2026-10-25T02:00:00.000000Z')".to_string(),
        "INSERT INTO order_holds (order_id, reason, note, created_at) VALUES ('E', 'awaiting_payment', 'x', '2026-10-24T21:00:00.000000Z')".to_string(),
    ];
    for s in statements {
        app.sql("default", &s, &[])
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

async fn migrated_app(tz: &str) -> waybill_host::RunningApp {
    let app = start_with(&[
        ("merchant_timezone", tz),
        ("management_emails", "ceo@example.com, ops@example.com"),
    ])
    .await;
    // Any request migrates the schema.
    assert_eq!(get(&app, "/api/reports/daily/2000-01-01").await.status, 404);
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berlin_business_day_across_the_dst_change_matches_hand_computed_metrics() {
    let app = migrated_app("Europe/Berlin").await;
    seed(&app);
    let r = post_api(&app, "/api/reports/daily/2026-10-25", &[], Vec::new()).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let rep = r.json;
    assert_eq!(
        rep["window"],
        json!({"from": "2026-10-24T22:00:00.000000Z", "to": "2026-10-25T23:00:00.000000Z"})
    );
    let o = &rep["overall"];
    assert_eq!(o["orders_received"], 4, "B, C, D, E");
    assert_eq!(o["revenue_ordered"], json!({"EUR": "90.00", "USD": "5.00"}));
    assert_eq!(
        o["average_order_value"],
        json!({"EUR": "30.00", "USD": "5.00"})
    );
    assert_eq!(o["units_ordered"], 7);
    assert_eq!(o["orders_cancelled"], 1);
    assert_eq!(
        o["fill_rate"],
        json!(0.8333),
        "(7 - 1 cancelled - 1 backordered) / (7 - 1)"
    );
    assert_eq!(o["orders_shipped"], 3, "A, B, C");
    assert_eq!(o["units_shipped"], 6);
    assert_eq!(o["partial_shipments"], 1);
    assert_eq!(o["split_shipments"], 1, "B shipped from two facilities");
    assert_eq!(
        o["time_to_ship_hours"],
        json!({"mean": 9.33, "p90": 12.0, "orders": 3}),
        "A 10 h, B 12 h, C 6 h"
    );
    assert_eq!(o["orders_returned"], 1);
    assert_eq!(o["units_returned"], 1);
    assert_eq!(
        o["revenue_captured"],
        json!({"EUR": "20.00"}),
        "C's capture is after midnight"
    );
    assert_eq!(o["exceptions"], json!({"manual_review": 1}));
    assert_eq!(
        o["backorders"],
        json!({"orders": 1, "units": 1, "oldest_age_hours": 25.0})
    );
    let shopify = &rep["by_channel"]["shopify"];
    assert_eq!(shopify["orders_received"], 2);
    assert_eq!(shopify["revenue_ordered"], json!({"EUR": "60.00"}));
    assert_eq!(shopify["average_order_value"], json!({"EUR": "30.00"}));
    assert_eq!(shopify["orders_shipped"], 2);
    assert_eq!(rep["by_channel"]["api"]["orders_cancelled"], 1);
    assert_eq!(rep["by_facility"]["berlin-wh"]["orders_shipped"], 3);
    assert_eq!(rep["by_facility"]["berlin-wh"]["units_shipped"], 5);
    assert_eq!(rep["by_facility"]["fc-east"]["units_shipped"], 1);
    // The day before and after.
    let before = post_api(&app, "/api/reports/daily/2026-10-24", &[], Vec::new())
        .await
        .json;
    assert_eq!(before["overall"]["orders_received"], 1, "A");
    let after = post_api(&app, "/api/reports/daily/2026-10-26", &[], Vec::new())
        .await
        .json;
    assert_eq!(after["overall"]["orders_received"], 1, "F");
    assert_eq!(
        after["overall"]["revenue_captured"],
        json!({"EUR": "30.00"})
    );
    // Stored: read back as JSON, a range, and CSV.
    let stored = get(&app, "/api/reports/daily/2026-10-25").await;
    assert_eq!(stored.json["overall"], rep["overall"]);
    let range = get(&app, "/api/reports/daily?from=2026-10-24&to=2026-10-26")
        .await
        .json;
    let dates: Vec<&str> = range["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["date"].as_str().unwrap())
        .collect();
    assert_eq!(dates, vec!["2026-10-24", "2026-10-25", "2026-10-26"]);
    let csv = send(
        &app,
        "GET",
        "/api/reports/daily/2026-10-25",
        &[
            ("authorization", &format!("Bearer {READ_TOKEN}")),
            ("accept", "text/csv"),
        ],
        Vec::new(),
    )
    .await;
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let text = csv.json.as_str().unwrap().to_string();
    assert!(
        text.starts_with("date,timezone,scope,metric,value\n"),
        "{text}"
    );
    assert!(
        text.contains("2026-10-25,Europe/Berlin,overall,orders_received,4\n"),
        "{text}"
    );
    assert!(
        text.contains("2026-10-25,Europe/Berlin,overall,revenue_ordered.EUR,90.00\n"),
        "{text}"
    );
    assert!(
        text.contains("2026-10-25,Europe/Berlin,facility:fc-east,units_shipped,1\n"),
        "{text}"
    );
    let csv2 = get(&app, "/api/reports/daily/2026-10-25?format=csv").await;
    assert_eq!(csv2.json.as_str().unwrap(), text);
    // Regenerating replaces: 200, still one row for the date, no second e-mail queued.
    assert_eq!(
        post_api(&app, "/api/reports/daily/2026-10-25", &[], Vec::new())
            .await
            .status,
        200
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM daily_reports WHERE date = '2026-10-25'"
        ),
        1
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM outbox WHERE topic = 'report.daily'"
        ),
        3,
        "one per date"
    );
    // Bad input.
    assert_eq!(get(&app, "/api/reports/daily/2026-13-01").await.status, 400);
    assert_eq!(get(&app, "/api/reports/daily/2026-10-27").await.status, 404);
    assert_eq!(
        get(&app, "/api/reports/daily?from=2026-10-26&to=2026-10-01")
            .await
            .status,
        400
    );
    assert_eq!(
        post_api(&app, "/api/reports/daily/2999-01-01", &[], Vec::new())
            .await
            .status,
        422
    );
    assert_eq!(
        send(
            &app,
            "POST",
            "/api/reports/daily/2026-10-25",
            &[("authorization", &format!("Bearer {READ_TOKEN}"))],
            Vec::new()
        )
        .await
        .status,
        403
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_orders_fall_on_other_days_in_tokyo() {
    let app = migrated_app("Asia/Tokyo").await;
    seed(&app);
    let rep = post_api(&app, "/api/reports/daily/2026-10-25", &[], Vec::new())
        .await
        .json;
    assert_eq!(
        rep["window"],
        json!({"from": "2026-10-24T15:00:00.000000Z", "to": "2026-10-25T15:00:00.000000Z"})
    );
    assert_eq!(
        rep["overall"]["orders_received"], 4,
        "A, B, C, D (E and F are Oct 26 in Tokyo)"
    );
    assert_eq!(
        rep["overall"]["revenue_ordered"],
        json!({"EUR": "60.00", "USD": "5.00"})
    );
    assert_eq!(rep["overall"]["orders_shipped"], 3);
    assert_eq!(
        rep["overall"]["orders_returned"], 0,
        "A's return is at 05:00 on Oct 26 in Tokyo"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cron_stores_yesterdays_report_and_mails_management_once() {
    let app = migrated_app("Europe/Berlin").await;
    // An order created yesterday (in Berlin), through the real intake.
    let mut v: Value = serde_json::from_slice(&fixture("api/order-jpy.json")).unwrap();
    v["external_id"] = json!("R-1");
    assert_eq!(
        post_api(
            &app,
            "/api/orders",
            &[("content-type", "application/json")],
            v.to_string()
        )
        .await
        .status,
        201
    );
    let day = chrono::NaiveDate::from_num_days_from_ce_opt(chrono_berlin_today() - 1)
        .unwrap()
        .to_string();
    app.sql(
        "default",
        &format!("UPDATE orders SET created_at = '{day}T11:00:00.000000Z'"),
        &[],
    )
    .unwrap();
    app.fire_cron("report-cron").await.unwrap();
    let rep = get(&app, &format!("/api/reports/daily/{day}")).await;
    assert_eq!(rep.status, 200, "{}", rep.json);
    assert_eq!(rep.json["overall"]["orders_received"], 1);
    assert_eq!(
        rep.json["overall"]["revenue_ordered"],
        json!({"JPY": "9394"})
    );
    // The latest report is also in key-value.
    let latest: Value = serde_json::from_slice(
        &app.kv_get("default", "report:latest")
            .unwrap()
            .expect("cached"),
    )
    .unwrap();
    assert_eq!(latest["date"], day.as_str());
    // Deliver: management gets the report by e-mail.
    app.fire_cron("notify-cron").await.unwrap();
    let mails = get(&app, "/api/notifications/mailbox?to=ceo@example.com")
        .await
        .json;
    let m = mails["messages"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{mails}");
    assert_eq!(m[0]["subject"], format!("Daily fulfillment report {day}"));
    assert!(
        m[0]["text"].as_str().unwrap().contains("1 orders received"),
        "{}",
        m[0]["text"]
    );
    assert_eq!(
        get(&app, "/api/notifications/mailbox?to=ops@example.com")
            .await
            .json["messages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A second run replaces the report; no duplicate row, no second e-mail.
    app.fire_cron("report-cron").await.unwrap();
    app.fire_cron("notify-cron").await.unwrap();
    assert_eq!(count(&app, "SELECT count(*) FROM daily_reports"), 1);
    assert_eq!(
        get(&app, "/api/notifications/mailbox?to=ceo@example.com")
            .await
            .json["messages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.stop().await;
}

/// Today's date in Berlin as days from the common era (for yesterday's arithmetic).
fn chrono_berlin_today() -> i32 {
    use chrono::Datelike;
    let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    chrono::Utc::now()
        .with_timezone(&tz)
        .date_naive()
        .num_days_from_ce()
}

/// A business day made by the real flow (intake, routing, capture, a center's
/// shipment callbacks, a cancellation, a return), then its report: every
/// metric is what the flow did, not what rows were written by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_report_counts_what_the_real_flow_did_today() {
    let fc = Receiver::start(0, 200).await;
    let app = start_with(&[
        ("merchant_timezone", "UTC"),
        ("fc_secret_a", FC_SECRET),
        (
            "fc_extra_outbound_host",
            &format!("http://127.0.0.1:{}", fc.port),
        ),
    ])
    .await;
    let day = chrono::Utc::now().date_naive();
    put_ok(&app, "/api/facilities/fc-east", json!({"name": "East FC", "type": "fulfillment_center", "countries": ["DE"],
        "latitude": 52.5, "longitude": 13.4, "endpoints": {"orders_url": format!("http://127.0.0.1:{}/orders", fc.port)},
        "secret_variable": "fc_secret_a"})).await;
    for sku in ["MUG", "TEE"] {
        put_ok(
            &app,
            &format!("/api/products/{sku}"),
            json!({"name": sku, "backorderable": true}),
        )
        .await;
    }
    receive_stock(&app, "fc-east", "MUG", 3).await;
    let place = |ext: &'static str, channel: &'static str, lines: Value| {
        let app = &app;
        async move {
            let body = json!({"external_id": ext, "channel": channel, "currency": "EUR", "financial_status": "paid",
                "customer": {"email": format!("{ext}@example.com")},
                "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
                "lines": lines, "shipping_lines": [{"method": "standard", "price": "0.00"}]});
            let r = post_api(
                app,
                "/api/orders",
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .await;
            assert_eq!(r.status, 201, "{}", r.json);
            (
                r.json["id"].as_str().unwrap().to_string(),
                r.json["number"].as_str().unwrap().to_string(),
            )
        }
    };
    // O1: two mugs, released and shipped whole. O2: a tee nobody has, then
    // cancelled. O3: two mugs with one left: one shipped, one backordered.
    let (o1, n1) = place(
        "day-1",
        "shopify",
        json!([{"sku": "MUG", "quantity": 2, "unit_price": "10.00"}]),
    )
    .await;
    let (o2, _) = place(
        "day-2",
        "api",
        json!([{"sku": "TEE", "quantity": 1, "unit_price": "5.00"}]),
    )
    .await;
    let (o3, n3) = place(
        "day-3",
        "shopify",
        json!([{"sku": "MUG", "quantity": 2, "unit_price": "10.00"}]),
    )
    .await;
    for id in [&o1, &o3] {
        eventually("released", || async {
            count(&app, &format!("SELECT COUNT(*) FROM fulfillment_orders WHERE order_id = '{id}' AND status = 'open'")) == 1
        })
        .await;
    }
    let r = write(
        &app,
        "POST",
        &format!("/api/orders/{o2}/cancel"),
        &json!({"reason": "out of stock"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    for (number, tracking) in [(&n1, "T-1"), (&n3, "T-3")] {
        let raw = json!({"order_number": number, "tracking_number": tracking}).to_string();
        let path = "/callbacks/fc/fc-east/shipments";
        let sig = center_signature(FC_SECRET, chrono::Utc::now().timestamp(), path, &raw);
        let r = send(
            &app,
            "POST",
            path,
            &[
                ("content-type", "application/json"),
                ("waybill-signature", &sig),
            ],
            raw,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.json);
    }
    // One mug of O1 comes back, broken.
    let r = write(&app, "POST", &format!("/api/orders/{o1}/returns"),
        &json!({"lines": [{"line_no": 1, "quantity": 1, "reason": "too small"}], "resolution": "refund"})).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let rma = r.json["id"].as_str().unwrap().to_string();
    let r = write(
        &app,
        "POST",
        &format!("/api/returns/{rma}/approve"),
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let r = write(
        &app,
        "POST",
        &format!("/api/returns/{rma}/receive"),
        // Damaged: scrapped, so O3's backorder still waits.
        &json!({"lines": [{"line_no": 1, "quantity": 1, "condition": "damaged"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);

    let r = post_api(&app, &format!("/api/reports/daily/{day}"), &[], Vec::new()).await;
    assert_eq!(r.status, 201, "{}", r.json);
    if chrono::Utc::now().date_naive() != day {
        eprintln!("the flow crossed midnight (UTC); the day's figures are split");
        return;
    }
    let o = &r.json["overall"];
    assert_eq!(o["orders_received"], 3, "{o}");
    assert_eq!(o["revenue_ordered"], json!({"EUR": "45.00"}), "{o}");
    assert_eq!(o["units_ordered"], 5);
    assert_eq!(o["orders_cancelled"], 1, "O2");
    assert_eq!(
        o["fill_rate"],
        json!(0.75),
        "(5 - 1 cancelled - 1 backordered) / (5 - 1)"
    );
    assert_eq!(o["orders_shipped"], 2, "O1, O3");
    assert_eq!(o["units_shipped"], 3);
    assert_eq!(o["split_shipments"], 0);
    assert_eq!(o["time_to_ship_hours"]["orders"], 2);
    assert_eq!(o["orders_returned"], 1);
    assert_eq!(o["units_returned"], 1);
    // Captured at release: O1's two mugs and O3's one (paid at the source).
    assert_eq!(o["revenue_captured"], json!({"EUR": "30.00"}), "{o}");
    assert_eq!(o["backorders"]["orders"], 1, "O3's second mug");
    assert_eq!(o["backorders"]["units"], 1);
    assert_eq!(r.json["by_channel"]["shopify"]["orders_received"], 2);
    assert_eq!(r.json["by_channel"]["api"]["orders_cancelled"], 1);
    assert_eq!(r.json["by_facility"]["fc-east"]["orders_shipped"], 2);
    assert_eq!(r.json["by_facility"]["fc-east"]["units_shipped"], 3);
    app.stop().await;
    fc.stop();
}
