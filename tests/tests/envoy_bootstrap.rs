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
        paths::wasm_path().unwrap_or_else(|e| panic!("{e:#}")),
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
