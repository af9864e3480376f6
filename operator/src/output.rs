//! Writing a rendering to a directory for Envoy's file-based dynamic config: each file is
//! written beside its final name and renamed over it, so Envoy (which watches the directory)
//! only ever reads complete files; the clusters are replaced before the listener that names
//! them. Files holding credentials are created mode 0600.

use crate::envoy;
use crate::manifests::{Objects, DEFAULT_NAMESPACE};
use crate::render::{self, RenderOptions};
use crate::validate::Validation;
use anyhow::{bail, Context, Result};
use layergate_filter::config::{Credential, FilterConfig, KeyServiceConfig};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

/// Where the gateway listens and finds the filter.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Gateway listener.
    pub listen: SocketAddr,
    /// Envoy admin.
    pub admin: SocketAddr,
    /// The filter `.wasm` as Envoy sees it.
    pub wasm_path: String,
    /// The operator's control API (host, port), when it serves one: the gateway routes
    /// `/v2/keys…` and `/v2/vectorstores…` there (cluster `layergate_control`). An IP address
    /// or a DNS name (in a cluster, the operator's Service).
    pub control: Option<(String, u16)>,
    /// Endpoints store credentials may be sent to (`--allow-endpoint` widens the default).
    pub allow_endpoints: crate::endpoint::Allowlist,
    /// Timeouts and circuit breakers of the store clusters and their routes.
    pub limits: envoy::UpstreamLimits,
}

/// Cluster name of the operator's control API.
pub const CONTROL_CLUSTER: &str = "layergate_control";

/// The namespaces the objects are in.
pub fn namespaces(objects: &Objects) -> BTreeSet<String> {
    let ns = |m: &kube::core::ObjectMeta| {
        m.namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
    };
    objects
        .stores
        .iter()
        .map(|o| ns(&o.metadata))
        .chain(objects.indexes.iter().map(|o| ns(&o.metadata)))
        .chain(objects.keys.iter().map(|o| ns(&o.metadata)))
        .collect()
}

/// The single namespace the objects are in, or the one asked for.
pub fn namespace(objects: &Objects, asked: Option<&str>) -> Result<String> {
    if let Some(ns) = asked {
        return Ok(ns.to_owned());
    }
    let all = namespaces(objects);
    match all.len() {
        1 => Ok(all.into_iter().next().unwrap_or_default()),
        0 => bail!("no VectorStore, Index or ApiKey found"),
        _ => bail!("the manifests span namespaces {all:?}; pick one"),
    }
}

/// The files a rendering consists of, in the order they are replaced.
pub const FILES: [&str; 4] = ["layergate.json", "cds.json", "lds.json", "bootstrap.yaml"];

/// A rendering in memory: the filter configuration and the gateway's files.
#[derive(Debug, Clone)]
pub struct Rendering {
    /// The filter configuration (also inside the listener).
    pub config: FilterConfig,
    /// `layergate.json`, `cds.json`, `lds.json`, in the order they must be replaced.
    pub files: Vec<(&'static str, String)>,
}

/// Renders the filter configuration, CDS and LDS for a validation, without a key service:
/// minted keys inline (an offline `render`). See [`render_keyed`].
pub fn render(v: &Validation, settings: &Settings) -> Result<Rendering> {
    render_keyed(v, settings, None)
}

/// Renders the filter configuration, CDS and LDS for a validation. With a control API
/// (`settings.control`) and the `gateway` credential, the filter syncs minted keys from the
/// operator's key service over the control cluster (`keyService`, the credential inline: the
/// files are 0600 / in the rendering Secret) and the rendering carries no `apiKeys`, so its
/// size does not grow with them. Fails (and nothing may be published) when the filter would
/// refuse the configuration.
pub fn render_keyed(
    v: &Validation,
    settings: &Settings,
    gateway: Option<&str>,
) -> Result<Rendering> {
    let key_service = match (&settings.control, gateway) {
        (Some(_), Some(credential)) => Some(KeyServiceConfig {
            cluster: CONTROL_CLUSTER.to_owned(),
            authority: None,
            path: crate::keyservice::SYNC_PATH.to_owned(),
            credential: Credential::Inline(credential.to_owned()),
            max_staleness_seconds: 300,
            poll_seconds: crate::keyservice::MAX_WAIT.as_secs(),
        }),
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
    let mut clusters = envoy::clusters_for(v);
    if let Some((host, port)) = &settings.control {
        clusters.push(envoy::Cluster {
            name: CONTROL_CLUSTER.into(),
            address: host.clone(),
            port: *port,
            hostname: "layergate-control".into(),
            tls: false,
            trusted_ca: None,
            label: "the operator's control API".into(),
        });
    }
    let listener = envoy::Listener {
        listen: settings.listen,
        wasm_path: settings.wasm_path.clone(),
        filter_config: Some(serde_json::to_string(&config)?),
        vm_env: Vec::new(),
        buffer_limit_bytes: envoy::DEFAULT_BUFFER_LIMIT_BYTES,
    };
    let files = vec![
        (
            "layergate.json",
            serde_json::to_string_pretty(&config)? + "\n",
        ),
        ("cds.json", envoy::cds_with(&clusters, &settings.limits)),
        ("lds.json", envoy::lds_with(&listener, &settings.limits)),
    ];
    Ok(Rendering { config, files })
}

/// Renders and writes [`FILES`] into `out`; returns the filter configuration written.
/// Nothing is written when the rendering is refused.
pub fn write(v: &Validation, out: &Path, settings: &Settings) -> Result<FilterConfig> {
    write_keyed(v, out, settings, None)
}

/// [`write`] with the key service (see [`render_keyed`]).
pub fn write_keyed(
    v: &Validation,
    out: &Path,
    settings: &Settings,
    gateway: Option<&str>,
) -> Result<FilterConfig> {
    let Rendering { config, mut files } = render_keyed(v, settings, gateway)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    files.push((
        "bootstrap.yaml",
        envoy::dynamic_bootstrap(settings.admin, &out),
    ));
    for (name, text) in files {
        write_private(&out.join(name), &text)?;
    }
    Ok(config)
}

/// Writes a file only its owner can read, replacing it atomically.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
