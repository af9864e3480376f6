//! The operator's control API behind the real gateway: mint → use → revoke → refused, the
//! admin checks (done by the filter and again by the operator), and the official hevlayer
//! client calling mint_key / list_keys / list_vectorstores.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_operator::api::{Api, ServeLimits, DEFAULT_AUTHENTICATE_PER_MINUTE};
use layergate_operator::source::DirSource;
use layergate_tests::demo::{self, ARCHIVE_KEY, PRIMARY_KEY};
use layergate_tests::devstore::DevStore;
use layergate_tests::envoy::Envoy;
use layergate_tests::http::{Request, Response};
use layergate_tests::paths;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

struct Stack {
    envoy: Envoy,
    _stores: (DevStore, DevStore),
    control: SocketAddr,
}

fn start(tag: &str) -> Stack {
    start_with(tag, DEFAULT_AUTHENTICATE_PER_MINUTE, |_| {})
}

/// A stack whose manifests `edit` may change first, with an `authenticate` limit.
fn start_with(tag: &str, per_minute: u32, edit: impl Fn(&std::path::Path)) -> Stack {
    start_limited(tag, per_minute, ServeLimits::default(), edit)
}

/// [`start_with`], the control API with other connection limits.
fn start_limited(
    tag: &str,
    per_minute: u32,
    limits: ServeLimits,
    edit: impl Fn(&std::path::Path),
) -> Stack {
    let primary = DevStore::start(PRIMARY_KEY).unwrap();
    let archive = DevStore::start(ARCHIVE_KEY).unwrap();
    let (dir, out) = demo::manifests_for(&format!("control-{tag}"), &primary, &archive).unwrap();
    edit(&dir);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control = listener.local_addr().unwrap();
    let settings = demo::test_settings(Some(control)).unwrap_or_else(|e| panic!("{e:#}"));
    let source = Arc::new(DirSource::new(dir, out.clone(), settings));
    source.refresh().unwrap();
    source.probe_now().unwrap();
    let api = Arc::new(Api::new(source, per_minute).with_limits(limits));
    std::thread::spawn(move || {
        api.serve_blocking(
            listener,
            layergate_operator::api::Role::Control,
            std::future::pending(),
        )
    });
    let bootstrap = std::fs::read_to_string(out.join("bootstrap.yaml")).unwrap();
    let envoy =
        Envoy::start_yaml(&bootstrap, &paths::repo_root()).unwrap_or_else(|e| panic!("{e:#}"));
    Stack {
        envoy,
        _stores: (primary, archive),
        control,
    }
}

