//! What the real API server refuses in an object: sizes, names, Secret and ConfigMap keys, and a
//! custom resource that its CRD's schema does not admit.

use super::openapi::validate;
use super::strict::{Refusal, Target};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

/// The API server's limit on a request body: 3 MiB.
pub const REQUEST_LIMIT: usize = 3 * 1024 * 1024;
/// etcd's limit on one request, and so on one stored object: 1.5 MiB.
pub const STORE_LIMIT: usize = 3 * 512 * 1024;
/// The API server's limit on a Secret's values, and on a ConfigMap's keys and values: 1 MiB.
pub const DATA_LIMIT: usize = 1024 * 1024;

/// One custom resource kind as its CRD declares it.
pub(super) struct Kind {
    pub(super) kind: String,
    /// Version name → its `openAPIV3Schema`.
    pub(super) schemas: HashMap<String, Value>,
    pub(super) status: bool,
}

/// The CRDs in operator/crds/hevlayer.com.yaml, by `group/plural`.
pub(super) fn crds() -> &'static HashMap<String, Kind> {
    static CRDS: OnceLock<HashMap<String, Kind>> = OnceLock::new();
    CRDS.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/hevlayer.com.yaml");
        let text = std::fs::read_to_string(&path).expect("operator/crds/hevlayer.com.yaml");
        let mut out = HashMap::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).expect("CRD YAML");
            if v.is_null() {
                continue;
            }
            let spec = &v["spec"];
            let mut status = false;
            let mut schemas = HashMap::new();
            for ver in spec["versions"].as_array().expect("versions") {
                status |= ver["subresources"]["status"].is_object();
                schemas.insert(
                    ver["name"].as_str().expect("version name").to_string(),
                    ver["schema"]["openAPIV3Schema"].clone(),
                );
            }
            out.insert(
                format!(
                    "{}/{}",
                    spec["group"].as_str().expect("group"),
                    spec["names"]["plural"].as_str().expect("plural")
                ),
                Kind {
                    kind: spec["names"]["kind"].as_str().expect("kind").to_string(),
                    schemas,
                    status,
                },
            );
        }
        out
    })
}

/// JSON merge patch (RFC 7386), which is also how the fake applies strategic-merge and
/// server-side-apply patches.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (_, Some(_)) => {
            *target = json!({});
            merge(target, patch);
        }
        _ => *target = patch.clone(),
    }
}

/// Whether `name` is a DNS-1123 subdomain (what Kubernetes requires of most object names).
pub fn dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

pub(super) fn check_object(
    t: &Target,
    crd: Option<&Kind>,
    name: &str,
    obj: &Value,
) -> Result<(), Refusal> {
    let what = format!(
        "{} \"{name}\"",
        crd.map(|k| k.kind.as_str()).unwrap_or(t.plural.as_str())
    );
    let mut errors = Vec::new();
    // A generated name is made valid by the server; only a given one is checked.
    if obj["metadata"]["generateName"].is_null() && !dns1123_subdomain(name) {
        errors.push(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of \
             lower case alphanumeric characters, '-' or '.', and must start and end with an \
             alphanumeric character, at most 253 characters"
        ));
    }
    match (t.group.as_str(), t.plural.as_str()) {
        ("", "secrets") => {
            let mut total = 0usize;
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                {
                    Ok(b) => total += b.len(),
                    Err(_) => errors.push(format!("data[{k}]: Invalid value: not base64")),
                }
                config_key(k, "data", &mut errors);
            }
            for (k, v) in obj["stringData"].as_object().into_iter().flatten() {
                total += v.as_str().map_or(0, str::len);
                config_key(k, "stringData", &mut errors);
            }
            if total > DATA_LIMIT {
                errors.push(format!(
                    "data: Too long: must have at most {DATA_LIMIT} bytes (has {total})"
                ));
            }
        }
        ("", "configmaps") => {
            let mut total = 0usize;
            for field in ["data", "binaryData"] {
                for (k, v) in obj[field].as_object().into_iter().flatten() {
                    total += k.len() + v.as_str().map_or(0, str::len);
                    config_key(k, field, &mut errors);
                }
            }
            if total > DATA_LIMIT {
                errors.push(format!(
                    "[]: Too long: must have at most {DATA_LIMIT} bytes (has {total})"
                ));
            }
        }
        _ => {}
    }
    if let Some(kind) = crd {
        match kind.schemas.get(&t.version) {
            Some(schema) => {
                let mut root = obj.clone();
                if let Some(o) = root.as_object_mut() {
                    // Checked by the server itself, not by the CRD's schema.
                    o.remove("metadata");
                    o.remove("apiVersion");
                    o.remove("kind");
                }
                validate(schema, &root, "", &mut errors);
            }
            None => errors.push(format!("version {} is not served", t.version)),
        }
    }
    if !errors.is_empty() {
        return Err(Refusal::invalid(&what, &errors));
    }
    // etcd stores Secret and ConfigMap bytes as bytes, not as the base64 of the JSON form.
    let mut size = serde_json::to_vec(obj).map(|v| v.len()).unwrap_or(0);
    for field in ["data", "binaryData"] {
        for v in obj[field].as_object().into_iter().flatten() {
            let b64 = v.1.as_str().map_or(0, str::len);
            if t.group.is_empty() && (t.plural == "secrets" || field == "binaryData") {
                size -= b64 - b64 / 4 * 3;
            }
        }
    }
    if size > STORE_LIMIT {
        return Err(Refusal {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: format!(
                "etcdserver: request is too large ({size} bytes, limit is {STORE_LIMIT})"
            ),
        });
    }
    Ok(())
}

/// A Secret or ConfigMap key: `[-._a-zA-Z0-9]+`, at most 253 characters.
fn config_key(k: &str, field: &str, errors: &mut Vec<String>) {
    if k.is_empty()
        || k.len() > 253
        || !k
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
    {
        errors.push(format!(
            "{field}[{k}]: Invalid value: {k:?}: a valid config key must consist of alphanumeric \
             characters, '-', '_' or '.'"
        ));
    }
}
