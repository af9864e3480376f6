//! The two builds side by side (SPEC §10): one list of requests through the wasm build and
//! through the native build, each on its own Envoy of `ENVOY_BIN` (which must be 1.39.x or
//! 1.40.x, the native build's range: the test fails otherwise) with the same configuration and
//! fresh devstores. Every request must get the same answer — status, and for the gateway's own
//! replies the body and its headers —, reach the same store with the same credential, path,
//! authority and body size and no `x-layergate-*` header, and leave the same access-log
//! record; the counters must agree at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use layergate_filter::outcome::COUNTERS;
use layergate_tests::demo::{self, Demo, ARCHIVE_KEY};
use layergate_tests::envoy::{self, Filter};
use layergate_tests::http::{Request, Response};
use layergate_tests::tour::{self, SHOP_READER_TOKEN as SHOP};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The demo configuration with the shop reader allowed to write `shop-*` (so its writes are
/// inspected) and a small inspection limit.
fn config() -> String {
    let mut cfg: Value = serde_json::from_str(&demo::filter_config().unwrap()).unwrap();
    cfg["apiKeys"][0]["entitlements"]["vectorstore.primary"]["scopes"] = json!(["read", "write"]);
    cfg["limits"]["inspectBodyBytes"] = json!(64 * 1024);
    cfg.to_string()
}

fn post(path: &str, token: &str, body: Value) -> Request {
    Request::new("POST", path).bearer(token).json(&body)
}

fn get(path: &str, token: &str) -> Request {
    Request::new("GET", path).bearer(token)
}

fn gzip(v: &Value) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(v.to_string().as_bytes()).unwrap();
    e.finish().unwrap()
}

