//! A directory of manifests (VectorStores, Indexes, ApiKeys and the Secrets they reference) as
//! typed objects. A document that cannot be read is reported with its file, never a crash.

use crate::crd::{ApiKey, Index, VectorStore};
use anyhow::{Context, Result};
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Secret data by (namespace, name) → key → value.
pub type Secrets = BTreeMap<(String, String), BTreeMap<String, String>>;

/// Everything read from a directory.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    /// VectorStores.
    pub stores: Vec<VectorStore>,
    /// Indexes.
    pub indexes: Vec<Index>,
    /// ApiKeys.
    pub keys: Vec<ApiKey>,
    /// Secrets (decoded).
    pub secrets: Secrets,
    /// When minted tokens were minted (Unix seconds), by Secret (namespace, name).
    pub minted_at: BTreeMap<(String, String), i64>,
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

/// Reads every `*.yaml` / `*.yml` file directly in `dir`, in name order.
pub fn load_dir(dir: &Path) -> Result<Objects> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut objects = Objects::default();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        objects.add_yaml(&file.display().to_string(), &text);
    }
    Ok(objects)
}

impl Objects {
    /// Adds every document of a YAML stream; `source` names it in problems.
    pub fn add_yaml(&mut self, source: &str, text: &str) {
        // Documents are split on `---` lines and parsed one by one, so one broken document
        // neither hides the others nor stalls the reader.
        for (i, doc) in split_documents(text).into_iter().enumerate() {
            match serde_yaml::from_str::<serde_yaml::Value>(&doc) {
                Ok(serde_yaml::Value::Null) => {}
                Ok(v) => {
                    if let Err(e) = self.add_value(v, source) {
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

    fn add_value(&mut self, value: serde_yaml::Value, source: &str) -> Result<()> {
        let json = serde_json::to_value(&value)?;
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
                self.stores.push(o);
            }
            ("hevlayer.com/v1", "Index") => {
                let mut o: Index = serde_json::from_value(json).context("invalid Index")?;
                o.metadata = with_ns(o.metadata);
                self.indexes.push(o);
            }
            ("hevlayer.com/v1alpha1", "ApiKey") => {
                let mut o: ApiKey = serde_json::from_value(json).context("invalid ApiKey")?;
                o.metadata = with_ns(o.metadata);
                let key = (o.metadata.namespace.clone().unwrap_or_default(), o.metadata.name.clone().unwrap_or_default());
                self.key_files.insert(key, source.to_owned());
                self.keys.push(o);
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
                self.secrets.insert(key, data);
            }
            _ => anyhow::bail!("unsupported object {api_version}/{kind} (expected hevlayer.com VectorStore, Index, ApiKey or v1 Secret)"),
        }
        Ok(())
    }
}

/// Splits a YAML stream into documents at `---` lines.
fn split_documents(text: &str) -> Vec<String> {
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
