//! The demo fixture as running processes: two devstores and Envoy with the filter, configured
//! from `envoy/demo/` (`make run`), or on free ports for tests ([`Demo::start`]).

use crate::devstore::DevStore;
use crate::envoy::{Cluster, Envoy, Filter, Gateway};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;

/// `primary`'s devstore key.
pub const PRIMARY_KEY: &str = "tpuf-primary-dev-key";
/// `archive`'s devstore key.
pub const ARCHIVE_KEY: &str = "tpuf-archive-dev-key";

/// The demo's fixed addresses (`make run`).
pub const LISTEN: &str = "127.0.0.1:8080";
/// Admin address of `make run`.
pub const ADMIN: &str = "127.0.0.1:9901";
/// `primary` devstore address of `make run`.
pub const PRIMARY_ADDR: &str = "127.0.0.1:18081";
/// The operator's control API in `make run`.
pub const CONTROL: &str = "127.0.0.1:9902";
/// The operator's key service (its own listener) of `make run`.
pub const KEY_SERVICE: &str = "127.0.0.1:9903";
/// `archive` devstore address of `make run`.
pub const ARCHIVE_ADDR: &str = "127.0.0.1:18082";

/// The demo filter configuration (rendered by the operator from `envoy/demo/manifests/`,
/// `make envoy-demo`), compacted to one line.
pub fn filter_config() -> Result<String> {
    let path = crate::paths::demo_filter_config();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str::<serde_json::Value>(&text)?.to_string())
}

/// The demo gateway with the given addresses, filter and filter config.
pub fn gateway(
    listen: SocketAddr,
    admin: SocketAddr,
    primary: SocketAddr,
    archive: SocketAddr,
    filter: Filter,
    config: String,
) -> Gateway {
    Gateway {
        listen,
        admin,
        filter,
        filter_config: Some(config),
        vm_env: Vec::new(),
        clusters: vec![
            Cluster {
                name: "store_primary".into(),
                address: primary.ip().to_string(),
                port: primary.port(),
                hostname: "primary.devstore.local".into(),
                tls: false,
                trusted_ca: None,
                label: layergate_operator::envoy::store_label("primary"),
            },
            Cluster {
                name: "store_archive".into(),
                address: archive.ip().to_string(),
                port: archive.port(),
                hostname: "archive.devstore.local".into(),
                tls: false,
                trusted_ca: None,
                label: layergate_operator::envoy::store_label("archive"),
            },
        ],
        buffer_limit_bytes: layergate_operator::envoy::DEFAULT_BUFFER_LIMIT_BYTES,
        access_log_path: None,
    }
}

/// A fresh copy of the demo manifests under the temp directory, with the stores' endpoints
/// pointing at the given devstores; returns (manifest directory, output directory).
pub fn manifests_for(
    tag: &str,
    primary: &DevStore,
    archive: &DevStore,
) -> Result<(PathBuf, PathBuf)> {
    let work = std::env::temp_dir().join(format!("layergate-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (dir, out) = (work.join("manifests"), work.join("out"));
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(crate::paths::repo_root().join("envoy/demo/manifests"))? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?
            .replace("http://127.0.0.1:18081", &primary.url())
            .replace("http://127.0.0.1:18082", &archive.url());
        std::fs::write(
            dir.join(path.file_name().context("manifest file name")?),
            text,
        )?;
    }
    Ok((dir, out))
}

/// Operator settings for tests: any free ports, the built filter.
pub fn test_settings(control: Option<SocketAddr>) -> Result<layergate_operator::output::Settings> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(layergate_operator::output::Settings {
        listen: any,
        admin: any,
        filter: Default::default(),
        wasm_path: crate::paths::wasm_path()?.to_string_lossy().into_owned(),
        control: control.map(|a| (a.ip().to_string(), a.port())),
        key_service: None,
        allow_endpoints: Default::default(),
        key_max_staleness_seconds: layergate_operator::output::DEFAULT_MAX_STALENESS_SECONDS,
        gateway_replicas: 1,
        limits: Default::default(),
        access_log_path: None,
    })
}

/// The demo running: devstores and Envoy, stopped on drop.
pub struct Demo {
    /// Envoy (drops first: fields drop in order).
    pub envoy: Envoy,
    /// `primary`'s devstore.
    pub primary: DevStore,
    /// `archive`'s devstore.
    pub archive: DevStore,
}

impl Demo {
    /// Starts the demo on free loopback ports with the given filter config (tests), with the
    /// filter build under test ([`Filter::under_test`]).
    pub fn start_with(config: String, vm_env: Vec<(String, String)>) -> Result<Demo> {
        Demo::start_filter(Filter::under_test()?, config, vm_env)
    }

