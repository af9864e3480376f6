//! Routes: restricted listings and their query strings, routes the table does not know or whose
//! namespaces the gateway does not read, the app and control upstreams, the key service kept off
//! the public listener, the headers a plan writes and strips, and the order of refusals.

use crate::{call, demo, demo_json, denied, forward, policy_from, run, SHOP};
use layergate_filter::decision::{Decision, Principal, CLUSTER_HEADER};
use layergate_filter::route::Target;
use serde_json::json;

#[test]
fn restricted_key_lists_namespaces_only_under_its_prefix() {
    let p = demo();
    match call(&p, "GET", "/v1/namespaces?page_size=5", SHOP) {
        Decision::ForwardWithPath(_, path) => {
            assert_eq!(path, "/v1/namespaces?page_size=5&prefix=shop-")
        }
        other => panic!("{other:?}"),
    }
    match call(&p, "GET", "/v1/namespaces", SHOP) {
        Decision::ForwardWithPath(_, path) => assert_eq!(path, "/v1/namespaces?prefix=shop-"),
        other => panic!("{other:?}"),
    }
    forward(call(&p, "GET", "/v1/namespaces?prefix=shop-books", SHOP));
    assert_eq!(
        denied(call(&p, "GET", "/v1/namespaces?prefix=s", SHOP)).status(),
        403
    );
    let mut v = demo_json();
    v["apiKeys"][0]["entitlements"]["vectorstore.primary"]["namespaces"] =
        json!(["shop-*", "blog"]);
    assert_eq!(
        denied(call(&policy_from(&v), "GET", "/v1/namespaces", SHOP)).status(),
        403
    );
}

/// hevlayer 0.7.3 names namespaces in bodies and queries the gateway does not read: a
/// Function's `spec.target_namespaces` (create/upsert), `namespaces[]` to discover, work items'
/// `items[].namespace`, a minted key's entitlement globs, PromQL label matchers. Restricted
/// principals are refused there (SPEC §3 step 4); unrestricted ones pass unread.
#[test]
fn restricted_keys_are_refused_where_namespaces_are_named_unread() {
    let mut v = demo_json();
    v["apiKeys"][0]["entitlements"]["layer"] =
        json!({"scopes": ["admin"], "namespaces": ["shop-*"]});
    v["app"] = json!({"cluster": "layer_app"});
    v["control"] = json!({"cluster": "layergate_control"});
    let p = policy_from(&v);
    let routes = [
        ("POST", "/v2/udfs"),
        ("PUT", "/v2/udfs/u1"),
        ("POST", "/v2/udfs/u1/discover"),
        ("POST", "/v2/udfs/u1/items/complete"),
        ("POST", "/v2/udfs/u1/items/fail"),
        ("POST", "/v2/udfs/u1/items/heartbeat"),
        ("POST", "/v2/keys"),
        ("GET", "/v2/metrics/query?query=up"),
        ("POST", "/v2/metrics/query_range"),
        ("GET", "/v2/metrics/api/v1/query?query=up"),
        ("POST", "/v2/metrics/api/v1/query_range"),
    ];
    for (method, path) in routes {
        let d = denied(call(&p, method, path, SHOP));
        assert_eq!(d.status(), 403, "{method} {path}: {}", d.message);
        assert!(d.message.contains("does not read"), "{}", d.message);
    }
    // The same key's namespace-less routes that name no namespace still pass.
    for (method, path) in [
        ("POST", "/v2/udfs/u1/pause"),
        ("DELETE", "/v2/udfs/u1"),
        ("POST", "/v2/udfs/u1/claim"),
        ("GET", "/v2/keys"),
    ] {
        forward(call(&p, method, path, SHOP));
    }
    // Without namespace limits on `layer`, nothing is read and everything streams.
    v["apiKeys"][0]["entitlements"]["layer"] = json!({"scopes": ["admin"]});
    let p = policy_from(&v);
    for (method, path) in routes {
        forward(call(&p, method, path, SHOP));
        forward(call(&p, method, path, "demo-admin-token"));
    }
}

