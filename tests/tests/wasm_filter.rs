//! The built `.wasm` driven through the proxy-wasm ABI by the wasmtime host: configuration
//! refused, requests allowed (with the rewritten headers), denied, counters and log state.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_tests::demo;
use layergate_tests::paths;
use layergate_tests::wasm_host::{FilterHost, FilterModule, Outcome, Request};
use std::sync::OnceLock;

const ENV: &[(&str, &str)] = &[
    ("LAYERGATE_PRIMARY_KEY", "tpuf-primary-dev-key"),
    ("LAYERGATE_ARCHIVE_KEY", "tpuf-archive-dev-key"),
];

/// The built filter, compiled once for all tests (each test still gets its own VM).
fn module() -> &'static FilterModule {
    static MODULE: OnceLock<FilterModule> = OnceLock::new();
    MODULE.get_or_init(|| {
        let wasm = paths::wasm_path().unwrap_or_else(|e| panic!("{e:#}"));
        FilterModule::compile(&wasm).unwrap_or_else(|e| panic!("{e:#}"))
    })
}

fn host() -> FilterHost {
    FilterHost::load(module(), &demo::filter_config().unwrap(), ENV)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn invalid_configuration_is_refused_in_on_configure() {
    for bad in [
        "not json",
        r#"{"version":1,"bogus":true}"#,
        r#"{"version":9,"stores":[]}"#,
    ] {
        let mut vm = FilterHost::start(module(), ENV).unwrap();
        assert!(!vm.configure(bad).unwrap(), "accepted {bad}");
        assert!(
            vm.logs()
                .iter()
                .any(|l| l.contains("configuration refused")),
            "{:?}",
            vm.logs()
        );
    }
    let err = FilterHost::load(module(), r#"{"version":1,"bogus":true}"#, ENV)
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("unknown field `bogus`"),
        "{err:#}"
    );
}

#[test]
fn allowed_request_gets_the_store_credential_and_cluster() {
    let mut vm = host();
    let out = vm
        .request(
            Request::new("POST", "/v2/namespaces/shop-a/query?stainless_overload=1")
                .header("authorization", "Bearer demo-read-token")
                .header("x-layergate-cluster", "store_archive")
                .header("x-layergate-principal", "root"),
        )
        .unwrap();
    let Outcome::Forwarded { headers } = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        header(&headers, "authorization"),
        Some("Bearer tpuf-primary-dev-key")
    );
    assert_eq!(
        header(&headers, "x-layergate-cluster"),
        Some("store_primary")
    );
    assert_eq!(header(&headers, "x-layergate-principal"), None);
    assert_eq!(
        header(&headers, ":path"),
        Some("/v2/namespaces/shop-a/query?stainless_overload=1")
    );
    // The audit line's fragment: the members the access log's JSON template closes with.
    let fragment = vm.property("layergate").unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&format!("{{\"x\":0{fragment}}}")).unwrap();
    assert_eq!(v["principal"], "key:primary/demo-read");
    assert_eq!(v["principal_kind"], "inbound_key");
    assert_eq!(v["key_name"], "demo-read");
    assert_eq!(
        (v["scope"].as_str(), v["store"].as_str()),
        (Some("read"), Some("primary"))
    );
    assert_eq!(v["namespaces"], serde_json::json!(["shop-a"]));
    assert_eq!(v["decision"], "allowed");
}

