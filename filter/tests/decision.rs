//! Native tests of the whole header/body decision against the demo fixture
//! (`envoy/demo/layergate.json`) and small variations of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use layergate_filter::body;
use layergate_filter::config::FilterConfig;
use layergate_filter::decision::{decide, Decision, Denial, Plan, Principal, CLUSTER_HEADER};
use layergate_filter::headers::{pairs, serialize, RequestHead};
use layergate_filter::policy::{Grant, Policy};
use layergate_filter::route::Target;
use serde_json::json;

const NOW: i64 = 1_795_528_719; // 2026-11-24
const SHOP: &str = "hvl_demoShopReader0123456789abcdefABCDEF";

fn demo_json() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../envoy/demo/layergate.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn env(var: &str) -> Option<String> {
    match var {
        "LAYERGATE_PRIMARY_KEY" => Some("tpuf-primary-dev-key".into()),
        "LAYERGATE_ARCHIVE_KEY" => Some("tpuf-archive-dev-key".into()),
        _ => None,
    }
}

fn policy_from(v: &serde_json::Value) -> Policy {
    Policy::from_json(v.to_string().as_bytes(), env).unwrap()
}

fn demo() -> Policy {
    policy_from(&demo_json())
}

fn run(p: &Policy, method: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
    let mut all = vec![(":method", method), (":path", path)];
    all.extend_from_slice(headers);
    let buf = serialize(all.iter().copied());
    let head = RequestHead::from_pairs(pairs(&buf));
    decide(p, &head, || NOW)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn forward(d: Decision) -> Plan {
    match d {
        Decision::Forward(p) => p,
        other => panic!("expected Forward, got {other:?}"),
    }
}

/// The plan of an allowed request, forwarded now or once its body is judged (with several
/// stores, every write that may copy is inspected).
fn allowed(d: Decision) -> Plan {
    match d {
        Decision::Forward(p) | Decision::Inspect(p, _) => p,
        other => panic!("expected Forward or Inspect, got {other:?}"),
    }
}

fn denied(d: Decision) -> Denial {
    match d {
        Decision::Deny(d) => d,
        other => panic!("expected Deny, got {other:?}"),
    }
}

fn call(p: &Policy, method: &str, path: &str, token: &str) -> Decision {
    run(p, method, path, &[("authorization", &bearer(token))])
}

#[test]
fn demo_fixture_parses_and_compiles() {
    let cfg: FilterConfig = serde_json::from_value(demo_json()).unwrap();
    assert_eq!(cfg.stores.len(), 2);
    let p = demo();
    assert_eq!(p.keys.len(), 1);
    assert_eq!(p.store_for(Some("logs-2026")), Some(1));
    assert_eq!(p.store_for(Some("shop-a")), Some(0));
}

#[test]
fn read_key_reads_and_gets_the_store_credential_and_cluster() {
    let p = demo();
    let plan = forward(call(
        &p,
        "POST",
        "/v2/namespaces/shop-a/query",
        "demo-read-token",
    ));
    assert_eq!(plan.principal.name(&p), "key:primary/demo-read");
    let edits = plan.header_edits(&p).unwrap();
    assert_eq!(
        edits.as_slice(),
        &[
            ("authorization", Some("Bearer tpuf-primary-dev-key")),
            (CLUSTER_HEADER, Some("store_primary"))
        ]
    );
}

#[test]
fn each_scope_against_read_write_and_admin_routes() {
    let p = demo();
    let cases = [
        (
            "demo-read-token",
            "GET",
            "/v1/namespaces/shop-a/metadata",
            0,
        ),
        ("demo-read-token", "POST", "/v2/namespaces/shop-a", 403),
        ("demo-read-token", "DELETE", "/v2/namespaces/shop-a", 403),
        ("demo-rw-token", "POST", "/v2/namespaces/shop-a", 0),
        (
            "demo-rw-token",
            "POST",
            "/v2/namespaces/shop-a/brand-new",
            403,
        ),
        (
            "demo-admin-token",
            "POST",
            "/v2/namespaces/shop-a/brand-new",
            0,
        ),
        ("demo-admin-token", "POST", "/v2/namespaces/shop-a", 0),
        ("demo-admin-token", "GET", "/v1/namespaces", 0),
    ];
    for (token, m, path, status) in cases {
        let d = call(&p, m, path, token);
        match status {
            0 => assert!(
                matches!(d, Decision::Forward(_) | Decision::Inspect(..)),
                "{token} {m} {path}: {d:?}"
            ),
            s => assert_eq!(denied(d).status(), s, "{token} {m} {path}"),
        }
    }
    let d = denied(call(&p, "POST", "/v2/namespaces/shop-a", "demo-read-token"));
    assert_eq!(
        d.www_authenticate(),
        Some(r#"Bearer realm="layergate", error="insufficient_scope", scope="write""#)
    );
}

#[test]
fn missing_empty_and_non_bearer_authorization_are_401_without_error() {
    let p = demo();
    for headers in [
        vec![],
        vec![("authorization", "")],
        vec![("authorization", "Basic Zm9vOmJhcg==")],
        vec![("authorization", "Bearer ")],
    ] {
        let d = denied(run(&p, "GET", "/v1/namespaces/shop-a/metadata", &headers));
        assert_eq!(d.status(), 401, "{headers:?}");
        assert_eq!(d.www_authenticate(), Some(r#"Bearer realm="layergate""#));
    }
    // The scheme is case-insensitive.
    forward(run(
        &p,
        "GET",
        "/v1/namespaces/shop-a/metadata",
        &[("authorization", "bearer demo-read-token")],
    ));
}

#[test]
fn two_authorization_headers_are_refused() {
    let p = demo();
    let d = denied(run(
        &p,
        "GET",
        "/v1/namespaces/shop-a/metadata",
        &[
            ("authorization", "Bearer demo-read-token"),
            ("authorization", "Bearer demo-admin-token"),
        ],
    ));
    assert_eq!(d.status(), 400);
}

#[test]
fn unknown_and_oversized_tokens_are_401_invalid_token_and_never_echoed() {
    let p = demo();
    let long = "x".repeat(10 * 1024);
    for token in ["not-a-key", long.as_str()] {
        let d = denied(call(&p, "GET", "/v1/namespaces/shop-a/metadata", token));
        assert_eq!(d.status(), 401);
        assert_eq!(
            d.www_authenticate(),
            Some(r#"Bearer realm="layergate", error="invalid_token""#)
        );
        assert!(!d.body().contains(token));
        let body: serde_json::Value = serde_json::from_str(&d.body()).unwrap();
        assert_eq!(body["status"], "error");
    }
}

#[test]
fn index_routes_namespace_to_the_archive_store_under_derive_from_store() {
    let p = demo();
    // Archive's own credential and the default store's credential are accepted, with full scopes.
    for token in ["tpuf-archive-dev-key", "tpuf-primary-dev-key"] {
        let plan = allowed(call(&p, "POST", "/v2/namespaces/logs-2026", token));
        let edits = plan.header_edits(&p).unwrap();
        assert_eq!(
            edits.as_slice()[0],
            ("authorization", Some("Bearer tpuf-archive-dev-key"))
        );
        assert_eq!(edits.as_slice()[1], (CLUSTER_HEADER, Some("store_archive")));
    }
    // primary's inbound keys are not accepted by archive (its mode is deriveFromStore).
    assert_eq!(
        denied(call(
            &p,
            "GET",
            "/v1/namespaces/logs-2026/metadata",
            "demo-admin-token"
        ))
        .status(),
        401
    );
    // And the archive credential is not accepted by primary (mode keys).
    assert_eq!(
        denied(call(
            &p,
            "GET",
            "/v1/namespaces/shop-a/metadata",
            "tpuf-archive-dev-key"
        ))
        .status(),
        401
    );
}

#[test]
fn minted_key_allowed_namespace_denied_namespace_wrong_store_and_scope() {
    let p = demo();
    let plan = forward(call(&p, "POST", "/v2/namespaces/shop-books/query", SHOP));
    assert_eq!(plan.principal, Principal::Token(Grant::Minted(0)));
    assert_eq!(plan.principal.name(&p), "apikey:shop-reader");
    let d = denied(call(&p, "POST", "/v2/namespaces/blog/query", SHOP));
    assert_eq!(d.status(), 403);
    assert!(d.message.contains("blog"), "{}", d.message);
    let d = denied(call(&p, "POST", "/v2/namespaces/logs-2026/query", SHOP));
    assert_eq!(d.status(), 403);
    assert!(d.message.contains("vectorstore.archive"), "{}", d.message);
    assert_eq!(
        denied(call(&p, "POST", "/v2/namespaces/shop-books", SHOP)).status(),
        403
    );
    // Namespace-less control routes need a `layer` entitlement.
    let mut v = demo_json();
    v["control"] = json!({"cluster": "layergate_control"});
    let d = denied(call(&policy_from(&v), "GET", "/v2/keys", SHOP));
    assert_eq!(d.status(), 403);
    assert!(d.message.contains("layer entitlement"), "{}", d.message);
}

#[test]
fn expired_minted_key_is_401_with_a_clear_message() {
    let mut v = demo_json();
    v["apiKeys"][0]["expiresAt"] = json!("2026-01-01T00:00:00Z");
    let p = policy_from(&v);
    let d = denied(call(&p, "POST", "/v2/namespaces/shop-books/query", SHOP));
    assert_eq!(d.status(), 401);
    assert!(d.message.contains("expired"));
    v["apiKeys"][0]["expiresAt"] = json!("2027-01-01T00:00:00Z");
    forward(call(
        &policy_from(&v),
        "POST",
        "/v2/namespaces/shop-books/query",
        SHOP,
    ));
}

#[test]
fn revoked_key_is_absent_from_config_and_unknown() {
    let mut v = demo_json();
    v["apiKeys"] = json!([]);
    assert_eq!(
        denied(call(
            &policy_from(&v),
            "POST",
            "/v2/namespaces/shop-books/query",
            SHOP
        ))
        .status(),
        401
    );
}

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

fn inspect(
    p: &Policy,
    method: &str,
    path: &str,
    body_json: &serde_json::Value,
) -> Result<(), Denial> {
    match call(p, method, path, SHOP) {
        Decision::Inspect(plan, ins) => {
            body::check(p, &plan, ins, body_json.to_string().as_bytes(), || 0)
        }
        Decision::Deny(d) => Err(d),
        other => panic!("expected Inspect, got {other:?}"),
    }
}

fn writer_policy() -> Policy {
    let mut v = demo_json();
    v["apiKeys"][0]["entitlements"]["vectorstore.primary"]["scopes"] = json!(["read", "write"]);
    v["apiKeys"][0]["entitlements"]["layer"] =
        json!({"scopes": ["admin"], "namespaces": ["shop-*"]});
    v["app"] = json!({"cluster": "layer_app"});
    policy_from(&v)
}

#[test]
fn body_rules_check_every_named_namespace() {
    let p = writer_policy();
    let ns = "/v2/namespaces/shop-new";
    inspect(&p, "POST", ns, &json!({"copy_from_namespace": "shop-old"})).unwrap();
    assert_eq!(
        inspect(&p, "POST", ns, &json!({"copy_from_namespace": "secret"}))
            .unwrap_err()
            .status(),
        403
    );
    assert_eq!(
        inspect(
            &p,
            "POST",
            ns,
            &json!({"branch_from_namespace": {"source_namespace": "secret"}})
        )
        .unwrap_err()
        .status(),
        403
    );
    inspect(
        &p,
        "POST",
        ns,
        &json!({"branch_from_namespace": {"source_namespace": "shop-x"}}),
    )
    .unwrap();
    let d = inspect(
        &p,
        "POST",
        ns,
        &json!({"copy_from_namespace": {"source_namespace": "shop-x", "source_api_key": "k"}}),
    )
    .unwrap_err();
    assert!(d.message.contains("source_api_key"));
    assert_eq!(
        inspect(
            &p,
            "POST",
            "/v2/namespaces/shop-new/async",
            &json!({"source_namespace": "secret"})
        )
        .unwrap_err()
        .status(),
        403
    );
    inspect(
        &p,
        "POST",
        "/v2/namespaces/shop-new/async",
        &json!({"source_namespace": "shop-a"}),
    )
    .unwrap();
    inspect(&p, "POST", ns, &json!({"upsert_rows": [{"id": 1}]})).unwrap();
    assert_eq!(
        inspect(&p, "POST", ns, &json!({"copy_from_namespace": "bad/name"}))
            .unwrap_err()
            .status(),
        400
    );
    // Federated query: every namespace, and a list is required.
    inspect(
        &p,
        "POST",
        "/v2/query",
        &json!({"namespaces": ["shop-a", "shop-b"], "queries": []}),
    )
    .unwrap();
    assert_eq!(
        inspect(
            &p,
            "POST",
            "/v2/query",
            &json!({"namespaces": ["shop-a", "hr"]})
        )
        .unwrap_err()
        .status(),
        403
    );
    assert_eq!(
        inspect(
            &p,
            "POST",
            "/v2/query",
            &json!({"namespaces": ["logs-2026"]})
        )
        .unwrap_err()
        .status(),
        403
    );
    assert_eq!(
        inspect(&p, "POST", "/v2/query", &json!({"queries": []}))
            .unwrap_err()
            .status(),
        403
    );
    // Pipelines: target_namespace against the layer grant.
    inspect(
        &p,
        "POST",
        "/v2/pipelines",
        &json!({"target_namespace": "shop-a"}),
    )
    .unwrap();
    assert_eq!(
        inspect(
            &p,
            "POST",
            "/v2/pipelines",
            &json!({"target_namespace": "hr"})
        )
        .unwrap_err()
        .status(),
        403
    );
}

/// What turbopuffer's client 3.1 sends (captured by `tests/python/client_surface.py`):
/// `start_copy_from` nests the source in `copy_from_namespace` on `…/async`, and the API
/// reference puts `source_namespace` at the top level of both write routes. Every form is read
/// on both routes.
#[test]
fn copy_sources_are_read_in_every_form_on_both_write_routes() {
    let p = writer_policy();
    for path in [
        "/v2/namespaces/shop-new?stainless_overload=copyFrom",
        "/v2/namespaces/shop-new/async?stainless_overload=startCopyFrom",
    ] {
        for body in [
            json!({"copy_from_namespace": "secret"}),
            json!({"copy_from_namespace": {"source_namespace": "secret"}}),
            json!({"branch_from_namespace": "secret"}),
            json!({"branch_from_namespace": {"source_namespace": "secret"}}),
            json!({"source_namespace": "secret"}),
        ] {
            let d = inspect(&p, "POST", path, &body).unwrap_err();
            assert_eq!(d.status(), 403, "{path} {body}: {}", d.message);
            assert!(d.message.contains("\"secret\""), "{}", d.message);
        }
        for body in [
            json!({"copy_from_namespace": {"source_namespace": "shop-a", "source_api_key": "k"}}),
            json!({"source_namespace": "shop-a", "source_api_key": "k"}),
            json!({"source_api_key": "k"}),
        ] {
            let d = inspect(&p, "POST", path, &body).unwrap_err();
            assert_eq!(d.status(), 403, "{path} {body}");
            assert!(d.message.contains("source_api_key"), "{}", d.message);
        }
        for body in [
            json!({"copy_from_namespace": {"source_namespace": "shop-a"}}),
            json!({"copy_from_namespace": "shop-a"}),
            json!({"source_namespace": "shop-a"}),
        ] {
            inspect(&p, "POST", path, &body).unwrap_or_else(|d| panic!("{path} {body}: {d:?}"));
        }
    }
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
fn inspected_bodies_must_be_json_plain_or_gzip_and_within_the_limit() {
    let p = writer_policy();
    let ns = "/v2/namespaces/shop-new";
    let plan_of = |d| match d {
        Decision::Inspect(plan, ins) => (plan, ins),
        other => panic!("{other:?}"),
    };
    let (plan, ins) = plan_of(call(&p, "POST", ns, SHOP));
    assert_eq!(
        body::check(&p, &plan, ins, b"not json", || 0)
            .unwrap_err()
            .status(),
        400
    );
    // gzip
    let gz = |bytes: &[u8]| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    let (plan, ins) = plan_of(run(
        &p,
        "POST",
        ns,
        &[
            ("authorization", &bearer(SHOP)),
            ("content-encoding", "gzip"),
        ],
    ));
    assert!(body::check(
        &p,
        &plan,
        ins,
        &gz(br#"{"copy_from_namespace":"shop-a"}"#),
        || 0
    )
    .is_ok());
    assert_eq!(
        body::check(
            &p,
            &plan,
            ins,
            &gz(br#"{"copy_from_namespace":"hr"}"#),
            || 0
        )
        .unwrap_err()
        .status(),
        403
    );
    let d = denied(run(
        &p,
        "POST",
        ns,
        &[("authorization", &bearer(SHOP)), ("content-encoding", "br")],
    ));
    assert_eq!(d.status(), 415);
    // Limits: declared length, raw size, and size after decompression (no zip bombs).
    let mut v = demo_json();
    v["apiKeys"][0]["entitlements"]["vectorstore.primary"]["scopes"] = json!(["write"]);
    v["limits"]["inspectBodyBytes"] = json!(1024);
    let small = policy_from(&v);
    let d = denied(run(
        &small,
        "POST",
        ns,
        &[("authorization", &bearer(SHOP)), ("content-length", "2048")],
    ));
    assert_eq!(d.status(), 413);
    assert!(d.message.contains("1024"));
    let (plan, ins) = plan_of(run(
        &small,
        "POST",
        ns,
        &[
            ("authorization", &bearer(SHOP)),
            ("content-encoding", "gzip"),
        ],
    ));
    let bomb = gz(format!(r#"{{"pad":"{}"}}"#, "a".repeat(100_000)).as_bytes());
    assert!(bomb.len() < 1024);
    assert_eq!(
        body::check(&small, &plan, ins, &bomb, || 0)
            .unwrap_err()
            .status(),
        413
    );
    // Under the 16 MiB limit, a body that inflates more than 64 times is refused as it
    // inflates: a 2 KiB upload no longer grows the VM by megabytes.
    let (plan, ins) = plan_of(run(
        &p,
        "POST",
        ns,
        &[
            ("authorization", &bearer(SHOP)),
            ("content-encoding", "gzip"),
        ],
    ));
    let bomb = gz(format!(
        r#"{{"copy_from_namespace":"shop-a","pad":"{}"}}"#,
        "a".repeat(4_000_000)
    )
    .as_bytes());
    let d = body::check(&p, &plan, ins, &bomb, || 0).unwrap_err();
    assert_eq!(d.status(), 413);
    assert!(d.message.contains("64 times"), "{}", d.message);
    let ordinary: String = (0..2_000)
        .map(|i| format!("{{\"id\":{i},\"title\":\"book {i}\"}},"))
        .collect();
    let body = gz(format!(
        r#"{{"copy_from_namespace":"shop-a","upsert_rows":[{}{{}}]}}"#,
        ordinary
    )
    .as_bytes());
    body::check(&p, &plan, ins, &body, || 0).unwrap();
}

#[test]
fn a_namespace_list_is_refused_at_its_513th_name() {
    let mut v = demo_json();
    v["app"] = json!({"cluster": "layer_app"});
    let p = policy_from(&v);
    let (plan, ins) = match call(&p, "POST", "/v2/query", SHOP) {
        Decision::Inspect(plan, ins) => (plan, ins),
        other => panic!("{other:?}"),
    };
    let list =
        |n: usize| json!({"namespaces": (0..n).map(|i| format!("shop-{i}")).collect::<Vec<_>>()});
    body::check(&p, &plan, ins, list(512).to_string().as_bytes(), || NOW).unwrap();
    let d = body::check(&p, &plan, ins, list(513).to_string().as_bytes(), || NOW).unwrap_err();
    assert_eq!(d.status(), 400);
    assert!(d.message.contains("at most 512"), "{}", d.message);
}

#[test]
fn unrestricted_principals_stream_without_inspection() {
    // One store: a copy's source is always the destination's store, so nothing is read.
    let mut one = demo_json();
    one["stores"].as_array_mut().unwrap().truncate(1);
    one["namespaces"] = json!({});
    let p = policy_from(&one);
    forward(call(&p, "POST", "/v2/namespaces/shop-a", "demo-rw-token"));
    forward(call(
        &p,
        "POST",
        "/v2/namespaces/shop-a/async",
        "demo-rw-token",
    ));
    let mut v = one.clone();
    v["apiKeys"][0]["entitlements"]["vectorstore.primary"] = json!({"scopes": ["write"]});
    forward(call(
        &policy_from(&v),
        "POST",
        "/v2/namespaces/anything",
        SHOP,
    ));
    // Several stores: only the writes that may copy are read, for every caller (issue 21).
    let p = demo();
    forward(call(
        &p,
        "POST",
        "/v2/namespaces/shop-a/query",
        "demo-rw-token",
    ));
    forward(call(&p, "DELETE", "/v2/namespaces/shop-a", "demo-rw-token"));
    for (path, token) in [
        ("/v2/namespaces/shop-a", "demo-rw-token"),
        ("/v2/namespaces/shop-a/async", "demo-rw-token"),
        ("/v2/namespaces/logs-2026", "tpuf-archive-dev-key"),
    ] {
        let d = call(&p, "POST", path, token);
        assert!(matches!(d, Decision::Inspect(..)), "{path}: {d:?}");
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
fn bootstrap_admin_is_the_default_store_credential_under_derive_from_store() {
    let mut v = demo_json();
    v["stores"][0]["inboundAuth"] = json!({"mode": "deriveFromStore"});
    v["control"] = json!({"cluster": "layergate_control"});
    let p = policy_from(&v);
    let plan = forward(call(&p, "POST", "/v2/keys", "tpuf-primary-dev-key"));
    assert_eq!(plan.principal.name(&p), "store:primary");
    assert_eq!(
        denied(call(&p, "POST", "/v2/keys", "tpuf-archive-dev-key")).status(),
        401
    );
}

#[test]
fn open_mode_needs_no_token_and_ignores_one() {
    let mut v = demo_json();
    v["stores"][0]["inboundAuth"] = json!({"mode": "open"});
    let p = policy_from(&v);
    assert_eq!(
        allowed(run(&p, "POST", "/v2/namespaces/shop-a", &[])).principal,
        Principal::Open
    );
    assert_eq!(
        allowed(call(&p, "POST", "/v2/namespaces/shop-a", "garbage")).principal,
        Principal::Open
    );
}

#[test]
fn missing_credential_env_var_is_503_naming_the_variable() {
    let mut v = demo_json();
    v["stores"][0]["credential"] = json!({"env": "LAYERGATE_PRIMARY_KEY"});
    let p = Policy::from_json(v.to_string().as_bytes(), |_| None).unwrap();
    let d = denied(call(
        &p,
        "GET",
        "/v1/namespaces/shop-a/metadata",
        "demo-read-token",
    ));
    assert_eq!(d.status(), 503);
    assert!(d.message.contains("LAYERGATE_PRIMARY_KEY"), "{}", d.message);
    // Authentication still comes first.
    let d = denied(call(&p, "GET", "/v1/namespaces/shop-a/metadata", "nope"));
    assert_eq!(d.status(), 401);
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
fn no_default_store_is_503() {
    let mut v = demo_json();
    v.as_object_mut().unwrap().remove("defaultStore");
    let p = policy_from(&v);
    assert_eq!(
        denied(call(
            &p,
            "GET",
            "/v1/namespaces/shop-a/metadata",
            "demo-read-token"
        ))
        .status(),
        503
    );
    // Indexed namespaces still resolve.
    forward(call(
        &p,
        "GET",
        "/v1/namespaces/logs-2026/metadata",
        "tpuf-archive-dev-key",
    ));
}

#[test]
fn invalid_configs_are_refused_with_a_reason() {
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"version": 1, "bogus": true}), "unknown field"),
        (json!({"version": 2, "stores": []}), "version 2"),
        (
            json!({"version": 1, "stores": [], "defaultStore": "nope"}),
            "defaultStore",
        ),
        (
            json!({"version": 1, "stores": [{"name": "a", "cluster": "c", "credential": {"inline": "x"}, "inboundAuth": {"mode": "keys", "keys": [{"name": "k", "scopes": ["read"], "sha256": "zz"}]}}]}),
            "sha256",
        ),
        (
            json!({"version": 1, "stores": [{"name": "a", "cluster": "c", "credential": {"inline": "x"}, "inboundAuth": {"mode": "magic"}}]}),
            "magic",
        ),
        (
            json!({"version": 1, "stores": [], "namespaces": {"a/b": "x"}}),
            "namespace",
        ),
        (
            json!({"version": 1, "stores": [], "apiKeys": [{"keyId": "k", "name": "n", "lookupHash": "md5:00", "entitlements": {}}]}),
            "lookupHash",
        ),
        (
            json!({"version": 1, "stores": [], "apiKeys": [{"keyId": "k", "name": "n", "lookupHash": format!("sha256:{}", "0".repeat(64)), "expiresAt": "tomorrow", "entitlements": {}}]}),
            "expiresAt",
        ),
        (
            json!({"version": 1, "stores": [], "apiKeys": [{"keyId": "k", "name": "n", "lookupHash": format!("sha256:{}", "0".repeat(64)), "entitlements": {"bucket.x": {}}}]}),
            "entitlement target",
        ),
        (
            json!({"version": 1, "stores": [], "apiKeys": [{"keyId": "k", "name": "n", "lookupHash": format!("sha256:{}", "0".repeat(64)), "entitlements": {"layer": {"scopes": ["read"], "namespaces": ["a/b"]}}}]}),
            "glob",
        ),
        (
            json!({"version": 1, "stores": [], "routes": [{"path": "/x/**/y", "scope": "read", "target": "store"}]}),
            "last segment",
        ),
        (
            json!({"version": 1, "stores": [], "limits": {"inspectBodyBytes": 0}}),
            "inspectBodyBytes",
        ),
    ];
    for (v, needle) in cases {
        let err = Policy::from_json(v.to_string().as_bytes(), env)
            .err()
            .unwrap_or_else(|| panic!("accepted {v}"));
        assert!(err.to_string().contains(needle), "{v}: {err}");
    }
    assert!(Policy::from_json(b"not json", env).is_err());
}

#[test]
fn a_target_store_that_does_not_exist_grants_nothing_but_is_not_an_error() {
    let mut v = demo_json();
    v["apiKeys"][0]["entitlements"]["vectorstore.gone"] = json!({"scopes": ["admin"]});
    v["apiKeys"][0]["entitlements"]["warehouse.snow"] = json!({"claims": ["notes:*:read"]});
    let p = policy_from(&v);
    forward(call(&p, "POST", "/v2/namespaces/shop-a/query", SHOP));
}

#[test]
fn hundred_thousand_keys_compile_well_under_a_second() {
    let mut v = demo_json();
    let keys: Vec<_> = (0..100_000)
        .map(|i| {
            let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("hvl_token_{i}")));
            json!({"keyId": format!("k{i}"), "name": format!("key-{i}"), "lookupHash": format!("sha256:{hash}"),
                   "entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": [format!("tenant-{i}-*")]}}})
        })
        .collect();
    v["apiKeys"] = json!(keys);
    let text = v.to_string();
    let started = std::time::Instant::now();
    let p = Policy::from_json(text.as_bytes(), env).unwrap();
    let took = started.elapsed();
    assert_eq!(p.keys.len(), 100_000);
    forward(call(
        &p,
        "POST",
        "/v2/namespaces/tenant-77-a/query",
        "hvl_token_77",
    ));
    assert_eq!(
        denied(call(
            &p,
            "POST",
            "/v2/namespaces/tenant-78-a/query",
            "hvl_token_77"
        ))
        .status(),
        403
    );
    eprintln!("compiled 100,000 keys in {took:?} (debug build)");
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
fn federated_query_checks_every_namespace_on_its_own_store_for_every_caller() {
    let mut v = demo_json();
    v["app"] = json!({"cluster": "layer_app"});
    let p = policy_from(&v);
    let judge = |token: &str, body: serde_json::Value| match call(&p, "POST", "/v2/query", token) {
        Decision::Inspect(plan, ins) => {
            body::check(&p, &plan, ins, body.to_string().as_bytes(), || NOW).map_err(|d| d.status())
        }
        other => panic!("expected Inspect, got {other:?}"),
    };
    // demo-read is an inbound key of `primary`; logs-2026 lives on `archive`.
    assert_eq!(
        judge("demo-read-token", json!({"namespaces": ["shop-a"]})),
        Ok(())
    );
    assert_eq!(
        judge(
            "demo-read-token",
            json!({"namespaces": ["shop-a", "logs-2026"]})
        ),
        Err(401)
    );
    assert_eq!(judge("demo-read-token", json!({"queries": []})), Err(403));
    // A caller that holds every store whole may leave the list out.
    let mut v = v.clone();
    v["stores"][1]["inboundAuth"] = json!({"mode": "open"});
    let all = policy_from(&v);
    match call(&all, "POST", "/v2/query", "demo-read-token") {
        Decision::Inspect(plan, ins) => body::check(&all, &plan, ins, b"{}", || NOW).unwrap(),
        other => panic!("{other:?}"),
    }
    // The restricted minted key: its globs on each store.
    assert_eq!(judge(SHOP, json!({"namespaces": ["logs-2026"]})), Err(403));
    assert_eq!(
        judge(SHOP, json!({"namespaces": ["shop-a", "shop-b"]})),
        Ok(())
    );
}

#[test]
fn hosts_are_checked_when_compiled_and_matched_without_port_or_case() {
    let mut v = demo_json();
    v["hosts"] = json!(["vectors.example.com", "*.eu.example.com"]);
    let p = policy_from(&v);
    for yes in [
        "vectors.example.com",
        "Vectors.Example.com:443",
        "a.eu.example.com",
    ] {
        assert!(p.serves_host(yes), "{yes}");
    }
    for no in [
        "example.com",
        "x.vectors.example.com",
        "a.b.eu.example.com",
        "eu.example.com",
        "",
    ] {
        assert!(!p.serves_host(no), "{no}");
    }
    assert!(demo().serves_host("anything"), "no hosts: every host");
    for bad in ["a b", "*", "*.", "x.*.com", "ex ample.com"] {
        v["hosts"] = json!([bad]);
        assert!(
            Policy::from_json(v.to_string().as_bytes(), env).is_err(),
            "{bad}"
        );
    }
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

/// Issue 21.1: a copy or branch source is judged on the store its Index assigns it, for every
/// caller, and a source on another store (or in a region the gateway cannot map) is refused:
/// the destination store's credential would read it inside that store's organisation.
#[test]
fn a_copy_source_on_another_store_is_refused_for_every_caller() {
    let mut v = demo_json();
    v["apiKeys"][0]["entitlements"]["vectorstore.primary"]["scopes"] = json!(["read", "write"]);
    v["namespaces"]["shop-vault"] = json!("archive");
    let p = policy_from(&v);
    let judge =
        |token: &str, path: &str, body: &serde_json::Value| match call(&p, "POST", path, token) {
            Decision::Inspect(plan, ins) => {
                body::check(&p, &plan, ins, body.to_string().as_bytes(), || NOW)
            }
            other => panic!("{token} {path}: expected Inspect, got {other:?}"),
        };
    let bodies = [
        (
            "/v2/namespaces/shop-new",
            json!({"copy_from_namespace": "shop-vault"}),
        ),
        (
            "/v2/namespaces/shop-new",
            json!({"copy_from_namespace": {"source_namespace": "shop-vault"}}),
        ),
        (
            "/v2/namespaces/shop-new",
            json!({"branch_from_namespace": "shop-vault"}),
        ),
        (
            "/v2/namespaces/shop-new",
            json!({"branch_from_namespace": {"source_namespace": "shop-vault"}}),
        ),
        (
            "/v2/namespaces/shop-new/async",
            json!({"source_namespace": "shop-vault"}),
        ),
        (
            "/v2/namespaces/shop-new/async",
            json!({"copy_from_namespace": {"source_namespace": "shop-vault"}}),
        ),
    ];
    // The restricted shop-* writer and the unrestricted inbound key alike.
    for token in [SHOP, "demo-rw-token", "demo-admin-token"] {
        for (path, body) in &bodies {
            let d = judge(token, path, body).expect_err(&format!("{token} {path} {body}"));
            assert_eq!(d.status(), 403, "{token} {path} {body}");
            assert!(d.message.contains("across stores"), "{}", d.message);
        }
        // The same copies within the destination's store pass.
        judge(
            token,
            "/v2/namespaces/shop-new",
            &json!({"copy_from_namespace": "shop-old"}),
        )
        .unwrap();
        judge(
            token,
            "/v2/namespaces/shop-new/async",
            &json!({"source_namespace": "shop-old"}),
        )
        .unwrap();
        // A region the gateway cannot map to a store, in any form.
        for body in [
            json!({"copy_from_namespace": {"source_namespace": "shop-old", "source_region": "gcp-us-east4"}}),
            json!({"copy_from_namespace": "shop-old", "source_region": "gcp-us-east4"}),
            json!({"source_namespace": "shop-old", "source_region": "gcp-us-east4"}),
        ] {
            let d = judge(token, "/v2/namespaces/shop-new", &body).expect_err(&body.to_string());
            assert!(d.message.contains("source_region"), "{}", d.message);
        }
    }
    // The store credential of `archive` writing into archive's namespace cannot copy primary's.
    let d = judge(
        "tpuf-archive-dev-key",
        "/v2/namespaces/logs-2026",
        &json!({"copy_from_namespace": "shop-a"}),
    )
    .unwrap_err();
    assert_eq!(d.status(), 403);
}

/// Helper report on issue 21: a string `copy_from_namespace` beside a top-level
/// `source_api_key` was judged as a copy within the store; a restricted key may not copy with
/// another key in any form.
#[test]
fn a_top_level_source_api_key_counts_for_every_copy_form() {
    let p = writer_policy();
    for body in [
        json!({"copy_from_namespace": "shop-old", "source_api_key": "k"}),
        json!({"branch_from_namespace": "shop-old", "source_api_key": "k"}),
        json!({"copy_from_namespace": {"source_namespace": "shop-old"}, "source_api_key": "k"}),
    ] {
        let d = inspect(&p, "POST", "/v2/namespaces/shop-new", &body).unwrap_err();
        assert!(
            d.message.contains("source_api_key"),
            "{body}: {}",
            d.message
        );
    }
    // An object without source_namespace, or a duplicate one, is malformed.
    for body in [
        json!({"copy_from_namespace": {"source_region": "x"}}),
        serde_json::from_str::<serde_json::Value>(r#"{"copy_from_namespace": 7}"#).unwrap(),
    ] {
        assert_eq!(
            inspect(&p, "POST", "/v2/namespaces/shop-new", &body)
                .unwrap_err()
                .status(),
            400,
            "{body}"
        );
    }
    let dup =
        br#"{"copy_from_namespace": {"source_namespace": "shop-a", "source_namespace": "secret"}}"#;
    match call(&p, "POST", "/v2/namespaces/shop-new", SHOP) {
        Decision::Inspect(plan, ins) => {
            let d = body::check(&p, &plan, ins, dup, || 0).unwrap_err();
            assert_eq!(d.status(), 400, "{}", d.message);
        }
        other => panic!("{other:?}"),
    }
}
