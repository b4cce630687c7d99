//! API tokens and what they may do. The `api_tokens` Spin variable lists
//! `<grant>:<token>` entries, comma-separated; a token listed more than once
//! has every grant it is listed with.
//!
//! | grant | scopes |
//! |---|---|
//! | `read` | read |
//! | `orders:write` | read, orders:write (intake, order changes, cancellations, returns) |
//! | `payments:write` | read, payments:write (refunds, payment retries, the payment sweep) |
//! | `inventory:write` | read, inventory:write (products, stock levels, receipts, adjustments, bins, licence-key imports, pulls) |
//! | `fulfillment:write` | read, fulfillment:write (pick, pack and handover jobs) |
//! | `admin` | read, admin (facilities, settings, rates, routing configuration, subscriptions, templates, dead-letter replay, report regeneration) |
//! | `secrets` | read, secrets (licence keys in exports, the mailbox, deliveries and webhooks) |
//! | `maintenance` | read, maintenance (`POST /api/maintenance/{schedule}`: the cron components' work, for Kubernetes CronJobs) |
//! | `write` | every scope but secrets (the original form) |
//!
//! [`route_scope`] is the one table of which route needs which scope.

use crate::http::Request;
use crate::kernel::error::Error;
use crate::kernel::signature::constant_time_eq;

/// One thing a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    OrdersWrite,
    PaymentsWrite,
    InventoryWrite,
    FulfillmentWrite,
    Admin,
    Secrets,
    Maintenance,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::Read,
        Scope::OrdersWrite,
        Scope::PaymentsWrite,
        Scope::InventoryWrite,
        Scope::FulfillmentWrite,
        Scope::Admin,
        Scope::Secrets,
        Scope::Maintenance,
    ];

    /// The scope's name in `api_tokens` and in the documentation.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::OrdersWrite => "orders:write",
            Scope::PaymentsWrite => "payments:write",
            Scope::InventoryWrite => "inventory:write",
            Scope::FulfillmentWrite => "fulfillment:write",
            Scope::Admin => "admin",
            Scope::Secrets => "secrets",
            Scope::Maintenance => "maintenance",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The scopes a grant name gives (every grant includes read).
fn grant(name: &str) -> Option<u8> {
    let read = Scope::Read.bit();
    if name == "write" {
        return Some(
            Scope::ALL
                .iter()
                .filter(|s| **s != Scope::Secrets)
                .fold(0, |m, s| m | s.bit()),
        );
    }
    Scope::ALL
        .iter()
        .find(|s| s.name() == name)
        .map(|s| read | s.bit())
}

/// Bearer tokens from the `api_tokens` Spin variable.
#[derive(Clone, Default)]
pub struct Tokens(Vec<(u8, String)>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} tokens, [redacted])", self.0.len())
    }
}

impl Tokens {
    /// Reads `<grant>:<token>` entries; unknown grants and tokens under 8
    /// characters are ignored.
    pub fn parse(spec: &str) -> Tokens {
        Tokens(
            spec.split(',')
                .filter_map(|e| {
                    let e = e.trim();
                    // A two-part grant (`orders:write`) first, then a one-part one.
                    let (scopes, token) = match e.splitn(3, ':').collect::<Vec<_>>()[..] {
                        [a, b, t] if grant(&format!("{a}:{b}")).is_some() => {
                            (grant(&format!("{a}:{b}"))?, t)
                        }
                        _ => {
                            let (g, t) = e.split_once(':')?;
                            (grant(g.trim())?, t)
                        }
                    };
                    let token = token.trim();
                    (token.len() >= 8).then(|| (scopes, token.to_string()))
                })
                .collect(),
        )
    }

