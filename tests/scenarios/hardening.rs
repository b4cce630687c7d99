//! Hardening through the compiled components on tests/host: limits that hold
//! before any work is done, on every component's routes, with or without a token.

use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use waybill_host::RunningApp;
use waybill_scenarios::*;

/// The body limit every route applies (`waybill::http::MAX_BODY`).
const LIMIT: usize = 1024 * 1024;

/// One public route per component (and the webhook and callback routes).
const ROUTES: &[&str] = &[
    "/webhooks/shopify",
    "/api/orders/batch",
    "/api/orders/W-1/cancel",
    "/api/notifications/subscriptions",
    "/api/reports/daily",
    "/api/stock/receipts",
    "/callbacks/fc/berlin/inventory",
    "/api/routing/simulate",
    "/api/payments/retry",
    "/api/fulfillment/jobs",
    "/callbacks/carriers/easypost",
];

/// Sends `head` (and `body`, keeping the connection open afterwards) and reads
/// the status line of the answer, which must come within 5 seconds.
async fn status_of(app: &RunningApp, head: String, body: Vec<u8>) -> Result<u16, String> {
    let mut s = TcpStream::connect(app.addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = s.into_split();
    // The writer may be cut off by the server's answer; that is the point.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&body).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(wr);
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while !got.windows(2).any(|w| w == b"\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    if read.is_err() {
        return Err("no answer within 5 s (the body was being buffered)".into());
    }
    let line = String::from_utf8_lossy(&got).to_string();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_read() {
    let app = start().await;
    assert_eq!(get(&app, "/api/orders").await.status, 200); // the schema exists
    for route in ROUTES {
        for auth in ["", "Authorization: Bearer test-write-token\r\n"] {
            // The body never comes: an answer proves nothing waited for it.
            let head = format!(
                "POST {route} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                app.addr,
                LIMIT + 1
            );
            let got = status_of(&app, head, Vec::new()).await;
            assert_eq!(got, Ok(413), "{route} with {auth:?}");
        }
    }
    assert_eq!(count(&app, "SELECT COUNT(*) FROM orders"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_is_read_no_further_than_the_limit() {
    let app = start().await;
    assert_eq!(get(&app, "/api/orders").await.status, 200); // the schema exists
                                                            // Past the limit in 64 KiB chunks, and never finished: only a reader that
                                                            // stops at the limit can answer.
    let chunk = vec![b' '; 64 * 1024];
    let mut body = Vec::new();
    while body.len() < LIMIT + 2 * chunk.len() {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    for route in ROUTES {
        let head = format!(
            "POST {route} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer test-write-token\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            app.addr
        );
        let got = status_of(&app, head, body.clone()).await;
        assert_eq!(got, Ok(413), "{route}");
    }
    assert_eq!(count(&app, "SELECT COUNT(*) FROM orders"), 0);
}

/// A warehouse in Berlin and a product MUG, no stock yet.
async fn berlin_with_mug(app: &RunningApp) {
    put_ok(
        app,
        "/api/facilities/berlin",
        serde_json::json!({"name": "Berlin", "type": "warehouse", "countries": ["DE"]}),
    )
    .await;
    put_ok(app, "/api/products/MUG", serde_json::json!({"name": "Mug"})).await;
}

/// Caller-chosen quantities at the ends of the integer range answer 4xx and move
/// nothing: no wrapped arithmetic reaches the stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_quantities_are_refused_and_move_no_stock() {
    let app = start().await;
    berlin_with_mug(&app).await;
    receive_stock(&app, "berlin", "MUG", 5).await;
    let stock = |app: &RunningApp| {
        count(
            app,
            "SELECT COALESCE(SUM(on_hand) * 1000000 + SUM(reserved), -1) FROM stock",
        )
    };
    let before = stock(&app);
    for q in [
        i64::MIN,
        i64::MIN + 1,
        i64::MAX,
        -1_000_000_001,
        1_000_000_001,
    ] {
        let cases = [
            (
                "/api/stock/adjustments",
                serde_json::json!({"facility": "berlin", "sku": "MUG", "delta": q, "reason": "count"}),
                "/delta",
            ),
            (
                "/api/stock/receipts",
                serde_json::json!({"facility": "berlin", "lines": [{"sku": "MUG", "quantity": q}]}),
                "/lines/0/quantity",
            ),
        ];
        for (path, body, pointer) in cases {
            // Refused as out of range, not as a (wrapped) stock conflict.
            let r = write(&app, "POST", path, &body).await;
            assert_eq!(r.status, 422, "{path} with {q}: {}", r.json);
            assert_eq!(
                r.header("content-type"),
                Some("application/problem+json"),
                "{path} with {q}"
            );
            assert_eq!(r.json["errors"][0]["pointer"], pointer, "{path} with {q}");
        }
    }
    assert_eq!(stock(&app), before);
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM stock_movements"),
        1,
        "only the first receipt"
    );
}

/// A storage failure answers 500 with a reference to the log line, never the
/// database's own text (table names, SQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_shows_a_reference_not_the_database_text() {
    let app = start().await;
    assert_eq!(get(&app, "/api/facilities").await.status, 200);
    app.sql("default", "DROP TABLE facilities", &[])
        .expect("drop");
    let r = get(&app, "/api/facilities").await;
    assert_eq!(r.status, 500, "{}", r.json);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let detail = r.json["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("reference "), "{detail}");
    for leak in ["facilities", "no such table", "SELECT", "sqlite"] {
        assert!(
            !detail.to_lowercase().contains(&leak.to_lowercase()),
            "{leak} in {detail}"
        );
    }
}

/// Addresses a user may not make Waybill call: every internal class, Spin's
/// private service names, and public hosts the operator did not allow.
fn refused_targets() -> Vec<String> {
    [
        "http://127.0.0.1:9/hook",
        "http://127.1/hook",
        "http://2130706433/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.8/hook",
        "http://192.168.1.1/hook",
        "http://[fd00::1]/hook",
        "http://localhost:3000/hook",
        "http://notify.spin.internal/internal/sweep",
        "https://not-allowed.example/hook",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_outside_the_operators_list_are_refused_when_stored() {
    let app = start_with(&[("outbound_receivers", "hooks.example.com")]).await;
    let targets = refused_targets();
    for url in &targets {
        let r = write(
            &app,
            "POST",
            "/api/notifications/subscriptions",
            &serde_json::json!({"url": url, "events": ["order.received"]}),
        )
        .await;
        assert_eq!(r.status, 422, "{url}: {}", r.json);
        assert_eq!(r.json["errors"][0]["pointer"], "/url", "{url}");
        for field in ["orders_url", "inventory_url", "cancel_url"] {
            let r = write(
                &app,
                "PUT",
                "/api/facilities/fc-x",
                &serde_json::json!({"name": "X", "type": "fulfillment_center", "countries": ["DE"],
                    "secret_variable": "fc_secret_a", "endpoints": {field: url}}),
            )
            .await;
            assert_eq!(r.status, 422, "{field} {url}: {}", r.json);
            assert_eq!(
                r.json["errors"][0]["pointer"],
                format!("/endpoints/{field}"),
                "{url}"
            );
        }
    }
    assert_eq!(count(&app, "SELECT COUNT(*) FROM subscriptions"), 0);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM facilities"), 0);
    // What the operator allowed is stored.
    let r = write(
        &app,
        "POST",
        "/api/notifications/subscriptions",
        &serde_json::json!({"url": "https://hooks.example.com/waybill", "events": ["order.received"]}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    eprintln!(
        "SSRF: {} refused targets × 4 endpoint fields",
        targets.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_endpoint_the_list_no_longer_allows_is_not_called() {
    let allowed = Receiver::start(0, 200).await;
    let refused = Receiver::start(0, 200).await;
    let app = start_with(&[
        ("outbound_receivers", &format!("127.0.0.1:{}", allowed.port)),
        ("notify_extra_outbound_host", "http://127.0.0.1:*"),
        ("fc_extra_outbound_host", "http://127.0.0.1:*"),
        ("fc_secret_a", "a-center-secret-0123456789"),
    ])
    .await;
    assert_eq!(get(&app, "/api/orders").await.status, 200); // the schema exists
                                                            // Rows stored before the operator narrowed the list.
    for port in [allowed.port, refused.port] {
        app.sql(
            "default",
            &format!("INSERT INTO subscriptions (url, event_types, secret, active, created_at) VALUES ('http://127.0.0.1:{port}/hook', '[\"order.received\"]', 'sixteen-chars-secret', 1, '2026-01-01T00:00:00Z')"),
            &[],
        )
        .expect("subscription");
    }
    app.sql(
        "default",
        &format!("INSERT INTO facilities (id, name, type, services, countries, shipping_methods, daily_capacity, priority, active, endpoints, secret_variable, created_at, updated_at) VALUES ('fc-old', 'Old FC', 'fulfillment_center', '[\"ship\"]', '[\"DE\"]', '[]', NULL, 0, 1, '{{\"inventory_url\": \"http://127.0.0.1:{}/inventory\"}}', 'fc_secret_a', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')", refused.port),
        &[],
    )
    .expect("facility");
    let r = shopify(
        &app,
        "orders/create",
        "ssrf-1",
        &fixture("shopify/orders-create.json"),
    )
    .await;
    assert_eq!(r.json["result"], "created", "{}", r.json);
    eventually("the allowed receiver got the event", || async {
        allowed.received().len() == 1
    })
    .await;
    eventually("the refused delivery is dead", || async {
        count(
            &app,
            "SELECT COUNT(*) FROM deliveries WHERE kind = 'webhook' AND state = 'dead' AND last_error LIKE 'refused receiver%'",
        ) == 1
    })
    .await;
    let r = write(
        &app,
        "POST",
        "/api/facilities/fc-old/inventory/sync",
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.json);
    assert!(
        r.json["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("refused"),
        "{}",
        r.json
    );
    assert_eq!(
        refused.received().len(),
        0,
        "no request left for the refused host"
    );
}

async fn keyed(app: &RunningApp, path: &str, key: &str, body: &serde_json::Value) -> Reply {
    send(
        app,
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {WRITE_TOKEN}")),
            ("idempotency-key", key),
        ],
        body.to_string(),
    )
    .await
}

/// A client that retries a POST which moves stock or money (a timeout, a lost
/// answer) under the same Idempotency-Key gets the first answer again and moves
/// nothing twice; the key with another body is 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_and_money_posts_retried_under_one_key_take_effect_once() {
    let app = start().await;
    berlin_with_mug(&app).await;
    let on_hand = |app: &RunningApp| count(app, "SELECT COALESCE(SUM(on_hand), 0) FROM stock");

    // Five concurrent retries of one receipt: booked once.
    let receipt = serde_json::json!({"facility": "berlin", "reference": "ASN-1", "lines": [{"sku": "MUG", "quantity": 10}]});
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let url = app.url("/api/stock/receipts");
        let body = receipt.to_string().into_bytes();
        tasks.push(tokio::spawn(async move {
            waybill_host::client::request(
                "POST",
                &url,
                &[
                    ("content-type", "application/json"),
                    ("authorization", &format!("Bearer {WRITE_TOKEN}")),
                    ("idempotency-key", "rcpt-1"),
                ],
                body,
            )
            .await
            .unwrap()
        }));
    }
    let mut replayed = 0;
    for t in tasks {
        let (status, headers, body) = t.await.unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        if headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("idempotent-replayed") && v == "true")
        {
            replayed += 1;
        }
    }
    assert_eq!(replayed, 4);
    assert_eq!(on_hand(&app), 10);
    let other = serde_json::json!({"facility": "berlin", "reference": "ASN-2", "lines": [{"sku": "MUG", "quantity": 3}]});
    assert_eq!(
        keyed(&app, "/api/stock/receipts", "rcpt-1", &other)
            .await
            .status,
        422
    );
    // The same delivery note booked again without a key is refused, not added.
    let again = write(&app, "POST", "/api/stock/receipts", &receipt).await;
    assert_eq!(again.status, 409, "{}", again.json);
    assert_eq!(on_hand(&app), 10);

    // An adjustment retried: applied once.
    let adj =
        serde_json::json!({"facility": "berlin", "sku": "MUG", "delta": -2, "reason": "damaged"});
    for _ in 0..3 {
        assert_eq!(
            keyed(&app, "/api/stock/adjustments", "adj-1", &adj)
                .await
                .status,
            200
        );
    }
    assert_eq!(on_hand(&app), 8);

    // A refund retried: one refund in the ledger.
    let r = post_api(
        &app,
        "/api/orders",
        &[("content-type", "application/json")],
        serde_json::json!({
            "external_id": "idem-1", "currency": "EUR", "placed_at": "2026-11-20T10:00:00Z",
            "customer": {"email": "kim@example.com"},
            "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
            "lines": [{"sku": "MUG", "name": "Mug", "quantity": 1, "unit_price": "10.00"}],
            "financial_status": "paid"
        })
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let id = r.json["id"].as_str().unwrap().to_string();
    eventually("captured", || async {
        count(&app, &format!("SELECT COUNT(*) FROM payment_transactions WHERE order_id = '{id}' AND kind = 'capture' AND status = 'succeeded'")) == 1
    })
    .await;
    let refunds = format!("/api/payments/orders/{id}/refunds");
    let body = serde_json::json!({"amount_minor": 250, "reason": "goodwill"});
    let first = keyed(&app, &refunds, "refund-1", &body).await;
    assert_eq!(first.status, 201, "{}", first.json);
    let second = keyed(&app, &refunds, "refund-1", &body).await;
    assert_eq!(second.status, 201, "{}", second.json);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.json["refund"]["id"], first.json["refund"]["id"]);
    assert_eq!(
        count(&app, &format!("SELECT COUNT(*) FROM payment_transactions WHERE order_id = '{id}' AND kind = 'refund'")),
        1
    );
    let more = serde_json::json!({"amount_minor": 300, "reason": "goodwill"});
    assert_eq!(keyed(&app, &refunds, "refund-1", &more).await.status, 422);
}

/// A late retry or a replay of an older state of the order (Shopify
/// `updated_at`) never rolls the order back; a delivery that carries no id is
/// still recognised when its bytes come again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_source_update_never_rolls_the_order_back() {
    let app = start().await;
    let mut v: serde_json::Value =
        serde_json::from_slice(&fixture("shopify/orders-create.json")).unwrap();
    v["updated_at"] = serde_json::json!("2026-11-20T10:00:00-05:00");
    let r = shopify(
        &app,
        "orders/create",
        "r-1",
        &serde_json::to_vec(&v).unwrap(),
    )
    .await;
    assert_eq!(r.json["result"], "created", "{}", r.json);
    // The older update is in flight while a newer one is applied.
    let mut older = v.clone();
    older["updated_at"] = serde_json::json!("2026-11-20T10:05:00-05:00");
    older["note"] = serde_json::json!("leave at the door");
    let mut newer = v.clone();
    newer["updated_at"] = serde_json::json!("2026-11-20T10:10:00-05:00");
    newer["note"] = serde_json::json!("ring twice");
    let r = shopify(
        &app,
        "orders/updated",
        "r-3",
        &serde_json::to_vec(&newer).unwrap(),
    )
    .await;
    assert_eq!(r.json["result"], "updated", "{}", r.json);
    let r = shopify(
        &app,
        "orders/updated",
        "r-2",
        &serde_json::to_vec(&older).unwrap(),
    )
    .await;
    assert_eq!(r.json["result"], "stale", "{}", r.json);
    let o = get(&app, "/api/orders/shopify:450789469").await.json;
    assert_eq!(o["note"], "ring twice", "{o}");

    // WooCommerce without a delivery id: the same bytes twice are one delivery.
    let mut w: serde_json::Value =
        serde_json::from_slice(&fixture("woocommerce/order.json")).unwrap();
    let r = woocommerce(&app, "order.created", "", &serde_json::to_vec(&w).unwrap()).await;
    assert_eq!(r.json["result"], "created", "{}", r.json);
    w["customer_note"] = serde_json::json!("gift wrap");
    w["date_modified_gmt"] = serde_json::json!("2017-03-22T19:30:00");
    let body = serde_json::to_vec(&w).unwrap();
    let r = woocommerce(&app, "order.updated", "", &body).await;
    assert_eq!(r.json["result"], "updated", "{}", r.json);
    let r = woocommerce(&app, "order.updated", "", &body).await;
    assert_eq!(r.json["result"], "duplicate_delivery", "{}", r.json);
}

/// A copy of spin.toml whose components are found by absolute path, with `extra`
/// appended (written under the target directory).
fn manifest_with(name: &str, extra: &str) -> std::path::PathBuf {
    let root = root();
    let text = std::fs::read_to_string(root.join("spin.toml")).unwrap();
    let text = text.replace(
        "source = \"target/",
        &format!("source = \"{}/target/", root.display()),
    );
    let dir = root.join("target").join("scenario-manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    path
}

/// The private `/internal/*` routes answer only service-chained calls. An
/// operator's route that exposes them by mistake gets a 404 from the component
/// before it does any work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_refuse_calls_from_the_network() {
    let exposed = manifest_with(
        "exposed-internal",
        r#"
[[trigger.http]]
route = "/internal/route"
component = "routing"

[[trigger.http]]
route = "/internal/backorders"
component = "routing"

[[trigger.http]]
route = "/internal/capture"
component = "capture"

[[trigger.http]]
route = "/internal/sweep"
component = "notify"
"#,
    );
    let app = start_from(&exposed, &[]).await;
    for (path, body) in [
        ("/internal/route", r#"{"order_ids": []}"#),
        ("/internal/backorders", r#"{"skus": ["SKU-1"]}"#),
        ("/internal/capture", "{}"),
        ("/internal/sweep", "{}"),
    ] {
        // Also with a forged client address: Spin replaces the header.
        let r = post_api(
            &app,
            path,
            &[
                ("content-type", "application/json"),
                ("spin-client-addr", "0.0.0.0:0"),
            ],
            body.to_string(),
        )
        .await;
        assert_eq!(r.status, 404, "{path}: {}", r.json);
    }
    app.stop().await;
}

const SECRETS_TOKEN: &str = "test-secrets-admin-token";
const ORDERS_TOKEN: &str = "test-orders-write-token";
const PAYMENTS_TOKEN: &str = "test-payments-write-token";

async fn call(app: &RunningApp, method: &str, path: &str, token: &str, body: &str) -> Reply {
    let auth = format!("Bearer {token}");
    send(
        app,
        method,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

/// Licence keys reach the customer's e-mail and nothing a read-scope caller
/// sees: the event export, the mailbox and "*" webhooks withhold them unless
/// the caller (or the subscription's creator) has the secrets scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licence_keys_reach_only_the_customer_and_the_secrets_scope() {
    let tokens = format!(
        "write:{WRITE_TOKEN},read:{READ_TOKEN},admin:{SECRETS_TOKEN},secrets:{SECRETS_TOKEN}"
    );
    let plain = Receiver::start(0, 200).await;
    let trusted = Receiver::start(0, 200).await;
    let app = start_with(&[
        ("api_tokens", &tokens),
        ("notify_extra_outbound_host", "http://127.0.0.1:*"),
    ])
    .await;
    let sub = |port: u16, secrets: bool| {
        json!({"url": format!("http://127.0.0.1:{port}/hooks"), "events": ["*"], "include_secrets": secrets})
            .to_string()
    };
    let path = "/api/notifications/subscriptions";
    let r = call(&app, "POST", path, WRITE_TOKEN, &sub(trusted.port, true)).await;
    assert_eq!(r.status, 403, "write is not secrets: {}", r.json);
    let r = call(&app, "POST", path, WRITE_TOKEN, &sub(plain.port, false)).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let r = call(&app, "POST", path, SECRETS_TOKEN, &sub(trusted.port, true)).await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["include_secrets"], true);

    let product = json!({"name": "Pro licence", "digital": true});
    let r = call(
        &app,
        "PUT",
        "/api/products/KEY-PRO",
        WRITE_TOKEN,
        &product.to_string(),
    )
    .await;
    assert!(r.status < 300, "{}", r.json);
    let keys = json!({"keys": ["PRO-0001-SECRET", "PRO-0002-SECRET"]});
    let r = call(
        &app,
        "POST",
        "/api/license-keys/KEY-PRO",
        WRITE_TOKEN,
        &keys.to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let order = json!({"external_id": "keys-1", "currency": "EUR",
        "customer": {"email": "kim@example.com", "first_name": "Kim"},
        "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
        "lines": [{"sku": "KEY-PRO", "name": "Pro licence", "quantity": 1, "unit_price": "10.00"}],
        "financial_status": "paid"});
    let r = call(&app, "POST", "/api/orders", WRITE_TOKEN, &order.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let assigned = "PRO-0001-SECRET";

    eventually("the key e-mail and both webhooks", || async {
        let m = get(&app, "/api/notifications/mailbox").await;
        let mailed = m.json["messages"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["subject"].as_str().unwrap_or("").contains("download"))
        });
        let hooked = |r: &Receiver| {
            r.received()
                .iter()
                .any(|x| x.json()["type"] == "license.assigned")
        };
        mailed && hooked(&plain) && hooked(&trusted)
    })
    .await;

    // The customer's e-mail carries the key (the mailbox shows it to secrets).
    let full = call(&app, "GET", "/api/notifications/mailbox", SECRETS_TOKEN, "").await;
    assert!(full.json.to_string().contains(assigned), "{}", full.json);
    // A read-scope caller sees the message with the key masked.
    let masked = get(&app, "/api/notifications/mailbox").await;
    assert!(
        !masked.json.to_string().contains("SECRET"),
        "{}",
        masked.json
    );
    assert!(masked.json.to_string().contains("[licence key withheld]"));
    // The export withholds it from read (and write), not from secrets.
    for tok in [READ_TOKEN, WRITE_TOKEN] {
        let e = call(&app, "GET", "/api/events?limit=1000", tok, "").await;
        assert_eq!(e.status, 200);
        assert!(!e.json.to_string().contains("SECRET"), "{}", e.json);
        assert!(e.json.to_string().contains("secrets_withheld"));
    }
    let e = call(&app, "GET", "/api/events?limit=1000", SECRETS_TOKEN, "").await;
    assert!(e.json.to_string().contains(assigned));
    // Webhooks: withheld for the plain subscription, sent to the trusted one.
    let body_of = |r: &Receiver| {
        r.received()
            .iter()
            .map(|x| String::from_utf8_lossy(&x.body).into_owned())
            .collect::<String>()
    };
    assert!(!body_of(&plain).contains("SECRET"));
    assert!(body_of(&trusted).contains(assigned));
    app.stop().await;
    plain.stop();
    trusted.stop();
}

/// Narrow tokens do only what their scope names, on every component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_acts_only_within_its_scope() {
    let tokens =
        format!("read:{READ_TOKEN},orders:write:{ORDERS_TOKEN},payments:write:{PAYMENTS_TOKEN}");
    let app = start_with(&[("api_tokens", &tokens)]).await;
    let order = json!({"external_id": "scoped-1", "currency": "EUR",
        "customer": {"email": "kim@example.com"},
        "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
        "lines": [{"sku": "SKU-1", "name": "Item", "quantity": 1, "unit_price": "10.00"}]})
    .to_string();
    let facility =
        json!({"id": "x", "name": "X", "type": "warehouse", "address": {"country_code": "DE"}})
            .to_string();
    let receipt = json!({"facility": "x", "lines": [{"sku": "SKU-1", "quantity": 1}]}).to_string();
    let sub = json!({"url": "http://127.0.0.1:9/h", "events": ["*"]}).to_string();
    let cases: &[(&str, &str, &str, &str, u16)] = &[
        (READ_TOKEN, "POST", "/api/orders", &order, 403),
        (PAYMENTS_TOKEN, "POST", "/api/orders", &order, 403),
        (ORDERS_TOKEN, "POST", "/api/facilities", &facility, 403),
        (ORDERS_TOKEN, "POST", "/api/stock/receipts", &receipt, 403),
        (
            ORDERS_TOKEN,
            "POST",
            "/api/notifications/subscriptions",
            &sub,
            403,
        ),
        (ORDERS_TOKEN, "PUT", "/api/payments/settings", "{}", 403),
        (PAYMENTS_TOKEN, "PUT", "/api/routing/config/web", "{}", 403),
        (ORDERS_TOKEN, "POST", "/api/orders", &order, 201),
        (ORDERS_TOKEN, "GET", "/api/orders?limit=1", "", 200),
        (PAYMENTS_TOKEN, "GET", "/api/payments/action-items", "", 200),
    ];
    for (tok, m, path, body, want) in cases {
        let r = call(&app, m, path, tok, body).await;
        assert_eq!(r.status, *want, "{m} {path}: {}", r.json);
        if *want == 403 {
            assert_eq!(r.json["status"], 403, "a problem document");
        }
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM facilities WHERE id = 'x'"),
        0
    );
    assert_eq!(count(&app, "SELECT count(*) FROM subscriptions"), 0);
    app.stop().await;
}

/// A customer e-mail is one address: a list or a display name, which an e-mail
/// API would send to every address in it, is 422 and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_email_is_one_address() {
    let app = start().await;
    for (i, email) in [
        "kim@example.com,eve@evil.com",
        "kim@example.com;eve@evil.com",
        "Eve <eve@evil.com>",
        "kim@example.com\r\nbcc:eve@evil.com",
    ]
    .iter()
    .enumerate()
    {
        let order = json!({"external_id": format!("mail-{i}"), "currency": "EUR",
            "customer": {"email": email},
            "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
            "lines": [{"sku": "SKU-1", "name": "Item", "quantity": 1, "unit_price": "10.00"}]});
        let r = call(&app, "POST", "/api/orders", WRITE_TOKEN, &order.to_string()).await;
        assert_eq!(r.status, 422, "{email:?}: {}", r.json);
        assert_eq!(r.json["errors"][0]["pointer"], "/customer/email");
    }
    assert_eq!(count(&app, "SELECT COUNT(*) FROM orders"), 0);
    app.stop().await;
}

/// An XML batch nested deeper than an order document can be is 400 before it is
/// built (a value that deep would exhaust the component's stack), and the
/// component keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_xml_is_refused() {
    let app = start().await;
    let depth = 60_000;
    let xml = format!(
        "<orders><order>{}{}</order></orders>",
        "<x>".repeat(depth),
        "</x>".repeat(depth)
    );
    assert!(xml.len() < LIMIT);
    let r = call_xml(&app, xml).await;
    assert_eq!(r.status, 400, "{}", r.json);
    assert!(r.json["detail"].as_str().unwrap().contains("deeper"));
    // Sixteen levels still parse (and fail validation as an order would).
    let shallow = format!(
        "<orders><order>{}{}</order></orders>",
        "<x>".repeat(10),
        "</x>".repeat(10)
    );
    let r = call_xml(&app, shallow).await;
    assert_eq!(r.status, 422, "{}", r.json);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM orders"), 0);
    app.stop().await;
}

async fn call_xml(app: &RunningApp, xml: String) -> Reply {
    let auth = format!("Bearer {WRITE_TOKEN}");
    send(
        app,
        "POST",
        "/api/orders/batch",
        &[
            ("authorization", &auth),
            ("content-type", "application/xml"),
        ],
        xml,
    )
    .await
}

/// Coordinates are finite and in range on every path that takes them: a "NaN"
/// or an infinite latitude, or one without its longitude, is 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinates_are_finite_and_in_range() {
    let app = start().await;
    for (i, (lat, lon, pointer)) in [
        (json!("NaN"), json!(13.4), "/shipping_address/latitude"),
        (json!("inf"), json!(13.4), "/shipping_address/latitude"),
        (
            json!(52.5),
            json!("-Infinity"),
            "/shipping_address/longitude",
        ),
        (json!(52.5), Value::Null, "/shipping_address/longitude"),
    ]
    .into_iter()
    .enumerate()
    {
        let order = json!({"external_id": format!("geo-{i}"), "currency": "EUR",
            "customer": {"email": "kim@example.com"},
            "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117",
                                 "country_code": "DE", "latitude": lat, "longitude": lon},
            "lines": [{"sku": "SKU-1", "name": "Item", "quantity": 1, "unit_price": "10.00"}]});
        let r = call(&app, "POST", "/api/orders", WRITE_TOKEN, &order.to_string()).await;
        assert_eq!(r.status, 422, "{lat} {lon}: {}", r.json);
        assert_eq!(r.json["errors"][0]["pointer"], pointer, "{}", r.json);
    }
    let facility = json!({"name": "Berlin", "type": "warehouse", "countries": ["DE"], "latitude": 91, "longitude": 13});
    let r = call(
        &app,
        "PUT",
        "/api/facilities/berlin",
        WRITE_TOKEN,
        &facility.to_string(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.json);
    let centroids = json!({"centroids": [{"country": "DE", "postal_prefix": "10", "latitude": 52.5, "longitude": 181}]});
    let r = call(
        &app,
        "PUT",
        "/api/routing/centroids",
        WRITE_TOKEN,
        &centroids.to_string(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.json);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM orders"), 0);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM facilities"), 0);
    app.stop().await;
}

/// housekeeping-cron drops what is past its retention and nothing else: an
/// aged order's e-mail, deliveries and outbox events go, a fresh order's stay,
/// as do pending events, every order, the latest routing decision of each
/// order and recent tracking events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_drops_only_what_is_past_retention() {
    let app = start_with(&[("retention", "tracking=100")]).await;
    berlin_with_mug(&app).await;
    receive_stock(&app, "berlin", "MUG", 5).await;
    let place = |ext: &'static str| {
        let app = &app;
        async move {
            let order = json!({"external_id": ext, "currency": "EUR",
                "customer": {"email": format!("{ext}@example.com")},
                "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
                "lines": [{"sku": "MUG", "name": "Item", "quantity": 1, "unit_price": "10.00"}]});
            let r = call(app, "POST", "/api/orders", WRITE_TOKEN, &order.to_string()).await;
            assert_eq!(r.status, 201, "{}", r.json);
            r.json["id"].as_str().unwrap().to_string()
        }
    };
    let old = place("aged-1").await;
    let fresh = place("fresh-1").await;
    eventually("both confirmations are in the mailbox", || async {
        count(&app, "SELECT COUNT(DISTINCT to_address) FROM mailbox") == 2
            && count(
                &app,
                "SELECT COUNT(DISTINCT order_id) FROM routing_decisions",
            ) == 2
            && count(
                &app,
                "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'",
            ) == 0
            // No chained sweep or worker still running: one finishing its
            // loop would expand the pending event written below.
            && count(
                &app,
                "SELECT COUNT(*) FROM locks WHERE until > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            ) == 0
    })
    .await;
    let sql = |q: &str| {
        app.sql("default", q, &[]).unwrap();
    };
    // Age everything of the first order by 40 days (30 is the default).
    let aged = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-40 days')";
    sql(&format!(
        "UPDATE outbox SET created_at = {aged} WHERE order_id = '{old}'"
    ));
    sql(&format!("UPDATE deliveries SET delivered_at = {aged} WHERE outbox_id IN (SELECT id FROM outbox WHERE order_id = '{old}')"));
    sql(&format!(
        "UPDATE mailbox SET delivered_at = {aged} WHERE to_address = 'aged-1@example.com'"
    ));
    // The order's decision and a superseded one (older than the latest), both
    // past the 180 days, and tracking
    // events on both sides of the 100-day setting.
    let half_year = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-181 days')";
    sql(&format!(
        "UPDATE routing_decisions SET at = {half_year} WHERE order_id = '{old}'"
    ));
    // As for an order whose latest decision placed nothing: no fulfillment order names it.
    sql(&format!(
        "UPDATE fulfillment_orders SET decision_id = NULL WHERE order_id = '{old}'"
    ));
    sql(&format!("INSERT INTO routing_decisions (order_id, at, trigger, summary, explanation)
                  SELECT order_id, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-181 days'), 'intake', 'old', '{{}}' FROM routing_decisions WHERE order_id = '{old}' LIMIT 1"));
    sql(&format!(
        "UPDATE routing_decisions SET id = -id WHERE summary = 'old'"
    ));
    sql(&format!("INSERT INTO tracking_events (provider, tracking_number, status, raw_status, occurred_at, received_at)
                  VALUES ('easypost', 'T-OLD', 'in_transit', 'in_transit', {aged}, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-101 days')),
                         ('easypost', 'T-NEW', 'in_transit', 'in_transit', {aged}, {aged})"));
    // An event not yet expanded, however old, stays. notify-cron expands
    // pending events at second 0 of every minute: the row is written and
    // checked well clear of that, so only housekeeping can touch it.
    use chrono::Timelike;
    let second = chrono::Utc::now().second();
    if second > 30 {
        tokio::time::sleep(std::time::Duration::from_secs(u64::from(62 - second))).await;
    }
    sql(&format!("INSERT INTO outbox (topic, payload, created_at, next_attempt_at) VALUES ('order.updated', '{{}}', {aged}, {aged})"));
    let before = |q: &str| count(&app, q);
    let fresh_rows = before(&format!(
        "SELECT COUNT(*) FROM outbox WHERE order_id = '{fresh}'"
    ));
    assert!(fresh_rows > 0);
    app.fire_cron("housekeeping-cron").await.unwrap();

    assert_eq!(
        before(&format!(
            "SELECT COUNT(*) FROM outbox WHERE order_id = '{old}'"
        )),
        0
    );
    assert_eq!(
        before("SELECT COUNT(*) FROM mailbox WHERE to_address = 'aged-1@example.com'"),
        0
    );
    assert_eq!(
        before("SELECT COUNT(*) FROM mailbox WHERE to_address = 'fresh-1@example.com'"),
        1
    );
    assert_eq!(
        before(&format!(
            "SELECT COUNT(*) FROM outbox WHERE order_id = '{fresh}'"
        )),
        fresh_rows
    );
    assert_eq!(
        before("SELECT COUNT(*) FROM outbox WHERE state = 'pending'"),
        1,
        "pending stays"
    );
    assert_eq!(
        before("SELECT COUNT(*) FROM deliveries WHERE outbox_id NOT IN (SELECT id FROM outbox)"),
        0
    );
    assert_eq!(
        before("SELECT COUNT(*) FROM orders"),
        2,
        "orders are records"
    );
    assert_eq!(
        before("SELECT COUNT(*) FROM routing_decisions WHERE summary = 'old'"),
        0
    );
    assert_eq!(
        before(&format!(
            "SELECT COUNT(*) FROM routing_decisions WHERE order_id = '{old}'"
        )),
        1,
        "the latest stays"
    );
    assert_eq!(
        before("SELECT COUNT(*) FROM tracking_events WHERE tracking_number = 'T-OLD'"),
        0
    );
    assert_eq!(
        before("SELECT COUNT(*) FROM tracking_events WHERE tracking_number = 'T-NEW'"),
        1
    );
    // The export still answers, from the fresh events on.
    let e = get(&app, "/api/events?limit=1000").await;
    assert_eq!(e.status, 200);
    app.stop().await;
}
