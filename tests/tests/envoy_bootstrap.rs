//! The rendered bootstrap: Envoy accepts it, with and without the filter.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_tests::{demo, envoy, paths};

#[test]
fn envoy_validates_the_demo_bootstrap() {
    let any = "127.0.0.1:0".parse().unwrap();
    let gw = demo::gateway(
        any,
        any,
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        layergate_tests::envoy::Filter::under_test().unwrap_or_else(|e| panic!("{e:#}")),
        demo::filter_config().unwrap(),
    );
    envoy::validate(&gw.render()).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn envoy_validates_a_bootstrap_without_the_filter() {
    let mut gw = demo::gateway(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        layergate_tests::envoy::Filter::under_test().unwrap_or_else(|e| panic!("{e:#}")),
        demo::filter_config().unwrap(),
    );
    gw.filter_config = None;
    envoy::validate(&gw.render()).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn a_missing_artifact_names_the_make_target() {
    std::env::set_var("LAYERGATE_PYTHON", "/nonexistent/python");
    let err = paths::python().unwrap_err().to_string();
    assert!(
        err.contains("make venv") && err.contains("LAYERGATE_PYTHON"),
        "{err}"
    );
}

/// The operator's outputs for a production-shaped store (https endpoint: TLS with SNI, DNS
/// cluster) pass `envoy --mode validate`, as a static bootstrap and as file-based dynamic config.
#[test]
fn envoy_validates_the_operators_rendering_of_a_tls_store() {
    use layergate_operator::{envoy as render, manifests::Objects, output, validate};
    let mut objects = Objects::default();
    objects.add_yaml(
        "manifests",
        r#"
apiVersion: v1
kind: Secret
metadata: {name: layer, namespace: layer}
stringData: {turbopuffer-api-key: tpuf_xxx}
---
apiVersion: hevlayer.com/v1alpha1
kind: VectorStore
metadata: {name: turbopuffer-default, namespace: layer}
spec:
  kind: turbopuffer
  default: true
  endpoint: {url: https://aws-us-east-1.turbopuffer.com, region: aws-us-east-1}
  credential: {secretRef: {name: layer, key: turbopuffer-api-key}}
  inboundAuth: {mode: deriveFromStore}
"#,
    );
    assert!(objects.problems.is_empty(), "{:?}", objects.problems);
    let v = validate::validate(&objects, "layer", 1_795_528_719);
    let clusters: Vec<render::Cluster> =
        layergate_operator::render::upstreams(&v, &Default::default())
            .iter()
            .map(render::Cluster::of)
            .collect();
    assert_eq!(clusters.len(), 1);
    assert!(
        clusters[0].tls
            && clusters[0].hostname == "aws-us-east-1.turbopuffer.com"
            && clusters[0].port == 443
    );
    let out = std::env::temp_dir().join(format!("layergate-render-tls-{}", std::process::id()));
    let settings = demo::test_settings(Some("127.0.0.1:9902".parse().unwrap()))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let rendering = layergate_operator::render::render(
        &v,
        &settings,
        &layergate_operator::render::Target::Envoy,
        None,
    )
    .unwrap();
    output::write(&rendering, &out, &settings).unwrap();
    let config = rendering.config;
    let listener = render::Listener {
        listen: settings.listen,
        build: render::FilterBuild::Wasm,
        filter_path: settings.wasm_path.clone(),
        filter_config: Some(serde_json::to_string(&config).unwrap()),
        vm_env: Vec::new(),
        buffer_limit_bytes: render::DEFAULT_BUFFER_LIMIT_BYTES,
        access_log_path: None,
    };
    envoy::validate(&render::static_bootstrap(
        settings.admin,
        &listener,
        &clusters,
    ))
    .unwrap_or_else(|e| panic!("{e:#}"));
    let bootstrap = std::fs::read_to_string(out.join("bootstrap.yaml")).unwrap();
    envoy::validate(&bootstrap).unwrap_or_else(|e| panic!("{e:#}"));
    let cds = std::fs::read_to_string(out.join("cds.json")).unwrap();
    assert!(
        cds.contains(r#""sni": "aws-us-east-1.turbopuffer.com""#)
            && cds.contains("layergate_control"),
        "{cds}"
    );
    // The certificate must name the store's host, not merely chain to a public root.
    let cds: serde_json::Value = serde_json::from_str(&cds).unwrap();
    let tls = &cds["resources"][0]["transport_socket"]["typed_config"];
    assert_eq!(
        tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"],
        serde_json::json!([{"san_type": "DNS", "matcher": {"exact": "aws-us-east-1.turbopuffer.com"}}])
    );
    assert_eq!(
        tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
        render::SYSTEM_CA_BUNDLE
    );
    let _ = std::fs::remove_dir_all(&out);
}
