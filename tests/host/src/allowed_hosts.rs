//! `allowed_outbound_hosts` with Spin's rules: `scheme://host[:port]`, where the
//! scheme may be `*`, the host `*`, `*.domain` or a CIDR block, and the port a
//! number, a range `a..b` (end exclusive) or `*`. Without a port, the scheme's
//! well-known port is implied (http 80, https 443, ...); a scheme without one
//! must name its port. Paths are refused. Nothing is allowed by default.

use anyhow::{bail, Context, Result};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    Any,
    Is(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    /// `*.example.com`: stored as `.example.com`.
    Subdomain(String),
    Exact(String),
    Cidr(ipnet::IpNet),
    /// `self`: relative requests to the app itself (not service chaining).
    ToSelf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Port {
    Any,
    Is(u16),
    Range(u16, u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Scheme,
    host: Host,
    port: Port,
}

pub fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "mqtt" => Some(1883),
        _ => None,
    }
}

impl AllowedHost {
    fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let scheme_ok = match &self.scheme {
            Scheme::Any => true,
            Scheme::Is(s) => s == scheme,
        };
        let host_ok = match &self.host {
            Host::Any => true,
            Host::Subdomain(suffix) => host.ends_with(suffix.as_str()),
            Host::Exact(h) => h == host,
            Host::Cidr(net) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .map(|ip| net.contains(&ip))
                .unwrap_or(false),
            Host::ToSelf => false,
        };
        let port_ok = match &self.port {
            Port::Any => true,
            other => match port.or_else(|| well_known_port(scheme)) {
                None => false,
                Some(p) => match other {
                    Port::Is(x) => *x == p,
                    Port::Range(a, b) => (*a..*b).contains(&p),
                    Port::Any => true,
                },
            },
        };
        scheme_ok && host_ok && port_ok
    }
}

/// The resolved allow-list of one component.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    hosts: Vec<AllowedHost>,
}

impl AllowedHosts {
    pub fn parse_one(s: &str) -> Result<AllowedHost> {
        let url = s.trim();
        if url == "insecure:allow-all" {
            bail!(
                "'insecure:allow-all' is not allowed; use '*://*:*' to allow all outbound traffic"
            );
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("{url:?} has no scheme: hosts must look like <scheme>://<host>[:<port>] ('*' wildcards allowed)");
        };
        let scheme = if scheme == "*" {
            Scheme::Any
        } else if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphabetic()) {
            Scheme::Is(scheme.to_ascii_lowercase())
        } else {
            bail!("{url:?}: scheme {scheme:?} must be alphabetic or '*'");
        };
        // A trailing '/' is tolerated; any other path is not.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if rest.starts_with('[') {
            match rest.find(']') {
                Some(i) => (&rest[..=i], rest[i + 1..].strip_prefix(':').unwrap_or("")),
                None => bail!("{url:?}: unterminated IPv6 address"),
            }
        } else {
            rest.rsplit_once(':').unwrap_or((rest, ""))
        };
        if port.contains('/') || (host.contains('/') && host.parse::<ipnet::IpNet>().is_err()) {
            bail!("{url:?} has a path, which allowed_outbound_hosts does not accept");
        }
        let host = match host {
            "" => bail!("{url:?} has no host"),
            "*" => Host::Any,
            "self" | "self.alt" => Host::ToSelf,
            h => {
                if let Ok(net) = h.parse::<ipnet::IpNet>() {
                    Host::Cidr(net)
                } else if let Ok(ip) = h
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                {
                    Host::Cidr(ipnet::IpNet::from(ip))
                } else if let Some(domain) = h.strip_prefix("*.") {
                    if domain.contains('*') {
                        bail!("{url:?}: wildcards are allowed only as a leading '*.'");
                    }
                    Host::Subdomain(format!(".{}", domain.to_ascii_lowercase()))
                } else if h.contains('*') {
                    bail!("{url:?}: wildcards are allowed only as a leading '*.'");
                } else {
                    Host::Exact(h.to_ascii_lowercase())
                }
            }
        };
        let port = match port {
            "" => match &scheme {
                Scheme::Is(s) => match well_known_port(s) {
                    Some(p) => Port::Is(p),
                    None => bail!("{url:?}: no port given and scheme '{s}' has no well-known port"),
                },
                Scheme::Any => bail!("{url:?}: no port given and scheme '*' has no well-known port; use :* or a number"),
            },
            "*" => Port::Any,
            p => {
                if let Some((a, b)) = p.split_once("..") {
                    let a = a.parse().with_context(|| format!("{url:?}: port range {p:?} is not numeric"))?;
                    let b = b.parse().with_context(|| format!("{url:?}: port range {p:?} is not numeric"))?;
                    Port::Range(a, b)
                } else {
                    Port::Is(p.parse().with_context(|| format!("{url:?}: port {p:?} is not a number"))?)
                }
            }
        };
        Ok(AllowedHost { scheme, host, port })
    }

    pub fn parse(entries: &[String]) -> Result<AllowedHosts> {
        let hosts = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Self::parse_one(e).with_context(|| format!("allowed_outbound_hosts[{i}]"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AllowedHosts { hosts })
    }

    /// Whether a request to `scheme://host[:port]` may leave the component.
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.iter().any(|h| h.allows(scheme, &host, port))
    }
}

