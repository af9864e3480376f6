//! Where a store credential may go (SPEC §7): a VectorStore's `endpoint.url`, parsed strictly
//! (scheme, host, port — the host compared whole, never by prefix), and the allowlist it must
//! pass before the operator probes the store or renders a cluster for it.
//!
//! Admitted by default: `https://*.turbopuffer.com`, and for local use loopback IP literals
//! (127.0.0.0/8, `::1`) and `localhost`, over http or https. `--allow-endpoint PATTERN`
//! (`run`, `render`, `check`) adds patterns `SCHEME://HOST[:PORT]`, where HOST is a name, an IP
//! literal or `*.domain` (any name ending in `.domain`); no port means any port.

use std::net::IpAddr;

/// A store endpoint, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEndpoint {
    /// True for https.
    pub tls: bool,
    /// Host name (lower case) or IP literal (IPv6 in brackets, as in the URL).
    pub host: String,
    /// Port (443/80 when omitted).
    pub port: u16,
}

impl StoreEndpoint {
    /// True for a loopback IP literal (127.0.0.0/8, `::1`) or exactly `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || ip_literal(&self.host).is_some_and(|ip| ip.is_loopback())
    }
}

/// The IP of a host that is an IP literal (`127.0.0.1`, `[::1]`), else `None`.
fn ip_literal(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// True for a DNS name: dot-separated labels of 1-63 letters, digits and `-` (not at a label's
/// ends), 253 characters at most.
fn dns_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Splits `scheme://host[:port][/]` into (tls, host, explicit port). Shared by URLs and
/// allowlist patterns; `*.` in front of the host only when `wildcard`.
fn split(url: &str, what: &str, wildcard: bool) -> Result<(bool, String, Option<u16>), String> {
    let shown: String = url.chars().take(200).collect();
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{what} {shown:?} must start with https://"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty()
        || !authority.bytes().all(|b| b.is_ascii_graphic())
        || authority.contains(['/', '?', '#', '@', '\\', '%'])
    {
        return Err(format!(
            "{what} {shown:?} must be a base URL (scheme://host[:port]) without path, query or credentials"
        ));
    }
    let (host, port) = if authority.starts_with('[') {
        match authority.split_once(']') {
            Some((h, "")) => (format!("{h}]"), None),
            Some((h, p)) => match p.strip_prefix(':') {
                Some(p) => (format!("{h}]"), Some(p)),
                None => return Err(format!("{what} {shown:?} has an invalid host")),
            },
            None => return Err(format!("{what} {shown:?} has an invalid host")),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("{what} {shown:?} has an invalid port")),
        },
    };
    let host = host.to_ascii_lowercase();
    let bare = if wildcard {
        host.strip_prefix("*.").unwrap_or(&host)
    } else {
        &host
    };
    if ip_literal(&host).is_none() && !dns_name(bare) {
        return Err(format!(
            "{what} {shown:?}: the host must be a DNS name or an IP address"
        ));
    }
    Ok((tls, host, port))
}

/// Parses `https://host[:port][/]` (or `http://` for a loopback host: local use only). The
/// allowlist is a separate check, [`Allowlist::admits`].
pub fn parse_endpoint(url: &str) -> Result<StoreEndpoint, String> {
    let (tls, host, port) = split(url, "endpoint.url", false)?;
    let endpoint = StoreEndpoint {
        tls,
        host,
        port: port.unwrap_or(if tls { 443 } else { 80 }),
    };
    Ok(endpoint)
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    tls: bool,
    /// An exact host, or `*.domain`.
    host: String,
    port: Option<u16>,
}

impl Pattern {
    fn admits(&self, e: &StoreEndpoint) -> bool {
        let host = match self.host.strip_prefix('*') {
            Some(suffix) => e.host.len() > suffix.len() && e.host.ends_with(suffix),
            None => e.host == self.host,
        };
        self.tls == e.tls && host && self.port.is_none_or(|p| p == e.port)
    }
}

/// The endpoints store credentials may be sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    patterns: Vec<Pattern>,
    shown: Vec<String>,
}

/// The pattern every allowlist starts with.
pub const DEFAULT_PATTERN: &str = "https://*.turbopuffer.com";

impl Default for Allowlist {
    fn default() -> Allowlist {
        Allowlist {
            patterns: vec![Pattern {
                tls: true,
                host: "*.turbopuffer.com".into(),
                port: None,
            }],
            shown: vec![DEFAULT_PATTERN.into()],
        }
    }
}

impl Allowlist {
    /// The default list widened by `--allow-endpoint` patterns.
    pub fn with(patterns: &[String]) -> Result<Allowlist, String> {
        let mut list = Allowlist::default();
        for p in patterns {
            list.allow(p)?;
        }
        Ok(list)
    }

