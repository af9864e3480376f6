//! The gateway's settings on the command line: listener, admin, the filter build and file,
//! the store clusters' limits, and where the gateway reaches the operator.

use super::Mode;
use clap::{Args, ValueEnum};
use layergate_operator::endpoint::Allowlist;
use layergate_operator::settings::{
    FilterBuild, Settings, UpstreamLimits, DEFAULT_MAX_STALENESS_SECONDS,
};
use std::net::SocketAddr;

/// The gateway's listener, admin and filter path.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The gateway's listener [default: 127.0.0.1:8080; in a pod 0.0.0.0:8080].
    #[arg(long, env = "LAYERGATE_LISTEN", value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// Envoy's admin listener.
    #[arg(
        long,
        env = "LAYERGATE_ADMIN",
        value_name = "IP:PORT",
        default_value = "127.0.0.1:9901"
    )]
    pub admin: SocketAddr,
    /// The filter as Envoy sees it, the .wasm or (--filter native) the .so [default:
    /// target/wasm32-wasip1/wasm/layergate_filter.wasm or target/debug/liblayergate_native.so;
    /// in a pod /etc/layergate/wasm/layergate_filter.wasm or
    /// /etc/layergate/native/liblayergate_native.so].
    #[arg(long, env = "LAYERGATE_WASM", value_name = "PATH")]
    pub wasm: Option<String>,
    /// Which build of the filter the gateway runs: wasm (Envoy 1.36-1.40, and Istio) or
    /// native (an Envoy dynamic module, Envoy 1.39.x and 1.40.x only: give --envoy-version).
    #[arg(long, env = "LAYERGATE_FILTER", value_enum, default_value_t = FilterKind::Wasm)]
    pub filter: FilterKind,
    /// The gateway's Envoy version (MAJOR.MINOR[.PATCH]), checked against the filter build:
    /// required with --filter native.
    #[arg(long, env = "LAYERGATE_ENVOY_VERSION", value_name = "VERSION")]
    pub envoy_version: Option<String>,
    /// A file the gateway also writes its audit lines to, one JSON object a line (they always
    /// go to stdout), as Envoy sees the path.
    #[arg(long, env = "LAYERGATE_ACCESS_LOG_PATH", value_name = "PATH")]
    pub access_log_path: Option<String>,
    /// The store clusters' limits.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Gateway processes (replicas of the gateway Deployment, or Envoys in front of one
    /// operator) that share each key's rate limit: each enforces 1/N of it (1-10000).
    #[arg(long, env = "LAYERGATE_GATEWAY_REPLICAS", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(layergate_filter::ratelimit::MAX_REPLICAS)))]
    pub gateway_replicas: u32,
}

/// The filter builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FilterKind {
    /// The proxy-wasm module.
    Wasm,
    /// The Envoy dynamic module.
    Native,
}

/// Each store's timeouts and circuit breakers, in the clusters (DestinationRules) and routes.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// TCP (and TLS) connect timeout, ms (100-60000) [default: 5000].
    #[arg(long, env = "LAYERGATE_UPSTREAM_CONNECT_TIMEOUT_MS", value_name = "MS", value_parser = limit::<0>)]
    pub upstream_connect_timeout_ms: Option<u64>,
    /// The whole response, ms (100-3600000; beyond it 504) [default: 60000].
    #[arg(long, env = "LAYERGATE_UPSTREAM_REQUEST_TIMEOUT_MS", value_name = "MS", value_parser = limit::<1>)]
    pub upstream_request_timeout_ms: Option<u64>,
    /// Circuit breaker: open connections per store (1-100000; beyond it 503) [default: 1024].
    #[arg(long, env = "LAYERGATE_UPSTREAM_MAX_CONNECTIONS", value_name = "N", value_parser = limit::<2>)]
    pub upstream_max_connections: Option<u64>,
    /// Circuit breaker: requests waiting for a connection (1-100000) [default: 1024].
    #[arg(long, env = "LAYERGATE_UPSTREAM_MAX_PENDING_REQUESTS", value_name = "N", value_parser = limit::<3>)]
    pub upstream_max_pending_requests: Option<u64>,
    /// Circuit breaker: requests in flight (1-100000) [default: 1024].
    #[arg(long, env = "LAYERGATE_UPSTREAM_MAX_REQUESTS", value_name = "N", value_parser = limit::<4>)]
    pub upstream_max_requests: Option<u64>,
}

