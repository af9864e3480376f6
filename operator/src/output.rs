//! The directory writer of a [`Rendering`] (offline `render`, directory mode), and the gateway
//! settings a rendering takes. Envoy's file-based dynamic config: each file is written beside
//! its final name and renamed over it, so Envoy (which watches the directory) only ever reads
//! complete files; the clusters are replaced before the listener that names them. Files are
//! created mode 0600.

use crate::files::write_private;
use crate::manifests::{Objects, DEFAULT_NAMESPACE};
use crate::render::{envoy, Output, Rendering};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub use crate::settings::{
    Settings, CONTROL_CLUSTER, DEFAULT_MAX_STALENESS_SECONDS, KEY_SERVICE_CLUSTER,
};

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
            ..
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
