//! The real Envoy, for end-to-end tests and `make run`: a pure renderer of the gateway
//! bootstrap ([`Gateway::render`]) and a launcher ([`Envoy::start`]) that waits until the
//! listener is live and kills the process on drop.
//!
//! `envoy/demo/envoy.yaml` is this renderer's output for the demo fixture; a test keeps the
//! two in sync.

use crate::http::Request;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// One upstream cluster (a store, the app or the control API).
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Cluster name (the filter writes it to `x-layergate-cluster`).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Host name `auto_host_rewrite` puts in `:authority`.
    pub hostname: String,
}

/// Everything the gateway bootstrap depends on.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Listener address (port 0: any free port, read back after start).
    pub listen: SocketAddr,
    /// Admin address (port 0 allowed).
    pub admin: SocketAddr,
    /// The filter `.wasm` (absolute, or relative to Envoy's working directory).
    pub wasm_path: PathBuf,
    /// The filter configuration JSON; `None` renders Envoy without the wasm filter.
    pub filter_config: Option<String>,
    /// The wasm VM's environment (`vm_config.environment_variables.key_values`).
    pub vm_env: Vec<(String, String)>,
    /// Upstream clusters.
    pub clusters: Vec<Cluster>,
    /// Listener `per_connection_buffer_limit_bytes`: must cover the inspection limit.
    pub buffer_limit_bytes: u64,
}

/// JSON string quoting is valid YAML double-quoted scalar syntax.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

impl Gateway {
    /// A gateway on loopback with any free ports, the built filter and the given config.
    pub fn local(
        wasm_path: PathBuf,
        filter_config: String,
        clusters: Vec<Cluster>,
        vm_env: Vec<(String, String)>,
    ) -> Gateway {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        Gateway {
            listen: any,
            admin: any,
            wasm_path,
            filter_config: Some(filter_config),
            vm_env,
            clusters,
            buffer_limit_bytes: 17 * 1024 * 1024,
        }
    }

    /// Renders the bootstrap YAML (static resources).
    pub fn render(&self) -> String {
        let filter = match &self.filter_config {
            None => String::new(),
            Some(config) => {
                let mut env = String::new();
                if !self.vm_env.is_empty() {
                    env.push_str("                  environment_variables:\n                    key_values:\n");
                    for (k, v) in &self.vm_env {
                        let _ = writeln!(env, "                      {}: {}", q(k), q(v));
                    }
                }
                // The config as a YAML block scalar, pretty-printed when it is JSON.
                let pretty = serde_json::from_str::<serde_json::Value>(config)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
                    .unwrap_or_else(|| config.clone());
                let mut value = String::new();
                for line in pretty.lines() {
                    let _ = writeln!(value, "                    {line}");
                }
                WASM_FILTER
                    .replace("{WASM}", &q(&self.wasm_path.to_string_lossy()))
                    .replace("{ENV}", &env)
                    .replace("{CONFIG}", &value)
            }
        };
        let mut clusters = String::new();
        for c in &self.clusters {
            clusters.push_str(
                &CLUSTER
                    .replace("{NAME}", &q(&c.name))
                    .replace("{HOST}", &q(&c.hostname))
                    .replace("{IP}", &c.addr.ip().to_string())
                    .replace("{PORT}", &c.addr.port().to_string()),
            );
        }
        BOOTSTRAP
            .replace("{ADMIN_IP}", &self.admin.ip().to_string())
            .replace("{ADMIN_PORT}", &self.admin.port().to_string())
            .replace("{LISTEN_IP}", &self.listen.ip().to_string())
            .replace("{LISTEN_PORT}", &self.listen.port().to_string())
            .replace("{BUFFER_LIMIT}", &self.buffer_limit_bytes.to_string())
            .replace("{WASM_FILTER}", &filter)
            .replace("{CLUSTERS}", &clusters)
    }
}

const BOOTSTRAP: &str = r#"# Rendered by layergate-tests (tests/src/envoy.rs); `make envoy-demo` regenerates the demo copy.
admin:
  address: {socket_address: {address: {ADMIN_IP}, port_value: {ADMIN_PORT}}}
