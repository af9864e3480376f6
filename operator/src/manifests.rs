//! A directory of manifests (VectorStores, Indexes, ApiKeys and the Secrets they reference) as
//! typed objects. A document that cannot be read is reported with its file, never a crash.

use crate::crd::{ApiKey, Index, VectorStore};
use anyhow::{Context, Result};
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Secret data by (namespace, name) → key → value. Shared: a kube-mode pass takes each
/// Secret's data from the watch-fed cache without copying it, and an unchanged Secret is the
/// same allocation from one pass to the next ([`std::sync::Arc::ptr_eq`]).
pub type Secrets = BTreeMap<(String, String), Arc<BTreeMap<String, String>>>;

/// Everything read from a directory.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    /// VectorStores (shared with the kube-mode caches, as every object here: an object that
    /// did not change between two passes is the same allocation in both).
    pub stores: Vec<Arc<VectorStore>>,
    /// Indexes.
    pub indexes: Vec<Arc<Index>>,
    /// ApiKeys.
    pub keys: Vec<Arc<ApiKey>>,
    /// Secrets (decoded).
    pub secrets: Secrets,
    /// When minted tokens were minted (Unix seconds), by Secret (namespace, name).
    pub minted_at: BTreeMap<(String, String), i64>,
    /// What token Secrets record of their keys' rotations, by Secret (namespace, name).
    pub rotations: BTreeMap<(String, String), crate::keys::Rotation>,
    /// What marks each Secret as an ApiKey token, by (namespace, name).
    pub secret_marks: BTreeMap<(String, String), SecretMarks>,
    /// Secrets defined by more than one document: none of them may serve as a token.
    pub duplicate_secrets: std::collections::BTreeSet<(String, String)>,
    /// The file each Secret was read from, by (namespace, name) (directory mode).
    pub secret_files: BTreeMap<(String, String), String>,
    /// The file each ApiKey was read from, by (namespace, name).
    pub key_files: BTreeMap<(String, String), String>,
    /// Documents that could not be used: `file: what is wrong`.
    pub problems: Vec<String>,
    /// Secrets that could not be read or created (kube mode), by (namespace, name): the
    /// error, which becomes the referring object's condition (the rest still publishes).
    pub secret_errors: BTreeMap<(String, String), String>,
    /// What was read but left out, and why (other kinds of object, kustomize features not
    /// applied): `file: what`. Not errors; the CLI prints them on stderr.
    pub skipped: Vec<String>,
}

/// What may make a Secret an ApiKey's token: its [`crate::keys::TOKEN_LABEL`] label and the
/// uids of the ApiKeys that own it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SecretMarks {
    /// The value of the `hevlayer.com/apikey-token` label (an ApiKey name).
    pub token_label: Option<String>,
    /// uids of owner references of kind ApiKey.
    pub apikey_owners: Vec<String>,
}

impl SecretMarks {
    /// The marks of a Secret's metadata.
    pub fn of(meta: &kube::core::ObjectMeta) -> SecretMarks {
        SecretMarks {
            token_label: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::keys::TOKEN_LABEL).cloned()),
            apikey_owners: meta
                .owner_references
                .iter()
                .flatten()
                .filter(|o| o.kind == "ApiKey")
                .map(|o| o.uid.clone())
                .collect(),
        }
    }
}

