//! How Envoy gets the target's resources: a self-contained static bootstrap, or file-based
//! discovery (`lds.json`, `cds.json`) and the dynamic bootstrap that watches them; every
//! bootstrap carries the [`overload_manager`].

use super::cluster::{cluster, cluster_with, Cluster};
use super::listener::{limits, listener, listener_with, Listener};
use crate::settings::UpstreamLimits;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;

/// The overload manager every bootstrap carries: a global downstream connection limit, and a
/// fixed-heap monitor whose rising pressure first ends keep-alive (0.90), then shrinks the
/// heap (0.95), then refuses new requests with 503 (0.98).
pub fn overload_manager() -> Value {
    let action = |name: &str, value: f64| json!({"name": name, "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": value}}]});
    json!({
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {"name": "envoy.resource_monitors.fixed_heap", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                "max_heap_size_bytes": limits::MAX_HEAP_BYTES}},
            {"name": "envoy.resource_monitors.global_downstream_max_connections", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": limits::MAX_DOWNSTREAM_CONNECTIONS}},
        ],
        "actions": [
            action("envoy.overload_actions.disable_http_keepalive", 0.90),
            action("envoy.overload_actions.shrink_heap", 0.95),
            action("envoy.overload_actions.stop_accepting_requests", 0.98),
        ],
    })
}

fn yaml(header: &str, v: &Value) -> String {
    format!("{header}{}", serde_yaml::to_string(v).unwrap_or_default())
}

fn admin(addr: SocketAddr) -> Value {
    json!({"address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}})
}

/// A self-contained bootstrap (static resources).
pub fn static_bootstrap(admin_addr: SocketAddr, l: &Listener, clusters: &[Cluster]) -> String {
    bootstrap_with_listener(admin_addr, listener(l), clusters)
}

/// [`static_bootstrap`] with other [`UpstreamLimits`] than the defaults.
pub fn static_bootstrap_with(
    admin_addr: SocketAddr,
    l: &Listener,
    clusters: &[Cluster],
    limits: &UpstreamLimits,
) -> String {
    let v = json!({
        "admin": admin(admin_addr),
        "static_resources": {"listeners": [listener_with(l, limits)],
                             "clusters": clusters.iter().map(|c| cluster_with(c, limits)).collect::<Vec<_>>()},
    });
    yaml(
        "# Rendered by layergate-operator (operator/src/envoy.rs).\n",
        &v,
    )
}

/// A self-contained bootstrap around a listener resource the caller may have adjusted
/// (benchmarks compare filter chains on the same listener).
pub fn bootstrap_with_listener(
    admin_addr: SocketAddr,
    listener: Value,
    clusters: &[Cluster],
) -> String {
    let v = json!({
        "admin": admin(admin_addr),
        "overload_manager": overload_manager(),
        "static_resources": {"listeners": [listener], "clusters": clusters.iter().map(cluster).collect::<Vec<_>>()},
    });
    yaml(
        "# Rendered by layergate-operator (operator/src/envoy.rs).\n",
        &v,
    )
}

/// `lds.json`: the listener as a file-based discovery response.
pub fn lds(l: &Listener) -> String {
    lds_with(l, &UpstreamLimits::default())
}
/// [`lds`], its routes timing out after `limits.request_timeout_ms`.
pub fn lds_with(l: &Listener, limits: &UpstreamLimits) -> String {
    let resource = typed(
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        listener_with(l, limits),
    );
    discovery(&json!({"resources": [resource]}))
}

/// A file-based discovery response, as JSON: Envoy parses JSON several times faster than
/// YAML, which decides the reload time of a listener that carries 100,000 keys.
fn discovery(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// A discovery resource: `@type` first, then the resource's fields.
fn typed(type_url: &str, resource: Value) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("@type".into(), json!(type_url));
    if let Value::Object(fields) = resource {
        map.extend(fields);
    }
    Value::Object(map)
}

/// `cds.json`: the store clusters as a file-based discovery response.
pub fn cds(clusters: &[Cluster]) -> String {
    cds_with(clusters, &UpstreamLimits::default())
}
/// [`cds`] with the given connect timeout and circuit breakers.
pub fn cds_with(clusters: &[Cluster], limits: &UpstreamLimits) -> String {
    let resources: Vec<Value> = clusters
        .iter()
        .map(|c| {
            typed(
                "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                cluster_with(c, limits),
            )
        })
        .collect();
    discovery(&json!({"resources": resources}))
}

/// A bootstrap that loads `lds.json` and `cds.json` from `dir` and reloads them when they are
/// replaced (write a new file, then rename it over the old one).
pub fn dynamic_bootstrap(admin_addr: SocketAddr, dir: &Path) -> String {
    let file = |name: &str| json!({"path_config_source": {"path": dir.join(name).to_string_lossy(), "watched_directory": {"path": dir.to_string_lossy()}}, "resource_api_version": "V3"});
    let v = json!({
        "node": {"id": "layergate", "cluster": "layergate"},
        "admin": admin(admin_addr),
        "overload_manager": overload_manager(),
        "dynamic_resources": {"lds_config": file("lds.json"), "cds_config": file("cds.json")},
    });
    yaml(
        "# Rendered by layergate-operator (operator/src/envoy.rs).\n",
        &v,
    )
}
