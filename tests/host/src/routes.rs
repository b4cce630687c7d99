//! HTTP route matching and the `spin-*` request headers, as Spin 3/4 computes them.
//!
//! Spin uses the `routefinder` crate: exact routes beat wildcards, and among
//! wildcards the longest matching prefix wins; `:name` matches one segment and
//! `/...` matches any trailing path. The same crate is used here so the
//! precedence is Spin's own, not an imitation.

use anyhow::{anyhow, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::manifest::Handler;

/// Checks a route pattern the way the router will read it: Spin hands every
/// route to `routefinder`, so only what `routefinder` refuses is refused (a
/// `...` in the middle is a literal segment; `/*` is a trailing wildcard).
pub fn validate_route(route: &str) -> Result<()> {
    parse_route(&based(route))
        .map(|_| ())
        .map_err(|e| anyhow!("'{route}': {e}"))
}

/// Spin's "based" route: absolute, with one trailing slash stripped (so "/" is "").
fn based(route: &str) -> String {
    let r = if route.starts_with('/') {
        route.to_string()
    } else {
        format!("/{route}")
    };
    match r.strip_suffix('/') {
        Some(s) => s.to_string(),
        None => r,
    }
}

fn parse_route(based: &str) -> Result<(routefinder::RouteSpec, bool), String> {
    if let Some(prefix) = based.strip_suffix("/...") {
        let spec: routefinder::RouteSpec = format!("{prefix}/*").as_str().try_into()?;
        Ok((spec, true))
    } else if based.ends_with("/*") {
        let spec: routefinder::RouteSpec = based.try_into()?;
        Ok((spec, true))
    } else {
        let spec: routefinder::RouteSpec = based.try_into()?;
        Ok((spec, false))
    }
}

#[derive(Debug, Clone)]
struct Entry {
    handler: Handler,
    trigger: String,
    raw_route: String,
    based_route: String,
}

/// The public routes of an app (private routes are reachable only by chaining).
#[derive(Debug)]
pub struct Router {
    inner: routefinder::Router<Entry>,
}

/// What a path matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The component to run (None for a `static_response` trigger).
    pub component: Option<String>,
    /// The id of the trigger that matched.
    pub trigger: String,
    /// The route as written in the manifest (`/api/:id/...`).
    pub raw_route: String,
    /// The route absolutized, one trailing slash stripped (`spin-matched-route`).
    pub based_route: String,
    /// `:name` captures.
    pub params: BTreeMap<String, String>,
    /// The path below the route (what `spin-path-info` carries).
    pub path_info: String,
}

impl Router {
    /// `routes`: (trigger id, handler, route) in manifest order; a later trigger
    /// with the same route text replaces an earlier one in its place, as in Spin
    /// (which warns about it).
    pub fn build<'a>(
        routes: impl IntoIterator<Item = (&'a str, &'a Handler, &'a str)>,
    ) -> Result<(Router, Vec<String>)> {
        let mut unique: Vec<Entry> = Vec::new();
        let mut warnings = Vec::new();
        for (trigger, handler, route) in routes {
            let entry = Entry {
                handler: handler.clone(),
                trigger: trigger.to_string(),
                raw_route: route.to_string(),
                based_route: based(route),
            };
            if let Some(slot) = unique.iter_mut().find(|e| e.raw_route == route) {
                warnings.push(format!(
                    "route '{route}' is declared twice: trigger '{trigger}' replaces '{}'",
                    slot.trigger
                ));
                *slot = entry;
            } else {
                unique.push(entry);
            }
        }
        let mut inner = routefinder::Router::new();
        for e in unique {
            let (spec, _) = parse_route(&e.based_route)
                .map_err(|err| anyhow!("route '{}': {err}", e.based_route))?;
            inner
                .add(spec, e.clone())
                .map_err(|err| anyhow!("route '{}': {err}", e.based_route))?;
        }
        Ok((Router { inner }, warnings))
    }

