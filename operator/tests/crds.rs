//! The generated CRDs: checked in and in sync, and hev layer's own manifests are accepted by
//! the generated OpenAPI schemas unchanged.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use kube::CustomResourceExt;
use layergate_operator::crd::{self, ApiKey, Index, VectorStore};
use layergate_operator::schema;
use serde_json::Value;

const HEV_LAYER_DOCS: &str = r#"
apiVersion: hevlayer.com/v1alpha1
kind: VectorStore
metadata: {name: turbopuffer-default, namespace: layer}
spec:
  kind: turbopuffer
  default: true
  endpoint: {url: https://aws-us-east-1.turbopuffer.com, region: aws-us-east-1}
  credential: {secretRef: {name: layer, key: turbopuffer-api-key}}
  inboundAuth: {mode: deriveFromStore}
---
apiVersion: hevlayer.com/v1
kind: Index
metadata: {name: products, namespace: layer}
spec:
  backend: {storeRef: turbopuffer-default, namespace: products, distanceMetric: cosine_distance}
  metadata: {labels: {app: shop}, tags: [catalog]}
  snapshot: {interval: 5m, retention: never, facetFields: [category, brand]}
  scan: {threads: 8}
  cache: {ttl: 24h, capGiB: 64, mode: standard}
  consistency: strong
"#;

fn spec_schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let v = serde_json::to_value(crd).unwrap();
    v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

fn schema_for(kind: &str) -> Value {
    match kind {
        "VectorStore" => spec_schema(&VectorStore::crd()),
        "Index" => spec_schema(&Index::crd()),
        "ApiKey" => spec_schema(&ApiKey::crd()),
        other => panic!("unexpected kind {other}"),
    }
}

/// `operator/crds/` and the copy the deploy kustomization applies (kustomize reads nothing
/// outside its own directory) are both the generated CRDs.
#[test]
fn checked_in_crds_match_the_types() {
    for file in ["crds/hevlayer.com.yaml", "deploy/crds.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == crd::crds_yaml().unwrap(),
            "operator/{file} is stale: run `make crds` and commit it"
        );
    }
}

#[test]
fn hev_layer_documentation_manifests_are_accepted_unchanged() {
    for doc in serde_yaml::Deserializer::from_str(HEV_LAYER_DOCS) {
        let v: Value = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
        let kind = v["kind"].as_str().unwrap();
        let errors = schema::validate(&schema_for(kind), &v["spec"]);
        assert!(errors.is_empty(), "{kind}: {errors:?}");
        // And the typed objects read them, keeping every field.
        match kind {
            "VectorStore" => {
                let vs: VectorStore = serde_json::from_value(v.clone()).unwrap();
                assert_eq!(serde_json::to_value(&vs.spec).unwrap(), v["spec"]);
            }
            "Index" => {
                let ix: Index = serde_json::from_value(v.clone()).unwrap();
                assert_eq!(serde_json::to_value(&ix.spec).unwrap(), v["spec"]);
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn schema_rejects_typos_and_unknown_kinds_but_accepts_pinecone() {
    let vs = schema_for("VectorStore");
    let base = serde_json::json!({"kind": "turbopuffer", "endpoint": {"url": "https://x"}, "credential": {"secretRef": {"name": "s", "key": "k"}}});
    assert!(schema::validate(&vs, &base).is_empty());
    let mut typo = base.clone();
    typo["inboundAuth"] = serde_json::json!({"mdoe": "keys"});
    assert!(schema::validate(&vs, &typo)
        .iter()
        .any(|e| e.contains("mdoe")));
    let mut pinecone = base.clone();
    pinecone["kind"] = "pinecone".into();
    assert!(schema::validate(&vs, &pinecone).is_empty());
    let mut milvus = base;
    milvus["kind"] = "milvus".into();
    assert!(!schema::validate(&vs, &milvus).is_empty());
    let mut bad_scope = serde_json::json!({"entitlements": {"layer": {"scopes": ["superuser"]}}});
    assert!(!schema::validate(&schema_for("ApiKey"), &bad_scope).is_empty());
    bad_scope["entitlements"]["layer"]["scopes"] = serde_json::json!(["admin"]);
    assert!(schema::validate(&schema_for("ApiKey"), &bad_scope).is_empty());
}

use serde::Deserialize as _;