/// Polls until `path` answers `status` with `token` (the gateway reloads within a second).
fn eventually(s: &Stack, path: &str, token: &str, status: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = call(s, "GET", path, Some(token), None).status;
        if got == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} answered {got}, not {status}, after 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn call(
    s: &Stack,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Response {
    let mut r = Request::new(method, path);
    if let Some(t) = token {
        r = r.bearer(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send(s.envoy.addr).unwrap()
}

#[test]
fn mint_use_revoke_refused_through_the_gateway() {
    let s = start("cycle");
    let admin = Some("demo-admin-token");
    let spec = json!({"name": "cohort-reader", "owner": "acme", "expiresAfter": "30d",
                      "entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": ["cohort-*"]}}});
    // Only admins manage keys: the gateway refuses the others before the operator sees them.
    assert_eq!(
        call(
            &s,
            "POST",
            "/v2/keys",
            Some("demo-rw-token"),
            Some(spec.clone())
        )
        .status,
        403
    );
    assert_eq!(
        call(&s, "POST", "/v2/keys", None, Some(spec.clone())).status,
        401
    );
    let minted = call(&s, "POST", "/v2/keys", admin, Some(spec.clone()));
    assert_eq!(minted.status, 201, "{}", minted.text());
    let minted = minted.json().unwrap();
    let token = minted["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("hvl_") && token.len() >= 36);
    assert_eq!(minted["phase"], "Active");
    assert_eq!(
        call(&s, "POST", "/v2/keys", admin, Some(spec)).status,
        409,
        "names are unique"
    );
    // The new key works at once, within its globs only.
    assert_eq!(
        call(
            &s,
            "POST",
            "/v2/namespaces/cohort-1",
            Some("demo-rw-token"),
            Some(json!({"upsert_rows": [{"id": 1}]}))
        )
        .status,
        200
    );
    eventually(&s, "/v1/namespaces/cohort-1/metadata", &token, 200);
    assert_eq!(
        call(
            &s,
            "GET",
            "/v1/namespaces/shop-1/metadata",
            Some(&token),
            None
        )
        .status,
        403
    );
    // authenticate needs no bearer: the token in the body is the credential.
    let auth = call(
        &s,
        "POST",
        "/v2/keys/authenticate",
        None,
        Some(json!({"token": token})),
    );
    assert_eq!(auth.status, 200, "{}", auth.text());
    assert_eq!(auth.json().unwrap()["owner"], "acme");
    // The token never appears in listings, and list/get show the key.
    let list = call(&s, "GET", "/v2/keys", admin, None);
    assert!(!list.text().contains(&token));
    let id = minted["keyId"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&s, "GET", &format!("/v2/keys/{id}"), admin, None)
            .json()
            .unwrap()["name"],
        "cohort-reader"
    );
    // Revoke (idempotent): the key is refused right away and kept on record.
    let revoked = call(&s, "POST", &format!("/v2/keys/{id}/revoke"), admin, None);
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(revoked.json().unwrap()["phase"], "Revoked");
    assert_eq!(
        call(&s, "POST", &format!("/v2/keys/{id}/revoke"), admin, None).status,
        200
    );
    eventually(&s, "/v1/namespaces/cohort-1/metadata", &token, 401);
    assert_eq!(
        call(
            &s,
            "POST",
            "/v2/keys/authenticate",
            None,
            Some(json!({"token": token}))
        )
        .status,
        401
    );
    let names = |r: Response| {
        r.json().unwrap()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(!names(call(&s, "GET", "/v2/keys", admin, None)).contains(&"cohort-reader".to_owned()));
    assert!(
        names(call(&s, "GET", "/v2/keys?includeRevoked=true", admin, None))
            .contains(&"cohort-reader".to_owned())
    );
    // Delete removes the record.
    assert_eq!(
        call(&s, "DELETE", &format!("/v2/keys/{id}"), admin, None).status,
        200
    );
    assert_eq!(
        call(&s, "GET", &format!("/v2/keys/{id}"), admin, None).status,
        404
    );
    // Vector stores: read scope; status conditions, never a credential.
    let stores = call(&s, "GET", "/v2/vectorstores", Some("demo-read-token"), None);
    assert_eq!(stores.status, 200);
    assert!(!stores.text().contains(PRIMARY_KEY));
    // Both devstores answered the probe with their own credential.
    for store in stores.json().unwrap()["vectorstores"].as_array().unwrap() {
        assert_eq!(store["status"]["reachable"], true, "{store}");
        let ready = store["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("True"), Some("Valid")),
            "{ready}"
        );
    }
    assert_eq!(
        call(
            &s,
            "GET",
            "/v2/vectorstores/archive",
            Some("demo-read-token"),
            None
        )
        .json()
        .unwrap()["name"],
        "archive"
    );
    // The operator checks callers itself too (a request that bypasses the gateway).
    let direct = Request::new("GET", "/v2/keys")
        .bearer("demo-read-token")
        .send(s.control)
        .unwrap();
    assert_eq!(direct.status, 403);
    let health = Request::new("GET", "/metrics").send(s.control).unwrap();
    assert!(
        health
            .text()
            .contains("layergate_operator_api_keys_active 1"),
        "{}",
        health.text()
    );
}

#[test]
fn official_hevlayer_client_mints_lists_and_revokes() {
    let s = start("hevlayer");
    let url = format!("http://{}", s.envoy.addr);
    let (code, out) =
        layergate_tests::python::run_script("hevlayer_keys.py", &[&url, "demo-admin-token"])
            .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["minted"]["phase"], "Active");
    assert_eq!(out["minted"]["token_prefix"], "hvl_");
    assert_eq!(out["listed"], json!(["py-cohort", "shop-reader"]));
    assert_eq!(
        out["stores"],
        json!([["archive", false], ["primary", true]])
    );
    assert_eq!(out["after_revoke"]["py-cohort"], "Revoked");
    eventually(
        &s,
        "/v1/namespaces/cohort-1/metadata",
        out["token"].as_str().unwrap(),
        401,
    );
}

#[test]
fn authenticate_is_rate_limited_per_minute() {
    let primary = DevStore::start(PRIMARY_KEY).unwrap();
    let archive = DevStore::start(ARCHIVE_KEY).unwrap();
    let (dir, out) = demo::manifests_for("ratelimit", &primary, &archive).unwrap();
    // The rendering names a control cluster (its address does not matter: no Envoy here).
    let settings = demo::test_settings(Some("127.0.0.1:9".parse().unwrap())).unwrap();
    let source = Arc::new(DirSource::new(dir, out, settings));
    source.refresh().unwrap();
    // Each attempt gets a fresh API (a fresh window) allowing 2 calls a minute.
    let serve = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let api = Arc::new(Api::new(source.clone(), 2));
        std::thread::spawn(move || {
            api.serve_blocking(
                listener,
                layergate_operator::api::Role::Control,
                std::future::pending(),
            )
        });
        addr
    };
    let authenticate = |control: SocketAddr| {
        let r = Request::new("POST", "/v2/keys/authenticate")
            .json(&json!({"token": layergate_tests::tour::SHOP_READER_TOKEN}));
        for _ in 0..50 {
            if let Ok(resp) = r.send(control) {
                return resp.status;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the control API did not answer");
    };
    let minute = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60
    };
    // The window is a calendar minute: if one ends mid-sequence, try again with a fresh API.
    for _ in 0..2 {
        let control = serve();
        let start = minute();
        let statuses: Vec<u16> = (0..3).map(|_| authenticate(control)).collect();
        if minute() == start {
            assert_eq!(statuses, [200, 200, 429]);
            return;
        }
    }
    panic!("two minute boundaries within one test run");
}

/// Issue 10, through the gateway: `demo-admin` (an inbound admin key of `primary`, refused by
/// `archive`) minted a key with admin on `archive` whose writes then reached `archive`.
#[test]
fn a_primary_admin_cannot_mint_its_way_into_archive() {
    let s = start("escalate");
    let admin = Some("demo-admin-token");
    assert_eq!(
        call(&s, "GET", "/v1/namespaces/logs-2026/metadata", admin, None).status,
        401,
        "demo-admin is nobody on archive"
    );
    let evil =
        json!({"name": "evil", "entitlements": {"vectorstore.archive": {"scopes": ["admin"]}}});
    let r = call(&s, "POST", "/v2/keys", admin, Some(evil));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("vectorstore.archive"), "{}", r.text());
    // What it may mint stays on primary: archive refuses the new key.
    let own =
        json!({"name": "own", "entitlements": {"vectorstore.primary": {"scopes": ["admin"]}}});
    let r = call(&s, "POST", "/v2/keys", admin, Some(own));
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json().unwrap()["token"].as_str().unwrap().to_owned();
    eventually(&s, "/v1/namespaces", &token, 200);
    let write = call(
        &s,
        "POST",
        "/v2/namespaces/logs-2026",
        Some(&token),
        Some(json!({"upsert_rows": [{"id": 1}]})),
    );
    assert_eq!(write.status, 403, "{}", write.text());
}

