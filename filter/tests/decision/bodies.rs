//! Inspected bodies: every namespace a body names is checked, bodies are JSON (plain or gzip)
//! within the limits, federated queries per store; and who streams without inspection.

use crate::{
    bearer, call, demo, demo_json, denied, forward, inspect, policy_from, run, writer_policy, NOW,
    SHOP,
};
use layergate_filter::body;
use layergate_filter::decision::Decision;
use serde_json::json;

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
