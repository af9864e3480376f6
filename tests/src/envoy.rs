//! The real Envoy, for end-to-end tests and `make run`: the gateway bootstrap
//! ([`Gateway::render`], by the operator's Envoy renderer) and a launcher ([`Envoy::start`])
//! that waits until the listener is live and kills the process on drop.
//!
//! `envoy/demo/envoy.yaml` is the rendering for the demo fixture; a test keeps the two in sync.

use crate::http::Request;
use anyhow::{bail, Context, Result};
use layergate_operator::envoy;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use layergate_operator::envoy::{Cluster, FilterBuild};

/// A built filter: which build, and its file (absolute, or relative to Envoy's working
/// directory).
#[derive(Debug, Clone)]
pub struct Filter {
    /// The wasm module or the dynamic module.
    pub build: FilterBuild,
    /// The `.wasm` or the `.so`.
    pub path: PathBuf,
}

impl Filter {
    /// The build the end-to-end tests run: `LAYERGATE_FILTER=wasm` (the default) or `native`
    /// (the dynamic module: run it with an Envoy 1.39.x or 1.40.x as `ENVOY_BIN`).
    pub fn under_test() -> Result<Filter> {
        match std::env::var("LAYERGATE_FILTER").as_deref() {
            Err(_) | Ok("") | Ok("wasm") => Filter::wasm(),
            Ok("native") => Filter::native(),
            Ok(other) => bail!("LAYERGATE_FILTER={other}: expected wasm or native"),
        }
    }

    /// The built wasm module (`make wasm`).
    pub fn wasm() -> Result<Filter> {
        Ok(Filter {
            build: FilterBuild::Wasm,
            path: crate::paths::wasm_path()?,
        })
    }

    /// The built dynamic module (`make native`).
    pub fn native() -> Result<Filter> {
        Ok(Filter {
            build: FilterBuild::Native,
            path: crate::paths::native_path()?,
        })
    }
}

/// Everything the gateway bootstrap depends on.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Listener address (port 0: any free port, read back after start).
    pub listen: SocketAddr,
    /// Admin address (port 0 allowed).
    pub admin: SocketAddr,
    /// The filter: which build, and its file.
    pub filter: Filter,
    /// The filter configuration JSON; `None` renders Envoy without the filter.
    pub filter_config: Option<String>,
    /// The filter's environment (store credentials named `{env: …}`): the wasm VM's
    /// (`vm_config.environment_variables`), or Envoy's own for the native build.
    pub vm_env: Vec<(String, String)>,
    /// Upstream clusters.
    pub clusters: Vec<Cluster>,
    /// Listener `per_connection_buffer_limit_bytes`: must cover the inspection limit.
    pub buffer_limit_bytes: u64,
    /// A file Envoy also writes the audit lines to (they always go to stdout).
    pub access_log_path: Option<String>,
}

impl Gateway {
    /// The listener, as the operator's Envoy renderer describes it.
    pub fn listener(&self) -> envoy::Listener {
        envoy::Listener {
            listen: self.listen,
            build: self.filter.build,
            filter_path: self.filter.path.to_string_lossy().into_owned(),
            filter_config: self.filter_config.clone(),
            vm_env: match self.filter.build {
                FilterBuild::Wasm => self.vm_env.clone(),
                FilterBuild::Native => Vec::new(),
            },
            buffer_limit_bytes: self.buffer_limit_bytes,
            access_log_path: self.access_log_path.clone(),
        }
    }

    /// Renders the bootstrap with the operator's own Envoy renderer (static resources).
    pub fn render(&self) -> String {
        envoy::static_bootstrap(self.admin, &self.listener(), &self.clusters)
    }

    /// [`Gateway::render`] with other upstream timeouts and circuit breakers.
    pub fn render_with(&self, limits: &envoy::UpstreamLimits) -> String {
        envoy::static_bootstrap_with(self.admin, &self.listener(), &self.clusters, limits)
    }

