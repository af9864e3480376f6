//! The route table's rows, the path checks, and config rules tried first.

use super::path::{control_and_encoded, SlashSplit};
use super::table::{ADMIN, READ, WRITE};
use super::*;
use crate::config::{RouteRuleConfig, RouteTargetConfig, ScopeRequirement};

fn c(method: &str, path: &str) -> Route<'static> {
    let path: &'static str = Box::leak(path.to_owned().into_boxed_str());
    classify(&[], method, path).unwrap_or_else(|d| unreachable!("{method} {path}: {d:?}"))
}

fn is(method: &str, path: &str, scope: Option<Scope>, target: Target) {
    let r = c(method, path);
    assert_eq!((r.scope, r.target), (scope, target), "{method} {path}");
}

#[test]
fn encoded_and_control_bytes_are_found_in_one_pass() {
    // Against the plain definition: any case-insensitive occurrence of the four escapes.
    let naive = |p: &str| {
        let l = p.to_ascii_lowercase();
        (
            p.bytes().any(|b| b.is_ascii_control()),
            ["%2f", "%5c", "%2e", "%00"].iter().any(|n| l.contains(n)),
        )
    };
    for p in [
        "/v1/namespaces/a",
        "/a%2Fb",
        "/a%2fb",
        "/a%5Cb",
        "/a%2E%2e",
        "/a%00",
        "/a%0",
        "/a%",
        "/a%%2f",
        "/a%25%32%66",
        "/a%41%2e",
        "/a\x01b",
        "/a\x7f",
        "/%2",
        "/ok%20x%2F",
    ] {
        assert_eq!(control_and_encoded(p), naive(p), "{p:?}");
    }
}

#[test]
fn slash_split_is_split() {
    for p in [
        "",
        "a",
        "a/b",
        "a//b",
        "/",
        "a/",
        "/a/",
        "v1/namespaces/x/metadata",
    ] {
        let ours: Vec<&str> = SlashSplit::new(p).collect();
        let std: Vec<&str> = p.split('/').collect();
        assert_eq!(ours, std, "{p:?}");
    }
}

// One test per row of SPEC §4.
#[test]
fn row_query_routes_are_store_reads() {
    is("POST", "/v2/namespaces/ns/query", READ, Target::Store);
    is("POST", "/v1/namespaces/ns/query", READ, Target::Store);
    is(
        "POST",
        "/v2/namespaces/ns/explain_query",
        READ,
        Target::Store,
    );
    assert_eq!(
        c("POST", "/v2/namespaces/shop-a/query?stainless_overload=x").namespace,
        Some("shop-a")
    );
}

#[test]
fn row_store_gets_are_reads() {
    let r = c("GET", "/v1/namespaces?prefix=shop-&page_size=10");
    assert_eq!(
        (r.scope, r.target, r.body, r.namespace),
        (READ, Target::Store, BodyRule::NamespaceList, None)
    );
    for p in [
        "/v1/namespaces/ns",
        "/v1/namespaces/ns/metadata",
        "/v2/namespaces/ns/metadata",
        "/v1/namespaces/ns/schema",
        "/v1/namespaces/ns/hint_cache_warm",
        "/v1/namespaces/ns/operations/tok123",
    ] {
        is("GET", p, READ, Target::Store);
        is("HEAD", p, READ, Target::Store);
    }
}

#[test]
fn row_store_writes() {
    assert_eq!(
        c("POST", "/v2/namespaces/ns").body,
        BodyRule::NamespaceWrite
    );
    assert_eq!(
        c("POST", "/v2/namespaces/ns/async").body,
        BodyRule::AsyncCopy
    );
    for (m, p) in [
        ("POST", "/v2/namespaces/ns"),
        ("POST", "/v2/namespaces/ns/async"),
        ("DELETE", "/v2/namespaces/ns"),
        ("POST", "/v1/namespaces/ns/schema"),
        ("PATCH", "/v1/namespaces/ns/metadata"),
        ("POST", "/v1/namespaces/ns/_debug/recall"),
    ] {
        is(m, p, WRITE, Target::Store);
        assert_eq!(c(m, p).namespace, Some("ns"));
    }
}

