//! The bottom floor of rendering: each valid store as an [`Upstream`] (its cluster name,
//! host, TLS, SNI, label and limits), and the gateway limits both translators write the same
//! way (body buffers, durations). Both translators take these, so they never derive a store's
//! host, TLS or limits differently. Imports nothing of `render` above it.

use crate::settings::UpstreamLimits;
use crate::validate::Validation;

/// Envoy cluster name for a store: `store_<name>`, keeping `a-z 0-9 -` and writing every
/// other byte as `_` and two hex digits (`prod.eu` → `store_prod_2eeu`). Injective: `_` only
/// ever starts an escape, so two stores never share a cluster (and so never each other's
/// endpoint).
pub fn store_cluster(store: &str) -> String {
    let mut out = String::from("store_");
    for b in store.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => out.push(char::from(b)),
            _ => out.push_str(&format!("_{b:02x}")),
        }
    }
    out
}

/// How a store cluster is labelled in the gateway's errors: `store "<name>"`.
pub fn store_label(store: &str) -> String {
    format!("store {store:?}")
}

/// Default buffer limit: the 16 MiB inspection limit plus headroom.
pub const DEFAULT_BUFFER_LIMIT_BYTES: u64 = 17 * 1024 * 1024;

/// A duration in ms as Envoy (and Istio) reads it (`5s`, `1.500s`).
pub fn ms(v: u64) -> String {
    if v.is_multiple_of(1000) {
        format!("{}s", v / 1000)
    } else {
        format!("{}.{:03}s", v / 1000, v % 1000)
    }
}

/// The most a control-API request body may be (the control API's own largest cap, a mint:
/// `api::MINT_BODY_BYTES`, which a test holds it equal to; written here, not read from
/// there, so that rendering does not import the control API).
pub const CONTROL_BODY_BYTES: u64 = 256 * 1024;

/// One store as an upstream: the step both targets translate (Envoy: a cluster; Istio: a
/// ServiceEntry, a DestinationRule and VirtualService routes), so the two never derive a
/// store's host, TLS or limits differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The store's name.
    pub store: String,
    /// The cluster the filter routes the store's requests to ([`store_cluster`]).
    pub cluster: String,
    /// The host to connect to and to verify: a DNS name or an IP address, without brackets.
    pub host: String,
    /// The host as the endpoint URL writes it (an IPv6 address in brackets): the
    /// `:authority` Envoy rewrites to.
    pub authority_host: String,
    /// Port.
    pub port: u16,
    /// TLS to the upstream (always, except loopback endpoints for local use). The certificate
    /// must name [`Upstream::host`] as a subject alternative name; SNI is sent for a DNS name.
    pub tls: bool,
    /// Who the upstream is in the gateway's errors (`store "prod-eu"`).
    pub label: String,
    /// Timeouts and connection limits.
    pub limits: UpstreamLimits,
}

impl Upstream {
    /// True when [`Upstream::host`] is an IP address (an IP SAN, no SNI).
    pub fn host_is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }

    /// The SNI to send: the host, when TLS and a DNS name (RFC 6066 allows no IP literal).
    pub fn sni(&self) -> Option<&str> {
        (self.tls && !self.host_is_ip()).then_some(self.host.as_str())
    }
}

/// The upstream of every valid store, in the validation's order, each with the operator's
/// `limits` (one set for every store: `LAYERGATE_UPSTREAM_*`).
pub fn upstreams(v: &Validation, limits: &UpstreamLimits) -> Vec<Upstream> {
    v.stores
        .iter()
        .filter_map(|s| s.valid.as_ref())
        .map(|s| Upstream {
            store: s.name.clone(),
            cluster: store_cluster(&s.name),
            host: s
                .endpoint
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            authority_host: s.endpoint.host.clone(),
            port: s.endpoint.port,
            tls: s.endpoint.tls,
            label: store_label(&s.name),
            limits: *limits,
        })
        .collect()
}
