//! The generated CRDs: checked in and in sync, and hev layer's own manifests are accepted by
//! the generated OpenAPI schemas unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use kube::CustomResourceExt;
use layergate_operator::crd::{self, ApiKey, Index, VectorStore};
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

/// Every way `value` breaks `schema`, as `path: message` (the one validator, `support`'s).
fn violations(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    support::validate(schema, value, "", &mut errors);
    errors
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
        let errors = violations(&schema_for(kind), &v["spec"]);
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
    assert!(violations(&vs, &base).is_empty());
    let mut typo = base.clone();
    typo["inboundAuth"] = serde_json::json!({"mdoe": "keys"});
    assert!(violations(&vs, &typo).iter().any(|e| e.contains("mdoe")));
    let mut pinecone = base.clone();
    pinecone["kind"] = "pinecone".into();
    assert!(violations(&vs, &pinecone).is_empty());
    let mut milvus = base;
    milvus["kind"] = "milvus".into();
    assert!(!violations(&vs, &milvus).is_empty());
    let mut bad_scope = serde_json::json!({"entitlements": {"layer": {"scopes": ["superuser"]}}});
    assert!(!violations(&schema_for("ApiKey"), &bad_scope).is_empty());
    bad_scope["entitlements"]["layer"]["scopes"] = serde_json::json!(["admin"]);
    assert!(violations(&schema_for("ApiKey"), &bad_scope).is_empty());
}

/// The validator itself: types, `required`, `enum`, unknown fields, free-form objects and
/// list items (the unit test of `operator/src/schema.rs`, a second validator this one replaced).
#[test]
fn reports_types_required_enums_and_unknown_fields() {
    use serde_json::json;
    let schema = json!({"type": "object", "required": ["a"], "properties": {
        "a": {"type": "string", "enum": ["x", "y"]},
        "n": {"type": "integer"},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        "list": {"type": "array", "items": {"type": "string"}}
    }});
    assert!(violations(
        &schema,
        &json!({"a": "x", "n": 3, "free": {"any": {"thing": 1}}, "list": ["s"]})
    )
    .is_empty());
    let errors = violations(
        &schema,
        &json!({"a": "z", "n": "3", "typo": 1, "list": [1]}),
    );
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(violations(&schema, &json!({}))
        .iter()
        .any(|e| e == "a: Required value"));
}

use serde::Deserialize as _;

/// Evaluates `(pattern, value)` pairs with Python's `re` (the CRD patterns use only syntax
/// that RE2, ECMAScript and Python read alike).
fn python_matches(pairs: &[(String, String)]) -> Vec<bool> {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import json,re,sys; d=json.load(sys.stdin); print(json.dumps([re.search(p,s) is not None for p,s in d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("python3 (a prerequisite of make test) runs the CRD pattern check: {e}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(pairs).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Issue 10: the CRD schemas carry the operator's own checks, so `kubectl apply` refuses what
/// the operator would refuse — the same answer on every sample, edge values included.
#[test]
fn crd_patterns_refuse_exactly_what_the_operator_refuses() {
    use layergate_filter::glob::NamespaceGlob;
    use layergate_filter::namespace::valid_namespace;
    use layergate_filter::time::{duration_pattern, parse_duration};
    use layergate_operator::crd::{GLOB_PATTERN, NAMESPACE_PATTERN};
    let mut durations: Vec<String> = [
        "never",
        "Never",
        "365d",
        "36500d",
        "36501d",
        "876000h",
        "876001h",
        "52560000m",
        "52560001m",
        "3153600000s",
        "3153600001s",
        "0d",
        "00d",
        "01d",
        "1d",
        "9s",
        "10m",
        "5日",
        "3000000d",
        "999999999999999999d",
        "-1d",
        "+1d",
        " 1d",
        "1d ",
        "1.5d",
        "1w",
        "d",
        "",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..2_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = x % [100u64, 40_000, 1_000_000, 60_000_000, 4_000_000_000][(x >> 60) as usize % 5];
        durations.push(format!(
            "{n}{}",
            ["d", "h", "m", "s"][(x >> 40) as usize % 4]
        ));
    }
    let names = [
        "shop-books",
        "a",
        "A_b.c-d",
        "",
        "a/b",
        "shop books",
        "日本",
        "a*",
        &"n".repeat(128),
        &"n".repeat(129),
    ];
    let globs = [
        "*",
        "shop-*",
        "cohort-??",
        "",
        "[ab]*",
        "a/b",
        "{a,b}",
        "a b",
        &"g".repeat(256),
        &"g".repeat(257),
    ];
    let mut pairs = Vec::new();
    let mut rust = Vec::new();
    for d in &durations {
        pairs.push((duration_pattern(), d.clone()));
        rust.push(parse_duration(d).is_ok());
    }
    for n in names {
        pairs.push((NAMESPACE_PATTERN.to_owned(), n.to_owned()));
        rust.push(valid_namespace(n));
    }
    for g in globs {
        pairs.push((GLOB_PATTERN.to_owned(), g.to_owned()));
        rust.push(NamespaceGlob::new(g).is_ok());
    }
    let python = python_matches(&pairs);
    for ((pair, r), p) in pairs.iter().zip(&rust).zip(&python) {
        assert_eq!(r, p, "{:?}: operator {r}, CRD pattern {p}", pair.1);
    }
}

/// Issue 13: an empty `secretRef.name` (or one Kubernetes could never name a Secret) stopped
/// every kube-mode pass; the CRDs now refuse it at `kubectl apply`, as the operator does.
#[test]
fn every_secret_ref_carries_kubernetes_own_name_and_key_limits() {
    let crds = crd::crds_yaml().unwrap();
    let mut refs = 0;
    for doc in crds.split("\n---") {
        let v: Value = match serde_yaml::from_str(doc) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            if let Some(obj) = v.as_object() {
                let props = &v["properties"];
                if props["name"]["description"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("Name of the Secret"))
                {
                    refs += 1;
                    for field in ["name", "key"] {
                        assert_eq!(props[field]["minLength"], 1, "{field}");
                        assert_eq!(props[field]["maxLength"], 253, "{field}");
                    }
                }
                stack.extend(obj.values().cloned());
            } else if let Some(a) = v.as_array() {
                stack.extend(a.iter().cloned());
            }
        }
    }
    assert!(refs >= 4, "{refs} secretRefs found");
    use layergate_operator::crd::{SECRET_KEY_PATTERN, SECRET_NAME_PATTERN};
    let cases = [
        (SECRET_NAME_PATTERN, "layer", true),
        (SECRET_NAME_PATTERN, "apikey-a.b-1", true),
        (SECRET_NAME_PATTERN, "Layer", false),
        (SECRET_NAME_PATTERN, "-layer", false),
        (SECRET_NAME_PATTERN, "a_b", false),
        (SECRET_KEY_PATTERN, "turbopuffer-api-key", true),
        (SECRET_KEY_PATTERN, "a/b", false),
    ];
    let pairs: Vec<(String, String)> = cases
        .iter()
        .map(|(p, v, _)| ((*p).to_owned(), (*v).to_owned()))
        .collect();
    let got = python_matches(&pairs);
    for ((p, v, want), got) in cases.iter().zip(got) {
        assert_eq!(got, *want, "{p} on {v:?}");
    }
}
