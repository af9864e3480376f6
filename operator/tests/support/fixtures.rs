//! The starting objects and settings of the kube-mode tests, and waiting for a cluster's caches.

use kube::Client;
use serde_json::{json, Value};

/// The demo manifests as API objects; Secrets' `stringData` becomes `data`, as an API server
/// stores it.
pub fn demo_objects() -> Vec<Value> {
    use base64::Engine as _;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/demo/manifests");
    let mut out = Vec::new();
    for file in [
        "secrets.yaml",
        "vectorstores.yaml",
        "indexes.yaml",
        "apikeys.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for doc in text.split("\n---") {
            let mut v: Value = serde_yaml::from_str(doc).unwrap();
            if v.is_null() {
                continue;
            }
            if let Some(sd) = v.as_object_mut().and_then(|o| o.remove("stringData")) {
                let data: serde_json::Map<String, Value> = sd
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, x)| {
                        let b64 =
                            base64::engine::general_purpose::STANDARD.encode(x.as_str().unwrap());
                        (k.clone(), json!(b64))
                    })
                    .collect();
                v["data"] = Value::Object(data);
            }
            out.push(v);
        }
    }
    out
}

/// The gateway settings kube mode runs with in these tests: the in-cluster listener and
/// wasm path, and the operator's Service as the control API.
pub fn kube_settings() -> layergate_operator::output::Settings {
    layergate_operator::output::Settings {
        listen: "0.0.0.0:8080".parse().unwrap(),
        admin: "127.0.0.1:9901".parse().unwrap(),
        filter: Default::default(),
        wasm_path: "/etc/layergate/wasm/layergate_filter.wasm".into(),
        control: Some(("layergate-operator.layer.svc".into(), 9902)),
        key_service: None,
        allow_endpoints: Default::default(),
        key_max_staleness_seconds: layergate_operator::output::DEFAULT_MAX_STALENESS_SECONDS,
        gateway_replicas: 1,
        limits: Default::default(),
        access_log_path: None,
    }
}

/// Waits (at most 10 s) until `c`'s caches hold every VectorStore, Index, ApiKey and Secret
/// of `namespace` at the version the API server holds (listed through `c`'s client).
pub async fn settle(c: &layergate_operator::cluster::Cluster, namespace: &str) {
    use k8s_openapi::api::core::v1::Secret;
    use layergate_operator::crd::{ApiKey, Index, VectorStore};
    async fn versions<K>(
        client: &Client,
        ns: &str,
    ) -> Option<std::collections::BTreeMap<String, String>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let list = kube::Api::<K>::namespaced(client.clone(), ns)
            .list(&Default::default())
            .await
            .ok()?;
        Some(
            list.items
                .iter()
                .map(|o| {
                    (
                        o.meta().name.clone().unwrap_or_default(),
                        o.meta().resource_version.clone().unwrap_or_default(),
                    )
                })
                .collect(),
        )
    }
    let caches = c.caches();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let want = [
            (
                "VectorStore",
                versions::<VectorStore>(&c.client, namespace).await,
            ),
            ("Index", versions::<Index>(&c.client, namespace).await),
            ("ApiKey", versions::<ApiKey>(&c.client, namespace).await),
            ("Secret", versions::<Secret>(&c.client, namespace).await),
        ];
        // An API server that does not answer lists: nothing to wait for.
        if want.iter().any(|(_, v)| v.is_none()) {
            return;
        }
        let have = caches.versions();
        if caches.is_synced() && want.iter().all(|(k, v)| have.get(k) == v.as_ref()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// This process's resident set, in bytes (Linux; 0 elsewhere).
pub fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