#[test]
fn row_app_reads() {
    for p in [
        "/v2/namespaces/ns/documents",
        "/v2/namespaces/ns/scans",
        "/v2/namespaces/ns/search",
    ] {
        is("POST", p, READ, Target::App);
    }
    assert_eq!(c("POST", "/v2/query").body, BodyRule::FederatedQuery);
    let agent = c("POST", "/v2/agents/support/query");
    assert_eq!(
        (agent.scope, agent.target, agent.agent),
        (READ, Target::App, Some("support"))
    );
    for p in [
        "/v2/metrics/query",
        "/v2/metrics/query_range",
        "/v2/metrics/api/v1/query",
        "/v2/metrics/api/v1/query_range",
    ] {
        is("GET", p, READ, Target::App);
        is("POST", p, READ, Target::App);
    }
}

#[test]
fn row_metrics_catalog_needs_no_scope() {
    is("GET", "/v2/metrics/catalog", None, Target::App);
    is(
        "GET",
        "/v2/metrics/catalog/requests_total",
        None,
        Target::App,
    );
}

#[test]
fn row_app_writes() {
    for p in [
        "import",
        "init",
        "warm",
        "checkpoints",
        "snapshots",
        "shard/migrate",
    ] {
        is(
            "POST",
            &format!("/v2/namespaces/ns/{p}"),
            WRITE,
            Target::App,
        );
    }
    is(
        "PUT",
        "/v2/namespaces/ns/snapshot-policy",
        WRITE,
        Target::App,
    );
    is(
        "GET",
        "/v2/namespaces/ns/snapshot-policy",
        READ,
        Target::App,
    );
    is("PUT", "/v1/namespaces/ns/blobs/a/b", WRITE, Target::App);
    is("GET", "/v1/namespaces/ns/blobs/a", READ, Target::App);
    is("DELETE", "/v2/namespaces/ns/scans/s1", WRITE, Target::App);
    is(
        "POST",
        "/v2/metrics/api/v1/import/prometheus",
        WRITE,
        Target::App,
    );
    is("POST", "/v1/control/restores", WRITE, Target::App);
    is("POST", "/v1/control/restores/r1/start", WRITE, Target::App);
}

#[test]
fn row_worker_queues_are_writes() {
    for (m, p) in [
        ("POST", "/v2/pipelines/p1/claim"),
        ("POST", "/v2/pipelines/p1/documents/heartbeat"),
        ("POST", "/v2/pipelines/p1/documents/stage"),
        ("PUT", "/v2/pipelines/p1/documents/d1"),
        ("PUT", "/v2/pipelines/p1/documents/d1/vectors"),
        ("POST", "/v2/udfs/u1/claim"),
        ("POST", "/v2/udfs/u1/items/complete"),
        ("POST", "/v2/udfs/u1/items/fail"),
        ("POST", "/v2/udfs/u1/items/heartbeat"),
    ] {
        is(m, p, WRITE, Target::App);
    }
}

#[test]
fn row_pipeline_and_function_control_is_admin() {
    assert_eq!(c("POST", "/v2/pipelines").body, BodyRule::PipelineCreate);
    for (m, p) in [
        ("POST", "/v2/pipelines"),
        ("DELETE", "/v2/pipelines/p1"),
        ("POST", "/v2/udfs"),
        ("PUT", "/v2/udfs/u1"),
        ("DELETE", "/v2/udfs/u1"),
        ("POST", "/v2/udfs/u1/pause"),
        ("POST", "/v2/udfs/u1/resume"),
        ("POST", "/v2/udfs/u1/reset-failed"),
        ("POST", "/v2/udfs/u1/discover"),
    ] {
        is(m, p, ADMIN, Target::App);
    }
}

