//! The Envoy target's gateway listener: the filter chain (the layergate filter — either build,
//! [`FilterBuild`] —, buffer filter, router), its routes, the JSON local replies, and the
//! bounds on what a client may hold ([`limits`]). A resource only: how it reaches Envoy is
//! `bootstrap`'s.

use crate::render::upstream::{ms, CONTROL_BODY_BYTES};
pub use crate::settings::FilterBuild;
use crate::settings::{UpstreamLimits, CONTROL_CLUSTER};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// The gateway listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Which build of the filter `filter_path` is.
    pub build: FilterBuild,
    /// Path of the filter as Envoy sees it: the `.wasm`, or the `.so` ([`FilterBuild::Native`]).
    pub filter_path: String,
    /// Filter configuration JSON; `None` renders the listener without the filter (tests).
    pub filter_config: Option<String>,
    /// The wasm VM's environment (`vm_config.environment_variables.key_values`); the native
    /// build reads Envoy's environment instead, so this must be empty for it.
    pub vm_env: Vec<(String, String)>,
    /// The buffer filter's limit, on the inspection route only (it raises that stream's
    /// buffer limit); must cover the filter's `limits.inspectBodyBytes`. Every other stream
    /// and connection buffers at most [`limits::CONNECTION_BUFFER_BYTES`].
    pub buffer_limit_bytes: u64,
    /// A file Envoy writes the audit lines to, besides stdout.
    pub access_log_path: Option<String>,
}

/// The audit line's template for Envoy's access log (a `text_format_source` with
/// `omit_empty_values`): one JSON object a line. Envoy fills in what it knows — every value
/// here is a timestamp, a number or an address, so nothing it writes needs escaping — and the
/// filter's fragment (`%FILTER_STATE(<log_key>:PLAIN)%`, `,"request_id":…,"reason":…`,
/// escaped by the filter) closes the object; a request the filter did not record (a host it
/// does not serve, a reply Envoy made before it) renders the fragment empty, which is still
/// one valid object.
pub fn audit_format(log_key: &str) -> String {
    format!(
        "{{\"time\":\"%START_TIME%\",\"status\":%RESPONSE_CODE%,\
         \"bytes_received\":%BYTES_RECEIVED%,\"bytes_sent\":%BYTES_SENT%,\"duration_ms\":%DURATION%,\
         \"client\":\"%DOWNSTREAM_REMOTE_ADDRESS%\"%FILTER_STATE({log_key}:PLAIN)%}}\n"
    )
}

/// Envoy's access loggers of the gateway: stdout, and `path` when given, with the audit line.
pub fn access_loggers(log_key: &str, path: Option<&str>) -> Value {
    let format = json!({"omit_empty_values": true,
                        "text_format_source": {"inline_string": audit_format(log_key)}});
    let mut loggers = vec![
        json!({"name": "envoy.access_loggers.stdout", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        "log_format": format}}),
    ];
    if let Some(path) = path {
        loggers.push(
            json!({"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path, "log_format": format}}),
        );
    }
    Value::Array(loggers)
}

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

/// The layergate filter's entry in the HTTP filter chain, for either build.
fn filter(l: &Listener, config: &str) -> Value {
    let config =
        json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config});
    match l.build {
        FilterBuild::Wasm => {
            let mut vm = json!({"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": l.filter_path}}});
            if !l.vm_env.is_empty() {
                let kv: serde_json::Map<String, Value> = l
                    .vm_env
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                vm["environment_variables"] = json!({"key_values": kv});
            }
            json!({"name": "envoy.filters.http.wasm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {"name": "layergate", "root_id": "layergate", "failure_policy": "FAIL_RELOAD", "vm_config": vm,
                           "configuration": config}}})
        }
        // The module is named by its file, as the wasm is (Envoy's other way is `name` and
        // `lib<name>.so` on ENVOY_DYNAMIC_MODULES_SEARCH_PATH). `do_not_close`: it is never
        // unloaded — its per-thread state lives as long as the workers.
        FilterBuild::Native => {
            json!({"name": "envoy.filters.http.dynamic_modules", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"module": {"local": {"filename": l.filter_path}}, "do_not_close": true},
            "filter_name": "layergate",
            "filter_config": config}})
        }
    }
}

/// The listener resource (default [`UpstreamLimits`]).
pub fn listener(l: &Listener) -> Value {
    listener_with(l, &UpstreamLimits::default())
}

/// The listener resource, its routes timing out after `limits.request_timeout_ms`.
pub fn listener_with(l: &Listener, limits: &UpstreamLimits) -> Value {
    let mut filters = Vec::new();
    if let Some(config) = &l.filter_config {
        filters.push(filter(l, config));
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
            "access_log": access_loggers(l.build.log_key(), l.access_log_path.as_deref()),
            "route_config": {"name": "layergate", "virtual_hosts": [{"name": "layergate", "domains": ["*"], "routes": routes}]},
            "http_filters": filters,
        }}]}],
    })
}