    /// The environment Envoy itself needs: the filter's, for the native build.
    pub fn process_env(&self) -> Vec<(String, String)> {
        match self.filter.build {
            FilterBuild::Wasm => Vec::new(),
            FilterBuild::Native => self.vm_env.clone(),
        }
    }
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    /// The filter build it runs (names its counters).
    build: FilterBuild,
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

/// The Envoy binary's version (`envoy --version`: `…/1.40.0/Clean/RELEASE/…`), as
/// (major, minor, patch).
pub fn version() -> Result<(u32, u32, u32)> {
    let out = Command::new(crate::paths::envoy_bin()?)
        .arg("--version")
        .output()
        .context("running envoy --version")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split('/')
        .find_map(|part| {
            let mut n = part.split('.').map(|x| x.parse::<u32>().ok());
            match (n.next(), n.next(), n.next(), n.next()) {
                (Some(Some(a)), Some(Some(b)), Some(Some(c)), None) => Some((a, b, c)),
                _ => None,
            }
        })
        .with_context(|| format!("no version in `envoy --version`: {text}"))
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
        Envoy::start_gateway_yaml(gateway, &gateway.render())
    }

    /// Starts Envoy (one worker) for `gateway` from a bootstrap rendered for it (adjusted by
    /// the caller): the gateway's filter build and environment.
    pub fn start_gateway_yaml(gateway: &Gateway, yaml: &str) -> Result<Envoy> {
        let mut envoy = Envoy::launch(
            yaml,
            &crate::paths::repo_root(),
            1,
            &[],
            &gateway.process_env(),
        )?;
        envoy.build = gateway.filter.build;
        Ok(envoy)
    }

    /// [`Envoy::start_gateway_yaml`] with `workers` worker threads.
    pub fn start_gateway_workers(gateway: &Gateway, yaml: &str, workers: usize) -> Result<Envoy> {
        let mut envoy = Envoy::launch(
            yaml,
            &crate::paths::repo_root(),
            workers,
            &[],
            &gateway.process_env(),
        )?;
        envoy.build = gateway.filter.build;
        Ok(envoy)
    }

    /// Starts Envoy from a bootstrap, in `cwd` (relative paths in the YAML resolve there).
    pub fn start_yaml(yaml: &str, cwd: &Path) -> Result<Envoy> {
        Envoy::start_yaml_workers(yaml, cwd, 1)
    }

    /// [`Envoy::start_yaml`] with `workers` worker threads (`--concurrency`).
    pub fn start_yaml_workers(yaml: &str, cwd: &Path, workers: usize) -> Result<Envoy> {
        Envoy::start_yaml_args(yaml, cwd, workers, &[])
    }

    /// [`Envoy::start_yaml_workers`] with more command-line arguments (`--drain-strategy`).
    pub fn start_yaml_args(yaml: &str, cwd: &Path, workers: usize, args: &[&str]) -> Result<Envoy> {
        Envoy::launch(yaml, cwd, workers, args, &[])
    }

    fn launch(
        yaml: &str,
        cwd: &Path,
        workers: usize,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<Envoy> {
        let bin = crate::paths::envoy_bin()?;
        let dir = scratch_dir()?;
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, yaml)?;
        let admin_file = dir.join("admin.addr");
        let log = std::fs::File::create(dir.join("envoy.log"))?;
        // `LAYERGATE_ENVOY_CPU=N` pins Envoy to one core (benchmarks), via util-linux taskset.
        let mut command = match std::env::var("LAYERGATE_ENVOY_CPU") {
            Ok(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu]).arg(bin);
                c
            }
            Err(_) => Command::new(bin),
        };
        let child = command
            .current_dir(cwd)
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", &workers.to_string()])
            .args([
                "--disable-hot-restart",
                "--log-level",
                std::env::var("LAYERGATE_ENVOY_LOG")
                    .as_deref()
                    .unwrap_or("warn"),
                "--file-flush-interval-msec",
                "100",
            ])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
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
            build: FilterBuild::Wasm,
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

    /// The Envoy process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

    /// A filter counter by its name (`layergate.allowed`), under the prefix its build's
    /// counters get in `/stats`.
    pub fn filter_stat(&self, name: &str) -> Result<Option<u64>> {
        self.stat(&format!("{}{name}", self.build.stats_prefix()))
    }

    /// The filter build this Envoy runs.
    pub fn build(&self) -> FilterBuild {
        self.build
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
