//! URLs that callers choose: links shown to customers, and the receivers
//! Waybill sends to (webhook subscriptions, facility endpoints, the e-mail API).
//!
//! A receiver must be an `http`/`https` URL whose host the operator allowed in
//! the `outbound_receivers` variable. Loopback, link-local, private, shared
//! (CGNAT), unique-local, unspecified, multicast and broadcast addresses,
//! `localhost` and Spin's `*.spin.internal` names are refused unless an entry
//! names that exact host (an FC on the operator's private network); a wildcard
//! entry never reaches them, and `*.spin.internal` is refused always (it would
//! reach Waybill's own private routes). The check runs when an endpoint is
//! stored (422) and again before each call (a stored row may predate a
//! narrower list). Names are not resolved here (a component cannot): the
//! operator's list of names is the control.

use std::net::{IpAddr, Ipv4Addr};

/// The longest URL accepted anywhere.
pub const MAX_URL: usize = 2048;

fn parse_http(s: &str) -> Result<url::Url, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > MAX_URL {
        return Err(format!(
            "must be an http(s) URL of at most {MAX_URL} characters"
        ));
    }
    let u = url::Url::parse(s).map_err(|_| "must be an absolute http(s) URL".to_string())?;
    if u.scheme() != "https" && u.scheme() != "http" {
        return Err("must use http or https".into());
    }
    if u.host().is_none() {
        return Err("must name a host".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(u)
}

/// A link for customers and operators (a parcel's tracking page): an absolute
/// `http`/`https` URL, normalised. `javascript:`, `data:` and the like are refused.
pub fn link(s: &str) -> Result<String, String> {
    parse_http(s).map(|u| u.to_string())
}

/// Whether an address is one a user-chosen endpoint must not reach by default.
pub fn is_internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => internal_v4(a),
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let s = a.segments();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link local fe80::/10
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 well-known prefix
                || (s[0] == 0x2002) // 6to4, embeds an IPv4 address
                || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0)
            // IPv4-compatible
        }
    }
}

fn internal_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || o[0] >= 240 // reserved
}

/// One entry of the operator's list: an exact host (optionally with a port) or
/// `*.suffix` (any subdomain of a public name, any port).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Exact { host: String, port: Option<u16> },
    Suffix(String),
}

/// The hosts the operator allows Waybill to send to (`outbound_receivers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receivers {
    entries: Vec<Entry>,
}