/// The requests: the demo tour, then routing, inspection and refusals of every kind.
fn requests() -> Vec<Request> {
    let mut list: Vec<Request> = tour::steps()
        .into_iter()
        .map(|s| {
            let mut r = Request::new(s.method, s.path);
            if let Some(t) = s.token {
                r = r.bearer(t);
            }
            if let Some(b) = &s.body {
                r = r.json(b);
            }
            r
        })
        .collect();
    let meta = "/v1/namespaces/shop-a/metadata";
    list.extend([
        post(
            "/v2/namespaces/shop-src",
            "demo-rw-token",
            json!({"upsert_rows": [{"id": 1}]}),
        ),
        post(
            "/v2/namespaces/hr",
            "demo-rw-token",
            json!({"upsert_rows": [{"id": 1}]}),
        ),
        // Spoofed routing and identity headers.
        get(meta, "demo-read-token")
            .header("x-layergate-cluster", "store_archive")
            .header("x-layergate-principal", "root")
            .header("X-Layergate-Store", "archive"),
        get("/v1/namespaces/logs-2026/metadata", ARCHIVE_KEY)
            .header("x-layergate-cluster", "store_primary"),
        // Inspected bodies.
        post(
            "/v2/namespaces/shop-copy",
            SHOP,
            json!({"copy_from_namespace": "shop-src"}),
        ),
        post(
            "/v2/namespaces/shop-copy",
            SHOP,
            json!({"copy_from_namespace": "hr"}),
        ),
        post(
            "/v2/namespaces/shop-copy",
            SHOP,
            json!({"branch_from_namespace": {"source_namespace": "hr"}}),
        ),
        post(
            "/v2/namespaces/shop-copy/async",
            SHOP,
            json!({"source_namespace": "hr"}),
        ),
        post(
            "/v2/namespaces/shop-async/async",
            SHOP,
            json!({"source_namespace": "shop-src"}),
        ),
        post("/v2/namespaces/shop-copy", SHOP, json!({})).body("{not json"),
        Request::new("POST", "/v2/namespaces/shop-copy")
            .bearer(SHOP)
            .header("content-encoding", "gzip")
            .body(gzip(&json!({"copy_from_namespace": "hr"}))),
        Request::new("POST", "/v2/namespaces/shop-copy")
            .bearer(SHOP)
            .header("content-encoding", "gzip")
            .body(gzip(&json!({"copy_from_namespace": "shop-src"}))),
        post("/v2/namespaces/shop-copy", SHOP, json!({})).header("content-encoding", "br"),
        post(
            "/v2/namespaces/shop-copy",
            SHOP,
            json!({"copy_from_namespace": "shop-src", "pad": "x".repeat(70_000)}),
        ),
        post(
            "/v2/namespaces/shop-big",
            SHOP,
            json!({"upsert_rows": [{"id": 1, "blob": "x".repeat(60_000)}]}),
        ),
        // Listings narrowed, or refused when wider than the key.
        get("/v1/namespaces", SHOP),
        get("/v1/namespaces?prefix=s", SHOP),
        get("/v1/namespaces?prefix=shop-b", SHOP),
        // Credentials and paths the gateway refuses.
        Request::new("GET", meta),
        Request::new("GET", meta).header("authorization", "Basic ZGVtbzpkZW1v"),
        get(meta, "demo-read-token").header("authorization", "Bearer demo-admin-token"),
        get(meta, "hvl_revokedOrNeverMinted000000000000000"),
        // The audit line: several namespaces read from a body, and one that needs escaping.
        post(
            "/v2/query",
            SHOP,
            json!({"namespaces": ["shop-a", "shop-b", "shop-a"], "queries": []}),
        ),
        post(
            "/v2/namespaces/shop-copy",
            SHOP,
            json!({"copy_from_namespace": "sh\"op\\\n\u{1}é✓"}),
        ),
        get("/v1/namespaces/logs-2026/metadata", SHOP),
        post(
            "/v2/namespaces/shop-a%2Fx/query",
            "demo-admin-token",
            json!({}),
        ),
        post("/v2/namespaces/shop*a/query", "demo-admin-token", json!({})),
        post("/v2/namespaces/../other", "demo-rw-token", json!({})),
        Request::new("PURGE", "/v2/namespaces/shop-a").bearer("demo-rw-token"),
        post(
            "/v1/namespaces/shop-a/brand-new",
            "demo-admin-token",
            json!({}),
        ),
        // Namespace-less routes served by the layer app and the control API, which this
        // gateway does not have.
        get("/v2/keys", "demo-admin-token"),
        Request::new("HEAD", "/v1/namespaces/shop-a").bearer("demo-read-token"),
    ]);
    list
}

/// What one request came to, in terms both builds must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    /// The gateway's own reply (nothing forwarded): body, content-type, www-authenticate.
    reply: Option<(String, Option<String>, Option<String>)>,
    /// What a store received, when the request was forwarded.
    forwarded: Option<Forwarded>,
}

/// A forwarded request as its store saw it.
#[derive(Debug, PartialEq, Eq)]
struct Forwarded {
    store: &'static str,
    method: String,
    path: String,
    authorization: Option<String>,
    host: Option<String>,
    body_len: usize,
    /// `x-layergate-*` header names (there must be none; compared anyway).
    layergate_headers: Vec<String>,
}

fn run(d: &Demo, req: &Request) -> Seen {
    let before = d.store_counts();
    let r: Response = req.send(d.addr()).unwrap();
    let after = d.store_counts();
    let forwarded = match (after.0 - before.0, after.1 - before.1) {
        (0, 0) => None,
        (1, 0) => Some(("primary", d.primary.requests().pop().unwrap())),
        (0, 1) => Some(("archive", d.archive.requests().pop().unwrap())),
        other => panic!("{} {} reached the stores {other:?}", req.method, req.path),
    };
    let reply = forwarded.is_none().then(|| {
        (
            String::from_utf8_lossy(&r.body).into_owned(),
            r.header("content-type").map(str::to_owned),
            r.header("www-authenticate").map(str::to_owned),
        )
    });
    Seen {
        status: r.status,
        reply,
        forwarded: forwarded.map(|(store, s)| Forwarded {
            store,
            authorization: s.header("authorization").map(str::to_owned),
            host: s.header("host").map(str::to_owned),
            layergate_headers: s
                .headers
                .iter()
                .filter(|(k, _)| k.starts_with("x-layergate-"))
                .map(|(k, _)| k.clone())
                .collect(),
            method: s.method,
            path: s.path,
            body_len: s.body_len,
        }),
    }
}