#[derive(Deserialize)]
struct SecretDoc {
    metadata: Meta,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default, rename = "stringData")]
    string_data: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The namespace objects without one are read into (kubectl's `default`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The names kustomize reads a directory's kustomization from.
pub const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Kustomization fields that change nothing the operator reads.
const KUSTOMIZE_NEUTRAL: [&str; 7] = [
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "namespace",
    "commonAnnotations",
    "labels",
];

/// How deep kustomize bases may nest (a cycle stops here).
const MAX_KUSTOMIZE_DEPTH: usize = 8;

/// Reads a directory of manifests the way `kubectl apply -k` / `-f` would see it: with a
/// kustomization file, the files and directories its `resources` lists, each object put in its
/// `namespace`; without one, every `*.yaml` / `*.yml` file directly in `dir`, in name order.
/// Objects of other kinds (a Deployment beside the CRs) are skipped and listed in
/// [`Objects::skipped`], as are kustomize features that are not applied.
pub fn load_dir(dir: &Path) -> Result<Objects> {
    let mut objects = Objects::default();
    objects.load(dir, None, 0)?;
    Ok(objects)
}

impl Objects {
    fn load(&mut self, dir: &Path, namespace: Option<&str>, depth: usize) -> Result<()> {
        let kustomization = KUSTOMIZATION_FILES
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file());
        let Some(kfile) = kustomization else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("reading directory {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            files.sort();
            for file in files {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                self.add_yaml_in(&file.display().to_string(), &text, namespace);
            }
            return Ok(());
        };
        let source = kfile.display().to_string();
        if depth >= MAX_KUSTOMIZE_DEPTH {
            self.problems.push(format!(
                "{source}: kustomize bases nest deeper than {MAX_KUSTOMIZE_DEPTH} (a cycle?)"
            ));
            return Ok(());
        }
        let text = std::fs::read_to_string(&kfile).with_context(|| format!("reading {source}"))?;
        let k: serde_json::Value = match serde_yaml::from_str::<serde_yaml::Value>(&text)
            .map_err(anyhow::Error::from)
            .and_then(|v| Ok(serde_json::to_value(v)?))
        {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) => serde_json::json!({}),
            Err(e) => {
                self.problems.push(format!("{source}: not YAML: {e}"));
                return Ok(());
            }
        };
        for field in k.as_object().into_iter().flat_map(|m| m.keys()) {
            if !KUSTOMIZE_NEUTRAL.contains(&field.as_str()) {
                self.skipped.push(format!(
                    "{source}: `{field}` is not applied (render from `kubectl kustomize {}` output if it matters)",
                    dir.display()
                ));
            }
        }
        // An outer kustomization's namespace wins, as kustomize applies it last.
        let own = k["namespace"].as_str().map(str::to_owned);
        let namespace = namespace.map(str::to_owned).or(own);
        let resources = k["resources"].as_array().cloned().unwrap_or_default();
        for r in resources {
            let Some(r) = r.as_str() else {
                self.problems
                    .push(format!("{source}: resources: {r} is not a path"));
                continue;
            };
            if r.contains("://") || r.starts_with("github.com/") {
                self.skipped
                    .push(format!("{source}: remote resource {r} is not read"));
                continue;
            }
            let path = dir.join(r);
            if path.is_dir() {
                self.load(&path, namespace.as_deref(), depth + 1)?;
            } else {
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        self.add_yaml_in(&path.display().to_string(), &text, namespace.as_deref())
                    }
                    Err(e) => self.problems.push(format!("{source}: resource {r}: {e}")),
                }
            }
        }
        Ok(())
    }
}

impl Objects {
    /// Adds every document of a YAML stream; `source` names it in problems.
    pub fn add_yaml(&mut self, source: &str, text: &str) {
        self.add_yaml_in(source, text, None);
    }

    /// Adds every document of a YAML stream, each put in `namespace` if one is given (as a
    /// kustomization's `namespace` does).
    pub fn add_yaml_in(&mut self, source: &str, text: &str, namespace: Option<&str>) {
        // Documents are split on `---` lines and parsed one by one, so one broken document
        // neither hides the others nor stalls the reader.
        for (i, doc) in split_documents(text).into_iter().enumerate() {
            match serde_yaml::from_str::<serde_yaml::Value>(&doc) {
                Ok(serde_yaml::Value::Null) => {}
                Ok(v) => {
                    if let Err(e) = self.add_value(v, source, namespace) {
                        self.problems
                            .push(format!("{source}: document {}: {e:#}", i + 1));
                    }
                }
                Err(e) => self
                    .problems
                    .push(format!("{source}: document {}: not YAML: {e}", i + 1)),
            }
        }
    }