/// Issue 10, through the gateway: with the default store in `open` mode an anonymous caller
/// minted, listed, revoked and deleted keys.
#[test]
fn open_mode_does_not_open_key_management_through_the_gateway() {
    let s = start_with("open", DEFAULT_AUTHENTICATE_PER_MINUTE, |dir| {
        let file = dir.join("vectorstores.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let start = text.find("  inboundAuth:\n    mode: keys").unwrap();
        let end = text[start..].find("\n---").unwrap() + start;
        let text = format!(
            "{}  inboundAuth: {{mode: open}}{}",
            &text[..start],
            &text[end..]
        );
        std::fs::write(&file, text).unwrap();
    });
    // The data plane is open...
    assert_eq!(call(&s, "GET", "/v1/namespaces", None, None).status, 200);
    // ...the control plane is not.
    let mint =
        json!({"name": "anon", "entitlements": {"vectorstore.primary": {"scopes": ["admin"]}}});
    for (method, path, body) in [
        ("POST", "/v2/keys", Some(mint)),
        ("GET", "/v2/keys", None),
        ("GET", "/v2/keys/shop-reader", None),
        ("POST", "/v2/keys/shop-reader/revoke", None),
        ("DELETE", "/v2/keys/shop-reader", None),
    ] {
        let r = call(&s, method, path, None, body);
        assert_eq!(r.status, 401, "{method} {path}: {}", r.text());
    }
    // Issue 21.3: a read-only minted key's token counts there, and manages nothing: it listed
    // keys, revoked others and minted a never-expiring copy of itself.
    let reader = layergate_tests::tour::SHOP_READER_TOKEN;
    let copy = json!({"name": "copy", "expiresAfter": "never", "entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": ["shop-*"]}}});
    for (method, path, body) in [
        ("POST", "/v2/keys", Some(copy)),
        ("GET", "/v2/keys", None),
        ("POST", "/v2/keys/shop-reader/revoke", None),
    ] {
        let r = call(&s, method, path, Some(reader), body);
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
    }
    let auth = call(
        &s,
        "POST",
        "/v2/keys/authenticate",
        None,
        Some(json!({"token": layergate_tests::tour::SHOP_READER_TOKEN})),
    );
    assert_eq!(auth.status, 200, "shop-reader untouched: {}", auth.text());
}

