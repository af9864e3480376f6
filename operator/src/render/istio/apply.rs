//! Kube mode's Istio vocabulary (`run --source kube --target istio`): the Istio kinds it may
//! write, what to apply and delete to reach a rendering ([`plan`], pure), and the credentials
//! Secret the gateway's proxy reads its environment from, with the Deployment patch that rolls
//! the pods when it changes. Writes nothing itself: `cluster` does.

use super::settings::IstioSettings;
use super::MANAGED_BY;
use crate::render::filter::credential_env;
use crate::validate::Validation;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Kube mode's Secret in the Istio namespace holding what the gateway's proxy reads from its
/// environment: one key per `LAYERGATE_CREDENTIAL_<STORE>` variable (the store's credential)
/// plus [`crate::keyservice::CREDENTIAL_ENV`] (the gateway credential of the key service).
pub const CREDENTIALS_SECRET: &str = "layergate-istio-credentials";

/// The gateway pod template's annotation carrying a digest of [`CREDENTIALS_SECRET`]'s data:
/// a proxy reads its environment only when it starts, so a changed credential must roll the
/// gateway's pods, and a changed annotation does.
pub const CREDENTIALS_HASH_ANNOTATION: &str = "layergate.hevlayer.com/credentials-sha256";

/// The Istio kinds the target renders: (group, version, kind, plural).
pub const KINDS: [(&str, &str, &str, &str); 6] = [
    (
        "extensions.istio.io",
        "v1alpha1",
        "WasmPlugin",
        "wasmplugins",
    ),
    (
        "networking.istio.io",
        "v1",
        "ServiceEntry",
        "serviceentries",
    ),
    (
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    ("networking.istio.io", "v1", "Gateway", "gateways"),
    (
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    (
        "networking.istio.io",
        "v1alpha3",
        "EnvoyFilter",
        "envoyfilters",
    ),
];

/// The API resource of one of [`KINDS`] (for a dynamic client).
pub fn api_resource(kind: &str) -> Option<kube::core::ApiResource> {
    KINDS
        .iter()
        .find(|k| k.2 == kind)
        .map(|(group, version, kind, plural)| kube::core::ApiResource {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
            api_version: format!("{group}/{version}"),
            kind: (*kind).to_owned(),
            plural: (*plural).to_owned(),
        })
}

/// What kube mode must write to bring the Istio namespace to a rendering.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Rendered resources that are absent or differ (labels or spec) from what is present:
    /// server-side applied.
    pub apply: Vec<Value>,
    /// (kind, name) of resources labelled [`MANAGED_BY`] that the rendering no longer has.
    pub delete: Vec<(String, String)>,
}

impl Plan {
    /// True when nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.apply.is_empty() && self.delete.is_empty()
    }
}

fn kind_and_name(v: &Value) -> (String, String) {
    (
        v["kind"].as_str().unwrap_or_default().to_owned(),
        v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Pure: what to apply and what to delete, given the rendered resources and those present in
/// the Istio namespace (any objects of [`KINDS`]). A rendered resource is applied when no
/// present object has its kind and name, or that object's labels or `spec` differ; a present
/// object is deleted only when it carries [`MANAGED_BY`] and the rendering has no resource of
/// its kind and name (a removed store), so nothing someone else made is ever touched.
pub fn plan(rendered: &[Value], present: &[Value]) -> Plan {
    let present_by: BTreeMap<(String, String), &Value> =
        present.iter().map(|p| (kind_and_name(p), p)).collect();
    let apply = rendered
        .iter()
        .filter(|r| {
            present_by.get(&kind_and_name(r)).is_none_or(|p| {
                p["spec"] != r["spec"]
                    || r["metadata"]["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .any(|(k, v)| p["metadata"]["labels"][k] != *v)
            })
        })
        .cloned()
        .collect();
    let wanted: std::collections::BTreeSet<(String, String)> =
        rendered.iter().map(kind_and_name).collect();
    let delete = present
        .iter()
        .filter(|p| p["metadata"]["labels"][MANAGED_BY.0] == MANAGED_BY.1)
        .map(kind_and_name)
        .filter(|id| !wanted.contains(id))
        .collect();
    Plan { apply, delete }
}

/// Kube mode's [`CREDENTIALS_SECRET`] data: each valid store's credential under its
/// [`credential_env`] variable, and the gateway credential under
/// [`crate::keyservice::CREDENTIAL_ENV`].
pub fn credentials(v: &Validation, gateway: &str) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> = v
        .stores
        .iter()
        .filter_map(|s| s.valid.as_ref())
        .map(|s| (credential_env(&s.name), s.credential.clone()))
        .collect();
    data.insert(
        crate::keyservice::CREDENTIAL_ENV.to_owned(),
        gateway.to_owned(),
    );
    data
}

/// The digest [`CREDENTIALS_HASH_ANNOTATION`] carries: SHA-256 over the Secret's keys and
/// values. The gateway credential (256 random bits) is among them, so the digest is no oracle
/// for guessing a store credential.
pub fn credentials_hash(data: &BTreeMap<String, String>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (k, v) in data {
        for part in [k.as_bytes(), v.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    hex::encode(h.finalize())
}

/// Kube mode's server-side apply patch for the gateway Deployment: the `istio-proxy`
/// container's environment, each variable from [`CREDENTIALS_SECRET`] (only the keys in
/// `data`), and the pod template's [`CREDENTIALS_HASH_ANNOTATION`] = `hash`, so a changed
/// credential rolls the pods (their environment is read at start).
pub fn gateway_apply(s: &IstioSettings, data: &BTreeMap<String, String>, hash: &str) -> Value {
    let env: Vec<Value> = data
        .keys()
        .map(|var| {
            json!({"name": var, "valueFrom": {"secretKeyRef": {"name": CREDENTIALS_SECRET, "key": var}}})
        })
        .collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": s.gateway_deployment, "namespace": s.namespace},
        "spec": {"template": {
            "metadata": {"annotations": {CREDENTIALS_HASH_ANNOTATION: hash}},
            "spec": {"containers": [{"name": "istio-proxy", "env": env}]}}}
    })
}