#[test]
fn denied_requests_get_turbopuffer_shaped_local_replies() {
    let mut vm = host();
    let reply = |out: Outcome| match out {
        Outcome::LocalReply(r) => r,
        other => panic!("{other:?}"),
    };
    let r = reply(
        vm.request(Request::new("GET", "/v1/namespaces/shop-a/metadata"))
            .unwrap(),
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        header(&r.headers, "www-authenticate"),
        Some(r#"Bearer realm="layergate""#)
    );
    assert_eq!(header(&r.headers, "content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["status"], "error");
    let r = reply(
        vm.request(
            Request::new("POST", "/v2/namespaces/shop-a")
                .header("authorization", "Bearer demo-read-token")
                .body("{}"),
        )
        .unwrap(),
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        header(&r.headers, "www-authenticate"),
        Some(r#"Bearer realm="layergate", error="insufficient_scope", scope="write""#)
    );
    // Counters are kept in the VM and flushed on tick.
    vm.tick().unwrap();
    assert_eq!(vm.metric("layergate.denied_401"), Some(1));
    assert_eq!(vm.metric("layergate.denied_403"), Some(1));
}

#[test]
fn restricted_key_body_is_checked_and_expiry_follows_the_host_clock() {
    let mut cfg: serde_json::Value = serde_json::from_str(&demo::filter_config().unwrap()).unwrap();
    // A copy writes its target and reads its source: read and write.
    cfg["apiKeys"][0]["entitlements"]["vectorstore.primary"]["scopes"] =
        serde_json::json!(["read", "write"]);
    cfg["apiKeys"][0]["expiresAt"] = serde_json::json!("2027-01-01T00:00:00Z");
    let mut vm = FilterHost::load(module(), &cfg.to_string(), ENV).unwrap();
    let copy = |from: &str| {
        Request::new("POST", "/v2/namespaces/shop-new")
            .header(
                "authorization",
                &format!("Bearer {}", layergate_tests::tour::SHOP_READER_TOKEN),
            )
            .body(format!(r#"{{"copy_from_namespace":"{from}"}}"#))
    };
    let Outcome::Forwarded { headers } = vm.request(copy("shop-old")).unwrap() else {
        panic!()
    };
    assert_eq!(header(&headers, "x-layergate-inspect"), Some("1"));
    assert!(matches!(vm.request(copy("hr")).unwrap(), Outcome::LocalReply(r) if r.status == 403));
    // Without read, copying out of its own namespaces is refused too.
    cfg["apiKeys"][0]["entitlements"]["vectorstore.primary"]["scopes"] =
        serde_json::json!(["write"]);
    let mut write_only = FilterHost::load(module(), &cfg.to_string(), ENV).unwrap();
    assert!(
        matches!(write_only.request(copy("shop-old")).unwrap(), Outcome::LocalReply(r) if r.status == 403)
    );
    vm.set_time(1_798_761_600); // 2027-01-01: expired
    assert!(
        matches!(vm.request(copy("shop-old")).unwrap(), Outcome::LocalReply(r) if r.status == 401)
    );
}

#[test]
fn other_hosts_of_a_shared_gateway_pass_untouched() {
    let mut cfg: serde_json::Value = serde_json::from_str(&demo::filter_config().unwrap()).unwrap();
    cfg["hosts"] = serde_json::json!(["vectors.example.com", "*.vectors.example.org"]);
    let mut vm = FilterHost::load(module(), &cfg.to_string(), ENV).unwrap();
    let to = |authority: &str, token: &str| {
        let mut r = Request::new("POST", "/v2/namespaces/shop-a/query")
            .header("authorization", &format!("Bearer {token}"))
            .header("x-layergate-cluster", "store_archive");
        for (k, v) in &mut r.headers {
            if k == ":authority" {
                *v = authority.to_owned();
            }
        }
        r
    };
    // Another team's host: its own Authorization stays, no store credential, no routing
    // header (the client's is removed), even for a token layergate does not know.
    for authority in [
        "other.example.com",
        "vectors.example.com.evil",
        "a.b.vectors.example.org",
    ] {
        let Outcome::Forwarded { headers } = vm.request(to(authority, "their-own-token")).unwrap()
        else {
            panic!("{authority}: not passed through")
        };
        assert_eq!(
            header(&headers, "authorization"),
            Some("Bearer their-own-token")
        );
        assert_eq!(header(&headers, "x-layergate-cluster"), None, "{authority}");
    }
    // The gateway's own hosts (any case, with a port, one-label wildcard) are judged.
    for authority in [
        "vectors.example.com",
        "VECTORS.example.com:8080",
        "eu.vectors.example.org",
    ] {
        assert!(
            matches!(vm.request(to(authority, "nope")).unwrap(), Outcome::LocalReply(r) if r.status == 401),
            "{authority}"
        );
        let Outcome::Forwarded { headers } = vm.request(to(authority, "demo-read-token")).unwrap()
        else {
            panic!("{authority}")
        };
        assert_eq!(
            header(&headers, "authorization"),
            Some("Bearer tpuf-primary-dev-key")
        );
        assert_eq!(
            header(&headers, "x-layergate-cluster"),
            Some("store_primary")
        );
    }
}

/// The key-service sync loop of the root context (SPEC §6), driven through the ABI: the first
/// call at configure, 503 for minted tokens until it answers, snapshot then deltas swapped in,
/// a long poll asking from the revision it holds, back-off after a failure, the stale gauge,
/// and 503 past maxStalenessSeconds while inbound keys keep working.
#[test]
fn minted_keys_come_from_the_key_service_and_fail_closed_when_it_is_gone() {
    let mut cfg: serde_json::Value = serde_json::from_str(&demo::filter_config().unwrap()).unwrap();
    let shop = cfg["apiKeys"][0].clone();
    cfg.as_object_mut().unwrap().remove("apiKeys");
    cfg["keyService"] = serde_json::json!({
        "cluster": "layergate_control", "credential": {"inline": "gw-cred"},
        "maxStalenessSeconds": 60, "pollSeconds": 20,
    });
    let mut vm = FilterHost::load(module(), &cfg.to_string(), ENV).unwrap();
    let t0 = 1_795_528_719u64;
    let query = |token: &str| {
        Request::new("POST", "/v2/namespaces/shop-a/query")
            .header("authorization", &format!("Bearer {token}"))
    };
    let status = |vm: &mut FilterHost, token: &str| match vm.request(query(token)).unwrap() {
        Outcome::LocalReply(r) => r.status,
        Outcome::Forwarded { .. } => 200,
    };
    let calls = vm.calls();
    assert_eq!(calls.len(), 1, "the first sync starts at configure");
    let first = &calls[0];
    assert_eq!(first.upstream, "layergate_control");
    assert_eq!(
        first.header(":path"),
        Some("/v2/keys/sync?wait=20&config=1")
    );
    assert_eq!(first.header("authorization"), Some("Bearer gw-cred"));
    assert_eq!(first.timeout_ms, 25_000);
    assert_eq!(
        status(&mut vm, layergate_tests::tour::SHOP_READER_TOKEN),
        503
    );
    assert_eq!(
        status(&mut vm, "demo-read-token"),
        200,
        "inbound keys work from the start"
    );

    let snapshot = serde_json::json!({"revision": "r1", "snapshot": true, "keys": [shop]});
    vm.answer_call(1, Some(200), snapshot.to_string().as_bytes())
        .unwrap();
    assert_eq!(
        status(&mut vm, layergate_tests::tour::SHOP_READER_TOKEN),
        200
    );
    let calls = vm.calls();
    assert_eq!(calls.len(), 2, "the next long poll starts at once");
    assert_eq!(
        calls[1].header(":path"),
        Some("/v2/keys/sync?wait=20&config=1&since=r1")
    );

    // Revoked: a delta removes it.
    let delta = serde_json::json!({"revision": "r2", "snapshot": false, "keys": [],
                                   "removed": [shop["keyId"]]});
    vm.answer_call(2, Some(200), delta.to_string().as_bytes())
        .unwrap();
    assert_eq!(
        status(&mut vm, layergate_tests::tour::SHOP_READER_TOKEN),
        401
    );
    // Minted again.
    let delta =
        serde_json::json!({"revision": "r3", "snapshot": false, "keys": [shop], "removed": []});
    vm.answer_call(3, Some(200), delta.to_string().as_bytes())
        .unwrap();
    assert_eq!(
        status(&mut vm, layergate_tests::tour::SHOP_READER_TOKEN),
        200
    );

    // The key service goes away: no new call until the back-off passes; the table serves.
    // (The VM's usage report goes beside the syncs, on a call of its own.)
    let syncs = |vm: &FilterHost| -> Vec<u32> {
        vm.calls()
            .iter()
            .filter(|c| {
                c.header(":path")
                    .is_some_and(|p| p.starts_with("/v2/keys/sync"))
            })
            .map(|c| c.token)
            .collect()
    };
    vm.answer_call(4, None, b"").unwrap();
    assert_eq!(syncs(&vm).len(), 4);
    vm.set_time(t0 + 2);
    vm.tick().unwrap();
    let retry = syncs(&vm);
    assert_eq!(retry.len(), 5, "retried after the back-off");
    let report = vm
        .calls()
        .into_iter()
        .find(|c| c.header(":path") == Some("/v2/keys/usage"))
        .unwrap_or_else(|| panic!("the usage of the minted key is not reported"));
    assert_eq!(
        (report.header(":method"), report.header("authorization")),
        (Some("POST"), Some("Bearer gw-cred"))
    );
    vm.answer_call(retry[4], Some(503), b"").unwrap();
    vm.set_time(t0 + 30);
    vm.tick().unwrap();
    assert_eq!(vm.metric("layergate.keys_stale_seconds"), Some(30));
    assert!(vm.metric("layergate.keys_sync_failures").unwrap_or(0) >= 2);
    assert_eq!(
        status(&mut vm, layergate_tests::tour::SHOP_READER_TOKEN),
        200
    );
    // Past maxStalenessSeconds: minted tokens 503, inbound keys unaffected.
    vm.set_time(t0 + 61);
    assert_eq!(
        status(&mut vm, layergate_tests::tour::SHOP_READER_TOKEN),
        503
    );
    assert_eq!(status(&mut vm, "demo-read-token"), 200);
    // It comes back: a sync with nothing new makes the table fresh again.
    vm.tick().unwrap();
    let last = *syncs(&vm).last().unwrap();
    let same = serde_json::json!({"revision": "r3", "snapshot": false, "keys": [], "removed": []});
    vm.answer_call(last, Some(200), same.to_string().as_bytes())
        .unwrap();
    assert_eq!(
        status(&mut vm, layergate_tests::tour::SHOP_READER_TOKEN),
        200
    );
}

/// Issue 13: the VM's linear memory never shrinks, so what one request makes the filter hold
/// stays for good. A 4 MB body that gzips to a few KiB is refused as it inflates (at 64 times
/// its size), and a 100,000-name `namespaces` list is refused at its 513th name: the VM does
/// not grow by megabytes. Prints the figures.
#[test]
fn hostile_bodies_do_not_grow_the_vm() {
    use std::io::Write;
    let mut cfg: serde_json::Value = serde_json::from_str(&demo::filter_config().unwrap()).unwrap();
    cfg["apiKeys"][0]["entitlements"]["vectorstore.primary"]["scopes"] =
        serde_json::json!(["read", "write"]);
    cfg["app"] = serde_json::json!({"cluster": "layer_app"});
    let mut vm = FilterHost::load(module(), &cfg.to_string(), ENV).unwrap();
    let auth = format!("Bearer {}", layergate_tests::tour::SHOP_READER_TOKEN);
    let before = vm.memory_bytes().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(
        format!(
            r#"{{"copy_from_namespace":"shop-a","pad":"{}"}}"#,
            "a".repeat(4_000_000)
        )
        .as_bytes(),
    )
    .unwrap();
    let bomb = gz.finish().unwrap();
    let r = vm
        .request(
            Request::new("POST", "/v2/namespaces/shop-new")
                .header("authorization", &auth)
                .header("content-encoding", "gzip")
                .body(bomb.clone()),
        )
        .unwrap();
    assert!(
        matches!(r, Outcome::LocalReply(ref l) if l.status == 413),
        "{r:?}"
    );
    let list: Vec<String> = (0..100_000).map(|i| format!("shop-{i}")).collect();
    let body = serde_json::json!({"namespaces": list}).to_string();
    let r = vm
        .request(
            Request::new("POST", "/v2/query")
                .header("authorization", &auth)
                .body(body.clone()),
        )
        .unwrap();
    assert!(
        matches!(r, Outcome::LocalReply(ref l) if l.status == 400),
        "{r:?}"
    );
    let after = vm.memory_bytes().unwrap();
    println!(
        "VM linear memory: {} KiB before, {} KiB after a {} B gzip bomb (4 MB inflated) and a {} KiB namespace list",
        before / 1024,
        after / 1024,
        bomb.len(),
        body.len() / 1024
    );
    // The list itself (1.3 MB) is buffered by the host into the VM once; nothing is built
    // from it beyond 512 names, and the bomb never inflates past 64 × its size.
    assert!(
        after - before < body.len() + 2 * 1024 * 1024,
        "the VM grew by {} KiB",
        (after - before) / 1024
    );
}

/// Issue 21.9: `keys_stale_seconds` was one gauge every VM overwrote, so it could read 0 while
/// a worker's table was stale. Each VM now records the worst of the process's live VMs.
#[test]
fn the_stale_gauge_is_the_worst_vm_of_the_process() {
    let mut cfg: serde_json::Value = serde_json::from_str(&demo::filter_config().unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("apiKeys");
    cfg["keyService"] = serde_json::json!({
        "cluster": "layergate_control", "credential": {"inline": "gw-cred"},
        "maxStalenessSeconds": 60, "pollSeconds": 20,
    });
    let mut fresh = FilterHost::load(module(), &cfg.to_string(), ENV).unwrap();
    let mut stale = FilterHost::load(module(), &cfg.to_string(), ENV).unwrap();
    stale.share_data_with(&fresh);
    let t0 = 1_795_528_719u64;
    let snapshot = serde_json::json!({"revision": "r1", "snapshot": true, "keys": []});
    fresh
        .answer_call(1, Some(200), snapshot.to_string().as_bytes())
        .unwrap();
    // `stale`'s first sync never answers; `fresh` keeps a long poll held.
    for t in [t0 + 10, t0 + 20] {
        fresh.set_time(t);
        stale.set_time(t);
        stale.tick().unwrap();
        fresh.tick().unwrap();
    }
    assert_eq!(stale.metric("layergate.keys_stale_seconds"), Some(20));
    assert_eq!(
        fresh.metric("layergate.keys_stale_seconds"),
        Some(20),
        "the fresh VM reports the stale one"
    );
    // A VM that stops ticking (gone) stops counting after a few seconds: `fresh` reports its
    // own (its long poll, unanswered here, confirmed the table until 20 s after it was sent).
    fresh.set_time(t0 + 30);
    fresh.tick().unwrap();
    assert_eq!(fresh.metric("layergate.keys_stale_seconds"), Some(10));
}
