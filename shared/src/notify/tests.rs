use super::*;
use crate::flows::center_requests::FulfillmentCenters;
use crate::kernel::db::native::NativeDb;
use std::cell::RefCell;

struct Fake {
    calls: RefCell<Vec<(String, Vec<(String, String)>, Vec<u8>)>>,
    answers: RefCell<Vec<std::result::Result<(u16, Vec<u8>), String>>>,
}

impl Transport for Fake {
    async fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> std::result::Result<(u16, Vec<u8>), String> {
        self.calls
            .borrow_mut()
            .push((url.to_string(), headers.to_vec(), body));
        let mut a = self.answers.borrow_mut();
        if a.is_empty() {
            Ok((200, Vec::new()))
        } else {
            a.remove(0)
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    // The fake completes at once; a no-op waker is enough.
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn db() -> NativeDb {
    let db = NativeDb::memory();
    crate::kernel::schema::migrate(&db).unwrap();
    db
}

fn event(db: &NativeDb, topic: &str, payload: Json) {
    crate::orders::store::enqueue(db, topic, None, payload, Utc::now()).unwrap();
}

#[test]
fn templates_render_values_sections_and_escape_html() {
    let data = json!({"number": "WB-1", "name": "<Ada>", "lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}], "totals": {"total": {"amount": "9.90"}}});
    assert_eq!(
        render(
            "Order {{number}}: {{#lines}}{{quantity}}x{{sku}} {{/lines}}= {{totals.total.amount}}",
            &data,
            false
        ),
        "Order WB-1: 2xA 1xB = 9.90"
    );
    assert_eq!(render("<p>{{name}}</p>", &data, true), "<p>&lt;Ada&gt;</p>");
    assert_eq!(
        render("{{missing}}|{{#missing}}x{{/missing}}", &data, false),
        "|"
    );
}

#[test]
fn backoff_doubles_with_bounded_jitter() {
    let base = Duration::seconds(10);
    for (attempt, mid) in [(1, 10_000), (2, 20_000), (3, 40_000), (12, 3_600_000)] {
        for seed in [0u64, 1, 7, 12345, u64::MAX] {
            let d = backoff(base, attempt, seed).num_milliseconds();
            assert!(
                d >= mid * 3 / 4 && d <= mid * 5 / 4,
                "attempt {attempt}: {d}"
            );
        }
    }
}

#[test]
fn expansion_is_once_and_delivery_retries_then_dead_letters() {
    let db = db();
    let cfg = Config {
        retry_base: Duration::milliseconds(0),
        max_attempts: 3,
        receivers: crate::kernel::url::Receivers::parse("crm.test"),
        ..Default::default()
    };
    db.execute("INSERT INTO subscriptions (url, event_types, secret, active, created_at) VALUES ('http://crm.test/hook', '[\"order.received\"]', 'sixteen-chars-secret', 1, 'x')", &[]).unwrap();
    event(
        &db,
        "order.received",
        json!({"order_id": "o1", "number": "WB-1", "email": "c@example.com", "customer_name": "C", "lines": [], "totals": {"total": {"amount": "1.00"}}}),
    );
    assert_eq!(
        expand(&db, &cfg, &FulfillmentCenters, Utc::now(), 10).unwrap(),
        1
    );
    assert_eq!(
        expand(&db, &cfg, &FulfillmentCenters, Utc::now(), 10).unwrap(),
        0,
        "expanded once"
    );
    let n: i64 = db
        .execute("SELECT count(*) AS n FROM deliveries", &[])
        .unwrap()
        .first()
        .unwrap()
        .i64("n");
    assert_eq!(n, 2, "one confirmation e-mail and one webhook");
    // The receiver fails three times: retried twice, then dead.
    let fake = Fake {
        calls: RefCell::new(Vec::new()),
        answers: RefCell::new(vec![
            Ok((500, vec![])),
            Err("refused".into()),
            Ok((503, vec![])),
        ]),
    };
    let rep = block_on(sweep(
        &db,
        &cfg,
        &FulfillmentCenters,
        &fake,
        std::time::Duration::from_secs(5),
    ))
    .unwrap();
    assert_eq!((rep.delivered, rep.retried, rep.dead), (1, 2, 1), "{rep:?}");
    assert_eq!(fake.calls.borrow().len(), 3);
    let (url, headers, body) = fake.calls.borrow()[0].clone();
    assert_eq!(url, "http://crm.test/hook");
    let sig = headers
        .iter()
        .find(|(k, _)| k == "waybill-signature")
        .unwrap()
        .1
        .clone();
    assert!(signature::verify_timestamped(
        b"sixteen-chars-secret",
        &sig,
        &body,
        Utc::now().timestamp(),
        300
    ));
    let env: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(env["type"], "order.received");
    assert_eq!(env["data"]["number"], "WB-1");
    // The mailbox got the confirmation, rendered.
    let m = db
        .execute("SELECT to_address, subject FROM mailbox", &[])
        .unwrap();
    assert_eq!(m.first().unwrap().str("to_address"), "c@example.com");
    assert!(m.first().unwrap().str("subject").contains("WB-1"));
    // Replay the dead letter: delivered on the next sweep.
    let dead = db
        .execute("SELECT id FROM deliveries WHERE state = 'dead'", &[])
        .unwrap()
        .first()
        .unwrap()
        .i64("id");
    assert_eq!(
        admin::replay(&db, &dead.to_string(), Utc::now()).unwrap()["state"],
        "pending"
    );
    let rep = block_on(sweep(
        &db,
        &cfg,
        &FulfillmentCenters,
        &fake,
        std::time::Duration::from_secs(5),
    ))
    .unwrap();
    assert_eq!(rep.delivered, 1);
    assert_eq!(fake.calls.borrow().len(), 4);
}

#[test]
fn a_claimed_delivery_is_not_claimed_again_while_leased() {
    let db = db();
    let cfg = Config::default();
    event(&db, "order.received", json!({"email": "c@example.com"}));
    expand(&db, &cfg, &FulfillmentCenters, Utc::now(), 10).unwrap();
    let now = Utc::now();
    assert_eq!(
        claim(&db, "a", now, Duration::seconds(60), 10, None)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        claim(&db, "b", now, Duration::seconds(60), 10, None)
            .unwrap()
            .len(),
        0
    );
    // After the lease expires (a crashed sweep), another sweep takes it.
    assert_eq!(
        claim(
            &db,
            "b",
            now + Duration::seconds(61),
            Duration::seconds(60),
            10,
            None
        )
        .unwrap()
        .len(),
        1
    );
}

#[test]
fn a_cancellation_request_waits_for_the_release_it_cancels() {
    let db = db();
    let now = Utc::now();
    event(&db, "fulfillment_order.released", json!({}));
    for (target, cancellation) in [("fo-1", false), ("cancel:fo-1", true)] {
        db.execute(
            "INSERT INTO deliveries (outbox_id, kind, target, payload, state, next_attempt_at, attempts, created_at)
             VALUES (1, 'fc', ?, ?, 'pending', ?, 0, ?)",
            params![target, json!({"cancellation": cancellation}).to_string(), ts(now), ts(now)],
        )
        .unwrap();
    }
    let first = claim(&db, "a", now, Duration::seconds(60), 20, None).unwrap();
    assert_eq!(
        first.iter().map(|d| d.target.as_str()).collect::<Vec<_>>(),
        ["fo-1"],
        "only the release while it is pending"
    );
    // Even after the release's lease runs out, the cancellation still waits.
    let later = now + Duration::seconds(61);
    let again = claim(&db, "b", later, Duration::seconds(60), 20, None).unwrap();
    assert_eq!(
        again.iter().map(|d| d.target.as_str()).collect::<Vec<_>>(),
        ["fo-1"]
    );
    db.execute(
        "UPDATE deliveries SET state = 'delivered', lease_until = NULL WHERE target = 'fo-1'",
        &[],
    )
    .unwrap();
    let then = claim(&db, "c", later, Duration::seconds(60), 20, None).unwrap();
    assert_eq!(
        then.iter().map(|d| d.target.as_str()).collect::<Vec<_>>(),
        ["cancel:fo-1"]
    );
}

#[test]
fn secrets_never_reach_debug_output() {
    let mut c = Config {
        provider: EmailProvider::Postmark {
            url: "https://api.postmarkapp.com".into(),
            token: "pm-token-very-secret".into(),
        },
        ..Config::default()
    };
    c.fc_secrets
        .insert("fc_secret_a".into(), "fc-shared-secret-value".into());
    let shown = format!("{c:?}");
    assert!(!shown.contains("very-secret"), "{shown}");
    assert!(!shown.contains("fc-shared-secret-value"), "{shown}");
    assert!(shown.contains("fc_secret_a") && shown.contains("[redacted]"));
    let hooks = crate::intake::webhooks::Config {
        shopify_secret: "shpss_secret_value".into(),
        woocommerce_secret: String::new(),
        commercetools_secret: "ct-secret-value".into(),
    };
    let shown = format!("{hooks:?}");
    assert!(
        !shown.contains("secret_value") && !shown.contains("ct-secret"),
        "{shown}"
    );
    assert!(shown.contains("(empty)"));
    let tokens = crate::http::Tokens::parse("write:w-token-very-secret");
    assert!(!format!("{tokens:?}").contains("very-secret"));
}
