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

use crate::render::{self, Output, RenderOptions, Rendering, Upstream};
pub use crate::settings::UpstreamLimits;
use crate::settings::{Settings, CONTROL_CLUSTER, KEY_SERVICE_CLUSTER};
use crate::validate::Validation;
use anyhow::Result;
use layergate_filter::config::Credential;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;

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

/// How a store cluster is labelled in the gateway's errors: `store "<name>"`.
pub fn store_label(store: &str) -> String {
    format!("store {store:?}")
}

/// The gateway listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Path of the filter `.wasm` as Envoy sees it.
    pub wasm_path: String,
    /// Filter configuration JSON; `None` renders the listener without the filter (tests).
    pub filter_config: Option<String>,
    /// The wasm VM's environment (`vm_config.environment_variables.key_values`).
    pub vm_env: Vec<(String, String)>,
    /// The buffer filter's limit, on the inspection route only (it raises that stream's
    /// buffer limit); must cover the filter's `limits.inspectBodyBytes`. Every other stream
    /// and connection buffers at most [`limits::CONNECTION_BUFFER_BYTES`].
    pub buffer_limit_bytes: u64,
}

/// Default buffer limit: the 16 MiB inspection limit plus headroom.
pub const DEFAULT_BUFFER_LIMIT_BYTES: u64 = 17 * 1024 * 1024;

/// The gateway's resource limits, as rendered into every listener and bootstrap.
pub mod limits {
    /// `per_connection_buffer_limit_bytes`: what a connection (and a stream off the inspection
    /// route) may buffer before Envoy stops reading from it (Envoy's default is 1 MiB too).
    pub const CONNECTION_BUFFER_BYTES: u64 = 1024 * 1024;
    /// Time for a client to send all request headers.
    pub const REQUEST_HEADERS_TIMEOUT: &str = "10s";
    /// Time for a client to send the whole request, body included (a 16 MiB upload needs
    /// about 1.1 Mbit/s); Envoy answers 408 and closes the stream.
    pub const REQUEST_TIMEOUT: &str = "120s";
    /// A stream with no bytes either way for this long is reset (a stalled upload), ms — at
    /// least; the listener renders [`super::stream_idle_ms`], which outlasts the route timeout
    /// so a store that hangs gets the route's JSON 504 naming it, not an idle reset first.
    pub const STREAM_IDLE_TIMEOUT_MS: u64 = 30_000;
    /// How much longer than the route timeout a stream may be idle.
    pub const STREAM_IDLE_GRACE_MS: u64 = 15_000;
    /// A connection with no streams for this long is closed.
    pub const CONNECTION_IDLE_TIMEOUT: &str = "300s";
    /// Request headers larger than this are refused with 431.
    pub const MAX_REQUEST_HEADERS_KB: u32 = 32;
    /// Request headers more numerous than this are refused with 431.
    pub const MAX_REQUEST_HEADERS_COUNT: u32 = 100;
    /// HTTP/2: concurrent streams per connection.
    pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
    /// HTTP/2: per-stream flow-control window (Envoy's default is 256 MiB).
    pub const H2_STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
    /// HTTP/2: per-connection flow-control window.
    pub const H2_CONNECTION_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
    /// Overload manager: downstream connections accepted across all listeners.
    pub const MAX_DOWNSTREAM_CONNECTIONS: u64 = 10_000;
    /// Overload manager: the heap the fixed-heap monitor measures against (the gateway's
    /// container limit is 1 GiB; the wasm VMs' memory is outside Envoy's heap).
    pub const MAX_HEAP_BYTES: u64 = 512 * 1024 * 1024;
}

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

/// A duration in ms as Envoy (and Istio) reads it (`5s`, `1.500s`).
pub fn ms(v: u64) -> String {
    if v.is_multiple_of(1000) {
        format!("{}s", v / 1000)
    } else {
        format!("{}.{:03}s", v / 1000, v % 1000)
    }
}