    fn add_value(
        &mut self,
        value: serde_yaml::Value,
        source: &str,
        namespace: Option<&str>,
    ) -> Result<()> {
        let mut json = serde_json::to_value(&value)?;
        if let (Some(ns), Some(meta)) = (namespace, json.get_mut("metadata")) {
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("namespace".into(), ns.into());
            }
        }
        let api_version = json["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = json["kind"].as_str().unwrap_or_default().to_owned();
        let with_ns = |mut meta: kube::core::ObjectMeta| {
            meta.namespace
                .get_or_insert_with(|| DEFAULT_NAMESPACE.to_owned());
            meta
        };
        match (api_version.as_str(), kind.as_str()) {
            ("hevlayer.com/v1alpha1", "VectorStore") => {
                let mut o: VectorStore = serde_json::from_value(json).context("invalid VectorStore")?;
                o.metadata = with_ns(o.metadata);
                self.stores.push(Arc::new(o));
            }
            ("hevlayer.com/v1", "Index") => {
                let mut o: Index = serde_json::from_value(json).context("invalid Index")?;
                o.metadata = with_ns(o.metadata);
                self.indexes.push(Arc::new(o));
            }
            ("hevlayer.com/v1alpha1", "ApiKey") => {
                let mut o: ApiKey = serde_json::from_value(json).context("invalid ApiKey")?;
                o.metadata = with_ns(o.metadata);
                let key = (o.metadata.namespace.clone().unwrap_or_default(), o.metadata.name.clone().unwrap_or_default());
                self.key_files.insert(key, source.to_owned());
                self.keys.push(Arc::new(o));
            }
            ("v1", "Secret") => {
                let s: SecretDoc = serde_json::from_value(json).context("invalid Secret")?;
                let mut data = BTreeMap::new();
                for (k, v) in s.data {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(v.trim())
                        .with_context(|| format!("Secret {}: data.{k} is not base64", s.metadata.name))?;
                    let text = String::from_utf8(bytes)
                        .with_context(|| format!("Secret {}: data.{k} is not UTF-8", s.metadata.name))?;
                    data.insert(k, text);
                }
                data.extend(s.string_data);
                let ns = s.metadata.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
                let key = (ns, s.metadata.name);
                let minted = s.metadata.annotations.get(crate::keys::MINTED_AT_ANNOTATION);
                if let Some(at) = minted.and_then(|t| layergate_filter::time::parse_rfc3339(t)) {
                    self.minted_at.insert(key.clone(), at);
                }
                if let Some(r) = crate::keys::Rotation::of(&s.metadata.annotations) {
                    self.rotations.insert(key.clone(), r);
                }
                self.secret_marks.insert(
                    key.clone(),
                    SecretMarks {
                        token_label: s.metadata.labels.get(crate::keys::TOKEN_LABEL).cloned(),
                        apikey_owners: Vec::new(),
                    },
                );
                if self.secret_files.insert(key.clone(), source.to_owned()).is_some() {
                    self.duplicate_secrets.insert(key.clone());
                }
                self.secrets.insert(key, Arc::new(data));
            }
            (group, _) if group.starts_with("hevlayer.com/") || kind.is_empty() => anyhow::bail!("unsupported object {api_version}/{kind} (expected hevlayer.com VectorStore, Index, ApiKey or v1 Secret)"),
            _ => {
                let name = json["metadata"]["name"].as_str().unwrap_or_default();
                self.skipped.push(format!(
                    "{source}: {api_version} {kind} {name} skipped (not a VectorStore, Index, ApiKey or Secret)"
                ));
            }
        }
        Ok(())
    }
}

/// Splits a YAML stream into documents at `---` lines (`---`, or `---` and a space and more:
/// a comment), whatever the line endings: the one splitter for reading manifests and for
/// rewriting them.
pub fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs
}