#[test]
fn client_layergate_headers_are_stripped_and_the_cluster_header_overwritten() {
    let p = demo();
    let plan = forward(run(
        &p,
        "GET",
        "/v1/namespaces/shop-a/metadata",
        &[
            ("authorization", "Bearer demo-read-token"),
            ("x-layergate-cluster", "store_archive"),
            ("x-layergate-principal", "root"),
        ],
    ));
    let edits = plan.header_edits(&p).unwrap();
    assert!(edits.writes(b"x-layergate-cluster"));
    assert!(!layergate_filter::decision::must_strip(
        b"x-layergate-cluster",
        &edits
    ));
    assert!(layergate_filter::decision::must_strip(
        b"x-layergate-principal",
        &edits
    ));
    assert!(layergate_filter::decision::must_strip(
        b"X-Layergate-Store",
        &edits
    ));
    assert!(!layergate_filter::decision::must_strip(
        b"content-type",
        &edits
    ));
}

#[test]
fn app_routes_without_an_app_are_404_and_with_one_carry_identity_headers() {
    let p = demo();
    let d = denied(call(
        &p,
        "POST",
        "/v2/namespaces/shop-a/documents",
        "demo-read-token",
    ));
    assert_eq!(d.status(), 404);
    assert!(d.message.contains("layer app"));
    let mut v = demo_json();
    v["app"] = json!({"cluster": "layer_app"});
    let p = policy_from(&v);
    let plan = forward(call(
        &p,
        "POST",
        "/v2/namespaces/shop-a/documents",
        "demo-rw-token",
    ));
    assert_eq!(plan.target, Target::App);
    assert_eq!(
        plan.header_edits(&p).unwrap().as_slice(),
        &[
            ("authorization", None),
            (CLUSTER_HEADER, Some("layer_app")),
            ("x-layergate-principal", Some("key:primary/demo-rw")),
            ("x-layergate-scopes", Some("read,write")),
            ("x-layergate-store", Some("primary")),
        ]
    );
}

#[test]
fn control_routes_keep_authorization_and_authenticate_needs_no_token() {
    let mut v = demo_json();
    v["control"] = json!({"cluster": "layergate_control"});
    let p = policy_from(&v);
    let plan = forward(call(&p, "GET", "/v2/keys", "demo-admin-token"));
    assert_eq!(
        plan.header_edits(&p).unwrap().as_slice(),
        &[(CLUSTER_HEADER, Some("layergate_control"))]
    );
    assert_eq!(
        denied(call(&p, "GET", "/v2/keys", "demo-rw-token")).status(),
        403
    );
    let plan = forward(run(&p, "POST", "/v2/keys/authenticate", &[]));
    assert_eq!(plan.principal, Principal::Anonymous);
    forward(call(&p, "GET", "/v2/vectorstores", "demo-read-token"));
}

#[test]
fn refusals_come_before_what_the_gateway_lacks() {
    // No app upstream: a caller without the scope or the namespace gets its 403, not the 404.
    let p = demo();
    let status = |method, path, token| match call(&p, method, path, token) {
        Decision::Deny(d) => d.status(),
        other => panic!("{method} {path}: {other:?}"),
    };
    assert_eq!(
        status("POST", "/v2/namespaces/shop-a/import", "demo-read-token"),
        403
    );
    assert_eq!(status("POST", "/v2/namespaces/shop-a/import", SHOP), 403);
    assert_eq!(status("POST", "/v2/namespaces/hr/documents", SHOP), 403);
    assert_eq!(
        status("POST", "/v2/namespaces/shop-a/documents", "nope"),
        401
    );
    assert_eq!(status("POST", "/v2/pipelines", "demo-read-token"), 403);
    assert_eq!(status("POST", "/v2/namespaces/shop-a/documents", SHOP), 404);
    // A federated query is inspected first; its 404 comes after the body (see wasm/request.rs).
    assert!(matches!(
        call(&p, "POST", "/v2/query", SHOP),
        Decision::Inspect(..)
    ));
}

