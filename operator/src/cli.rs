//! The command line: every subcommand, flag and `LAYERGATE_*` variable, declared once with
//! `clap` and parsed once into the operator's settings. `layergate-operator --help` and
//! `layergate-operator COMMAND --help` print what is here.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use layergate_operator::endpoint::Allowlist;
use layergate_operator::istio::{defaults, FailStrategy, IstioSettings};
use layergate_operator::render;
use layergate_operator::settings::{Settings, UpstreamLimits, DEFAULT_MAX_STALENESS_SECONDS};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The control plane of layergate: validates the hevlayer.com CRDs, probes the stores, mints
/// API keys and renders what the gateway loads.
#[derive(Debug, Parser)]
#[command(name = "layergate-operator", version, arg_required_else_help = true)]
pub struct Cli {
    /// Also send store credentials to endpoints matching PATTERN (repeatable).
    ///
    /// PATTERN is SCHEME://HOST[:PORT]; HOST may be *.domain. Admitted without it: https://*.turbopuffer.com and loopback (IP
    /// literals in 127.0.0.0/8, ::1, or localhost). A VectorStore elsewhere is
    /// InvalidEndpoint: neither probed nor rendered.
    #[arg(long = "allow-endpoint", value_name = "PATTERN", global = true)]
    pub allow_endpoint: Vec<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CRD YAML (the same as operator/crds/).
    Crds,
    /// Copy the filter .wasm into DIR.
    ///
    /// The gateway's initContainer: the image has no shell.
    CopyFilter {
        /// The filter .wasm.
        wasm: PathBuf,
        /// The directory to copy it into.
        dir: PathBuf,
    },
    /// Validate the manifests in DIR offline; exit 1 on error.
    ///
    /// VectorStores, Indexes, ApiKeys and their Secrets, as YAML files (a kustomize directory
    /// is read as `kubectl apply -k` would).
    Check {
        /// The manifests' directory.
        #[arg(short = 'f', value_name = "DIR")]
        dir: PathBuf,
    },
    /// Write what the gateway loads into OUT.
    ///
    /// Envoy: layergate.json (the filter
    /// configuration), lds.json and cds.json (file-based dynamic config holding store
    /// credentials, mode 0600) and bootstrap.yaml, which watches them. Istio: istio.yaml
    /// (WasmPlugin, a ServiceEntry and DestinationRule per store, Gateway, VirtualService,
    /// EnvoyFilter; no credentials) and ingressgateway-patch.yaml (the proxy's credential
    /// environment).
    Render {
        /// The manifests' directory.
        #[arg(short = 'f', value_name = "DIR")]
        dir: PathBuf,
        /// Where to write the rendering.
        #[arg(short = 'o', value_name = "OUT")]
        out: PathBuf,
        /// What to render.
        #[command(flatten)]
        render: RenderArgs,
    },
    /// Run the controller (kube mode or directory mode).
    ///
    /// `--source kube`: in a cluster, watching the VectorStores, Indexes,
    /// ApiKeys (and the Secrets they name) of a namespace, minting tokens into Secrets owned by
    /// their ApiKey, publishing the rendering (the Secret LAYERGATE_OUTPUT_SECRET, or with
    /// `--target istio` the Istio resources, their credentials Secret and the gateway pod
    /// template's digest) and statuses, with a Lease so one replica writes. `--source dir:DIR
    /// --out OUT`: render DIR into OUT now and whenever a manifest changes (Envoy hot-reloads
    /// OUT), mint tokens into Secret files in DIR; a change that cannot be rendered never
    /// replaces the last good output. Both serve the control API (/v2/keys, /v2/vectorstores,
    /// /healthz, /readyz, /metrics) and, on a listener of its own, the key service the gateway
    /// syncs minted keys from (/v2/keys/sync).
    Run {
        /// `kube`, or `dir:PATH` (with --out).
        #[arg(long, value_parser = parse_source)]
        source: SourceKind,
        /// Directory mode's output directory.
        #[arg(long, value_name = "OUT")]
        out: Option<PathBuf>,
        /// What to render.
        #[command(flatten)]
        render: RenderArgs,
        /// What the operator serves and how it logs.
        #[command(flatten)]
        serve: ServeArgs,
        /// Kube mode's objects.
        #[command(flatten)]
        kube: KubeArgs,
    },
    /// Check a filter configuration exactly as the filter's on_configure does.
    ///
    /// Exit 1 with the reason if the filter would refuse it.
    CheckFilterConfig {
        /// The filter configuration (JSON).
        file: PathBuf,
    },
}

