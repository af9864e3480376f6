//! End-to-end through a real Envoy with the built filter and two devstores (the demo fixture
//! and variations of it). Every refusal asserts status, body shape and that no store saw it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use layergate_tests::demo::{self, Demo, ARCHIVE_KEY, PRIMARY_KEY};
use layergate_tests::http::{send_raw, Request, Response};
use layergate_tests::tour::{self, SHOP_READER_TOKEN as SHOP};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn start() -> Demo {
    Demo::start().unwrap_or_else(|e| panic!("{e:#}"))
}

fn demo_config() -> Value {
    serde_json::from_str(&demo::filter_config().unwrap()).unwrap()
}

fn start_with(config: &Value) -> Demo {
    Demo::start_with(config.to_string(), Vec::new()).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Sends a request and returns the response and which stores saw it (primary, archive).
fn send(d: &Demo, req: Request) -> (Response, (usize, usize)) {
    let (p0, a0) = d.store_counts();
    let r = req.send(d.addr()).unwrap();
    let (p1, a1) = d.store_counts();
    (r, (p1 - p0, a1 - a0))
}

/// Asserts a refusal by the gateway: status, turbopuffer error JSON, nothing forwarded.
fn refused(d: &Demo, req: Request, status: u16) -> Response {
    let what = format!("{} {}", req.method, req.path);
    let (r, seen) = send(d, req);
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(seen, (0, 0), "{what} reached a store");
    let body = r.json().unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert_eq!(body["status"], "error", "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|m| m.len() > 10),
        "{what}: {body}"
    );
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    r
}

/// Asserts the request reached exactly one store, with that store's own key.
fn forwarded_to(d: &Demo, req: Request, primary: bool) -> Response {
    let what = format!("{} {}", req.method, req.path);
    let (r, seen) = send(d, req);
    let (store, key) = if primary {
        (&d.primary, PRIMARY_KEY)
    } else {
        (&d.archive, ARCHIVE_KEY)
    };
    assert_eq!(
        seen,
        if primary { (1, 0) } else { (0, 1) },
        "{what}: {}",
        r.text()
    );
    let last = store.requests().pop().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {key}").as_str()),
        "{what}"
    );
    assert!(
        !last
            .headers
            .iter()
            .any(|(k, _)| k.starts_with("x-layergate-")),
        "{what}: {:?}",
        last.headers
    );
    r
}

fn post(path: &str, token: &str, body: Value) -> Request {
    Request::new("POST", path).bearer(token).json(&body)
}

fn get(path: &str, token: &str) -> Request {
    Request::new("GET", path).bearer(token)
}

