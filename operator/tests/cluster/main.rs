//! Kube mode against an in-process Kubernetes API (kube-fake-client): what each pass reads and
//! writes, the Lease, restarts and API errors. The demo manifests (`envoy/demo/manifests/`,
//! namespace `layer`) are the starting objects.
//!
//! One test binary (each one more is a link on a small machine), one module per topic; the
//! helpers here are the ones several topics use.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod caches;
mod control_api;
mod deploy;
mod expiring;
mod failures;
mod fake;
mod lease;
mod pass;
mod rotate;
mod scale;
#[path = "../support/mod.rs"]
mod support;
mod tokens;
mod usage;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::Client;
use kube_fake_client::ClientBuilder;
use layergate_operator::cluster::{Cluster, Writes, DEFAULT_OUTPUT_SECRET};
use layergate_operator::crd::{ApiKey, Index, VectorStore};
use layergate_operator::lease::LeaseLock;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "layer";

/// Stand-ins with the CRDs' group/version/kind and a `Default`, which the fake client needs
/// to be told that these kinds have a status subresource.
mod gvk {
    use kube::CustomResource;
    use serde::{Deserialize, Serialize};
    #[derive(
        CustomResource, Default, Clone, Debug, Serialize, Deserialize, schemars::JsonSchema,
    )]
    #[kube(
        group = "hevlayer.com",
        version = "v1alpha1",
        kind = "VectorStore",
        namespaced,
        derive = "Default"
    )]
    pub struct S {}
    #[derive(
        CustomResource, Default, Clone, Debug, Serialize, Deserialize, schemars::JsonSchema,
    )]
    #[kube(
        group = "hevlayer.com",
        version = "v1",
        kind = "Index",
        namespaced,
        derive = "Default"
    )]
    pub struct I {}
    #[derive(
        CustomResource, Default, Clone, Debug, Serialize, Deserialize, schemars::JsonSchema,
    )]
    #[kube(
        group = "hevlayer.com",
        version = "v1alpha1",
        kind = "ApiKey",
        namespaced,
        derive = "Default"
    )]
    pub struct K {}
}

/// The fake API server with the three kinds and the demo objects; a test adds what it needs
/// and gets its client from [`StrictBuild::strict`], which checks every write against the
/// real API server's rules.
/// The fake's three kinds with their status subresources, and no objects yet.
fn kinds() -> ClientBuilder {
    ClientBuilder::new()
        .with_resource::<VectorStore>()
        .with_resource::<Index>()
        .with_resource::<ApiKey>()
        .with_status_subresource::<gvk::VectorStore>()
        .with_status_subresource::<gvk::Index>()
        .with_status_subresource::<gvk::ApiKey>()
}

fn builder() -> ClientBuilder {
    kinds().with_runtime_objects(support::demo_objects())
}

fn leader(client: &Client) -> Cluster {
    let c = Cluster::new(
        client.clone(),
        NS,
        support::kube_settings(),
        DEFAULT_OUTPUT_SECRET,
    );
    c.set_leader(true);
    c
}

/// A pass once the cluster's caches hold what the API server holds now: a test that writes
/// through the API and then runs a pass at once would otherwise race the watch (the operator
/// itself runs passes when the watch brings a change).
async fn pass(c: &Cluster) -> Result<Writes, layergate_operator::cluster::StepError> {
    support::settle(c, NS).await;
    c.pass().await
}

fn api<K>(client: &Client) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(client.clone(), NS)
}

/// The published filter configuration.
async fn published(client: &Client) -> Value {
    let s = api::<Secret>(client)
        .get(DEFAULT_OUTPUT_SECRET)
        .await
        .unwrap();
    let data = s.data.unwrap();
    for file in ["cds.json", "lds.json", "layergate.json"] {
        assert!(data.contains_key(file), "the output Secret has {file}");
    }
    serde_json::from_slice(&data["layergate.json"].0).unwrap()
}

/// What the key service serves now, as a snapshot.
fn served(c: &Cluster) -> layergate_filter::config::SyncResponse {
    serde_json::from_slice(&c.state.keys.table().answer(None)).unwrap()
}

fn ready(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> (String, String) {
    let c = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    (c.status.clone(), c.reason.clone())
}

fn store_json(name: &str, default: bool, secret: &str) -> VectorStore {
    serde_json::from_value(json!({
        "apiVersion": "hevlayer.com/v1alpha1", "kind": "VectorStore",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"kind": "turbopuffer", "default": default,
                 "endpoint": {"url": "https://aws-us-east-1.turbopuffer.com"},
                 "credential": {"secretRef": {"name": secret, "key": "api-key"}}}
    }))
    .unwrap()
}

/// A newer Index on the demo's `logs-2026`, which the demo's Index `logs` already routes.
fn conflicting_index() -> Index {
    serde_json::from_value(json!({"apiVersion": "hevlayer.com/v1", "kind": "Index", "metadata": {"name": "logs-copy", "namespace": NS, "creationTimestamp": "2030-01-01T00:00:00Z"}, "spec": {"backend": {"storeRef": "archive", "namespace": "logs-2026"}}})).unwrap()
}

fn key_json(name: &str, extra: Value) -> ApiKey {
    let mut v = json!({
        "apiVersion": "hevlayer.com/v1alpha1", "kind": "ApiKey",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": ["cohort-*"]}}}
    });
    if let (Some(spec), Some(more)) = (v["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(more.clone());
    }
    serde_json::from_value(v).unwrap()
}

/// A raw HTTP/1.1 exchange that keeps the response head: (status, head, JSON body).
fn http_head(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer demo-admin-token\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (
        head[9..12].parse().unwrap(),
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn control_api(c: Arc<Cluster>) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let control = Arc::new(layergate_operator::api::Api::new(c, 120));
    std::thread::spawn(move || {
        control.serve_blocking(
            listener,
            layergate_operator::api::Role::Control,
            std::future::pending(),
        )
    });
    addr
}

/// A controller on `client` (its calls recorded by `tap`) that leads; waits for its first pass.
async fn running(
    tap: &support::Tap,
) -> (
    Arc<Cluster>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    use layergate_operator::controller;
    let c = Arc::new(Cluster::new(
        tap.client(NS),
        NS,
        support::kube_settings(),
        DEFAULT_OUTPUT_SECRET,
    ));
    let lock = LeaseLock::new(
        tap.client(NS),
        NS,
        layergate_operator::lease::DEFAULT_LEASE,
        "a",
        layergate_operator::lease::LEASE_DURATION,
    );
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let run = c.clone();
    let task =
        tokio::spawn(
            async move { controller::run(run, lock, async { rx.await.unwrap_or(()) }).await },
        );
    let started = std::time::Instant::now();
    while !(c.is_leader() && c.state.last().is_some()) {
        assert!(started.elapsed() < Duration::from_secs(10), "no first pass");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (c, stop, task)
}