fn normal_host(h: &str) -> String {
    h.trim()
        .trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

fn is_spin_internal(host: &str) -> bool {
    host == "spin.internal" || host.ends_with(".spin.internal")
}

fn is_localhost(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

impl Receivers {
    /// Parses a comma-separated list: `hooks.example.com`, `*.partner.io`,
    /// `10.0.0.5:8080`, `[fd00::5]:443`. Entries that are not hosts are ignored
    /// (and reported by [`Receivers::parse_strict`]).
    pub fn parse(list: &str) -> Receivers {
        Receivers::parse_strict(list).0
    }

    /// Like [`Receivers::parse`], also returning the entries it could not read.
    pub fn parse_strict(list: &str) -> (Receivers, Vec<String>) {
        let mut entries = Vec::new();
        let mut bad = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match Receivers::entry(raw) {
                Some(e) => entries.push(e),
                None => bad.push(raw.to_string()),
            }
        }
        (Receivers { entries }, bad)
    }

    fn entry(raw: &str) -> Option<Entry> {
        if let Some(suffix) = raw.strip_prefix("*.") {
            let suffix = normal_host(suffix);
            let ok = !suffix.is_empty()
                && suffix.parse::<IpAddr>().is_err()
                && suffix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            return ok.then_some(Entry::Suffix(suffix));
        }
        // Reuse the URL parser for hosts, IPv6 brackets and ports.
        let u = url::Url::parse(&format!("http://{raw}/")).ok()?;
        if u.path() != "/" || u.query().is_some() || !u.username().is_empty() {
            return None;
        }
        let host = normal_host(&u.host_str()?.to_string());
        Some(Entry::Exact {
            host,
            port: u.port(),
        })
    }

    /// Whether nothing is allowed (the default: user-chosen endpoints are refused).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `url` as a receiver, or why it is refused.
    pub fn check(&self, url: &str) -> Result<url::Url, String> {
        let u = parse_http(url)?;
        let host = normal_host(u.host_str().unwrap_or_default());
        let port = u.port_or_known_default();
        if is_spin_internal(&host) {
            return Err("must not name a *.spin.internal host".into());
        }
        let internal =
            is_localhost(&host) || host.parse::<IpAddr>().map(is_internal_ip).unwrap_or(false);
        let exact = self.entries.iter().any(|e| match e {
            Entry::Exact { host: h, port: p } => *h == host && p.is_none_or(|p| Some(p) == port),
            Entry::Suffix(_) => false,
        });
        if exact {
            return Ok(u);
        }
        if internal {
            return Err(format!(
                "must not reach a loopback, private or link-local address ({host}) unless outbound_receivers names it"
            ));
        }
        let by_suffix = self.entries.iter().any(|e| match e {
            Entry::Suffix(s) => host.ends_with(&format!(".{s}")),
            Entry::Exact { .. } => false,
        });
        if by_suffix {
            return Ok(u);
        }
        Err(format!(
            "the host {host} is not in the operator's outbound_receivers list"
        ))
    }
}

/// An address the operator configured (the e-mail API URL): any public http(s)
/// host; an internal one (a local mail relay) only when `receivers` names it
/// exactly; `*.spin.internal` never.
pub fn configured_target(url: &str, receivers: &Receivers) -> Result<url::Url, String> {
    if let Ok(u) = receivers.check(url) {
        return Ok(u);
    }
    let u = parse_http(url)?;
    let host = normal_host(u.host_str().unwrap_or_default());
    if is_spin_internal(&host)
        || is_localhost(&host)
        || host.parse::<IpAddr>().map(is_internal_ip).unwrap_or(false)
    {
        return Err(format!("must not reach an internal address ({host})"));
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_http_or_https_only() {
        assert_eq!(
            link("https://track.example.com/1Z?x=1").unwrap(),
            "https://track.example.com/1Z?x=1"
        );
        assert!(link("http://t.example/1").is_ok());
        for bad in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,<b>",
            "//track.example.com",
            "/relative",
            "https://user:pw@track.example.com/",
            "ftp://files.example.com/x",
            "",
        ] {
            assert!(link(bad).is_err(), "{bad}");
        }
        assert!(link(&format!("https://e.com/{}", "a".repeat(MAX_URL))).is_err());
    }

    #[test]
    fn internal_addresses_are_refused_unless_named_exactly() {
        let none = Receivers::default();
        for bad in [
            "http://127.0.0.1:8080/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://localhost:3000/",
            "http://api.localhost/",
            "http://notify.spin.internal/internal/sweep",
            "http://NOTIFY.SPIN.INTERNAL./internal/sweep",
            "https://hooks.example.com/", // not allowed by anyone
        ] {
            assert!(none.check(bad).is_err(), "{bad}");
        }
        let list = Receivers::parse("hooks.example.com, *.partner.io, 127.0.0.1:39000, [fd00::5]");
        assert!(list.check("https://hooks.example.com/x").is_ok());
        assert!(list.check("https://HOOKS.example.com./x").is_ok());
        assert!(list.check("https://a.b.partner.io/x").is_ok());
        assert!(
            list.check("https://partner.io/x").is_err(),
            "a suffix is not its apex"
        );
        assert!(list.check("https://evilpartner.io/x").is_err());
        assert!(list.check("http://127.0.0.1:39000/hook").is_ok());
        assert!(
            list.check("http://127.0.0.1:39001/hook").is_err(),
            "another port"
        );
        assert!(list.check("http://[fd00::5]:8443/").is_ok());
        assert!(list.check("http://[fd00::6]/").is_err());
        let wild = Receivers::parse("*.internal, *.0.0.1, *.spin.internal");
        assert!(wild.check("http://notify.spin.internal/").is_err());
        assert!(wild.check("http://127.0.0.1/").is_err());
        let exact_internal = Receivers::parse("notify.spin.internal");
        assert!(exact_internal
            .check("http://notify.spin.internal/")
            .is_err());
    }

    #[test]
    fn the_list_reports_what_it_cannot_read() {
        let (r, bad) = Receivers::parse_strict("ok.example.com, http://x/y, *., a b");
        assert!(!r.is_empty());
        assert_eq!(bad.len(), 3, "{bad:?}");
    }

    #[test]
    fn a_configured_target_is_public_or_named() {
        let none = Receivers::default();
        assert!(configured_target("https://api.postmarkapp.com/email", &none).is_ok());
        assert!(configured_target("http://169.254.169.254/", &none).is_err());
        assert!(configured_target("http://capture.spin.internal/", &none).is_err());
        assert!(configured_target("http://127.0.0.1:8025/", &none).is_err());
        let relay = Receivers::parse("127.0.0.1:8025, capture.spin.internal");
        assert!(configured_target("http://127.0.0.1:8025/", &relay).is_ok());
        assert!(configured_target("http://capture.spin.internal/", &relay).is_err());
    }
}