    /// [`Demo::start_with`] with a given filter build.
    pub fn start_filter(
        filter: Filter,
        config: String,
        vm_env: Vec<(String, String)>,
    ) -> Result<Demo> {
        Demo::start_logged(filter, config, vm_env, None)
    }

    /// [`Demo::start_filter`], Envoy also writing its audit lines to `access_log`.
    pub fn start_logged(
        filter: Filter,
        config: String,
        vm_env: Vec<(String, String)>,
        access_log: Option<&std::path::Path>,
    ) -> Result<Demo> {
        let primary = DevStore::start(PRIMARY_KEY)?;
        let archive = DevStore::start(ARCHIVE_KEY)?;
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut gw = gateway(any, any, primary.addr(), archive.addr(), filter, config);
        gw.vm_env = vm_env;
        gw.access_log_path = access_log.map(|p| p.to_string_lossy().into_owned());
        let envoy = Envoy::start(&gw)?;
        Ok(Demo {
            envoy,
            primary,
            archive,
        })
    }

    /// Starts the demo fixture on free ports (tests).
    pub fn start() -> Result<Demo> {
        Demo::start_with(filter_config()?, Vec::new())
    }

    /// Starts `make run`'s demo: fixed ports; the operator renders `envoy/demo/manifests/`
    /// into `.run/` and keeps re-rendering it when a manifest changes, and Envoy hot-reloads.
    pub fn start_from_manifests() -> Result<Demo> {
        let wasm = crate::paths::wasm_path()?;
        let primary = DevStore::start_on(PRIMARY_ADDR.parse()?, PRIMARY_KEY)?;
        let archive = DevStore::start_on(ARCHIVE_ADDR.parse()?, ARCHIVE_KEY)?;
        let root = crate::paths::repo_root();
        let (manifests, out) = (root.join("envoy/demo/manifests"), root.join(".run"));
        let settings = layergate_operator::output::Settings {
            listen: LISTEN.parse()?,
            admin: ADMIN.parse()?,
            filter: Default::default(),
            wasm_path: wasm.to_string_lossy().into_owned(),
            control: Some((
                "127.0.0.1".to_owned(),
                CONTROL.parse::<SocketAddr>()?.port(),
            )),
            key_service: Some((
                "127.0.0.1".to_owned(),
                KEY_SERVICE.parse::<SocketAddr>()?.port(),
            )),
            allow_endpoints: Default::default(),
            key_max_staleness_seconds: layergate_operator::output::DEFAULT_MAX_STALENESS_SECONDS,
            gateway_replicas: 1,
            limits: Default::default(),
            // `make run`'s audit trail, one JSON object a line (stdout has it too).
            access_log_path: Some(root.join(".run/audit.log").to_string_lossy().into_owned()),
        };
        let source = std::sync::Arc::new(layergate_operator::source::DirSource::new(
            manifests, out, settings,
        ));
        source.refresh()?;
        let api = std::sync::Arc::new(layergate_operator::api::Api::new(
            source.clone(),
            layergate_operator::api::DEFAULT_AUTHENTICATE_PER_MINUTE,
        ));
        use layergate_operator::api::Role;
        for (role, addr) in [(Role::Control, CONTROL), (Role::Keys, KEY_SERVICE)] {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("binding the {role:?} listener on {addr}: {e}"))?;
            let api = api.clone();
            std::thread::Builder::new()
                .name(format!("{role:?}"))
                .spawn(move || {
                    if let Err(e) = api.serve_blocking(listener, role, std::future::pending()) {
                        eprintln!("layergate-operator: {role:?} listener stopped: {e:#}");
                    }
                })?;
        }
        std::thread::Builder::new()
            .name("operator".into())
            .spawn(move || {
                if let Err(e) = source.watch() {
                    eprintln!("layergate-operator stopped: {e:#}");
                }
            })?;
        let yaml = std::fs::read_to_string(root.join(".run/bootstrap.yaml"))
            .context("reading .run/bootstrap.yaml")?;
        let envoy = Envoy::start_yaml(&yaml, &root)?;
        Ok(Demo {
            envoy,
            primary,
            archive,
        })
    }

    /// The gateway listener.
    pub fn addr(&self) -> SocketAddr {
        self.envoy.addr
    }

    /// Requests each devstore has received so far (primary, archive).
    pub fn store_counts(&self) -> (usize, usize) {
        (self.primary.request_count(), self.archive.request_count())
    }
}
