//! Copy and branch sources: read in every form on both write routes, refused across stores and
//! with another key.

use crate::{call, demo_json, inspect, policy_from, writer_policy, NOW, SHOP};
use layergate_filter::body;
use layergate_filter::decision::Decision;
use serde_json::json;

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