#[test]
fn demo_tour_goes_as_documented_with_stats_and_access_log() {
    let d = start();
    let observe = || d.store_counts();
    let outcomes = tour::run(d.addr(), Some(&observe));
    assert!(
        outcomes.iter().all(|o| o.ok),
        "\n{}",
        tour::table(&outcomes)
    );
    // Counters: the wasm build flushes them on its root context's 1 s tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    let allowed = outcomes.iter().filter(|o| o.status == 200).count() as u64;
    let denied_403 = outcomes.iter().filter(|o| o.status == 403).count() as u64;
    loop {
        let (a, f) = (
            d.envoy.filter_stat("layergate.allowed").unwrap(),
            d.envoy.filter_stat("layergate.denied_403").unwrap(),
        );
        if a == Some(allowed) && f == Some(denied_403) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stats: allowed {a:?} (want {allowed}), denied_403 {f:?} (want {denied_403})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The access log reaches the file every 100 ms (`--file-flush-interval-msec`): one line per
    // request of the tour.
    let lines = |log: &str| log.lines().filter(|l| l.starts_with("{\"time\":")).count();
    let mut log = d.envoy.log();
    while lines(&log) < outcomes.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        log = d.envoy.log();
    }
    let audit: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with("{\"time\":"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let has = |principal: &str, decision: &str| {
        audit
            .iter()
            .any(|l| l["principal"] == principal && l["decision"] == decision)
    };
    assert!(has("key:primary/demo-read", "allowed"), "{log}");
    assert!(
        audit.iter().any(|l| l["key_name"] == "shop-reader"),
        "{log}"
    );
    assert!(audit.iter().any(|l| l["decision"] == "denied_401"), "{log}");
    assert!(
        !log.contains(SHOP) && !log.contains("demo-rw-token"),
        "tokens must never be logged"
    );
}

#[test]
fn each_scope_against_read_write_and_admin_routes() {
    let d = start();
    forwarded_to(
        &d,
        post(
            "/v2/namespaces/shop-a",
            "demo-rw-token",
            json!({"upsert_rows": [{"id": 1, "vector": [1.0, 0.0]}]}),
        ),
        true,
    );
    forwarded_to(
        &d,
        post(
            "/v2/namespaces/shop-a/query",
            "demo-read-token",
            json!({"rank_by": ["vector", "ANN", [1.0, 0.0]], "top_k": 1}),
        ),
        true,
    );
    let r = refused(
        &d,
        post(
            "/v2/namespaces/shop-a",
            "demo-read-token",
            json!({"deletes": [1]}),
        ),
        403,
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="layergate", error="insufficient_scope", scope="write""#)
    );
    // An unknown POST needs admin (fail safe): rw is refused, admin is forwarded.
    refused(
        &d,
        post(
            "/v1/namespaces/shop-a/brand-new",
            "demo-rw-token",
            json!({}),
        ),
        403,
    );
    forwarded_to(
        &d,
        post(
            "/v1/namespaces/shop-a/brand-new",
            "demo-admin-token",
            json!({}),
        ),
        true,
    );
    // Admin satisfies read and write.
    forwarded_to(
        &d,
        get("/v1/namespaces/shop-a/metadata", "demo-admin-token"),
        true,
    );
    forwarded_to(
        &d,
        Request::new("DELETE", "/v2/namespaces/shop-a").bearer("demo-admin-token"),
        true,
    );
    // HEAD is GET; the query string never affects matching.
    forwarded_to(
        &d,
        Request::new("HEAD", "/v1/namespaces/shop-a").bearer("demo-read-token"),
        true,
    );
    forwarded_to(
        &d,
        post(
            "/v2/namespaces/shop-a/query?stainless_overload=x",
            "demo-read-token",
            json!({}),
        ),
        true,
    );
}

#[test]
fn open_and_derive_from_store_modes() {
    let mut cfg = demo_config();
    cfg["stores"][0]["inboundAuth"] = json!({"mode": "open"});
    let d = start_with(&cfg);
    // open: no token needed, a token if sent is ignored; the store still gets its own key.
    forwarded_to(&d, Request::new("GET", "/v1/namespaces"), true);
    forwarded_to(&d, get("/v1/namespaces", "anything"), true);
    // deriveFromStore (archive): its own key and the default store's key, full scopes.
    forwarded_to(
        &d,
        post(
            "/v2/namespaces/logs-2026",
            ARCHIVE_KEY,
            json!({"upsert_rows": [{"id": 1}]}),
        ),
        false,
    );
    forwarded_to(
        &d,
        Request::new("DELETE", "/v2/namespaces/logs-2026").bearer(PRIMARY_KEY),
        false,
    );
    refused(
        &d,
        get("/v1/namespaces/logs-2026/metadata", "demo-admin-token"),
        401,
    );
    refused(
        &d,
        Request::new("GET", "/v1/namespaces/logs-2026/metadata"),
        401,
    );
}

#[test]
fn minted_keys_allowed_denied_wrong_store_and_expired() {
    let d = start();
    forwarded_to(
        &d,
        post(
            "/v2/namespaces/shop-x",
            "demo-rw-token",
            json!({"upsert_rows": [{"id": 1}]}),
        ),
        true,
    );
    forwarded_to(
        &d,
        post("/v2/namespaces/shop-x/query", SHOP, json!({"top_k": 1})),
        true,
    );
    let r = refused(&d, post("/v2/namespaces/blog/query", SHOP, json!({})), 403);
    assert!(r.json().unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("blog"));
    refused(
        &d,
        post("/v2/namespaces/logs-2026/query", SHOP, json!({})),
        403,
    );
    refused(
        &d,
        post("/v2/namespaces/shop-x", SHOP, json!({"deletes": [1]})),
        403,
    );
    // Listing is narrowed to the key's prefix.
    let r = forwarded_to(&d, get("/v1/namespaces", SHOP), true);
    assert_eq!(r.json().unwrap()["namespaces"], json!([{"id": "shop-x"}]));
    assert_eq!(
        d.primary.requests().pop().unwrap().path,
        "/v1/namespaces?prefix=shop-"
    );
    refused(&d, get("/v1/namespaces?prefix=s", SHOP), 403);
    drop(d);

    let mut cfg = demo_config();
    cfg["apiKeys"][0]["expiresAt"] = json!("2025-01-01T00:00:00Z");
    let d = start_with(&cfg);
    let r = refused(
        &d,
        post("/v2/namespaces/shop-x/query", SHOP, json!({})),
        401,
    );
    assert!(r.json().unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("expired"));
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="layergate", error="invalid_token""#)
    );
}