    /// The scopes of the request's bearer token: 401 without a valid token.
    fn scopes(&self, req: &Request) -> Result<u8, Error> {
        let Some(auth) = req.header("authorization") else {
            return Err(Error::unauthorized(
                "an `Authorization: Bearer <token>` header is required",
            ));
        };
        let token = match auth.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => {
                return Err(Error::unauthorized(
                    "the Authorization header must use the Bearer scheme",
                ))
            }
        };
        let mut found: Option<u8> = None;
        for (scopes, t) in &self.0 {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(found.unwrap_or(0) | scopes);
            }
        }
        found.ok_or_else(|| Error::unauthorized("the bearer token is not valid"))
    }

    /// Checks `Authorization: Bearer <token>` for `need`; 401 without a valid
    /// token, 403 for a token without the scope.
    pub fn authorize(&self, req: &Request, need: Scope) -> Result<(), Error> {
        if self.scopes(req)? & need.bit() != 0 {
            Ok(())
        } else {
            Err(Error::forbidden(format!(
                "the token lacks the {} scope",
                need.name()
            )))
        }
    }

    /// Checks the scope [`route_scope`] names for the request's method and path.
    pub fn authorize_route(&self, req: &Request) -> Result<(), Error> {
        let segs = crate::http::segments(req.path.trim_end_matches('/'));
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        self.authorize(req, route_scope(&req.method, &segs))
    }

    /// Whether the request's token has `scope` (false without a valid token).
    pub fn grants(&self, req: &Request, scope: Scope) -> bool {
        self.scopes(req).is_ok_and(|s| s & scope.bit() != 0)
    }
}