    /// The best route for `path` (no query string), or None (404).
    pub fn route(&self, path: &str) -> Option<RouteMatch> {
        let m = self.inner.best_match(path)?;
        let e = m.handler();
        let captures = m.captures();
        let params = captures
            .params()
            .iter()
            .map(|c| (c.name().to_string(), c.value().to_string()))
            .collect();
        // Spin keeps trailing slashes in the wildcard part, which routefinder drops.
        let path_info = match captures.wildcard() {
            None => String::new(),
            Some(w) => match (w.is_empty(), path.ends_with('/')) {
                (true, false) => String::new(),
                (true, true) => "/".to_string(),
                (false, false) => format!("/{w}"),
                (false, true) => format!("/{w}/"),
            },
        };
        Some(RouteMatch {
            component: match &e.handler {
                Handler::Component(c) => Some(c.clone()),
                Handler::Static(_) => None,
            },
            trigger: e.trigger.clone(),
            raw_route: e.raw_route.clone(),
            based_route: e.based_route.clone(),
            params,
            path_info,
        })
    }
}

impl RouteMatch {
    /// The match Spin synthesises for a service-chained request: the whole path is
    /// the path info of a `/...` route.
    pub fn synthetic(component: &str, path: &str) -> RouteMatch {
        RouteMatch {
            component: Some(component.to_string()),
            trigger: String::new(),
            raw_route: "/...".to_string(),
            based_route: "/...".to_string(),
            params: BTreeMap::new(),
            path_info: path.to_string(),
        }
    }