#[test]
fn restricted_listing_reads_the_query_string_strictly() {
    let p = demo();
    for query in [
        "prefix=shop-a&prefix=hr",
        "prefix=shop-&%70refix=hr",
        "%70refix=hr",
        "prefix=shop-a;prefix=hr",
        "page_size=1;prefix=hr",
        "Prefix=hr",
        "PREFIX=hr&prefix=shop-",
        "prefix",
        "prefix=shop%2Dhr",
        "prefix=shop-+hr",
        "page_size=1&&prefix=shop-",
        "prefix[]=hr",
    ] {
        let path = format!("/v1/namespaces?{query}");
        let d = denied(call(&p, "GET", &path, SHOP));
        assert_eq!(d.status(), 400, "{path}: {}", d.message);
    }
    // What a client sends stays allowed; cursors may be encoded.
    forward(call(
        &p,
        "GET",
        "/v1/namespaces?prefix=shop-a&page_size=2&cursor=YWJj%3D",
        SHOP,
    ));
    match call(&p, "GET", "/v1/namespaces?cursor=YWJj%3D", SHOP) {
        Decision::ForwardWithPath(_, path) => {
            assert_eq!(path, "/v1/namespaces?cursor=YWJj%3D&prefix=shop-")
        }
        other => panic!("{other:?}"),
    }
    // Unrestricted callers' listings pass as sent.
    forward(call(
        &p,
        "GET",
        "/v1/namespaces?prefix=a&prefix=b",
        "demo-read-token",
    ));
}

#[test]
fn restricted_keys_are_refused_on_routes_the_table_does_not_know() {
    let p = demo();
    for (method, path) in [
        ("GET", "/V1/namespaces/hr/metadata"),
        ("GET", "/v1/Namespaces/shop-a/metadata"),
        ("GET", "/v1/namespaces;x=1"),
        ("GET", "/v1/namespaces;x/hr/metadata"),
        ("GET", "/v1/unknown"),
        ("GET", "/v1/namespaces/shop-a/unknown"),
        ("HEAD", "/v3/namespaces/hr"),
        ("GET", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n"),
    ] {
        let d = denied(call(&p, method, path, SHOP));
        assert_eq!(d.status(), 403, "{method} {path}: {}", d.message);
        assert!(d.message.contains("route table"), "{}", d.message);
        // Unrestricted principals keep the fail-safe default (read on the default store).
        forward(call(&p, method, path, "demo-read-token"));
    }
    // An unrestricted minted key too.
    let mut v = demo_json();
    v["apiKeys"][0]["entitlements"]["vectorstore.primary"]
        .as_object_mut()
        .unwrap()
        .remove("namespaces");
    forward(call(
        &policy_from(&v),
        "GET",
        "/V1/namespaces/hr/metadata",
        SHOP,
    ));
}

#[test]
fn the_key_service_is_never_routed_from_the_public_listener() {
    let mut v = demo_json();
    v["control"] = json!({"cluster": "layergate_control"});
    let p = policy_from(&v);
    for (method, path) in [
        ("GET", "/v2/keys/sync"),
        ("GET", "/v2/keys/sync?since=r1"),
        ("POST", "/v2/keys/sync/x"),
    ] {
        for token in ["demo-admin-token", "tpuf-primary-dev-key", "nope"] {
            let d = denied(call(&p, method, path, token));
            assert_eq!(d.status(), 404, "{method} {path} {token}");
        }
    }
    // The other key routes still reach the control API.
    forward(call(&p, "GET", "/v2/keys/shop-reader", "demo-admin-token"));
}