/// What `render` and `run` render: the namespace, the target and the gateway's settings.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The namespace (render: default the only one in DIR; kube mode: default POD_NAMESPACE,
    /// else the client's; directory mode renders every namespace and takes none).
    #[arg(long)]
    pub namespace: Option<String>,
    /// What to render for (directory mode: Envoy only).
    #[arg(long, value_enum, default_value_t = TargetKind::Envoy)]
    pub target: TargetKind,
    /// The gateway's settings.
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Where the gateway reaches the operator (render: not routed if unset).
    #[command(flatten)]
    pub upstreams: UpstreamArgs,
    /// The Istio target's settings.
    #[command(flatten)]
    pub istio: IstioArgs,
}

impl RenderArgs {
    /// The target asked for; the Istio target routes to the control API and key service
    /// given.
    pub fn target(
        &self,
        control: Option<(String, u16)>,
        key_service: Option<(String, u16)>,
    ) -> render::Target {
        match self.target {
            TargetKind::Envoy => render::Target::Envoy,
            TargetKind::Istio => render::Target::Istio(self.istio.settings(control, key_service)),
        }
    }
}

/// Where `run` reads its objects from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// The Kubernetes API.
    Kube,
    /// A directory of manifests.
    Dir(PathBuf),
}

fn parse_source(s: &str) -> Result<SourceKind, String> {
    match s {
        "kube" => Ok(SourceKind::Kube),
        _ => match s.strip_prefix("dir:") {
            Some(dir) if !dir.is_empty() => Ok(SourceKind::Dir(dir.into())),
            _ => Err("must be kube or dir:PATH".into()),
        },
    }
}

/// What a rendering is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// A gateway Envoy of its own (file-based dynamic config).
    Envoy,
    /// Istio's ingress gateway (WasmPlugin and friends).
    Istio,
}

/// Where the process runs: the defaults of the addresses and paths differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `render` and directory mode: a gateway on this machine.
    Local,
    /// Kube mode: a pod.
    Pod,
}

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
    /// The filter .wasm as Envoy sees it [default: target/wasm32-wasip1/wasm/layergate_filter.wasm;
    /// in a pod /etc/layergate/wasm/layergate_filter.wasm].
    #[arg(long, env = "LAYERGATE_WASM", value_name = "PATH")]
    pub wasm: Option<String>,
    /// The store clusters' limits.
    #[command(flatten)]
    pub limits: LimitArgs,
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

/// The Istio target's settings.
#[derive(Debug, Args)]
pub struct IstioArgs {
    /// Namespace of the ingress gateway and of every rendered resource.
    #[arg(
        long,
        env = "LAYERGATE_ISTIO_NAMESPACE",
        value_name = "NS",
        default_value = "layergate-ingress"
    )]
    pub istio_namespace: String,
    /// Labels selecting the ingress gateway's pods (a dedicated gateway).
    #[arg(long, env = "LAYERGATE_ISTIO_SELECTOR", value_name = "KEY=VALUE[,KEY=VALUE]",
          default_value = defaults::SELECTOR, value_parser = selector)]
    pub istio_selector: BTreeMap<String, String>,
    /// The ingress gateway Deployment the credential patch is for (kube mode rolls it).
    #[arg(
        long,
        env = "LAYERGATE_ISTIO_GATEWAY_DEPLOYMENT",
        value_name = "NAME",
        default_value = "layergate-ingressgateway"
    )]
    pub istio_gateway_deployment: String,
    /// The Gateway port the WasmPlugin and EnvoyFilter are scoped to.
    #[arg(
        long,
        env = "LAYERGATE_ISTIO_PORT",
        value_name = "PORT",
        default_value_t = 8080
    )]
    pub istio_port: u16,
    /// Where Istio fetches the filter (oci://, https:// or file://).
    #[arg(
        long,
        env = "LAYERGATE_WASM_URL",
        value_name = "URL",
        default_value = "oci://ghcr.io/layergate/layergate-filter:0.1.0"
    )]
    pub wasm_url: String,
    /// The hosts served, comma-separated; the filter acts only for these.
    #[arg(
        long,
        env = "LAYERGATE_HOSTS",
        value_name = "HOST[,HOST]",
        default_value = "*",
        value_delimiter = ','
    )]
    pub hosts: Vec<String>,
    /// FAIL_RELOAD: a filter panic fails that request and reloads the VM. FAIL_CLOSE only for
    /// Istio < 1.27: one panic turns that worker's requests into 503s until the pod restarts.
    #[arg(long, env = "LAYERGATE_ISTIO_FAIL_STRATEGY", value_name = "STRATEGY", default_value = "FAIL_RELOAD",
          value_parser = |s: &str| FailStrategy::parse(s).map_err(|e| e.to_string()))]
    pub istio_fail_strategy: FailStrategy,
}

fn selector(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .filter(|(k, _)| !k.is_empty())
        })
        .collect::<Option<_>>()
        .ok_or_else(|| "must be key=value[,key=value]".into())
}

