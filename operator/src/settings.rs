//! The gateway settings a rendering takes — where it listens, where the filter is, the
//! operator's control API and key service, the endpoint allowlist, the upstream limits — and
//! the cluster names they are rendered under. The bottom of the operator's house: rendering,
//! both targets and both sources read it; it imports nothing of theirs.

use std::net::SocketAddr;

/// Where the gateway listens and finds the filter.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Gateway listener.
    pub listen: SocketAddr,
    /// Envoy admin.
    pub admin: SocketAddr,
    /// The filter as Envoy sees it: the `.wasm`, or the `.so` of the native build.
    pub wasm_path: String,
    /// Which build of the filter `wasm_path` is.
    pub filter: FilterBuild,
    /// The operator's control API (host, port), when it serves one: the gateway routes
    /// `/v2/keys…` and `/v2/vectorstores…` there (cluster `layergate_control`). An IP address
    /// or a DNS name (in a cluster, the operator's Service).
    pub control: Option<(String, u16)>,
    /// The operator's key service (host, port) on its own listener, which the gateways sync
    /// from (cluster `layergate_keys`); `None`: through the control API's listener.
    pub key_service: Option<(String, u16)>,
    /// Endpoints store credentials may be sent to (`--allow-endpoint` widens the default).
    pub allow_endpoints: crate::endpoint::Allowlist,
    /// `keyService.maxStalenessSeconds` of the rendering: how long the gateway keeps judging
    /// minted tokens without a successful sync ([`DEFAULT_MAX_STALENESS_SECONDS`]; tests
    /// render a few seconds).
    pub key_max_staleness_seconds: u64,
    /// Timeouts and circuit breakers of the store clusters and their routes.
    pub limits: UpstreamLimits,
    /// A file the gateway also writes its audit lines to (they always go to stdout).
    pub access_log_path: Option<String>,
    /// Gateway processes that share each key's rate limit (`--gateway-replicas`): rendered as
    /// the filter's `limits.gatewayReplicas`, so each enforces its share.
    pub gateway_replicas: u32,
}

/// Which build of the filter a listener runs (SPEC §10). Both take the same configuration
/// JSON, sit at the same place in the chain under the same routes, and report the same
/// access-log record and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FilterBuild {
    /// The proxy-wasm module (`layergate_filter.wasm`) in Envoy's V8: Envoy 1.36–1.40, Istio.
    #[default]
    Wasm,
    /// The Envoy dynamic module (`liblayergate_native.so`), Envoy's
    /// `envoy.extensions.filters.http.dynamic_modules` filter: Envoy 1.39.x and 1.40.x only
    /// (its ABI is pinned to 1.39's). Store credentials named `{env: …}` are read from Envoy's
    /// own environment.
    Native,
}

impl FilterBuild {
    /// The filter-state key the access log reads the record from.
    pub fn log_key(self) -> &'static str {
        match self {
            FilterBuild::Wasm => "wasm.layergate",
            FilterBuild::Native => "layergate",
        }
    }

    /// The prefix Envoy puts before the filter's counter names in `/stats`
    /// (`wasmcustom.layergate.allowed`; Prometheus drops it either way: `layergate_allowed`).
    pub fn stats_prefix(self) -> &'static str {
        match self {
            FilterBuild::Wasm => "wasmcustom.",
            FilterBuild::Native => "dynamicmodulescustom.",
        }
    }
}

/// The Envoy releases the native build loads on: it is built against Envoy 1.39's
/// dynamic-module ABI (`v0.1.0`), which Envoy 1.39.x and 1.40.x accept (Envoy's compatibility
/// policy: a module built for X.Y runs on X.Y and X.(Y+1)).
pub const NATIVE_ENVOY: [(u32, u32); 2] = [(1, 39), (1, 40)];

impl FilterBuild {
    /// Whether this build runs on Envoy `version` (`MAJOR.MINOR[.PATCH]`); the reason when not.
    pub fn serves(self, version: &str) -> Result<(), String> {
        let mut parts = version.trim().trim_start_matches('v').split('.');
        let (Some(Ok(major)), Some(Ok(minor))) = (
            parts.next().map(str::parse::<u32>),
            parts.next().map(str::parse::<u32>),
        ) else {
            return Err(format!(
                "{version:?} is not an Envoy version (MAJOR.MINOR[.PATCH])"
            ));
        };
        match self {
            FilterBuild::Wasm if (1, 36) <= (major, minor) => Ok(()),
            FilterBuild::Wasm => Err(format!("the wasm build is tested on Envoy 1.36 to 1.40, not {version}")),
            FilterBuild::Native if NATIVE_ENVOY.contains(&(major, minor)) => Ok(()),
            FilterBuild::Native => Err(format!(
                "the native build is built against Envoy 1.39's dynamic-module ABI, which only Envoy 1.39.x and 1.40.x load; Envoy {version} would refuse the module: use --filter wasm (Envoy 1.36-1.40)"
            )),
        }
    }
}

/// The default `keyService.maxStalenessSeconds` (SPEC §6: 5 minutes).
pub const DEFAULT_MAX_STALENESS_SECONDS: u64 = 300;

/// Cluster name of the operator's control API.
pub const CONTROL_CLUSTER: &str = "layergate_control";

/// Cluster name of the operator's key service listener.
pub const KEY_SERVICE_CLUSTER: &str = "layergate_keys";

/// How long the gateway waits for a store, and how much it lets pile up in front of one. A
/// store that exceeds them costs its own clients a JSON 503/504 naming it; the other stores'
/// clients are not affected (limits are per cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamLimits {
    /// TCP (and TLS) connect timeout, ms: refused or unroutable → 503 `could not be reached`.
    pub connect_timeout_ms: u64,
    /// Whole-response timeout per request (the route's `timeout`), ms: a store that hangs or
    /// answers too slowly → 504 `did not answer within …`.
    pub request_timeout_ms: u64,
    /// Circuit breakers per store cluster: open connections, requests waiting for one, and
    /// requests in flight; beyond them → 503 `has too many requests in flight`.
    pub max_connections: u32,
    /// See `max_connections`.
    pub max_pending_requests: u32,
    /// See `max_connections`.
    pub max_requests: u32,
}

impl Default for UpstreamLimits {
    fn default() -> UpstreamLimits {
        UpstreamLimits {
            connect_timeout_ms: 5_000,
            request_timeout_ms: 60_000,
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
        }
    }
}

impl UpstreamLimits {
    /// The environment variables that set the limits (the operator's `render` and `run`),
    /// each with its bounds: (variable, min, max), in the order of the fields.
    pub const VARS: [(&'static str, u64, u64); 5] = [
        ("LAYERGATE_UPSTREAM_CONNECT_TIMEOUT_MS", 100, 60_000),
        ("LAYERGATE_UPSTREAM_REQUEST_TIMEOUT_MS", 100, 3_600_000),
        ("LAYERGATE_UPSTREAM_MAX_CONNECTIONS", 1, 100_000),
        ("LAYERGATE_UPSTREAM_MAX_PENDING_REQUESTS", 1, 100_000),
        ("LAYERGATE_UPSTREAM_MAX_REQUESTS", 1, 100_000),
    ];
}
