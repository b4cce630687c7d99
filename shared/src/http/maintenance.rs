//! Maintenance routes (issue #17): `POST /api/maintenance/{schedule}` runs a
//! schedule's work now, exactly what its cron component runs
//! (`flows::schedules`). For platforms without cron triggers
//! (containerd-shim-spin runs none: on Kubernetes, CronJobs with
//! `concurrencyPolicy: Forbid` call these routes, `deploy/cronjobs.yaml`) and
//! for operators. Each route is served by the HTTP component of the context
//! that owns the work. It needs the `maintenance` scope: a token for the
//! CronJobs that can do nothing else.

use serde_json::{json, Value as Json};

use crate::http::{method_not_allowed, Request, Response, Tokens};
use crate::kernel::error::Result;

/// A schedule of spin.toml's cron triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Notify,
    Report,
    Housekeeping,
    Inventory,
    Routing,
    Capture,
}

impl Schedule {
    pub const ALL: [Schedule; 6] = [
        Schedule::Notify,
        Schedule::Report,
        Schedule::Housekeeping,
        Schedule::Inventory,
        Schedule::Routing,
        Schedule::Capture,
    ];

    /// The name in the route.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Notify => "notify",
            Schedule::Report => "report",
            Schedule::Housekeeping => "housekeeping",
            Schedule::Inventory => "inventory",
            Schedule::Routing => "routing",
            Schedule::Capture => "capture",
        }
    }

    /// The cron component whose work the route runs.
    pub fn cron_component(self) -> &'static str {
        match self {
            Schedule::Notify => "notify-cron",
            Schedule::Report => "report-cron",
            Schedule::Housekeeping => "housekeeping-cron",
            Schedule::Inventory => "inventory-cron",
            Schedule::Routing => "routing-cron",
            Schedule::Capture => "capture-cron",
        }
    }

    /// The HTTP component that serves the route.
    pub fn component(self) -> &'static str {
        match self {
            Schedule::Notify => "notify",
            Schedule::Report => "report",
            Schedule::Housekeeping => "orders",
            Schedule::Inventory => "inventory",
            Schedule::Routing => "routing",
            Schedule::Capture => "capture",
        }
    }

    /// The route.
    pub fn path(self) -> String {
        format!("/api/maintenance/{}", self.name())
    }
}

/// None when `req` is not `s`'s maintenance route; otherwise whether it may
/// run: `POST` only (405), a token with the `maintenance` scope (401 / 403).
pub fn request(tokens: &Tokens, req: &Request, s: Schedule) -> Option<Result<()>> {
    if req.path.trim_end_matches('/') != s.path() {
        return None;
    }
    if req.method != "POST" {
        return Some(Err(method_not_allowed(req)));
    }
    Some(tokens.authorize_route(req))
}