/// Which of the listener's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteKind {
    /// A body the filter inspects: buffered up to the inspection limit.
    Inspect,
    /// The operator's control API: the body is held by the gateway (at most
    /// [`CONTROL_BODY_BYTES`]) and sent on only once complete, so a client trickling a body
    /// never holds one of the operator's connections (issue 21).
    Control,
    /// Everything else: streamed.
    Stream,
}

/// The most a control-API request body may be (the control API's own largest cap, a mint).
pub const CONTROL_BODY_BYTES: u64 = crate::api::MINT_BODY_BYTES as u64;

fn route(kind: RouteKind) -> Value {
    let mut r = json!({
        "match": {"prefix": "/"},
        "route": {"cluster_header": "x-layergate-cluster", "auto_host_rewrite": true, "timeout": "60s"},
        "request_headers_to_remove": ["x-layergate-cluster"],
    });
    const PER_ROUTE: &str =
        "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute";
    match kind {
        RouteKind::Inspect => {
            r["match"]["headers"] = json!([{"name": "x-layergate-inspect", "present_match": true}]);
            r["request_headers_to_remove"] = json!(["x-layergate-cluster", "x-layergate-inspect"]);
        }
        RouteKind::Control => {
            r["match"]["headers"] = json!([{"name": "x-layergate-cluster", "string_match": {"exact": CONTROL_CLUSTER}}]);
            r["typed_per_filter_config"] = json!({"envoy.filters.http.buffer": {
                "@type": PER_ROUTE, "buffer": {"max_request_bytes": CONTROL_BODY_BYTES}}});
        }
        RouteKind::Stream => {
            r["typed_per_filter_config"] =
                json!({"envoy.filters.http.buffer": {"@type": PER_ROUTE, "disabled": true}});
        }
    }
    r
}

/// The listener's stream idle timeout, ms: [`limits::STREAM_IDLE_TIMEOUT_MS`], or the route
/// timeout plus [`limits::STREAM_IDLE_GRACE_MS`] when that is longer. With Envoy's defaults the
/// idle timer (30 s) fired before the route's (60 s): a hanging store got a plain-text
/// `504 stream timeout` instead of the JSON error naming it.
pub fn stream_idle_ms(limits: &UpstreamLimits) -> u64 {
    limits::STREAM_IDLE_TIMEOUT_MS.max(limits.request_timeout_ms + limits::STREAM_IDLE_GRACE_MS)
}

/// The listener resource (default [`UpstreamLimits`]).
pub fn listener(l: &Listener) -> Value {
    listener_with(l, &UpstreamLimits::default())
}

