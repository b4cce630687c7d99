//! tests/host against real compiled components (tests/host/fixtures), each
//! interface exercised through a component with an observable result.

use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::OnceLock;
use waybill_host::{client, App, RunningApp, SqlValue};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the fixture components for wasm32-wasip2 once per test binary.
fn build_fixtures() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(root())
            .args([
                "build",
                "--target",
                "wasm32-wasip2",
                "--release",
                "-p",
                "fixture-probe",
                "-p",
                "fixture-hello",
                "-p",
                "fixture-cron-probe",
                "-p",
                "fixture-unsupported",
            ])
            .status()
            .expect("run cargo to build the fixture components");
        assert!(status.success(), "building the fixture components failed");
        // The same hello fixture as a core module (WASI preview 1).
        let status =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(root())
                .args([
                    "build",
                    "--target",
                    "wasm32-wasip1",
                    "--release",
                    "-p",
                    "fixture-hello",
                ])
                .status()
                .expect("run cargo to build the core-module fixture");
        assert!(
            status.success(),
            "building the core-module fixture failed (rustup target add wasm32-wasip1)"
        );
    });
}

fn manifest(name: &str) -> PathBuf {
    build_fixtures();
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

async fn start() -> RunningApp {
    App::builder(manifest("spin.toml"))
        .variable("api_token", "t0ken")
        .sqlite_statement("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO counter VALUES (1, 0);")
        .start()
        .await
        .expect("app starts")
}

async fn call(app: &RunningApp, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, _, bytes) = client::request(method, &app.url(path), &[], body.to_string())
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_get_set_delete_exists_keys() {
    let app = start().await;
    assert_eq!(
        call(&app, "POST", "/probe/kv/set?key=a", "one").await.1,
        json!({"ok": true})
    );
    assert_eq!(
        call(&app, "POST", "/probe/kv/set?key=b", "two").await.1,
        json!({"ok": true})
    );
    assert_eq!(
        call(&app, "GET", "/probe/kv/get?key=a", "").await.1,
        json!({"value": "one"})
    );
    assert_eq!(
        call(&app, "GET", "/probe/kv/get?key=zz", "").await.1,
        json!({"value": null})
    );
    assert_eq!(
        call(&app, "GET", "/probe/kv/exists?key=b", "").await.1,
        json!({"exists": true})
    );
    assert_eq!(
        call(&app, "GET", "/probe/kv/keys", "").await.1,
        json!({"keys": ["a", "b"]})
    );
    assert_eq!(
        call(&app, "POST", "/probe/kv/delete?key=a", "").await.1,
        json!({"ok": true})
    );
    assert_eq!(
        call(&app, "GET", "/probe/kv/exists?key=a", "").await.1,
        json!({"exists": false})
    );
    assert_eq!(
        call(&app, "POST", "/probe/kv/set?key=b", "three").await.1,
        json!({"ok": true})
    );
    // The host's view of the same file: Spin's spin_key_value layout, label "default".
    assert_eq!(
        app.kv_get("default", "b").unwrap().as_deref(),
        Some(&b"three"[..])
    );
    assert!(app.state_dir().join("sqlite_key_value.db").is_file());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_access_is_limited_to_listed_labels() {
    let app = start().await;
    // Not listed by the component: access-denied, whatever the label.
    assert_eq!(
        call(&app, "GET", "/noaccess/kv/get?key=a", "").await.1,
        json!({"error": "access-denied"})
    );
    assert_eq!(
        call(&app, "GET", "/probe/kv/get?store=other&key=a", "")
            .await
            .1,
        json!({"error": "access-denied"})
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_values_parameters_errors_changes_rowid() {
    let app = start().await;
    let body = json!({"statements": [
        {"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, n TEXT)"},
        {"sql": "INSERT INTO t (i, r, s, b, n) VALUES (?, ?, ?, ?, ?)", "params": [-42, 2.5, "héllo", {"blob": [0, 1, 255]}, null]},
        {"sql": "INSERT INTO t (i) VALUES (?), (?)", "params": [1, 2]},
        {"sql": "UPDATE t SET s = 'x' WHERE i > ?", "params": [0]},
        {"sql": "SELECT i, r, s, b, n FROM t WHERE id = ?", "params": [1]},
        {"sql": "SELEC nonsense"},
        {"sql": "INSERT INTO missing VALUES (1)"},
    ]});
    let (status, v) = call(&app, "POST", "/probe/sql", &body.to_string()).await;
    assert_eq!(status, 200);
    let r = &v["results"];
    assert_eq!(r[1]["last_insert_rowid"], json!(1));
    assert_eq!(r[1]["changes"], json!(1));
    assert_eq!(r[2]["last_insert_rowid"], json!(3));
    assert_eq!(r[2]["changes"], json!(2));
    assert_eq!(r[3]["changes"], json!(2));
    assert_eq!(r[4]["columns"], json!(["i", "r", "s", "b", "n"]));
    assert_eq!(
        r[4]["rows"],
        json!([[{"integer": -42}, {"real": 2.5}, {"text": "héllo"}, {"blob": [0, 1, 255]}, "null"]])
    );
    assert!(
        r[5]["error"].as_str().unwrap().starts_with("io: "),
        "{}",
        r[5]
    );
    assert!(
        r[6]["error"].as_str().unwrap().contains("no such table"),
        "{}",
        r[6]
    );
    // The host reads the same file as Spin's default database.
    let rows = app.sql("default", "SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(rows.rows, vec![vec![SqlValue::Integer(3)]]);
    // The older fermyon:spin/sqlite@2.0.0 interface works on the same database.
    let (_, v2) = call(&app, "POST", "/probe/sql-v2", "SELECT * FROM t").await;
    assert_eq!(
        v2,
        json!({"columns": ["id", "i", "r", "s", "b", "n"], "rows": 3})
    );
    // A component without the label is denied; an unknown label likewise.
    let (_, denied) = call(
        &app,
        "POST",
        "/noaccess/sql",
        &json!({"statements": []}).to_string(),
    )
    .await;
    assert_eq!(denied, json!({"error": "access-denied"}));
    let (_, unknown) = call(
        &app,
        "POST",
        "/probe/sql",
        &json!({"db": "other", "statements": []}).to_string(),
    )
    .await;
    assert_eq!(unknown, json!({"error": "access-denied"}));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_immediate_units_from_concurrent_requests_lose_nothing() {
    let app = start().await;
    let url = app.url("/probe/sql-tx?times=40");
    let (a, b, c) = (
        client::post(&url, ""),
        client::post(&url, ""),
        client::post(&url, ""),
    );
    let (ra, rb, rc) = tokio::join!(a, b, c);
    for r in [ra, rb, rc] {
        let (status, _, body) = r.unwrap();
        assert_eq!((status, &body[..]), (200, &br#"{"ok":true}"#[..]));
    }
    let rows = app
        .sql("default", "SELECT n FROM counter WHERE id = 1", &[])
        .unwrap();
    assert_eq!(rows.rows, vec![vec![SqlValue::Integer(120)]]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_present_defaulted_missing_invalid() {
    let app = start().await;
    assert_eq!(
        call(&app, "GET", "/probe/var?name=token", "").await.1,
        json!({"value": "t0ken"})
    );
    assert_eq!(
        call(&app, "GET", "/probe/var?name=greeting", "").await.1,
        json!({"value": "hello, world"})
    );
    let (_, missing) = call(&app, "GET", "/probe/var?name=nothing_here", "").await;
    assert!(
        missing["error"].as_str().unwrap().starts_with("undefined"),
        "{missing}"
    );
    let (_, invalid) = call(&app, "GET", "/probe/var?name=Bad-Name", "").await;
    assert!(
        invalid["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid-name"),
        "{invalid}"
    );
    // Component variables are per component: `items` declares none.
    let (_, other) = call(&app, "GET", "/items/1/var?name=greeting", "").await;
    assert!(
        other["error"].as_str().unwrap().starts_with("undefined"),
        "{other}"
    );
    // Environment from the manifest reaches the component.
    let (_, env) = call(&app, "GET", "/probe/env", "").await;
    assert_eq!(env["env"]["PROBE_ENV"], json!("set-by-manifest"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_come_from_spin_variable_env_and_defaults_can_be_overridden() {
    let mut env = std::collections::HashMap::new();
    env.insert(
        "SPIN_VARIABLE_API_TOKEN".to_string(),
        "from-env".to_string(),
    );
    env.insert("SPIN_VARIABLE_GREETING".to_string(), "hi".to_string());
    let app = App::builder(manifest("spin.toml"))
        .env(env)
        .start()
        .await
        .unwrap();
    assert_eq!(
        call(&app, "GET", "/probe/var?name=token", "").await.1,
        json!({"value": "from-env"})
    );
    assert_eq!(
        call(&app, "GET", "/probe/var?name=greeting", "").await.1,
        json!({"value": "hi, world"})
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_variable_without_value_fails_at_start() {
    let err = App::builder(manifest("spin.toml"))
        .start()
        .await
        .err()
        .expect("must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("variables.api_token: required variable has no value"),
        "{msg}"
    );
}

/// Spin links its redis, mqtt, postgres, mysql and llm interfaces for every
/// component; one that opens a Redis address outside its allowed hosts gets
/// Spin's `invalid-address`, not a refusal to load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spins_other_interfaces_are_linked_and_refuse_what_is_not_permitted() {
    let app = App::builder(manifest("spin-unsupported.toml"))
        .start()
        .await
        .expect("a component importing fermyon:spin/redis loads");
    let (status, _, body) = client::request("GET", &app.url("/"), &[], String::new())
        .await
        .unwrap();
    assert_eq!(status, 500);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("InvalidAddress"), "{body}");
    app.stop().await;
}

/// A core module is converted to a component on load, as Spin does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_module_runs_as_a_component() {
    let app = App::builder(manifest("spin-module.toml"))
        .start()
        .await
        .expect("core module loads");
    assert_eq!(
        call(&app, "GET", "/hello", "").await,
        (200, Value::String("hello".into()))
    );
    app.stop().await;
}

/// The conformance suite's request shape: header names, Spin's own answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_shape_and_spins_own_answers() {
    let app = start().await;
    let (status, _, body) =
        client::request("GET", &app.url("/segments/abc/rest"), &[], String::new())
            .await
            .unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["headers"]["spin-path-match-path-segment"], json!("abc"));
    assert_eq!(v["headers"]["spin-path-info"], json!("/rest"));
    assert!(v["headers"]
        .as_object()
        .unwrap()
        .keys()
        .all(|k| !k.contains('_')));
    // No route: 404 with an empty body; a trap: 500 with an empty body.
    for (path, want) in [
        ("/nothing/here", 404),
        ("/probe/trap", 500),
        ("/.well-known/spin/other", 404),
    ] {
        let (status, headers, body) = client::request("GET", &app.url(path), &[], String::new())
            .await
            .unwrap();
        assert_eq!((status, body.len()), (want, 0), "{path}");
        assert!(
            !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type")),
            "{path}"
        );
    }
    let (status, info) = call(&app, "GET", "/.well-known/spin/info", "").await;
    assert_eq!(status, 200);
    assert_eq!(info, json!({"name": "host-fixtures", "version": "0.1.0"}));
    let (status, headers, body) = client::request("GET", &app.url("/static"), &[], String::new())
        .await
        .unwrap();
    assert_eq!((status, &body[..]), (203, &b"static body"[..]));
    assert!(headers.iter().any(|(k, v)| k == "x-static" && v == "yes"));
    app.stop().await;
}

/// wasi:sockets TCP: created freely, connected only where allowed_outbound_hosts
/// lets a `tcp://` URL go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_sockets_are_gated_by_allowed_outbound_hosts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let echo = tokio::spawn(async move {
        for _ in 0..2 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).await.is_ok() {
                let _ = s.write_all(&buf).await;
            }
        }
    });
    let app = App::builder(manifest("spin.toml"))
        .variable("api_token", "t0ken")
        .variable("tcp_port", &port.to_string())
        .start()
        .await
        .unwrap();
    let addr = format!("127.0.0.1%3A{port}");
    let (_, v) = call(&app, "GET", &format!("/probe/tcp?addr={addr}"), "").await;
    assert_eq!(v, json!({"echo": "ping"}), "allowed: connects");
    // Another port of the same host is not allowed; neither is any port for a
    // component without a tcp:// entry.
    let (_, v) = call(
        &app,
        "GET",
        &format!("/probe/tcp?addr=127.0.0.1%3A{}", port + 1),
        "",
    )
    .await;
    assert_eq!(v["error"], json!("PermissionDenied"), "{v}");
    let (_, v) = call(&app, "GET", &format!("/noaccess/tcp?addr={addr}"), "").await;
    assert_eq!(v["error"], json!("PermissionDenied"), "{v}");
    app.stop().await;
    echo.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_chaining_reaches_a_private_route_only_in_process() {
    let app = start().await;
    let (_, v) = call(
        &app,
        "POST",
        "/probe/fetch?url=http%3A%2F%2Fprivate.spin.internal%2Fvar%3Fname=greeting",
        "",
    )
    .await;
    // The private component answered with its own variables.
    assert_eq!(v["status"], json!(200), "{v}");
    // (the query string of the chained URL was cut at '=' by the probe's parser; ask headers instead)
    let (_, v) = call(
        &app,
        "POST",
        "/probe/fetch?url=http%3A%2F%2Fprivate.spin.internal%2Fsome%2Fpath",
        "",
    )
    .await;
    let inner: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(inner["headers"]["spin-path-info"], json!("/some/path"));
    assert_eq!(inner["headers"]["spin-matched-route"], json!("/..."));
    assert_eq!(inner["headers"]["spin-client-addr"], json!("0.0.0.0:0"));
    assert_eq!(inner["headers"]["x-probe"], json!("chained"));
    // A component not allowed to chain to `private` is refused.
    let (_, denied) = call(
        &app,
        "POST",
        "/noaccess/fetch?url=http%3A%2F%2Fprivate.spin.internal%2Fx",
        "",
    )
    .await;
    assert!(
        denied["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("denied"),
        "{denied}"
    );
    // ...while its allowed chain works.
    let (_, ok) = call(
        &app,
        "POST",
        "/noaccess/fetch?url=http%3A%2F%2Fhello.spin.internal%2F",
        "",
    )
    .await;
    assert_eq!(ok, json!({"status": 200, "body": "hello"}));
    // A private route is not reachable from outside.
    let (status, _) = call(&app, "GET", "/private", "").await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_hosts_not_allowed_are_refused() {
    // A loopback fake that counts requests; the probe may reach only its port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| {
                        h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from("fake says hi")),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let app = App::builder(manifest("spin.toml"))
        .variable("api_token", "x")
        .variable("fake_port", &port.to_string())
        .start()
        .await
        .unwrap();
    let allowed = format!("/probe/fetch?url=http%3A%2F%2F127.0.0.1%3A{port}%2F");
    assert_eq!(
        call(&app, "POST", &allowed, "").await.1,
        json!({"status": 200, "body": "fake says hi"})
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Same host, other port; other host; other scheme: all refused before any connection.
    for url in [
        format!("http%3A%2F%2F127.0.0.1%3A{}%2F", port + 1),
        format!("http%3A%2F%2Flocalhost%3A{port}%2F"),
        "https%3A%2F%2Fexample.com%2F".to_string(),
    ] {
        let (_, v) = call(&app, "POST", &format!("/probe/fetch?url={url}"), "").await;
        assert!(
            v["error"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase()
                .contains("denied"),
            "{url}: {v}"
        );
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The `items` component has no allowed hosts at all.
    let (_, v) = call(
        &app,
        "POST",
        &format!("/items/1/fetch?url=http%3A%2F%2F127.0.0.1%3A{port}%2F"),
        "",
    )
    .await;
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("denied"),
        "{v}"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_headers_route_params_and_404() {
    let app = start().await;
    let (status, _, body) = client::request(
        "POST",
        &app.url("/items/42/rest/of/it?q=1"),
        &[("spin-path-info", "/spoofed")],
        "abc",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let h = &v["headers"];
    assert_eq!(
        h["spin-path-info"],
        json!("/rest/of/it"),
        "client-sent spin-* headers are replaced"
    );
    assert_eq!(
        h["spin-full-url"],
        json!(format!("http://{}/items/42/rest/of/it?q=1", app.addr))
    );
    assert_eq!(h["spin-matched-route"], json!("/items/:id/..."));
    assert_eq!(h["spin-raw-component-route"], json!("/items/:id/..."));
    assert_eq!(h["spin-component-route"], json!("/items/:id"));
    assert_eq!(h["spin-base-path"], json!("/"));
    assert_eq!(h["spin-path-match-id"], json!("42"));
    assert!(h["spin-client-addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(v["method"], json!("POST"));
    assert_eq!(v["body_len"], json!(3));
    assert_eq!(call(&app, "GET", "/nothing/here", "").await.0, 404);
    assert_eq!(call(&app, "GET", "/hello/extra", "").await.0, 404);
    assert_eq!(
        call(&app, "GET", "/.well-known/spin/health", "").await,
        (200, Value::String("OK".into()))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_component_answers_500_and_the_host_keeps_serving() {
    let app = start().await;
    assert_eq!(call(&app, "GET", "/probe/trap", "").await.0, 500);
    assert_eq!(
        call(&app, "GET", "/hello", "").await,
        (200, Value::String("hello".into()))
    );
    assert_eq!(call(&app, "GET", "/probe/trap", "").await.0, 500);
    assert_eq!(
        call(&app, "GET", "/probe/kv/keys", "").await.1,
        json!({"keys": []})
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_event_fired_on_demand() {
    let app = start().await;
    assert_eq!(app.kv_get("default", "cron:count").unwrap(), None);
    app.fire_cron("cron-probe").await.unwrap();
    app.fire_cron("cron-probe").await.unwrap();
    assert_eq!(
        app.kv_get("default", "cron:count").unwrap().as_deref(),
        Some(&b"2"[..])
    );
    let ts: u64 = String::from_utf8(app.kv_get("default", "cron:last").unwrap().unwrap())
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(ts) < 60);
    assert!(
        app.fire_cron("hello").await.is_err(),
        "hello has no cron trigger"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_schedule_fires_by_itself() {
    let app = App::builder(manifest("spin-every-second.toml"))
        .schedules(true)
        .start()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(n) = app.kv_get("default", "cron:count").unwrap() {
            if String::from_utf8(n).unwrap().parse::<u64>().unwrap() >= 2 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the every-second schedule did not fire twice in 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[test]
fn the_binary_reads_spin_variable_env_and_sqlite_flag() {
    build_fixtures();
    let state = std::env::temp_dir().join(format!("waybill-host-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waybill-host"))
        .args(["cron", "cron-probe", "--from"])
        .arg(manifest("spin.toml"))
        .arg("--state-dir")
        .arg(&state)
        .args(["--sqlite", "CREATE TABLE marker (x INTEGER)"])
        .env("SPIN_VARIABLE_API_TOKEN", "from-process-env")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = rusqlite_free_check(&state);
    assert!(
        conn,
        "the --sqlite statement ran against the default database"
    );
    // Without the required variable the binary fails at start and says why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waybill-host"))
        .args(["cron", "cron-probe", "--from"])
        .arg(manifest("spin.toml"))
        .arg("--state-dir")
        .arg(&state)
        .env_remove("SPIN_VARIABLE_API_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("api_token"));
    let _ = std::fs::remove_dir_all(&state);
}

/// Whether the `marker` table exists in the state dir's default database.
fn rusqlite_free_check(state: &std::path::Path) -> bool {
    let db = std::fs::read(state.join("sqlite_db.db")).unwrap_or_default();
    db.windows(b"marker".len()).any(|w| w == b"marker")
}

/// `waybill-host up` runs the manifest's schedules; `--no-cron` runs none (a
/// replica beside one that runs them, or SpinKube, where CronJobs call the
/// maintenance routes instead).
#[test]
fn up_runs_the_schedules_unless_told_no_cron() {
    build_fixtures();
    let dir = std::env::temp_dir().join(format!("waybill-host-no-cron-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = root().join("target/wasm32-wasip2/release");
    let app = dir.join("spin.toml");
    std::fs::write(
        &app,
        format!(
            r#"spin_manifest_version = 2
[application]
name = "no-cron"
[[trigger.cron]]
component = "cron-probe"
cron_expression = "* * * * * *"
[component.cron-probe]
source = "{wasm}/fixture_cron_probe.wasm"
key_value_stores = ["default"]
[[trigger.http]]
route = "/hello"
component = "hello"
[component.hello]
source = "{wasm}/fixture_hello.wasm"
"#,
            wasm = wasm.display()
        ),
    )
    .unwrap();
    // Seconds the every-second schedule fired in ~3 s of serving.
    let fired = |flag: Option<&str>| -> u64 {
        let state = dir.join(format!("state{}", flag.unwrap_or("")));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_waybill-host"));
        cmd.args(["up", "--quiet", "--from"])
            .arg(&app)
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stderr(std::process::Stdio::null());
        if let Some(f) = flag {
            cmd.arg(f);
        }
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3500));
        let _ = child.kill();
        let _ = child.wait();
        // The probe counts its events in the key-value file (SQLite).
        let kv = std::fs::read(state.join("sqlite_key_value.db")).unwrap_or_default();
        u64::from(kv.windows(b"cron:count".len()).any(|w| w == b"cron:count"))
    };
    assert_eq!(fired(None), 1, "up runs the schedule");
    assert_eq!(fired(Some("--no-cron")), 0, "--no-cron runs none");
    let _ = std::fs::remove_dir_all(&dir);
}
