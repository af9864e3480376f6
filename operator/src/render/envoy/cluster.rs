//! The Envoy target's upstream clusters: one per store (TLS verifying the store's host name
//! unless the endpoint is plain loopback HTTP), plus the operator's own. Resources only: how
//! they reach Envoy is `bootstrap`'s.

use crate::render::upstream::{ms, Upstream};
use crate::settings::UpstreamLimits;
use serde_json::{json, Value};

/// One upstream cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Cluster name (what the filter writes to `x-layergate-cluster`).
    pub name: String,
    /// IP address or DNS name to connect to.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Host name for `:authority` (`auto_host_rewrite`) and TLS SNI.
    pub hostname: String,
    /// TLS to the upstream (always, except loopback endpoints for local use).
    pub tls: bool,
    /// PEM file of the CAs the upstream's certificate must chain to; `None`: the system
    /// bundle ([`SYSTEM_CA_BUNDLE`]). Tests point it at a CA they made; a store behind a
    /// private CA could too.
    pub trusted_ca: Option<String>,
    /// Who the upstream is, as the gateway's JSON error names it when the upstream cannot be
    /// reached over a verified connection (`store "prod-eu"`); rendered as the cluster's
    /// `layergate.upstream` metadata.
    pub label: String,
}

/// The CA bundle TLS clusters trust unless told otherwise (Debian/Ubuntu path, also in the
/// official Envoy image).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The upstream TLS context: SNI (for a DNS name), the trusted CAs, and the subject
/// alternative name the certificate must carry, exactly the endpoint's host name (Envoy
/// matches an `exact` DNS matcher against a wildcard certificate entry with DNS wildcard rules,
/// so `*.turbopuffer.com` still covers `gcp-us-central1.turbopuffer.com`).
fn upstream_tls(c: &Cluster) -> Value {
    let host = c.hostname.trim_start_matches('[').trim_end_matches(']');
    let san_type = if host.parse::<std::net::IpAddr>().is_ok() {
        "IP_ADDRESS"
    } else {
        "DNS"
    };
    let mut tls = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {"validation_context": {
            "trusted_ca": {"filename": c.trusted_ca.as_deref().unwrap_or(SYSTEM_CA_BUNDLE)},
            "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": host}}],
        }},
    });
    // SNI carries host names only (RFC 6066), never an IP literal.
    if san_type == "DNS" {
        tls["sni"] = json!(host);
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": tls})
}

/// One cluster resource: connect timeout, circuit breakers, the endpoint's host name (for
/// `auto_host_rewrite`), the upstream's label (for errors), and TLS verifying the endpoint's
/// host name unless the endpoint is plain loopback HTTP.
pub fn cluster(c: &Cluster) -> Value {
    cluster_with(c, &UpstreamLimits::default())
}

/// One cluster resource with the given connect timeout and circuit breakers.
pub fn cluster_with(c: &Cluster, limits: &UpstreamLimits) -> Value {
    let is_ip = c.address.parse::<std::net::IpAddr>().is_ok();
    let mut v = json!({
        "name": c.name,
        "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": ms(limits.connect_timeout_ms),
        "circuit_breakers": {"thresholds": [{"max_connections": limits.max_connections, "max_pending_requests": limits.max_pending_requests,
                                             "max_requests": limits.max_requests, "max_retries": 3}]},
        "load_assignment": {"cluster_name": c.name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "hostname": c.hostname,
            "address": {"socket_address": {"address": c.address, "port_value": c.port}}}}]}]},
        "metadata": {"filter_metadata": {"layergate": {"upstream": c.label}}},
    });
    if !is_ip {
        v["dns_lookup_family"] = json!("V4_PREFERRED");
    }
    if c.tls {
        v["transport_socket"] = upstream_tls(c);
    }
    v
}

impl Cluster {
    /// A store's cluster: its [`Upstream`], translated.
    pub fn of(u: &Upstream) -> Cluster {
        Cluster {
            name: u.cluster.clone(),
            address: u.host.clone(),
            port: u.port,
            hostname: u.authority_host.clone(),
            tls: u.tls,
            trusted_ca: None,
            label: u.label.clone(),
        }
    }
}
