//! The bench's probe filter in the real Envoy: each step it is configured with is a host call
//! that really happens (writes reach the upstream, a read that finds nothing fails the
//! request), so the per-call prices `make bench` reports are prices of those calls.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_operator::envoy as render;
use layergate_tests::devstore::DevStore;
use layergate_tests::envoy::Envoy;
use layergate_tests::http::Request;
use layergate_tests::{demo, paths};
use serde_json::json;
use std::net::SocketAddr;

/// Envoy with the probe filter running `steps`, before the router that picks the cluster from
/// `x-layergate-cluster` (as in the bench), routing to `store`.
fn envoy_with_probe(steps: &str, store: &DevStore) -> Envoy {
    start_probe(steps, store).unwrap_or_else(|e| panic!("{e:#}"))
}

fn start_probe(steps: &str, store: &DevStore) -> anyhow::Result<Envoy> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let probe = paths::probe_wasm_path().unwrap_or_else(|e| panic!("{e:#}"));
    let gw = demo::gateway(
        any,
        any,
        store.addr(),
        store.addr(),
        layergate_tests::envoy::Filter {
            build: render::FilterBuild::Wasm,
            path: probe.clone(),
        },
        String::new(),
    );
    let mut listener = render::listener(&render::Listener {
        listen: any,
        build: render::FilterBuild::Wasm,
        filter_path: probe.to_string_lossy().into_owned(),
        filter_config: Some(steps.to_owned()),
        vm_env: Vec::new(),
        buffer_limit_bytes: render::DEFAULT_BUFFER_LIMIT_BYTES,
        access_log_path: None,
    });
    let filters = &mut listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
    // The probe, then the router (no buffer filter: nothing here reads a body).
    let wasm = filters[0].clone();
    *filters = json!([wasm, {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]);
    let yaml = render::bootstrap_with_listener(any, listener, &gw.clusters);
    Envoy::start_yaml(&yaml, &paths::repo_root())
}

fn request() -> Request {
    Request::new("GET", "/v1/namespaces")
        .bearer(demo::PRIMARY_KEY)
        .header("x-layergate-cluster", "store_primary")
        .header("x-drop", "1")
}

#[test]
fn each_step_is_a_host_call_that_happens() {
    let store = DevStore::start(demo::PRIMARY_KEY).unwrap();
    let envoy = envoy_with_probe(
        "map,get:authorization,set:x-probe-a,remove:x-drop,property,sha256*2",
        &store,
    );
    let r = request().send(envoy.addr).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = store.requests();
    let last = seen.last().unwrap();
    assert_eq!(last.header("x-probe-a"), Some("1"), "{last:?}");
    assert_eq!(last.header("x-drop"), None, "{last:?}");

    // A read that finds nothing refuses the request instead of measuring nothing.
    let before = store.request_count();
    let r = Request::new("GET", "/v1/namespaces")
        .header("x-layergate-cluster", "store_primary")
        .send(envoy.addr)
        .unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("authorization"), "{}", r.text());
    assert_eq!(store.request_count(), before);
}

#[test]
fn with_no_steps_the_request_passes_untouched() {
    let store = DevStore::start(demo::PRIMARY_KEY).unwrap();
    let envoy = envoy_with_probe("", &store);
    let r = request().send(envoy.addr).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = store.requests();
    let last = seen.last().unwrap();
    assert_eq!(last.header("x-drop"), Some("1"), "{last:?}");
    assert_eq!(last.header("x-probe-a"), None, "{last:?}");
}

#[test]
fn a_repeated_step_repeats_and_a_bad_one_refuses_the_configuration() {
    let store = DevStore::start(demo::PRIMARY_KEY).unwrap();
    let envoy = envoy_with_probe("map*3,get:authorization*16,set:x-probe-a*2", &store);
    let r = request().send(envoy.addr).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        store.requests().last().unwrap().header("x-probe-a"),
        Some("1")
    );
    drop(envoy);
    // Envoy does not start a listener whose filter refuses its configuration.
    for bad in ["get:", "map*0", "map*x", "read"] {
        let err = start_probe(bad, &store).err().map(|e| format!("{e:#}"));
        assert!(
            err.as_deref().is_some_and(|e| e.contains("Wasm")),
            "{bad:?}: {err:?}"
        );
    }
}