/// `http://<component>.spin.internal[:port]` names a component of the same app.
pub fn service_chaining_target(host: &str) -> Option<&str> {
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let (first, rest) = host.split_once('.')?;
    (rest == "spin.internal").then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(list: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn default_is_deny_all() {
        assert!(!AllowedHosts::default().allows("https", "example.com", None));
    }

    #[test]
    fn exact_host_default_ports() {
        let a = allow(&["https://api.example.com"]);
        assert!(a.allows("https", "api.example.com", None));
        assert!(a.allows("https", "api.example.com", Some(443)));
        assert!(a.allows("https", "API.example.com", None));
        assert!(!a.allows("https", "api.example.com", Some(8443)));
        assert!(!a.allows("http", "api.example.com", None));
        assert!(!a.allows("https", "evil.com", None));
        assert!(!a.allows("https", "x.api.example.com", None));
    }

    #[test]
    fn wildcards_ports_and_ranges() {
        let a = allow(&[
            "*://*.example.com:*",
            "http://127.0.0.1:8000..8010",
            "http://localhost:3000",
        ]);
        assert!(a.allows("https", "a.example.com", Some(1)));
        assert!(a.allows("http", "b.c.example.com", None));
        assert!(!a.allows("https", "example.com", None));
        assert!(a.allows("http", "127.0.0.1", Some(8005)));
        assert!(!a.allows("http", "127.0.0.1", Some(8010)));
        assert!(a.allows("http", "localhost", Some(3000)));
        assert!(!a.allows("http", "localhost", None));
        let all = allow(&["*://*:*"]);
        assert!(all.allows("http", "anything", Some(1)));
        let cidr = allow(&["http://10.0.0.0/8:80"]);
        assert!(cidr.allows("http", "10.1.2.3", None));
        assert!(!cidr.allows("http", "11.1.2.3", None));
    }

    #[test]
    fn service_chaining_needs_an_entry() {
        let a = allow(&["http://routing.spin.internal"]);
        assert!(a.allows("http", "routing.spin.internal", None));
        assert!(!a.allows("http", "capture.spin.internal", None));
        let any = allow(&["http://*.spin.internal"]);
        assert!(any.allows("http", "capture.spin.internal", None));
        assert_eq!(
            service_chaining_target("routing.spin.internal"),
            Some("routing")
        );
        assert_eq!(
            service_chaining_target("routing.spin.internal:80"),
            Some("routing")
        );
        assert_eq!(service_chaining_target("routing.example.com"), None);
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in [
            "example.com",
            "*",
            "https://example.com/path",
            "ftp://example.com",
            "*://example.com",
            "https://ex*ample.com",
            "https://example.com:abc",
            "insecure:allow-all",
            "ht1tp://example.com",
        ] {
            assert!(
                AllowedHosts::parse_one(bad).is_err(),
                "{bad} should be rejected"
            );
        }
        assert!(AllowedHosts::parse_one("https://example.com/").is_ok());
    }
}
