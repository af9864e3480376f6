//! What the real API server refuses in an object: sizes, names, Secret and ConfigMap keys, an
//! events.k8s.io Event's fields, and a custom resource that its CRD's schema does not admit.

use super::openapi::validate;
use super::strict::{namespace_of, Refusal, Target};
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

/// The Events API's limits (kube-apiserver's `pkg/apis/core/validation/events.go`).
pub const EVENT_NOTE_LIMIT: usize = 1024;
const EVENT_FIELD_LIMIT: usize = 128;

/// What the API server refuses in an events.k8s.io/v1 Event, created (`old` None) or written
/// over `old`: `eventTime`, `type` Normal or Warning, the deprecated core/v1 fields unset, a
/// `series` counted from 2 with its `lastObservedTime`, `reportingController` a qualified
/// name, `reportingInstance`, `action` and `reason` present and at most 128 bytes, `note` at
/// most 1 kB, a cluster-wide `regarding` only in `default` or `kube-system`; and on a write
/// over a stored Event, everything but `series` (and metadata) unchanged.
fn check_event(obj: &Value, old: Option<&Value>, namespace: &str, errors: &mut Vec<String>) {
    let text = |k: &str| obj[k].as_str().unwrap_or_default();
    if text("eventTime").is_empty() {
        errors.push("eventTime: Required value".into());
    }
    if !matches!(text("type"), "Normal" | "Warning") {
        errors.push(format!(
            "type: Invalid value: has invalid value: {}",
            obj["type"]
        ));
    }
    for k in [
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedCount",
        "deprecatedSource",
    ] {
        if !obj[k].is_null() {
            errors.push(format!("{k}: Invalid value: needs to be unset"));
        }
    }
    if !obj["series"].is_null() {
        if obj["series"]["count"].as_i64().unwrap_or(0) < 2 {
            errors.push("series.count: Invalid value: should be at least 2".into());
        }
        if obj["series"]["lastObservedTime"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            errors.push("series.lastObservedTime: Required value".into());
        }
    }
    let regarding_ns = obj["regarding"]["namespace"].as_str().unwrap_or_default();
    if regarding_ns.is_empty() && !matches!(namespace, "default" | "kube-system") {
        errors.push("regarding.namespace: Invalid value: does not match event.namespace".into());
    }
    let controller = text("reportingController");
    if controller.is_empty() {
        errors.push("reportingController: Required value".into());
    } else if !qualified_name(controller) {
        errors.push(format!(
            "reportingController: Invalid value: {controller:?}: not a qualified name"
        ));
    }
    for k in ["reportingInstance", "action", "reason"] {
        let v = text(k);
        if v.is_empty() {
            errors.push(format!("{k}: Required value"));
        } else if v.len() > EVENT_FIELD_LIMIT {
            errors.push(format!(
                "{k}: Invalid value: can have at most {EVENT_FIELD_LIMIT} characters"
            ));
        }
    }
    if text("note").len() > EVENT_NOTE_LIMIT {
        errors.push(format!(
            "note: Invalid value: can have at most {EVENT_NOTE_LIMIT} characters"
        ));
    }
    if let Some(old) = old {
        for k in [
            "regarding",
            "related",
            "reason",
            "note",
            "type",
            "eventTime",
            "action",
            "reportingController",
            "reportingInstance",
            "deprecatedSource",
            "deprecatedFirstTimestamp",
            "deprecatedLastTimestamp",
            "deprecatedCount",
        ] {
            if obj[k] != old[k] {
                errors.push(format!("{k}: Invalid value: field is immutable"));
            }
        }
    }
}

/// Whether `s` is a Kubernetes qualified name: an optional DNS subdomain prefix and `/`, then
/// at most 63 alphanumerics, `-`, `_` or `.`, starting and ending alphanumeric.
fn qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let b = name.as_bytes();
    prefix.is_none_or(dns1123_subdomain)
        && !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `old`: the stored object a write goes over (None for a create).
pub(super) fn check_object(
    t: &Target,
    crd: Option<&Kind>,
    name: &str,
    obj: &Value,
    old: Option<&Value>,
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
        ("events.k8s.io", "events") => {
            let namespace = obj["metadata"]["namespace"]
                .as_str()
                .map_or_else(|| namespace_of(&t.object_path), str::to_owned);
            check_event(obj, old, &namespace, &mut errors);
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