#[test]
fn row_keys_are_admin_control() {
    for (m, p) in [
        ("POST", "/v2/keys"),
        ("GET", "/v2/keys"),
        ("GET", "/v2/keys/k1"),
        ("DELETE", "/v2/keys/k1"),
        ("POST", "/v2/keys/k1/revoke"),
    ] {
        is(m, p, ADMIN, Target::Control);
    }
    is(
        "GET",
        "/v2/keys?includeRevoked=true",
        ADMIN,
        Target::Control,
    );
}

#[test]
fn row_authenticate_needs_no_scope() {
    is("POST", "/v2/keys/authenticate", None, Target::Control);
}

#[test]
fn row_other_v2_gets_are_app_reads_and_vectorstores_go_to_control() {
    for p in [
        "/v2/namespaces",
        "/v2/cost",
        "/v2/license",
        "/v2/activity",
        "/v2/warehouses",
        "/v2/pipelines",
        "/v2/udfs",
        "/v2/history",
    ] {
        is("GET", p, READ, Target::App);
    }
    is("GET", "/v2/vectorstores", READ, Target::Control);
    is("GET", "/v2/vectorstores/primary", READ, Target::Control);
}

#[test]
fn unknown_routes_fail_safe() {
    is("GET", "/v1/namespaces/ns/brand-new", READ, Target::Store);
    is("GET", "/something/else", READ, Target::Store);
    is("POST", "/v1/namespaces/ns/brand-new", ADMIN, Target::Store);
    is("PURGE", "/v2/namespaces/ns", ADMIN, Target::Store);
    is("PUT", "/v2/namespaces/ns", ADMIN, Target::Store);
    assert_eq!(
        c("POST", "/v1/namespaces/ns/brand-new").namespace,
        Some("ns")
    );
}

#[test]
fn rejects_encoded_slashes_dot_segments_nul_and_bad_namespaces() {
    for p in [
        "/v2/namespaces/a%2Fb/query",
        "/v2/namespaces/a%2fb",
        "/v2/namespaces/%2e%2e/query",
        "/v2/namespaces/../x",
        "/v2/namespaces/./x",
        "/v2//namespaces/x",
        "/v2/namespaces/x\0/query",
        "/v2/namespaces/bad*name/query",
        "/v2/namespaces/has space/query",
        "relative/path",
    ] {
        let d = classify(&[], "POST", p)
            .err()
            .unwrap_or_else(|| unreachable!("{p} accepted"));
        assert_eq!(d.status(), 400, "{p}");
    }
    let long = format!("/v2/namespaces/{}/query", "a".repeat(129));
    assert!(classify(&[], "POST", &long).is_err());
    let max = format!("/v2/namespaces/{}/query", "a".repeat(128));
    assert!(classify(&[], "POST", &max).is_ok());
}

#[test]
fn config_rules_are_tried_first() {
    let rule = |m: Option<&str>, p: &str, scope, target| {
        RouteRule::compile(&RouteRuleConfig {
            method: m.map(str::to_owned),
            path: p.into(),
            scope,
            target,
        })
        .unwrap_or_else(|e| unreachable!("{e}"))
    };
    let rules = [
        rule(
            Some("POST"),
            "/v2/namespaces/{ns}/custom",
            ScopeRequirement::Read,
            RouteTargetConfig::Store,
        ),
        rule(
            None,
            "/v3/**",
            ScopeRequirement::Write,
            RouteTargetConfig::App,
        ),
    ];
    let r =
        classify(&rules, "POST", "/v2/namespaces/shop/custom").unwrap_or_else(|_| unreachable!());
    assert_eq!(
        (r.scope, r.target, r.namespace),
        (READ, Target::Store, Some("shop"))
    );
    let r = classify(&rules, "DELETE", "/v3/a/b/c").unwrap_or_else(|_| unreachable!());
    assert_eq!((r.scope, r.target), (WRITE, Target::App));
    assert!(RouteRule::compile(&RouteRuleConfig {
        method: Some("get".into()),
        path: "/x".into(),
        scope: ScopeRequirement::Read,
        target: RouteTargetConfig::Store
    })
    .is_err());
}
