//! The command line: every subcommand, flag and `LAYERGATE_*` variable, declared once with
//! `clap` and parsed once into the operator's settings. `layergate-operator --help` and
//! `layergate-operator COMMAND --help` print what is here.

mod gateway;
mod istio;

pub use gateway::{GatewayArgs, UpstreamArgs};
pub use istio::IstioArgs;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use layergate_operator::render;
use layergate_operator::settings::FilterBuild;
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

    /// How long before its expiresAt an Active ApiKey is ExpiringSoon (a condition, and in
    /// kube mode a Warning Event once): a duration like 7d, 36h, 90m, or off.
    #[arg(long = "expiring-soon", env = "LAYERGATE_EXPIRING_SOON", value_name = "DURATION",
          default_value = "7d", value_parser = expiring_soon, global = true)]
    pub expiring_soon: ExpiringSoon,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The `ExpiringSoon` window, in seconds; `None`: off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiringSoon(pub Option<i64>);

/// `--expiring-soon`: the filter crate's durations, or `off`; the error names the variable.
fn expiring_soon(text: &str) -> Result<ExpiringSoon, String> {
    layergate_operator::validate::parse_window(text)
        .map(ExpiringSoon)
        .map_err(|m| format!("LAYERGATE_EXPIRING_SOON: {m} (a duration like 7d, 36h, 90m, or off)"))
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
            TargetKind::Istio => render::Target::Istio(layergate_operator::istio::IstioSettings {
                gateway_replicas: self.gateway.gateway_replicas,
                ..self.istio.settings(control, key_service)
            }),
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
    /// Usage status writes (`lastSeenAt`, `usage`) a second, at most.
    #[arg(long, env = "LAYERGATE_USAGE_WRITES_PER_SECOND", value_name = "N",
          default_value_t = layergate_operator::cluster::usage::DEFAULT_USAGE_WRITES_PER_SECOND as u64,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub usage_writes_per_second: u64,
    /// The pod's namespace, kube mode's default namespace.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS", hide = true)]
    pub pod_namespace: Option<String>,
}

impl RenderArgs {
    /// Refuses a filter build the gateway cannot run, and says why: the native build on
    /// Istio, on an Envoy other than 1.39.x or 1.40.x, or without the Envoy version to judge.
    pub fn check(&self) -> Result<()> {
        let build = self.gateway.build();
        if build == FilterBuild::Native && self.target == TargetKind::Istio {
            anyhow::bail!(
                "Istio loads the filter as a WasmPlugin: --target istio needs --filter wasm"
            );
        }
        match (&self.gateway.envoy_version, build) {
            (Some(version), build) => build.serves(version).map_err(anyhow::Error::msg),
            (None, FilterBuild::Native) => anyhow::bail!(
                "--filter native needs --envoy-version (LAYERGATE_ENVOY_VERSION): the native build loads only on Envoy 1.39.x and 1.40.x"
            ),
            (None, FilterBuild::Wasm) => Ok(()),
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
