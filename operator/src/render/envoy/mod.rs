//! Rendering for the Envoy target (pure): the gateway listener and the store clusters, as a
//! static bootstrap (one file) or as file-based dynamic config (`lds.json`, `cds.json` and a
//! bootstrap that watches them, so a new rendering is hot-reloaded).
//!
//! The listener: path normalization (escaped slashes kept for the filter to refuse with a JSON
//! error), the wasm filter with `FAIL_RELOAD`, Envoy's buffer filter (enabled only on the route
//! the filter selects with `x-layergate-inspect`, see the README), and the router picking the
//! cluster from `x-layergate-cluster`, which it removes before forwarding. A request whose
//! upstream cannot be reached over a verified connection gets turbopuffer's JSON error naming
//! the upstream (the listener's local reply mapper), never Envoy's plain-text one; so does one
//! that times out (504), closes before answering or has its circuit breaker open (503); see
//! [`UpstreamLimits`].
//!
//! The listener is bounded (issue 13): header, request and idle timeouts, HTTP/2 stream and
//! window limits, a header size limit, a small per-connection buffer (only the inspection route
//! buffers up to the inspection limit, through the buffer filter), and every bootstrap carries
//! the overload manager: a global downstream connection limit and a fixed-heap monitor whose
//! actions stop keep-alive, shrink the heap and finally refuse new requests. See [`limits`].
//!
//! The store clusters (TLS unless the endpoint is loopback HTTP) verify the upstream's
//! identity, not only its chain: the certificate must chain to the trusted CAs **and** carry
//! the endpoint's host name as a DNS subject alternative name (an IP SAN for an IP endpoint).
//! A publicly trusted certificate for another host is refused during the handshake, before
//! the request, and so the store credential, is sent.
//!
//! The room: [`translate`] (this target's half of [`crate::render::render`]) and the Envoy
//! resources it writes, a room each — the clusters (`cluster.rs`), the listener
//! (`listener.rs`), and the bootstraps and discovery files Envoy reads them from
//! (`bootstrap.rs`). It builds on the shared render vocabulary below it (`render::filter`,
//! `render::upstream`) and `settings`; it never imports `render`'s entry point or the Istio
//! translator.

mod bootstrap;
mod cluster;
mod listener;
#[cfg(test)]
mod tests;

pub use self::bootstrap::{
    bootstrap_with_listener, cds, cds_with, dynamic_bootstrap, lds, lds_with, overload_manager,
    static_bootstrap, static_bootstrap_with,
};
pub use self::cluster::{cluster, cluster_with, Cluster, SYSTEM_CA_BUNDLE};
pub use self::listener::{
    access_loggers, audit_format, limits, listener, listener_with, stream_idle_ms, FilterBuild,
    Listener,
};
pub use crate::render::upstream::{
    ms, store_label, Upstream, CONTROL_BODY_BYTES, DEFAULT_BUFFER_LIMIT_BYTES,
};
pub use crate::settings::UpstreamLimits;

use crate::render::filter::{filter_config, key_service, RenderOptions};
use crate::settings::{Settings, CONTROL_CLUSTER, KEY_SERVICE_CLUSTER};
use crate::validate::Validation;
use anyhow::Result;
use layergate_filter::config::{Credential, FilterConfig};

/// The Envoy target's translation ([`crate::render::render`]): the filter configuration (store
/// credentials inline; with a control API and the `gateway` credential, `keyService` through
/// the control cluster and no `apiKeys`), the store clusters (plus the control API's) and the
/// listener, as `layergate.json`, `cds.json` and `lds.json` (in the order they are replaced).
pub fn translate(
    v: &Validation,
    upstreams: &[Upstream],
    settings: &Settings,
    gateway: Option<&str>,
) -> Result<(FilterConfig, Vec<(&'static str, String)>)> {
    // Gateways sync from the key service's own listener when the operator has one.
    let keys_cluster = match (&settings.key_service, &settings.control) {
        (Some(_), _) => Some(KEY_SERVICE_CLUSTER),
        (None, Some(_)) => Some(CONTROL_CLUSTER),
        (None, None) => None,
    };
    let key_service = match (keys_cluster, gateway) {
        (Some(cluster), Some(credential)) => Some(key_service(
            cluster.to_owned(),
            None,
            Credential::Inline(credential.to_owned()),
            settings.key_max_staleness_seconds,
        )),
        _ => None,
    };
    let options = RenderOptions {
        key_service,
        control_cluster: settings
            .control
            .as_ref()
            .map(|_| CONTROL_CLUSTER.to_owned()),
        app_cluster: None,
        credentials_from_env: false,
        // The Envoy target's gateway serves only layergate: every host.
        hosts: Vec::new(),
        gateway_replicas: settings.gateway_replicas,
    };
    let config = filter_config(v, &options)?;
    let mut clusters: Vec<Cluster> = upstreams.iter().map(Cluster::of).collect();
    if let Some((host, port)) = &settings.control {
        clusters.push(Cluster {
            name: CONTROL_CLUSTER.into(),
            address: host.clone(),
            port: *port,
            hostname: "layergate-control".into(),
            tls: false,
            trusted_ca: None,
            label: "the operator's control API".into(),
        });
    }
    if let Some((host, port)) = &settings.key_service {
        clusters.push(Cluster {
            name: KEY_SERVICE_CLUSTER.into(),
            address: host.clone(),
            port: *port,
            hostname: "layergate-keys".into(),
            tls: false,
            trusted_ca: None,
            label: "the operator's key service".into(),
        });
    }
    let listener = Listener {
        listen: settings.listen,
        build: settings.filter,
        filter_path: settings.wasm_path.clone(),
        filter_config: Some(serde_json::to_string(&config)?),
        vm_env: Vec::new(),
        buffer_limit_bytes: DEFAULT_BUFFER_LIMIT_BYTES,
        access_log_path: settings.access_log_path.clone(),
    };
    let files = vec![
        (
            "layergate.json",
            serde_json::to_string_pretty(&config)? + "\n",
        ),
        ("cds.json", cds_with(&clusters, &settings.limits)),
        ("lds.json", lds_with(&listener, &settings.limits)),
    ];
    Ok((config, files))
}
