//! Notifications through the compiled intake, notify and notify-cron components
//! on tests/host, with local fakes for the webhook receiver and the e-mail API.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use waybill_scenarios::*;

const HOOK_SECRET: &str = "receiver-secret-0123456789";

async fn app_with(extra: &[(&str, &str)]) -> waybill_host::RunningApp {
    let mut vars = vec![
        ("notify_extra_outbound_host", "http://127.0.0.1:*"),
        ("notify_retry_base_ms", "100"),
        ("notify_max_attempts", "3"),
    ];
    vars.extend_from_slice(extra);
    start_with(&vars).await
}

async fn subscribe(app: &waybill_host::RunningApp, port: u16, events: Value) -> Reply {
    let body = json!({"url": format!("http://127.0.0.1:{port}/hooks/waybill"), "events": events, "secret": HOOK_SECRET});
    post_api(
        app,
        "/api/notifications/subscriptions",
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_sends_its_confirmation_and_a_signed_webhook() {
    let receiver = Receiver::start(0, 200).await;
    let app = app_with(&[]).await;
    let s = subscribe(&app, receiver.port, json!(["order.received"])).await;
    assert_eq!(s.status, 201, "{}", s.json);
    assert_eq!(s.json["secret"], HOOK_SECRET);
    let r = shopify(
        &app,
        "orders/create",
        "n-1",
        &fixture("shopify/orders-create.json"),
    )
    .await;
    assert_eq!(r.json["result"], "created");
    let number = r.json["number"].as_str().unwrap().to_string();
    // The chained sweep delivers both without waiting for the cron.
    eventually("the webhook", || receiver.received().len() == 1).await;
    eventually("the mailbox", || {
        count(&app, "SELECT count(*) FROM mailbox") == 1
    })
    .await;
    let mail = get(&app, "/api/notifications/mailbox").await.json;
    let m = &mail["messages"][0];
    assert_eq!(m["to"], "bob.norman@mail.example.com");
    assert_eq!(m["subject"], format!("Your order {number} is confirmed"));
    let text = m["text"].as_str().unwrap();
    assert!(text.contains("Hello Bob Norman"), "{text}");
    assert!(
        text.contains("1 x IPod Nano - 8gb - green (IPOD2008GREEN)"),
        "{text}"
    );
    assert!(text.contains("Total: 598.94 USD"), "{text}");
    assert!(
        m["html"].as_str().unwrap().contains("<strong>"),
        "{}",
        m["html"]
    );
    // The webhook: the documented envelope, signed `t=...,v1=...,v2=...`.
    let hook = &receiver.received()[0];
    assert_eq!(hook.path, "/hooks/waybill");
    let sig = hook.header("waybill-signature").expect("signature header");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        waybill::kernel::signature::verify_timestamped(
            HOOK_SECRET.as_bytes(),
            sig,
            &hook.body,
            now,
            300
        ),
        "{sig}"
    );
    // v2 binds the method and the receiver's path.
    assert!(
        waybill::kernel::signature::verified_request(
            HOOK_SECRET.as_bytes(),
            sig,
            "POST",
            "/hooks/waybill",
            &hook.body,
            now,
            300
        )
        .is_some(),
        "{sig}"
    );
    let mut parts = sig.split(',');
    let (t, v1) = (parts.next().unwrap(), parts.next().unwrap());
    let t = t.strip_prefix("t=").unwrap();
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&hook.body);
    assert_eq!(
        v1.strip_prefix("v1=").unwrap(),
        waybill::kernel::signature::hex(&waybill::kernel::signature::hmac_sha256(
            HOOK_SECRET.as_bytes(),
            &signed
        ))
    );
    let env = hook.json();
    assert_eq!(env["type"], "order.received");
    assert_eq!(env["data"]["number"], number.as_str());
    assert!(env["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(hook.header("waybill-event-id"), env["id"].as_str());
    // Delivered once each; nothing dead.
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM deliveries WHERE state = 'delivered'"
        ),
        2
    );
    app.fire_cron("notify-cron").await.unwrap();
    assert_eq!(
        receiver.received().len(),
        1,
        "a later sweep sends nothing again"
    );
    app.stop().await;
    receiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_then_up_gets_the_message_after_retries() {
    // Reserve a port, then free it: nothing listens there at first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = app_with(&[
        ("notify_max_attempts", "6"),
        ("notify_retry_base_ms", "300"),
    ])
    .await;
    assert_eq!(subscribe(&app, port, json!(["*"])).await.status, 201);
    shopify(
        &app,
        "orders/create",
        "d-1",
        &fixture("shopify/orders-create.json"),
    )
    .await;
    eventually("a failed attempt", || count(&app, "SELECT count(*) FROM deliveries WHERE kind = 'webhook' AND attempts >= 1 AND state = 'pending' AND last_error IS NOT NULL") == 1).await;
    let receiver = Receiver::start(port, 200).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.received().is_empty() {
        assert!(Instant::now() < deadline, "never delivered");
        app.fire_cron("notify-cron").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(count(&app, "SELECT count(*) FROM deliveries WHERE kind = 'webhook' AND state = 'delivered' AND attempts >= 2"), 1);
    app.stop().await;
    receiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_receiver_dead_letters_and_replay_delivers() {
    let receiver = Receiver::start(0, 500).await;
    let app = app_with(&[]).await;
    assert_eq!(
        subscribe(&app, receiver.port, json!(["order.received"]))
            .await
            .status,
        201
    );
    shopify(
        &app,
        "orders/create",
        "f-1",
        &fixture("shopify/orders-create.json"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&app, "SELECT count(*) FROM deliveries WHERE state = 'dead'") == 0 {
        assert!(Instant::now() < deadline, "never dead-lettered");
        app.fire_cron("notify-cron").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(receiver.received().len(), 3, "exactly max_attempts tries");
    let dead = get(&app, "/api/notifications/dead-letters").await.json;
    let letters = dead["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["attempts"], 3);
    assert!(letters[0]["last_error"].as_str().unwrap().contains("500"));
    // The receiver is fixed; the operator replays.
    receiver
        .status
        .store(200, std::sync::atomic::Ordering::SeqCst);
    let id = letters[0]["id"].as_i64().unwrap();
    let r = post_api(
        &app,
        &format!("/api/notifications/dead-letters/{id}/replay"),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.json);
    app.fire_cron("notify-cron").await.unwrap();
    assert_eq!(receiver.received().len(), 4);
    assert_eq!(
        count(&app, "SELECT count(*) FROM deliveries WHERE state = 'dead'"),
        0
    );
    assert_eq!(
        get(&app, "/api/notifications/dead-letters").await.json["dead_letters"],
        json!([])
    );
    // Replaying something that is not dead is a 404.
    let again = post_api(
        &app,
        &format!("/api/notifications/dead-letters/{id}/replay"),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(again.status, 404);
    app.stop().await;
    receiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_sweeps_deliver_500_messages_exactly_once() {
    let receiver = Receiver::start(0, 200).await;
    let app = app_with(&[]).await;
    assert_eq!(
        subscribe(&app, receiver.port, json!(["*"])).await.status,
        201
    );
    // 500 events straight into the outbox (no e-mail: no recipient in the payload).
    let conn_sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
        INSERT INTO outbox (topic, payload, created_at, next_attempt_at)
        SELECT 'order.updated', json_object('seq', i), '2026-11-22T00:00:00Z', '2026-11-22T00:00:00Z' FROM n";
    app.sql("default", conn_sql, &[]).unwrap();
    let mut sweeps = Vec::new();
    for _ in 0..10 {
        let a = app.app.clone();
        sweeps.push(tokio::spawn(
            async move { a.fire_cron("notify-cron").await },
        ));
    }
    for s in sweeps {
        s.await.unwrap().unwrap();
    }
    // Sweeps stop when nothing is left, so all 500 went out in those 10 runs.
    let got = receiver.received();
    assert_eq!(got.len(), 500, "each message exactly once");
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 500, "no duplicates");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM deliveries WHERE state = 'delivered'"
        ),
        500
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM outbox WHERE state = 'pending'"),
        0
    );
    app.stop().await;
    receiver.stop();
}

/// A receiver that answers after the lease has run out gets its message once:
/// the call is cut off by the outbound timeouts long before the lease ends, so
/// the sweeps that keep starting never take the delivery while it is open, and
/// the other receiver of the same event is served in the same batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_slower_than_the_lease_gets_one_call() {
    let slow = Receiver::start(0, 200).await;
    slow.set_delay(6_000);
    let fast = Receiver::start(0, 200).await;
    let app = app_with(&[
        ("outbound_timeout_ms", "300"),
        ("notify_lease_ms", "2000"),
        ("notify_retry_base_ms", "600000"),
    ])
    .await;
    assert_eq!(subscribe(&app, slow.port, json!(["*"])).await.status, 201);
    assert_eq!(subscribe(&app, fast.port, json!(["*"])).await.status, 201);
    app.sql(
        "default",
        "INSERT INTO outbox (topic, payload, created_at, next_attempt_at)
         VALUES ('order.updated', '{}', '2026-11-22T00:00:00Z', '2026-11-22T00:00:00Z')",
        &[],
    )
    .unwrap();
    // A sweep starts every 250 ms for 4 s: well past the 2 s lease.
    let mut sweeps = Vec::new();
    for _ in 0..16 {
        let a = app.app.clone();
        sweeps.push(tokio::spawn(
            async move { a.fire_cron("notify-cron").await },
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for s in sweeps {
        s.await.unwrap().unwrap();
    }
    assert_eq!(slow.received().len(), 1, "one call to the slow receiver");
    assert_eq!(fast.received().len(), 1, "one call to the fast receiver");
    let row = app
        .sql(
            "default",
            "SELECT state, attempts, last_error FROM deliveries WHERE state <> 'delivered'",
            &[],
        )
        .unwrap();
    assert_eq!(row.rows.len(), 1);
    let text = format!("{:?}", row.rows[0]);
    assert!(
        text.contains("pending") && text.contains("timeout"),
        "the slow call timed out and waits for its retry: {text}"
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM deliveries WHERE state = 'delivered'"
        ),
        1
    );
    app.stop().await;
    slow.stop();
    fast.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmark_provider_gets_the_documented_request() {
    let postmark = Receiver::start(0, 200).await;
    let url = format!("http://127.0.0.1:{}", postmark.port);
    let app = app_with(&[
        ("email_provider", "postmark"),
        ("email_api_url", &url),
        ("email_api_token", "pm-server-token"),
        ("email_from", "shop@example.com"),
    ])
    .await;
    shopify(
        &app,
        "orders/create",
        "p-1",
        &fixture("shopify/orders-create.json"),
    )
    .await;
    eventually("the e-mail API call", || postmark.received().len() == 1).await;
    let call = &postmark.received()[0];
    assert_eq!(call.path, "/email");
    assert_eq!(
        call.header("x-postmark-server-token"),
        Some("pm-server-token")
    );
    let b = call.json();
    assert_eq!(b["From"], "shop@example.com");
    assert_eq!(b["To"], "bob.norman@mail.example.com");
    assert!(b["Subject"].as_str().unwrap().starts_with("Your order WB-"));
    assert!(b["TextBody"].as_str().unwrap().contains("598.94"));
    assert!(b["HtmlBody"].as_str().unwrap().contains("<p>"));
    assert_eq!(b["MessageStream"], "outbound");
    assert_eq!(
        count(&app, "SELECT count(*) FROM mailbox"),
        0,
        "the local mailbox is only the default provider"
    );
    app.stop().await;
    postmark.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_cursor_returns_every_event_once_in_order() {
    let app = app_with(&[]).await;
    let base: Value = serde_json::from_slice(&fixture("api/order-jpy.json")).unwrap();
    for i in 0..3 {
        let mut v = base.clone();
        v["external_id"] = json!(format!("E-{i}"));
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
    }
    let mut seen = Vec::new();
    let mut after = String::from("0");
    loop {
        let page = get(&app, &format!("/api/events?after={after}&limit=1"))
            .await
            .json;
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        seen.push(
            events[0]["data"]["external_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        assert_eq!(events[0]["type"], "order.received");
        after = page["next_after"].as_str().unwrap().to_string();
    }
    assert_eq!(seen, vec!["E-0", "E-1", "E-2"]);
    let all = get(&app, "/api/events").await.json;
    assert_eq!(all["events"].as_array().unwrap().len(), 3);
    assert_eq!(all["has_more"], false);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_admin_rejects_bad_input() {
    let app = app_with(&[]).await;
    let bad = |url: &str, events: Value| json!({"url": url, "events": events}).to_string();
    for (body, pointer) in [
        (bad("ftp://x", json!(["*"])), "/url"),
        (bad("https://", json!(["*"])), "/url"),
        (bad("https://ok.example.com/h", json!([])), "/events"),
        (
            bad("https://ok.example.com/h", json!(["order.exploded"])),
            "/events/0",
        ),
        (
            json!({"url": "https://ok.example.com/h", "events": ["*"], "secret": "short"})
                .to_string(),
            "/secret",
        ),
    ] {
        let r = post_api(
            &app,
            "/api/notifications/subscriptions",
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_eq!(r.status, 422, "{}", r.json);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(
            r.json["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["pointer"] == pointer),
            "{}",
            r.json
        );
    }
    assert_eq!(
        post_api(&app, "/api/notifications/subscriptions", &[], "{oops")
            .await
            .status,
        400
    );
    assert_eq!(
        send(&app, "GET", "/api/notifications/mailbox", &[], Vec::new())
            .await
            .status,
        401
    );
    assert_eq!(
        send(
            &app,
            "POST",
            "/api/notifications/subscriptions",
            &[("authorization", &format!("Bearer {READ_TOKEN}"))],
            "{}"
        )
        .await
        .status,
        403
    );
    assert_eq!(get(&app, "/api/events?after=abc").await.status, 400);
    assert_eq!(
        post_api(
            &app,
            "/api/notifications/dead-letters/999/replay",
            &[],
            Vec::new()
        )
        .await
        .status,
        404
    );
    assert_eq!(
        send(
            &app,
            "DELETE",
            "/api/events",
            &[("authorization", &format!("Bearer {WRITE_TOKEN}"))],
            Vec::new()
        )
        .await
        .status,
        405
    );
    assert_eq!(count(&app, "SELECT count(*) FROM subscriptions"), 0);
    // Templates are data: edit one, and the next message uses it.
    let t = json!({"subject": "Danke! {{number}}", "text": "Bestellung {{number}}", "html": "<p>{{number}}</p>"});
    let r = send(
        &app,
        "PUT",
        "/api/notifications/templates/order_confirmation",
        &[
            ("authorization", &format!("Bearer {WRITE_TOKEN}")),
            ("content-type", "application/json"),
        ],
        t.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let r = shopify(
        &app,
        "orders/create",
        "t-1",
        &fixture("shopify/orders-create.json"),
    )
    .await;
    let number = r.json["number"].as_str().unwrap().to_string();
    eventually("the mailbox", || {
        count(&app, "SELECT count(*) FROM mailbox") == 1
    })
    .await;
    assert_eq!(
        get(&app, "/api/notifications/mailbox").await.json["messages"][0]["subject"],
        format!("Danke! {number}")
    );
    app.stop().await;
}
