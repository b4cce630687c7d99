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
    /// A domain or an IP address, compared as `url::Host` values (as Spin does).
    Exact(url::Host),
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
        let Ok(host) = url::Host::parse(host) else {
            return false;
        };
        let host_ok = match (&self.host, &host) {
            (Host::Any, _) => true,
            (Host::Subdomain(suffix), url::Host::Domain(d)) => d.ends_with(suffix.as_str()),
            (Host::Exact(h), host) => h == host,
            (Host::Cidr(net), url::Host::Ipv4(ip)) => net.contains(&IpAddr::V4(*ip)),
            (Host::Cidr(net), url::Host::Ipv6(ip)) => net.contains(&IpAddr::V6(*ip)),
            _ => false,
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

    /// A socket use (`scheme` is `tcp` or `udp`): Spin checks `addr` as the
    /// authority of a `scheme://` URL, so `tcp://...` and `*://...` entries apply.
    fn allows_socket(&self, scheme: &str, addr: &std::net::SocketAddr) -> bool {
        let host = match addr.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        self.allows(scheme, &host, Some(addr.port()))
    }
}

/// The resolved allow-list of one component.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    hosts: Vec<AllowedHost>,
}

impl AllowedHosts {
    /// One entry, checked in the order and by the rules Spin's
    /// `outbound-networking-config` applies: a scheme separator, then the port
    /// (split at the last ':'; empty means the scheme's well-known port), then the
    /// scheme (`*` or alphabetic, possibly empty), then the host (`*`, `self`, a
    /// CIDR block, `*.domain`, or a host `url::Host` accepts).
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
        let (host, rest) = rest.rsplit_once(':').unwrap_or((rest, ""));
        let port = match rest.split_once('/') {
            Some((_, path)) if !path.is_empty() => {
                bail!("{url:?} has a path, which allowed_outbound_hosts does not accept")
            }
            Some((port, _)) => port,
            None => rest,
        };
        let port = match port {
            "" => match well_known_port(scheme) {
                Some(p) => Port::Is(p),
                None => {
                    bail!("{url:?}: no port given and the scheme {scheme:?} has no well-known port")
                }
            },
            "*" => Port::Any,
            p if p.starts_with('{') => bail!("{url:?}: port lists are not supported"),
            p => {
                if let Some((a, b)) = p.split_once("..") {
                    let a = a
                        .parse()
                        .with_context(|| format!("{url:?}: port range {p:?} is not numeric"))?;
                    let b = b
                        .parse()
                        .with_context(|| format!("{url:?}: port range {p:?} is not numeric"))?;
                    Port::Range(a, b)
                } else {
                    Port::Is(
                        p.parse()
                            .with_context(|| format!("{url:?}: port {p:?} is not a number"))?,
                    )
                }
            }
        };
        let scheme = if scheme == "*" {
            Scheme::Any
        } else if scheme.starts_with('{') {
            bail!("{url:?}: scheme lists are not supported");
        } else if scheme.chars().all(char::is_alphabetic) {
            Scheme::Is(scheme.to_string())
        } else {
            bail!("{url:?}: scheme {scheme:?} may only hold letters, or be '*'");
        };
        let host = host.trim();
        let host = match host {
            "*" => Host::Any,
            "self" | "self.alt" => Host::ToSelf,
            h if h.starts_with('{') => bail!("{url:?}: host lists are not supported"),
            h => {
                if let Ok(net) = h.parse::<ipnet::IpNet>() {
                    Host::Cidr(net.trunc())
                } else {
                    let h = h.trim_end_matches('/');
                    if h.contains('/') {
                        bail!("{url:?} has a path, which allowed_outbound_hosts does not accept");
                    }
                    if let Some(domain) = h.strip_prefix("*.") {
                        if domain.contains('*') {
                            bail!("{url:?}: wildcards are allowed only as a leading '*.'");
                        }
                        Host::Subdomain(format!(".{domain}"))
                    } else if h.contains('*') {
                        bail!("{url:?}: wildcards are allowed only as a leading '*.'");
                    } else {
                        Host::Exact(
                            url::Host::parse(h)
                                .map_err(|e| anyhow::anyhow!("{url:?}: invalid host {h:?}: {e}"))?,
                        )
                    }
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
        self.hosts.iter().any(|h| h.allows(scheme, host, port))
    }

    /// Whether a wasi:sockets connection (`tcp`) or datagram (`udp`) to `addr`
    /// may leave the component.
    pub fn allows_socket(&self, scheme: &str, addr: &std::net::SocketAddr) -> bool {
        self.hosts.iter().any(|h| h.allows_socket(scheme, addr))
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
