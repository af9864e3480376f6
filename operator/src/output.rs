//! The directory writer of a [`Rendering`] (offline `render`, directory mode), and the gateway
//! settings a rendering takes. Envoy's file-based dynamic config: each file is written beside
//! its final name and renamed over it, so Envoy (which watches the directory) only ever reads
//! complete files; the clusters are replaced before the listener that names them. Files are
//! created mode 0600.

use crate::envoy;
use crate::manifests::{Objects, DEFAULT_NAMESPACE};
use crate::render::{Output, Rendering};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    pub limits: envoy::UpstreamLimits,
}

/// The default `keyService.maxStalenessSeconds` (SPEC §6: 5 minutes).
pub const DEFAULT_MAX_STALENESS_SECONDS: u64 = 300;

/// Cluster name of the operator's control API.
pub const CONTROL_CLUSTER: &str = "layergate_control";

/// Cluster name of the operator's key service listener.
pub const KEY_SERVICE_CLUSTER: &str = "layergate_keys";

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

/// The Envoy target's files, in the order they are replaced.
pub const FILES: [&str; 4] = ["layergate.json", "cds.json", "lds.json", "bootstrap.yaml"];

/// The Istio target's files.
pub const ISTIO_FILES: [&str; 2] = ["istio.yaml", "ingressgateway-patch.yaml"];

/// Writes a rendering into `out` (created if absent); returns the paths written, in order.
/// Envoy target: [`FILES`], mode 0600 (they hold credentials), each replaced atomically, the
/// clusters before the listener that names them; `bootstrap.yaml` watches `out`. Istio target:
/// [`ISTIO_FILES`] as YAML documents (no credentials in them).
pub fn write(r: &Rendering, out: &Path, settings: &Settings) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let files: Vec<(&str, String)> = match &r.output {
        Output::Envoy(files) => {
            let mut files = files.clone();
            files.push((
                "bootstrap.yaml",
                envoy::dynamic_bootstrap(settings.admin, &out),
            ));
            files
        }
        Output::Istio {
            resources,
            gateway_patch,
        } => {
            let yaml = |docs: &[serde_json::Value]| -> Result<String> {
                let mut text =
                    String::from("# Rendered by layergate-operator (render --target istio).\n");
                for d in docs {
                    text.push_str("---\n");
                    text.push_str(&serde_yaml::to_string(d)?);
                }
                Ok(text)
            };
            vec![
                (ISTIO_FILES[0], yaml(resources)?),
                (ISTIO_FILES[1], yaml(std::slice::from_ref(gateway_patch))?),
            ]
        }
    };
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out.join(name);
        write_private(&path, &text)?;
        written.push(path);
    }
    Ok(written)
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