/// The audit lines of the access log's file, each parsed as JSON (a line that is not one
/// JSON object fails the test), once the file holds `n` of them.
fn audit_lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| panic!("not one JSON object: {l}"))
            })
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An audit line without what differs between two runs (time, duration, client port,
/// Envoy's request id).
fn comparable(line: &Value) -> Value {
    let mut l = line.clone();
    for volatile in ["time", "duration_ms", "client", "request_id"] {
        l.as_object_mut().map(|o| o.remove(volatile));
    }
    l
}

/// Every counter of [`COUNTERS`] (0 when not defined yet), once two reads a tick apart agree
/// (the wasm build flushes its counters every second).
fn counters(d: &Demo) -> Vec<(String, u64)> {
    let read = || {
        COUNTERS
            .iter()
            .map(|name| {
                let n = d.envoy.filter_stat(name).unwrap().unwrap_or(0);
                ((*name).to_owned(), n)
            })
            .collect::<Vec<_>>()
    };
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(1200));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[test]
fn the_wasm_and_native_builds_answer_every_request_alike() {
    let version = envoy::version().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        matches!(version, (1, 39 | 40, _)),
        "ENVOY_BIN is Envoy {version:?}; the native build runs on 1.39.x and 1.40.x only — set ENVOY_BIN to one of those"
    );
    let logs = std::env::temp_dir().join(format!("layergate-audit-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let start = |filter: Filter, log: &str| {
        let log = logs.join(log);
        Demo::start_logged(filter, config(), Vec::new(), Some(&log))
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let wasm = start(
        Filter::wasm().unwrap_or_else(|e| panic!("{e:#}")),
        "wasm.log",
    );
    let native = start(
        Filter::native().unwrap_or_else(|e| panic!("{e:#}")),
        "native.log",
    );
    let list = requests();
    let mut differ = Vec::new();
    for req in &list {
        let (w, n) = (run(&wasm, req), run(&native, req));
        if w != n {
            differ.push(format!(
                "{} {}:\n  wasm   {w:?}\n  native {n:?}",
                req.method, req.path
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    let (w, n) = (
        audit_lines(&logs.join("wasm.log"), list.len()),
        audit_lines(&logs.join("native.log"), list.len()),
    );
    assert_eq!(
        (w.len(), n.len()),
        (list.len(), list.len()),
        "one audit line per request:\n{w:#?}\n{n:#?}"
    );
    for ((w, n), req) in w.iter().zip(&n).zip(&list) {
        assert_eq!(
            comparable(w),
            comparable(n),
            "audit line of {} {}",
            req.method,
            req.path
        );
    }
    check_audit_lines(&list, &w);
    // stdout carries the same lines as the file.
    let stdout = wasm.envoy.log();
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("{\"time\":"))
            .count(),
        list.len(),
        "{stdout}"
    );
    for text in [
        stdout,
        native.envoy.log(),
        std::fs::read_to_string(logs.join("wasm.log")).unwrap(),
        std::fs::read_to_string(logs.join("native.log")).unwrap(),
    ] {
        for secret in [
            SHOP,
            "demo-rw-token",
            "demo-read-token",
            "demo-admin-token",
            ARCHIVE_KEY,
        ] {
            let hash = layergate_filter::config::LookupHash::of(secret).to_string();
            assert!(
                !text.contains(secret) && !text.contains(&hash[7..]),
                "a token or its lookup hash is in the log"
            );
        }
    }
    let (w, n) = (counters(&wasm), counters(&native));
    assert_eq!(w, n, "counters");
    assert!(
        n.iter()
            .any(|(name, v)| name == "layergate.inspected_bodies" && *v > 5),
        "{n:?}"
    );
}

/// The fields of the audit lines: who, where, what was decided; `lines` are `list`'s, in order.
fn check_audit_lines(list: &[Request], lines: &[Value]) {
    let find = |method: &str, path: &str, decision: &str| {
        list.iter()
            .zip(lines)
            .find(|(r, l)| r.method == method && r.path == path && l["decision"] == decision)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| panic!("no audit line for {method} {path} {decision}: {lines:#?}"))
    };
    for l in lines {
        for field in [
            "time",
            "status",
            "bytes_received",
            "bytes_sent",
            "duration_ms",
            "client",
        ] {
            assert!(!l[field].is_null(), "{field} missing: {l}");
        }
        assert!(
            l["request_id"].as_str().is_some_and(|r| !r.is_empty()),
            "{l}"
        );
        assert!(l["decision"].is_string(), "{l}");
    }
    // A minted key, allowed.
    let l = find("GET", "/v1/namespaces/shop-a/metadata", "allowed");
    let minted = lines
        .iter()
        .find(|l| l["principal_kind"] == "minted_key" && l["decision"] == "allowed")
        .unwrap_or_else(|| panic!("no allowed minted key: {lines:#?}"));
    assert_eq!(minted["key_name"], "shop-reader", "{minted}");
    assert_eq!(minted["key_owner"], "shop", "{minted}");
    // An inbound key.
    assert_eq!(l["store"], "primary", "{l}");
    assert_eq!(l["namespaces"], json!(["shop-a"]), "{l}");
    assert_eq!(
        (l["route"].as_str(), l["scope"].as_str()),
        (Some("store"), Some("read"))
    );
    let inbound = lines
        .iter()
        .find(|l| l["principal_kind"] == "inbound_key")
        .unwrap_or_else(|| panic!("no inbound key: {lines:#?}"));
    assert!(
        inbound["key_name"].is_string() && inbound["key_owner"].is_null(),
        "{inbound}"
    );
    // A 403 that names the key, the namespaces (path, then body) and the reason.
    let l = lines
        .iter()
        .find(|l| l["decision"] == "denied_403" && l["namespaces"] == json!(["shop-copy", "hr"]))
        .unwrap_or_else(|| panic!("no 403 copying from hr: {lines:#?}"));
    assert_eq!(
        (l["status"].as_u64(), l["key_name"].as_str()),
        (Some(403), Some("shop-reader"))
    );
    assert!(
        l["reason"].as_str().is_some_and(|r| r.contains("\"hr\"")),
        "{l}"
    );
    // Several namespaces read from a body (repeats not counted), the route and scope.
    let l = list
        .iter()
        .zip(lines)
        .find(|(r, _)| r.path == "/v2/query")
        .map(|(_, l)| l)
        .unwrap();
    // (A federated query is the layer app's, which the demo gateway has not: its 404 comes
    // after the body is judged.)
    assert_eq!(l["decision"], "denied_404", "{l}");
    assert_eq!(l["namespaces"], json!(["shop-a", "shop-b"]), "{l}");
    assert_eq!(l["namespace_count"], 2, "{l}");
    // A namespace that needs escaping, refused (400) and logged as read.
    let nasty = "sh\"op\\\n\u{1}é✓";
    let l = lines
        .iter()
        .find(|l| {
            l["namespaces"]
                .as_array()
                .is_some_and(|n| n.contains(&json!(nasty)))
        })
        .unwrap_or_else(|| panic!("no line names {nasty:?}: {lines:#?}"));
    assert_eq!(
        (l["status"].as_u64(), l["decision"].as_str()),
        (Some(400), Some("denied_400"))
    );
    assert_eq!(l["namespaces"], json!(["shop-copy", nasty]), "{l}");
    // A refusal before any plan: no credential at all.
    let l = find("GET", "/v1/namespaces/shop-a/metadata", "denied_401");
    assert!(l["key_name"].is_null() && l["principal"].is_null(), "{l}");
}
