//! The gateway's resource limits in the real Envoy (issue 13): a slow upload that never
//! finishes is cut off (408) and its connection closed; with a 1 MiB per-connection buffer the
//! inspection route still buffers a 15 MiB body whole; the bootstraps carry the overload
//! manager. Figures (Envoy's heap, connections held) are printed with `--nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use layergate_operator::envoy::{self as render, limits};
use layergate_tests::demo::{self, ARCHIVE_KEY, PRIMARY_KEY};
use layergate_tests::devstore::DevStore;
use layergate_tests::envoy::Envoy;
use layergate_tests::http::Request;
use layergate_tests::tour::SHOP_READER_TOKEN as SHOP;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The demo gateway with a restricted writer key (its bodies are inspected), the production
/// listener except for `request_timeout`, which a test cannot wait 120 s for.
fn start(request_timeout: &str) -> (Envoy, DevStore, DevStore) {
    let primary = DevStore::start(PRIMARY_KEY).unwrap();
    let archive = DevStore::start(ARCHIVE_KEY).unwrap();
    let mut cfg: Value = serde_json::from_str(&demo::filter_config().unwrap()).unwrap();
    cfg["apiKeys"][0]["entitlements"]["vectorstore.primary"]["scopes"] = json!(["read", "write"]);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let gw = demo::gateway(
        any,
        any,
        primary.addr(),
        archive.addr(),
        layergate_tests::envoy::Filter::under_test().unwrap(),
        cfg.to_string(),
    );
    let mut listener = render::listener(&gw.listener());
    let hcm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["request_timeout"], limits::REQUEST_TIMEOUT);
    hcm["request_timeout"] = json!(request_timeout);
    let yaml = render::bootstrap_with_listener(gw.admin, listener, &gw.clusters);
    let envoy = Envoy::start_gateway_yaml(&gw, &yaml).unwrap_or_else(|e| panic!("{e:#}"));
    (envoy, primary, archive)
}

/// Opens a connection and sends the headers of a `len`-byte inspected upload and `first`
/// bytes of its body, then nothing more.
fn stalled_upload(addr: SocketAddr, len: usize, first: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v2/namespaces/shop-big HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {SHOP}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut body = br#"{"upsert_rows": [{"id": 1, "blob": ""#.to_vec();
    body.resize(first, b'x');
    s.write_all(&body).unwrap();
    s
}

fn heap(envoy: &Envoy) -> (u64, u64) {
    let m: Value = serde_json::from_str(&envoy.admin_get("/memory").unwrap()).unwrap();
    let n = |k: &str| m[k].as_str().unwrap().parse::<u64>().unwrap();
    (n("allocated"), n("heap_size"))
}

#[test]
fn a_slow_upload_that_never_finishes_is_cut_off_and_its_connection_closed() {
    let (envoy, primary, _archive) = start("2s");
    let started = Instant::now();
    let mut s = stalled_upload(envoy.addr, 1 << 20, 64 * 1024);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = Vec::new();
    // Envoy answers and closes: read_to_end returns at EOF, not at our 20 s read timeout.
    s.read_to_end(&mut answer).unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(took < Duration::from_secs(6), "cut off after {took:?}");
    assert_eq!(primary.requests().len(), 0, "nothing reached the store");
    eprintln!("stalled upload: 408 and closed after {took:?}");
}

#[test]
fn many_stalled_inspected_uploads_are_all_released() {
    // 200 connections each holding 512 KiB of a 1 MiB inspected upload, then stalling.
    let (envoy, primary, _archive) = start("3s");
    let (alloc0, heap0) = heap(&envoy);
    let conns: Vec<TcpStream> = (0..200)
        .map(|_| stalled_upload(envoy.addr, 1 << 20, 512 * 1024))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let active = envoy
        .stat("http.layergate.downstream_cx_active")
        .unwrap()
        .unwrap_or(0);
    let (alloc1, heap1) = heap(&envoy);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = envoy
            .stat("http.layergate.downstream_cx_active")
            .unwrap()
            .unwrap_or(0);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} connections still held after the request timeout"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let timeouts = envoy
        .stat("http.layergate.downstream_rq_timeout")
        .unwrap()
        .unwrap_or(0);
    let (alloc2, heap2) = heap(&envoy);
    drop(conns);
    eprintln!(
        "200 stalled 1 MiB uploads (512 KiB sent each): {active} connections held, Envoy allocated {} -> {} -> {} MiB (heap {} -> {} -> {} MiB); {timeouts} request timeouts",
        alloc0 >> 20, alloc1 >> 20, alloc2 >> 20, heap0 >> 20, heap1 >> 20, heap2 >> 20
    );
    assert!(active >= 190, "{active}");
    assert!(timeouts >= 190, "{timeouts}");
    assert!(
        alloc2 < alloc1,
        "buffers are released: {alloc1} -> {alloc2}"
    );
    assert_eq!(primary.requests().len(), 0);
}

#[test]
fn the_inspection_route_buffers_15_mib_with_a_1_mib_connection_buffer() {
    let (envoy, primary, _archive) = start("60s");
    let big = json!({"upsert_rows": [{"id": 1, "blob": "x".repeat(15 << 20)}]});
    let r = Request::new("POST", "/v2/namespaces/shop-big")
        .bearer(SHOP)
        .json(&big)
        .send(envoy.addr)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = primary.requests().pop().unwrap();
    assert!(seen.body_len > 15 << 20, "{}", seen.body_len);
    assert_eq!(
        render::listener(&render::Listener {
            listen: envoy.addr,
            build: render::FilterBuild::Wasm,
            filter_path: String::new(),
            filter_config: None,
            vm_env: Vec::new(),
            buffer_limit_bytes: render::DEFAULT_BUFFER_LIMIT_BYTES,
            access_log_path: None,
        })["per_connection_buffer_limit_bytes"],
        limits::CONNECTION_BUFFER_BYTES
    );
}