/// The listener resource, its routes timing out after `limits.request_timeout_ms`.
pub fn listener_with(l: &Listener, limits: &UpstreamLimits) -> Value {
    let mut filters = Vec::new();
    if let Some(config) = &l.filter_config {
        let mut vm = json!({"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": l.wasm_path}}});
        if !l.vm_env.is_empty() {
            let kv: serde_json::Map<String, Value> = l
                .vm_env
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            vm["environment_variables"] = json!({"key_values": kv});
        }
        filters.push(json!({"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": "layergate", "root_id": "layergate", "failure_policy": "FAIL_RELOAD", "vm_config": vm,
                       "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config}}}}));
    }
    filters.push(json!({"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": l.buffer_limit_bytes}}));
    filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    // Envoy's own replies when the upstream cannot be reached (refused connection, failed TLS
    // verification, no healthy host) are plain text; clients read turbopuffer's JSON error.
    // Only replies with those response flags are rewritten, never the filter's own.
    let unreachable = "%CLUSTER_METADATA(layergate:upstream)% could not be reached over a verified connection \
                       (%UPSTREAM_TRANSPORT_FAILURE_REASON%); nothing was sent to it. Check its endpoint, \
                       and that its certificate names its host and chains to a trusted CA";
    // A store that accepted the request but failed it: no answer in time (UT → 504), the
    // connection closed or reset before a response (UC, UR), or its circuit breaker open (UO).
    let timeout = format!(
        "%CLUSTER_METADATA(layergate:upstream)% did not answer within {}; the request may or may not have been applied",
        ms(limits.request_timeout_ms)
    );
    let reset = "%CLUSTER_METADATA(layergate:upstream)% closed the connection before answering \
                 (%UPSTREAM_TRANSPORT_FAILURE_REASON%); the request may or may not have been applied";
    let overflow = "%CLUSTER_METADATA(layergate:upstream)% has too many requests in flight through this gateway; retry later";
    let mapper = |flags: &[&str], status: u16, error: &str| {
        json!({"filter": {"response_flag_filter": {"flags": flags}}, "status_code": status,
               "body_format_override": {"json_format": {"status": "error", "error": error}}})
    };
    // Envoy's own timers on the client side: a stream idle in both directions (SI: 408 while
    // the request is still arriving, 504 after), and the whole request not arriving in time
    // (408, which the filter never sends). The status stays Envoy's; the body is JSON.
    let idle = format!(
        "no bytes moved either way for {}; the request was cut off and may or may not have been applied",
        ms(stream_idle_ms(limits))
    );
    let late = format!(
        "the request did not arrive in time (headers within {}, the whole request within {})",
        limits::REQUEST_HEADERS_TIMEOUT,
        limits::REQUEST_TIMEOUT
    );
    let keep_status = |filter: Value, error: &str| json!({"filter": filter, "body_format_override": {"json_format": {"status": "error", "error": error}}});
    let local_reply = json!({"mappers": [
        mapper(&["UF", "UH"], 503, unreachable),
        mapper(&["UT"], 504, &timeout),
        mapper(&["UC", "UR"], 503, reset),
        mapper(&["UO"], 503, overflow),
        keep_status(json!({"response_flag_filter": {"flags": ["SI"]}}), &idle),
        keep_status(json!({"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 408, "runtime_key": "layergate.local_reply.408"}}}}), &late),
    ]});
    let routes = [
        route(RouteKind::Inspect),
        route(RouteKind::Control),
        route(RouteKind::Stream),
    ]
    .map(|mut r| {
        r["route"]["timeout"] = json!(ms(limits.request_timeout_ms));
        r
    });
    let log_format = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(:PATH)%\" %RESPONSE_CODE% %UPSTREAM_CLUSTER% %FILTER_STATE(wasm.layergate:PLAIN)%\n";
    json!({
        "name": "layergate",
        "address": {"socket_address": {"address": l.listen.ip().to_string(), "port_value": l.listen.port()}},
        "per_connection_buffer_limit_bytes": limits::CONNECTION_BUFFER_BYTES,
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "layergate",
            // Envoy appends the peer address to x-forwarded-for itself: the control API's
            // per-client `authenticate` limit keys on it, so a client cannot choose its address.
            "use_remote_address": true,
            "normalize_path": true,
            "merge_slashes": false,
            "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
            "request_headers_timeout": limits::REQUEST_HEADERS_TIMEOUT,
            "request_timeout": limits::REQUEST_TIMEOUT,
            "stream_idle_timeout": ms(stream_idle_ms(limits)),
            "max_request_headers_kb": limits::MAX_REQUEST_HEADERS_KB,
            "common_http_protocol_options": {
                "idle_timeout": limits::CONNECTION_IDLE_TIMEOUT,
                "max_headers_count": limits::MAX_REQUEST_HEADERS_COUNT,
            },
            "http2_protocol_options": {
                "max_concurrent_streams": limits::H2_MAX_CONCURRENT_STREAMS,
                "initial_stream_window_size": limits::H2_STREAM_WINDOW_BYTES,
                "initial_connection_window_size": limits::H2_CONNECTION_WINDOW_BYTES,
            },
            "local_reply_config": local_reply,
            "access_log": [{"name": "envoy.access_loggers.stdout", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {"text_format_source": {"inline_string": log_format}}}}],
            "route_config": {"name": "layergate", "virtual_hosts": [{"name": "layergate", "domains": ["*"], "routes": routes}]},
            "http_filters": filters,
        }}]}],
    })
}

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