/// One of [`UpstreamLimits::VARS`], within its bounds; the error names the variable.
fn limit<const I: usize>(text: &str) -> Result<u64, String> {
    let (name, min, max) = UpstreamLimits::VARS[I];
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("{name} must be a whole number from {min} to {max}, not {text:?}"))
}

impl LimitArgs {
    fn limits(&self) -> UpstreamLimits {
        let d = UpstreamLimits::default();
        let narrow = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        UpstreamLimits {
            connect_timeout_ms: self
                .upstream_connect_timeout_ms
                .unwrap_or(d.connect_timeout_ms),
            request_timeout_ms: self
                .upstream_request_timeout_ms
                .unwrap_or(d.request_timeout_ms),
            max_connections: self
                .upstream_max_connections
                .map_or(d.max_connections, narrow),
            max_pending_requests: self
                .upstream_max_pending_requests
                .map_or(d.max_pending_requests, narrow),
            max_requests: self.upstream_max_requests.map_or(d.max_requests, narrow),
        }
    }
}

/// Where the gateway reaches the operator's control API and key service.
#[derive(Debug, Args)]
pub struct UpstreamArgs {
    /// HOST:PORT the gateway reaches the control API at [kube mode default:
    /// layergate-operator.NS.svc:9902; render: not routed if unset].
    #[arg(long, env = "LAYERGATE_CONTROL_UPSTREAM", value_name = "HOST:PORT", value_parser = host_port)]
    pub control_upstream: Option<(String, u16)>,
    /// HOST:PORT of the key service's own listener [kube mode default:
    /// layergate-operator.NS.svc:<key service port>; render: the control API's].
    #[arg(long, env = "LAYERGATE_KEY_SERVICE_UPSTREAM", value_name = "HOST:PORT", value_parser = host_port)]
    pub key_service_upstream: Option<(String, u16)>,
}

/// `HOST:PORT`.
fn host_port(s: &str) -> Result<(String, u16), String> {
    s.rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| format!("{s:?} must be HOST:PORT"))
}

impl GatewayArgs {
    /// The gateway settings, with the defaults of `mode`; the operator's own addresses are
    /// the caller's to fill in.
    pub fn settings(&self, mode: Mode, allow_endpoints: Allowlist) -> Settings {
        let listen = match mode {
            Mode::Local => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Mode::Pod => SocketAddr::from(([0, 0, 0, 0], 8080)),
        };
        let wasm = match (mode, self.filter) {
            (Mode::Local, FilterKind::Wasm) => "target/wasm32-wasip1/wasm/layergate_filter.wasm",
            (Mode::Local, FilterKind::Native) => "target/debug/liblayergate_native.so",
            (Mode::Pod, FilterKind::Wasm) => "/etc/layergate/wasm/layergate_filter.wasm",
            (Mode::Pod, FilterKind::Native) => "/etc/layergate/native/liblayergate_native.so",
        };
        Settings {
            listen: self.listen.unwrap_or(listen),
            admin: self.admin,
            filter: self.build(),
            wasm_path: self.wasm.clone().unwrap_or_else(|| wasm.to_owned()),
            control: None,
            key_service: None,
            allow_endpoints,
            key_max_staleness_seconds: DEFAULT_MAX_STALENESS_SECONDS,
            limits: self.limits.limits(),
            access_log_path: self.access_log_path.clone(),
            gateway_replicas: self.gateway_replicas,
        }
    }
}

impl GatewayArgs {
    /// The filter build asked for.
    pub fn build(&self) -> FilterBuild {
        match self.filter {
            FilterKind::Wasm => FilterBuild::Wasm,
            FilterKind::Native => FilterBuild::Native,
        }
    }
}