    /// The `spin-*` headers Spin adds to the request (they replace any the client
    /// sent). Names are Spin's `SPIN_*` keys with `_` turned into `-`, lowercased,
    /// also for `:name` captures (`:path_segment` → `spin-path-match-path-segment`).
    pub fn spin_headers(
        &self,
        scheme: &str,
        host: &str,
        path_and_query: &str,
        client: SocketAddr,
    ) -> Vec<(String, String)> {
        let raw_or_prefix = self
            .raw_route
            .strip_suffix("/...")
            .unwrap_or(&self.raw_route)
            .to_string();
        let mut h = vec![
            ("spin-path-info".to_string(), self.path_info.clone()),
            (
                "spin-full-url".to_string(),
                format!("{scheme}://{host}{path_and_query}"),
            ),
            ("spin-matched-route".to_string(), self.based_route.clone()),
            ("spin-base-path".to_string(), "/".to_string()),
            (
                "spin-raw-component-route".to_string(),
                self.raw_route.clone(),
            ),
            ("spin-component-route".to_string(), raw_or_prefix),
            ("spin-client-addr".to_string(), client.to_string()),
        ];
        for (k, v) in &self.params {
            h.push((
                format!(
                    "spin-path-match-{}",
                    k.replace('_', "-").to_ascii_lowercase()
                ),
                v.clone(),
            ));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(routes: &[(&str, &str)]) -> Result<(Router, Vec<String>)> {
        let handlers: Vec<(String, Handler, String)> = routes
            .iter()
            .map(|(c, r)| {
                (
                    format!("{c}-trigger"),
                    Handler::Component(c.to_string()),
                    r.to_string(),
                )
            })
            .collect();
        Router::build(handlers.iter().map(|(t, h, r)| (t.as_str(), h, r.as_str())))
    }

    fn router(routes: &[(&str, &str)]) -> Router {
        build(routes).unwrap().0
    }

    fn comp(r: &Router, path: &str) -> Option<String> {
        r.route(path).and_then(|m| m.component)
    }

    /// The route-matching table: (routes, path, expected component).
    #[test]
    fn route_table() {
        let r = router(&[
            ("root", "/"),
            ("all", "/..."),
            ("orders", "/api/orders"),
            ("order", "/api/orders/:id"),
            ("order-events", "/api/orders/:id/events"),
            ("api", "/api/..."),
            ("hooks", "/webhooks/:platform"),
            ("deep", "/a/b/c/..."),
            ("mid", "/a/b/..."),
        ]);
        let cases = [
            ("/", Some("root")),
            ("/anything/else", Some("all")),
            ("/api/orders", Some("orders")),
            ("/api/orders/", Some("orders")),
            ("/api/orders/42", Some("order")),
            ("/api/orders/42/events", Some("order-events")),
            ("/api/orders/42/events/x", Some("api")),
            ("/api/reports", Some("api")),
            ("/api", Some("api")),
            ("/webhooks/shopify", Some("hooks")),
            ("/webhooks/shopify/extra", Some("all")),
            ("/a/b/c/d", Some("deep")),
            ("/a/b/x", Some("mid")),
            ("/a/b", Some("mid")),
        ];
        for (path, want) in cases {
            assert_eq!(comp(&r, path).as_deref(), want, "path {path}");
        }
    }

    #[test]
    fn no_match_is_none() {
        let r = router(&[("orders", "/api/orders"), ("one", "/x/:id")]);
        assert_eq!(comp(&r, "/api/other"), None);
        assert_eq!(comp(&r, "/x"), None);
        assert_eq!(comp(&r, "/x/1/2"), None);
    }

    #[test]
    fn path_info_and_params() {
        let r = router(&[("foo", "/foo/:userid/..."), ("static", "/static/...")]);
        let m = r.route("/foo/42/bar").unwrap();
        assert_eq!(m.params.get("userid").map(String::as_str), Some("42"));
        assert_eq!(m.path_info, "/bar");
        assert_eq!(r.route("/static").unwrap().path_info, "");
        assert_eq!(r.route("/static/").unwrap().path_info, "/");
        assert_eq!(r.route("/static/a/b/").unwrap().path_info, "/a/b/");
        let h = m.spin_headers(
            "http",
            "localhost:3000",
            "/foo/42/bar?x=1",
            "127.0.0.1:5000".parse().unwrap(),
        );
        let get = |k: &str| {
            h.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("spin-full-url"), "http://localhost:3000/foo/42/bar?x=1");
        assert_eq!(get("spin-path-info"), "/bar");
        assert_eq!(get("spin-matched-route"), "/foo/:userid/...");
        let r = router(&[("seg", "/p/:path_segment")]);
        let m = r.route("/p/x").unwrap();
        let h = m.spin_headers("http", "h", "/p/x", "127.0.0.1:1".parse().unwrap());
        assert!(h.contains(&("spin-path-match-path-segment".to_string(), "x".to_string())));
        assert!(!h.iter().any(|(k, _)| k.contains('_')));
        assert_eq!(get("spin-raw-component-route"), "/foo/:userid/...");
        assert_eq!(get("spin-component-route"), "/foo/:userid");
        assert_eq!(get("spin-base-path"), "/");
        assert_eq!(get("spin-client-addr"), "127.0.0.1:5000");
        assert_eq!(get("spin-path-match-userid"), "42");
    }

    #[test]
    fn later_duplicate_wins_with_warning() {
        let (r, warnings) = build(&[("a", "/x"), ("b", "/x")]).unwrap();
        assert_eq!(comp(&r, "/x").as_deref(), Some("b"));
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn routes_spin_accepts() {
        // Spin hands these to routefinder as they are: `...` mid-route is a literal
        // segment and `/*` a trailing wildcard.
        assert!(validate_route("/a/.../b").is_ok());
        assert!(validate_route("/a/*").is_ok());
        assert!(validate_route("/a/:id/...").is_ok());
        assert!(validate_route("api/orders").is_ok());
        let r = router(&[("star", "/a/*"), ("lit", "/b/.../c")]);
        assert_eq!(comp(&r, "/a/x/y").as_deref(), Some("star"));
        assert_eq!(r.route("/a/x/y").unwrap().path_info, "/x/y");
    }
}