/// The Envoy target's translation ([`crate::render::render`]): the filter configuration (store
/// credentials inline; with a control API and the `gateway` credential, `keyService` through
/// the control cluster and no `apiKeys`), the store clusters (plus the control API's) and the
/// listener, as `layergate.json`, `cds.json` and `lds.json`.
pub fn translate(
    v: &Validation,
    upstreams: &[Upstream],
    settings: &Settings,
    gateway: Option<&str>,
) -> Result<Rendering> {
    // Gateways sync from the key service's own listener when the operator has one.
    let keys_cluster = match (&settings.key_service, &settings.control) {
        (Some(_), _) => Some(KEY_SERVICE_CLUSTER),
        (None, Some(_)) => Some(CONTROL_CLUSTER),
        (None, None) => None,
    };
    let key_service = match (keys_cluster, gateway) {
        (Some(cluster), Some(credential)) => Some(render::key_service(
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
    };
    let config = render::filter_config(v, &options)?;
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
        wasm_path: settings.wasm_path.clone(),
        filter_config: Some(serde_json::to_string(&config)?),
        vm_env: Vec::new(),
        buffer_limit_bytes: DEFAULT_BUFFER_LIMIT_BYTES,
    };
    let files = vec![
        (
            "layergate.json",
            serde_json::to_string_pretty(&config)? + "\n",
        ),
        ("cds.json", cds_with(&clusters, &settings.limits)),
        ("lds.json", lds_with(&listener, &settings.limits)),
    ];
    Ok(Rendering {
        config,
        output: Output::Envoy(files),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_cluster(hostname: &str, address: &str) -> Cluster {
        Cluster {
            name: "store_s".into(),
            address: address.into(),
            port: 443,
            hostname: hostname.into(),
            tls: true,
            trusted_ca: None,
            label: store_label("s"),
        }
    }

    fn validation_context(c: &Cluster) -> Value {
        cluster(c)["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
            .clone()
    }

    #[test]
    fn a_dns_endpoint_requires_its_name_as_a_dns_san_and_sends_it_as_sni() {
        let c = tls_cluster(
            "gcp-us-central1.turbopuffer.com",
            "gcp-us-central1.turbopuffer.com",
        );
        let v = validation_context(&c);
        assert_eq!(
            v["match_typed_subject_alt_names"],
            json!([{"san_type": "DNS", "matcher": {"exact": "gcp-us-central1.turbopuffer.com"}}])
        );
        assert_eq!(v["trusted_ca"]["filename"], SYSTEM_CA_BUNDLE);
        assert_eq!(
            cluster(&c)["transport_socket"]["typed_config"]["sni"],
            "gcp-us-central1.turbopuffer.com"
        );
        assert_eq!(
            cluster(&c)["metadata"]["filter_metadata"]["layergate"]["upstream"],
            r#"store "s""#
        );
    }

    #[test]
    fn an_ip_endpoint_requires_its_address_as_an_ip_san_and_sends_no_sni() {
        for (hostname, address, ip) in [
            ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
            ("[::1]", "::1", "::1"),
        ] {
            let c = tls_cluster(hostname, address);
            assert_eq!(
                validation_context(&c)["match_typed_subject_alt_names"],
                json!([{"san_type": "IP_ADDRESS", "matcher": {"exact": ip}}])
            );
            assert!(cluster(&c)["transport_socket"]["typed_config"]
                .get("sni")
                .is_none());
        }
    }

    #[test]
    fn a_trusted_ca_override_replaces_the_system_bundle_and_plain_http_has_no_tls() {
        let mut c = tls_cluster("store.test", "127.0.0.1");
        c.trusted_ca = Some("/tmp/ca.pem".into());
        assert_eq!(
            validation_context(&c)["trusted_ca"]["filename"],
            "/tmp/ca.pem"
        );
        c.tls = false;
        assert!(cluster(&c).get("transport_socket").is_none());
    }

    #[test]
    fn the_listener_is_bounded_and_every_bootstrap_carries_the_overload_manager() {
        let l = listener(&Listener {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            wasm_path: "f.wasm".into(),
            filter_config: None,
            vm_env: Vec::new(),
            buffer_limit_bytes: DEFAULT_BUFFER_LIMIT_BYTES,
        });
        assert_eq!(
            l["per_connection_buffer_limit_bytes"],
            limits::CONNECTION_BUFFER_BYTES
        );
        let hcm = &l["filter_chains"][0]["filters"][0]["typed_config"];
        for (k, v) in [
            (
                "request_headers_timeout",
                json!(limits::REQUEST_HEADERS_TIMEOUT),
            ),
            ("request_timeout", json!(limits::REQUEST_TIMEOUT)),
            ("stream_idle_timeout", json!("75s")),
            (
                "max_request_headers_kb",
                json!(limits::MAX_REQUEST_HEADERS_KB),
            ),
        ] {
            assert_eq!(hcm[k], v, "{k}");
        }
        let h2 = &hcm["http2_protocol_options"];
        assert_eq!(
            h2["max_concurrent_streams"],
            limits::H2_MAX_CONCURRENT_STREAMS
        );
        assert_eq!(
            h2["initial_stream_window_size"],
            limits::H2_STREAM_WINDOW_BYTES
        );
        // Only the buffer filter (enabled on the inspection route only) buffers more.
        let buffer = hcm["http_filters"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == "envoy.filters.http.buffer"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            buffer["typed_config"]["max_request_bytes"],
            DEFAULT_BUFFER_LIMIT_BYTES
        );
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], 9901));
        for bootstrap in [
            static_bootstrap(
                admin_addr,
                &Listener {
                    filter_config: None,
                    ..l_spec()
                },
                &[],
            ),
            dynamic_bootstrap(admin_addr, Path::new("/etc/layergate/config")),
        ] {
            let v: Value = serde_yaml::from_str(&bootstrap).unwrap_or_default();
            let om = &v["overload_manager"];
            let monitors: Vec<&str> = om["resource_monitors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["name"].as_str())
                .collect();
            assert_eq!(
                monitors,
                [
                    "envoy.resource_monitors.fixed_heap",
                    "envoy.resource_monitors.global_downstream_max_connections"
                ]
            );
            assert_eq!(om["actions"].as_array().map(Vec::len), Some(3));
        }
    }

    fn l_spec() -> Listener {
        Listener {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            wasm_path: "f.wasm".into(),
            filter_config: None,
            vm_env: Vec::new(),
            buffer_limit_bytes: DEFAULT_BUFFER_LIMIT_BYTES,
        }
    }

    #[test]
    fn only_envoys_upstream_failure_replies_are_rewritten_to_json() {
        let l = listener(&Listener {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            wasm_path: "f.wasm".into(),
            filter_config: None,
            vm_env: Vec::new(),
            buffer_limit_bytes: DEFAULT_BUFFER_LIMIT_BYTES,
        });
        let hcm = &l["filter_chains"][0]["filters"][0]["typed_config"];
        let mappers = hcm["local_reply_config"]["mappers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // Upstream failures (4), then Envoy's own client-side timers: stream idle (SI) and
        // request timeouts (408, which the filter never sends).
        assert_eq!(mappers.len(), 6);
        assert_eq!(
            mappers[4]["filter"],
            json!({"response_flag_filter": {"flags": ["SI"]}})
        );
        assert_eq!(
            mappers[5]["filter"]["status_code_filter"]["comparison"]["value"]["default_value"],
            408
        );
        assert_eq!(
            mappers[0]["filter"],
            json!({"response_flag_filter": {"flags": ["UF", "UH"]}})
        );
        assert_eq!(mappers[1]["status_code"], 504);
        // No top-level body format: the filter's own JSON replies stay as they are.
        assert!(hcm["local_reply_config"].get("body_format").is_none());
        let error = mappers[0]["body_format_override"]["json_format"]["error"]
            .as_str()
            .unwrap_or_default();
        assert!(
            error.starts_with("%CLUSTER_METADATA(layergate:upstream)%"),
            "{error}"
        );
    }
}