#[test]
fn index_routing_and_header_spoofing() {
    let d = start();
    forwarded_to(
        &d,
        post(
            "/v2/namespaces/logs-2026",
            ARCHIVE_KEY,
            json!({"upsert_rows": [{"id": 7}]}),
        ),
        false,
    );
    assert_eq!(d.archive.namespaces(), vec!["logs-2026".to_owned()]);
    // A client-sent routing header cannot move a request to another store (the route is
    // re-picked after the filter's header write), and x-layergate-* never reach a store.
    let spoofed = get("/v1/namespaces/shop-a/metadata", "demo-read-token")
        .header("x-layergate-cluster", "store_archive")
        .header("x-layergate-principal", "root")
        .header("X-Layergate-Store", "archive");
    forwarded_to(&d, spoofed, true);
    let spoofed = get("/v1/namespaces/logs-2026/metadata", ARCHIVE_KEY)
        .header("x-layergate-cluster", "store_primary");
    forwarded_to(&d, spoofed, false);
}

fn writer_config() -> Value {
    let mut cfg = demo_config();
    cfg["apiKeys"][0]["entitlements"]["vectorstore.primary"]["scopes"] = json!(["read", "write"]);
    cfg
}

#[test]
fn body_rules_for_restricted_keys() {
    let d = start_with(&writer_config());
    forwarded_to(
        &d,
        post(
            "/v2/namespaces/shop-src",
            "demo-rw-token",
            json!({"upsert_rows": [{"id": 1}]}),
        ),
        true,
    );
    forwarded_to(
        &d,
        post(
            "/v2/namespaces/hr",
            "demo-rw-token",
            json!({"upsert_rows": [{"id": 1}]}),
        ),
        true,
    );
    forwarded_to(
        &d,
        post(
            "/v2/namespaces/shop-copy",
            SHOP,
            json!({"copy_from_namespace": "shop-src"}),
        ),
        true,
    );
    assert!(d.primary.namespaces().contains(&"shop-copy".to_owned()));
    refused(
        &d,
        post(
            "/v2/namespaces/shop-copy",
            SHOP,
            json!({"copy_from_namespace": "hr"}),
        ),
        403,
    );
    refused(
        &d,
        post(
            "/v2/namespaces/shop-copy",
            SHOP,
            json!({"branch_from_namespace": {"source_namespace": "hr"}}),
        ),
        403,
    );
    let r = refused(
        &d,
        post(
            "/v2/namespaces/shop-copy",
            SHOP,
            json!({"copy_from_namespace": {"source_namespace": "shop-src", "source_api_key": "k"}}),
        ),
        403,
    );
    assert!(r.text().contains("source_api_key"));
    refused(
        &d,
        post(
            "/v2/namespaces/shop-copy/async",
            SHOP,
            json!({"source_namespace": "hr"}),
        ),
        403,
    );
    let r = forwarded_to(
        &d,
        post(
            "/v2/namespaces/shop-async/async",
            SHOP,
            json!({"source_namespace": "shop-src"}),
        ),
        true,
    );
    assert_eq!(r.status, 202);
    assert!(r
        .header("location")
        .is_some_and(|l| l.starts_with("/v1/namespaces/shop-async/operations/")));
    refused(
        &d,
        post("/v2/namespaces/shop-copy", SHOP, json!("not an object")).body("{not json"),
        400,
    );
    // gzip bodies are inspected after decompression.
    let gz = |v: &Value| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(v.to_string().as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let zipped = |v: &Value| {
        Request::new("POST", "/v2/namespaces/shop-copy")
            .bearer(SHOP)
            .header("content-encoding", "gzip")
            .body(gz(v))
    };
    refused(&d, zipped(&json!({"copy_from_namespace": "hr"})), 403);
    forwarded_to(
        &d,
        zipped(&json!({"copy_from_namespace": "shop-src"})),
        true,
    );
    refused(
        &d,
        post("/v2/namespaces/shop-copy", SHOP, json!({})).header("content-encoding", "br"),
        415,
    );
    // An unrestricted key streams a 1 MiB body untouched.
    let big = json!({"upsert_rows": [{"id": 1, "blob": "x".repeat(1 << 20)}]});
    forwarded_to(
        &d,
        post("/v2/namespaces/hr", "demo-rw-token", big.clone()),
        true,
    );
    assert!(d.primary.requests().pop().unwrap().body_len > 1 << 20);
    // A restricted key's 1 MiB write is inspected and forwarded whole.
    forwarded_to(&d, post("/v2/namespaces/shop-big", SHOP, big), true);
    assert!(d.primary.requests().pop().unwrap().body_len > 1 << 20);
}

#[test]
fn body_over_the_inspection_limit_is_413() {
    let mut cfg = writer_config();
    cfg["limits"]["inspectBodyBytes"] = json!(4096);
    let d = start_with(&cfg);
    let big = json!({"copy_from_namespace": "shop-src", "pad": "x".repeat(8192)});
    let r = refused(&d, post("/v2/namespaces/shop-copy", SHOP, big.clone()), 413);
    assert!(r.text().contains("4096"));
    // Without a content-length (chunked), the limit applies as the body arrives.
    let body = big.to_string();
    let raw = format!(
        "POST /v2/namespaces/shop-copy HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {SHOP}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let before = d.store_counts();
    let r = send_raw(d.addr(), raw.as_bytes()).unwrap();
    assert_eq!((r.status, d.store_counts()), (413, before));
}

#[test]
fn bad_input_gets_a_clear_answer_and_nothing_is_forwarded() {
    let d = start();
    let meta = "/v1/namespaces/shop-a/metadata";
    // Authorization: missing, empty, not Bearer, twice, 10 KB, unknown (revoked keys are not rendered).
    let r = refused(&d, Request::new("GET", meta), 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="layergate""#)
    );
    refused(
        &d,
        Request::new("GET", meta).header("authorization", ""),
        401,
    );
    refused(
        &d,
        Request::new("GET", meta).header("authorization", "Basic ZGVtbzpkZW1v"),
        401,
    );
    refused(
        &d,
        get(meta, "demo-read-token").header("authorization", "Bearer demo-admin-token"),
        400,
    );
    let huge = "h".repeat(10 * 1024);
    let r = refused(&d, get(meta, &huge), 401);
    assert!(!r.text().contains(&huge[..64]), "the token is never echoed");
    refused(
        &d,
        get(meta, "hvl_revokedOrNeverMinted000000000000000"),
        401,
    );
    // A valid key on a store it has no entitlement for.
    refused(&d, get("/v1/namespaces/logs-2026/metadata", SHOP), 403);
    // Paths: encoded slash, encoded dots, empty segment, encoded NUL, invalid namespace.
    for path in [
        "/v2/namespaces/shop-a%2Fx/query",
        "/v2/namespaces/shop-a%2fx/query",
        "/v2//namespaces/shop-a/query",
        "/v2/namespaces/shop*a/query",
        "/v2/namespaces/shop%20a/query",
    ] {
        refused(&d, post(path, "demo-admin-token", json!({})), 400);
    }
    // An encoded NUL is refused by Envoy's path normalization itself (400, no body).
    let (r, seen) = send(
        &d,
        post(
            "/v2/namespaces/shop-a%00/query",
            "demo-admin-token",
            json!({}),
        ),
    );
    assert_eq!((r.status, seen), (400, (0, 0)));
    // Dot segments are resolved by Envoy's normalization before the filter classifies the
    // path: `/v2/namespaces/../x` becomes `POST /v2/x`, an unknown route that needs admin.
    refused(
        &d,
        post("/v2/namespaces/../other", "demo-rw-token", json!({})),
        403,
    );
    // Envoy also decodes `%2e%2e` before resolving it: this becomes `POST /v2/query`, a
    // federated query. Its body names no namespaces, and demo-admin cannot read every store
    // (archive does not know it): 403 before the 404 of the missing app.
    refused(
        &d,
        post("/v2/namespaces/%2e%2e/query", "demo-admin-token", json!({})),
        403,
    );
    // A raw NUL in the request line never gets past Envoy's codec.
    let before = d.store_counts();
    let r = send_raw(d.addr(), b"GET /v1/namespaces/shop\0a HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer demo-admin-token\r\n\r\n");
    assert!(
        r.is_err() || r.as_ref().is_ok_and(|r| r.status == 400),
        "{r:?}"
    );
    assert_eq!(d.store_counts(), before);
    // Methods the table does not know need admin.
    refused(
        &d,
        Request::new("PURGE", "/v2/namespaces/shop-a").bearer("demo-rw-token"),
        403,
    );
    // A restricted key copying from outside its globs, and a body over the limit, are covered
    // by body_rules_for_restricted_keys and body_over_the_inspection_limit_is_413.
}

#[test]
fn missing_credential_variable_is_503_naming_it() {
    // primary reads its credential from the VM environment, which does not have it.
    let mut cfg = demo_config();
    cfg["stores"][0]["credential"] = json!({"env": "LAYERGATE_PRIMARY_KEY"});
    let env = vec![("UNRELATED".to_owned(), "x".to_owned())];
    let d = Demo::start_with(cfg.to_string(), env).unwrap_or_else(|e| panic!("{e:#}"));
    let r = refused(
        &d,
        get("/v1/namespaces/shop-a/metadata", "demo-read-token"),
        503,
    );
    assert!(r.text().contains("LAYERGATE_PRIMARY_KEY"), "{}", r.text());
    // The other store keeps working.
    forwarded_to(
        &d,
        get("/v1/namespaces/logs-2026/metadata", ARCHIVE_KEY),
        false,
    );
}

#[test]
fn invalid_config_is_refused_by_the_filter_and_envoy_does_not_serve() {
    let mut cfg = demo_config();
    cfg["stores"][0]["inboundAuth"]["mode"] = json!("keyz");
    let err = Demo::start_with(cfg.to_string(), Vec::new())
        .err()
        .expect("Envoy must not start with a refused config");
    let text = format!("{err:#}");
    assert!(
        text.contains("configuration refused")
            || text.contains("Unable to create Wasm HTTP filter"),
        "{text}"
    );
}

#[test]
fn official_turbopuffer_client_through_the_gateway() {
    let d = start();
    let url = format!("http://{}", d.addr());
    let (code, out) = run_python("tpuf_roundtrip.py", &[&url, "demo-rw-token", "shop-books"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["write"]["rows_affected"], 3);
    assert_eq!(out["query"][0]["title"], "Dune");
    assert_eq!(out["list"], json!(["shop-books"]));
    assert!(d
        .primary
        .requests()
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer tpuf-primary-dev-key")));
    assert_eq!(d.archive.request_count(), 0);
    // Index routing with the real client: logs-2026 lands on archive. Listing namespaces is
    // namespace-less, so it goes to the default store, whose mode (keys) refuses archive's key.
    let (code, out) = run_python("tpuf_roundtrip.py", &[&url, ARCHIVE_KEY, "logs-2026"]);
    assert_eq!(
        (code, out["error"]["status"].as_i64()),
        (3, Some(401)),
        "{out}"
    );
    assert_eq!(out["partial"]["query"][0]["title"], "Dune", "{out}");
    assert!(d.archive.request_count() > 0);
    // The client surfaces the gateway's refusal.
    let (code, out) = run_python("tpuf_roundtrip.py", &[&url, SHOP, "shop-other"]);
    assert_eq!(
        (code, out["error"]["status"].as_i64()),
        (3, Some(403)),
        "{out}"
    );
}

fn run_python(script: &str, args: &[&str]) -> (i32, serde_json::Value) {
    layergate_tests::python::run_script(script, args).unwrap_or_else(|e| panic!("{e:#}"))
}