/// Issue 21.10 and 21.1 through the real gateway: an unknown key route went to the default
/// store with the store credential swapped in; a copy's source on another store was judged on
/// the destination store (and not at all for unrestricted callers).
#[test]
fn key_paths_are_the_control_apis_and_copies_stay_within_a_store() {
    let s = start("issue21");
    let r = call(
        &s,
        "POST",
        "/v2/keys/shop-reader/suspend",
        Some("demo-admin-token"),
        Some(json!({"overlap": "24h"})),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.text().contains("control API has no route"),
        "{}",
        r.text()
    );
    let r = call(
        &s,
        "POST",
        "/v2/keys/shop-reader/suspend",
        None,
        Some(json!({})),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // `logs-2026` is archive's (its Index); demo-rw holds primary whole.
    for body in [
        json!({"copy_from_namespace": "logs-2026"}),
        json!({"copy_from_namespace": {"source_namespace": "logs-2026"}}),
        json!({"branch_from_namespace": "logs-2026"}),
    ] {
        let r = call(
            &s,
            "POST",
            "/v2/namespaces/shop-stolen",
            Some("demo-rw-token"),
            Some(body.clone()),
        );
        assert_eq!(r.status, 403, "{body}: {}", r.text());
        assert!(r.text().contains("across stores"), "{}", r.text());
    }
    let r = call(
        &s,
        "POST",
        "/v2/namespaces/shop-stolen/async",
        Some("demo-rw-token"),
        Some(json!({"source_namespace": "logs-2026"})),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = call(
        &s,
        "POST",
        "/v2/namespaces/shop-a",
        Some("demo-rw-token"),
        Some(json!({"copy_from_namespace": "shop-b", "source_region": "aws-eu-west-1"})),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // A plain write of an unrestricted caller still goes through (read, judged, forwarded).
    let r = call(
        &s,
        "POST",
        "/v2/namespaces/shop-a",
        Some("demo-rw-token"),
        Some(
            json!({"upsert_rows": [{"id": 1, "vector": [0.1, 0.2]}], "distance_metric": "cosine_distance"}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Issue 10, through the gateway: the `authenticate` limit keys on the address Envoy saw, so
/// a client cannot escape it by sending its own `x-forwarded-for`.
#[test]
fn authenticate_limit_through_the_gateway_ignores_a_forged_forwarded_for() {
    let s = start_with("xff", 2, |_| {});
    let minute = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60
    };
    let first = minute();
    let statuses: Vec<u16> = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .iter()
        .map(|forged| {
            Request::new("POST", "/v2/keys/authenticate")
                .header("x-forwarded-for", forged)
                .json(&json!({"token": layergate_tests::tour::SHOP_READER_TOKEN}))
                .send(s.envoy.addr)
                .unwrap()
                .status
        })
        .collect();
    if minute() == first {
        assert_eq!(statuses, [200, 200, 429]);
    }
}

/// SPEC §6 in the real Envoy with the real key service: the key service is down when the
/// gateway starts (minted tokens 503, inbound keys 200), comes up and the gateway syncs on its
/// own; then a revocation and a mint are enforced at the gateway shortly after the operator
/// answers (the figures are printed; the bound asserted is generous for a loaded machine).
#[test]
fn minted_keys_follow_the_key_service_down_at_start_then_changes_within_a_second() {
    let primary = DevStore::start(PRIMARY_KEY).unwrap();
    let archive = DevStore::start(ARCHIVE_KEY).unwrap();
    let (dir, out) = demo::manifests_for("control-keysync", &primary, &archive).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control = listener.local_addr().unwrap();
    let settings = demo::test_settings(Some(control)).unwrap_or_else(|e| panic!("{e:#}"));
    let source = Arc::new(DirSource::new(dir, out.clone(), settings));
    source.refresh().unwrap();
    let rendered = std::fs::read_to_string(out.join("layergate.json")).unwrap();
    assert!(
        rendered.contains("keyService") && !rendered.contains("apiKeys"),
        "{rendered}"
    );
    let bootstrap = std::fs::read_to_string(out.join("bootstrap.yaml")).unwrap();
    let envoy =
        Envoy::start_yaml(&bootstrap, &paths::repo_root()).unwrap_or_else(|e| panic!("{e:#}"));
    let s = Stack {
        envoy,
        _stores: (primary, archive),
        control,
    };
    let shop = layergate_tests::tour::SHOP_READER_TOKEN;
    let path = "/v1/namespaces/shop-a/metadata";
    // The key service is not listening yet: minted tokens fail closed, inbound keys work.
    let r = call(&s, "GET", path, Some(shop), None);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("key table is not loaded"), "{}", r.text());
    assert_ne!(
        call(&s, "GET", path, Some("demo-read-token"), None).status,
        503
    );
    // It comes up: the gateway's retries find it.
    let api = Arc::new(Api::new(source, DEFAULT_AUTHENTICATE_PER_MINUTE));
    std::thread::spawn(move || {
        api.serve_blocking(
            listener,
            layergate_operator::api::Role::Control,
            std::future::pending(),
        )
    });
    let started = std::time::Instant::now();
    eventually(&s, path, shop, 404); // the devstore has no such namespace: the key passed
    println!(
        "first sync after the key service came up: {:?}",
        started.elapsed()
    );
    // Revoke, then measure until the gateway refuses the token.
    let admin = Some("demo-admin-token");
    let revoked = call(&s, "POST", "/v2/keys/shop-reader/revoke", admin, None);
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let answered = std::time::Instant::now();
    eventually(&s, path, shop, 401);
    let revoke_delay = answered.elapsed();
    // Mint, and measure until the new token is accepted.
    let spec = json!({"name": "late-reader", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}});
    let minted = call(&s, "POST", "/v2/keys", admin, Some(spec));
    assert_eq!(minted.status, 201, "{}", minted.text());
    let token = minted.json().unwrap()["token"].as_str().unwrap().to_owned();
    let answered = std::time::Instant::now();
    eventually(&s, path, &token, 404);
    let mint_delay = answered.elapsed();
    println!("revoke enforced {revoke_delay:?} and mint usable {mint_delay:?} after the operator answered (polled every 50 ms)");
    assert!(
        revoke_delay < std::time::Duration::from_secs(2),
        "{revoke_delay:?}"
    );
    assert!(
        mint_delay < std::time::Duration::from_secs(2),
        "{mint_delay:?}"
    );
}

/// Issue 13, upgrades: a gateway whose filter is older than the operator's rendering (here a
/// field this filter does not know) refuses that rendering visibly — the counter
/// `layergate.config_rejected`, a critical log line naming the field and what to do, Envoy's
/// `listener_manager.lds.update_rejected` — and never silently: the previous configuration
/// stays in force, and keeps following the key service, so a revocation made afterwards is
/// still enforced. The gateway reads its own copy of the rendering (as it mounts the Secret
/// in a cluster), into which the new rendering is written.
#[test]
fn a_rendering_the_filter_cannot_read_is_refused_visibly_and_the_old_one_keeps_enforcing() {
    let primary = DevStore::start(PRIMARY_KEY).unwrap();
    let archive = DevStore::start(ARCHIVE_KEY).unwrap();
    let (dir, out) = demo::manifests_for("control-upgrade", &primary, &archive).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control = listener.local_addr().unwrap();
    let settings = demo::test_settings(Some(control)).unwrap_or_else(|e| panic!("{e:#}"));
    let source = Arc::new(DirSource::new(dir, out.clone(), settings));
    source.refresh().unwrap();
    let api = Arc::new(Api::new(source, DEFAULT_AUTHENTICATE_PER_MINUTE));
    std::thread::spawn(move || {
        api.serve_blocking(
            listener,
            layergate_operator::api::Role::Control,
            std::future::pending(),
        )
    });
    // The gateway's copy: what the kubelet mounts from the output Secret.
    let mounted = out.parent().unwrap().join("mounted");
    std::fs::create_dir_all(&mounted).unwrap();
    let (out, mounted) = (out.canonicalize().unwrap(), mounted.canonicalize().unwrap());
    for f in ["cds.json", "lds.json"] {
        std::fs::copy(out.join(f), mounted.join(f)).unwrap();
    }
    let bootstrap = std::fs::read_to_string(out.join("bootstrap.yaml"))
        .unwrap()
        .replace(out.to_str().unwrap(), mounted.to_str().unwrap());
    assert!(bootstrap.contains(mounted.to_str().unwrap()), "{bootstrap}");
    let envoy =
        Envoy::start_yaml(&bootstrap, &paths::repo_root()).unwrap_or_else(|e| panic!("{e:#}"));
    let s = Stack {
        envoy,
        _stores: (primary, archive),
        control,
    };
    let shop = layergate_tests::tour::SHOP_READER_TOKEN;
    let path = "/v1/namespaces/shop-a/metadata";
    eventually(&s, path, shop, 404); // synced: the key passes (the devstore has no namespace)
    assert_eq!(
        s.envoy
            .stat("wasmcustom.layergate.config_rejected")
            .unwrap(),
        None
    );

    // A newer operator's rendering: one field this filter does not know.
    let lds = std::fs::read_to_string(mounted.join("lds.json")).unwrap();
    let marker = r#"\"version\":1,"#;
    assert!(
        lds.contains(marker),
        "the filter configuration in lds.json: {lds}"
    );
    let newer = lds.replacen(marker, r#"\"version\":1,\"futureField\":true,"#, 1);
    let tmp = mounted.join("lds.json.tmp");
    std::fs::write(&tmp, newer).unwrap();
    std::fs::rename(&tmp, mounted.join("lds.json")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s
        .envoy
        .stat("wasmcustom.layergate.config_rejected")
        .unwrap()
        .unwrap_or(0)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no layergate.config_rejected; log:\n{}",
            s.envoy.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        s.envoy
            .stat("listener_manager.lds.update_rejected")
            .unwrap()
            .unwrap_or(0)
            >= 1
    );
    let log = s.envoy.log();
    let line = log
        .lines()
        .find(|l| l.contains("layergate: configuration refused"))
        .unwrap_or_else(|| panic!("no refusal in the log:\n{log}"));
    assert!(
        line.contains("futureField") && line.contains("previous configuration stays"),
        "{line}"
    );

    // The previous configuration keeps enforcing: inbound keys, minted keys, and a
    // revocation made now, which reaches it through the key service.
    assert_ne!(
        call(&s, "GET", path, Some("demo-read-token"), None).status,
        401
    );
    assert_eq!(call(&s, "GET", path, Some(shop), None).status, 404);
    assert_eq!(
        call(
            &s,
            "GET",
            path,
            Some("hvl_notAKeyAtAllNotAKeyAtAll0123456"),
            None
        )
        .status,
        401
    );
    let revoked = call(
        &s,
        "POST",
        "/v2/keys/shop-reader/revoke",
        Some("demo-admin-token"),
        None,
    );
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    eventually(&s, path, shop, 401);
    assert!(
        std::fs::read_to_string(mounted.join("lds.json"))
            .unwrap()
            .contains("futureField"),
        "the gateway still has only the rendering it refused"
    );
}

/// `make demo`'s last rows: a key minted through the gateway works, and revoked is refused,
/// each within a second (timed from the request; the bound here is generous for a loaded
/// machine, the demo itself holds it to one second).
#[test]
fn the_tour_mints_revokes_and_rotates_a_key_and_each_takes_effect_promptly() {
    let s = start("lifecycle");
    let l = layergate_tests::tour::key_lifecycle(s.envoy.addr).unwrap_or_else(|e| panic!("{e:#}"));
    println!(
        "minted → works {:?}, revoked → refused {:?}",
        l.minted_works, l.revoked_refused
    );
    let bound = std::time::Duration::from_secs(3);
    assert!(l.minted_works < bound && l.revoked_refused < bound, "{l:?}");
    // `make demo`'s rotation rows and its usage line, as the tour runs them.
    let r = layergate_tests::tour::rotation(s.envoy.addr).unwrap_or_else(|e| panic!("{e:#}"));
    println!("{r:?}");
    assert!(r.old_works_during, "{r:?}");
    assert!(
        r.new_works < bound && r.old_refused_ms.abs() < 1000,
        "{r:?}"
    );
    let shop = layergate_tests::tour::SHOP_READER_TOKEN;
    assert_eq!(
        call(
            &s,
            "GET",
            "/v1/namespaces/shop-a/metadata",
            Some(shop),
            None
        )
        .status,
        404
    );
    let line = layergate_tests::tour::usage_line(s.envoy.addr).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(line.contains("lastSeenAt 20"), "{line}");
}

/// Issue 21.8: requests that sent their headers and then a byte every 2 s held the operator's
/// connections through the gateway until key management answered 503. The gateway holds a
/// control request's body itself and sends it on only once complete: with more trickling
/// requests than the operator has connections, key management still answers.
#[test]
fn trickling_control_bodies_never_reach_the_operator() {
    use std::io::Write;
    let limits = ServeLimits {
        max_connections: 4,
        header_timeout: std::time::Duration::from_secs(30),
        body_timeout: std::time::Duration::from_secs(30),
    };
    let s = start_limited("trickle", DEFAULT_AUTHENTICATE_PER_MINUTE, limits, |_| {});
    let head = |path: &str, token: &str| {
        format!("POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nauthorization: Bearer {token}\r\ncontent-length: 64\r\n\r\n{{")
    };
    let held: Vec<std::net::TcpStream> = (0..12)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(s.envoy.addr).unwrap();
            let req = if i % 2 == 0 {
                head("/v2/keys/authenticate", "none")
            } else {
                head("/v2/keys", "demo-admin-token")
            };
            c.write_all(req.as_bytes()).unwrap();
            c
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    for _ in 0..3 {
        let r = call(&s, "GET", "/v2/keys", Some("demo-admin-token"), None);
        assert_eq!(r.status, 200, "{}", r.text());
        let r = call(&s, "GET", "/v2/vectorstores", Some("demo-read-token"), None);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A body larger than the control API could take is refused by the gateway.
    let big = "x".repeat(300 * 1024);
    let r = call(
        &s,
        "POST",
        "/v2/keys",
        Some("demo-admin-token"),
        Some(json!({"name": "big", "description": big})),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    drop(held);
}

/// Issue 24: rotation through the real gateway — the new token works at once, the old one
/// during the overlap (same key: its globs), and is refused within a second after it ends.
/// (The official hevlayer client has no rotate call: plain HTTP.)
#[test]
fn a_rotated_keys_old_token_works_through_the_overlap_and_is_refused_after() {
    let s = start("rotate");
    let admin = Some("demo-admin-token");
    let spec = json!({"name": "rotating", "expiresAfter": "30d",
                      "entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": ["cohort-*"]}}});
    let minted = call(&s, "POST", "/v2/keys", admin, Some(spec));
    assert_eq!(minted.status, 201, "{}", minted.text());
    let minted = minted.json().unwrap();
    let old = minted["token"].as_str().unwrap().to_owned();
    let path = "/v1/namespaces/cohort-1/metadata";
    assert_eq!(
        call(
            &s,
            "POST",
            "/v2/namespaces/cohort-1",
            Some("demo-rw-token"),
            Some(json!({"upsert_rows": [{"id": 1}]}))
        )
        .status,
        200
    );
    eventually(&s, path, &old, 200);
    let bad = call(
        &s,
        "POST",
        "/v2/keys/rotating/rotate",
        admin,
        Some(json!({"overlap": "8d"})),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    let rotated = call(
        &s,
        "POST",
        "/v2/keys/rotating/rotate",
        admin,
        Some(json!({"overlap": "2s"})),
    );
    let answered = std::time::Instant::now();
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let rotated = rotated.json().unwrap();
    let new = rotated["token"].as_str().unwrap().to_owned();
    assert_eq!(rotated["keyId"], minted["keyId"]);
    eventually(&s, path, &new, 200);
    let new_works = answered.elapsed();
    assert_eq!(
        call(&s, "GET", path, Some(&old), None).status,
        200,
        "in the overlap"
    );
    assert_eq!(
        call(
            &s,
            "GET",
            "/v1/namespaces/shop-1/metadata",
            Some(&old),
            None
        )
        .status,
        403,
        "the old token is the same key: its globs"
    );
    let auth = call(
        &s,
        "POST",
        "/v2/keys/authenticate",
        None,
        Some(json!({"token": new})),
    );
    assert_eq!(auth.json().unwrap()["keyId"], minted["keyId"]);
    // Refused within a second after the overlap (2 s after the answer, at most).
    while answered.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eventually(&s, path, &old, 401);
    let refused_after = answered.elapsed();
    println!("new token usable {new_works:?} after the answer; old token refused {refused_after:?} after it (overlap 2 s)");
    assert!(
        refused_after < std::time::Duration::from_secs(3),
        "{refused_after:?}"
    );
    assert_eq!(call(&s, "GET", path, Some(&new), None).status, 200);
}

/// An operator in directory mode (the demo's manifests, stores on loopback) rendering for
/// `build`, and `gateways` Envoy processes of `workers` workers each on its rendering: (the
/// gateways, the control API's address, the stores).
fn operator_and_gateways(
    tag: &str,
    build: layergate_tests::envoy::FilterBuild,
    gateways: usize,
    workers: usize,
) -> (Vec<Envoy>, SocketAddr, (DevStore, DevStore)) {
    let primary = DevStore::start(PRIMARY_KEY).unwrap();
    let archive = DevStore::start(ARCHIVE_KEY).unwrap();
    let (dir, out) = demo::manifests_for(tag, &primary, &archive).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control = listener.local_addr().unwrap();
    let mut settings = demo::test_settings(Some(control)).unwrap();
    if build == layergate_tests::envoy::FilterBuild::Native {
        settings.filter = build;
        settings.wasm_path = paths::native_path().unwrap().to_string_lossy().into_owned();
    }
    let source = Arc::new(DirSource::new(dir, out.clone(), settings));
    source.refresh().unwrap();
    let api = Arc::new(Api::new(source, DEFAULT_AUTHENTICATE_PER_MINUTE));
    std::thread::spawn(move || {
        api.serve_blocking(
            listener,
            layergate_operator::api::Role::Control,
            std::future::pending(),
        )
    });
    let bootstrap = std::fs::read_to_string(out.join("bootstrap.yaml")).unwrap();
    let envoys = (0..gateways)
        .map(|_| {
            Envoy::start_yaml_workers(&bootstrap, &paths::repo_root(), workers)
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect();
    (envoys, control, (primary, archive))
}

/// Usage through the real gateway (issue 24), for each build: two gateway processes of two
/// workers each serve a known number of requests of one minted key; every VM (or, natively,
/// every process) reports what it counted to the operator, and the key's usage answered by the
/// control API is within 1 % of what was served (here: exactly). The official hevlayer client
/// reads `lastSeenAt` with `get_key` and `list_keys`.
#[test]
fn usage_through_two_workers_and_two_gateways_is_counted_and_last_seen_is_shown() {
    use layergate_tests::envoy::FilterBuild;
    for build in [FilterBuild::Wasm, FilterBuild::Native] {
        let (gateways, control, _stores) =
            operator_and_gateways(&format!("usage-{build:?}"), build, 2, 2);
        // Every gateway has the minted key before counting starts.
        let token = layergate_tests::tour::SHOP_READER_TOKEN;
        // The devstore has no such namespace: a 404 means the key passed.
        let read = "/v1/namespaces/shop-a/metadata";
        for g in &gateways {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while Request::new("GET", read)
                .bearer(token)
                .send(g.addr)
                .unwrap()
                .status
                != 404
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{build:?}: the key never passed"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let usage = || -> serde_json::Value {
            let r = Request::new("GET", "/v2/keys/shop-reader/usage")
                .bearer("demo-admin-token")
                .send(control)
                .unwrap();
            assert_eq!(r.status, 200);
            serde_json::from_slice(&r.body).unwrap()
        };
        let reads = |u: &serde_json::Value| u["sinceCreation"]["allowed"]["read"].as_u64().unwrap();
        // What the waits above counted, once reported.
        std::thread::sleep(std::time::Duration::from_secs(6));
        let before = reads(&usage());
        // 400 reads on new connections (spread over both workers) through each gateway, and
        // 50 writes the read-only key may not make.
        const READS: u64 = 400;
        for g in &gateways {
            for _ in 0..READS {
                assert_eq!(
                    Request::new("GET", read)
                        .bearer(token)
                        .send(g.addr)
                        .unwrap()
                        .status,
                    404
                );
            }
        }
        // Writes the read-only key may not make: refused after authentication, counted.
        const WRITES: u64 = 25;
        for g in &gateways {
            for _ in 0..WRITES {
                let r = Request::new("POST", "/v2/namespaces/shop-a")
                    .bearer(token)
                    .json(&json!({"upsert_rows": [{"id": 1}]}))
                    .send(g.addr)
                    .unwrap();
                assert_eq!(r.status, 403, "{}", r.text());
            }
        }
        let served = 2 * READS;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let counted = loop {
            let u = usage();
            let counted = reads(&u) - before;
            let refused = u["sinceCreation"]["refused"]["403"].as_u64().unwrap_or(0);
            if (counted >= served && refused >= 2 * WRITES) || std::time::Instant::now() > deadline
            {
                break counted;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        };
        let off = (counted as f64 - served as f64).abs() / served as f64;
        assert!(
            off <= 0.01,
            "{build:?}: counted {counted} of {served} served"
        );
        let u = usage();
        assert!(u["lastSeenAt"].is_string(), "{u}");
        assert_eq!(
            u["sinceCreation"]["refused"]["403"],
            2 * WRITES,
            "{build:?}: {u}"
        );
        // The official client shows it.
        let url = format!("http://{}", gateways[0].addr);
        let (code, seen) = layergate_tests::python::run_script(
            "hevlayer_last_seen.py",
            &[&url, "demo-admin-token", "shop-reader"],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(code, 0, "{seen}");
        assert_eq!(seen["get"], u["lastSeenAt"], "{seen}");
        assert_eq!(seen["list"], u["lastSeenAt"], "{seen}");
        eprintln!(
            "{build:?}: {counted} counted of {served} served; lastSeenAt {}",
            u["lastSeenAt"]
        );
    }
}

/// Quotas (issue 25) through the real gateway: a key with a quota of 20 requests an hour,
/// used through two gateway processes. Neither gateway counts it alone: the operator adds
/// their usage reports up and, once the quota is reached, serves the key as spent until the
/// hour's end; both gateways then refuse it with 429, `Retry-After` until the period's end.
/// How far it overshoots is what was served before the report that spent it arrived.
#[test]
fn a_quota_holds_across_two_gateways_once_their_reports_reach_it() {
    let (gateways, control, _stores) =
        operator_and_gateways("quota", layergate_tests::envoy::FilterBuild::Wasm, 2, 1);
    let minted = Request::new("POST", "/v2/keys")
        .bearer("demo-admin-token")
        .json(&json!({"name": "quota-key", "expiresAfter": "1d",
                      "entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": ["shop-*"]}},
                      "limits": {"quotas": [{"requests": 20, "per": "hour"}]}}))
        .send(control)
        .unwrap();
    assert_eq!(minted.status, 201, "{}", minted.text());
    let token = minted.json().unwrap()["token"].as_str().unwrap().to_owned();
    let read = "/v1/namespaces/shop-a/metadata";
    let get = |g: &Envoy| {
        Request::new("GET", read)
            .bearer(&token)
            .send(g.addr)
            .unwrap()
    };
    for g in &gateways {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while get(g).status != 404 {
            assert!(std::time::Instant::now() < deadline, "the key never passed");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    // 15 requests through each: neither gateway alone sees 20.
    for g in &gateways {
        for _ in 0..15 {
            assert_eq!(get(g).status, 404);
        }
    }
    // Within a report interval (5 s) and a sync, both refuse it.
    let started = std::time::Instant::now();
    for g in &gateways {
        loop {
            let r = get(g);
            if r.status == 429 {
                let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=3600).contains(&retry), "{retry}");
                assert!(
                    r.text().contains("has spent its request quota"),
                    "{}",
                    r.text()
                );
                break;
            }
            assert_eq!(r.status, 404);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(15),
                "the spent quota never reached this gateway"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let enforced = started.elapsed();
    // Every request served was counted once the last reports are in (at most 5 s later).
    let usage = || {
        Request::new("GET", "/v2/keys/quota-key/usage")
            .bearer("demo-admin-token")
            .send(control)
            .unwrap()
            .json()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let u = loop {
        let u = usage();
        if u["quotas"][0]["used"].as_u64().unwrap_or(0) >= 30
            || std::time::Instant::now() > deadline
        {
            break u;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    assert_eq!(u["quotas"][0]["spent"], true, "{u}");
    let used = u["quotas"][0]["used"].as_u64().unwrap();
    assert!(used >= 30, "{u}");
    println!(
        "quota of 20/hour: {used} allowed in all (overshoot {}), refused by both gateways {enforced:?} after the 30th",
        used - 20
    );
}