impl IstioArgs {
    /// The Istio settings, routing to the control API and key service given.
    pub fn settings(
        &self,
        control: Option<(String, u16)>,
        key_service: Option<(String, u16)>,
    ) -> IstioSettings {
        IstioSettings {
            namespace: self.istio_namespace.clone(),
            selector: self.istio_selector.clone(),
            wasm_url: self.wasm_url.clone(),
            hosts: self.hosts.iter().map(|h| h.trim().to_owned()).collect(),
            port: self.istio_port,
            control,
            key_service,
            gateway_deployment: self.istio_gateway_deployment.clone(),
            fail_strategy: self.istio_fail_strategy,
        }
    }
}

/// What `run` serves and how it logs.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The control API's listener [default: 127.0.0.1:9902; kube mode 0.0.0.0:9902].
    #[arg(long, env = "LAYERGATE_CONTROL", value_name = "IP:PORT")]
    pub control: Option<SocketAddr>,
    /// The key service's listener [default: 127.0.0.1:9903; kube mode 0.0.0.0:9903].
    #[arg(long, env = "LAYERGATE_KEY_SERVICE", value_name = "IP:PORT")]
    pub key_service: Option<SocketAddr>,
    /// Failed and successful token authentications per client address per minute.
    #[arg(long, env = "LAYERGATE_AUTHENTICATE_PER_MINUTE", value_name = "N",
          default_value_t = layergate_operator::api::DEFAULT_AUTHENTICATE_PER_MINUTE)]
    pub authenticate_per_minute: u32,
    /// Log format [default: json in kube mode, text in directory mode].
    #[arg(long, env = "LAYERGATE_LOG", value_enum)]
    pub log: Option<LogFormat>,
    /// Log level.
    #[arg(
        long,
        env = "LAYERGATE_LOG_LEVEL",
        value_name = "LEVEL",
        default_value = "info"
    )]
    pub log_level: tracing::Level,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Plain lines.
    Text,
}

/// Kube mode's own objects and identity.
#[derive(Debug, Args)]
pub struct KubeArgs {
    /// The Secret the Envoy target's rendering is written to.
    #[arg(long, env = "LAYERGATE_OUTPUT_SECRET", value_name = "NAME",
          default_value = layergate_operator::cluster::DEFAULT_OUTPUT_SECRET)]
    pub output_secret: String,
    /// The Lease that decides which replica writes.
    #[arg(long, env = "LAYERGATE_LEASE", value_name = "NAME", default_value = layergate_operator::lease::DEFAULT_LEASE)]
    pub lease: String,
    /// This replica's identity in the Lease [default: layergate-operator-<pid>].
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,
    /// The pod's namespace, kube mode's default namespace.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS", hide = true)]
    pub pod_namespace: Option<String>,
}

impl GatewayArgs {
    /// The gateway settings, with the defaults of `mode`; the operator's own addresses are
    /// the caller's to fill in.
    pub fn settings(&self, mode: Mode, allow_endpoints: Allowlist) -> Settings {
        let (listen, wasm) = match mode {
            Mode::Local => (
                SocketAddr::from(([127, 0, 0, 1], 8080)),
                "target/wasm32-wasip1/wasm/layergate_filter.wasm",
            ),
            Mode::Pod => (
                SocketAddr::from(([0, 0, 0, 0], 8080)),
                "/etc/layergate/wasm/layergate_filter.wasm",
            ),
        };
        Settings {
            listen: self.listen.unwrap_or(listen),
            admin: self.admin,
            wasm_path: self.wasm.clone().unwrap_or_else(|| wasm.to_owned()),
            control: None,
            key_service: None,
            allow_endpoints,
            key_max_staleness_seconds: DEFAULT_MAX_STALENESS_SECONDS,
            limits: self.limits.limits(),
        }
    }
}

impl ServeArgs {
    /// The control API's and the key service's listeners, with the defaults of `mode`.
    pub fn listeners(&self, mode: Mode) -> (SocketAddr, SocketAddr) {
        let ip = match mode {
            Mode::Local => [127, 0, 0, 1],
            Mode::Pod => [0, 0, 0, 0],
        };
        (
            self.control.unwrap_or(SocketAddr::from((ip, 9902))),
            self.key_service.unwrap_or(SocketAddr::from((ip, 9903))),
        )
    }

    /// Logs through `tracing` on stderr, in the format asked for (`json_default` when none).
    pub fn init_logs(&self, json_default: bool) -> Result<()> {
        // A span's close is logged with its time: at debug, each step of every pass
        // (`pass::STEP`).
        let logs = tracing_subscriber::fmt()
            .with_max_level(self.log_level)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_writer(std::io::stderr)
            .with_target(false);
        let json = self.log.map_or(json_default, |f| f == LogFormat::Json);
        if json {
            logs.json().flatten_event(true).try_init()
        } else {
            logs.try_init()
        }
        .map_err(|e| anyhow::anyhow!(e))
        .context("starting the logs")
    }
}
