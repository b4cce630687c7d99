//! HTTP route matching and the `spin-*` request headers, as Spin 3/4 computes them.
//!
//! Spin uses the `routefinder` crate: exact routes beat wildcards, and among
//! wildcards the longest matching prefix wins; `:name` matches one segment and
//! `/...` matches any trailing path. The same crate is used here so the
//! precedence is Spin's own, not an imitation.

use anyhow::{anyhow, bail, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Checks a route pattern the way the router will read it.
pub fn validate_route(route: &str) -> Result<()> {
    let based = absolutize(route);
    let body = based.strip_suffix("/...").unwrap_or(&based);
    if body.contains("...") {
        bail!("'{route}': the wildcard '/...' may only end a route");
    }
    if body.split('/').any(|s| s == "*") {
        bail!("'{route}': use '/...' for a trailing wildcard");
    }
    parse_route(&based)
        .map(|_| ())
        .map_err(|e| anyhow!("'{route}': {e}"))
}

fn absolutize(route: &str) -> String {
    let r = if route.starts_with('/') {
        route.to_string()
    } else {
        format!("/{route}")
    };
    // Spin strips one trailing slash ("/foo/" routes like "/foo"), but keeps "/".
    match r.strip_suffix('/') {
        Some(s) if !s.is_empty() && !r.ends_with("/.../") => s.to_string(),
        _ => r,
    }
}

fn parse_route(based: &str) -> Result<(routefinder::RouteSpec, bool), String> {
    if let Some(prefix) = based.strip_suffix("/...") {
        let spec: routefinder::RouteSpec = format!("{prefix}/*").as_str().try_into()?;
        Ok((spec, true))
    } else {
        let spec: routefinder::RouteSpec = based.try_into()?;
        Ok((spec, false))
    }
}

#[derive(Debug, Clone)]
struct Handler {
    component: String,
    raw_route: String,
}

/// The public routes of an app (private routes are reachable only by chaining).
#[derive(Debug)]
pub struct Router {
    inner: routefinder::Router<Handler>,
}

/// What a path matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub component: String,
    /// The route as written in the manifest (`/api/:id/...`).
    pub raw_route: String,
    /// `:name` captures.
    pub params: BTreeMap<String, String>,
    /// The path below the route (what `spin-path-info` carries).
    pub path_info: String,
}

impl Router {
    /// `routes`: (component, route) in manifest order; a later duplicate replaces an
    /// earlier one, as in Spin (which warns about it).
    pub fn build<'a>(
        routes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(Router, Vec<String>)> {
        let mut unique: Vec<(String, Handler)> = Vec::new();
        let mut warnings = Vec::new();
        for (component, route) in routes {
            let based = absolutize(route);
            if let Some(slot) = unique.iter_mut().find(|(b, _)| *b == based) {
                warnings.push(format!(
                    "route '{route}' is declared twice: component '{}' replaces '{}'",
                    component, slot.1.component
                ));
                slot.1 = Handler {
                    component: component.to_string(),
                    raw_route: route.to_string(),
                };
            } else {
                unique.push((
                    based,
                    Handler {
                        component: component.to_string(),
                        raw_route: route.to_string(),
                    },
                ));
            }
        }
        let mut inner = routefinder::Router::new();
        for (based, handler) in unique {
            let (spec, _) = parse_route(&based).map_err(|e| anyhow!("route '{based}': {e}"))?;
            inner
                .add(spec, handler)
                .map_err(|e| anyhow!("route '{based}': {e}"))?;
        }
        Ok((Router { inner }, warnings))
    }

    /// The best route for `path` (no query string), or None (404).
    pub fn route(&self, path: &str) -> Option<RouteMatch> {
        let m = self.inner.best_match(path)?;
        let h = m.handler();
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
            component: h.component.clone(),
            raw_route: h.raw_route.clone(),
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
            component: component.to_string(),
            raw_route: "/...".to_string(),
            params: BTreeMap::new(),
            path_info: path.to_string(),
        }
    }

    /// The `spin-*` headers Spin adds to the request (they replace any the client sent).
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
            (
                "spin-matched-route".to_string(),
                absolutize(&self.raw_route),
            ),
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
                format!("spin-path-match-{}", k.to_ascii_lowercase()),
                v.clone(),
            ));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router {
        Router::build(routes.iter().copied()).unwrap().0
    }

    fn comp(r: &Router, path: &str) -> Option<String> {
        r.route(path).map(|m| m.component)
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
        assert_eq!(get("spin-raw-component-route"), "/foo/:userid/...");
        assert_eq!(get("spin-component-route"), "/foo/:userid");
        assert_eq!(get("spin-base-path"), "/");
        assert_eq!(get("spin-client-addr"), "127.0.0.1:5000");
        assert_eq!(get("spin-path-match-userid"), "42");
    }

    #[test]
    fn later_duplicate_wins_with_warning() {
        let (r, warnings) = Router::build([("a", "/x"), ("b", "/x")]).unwrap();
        assert_eq!(comp(&r, "/x").as_deref(), Some("b"));
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn invalid_routes() {
        assert!(validate_route("/a/.../b").is_err());
        assert!(validate_route("/a/*").is_err());
        assert!(validate_route("/a/:id/...").is_ok());
        assert!(validate_route("api/orders").is_ok());
    }
}