static_resources:
  listeners:
  - name: layergate
    address: {socket_address: {address: {LISTEN_IP}, port_value: {LISTEN_PORT}}}
    # Body inspection buffers up to limits.inspectBodyBytes: Envoy's buffer must be larger.
    per_connection_buffer_limit_bytes: {BUFFER_LIMIT}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: layergate
          normalize_path: true
          merge_slashes: false
          # Escaped slashes reach the filter, which refuses them with a JSON error.
          path_with_escaped_slashes_action: KEEP_UNCHANGED
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format:
                text_format_source:
                  inline_string: "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\" %RESPONSE_CODE% %UPSTREAM_CLUSTER% %FILTER_STATE(wasm.layergate:PLAIN)%\n"
          route_config:
            name: layergate
            virtual_hosts:
            - name: layergate
              domains: ["*"]
              routes:
              # Requests whose body the filter inspects (namespace-restricted keys): the buffer
              # filter holds them back from the router until the filter has judged the body.
              - match:
                  prefix: "/"
                  headers: [{name: x-layergate-inspect, present_match: true}]
                route: {cluster_header: x-layergate-cluster, auto_host_rewrite: true, timeout: 60s}
                request_headers_to_remove: [x-layergate-cluster, x-layergate-inspect]
              # Everything else streams. The filter writes the store's cluster; without the
              # filter there is no cluster to route to.
              - match: {prefix: "/"}
                route: {cluster_header: x-layergate-cluster, auto_host_rewrite: true, timeout: 60s}
                request_headers_to_remove: [x-layergate-cluster]
                typed_per_filter_config:
                  envoy.filters.http.buffer:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute
                    disabled: true
          http_filters:
{WASM_FILTER}          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: {BUFFER_LIMIT}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{CLUSTERS}"#;

const WASM_FILTER: &str = r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: layergate
                root_id: layergate
                # A panic answers 503 briefly and reloads the VM; never FAIL_OPEN.
                failure_policy: FAIL_RELOAD
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {local: {filename: {WASM}}}
{ENV}                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: |
{CONFIG}"#;

const CLUSTER: &str = r#"  - name: {NAME}
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: {NAME}
      endpoints:
      - lb_endpoints:
        - endpoint:
            hostname: {HOST}
            address: {socket_address: {address: {IP}, port_value: {PORT}}}
"#;

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    /// The gateway listener.
    pub addr: SocketAddr,
    /// The admin endpoint.
    pub admin: SocketAddr,
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

fn scratch_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "layergate-envoy-{}-{}",
        std::process::id(),
        INSTANCE.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `envoy --mode validate` on a bootstrap (relative paths resolve from the repo root).
pub fn validate(yaml: &str) -> Result<()> {
    let dir = scratch_dir()?;
    let file = dir.join("envoy.yaml");
    std::fs::write(&file, yaml)?;
    let out = Command::new(crate::paths::envoy_bin()?)
        .current_dir(crate::paths::repo_root())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&file)
        .output()
        .context("running envoy --mode validate")?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!(
            "envoy --mode validate refused the config:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Envoy {
    /// Starts Envoy (one worker) with the rendered bootstrap and waits until it is live.
    pub fn start(gateway: &Gateway) -> Result<Envoy> {
        Envoy::start_yaml(&gateway.render(), &crate::paths::repo_root())
    }

    /// Starts Envoy from a bootstrap, in `cwd` (relative paths in the YAML resolve there).
    pub fn start_yaml(yaml: &str, cwd: &Path) -> Result<Envoy> {
        let bin = crate::paths::envoy_bin()?;
        let dir = scratch_dir()?;
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, yaml)?;
        let admin_file = dir.join("admin.addr");
        let log = std::fs::File::create(dir.join("envoy.log"))?;
        let child = Command::new(bin)
            .current_dir(cwd)
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warn",
                "--file-flush-interval-msec",
                "100",
            ])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting envoy")?;
        let mut envoy = Envoy {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        envoy.wait_live(&admin_file).with_context(|| {
            format!("Envoy did not become ready; its log:\n{}", envoy.log_tail())
        })?;
        Ok(envoy)
    }

    fn wait_live(&mut self, admin_file: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("envoy exited with {status}");
            }
            if let Some(admin) = std::fs::read_to_string(admin_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                self.admin = admin;
                if let Ok(r) = Request::new("GET", "/ready").send(admin) {
                    if r.status == 200 {
                        let listeners = Request::new("GET", "/listeners?format=json")
                            .send(admin)?
                            .json()?;
                        let sa =
                            &listeners["listener_statuses"][0]["local_address"]["socket_address"];
                        let port = sa["port_value"].as_u64().context("listener has no port")?;
                        let ip: std::net::IpAddr =
                            sa["address"].as_str().unwrap_or("127.0.0.1").parse()?;
                        self.addr = SocketAddr::new(ip, u16::try_from(port)?);
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("not ready after 30 s")
    }

    /// GET on the admin endpoint, as text.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        Ok(Request::new("GET", path).send(self.admin)?.text())
    }

    /// A counter or gauge by its exact name (`layergate.allowed`), if defined.
    pub fn stat(&self, name: &str) -> Result<Option<u64>> {
        let text = self.admin_get("/stats")?;
        Ok(text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        }))
    }

    /// Envoy's log so far (stdout access log and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