/// The answer: 200 with what the work did, or its error as problem+json (a
/// failed run is retried by the next call; the work is idempotent).
pub fn answer(s: Schedule, result: Result<Json>) -> Response {
    match result {
        Ok(r) => Response::json(
            200,
            &json!({"schedule": s.name(), "cron_component": s.cron_component(), "result": r}),
        ),
        Err(e) => Response::problem(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, token: &str) -> Request {
        Request::new(method, path).with_header("Authorization", &format!("Bearer {token}"))
    }

    #[test]
    fn a_maintenance_route_runs_only_on_post_with_the_maintenance_scope() {
        let tokens =
            Tokens::parse("maintenance:cron-token-1, admin:admin-token-1, write:write-token-1");
        let s = Schedule::Notify;
        assert!(request(
            &tokens,
            &req("POST", "/api/notifications", "cron-token-1"),
            s
        )
        .is_none());
        assert!(request(
            &tokens,
            &req("POST", "/api/maintenance/routing", "cron-token-1"),
            s
        )
        .is_none());
        let status =
            |m: &str, tok: &str| match request(&tokens, &req(m, "/api/maintenance/notify", tok), s)
            {
                Some(Ok(())) => 200,
                Some(Err(e)) => e.status(),
                None => 0,
            };
        assert_eq!(status("POST", "cron-token-1"), 200);
        assert_eq!(
            status("POST", "write-token-1"),
            200,
            "write has every scope but secrets"
        );
        assert_eq!(
            status("POST", "admin-token-1"),
            403,
            "an operator's admin token is not the CronJobs'"
        );
        assert_eq!(status("POST", "nobody-token-1"), 401);
        assert_eq!(status("GET", "cron-token-1"), 405);
    }

    #[test]
    fn the_maintenance_token_can_do_nothing_else() {
        let tokens = Tokens::parse("maintenance:cron-token-1");
        for (m, path) in [
            ("POST", "/api/orders"),
            ("POST", "/api/routing/sweep"),
            ("PUT", "/api/facilities/berlin"),
            ("POST", "/api/payments/sweep"),
        ] {
            assert_eq!(
                tokens
                    .authorize_route(&req(m, path, "cron-token-1"))
                    .unwrap_err()
                    .status(),
                403,
                "{m} {path}"
            );
        }
    }

    #[test]
    fn every_schedule_has_its_route_and_cron_component_in_spin_toml() {
        let manifest: toml::Table = include_str!("../../../spin.toml").parse().unwrap();
        let triggers = &manifest["trigger"];
        let http_routes: Vec<(String, String)> = triggers["http"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| {
                Some((
                    t["route"].as_str()?.to_string(),
                    t["component"].as_str()?.to_string(),
                ))
            })
            .collect();
        let cron_components: Vec<String> = triggers["cron"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["component"].as_str().unwrap().to_string())
            .collect();
        struct Doc {
            http_routes: Vec<(String, String)>,
            cron_components: Vec<String>,
        }
        let doc = Doc {
            http_routes,
            cron_components,
        };
        for s in Schedule::ALL {
            assert!(
                doc.http_routes
                    .contains(&(s.path(), s.component().to_string())),
                "spin.toml routes {} to {}",
                s.path(),
                s.component()
            );
            assert!(
                doc.cron_components
                    .contains(&s.cron_component().to_string()),
                "spin.toml has the cron component {}",
                s.cron_component()
            );
        }
        assert_eq!(
            doc.cron_components.len(),
            Schedule::ALL.len(),
            "a schedule for every cron trigger"
        );
    }

    /// deploy/: the manifests agree with spin.toml and the maintenance routes.
    mod deploy {
        use super::*;

        fn docs(file: &str) -> Vec<serde_yaml_ng::Value> {
            let path = format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            serde_yaml_ng::Deserializer::from_str(&text)
                .map(|d| {
                    serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}"))
                })
                .filter(|v: &serde_yaml_ng::Value| !v.is_null())
                .collect()
        }

        fn manifest() -> toml::Table {
            include_str!("../../../spin.toml").parse().unwrap()
        }

        fn s(v: &serde_yaml_ng::Value) -> &str {
            v.as_str().unwrap_or_default()
        }

        #[test]
        fn every_cron_trigger_has_a_cronjob_calling_its_route_on_its_schedule() {
            let m = manifest();
            let jobs = docs("cronjobs.yaml");
            assert_eq!(jobs.len(), Schedule::ALL.len());
            for t in m["trigger"]["cron"].as_array().unwrap() {
                let comp = t["component"].as_str().unwrap();
                let sched = Schedule::ALL
                    .into_iter()
                    .find(|x| x.cron_component() == comp)
                    .unwrap();
                let job = jobs
                    .iter()
                    .find(|j| s(&j["metadata"]["labels"]["waybill.dev/cron-component"]) == comp)
                    .unwrap_or_else(|| panic!("no CronJob for {comp}"));
                assert_eq!(s(&job["kind"]), "CronJob");
                assert_eq!(s(&job["spec"]["concurrencyPolicy"]), "Forbid", "{comp}");
                // Spin's six fields (seconds first) against Kubernetes' five.
                let spin: Vec<&str> = t["cron_expression"]
                    .as_str()
                    .unwrap()
                    .split_whitespace()
                    .collect();
                assert_eq!(spin.len(), 6, "{comp}");
                assert_eq!(s(&job["spec"]["schedule"]), spin[1..].join(" "), "{comp}");
                let pod = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"];
                let c = &pod["containers"][0];
                let call = format!("{:?}", c["args"]);
                assert!(call.contains(&format!("-X POST")), "{comp}: {call}");
                assert!(
                    call.contains(&format!("http://waybill{}", sched.path())),
                    "{comp}: {call}"
                );
                assert!(
                    call.contains("Authorization: Bearer $TOKEN"),
                    "{comp}: {call}"
                );
                let token = &c["env"][0];
                assert_eq!(s(&token["name"]), "TOKEN");
                assert_eq!(
                    s(&token["valueFrom"]["secretKeyRef"]["key"]),
                    "maintenance_token"
                );
                assert_eq!(s(&pod["restartPolicy"]), "Never");
            }
        }

        #[test]
        fn the_spinapp_runs_replicas_on_libsql_and_redis_with_spin_toml_s_variables() {
            let m = manifest();
            let app = &docs("spinapp.yaml")[0];
            assert_eq!(s(&app["kind"]), "SpinApp");
            assert_eq!(s(&app["spec"]["executor"]), "containerd-shim-spin");
            assert!(app["spec"]["replicas"].as_u64().unwrap() >= 2);
            // The stores the components open are the runtime configuration's.
            let labels = |key: &str| -> Vec<String> {
                let mut v: Vec<String> = m["component"]
                    .as_table()
                    .unwrap()
                    .values()
                    .filter_map(|c| c.get(key)?.as_array().cloned())
                    .flatten()
                    .map(|l| l.as_str().unwrap().to_string())
                    .collect();
                v.sort();
                v.dedup();
                v
            };
            let rc = &app["spec"]["runtimeConfig"];
            for (key, kind, list) in [
                ("sqlite_databases", "libsql", "sqliteDatabases"),
                ("key_value_stores", "redis", "keyValueStores"),
            ] {
                let configured: Vec<&serde_yaml_ng::Value> =
                    rc[list].as_sequence().unwrap().iter().collect();
                for label in labels(key) {
                    let store = configured
                        .iter()
                        .find(|c| s(&c["name"]) == label)
                        .unwrap_or_else(|| panic!("{list}: no {label}"));
                    assert_eq!(s(&store["type"]), kind);
                }
            }
            // Every variable named is declared; every required one is given.
            let declared = m["variables"].as_table().unwrap();
            let given: Vec<&str> = app["spec"]["variables"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| s(&v["name"]))
                .collect();
            for name in &given {
                assert!(
                    declared.contains_key(*name),
                    "spin.toml declares no variable {name}"
                );
            }
            for (name, v) in declared {
                if v.get("required").and_then(|r| r.as_bool()) == Some(true) {
                    assert!(given.contains(&name.as_str()), "{name} is required");
                }
                // A secret comes from a Secret, never from a value in the manifest.
                if v.get("secret").and_then(|r| r.as_bool()) == Some(true) {
                    if let Some(g) = app["spec"]["variables"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .find(|g| s(&g["name"]) == name)
                    {
                        assert!(g.get("value").is_none(), "{name} is a secret");
                        assert_eq!(
                            s(&g["valueFrom"]["secretKeyRef"]["name"]),
                            "waybill-secrets"
                        );
                    }
                }
            }
            // The Secrets hold every key the manifests read.
            let secrets = docs("secrets.example.yaml");
            let keys = |name: &str| -> Vec<String> {
                secrets
                    .iter()
                    .find(|d| s(&d["metadata"]["name"]) == name)
                    .and_then(|d| d["stringData"].as_mapping())
                    .map(|m| m.keys().map(|k| s(k).to_string()).collect())
                    .unwrap_or_default()
            };
            let read = |f: &str| {
                std::fs::read_to_string(format!("{}/../deploy/{f}", env!("CARGO_MANIFEST_DIR")))
                    .unwrap()
            };
            let text = read("spinapp.yaml") + read("cronjobs.yaml").as_str();
            let mut refs = 0;
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                if let Some(name) = l.trim().strip_prefix("name: waybill-") {
                    if lines
                        .get(i + 1)
                        .is_some_and(|n| n.trim().starts_with("key: "))
                        && lines[i - 1].contains("secretKeyRef")
                    {
                        let key = lines[i + 1].trim().trim_start_matches("key: ");
                        assert!(
                            keys(&format!("waybill-{name}")).iter().any(|k| k == key),
                            "waybill-{name} has no {key}"
                        );
                        refs += 1;
                    }
                }
            }
            assert!(refs >= 10, "{refs} secret references checked");
            assert!(
                keys("waybill-secrets").contains(&"maintenance_token".to_string()),
                "the CronJobs' token"
            );
        }

        #[test]
        fn the_backing_stores_have_the_services_the_runtime_configuration_names() {
            let app = &docs("spinapp.yaml")[0];
            let backing = docs("backing.yaml");
            let services: Vec<&str> = backing
                .iter()
                .filter(|d| s(&d["kind"]) == "Service")
                .map(|d| s(&d["metadata"]["name"]))
                .collect();
            let url = s(&app["spec"]["runtimeConfig"]["sqliteDatabases"][0]["options"][0]["value"]);
            assert!(
                services
                    .iter()
                    .any(|svc| url == format!("http://{svc}:8080")),
                "{url} in {services:?}"
            );
            let secrets = docs("secrets.example.yaml");
            let redis = secrets
                .iter()
                .find(|d| s(&d["metadata"]["name"]) == "waybill-stores")
                .map(|d| s(&d["stringData"]["redis-url"]).to_string())
                .unwrap();
            assert!(
                services
                    .iter()
                    .any(|svc| redis == format!("redis://{svc}:6379")),
                "{redis}"
            );
        }
    }
}
