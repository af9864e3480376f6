//! The configuration: the demo fixture compiles, bad ones are refused with a reason, 100,000
//! keys compile quickly, hosts are checked; what the gateway lacks (a credential, a default
//! store) is a 503.

use crate::{call, demo, demo_json, denied, env, forward, policy_from, SHOP};
use layergate_filter::config::FilterConfig;
use layergate_filter::policy::Policy;
use serde_json::json;

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