    /// Adds a pattern `SCHEME://HOST[:PORT]` (HOST may be `*.domain`).
    pub fn allow(&mut self, pattern: &str) -> Result<(), String> {
        let (tls, host, port) = split(pattern, "--allow-endpoint", true)?;
        if host.contains('*') && !host.starts_with("*.") {
            return Err(format!(
                "--allow-endpoint {pattern:?}: a wildcard may only start the host (*.example.com)"
            ));
        }
        self.patterns.push(Pattern { tls, host, port });
        self.shown.push(pattern.to_owned());
        Ok(())
    }

    /// Checks an endpoint: loopback is always admitted; anything else must match a pattern.
    pub fn admits(&self, e: &StoreEndpoint) -> Result<(), String> {
        if e.is_loopback() || self.patterns.iter().any(|p| p.admits(e)) {
            return Ok(());
        }
        let scheme = if e.tls { "https" } else { "http" };
        Err(format!(
            "endpoint {scheme}://{}:{} is not in the operator's endpoint allowlist ({}, and loopback \
             addresses 127.0.0.0/8, ::1, localhost); the store credential is never sent there. \
             Start the operator with --allow-endpoint {scheme}://{} to allow it",
            e.host,
            e.port,
            self.shown.join(", "),
            e.host
        ))
    }
}

/// Parses an endpoint and checks it against the allowlist: what a VectorStore must pass to be
/// probed or rendered (`InvalidEndpoint` otherwise).
pub fn admitted(url: &str, allow: &Allowlist) -> Result<StoreEndpoint, String> {
    let e = parse_endpoint(url)?;
    allow.admits(&e)?;
    Ok(e)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn check(url: &str) -> Result<StoreEndpoint, String> {
        admitted(url, &Allowlist::default())
    }

    #[test]
    fn turbopuffer_and_loopback_are_admitted() {
        let e =
            check("https://aws-us-east-1.turbopuffer.com").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            (e.tls, e.host.as_str(), e.port),
            (true, "aws-us-east-1.turbopuffer.com", 443)
        );
        for ok in [
            "https://GCP-US-CENTRAL1.turbopuffer.com/",
            "http://127.0.0.1:18081",
            "http://127.9.8.7",
            "http://[::1]:8080",
            "http://localhost:1234",
            "https://localhost",
        ] {
            assert!(check(ok).is_ok(), "{ok}: {:?}", check(ok));
        }
    }

    #[test]
    fn hosts_that_only_start_or_end_like_an_allowed_one_are_refused() {
        for bad in [
            "http://127.0.0.1.attacker.example:80",
            "https://127.0.0.1.attacker.example",
            "http://localhost.attacker.example",
            "http://localhostx",
            "https://turbopuffer.com.attacker.example",
            "https://attackerturbopuffer.com",
            "https://turbopuffer.com",
            "http://aws-us-east-1.turbopuffer.com",
            "https://api.example.com",
            "http://10.0.0.1",
            "http://[::2]",
            "http://127.1",
            "http://0x7f.0.0.1",
            "http://user@127.0.0.1",
            "http://127.0.0.1@attacker.example",
            "http://127.0.0.1/path",
            "http://127.0.0.1:0",
            "http://127.0.0.1:99999",
            "http://127.0.0.1:+80",
            "http://127.0.0.1%2eattacker.example",
            "http://127.0.0.1\\@attacker.example",
            "ftp://127.0.0.1",
            "https://",
            "http://[::1",
            "https://tu rbopuffer.com",
            "https://日本.turbopuffer.com",
        ] {
            assert!(check(bad).is_err(), "{bad} was admitted");
        }
    }

    #[test]
    fn allow_endpoint_widens_exactly() {
        let list = Allowlist::with(&[
            "https://api.example.com".into(),
            "https://*.corp.example:8443".into(),
            "http://10.0.0.5:8080".into(),
        ])
        .unwrap_or_else(|e| unreachable!("{e}"));
        for ok in [
            "https://api.example.com",
            "https://api.example.com:444",
            "https://a.b.corp.example:8443",
            "http://10.0.0.5:8080",
            "https://x.turbopuffer.com",
        ] {
            assert!(admitted(ok, &list).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.example.com",
            "https://api.example.com.evil",
            "https://corp.example:8443",
            "https://a.corp.example",
            "http://10.0.0.5:8081",
        ] {
            assert!(admitted(bad, &list).is_err(), "{bad}");
        }
        for bad in [
            "api.example.com",
            "https://a*.example.com",
            "https://*",
            "https://x/y",
        ] {
            assert!(Allowlist::with(&[bad.into()]).is_err(), "{bad}");
        }
        let msg = check("https://api.example.com").err().unwrap_or_default();
        assert!(
            msg.contains("--allow-endpoint https://api.example.com"),
            "{msg}"
        );
    }
}
