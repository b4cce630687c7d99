//! The API contract, docs/openapi.yaml, checked two ways:
//! - against the code: every documented `/api/` operation names the scope the
//!   code enforces (`waybill::http::route_scope`), and every public route of
//!   spin.toml is documented;
//! - against the running app: schemathesis (from PyPI; scripts/test.sh
//!   installs it into target/contract-venv and names it in
//!   `WAYBILL_SCHEMATHESIS`) generates requests from the document and sends
//!   them to the compiled components on tests/host, bounded in examples and
//!   time, and fails on any server error and on any status, content type or
//!   body the document does not describe.

use std::process::Command;
use std::time::{Duration, Instant};

use waybill_scenarios::*;

/// (path, method, scope) of every operation, read from the document's own
/// layout (two-space paths, four-space methods, six-space `x-waybill-scope`).
fn operations(doc: &str) -> Vec<(String, String, String)> {
    let (mut path, mut method) = (String::new(), String::new());
    let mut out = Vec::new();
    for line in doc.lines() {
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            path = format!("/{p}");
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if ["get", "post", "put", "patch", "delete"].contains(&m) {
                method = m.to_uppercase();
            }
        } else if let Some(s) = line.strip_prefix("      x-waybill-scope: ") {
            out.push((path.clone(), method.clone(), s.trim().to_string()));
        }
    }
    out
}

fn document() -> String {
    std::fs::read_to_string(root().join("docs/openapi.yaml")).expect("docs/openapi.yaml")
}

#[test]
fn every_operation_names_the_scope_the_code_enforces() {
    let ops = operations(&document());
    assert!(ops.len() >= 75, "{} operations documented", ops.len());
    let mut checked = 0;
    for (path, method, scope) in &ops {
        if !path.starts_with("/api/") {
            assert!(
                scope.starts_with("none"),
                "{method} {path}: signed routes need no token"
            );
            continue;
        }
        let segs: Vec<&str> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| match s {
                // The one path parameter the scope depends on (an enum in the document).
                "{kind}" => "pick-jobs",
                _ if s.starts_with('{') => "x",
                _ => s,
            })
            .collect();
        let enforced = waybill::http::route_scope(method, &segs).name();
        assert_eq!(scope, enforced, "{method} {path}");
        checked += 1;
    }
    assert!(checked >= 70, "{checked}");
}

#[test]
fn every_public_route_of_the_manifest_is_documented() {
    let ops = operations(&document());
    let manifest = std::fs::read_to_string(root().join("spin.toml")).unwrap();
    let mut routes = 0;
    for line in manifest.lines() {
        let Some(r) = line
            .strip_prefix("route = \"")
            .and_then(|l| l.strip_suffix('"'))
        else {
            continue;
        };
        routes += 1;
        // `/api/orders/...` covers what is under it; `:facility` is `{facility}`.
        let prefix: String = r
            .trim_end_matches("/...")
            .split('/')
            .map(|s| match s.strip_prefix(':') {
                Some(p) => format!("{{{p}}}"),
                None => s.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/");
        assert!(
            ops.iter()
                .any(|(p, _, _)| p == &prefix || p.starts_with(&format!("{prefix}/"))),
            "the route {r} has no documented operation"
        );
    }
    assert!(routes >= 20, "{routes} routes in spin.toml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_app_answers_as_the_document_says() {
    let Some(schemathesis) = std::env::var_os("WAYBILL_SCHEMATHESIS") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "WAYBILL_SCHEMATHESIS is not set: run the tests with scripts/test.sh"
        );
        eprintln!("skipped: WAYBILL_SCHEMATHESIS is not set (scripts/test.sh sets it)");
        return;
    };
    let app = start().await;
    // The data the document's examples name (`berlin`, `MUG`, `api:contract-1`),
    // so reads answer 200 and their bodies are checked too.
    put_ok(
        &app,
        "/api/facilities/berlin",
        serde_json::json!({"name": "Berlin DC", "type": "warehouse",
        "countries": ["DE"], "latitude": 52.52, "longitude": 13.40}),
    )
    .await;
    put_ok(
        &app,
        "/api/products/MUG",
        serde_json::json!({"name": "Mug", "backorderable": true}),
    )
    .await;
    receive_stock(&app, "berlin", "MUG", 50).await;
    let order = serde_json::json!({"external_id": "contract-1", "currency": "EUR", "financial_status": "authorized",
        "customer": {"email": "kim@example.com"},
        "shipping_address": {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117", "country_code": "DE"},
        "lines": [{"sku": "MUG", "name": "Mug", "quantity": 2, "unit_price": "10.00"}],
        "shipping_lines": [{"method": "standard", "price": "4.90"}]});
    let r = post_api(
        &app,
        "/api/orders",
        &[("content-type", "application/json")],
        order.to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let doc = root().join("docs/openapi.yaml");
    let url = app.url("");
    // Schemathesis writes nothing we keep; it runs in a scratch directory.
    let work = std::env::temp_dir().join(format!("waybill-contract-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let mut child = Command::new(schemathesis)
        .current_dir(&work)
        .args(["run", doc.to_str().unwrap(), "--url", url.trim_end_matches('/')])
        .args(["--header", &format!("Authorization: Bearer {WRITE_TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--mode", "positive", "--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "25", "--seed", "20261203", "--workers", "2"])
        .args(["--request-timeout", "20", "--generation-database", "none"])
        .args(["--no-color", "--max-failures", "20", "--suppress-health-check", "all"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("schemathesis starts");
    // Bounded: the run takes well under a minute here; ten is the limit.
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            panic!("schemathesis ran past 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(&work);
    assert!(status.success(), "schemathesis found a mismatch:\n{text}");
    let summary = text
        .lines()
        .find(|l| l.contains(" generated, "))
        .unwrap_or("")
        .trim()
        .to_string();
    eprintln!("schemathesis: {summary}");
    assert!(
        summary.contains("passed") && !summary.contains("failed"),
        "{text}"
    );
}
