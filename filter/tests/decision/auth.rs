//! Who the caller is and what it may do: the bearer header, inbound keys and their scopes, store
//! credentials under `deriveFromStore`, minted keys (namespaces, expiry, revocation), `open`
//! mode.

use crate::{allowed, call, demo, demo_json, denied, forward, policy_from, run, SHOP};
use layergate_filter::decision::{Decision, Principal, CLUSTER_HEADER};
use layergate_filter::policy::Grant;
use serde_json::json;

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