/// The scope each API route needs: reads take `read` (licence keys in them
/// need `secrets` as well), writes the scope of what they change.
pub fn route_scope(method: &str, segs: &[&str]) -> Scope {
    use Scope::*;
    if method == "GET" || method == "HEAD" {
        return Read;
    }
    match segs {
        ["api", "orders", ..] | ["api", "returns", ..] => OrdersWrite,
        ["api", "payments", "settings"] => Admin,
        ["api", "payments", ..] => PaymentsWrite,
        ["api", "facilities", _, "inventory", "sync"] => InventoryWrite,
        ["api", "facilities", ..] => Admin,
        ["api", "products", ..] | ["api", "stock", ..] | ["api", "license-keys", ..] => {
            InventoryWrite
        }
        ["api", "fulfillment", "bins", ..] => InventoryWrite,
        ["api", "maintenance", ..] => Maintenance,
        ["api", "fulfillment", "jobs" | "pick-jobs" | "pack-jobs" | "handover-jobs", ..] => {
            FulfillmentWrite
        }
        // Everything else that changes state is the operator's: fulfillment
        // rates and settings, routing configuration, centroids, simulations and
        // sweeps, notification subscriptions, templates and replays, reports.
        _ => Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, tok: &str) -> Request {
        Request::new(method, path).with_header("Authorization", &format!("Bearer {tok}"))
    }

    #[test]
    fn tokens_and_scopes() {
        let t = Tokens::parse("write:w-token-123, read:r-token-456, bogus:x-token-789, read:short");
        let get = |tok: &str| req("GET", "/", tok);
        assert!(t.authorize(&get("w-token-123"), Scope::Admin).is_ok());
        assert!(t.authorize(&get("w-token-123"), Scope::Read).is_ok());
        assert_eq!(
            t.authorize(&get("w-token-123"), Scope::Secrets)
                .unwrap_err()
                .status(),
            403,
            "write never includes secrets"
        );
        assert!(t.authorize(&get("r-token-456"), Scope::Read).is_ok());
        assert_eq!(
            t.authorize(&get("r-token-456"), Scope::OrdersWrite)
                .unwrap_err()
                .status(),
            403
        );
        for bad in ["nope-nope-nope", "short", "x-token-789"] {
            assert_eq!(
                t.authorize(&get(bad), Scope::Read).unwrap_err().status(),
                401,
                "{bad}: unknown, too short or of an unknown grant"
            );
        }
        assert_eq!(
            t.authorize(&Request::new("GET", "/"), Scope::Read)
                .unwrap_err()
                .status(),
            401
        );
        assert_eq!(
            Tokens::parse("")
                .authorize(&get("w-token-123"), Scope::Read)
                .unwrap_err()
                .status(),
            401
        );
    }

    #[test]
    fn narrow_grants_give_only_their_scope_and_read() {
        let t = Tokens::parse(
            "orders:write:o-token-1, payments:write:p-token-1, admin:a-token-1, secrets:s-token-1, \
             inventory:write:i-token-1, fulfillment:write:f-token-1, read:s-token-1",
        );
        let cases = [
            ("o-token-1", Scope::OrdersWrite),
            ("p-token-1", Scope::PaymentsWrite),
            ("a-token-1", Scope::Admin),
            ("s-token-1", Scope::Secrets),
            ("i-token-1", Scope::InventoryWrite),
            ("f-token-1", Scope::FulfillmentWrite),
        ];
        for (tok, own) in cases {
            for s in Scope::ALL {
                let ok = t.authorize(&req("GET", "/", tok), s).is_ok();
                assert_eq!(ok, s == own || s == Scope::Read, "{tok} and {}", s.name());
            }
        }
        assert!(t.grants(&req("GET", "/", "s-token-1"), Scope::Secrets));
        assert!(!t.grants(&req("GET", "/", "a-token-1"), Scope::Secrets));
        assert!(!t.grants(&Request::new("GET", "/"), Scope::Read));
    }

    #[test]
    fn every_route_has_the_scope_of_what_it_changes() {
        use Scope::*;
        let table = [
            ("GET", "/api/orders/WB-1", Read),
            ("POST", "/api/orders", OrdersWrite),
            ("POST", "/api/orders/batch", OrdersWrite),
            ("PATCH", "/api/orders/WB-1", OrdersWrite),
            ("POST", "/api/orders/WB-1/cancel", OrdersWrite),
            ("POST", "/api/returns/r-1/receive", OrdersWrite),
            ("POST", "/api/payments/orders/WB-1/refunds", PaymentsWrite),
            ("POST", "/api/payments/orders/WB-1/retry", PaymentsWrite),
            ("PUT", "/api/payments/settings", Admin),
            ("POST", "/api/facilities", Admin),
            ("PUT", "/api/facilities/berlin", Admin),
            (
                "POST",
                "/api/facilities/berlin/inventory/sync",
                InventoryWrite,
            ),
            ("PUT", "/api/products/SKU-1", InventoryWrite),
            ("POST", "/api/stock/receipts", InventoryWrite),
            ("PUT", "/api/stock/SKU-1/berlin", InventoryWrite),
            ("POST", "/api/license-keys/SKU-1", InventoryWrite),
            ("PUT", "/api/fulfillment/bins/berlin/SKU-1", InventoryWrite),
            ("POST", "/api/fulfillment/jobs/j-1/start", FulfillmentWrite),
            (
                "POST",
                "/api/fulfillment/pick-jobs/j-1/complete",
                FulfillmentWrite,
            ),
            ("PUT", "/api/fulfillment/rates", Admin),
            ("PUT", "/api/fulfillment/settings", Admin),
            ("PUT", "/api/routing/config/web", Admin),
            ("POST", "/api/routing/sweep", Admin),
            ("POST", "/api/notifications/subscriptions", Admin),
            ("DELETE", "/api/notifications/subscriptions/s-1", Admin),
            ("PUT", "/api/notifications/templates/x", Admin),
            ("POST", "/api/notifications/dead-letters/1/replay", Admin),
            ("POST", "/api/reports/daily/2026-12-01", Admin),
            ("POST", "/api/maintenance/notify", Maintenance),
        ];
        for (m, path, want) in table {
            let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            assert_eq!(route_scope(m, &segs), want, "{m} {path}");
        }
    }
}
