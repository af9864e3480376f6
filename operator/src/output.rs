//! Writing a rendering to a directory for Envoy's file-based dynamic config: each file is
//! written beside its final name and renamed over it, so Envoy (which watches the directory)
//! only ever reads complete files; the clusters are replaced before the listener that names
//! them. Files holding credentials are created mode 0600.

use crate::envoy;
use crate::manifests::{Objects, DEFAULT_NAMESPACE};
use crate::render::{self, RenderOptions};
use crate::validate::Validation;
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
}

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

/// Renders and writes `layergate.json`, `cds.yaml`, `lds.yaml` and `bootstrap.yaml` into
/// `out`; returns the files written. Nothing is written when the rendering is refused.
pub fn write(v: &Validation, out: &Path, settings: &Settings) -> Result<Vec<PathBuf>> {
    let config = render::filter_config(v, &RenderOptions::default())?;
    let listener = envoy::Listener {
        listen: settings.listen,
        wasm_path: settings.wasm_path.clone(),
        filter_config: Some(serde_json::to_string(&config)?),
        vm_env: Vec::new(),
        buffer_limit_bytes: envoy::DEFAULT_BUFFER_LIMIT_BYTES,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let files = [
        (
            "layergate.json",
            serde_json::to_string_pretty(&config)? + "\n",
        ),
        ("cds.yaml", envoy::cds(&envoy::clusters_for(v))),
        ("lds.yaml", envoy::lds(&listener)),
        (
            "bootstrap.yaml",
            envoy::dynamic_bootstrap(settings.admin, &out),
        ),
    ];
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
