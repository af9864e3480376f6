//! The rendered bootstrap: the checked-in demo copy is in sync, and Envoy accepts it.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_tests::{demo, envoy, paths};

#[test]
fn checked_in_demo_bootstrap_matches_the_renderer() {
    let rendered = demo::render_checked_in().unwrap();
    let file = paths::repo_root().join("envoy/demo/envoy.yaml");
    let on_disk = std::fs::read_to_string(&file).unwrap();
    assert!(
        rendered == on_disk,
        "{} is stale: run `make envoy-demo` and commit it",
        file.display()
    );
}

#[test]
fn envoy_validates_the_demo_bootstrap() {
    envoy::validate(&demo::render_checked_in().unwrap()).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn envoy_validates_a_bootstrap_without_the_filter() {
    let mut gw = demo::gateway(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        paths::wasm_path().unwrap_or_else(|e| panic!("{e:#}")),
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
