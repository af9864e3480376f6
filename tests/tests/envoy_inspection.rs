//! Body inspection and the restricted-key rules through the real Envoy, however a request
//! ends (SPEC §3 step 4, §5): HTTP/2 (h2c) bodies closed by trailers, split into tiny frames or
//! reset midway; HTTP/1.1 chunked bodies with trailers; strict listing query strings; routes
//! the table does not know; the order of refusals. Every refusal asserts that no store saw
//! anything of the request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use layergate_tests::demo::{self, Demo};
use layergate_tests::h2::{self, End};
use layergate_tests::http::{send_raw, Request};
use layergate_tests::tour::SHOP_READER_TOKEN as SHOP;
use serde_json::{json, Value};
use std::time::Duration;

/// The demo, with `shop-reader` allowed to read and write `shop-*` (the key of the issue).
fn start_writer() -> Demo {
    let mut config: Value = serde_json::from_str(&demo::filter_config().unwrap()).unwrap();
    config["apiKeys"][0]["entitlements"]["vectorstore.primary"]["scopes"] =
        json!(["read", "write"]);
    let d = Demo::start_with(config.to_string(), Vec::new()).unwrap_or_else(|e| panic!("{e:#}"));
    // The namespace the allowed copies read from.
    let seed = Request::new("POST", "/v2/namespaces/shop-source")
        .bearer("demo-rw-token")
        .json(&json!({"upsert_rows": [{"id": 1, "vector": [0.1, 0.2]}], "distance_metric": "cosine_distance"}));
    assert_eq!(seed.send(d.addr()).unwrap().status, 200);
    d
}

const FOREIGN_COPY: &[u8] = br#"{"copy_from_namespace":"hr-salaries"}"#;
const OWN_COPY: &[u8] = br#"{"copy_from_namespace":"shop-source"}"#;

fn auth() -> String {
    format!("Bearer {SHOP}")
}

/// Sends over h2c and returns the status (`None`: reset) and how many requests the stores saw.
fn h2_send(d: &Demo, path: &str, chunks: &[&[u8]], end: End) -> (Option<u16>, usize) {
    let before = d.store_counts();
    let auth = auth();
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let r = h2::send(d.addr(), "POST", path, &headers, chunks, end).unwrap();
    // A forwarded request reaches the store within milliseconds; give a leak time to show.
    std::thread::sleep(Duration::from_millis(200));
    let after = d.store_counts();
    (
        r.map(|r| r.status),
        (after.0 - before.0) + (after.1 - before.1),
    )
}

fn trailers() -> End {
    End::Trailers(vec![("x-checksum".into(), "1".into())])
}

#[test]
fn h2_body_closed_by_trailers_is_refused_and_never_reaches_the_store() {
    let d = start_writer();
    // The attack of issue 9: a foreign copy source, the body closed by trailers.
    let (status, seen) = h2_send(&d, "/v2/namespaces/shop-t2", &[FOREIGN_COPY], trailers());
    assert_eq!((status, seen), (Some(400), 0));
    // Even an allowed body is refused when it ends with trailers: it could not be judged
    // before Envoy would release it.
    let (status, seen) = h2_send(&d, "/v2/namespaces/shop-t2", &[OWN_COPY], trailers());
    assert_eq!((status, seen), (Some(400), 0));
    // The same bodies without trailers: 403 and forwarded.
    let (status, seen) = h2_send(&d, "/v2/namespaces/shop-t2", &[FOREIGN_COPY], End::Data);
    assert_eq!((status, seen), (Some(403), 0));
    let (status, seen) = h2_send(&d, "/v2/namespaces/shop-t2", &[OWN_COPY], End::Data);
    assert_eq!((status, seen), (Some(200), 1));
    assert!(!d.primary.namespaces().contains(&"hr-salaries".to_owned()));
}

#[test]
fn h2_body_in_one_byte_frames_is_judged_whole() {
    let d = start_writer();
    let frames: Vec<&[u8]> = FOREIGN_COPY.chunks(1).collect();
    let (status, seen) = h2_send(&d, "/v2/namespaces/shop-t3", &frames, End::Data);
    assert_eq!((status, seen), (Some(403), 0));
    // The forbidden name is only in the last frame.
    let body = br#"{"upsert_rows":[{"id":1}],"copy_from_namespace":"hr-salaries"}"#;
    let (head, tail) = body.split_at(body.len() - 3);
    let (status, seen) = h2_send(&d, "/v2/namespaces/shop-t3", &[head, tail], End::Data);
    assert_eq!((status, seen), (Some(403), 0));
    let frames: Vec<&[u8]> = OWN_COPY.chunks(1).collect();
    let (status, seen) = h2_send(&d, "/v2/namespaces/shop-t3", &frames, End::Data);
    assert_eq!((status, seen), (Some(200), 1));
    assert_eq!(
        d.primary.requests().pop().unwrap().body_len,
        OWN_COPY.len(),
        "the store got the whole body"
    );
}

#[test]
fn h2_body_reset_midway_never_reaches_the_store() {
    let d = start_writer();
    let (status, seen) = h2_send(&d, "/v2/namespaces/shop-t4", &[&OWN_COPY[..10]], End::Reset);
    assert_eq!((status, seen), (None, 0));
    // The gateway still serves.
    let (status, _) = h2_send(&d, "/v2/namespaces/shop-t4", &[OWN_COPY], End::Data);
    assert_eq!(status, Some(200));
}

/// An HTTP/1.1 chunked request, its body in `chunks`, with the given trailer lines.
fn chunked(d: &Demo, path: &str, chunks: &[&[u8]], trailer_lines: &str) -> (u16, usize) {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nauthorization: {}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        auth()
    )
    .into_bytes();
    for c in chunks {
        raw.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        raw.extend_from_slice(c);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(format!("0\r\n{trailer_lines}\r\n").as_bytes());
    let before = d.store_counts();
    let r = send_raw(d.addr(), &raw).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let after = d.store_counts();
    (r.status, (after.0 - before.0) + (after.1 - before.1))
}

#[test]
fn http1_chunked_bodies_with_trailers_and_tiny_chunks_are_judged_whole() {
    let d = start_writer();
    let tiny: Vec<&[u8]> = FOREIGN_COPY.chunks(1).collect();
    assert_eq!(
        chunked(&d, "/v2/namespaces/shop-t5", &tiny, "x-checksum: 1\r\n"),
        (403, 0)
    );
    assert_eq!(
        chunked(&d, "/v2/namespaces/shop-t5", &[FOREIGN_COPY], ""),
        (403, 0)
    );
    // Envoy's HTTP/1.1 codec drops request trailers (enable_trailers is off), so the body
    // ends with its last chunk and is judged as a whole.
    assert_eq!(
        chunked(
            &d,
            "/v2/namespaces/shop-t5",
            &[OWN_COPY],
            "x-checksum: 1\r\n"
        ),
        (200, 1)
    );
}

fn status_and_seen(d: &Demo, req: Request) -> (u16, usize) {
    let before = d.store_counts();
    let r = req.send(d.addr()).unwrap();
    let after = d.store_counts();
    (r.status, (after.0 - before.0) + (after.1 - before.1))
}

#[test]
fn restricted_listing_query_strings_are_read_strictly() {
    let d = Demo::start().unwrap_or_else(|e| panic!("{e:#}"));
    for query in [
        "prefix=shop-&prefix=hr",
        "%70refix=hr",
        "prefix=shop-;prefix=hr",
        "Prefix=hr",
        "prefix=shop%2Dhr",
    ] {
        let req = Request::new("GET", &format!("/v1/namespaces?{query}")).bearer(SHOP);
        assert_eq!(status_and_seen(&d, req), (400, 0), "{query}");
    }
    let req = Request::new("GET", "/v1/namespaces?page_size=5").bearer(SHOP);
    assert_eq!(status_and_seen(&d, req), (200, 1));
    let last = d.primary.requests().pop().unwrap();
    assert_eq!(last.path, "/v1/namespaces?page_size=5&prefix=shop-");
}

#[test]
fn restricted_keys_never_reach_routes_the_table_does_not_know() {
    let d = Demo::start().unwrap_or_else(|e| panic!("{e:#}"));
    for path in [
        "/V1/namespaces/hr/metadata",
        "/v1/namespaces;x=1",
        "/v1/namespaces/shop-a/unknown",
        "/v1/other",
    ] {
        let req = Request::new("GET", path).bearer(SHOP);
        assert_eq!(status_and_seen(&d, req), (403, 0), "{path}");
    }
    // An unrestricted key keeps the fail-safe default (read on the default store).
    let req = Request::new("GET", "/V1/namespaces/hr/metadata").bearer("demo-read-token");
    assert_eq!(status_and_seen(&d, req).1, 1);
}

#[test]
fn refusals_come_before_missing_upstreams_and_federated_queries_judge_every_store() {
    let d = Demo::start().unwrap_or_else(|e| panic!("{e:#}"));
    let post = |path: &str, token: &str, body: Value| {
        status_and_seen(&d, Request::new("POST", path).bearer(token).json(&body))
    };
    // No app upstream in the demo: 403 for what the caller may not do, 404 only after.
    assert_eq!(
        post("/v2/namespaces/hr/documents", SHOP, json!({})),
        (403, 0)
    );
    assert_eq!(
        post("/v2/namespaces/shop-a/documents", SHOP, json!({})),
        (404, 0)
    );
    // The federated query: the body is judged before the 404.
    assert_eq!(
        post("/v2/query", SHOP, json!({"namespaces": ["hr"]})),
        (403, 0)
    );
    assert_eq!(
        post("/v2/query", SHOP, json!({"namespaces": ["shop-a"]})),
        (404, 0)
    );
    // demo-read is an inbound key of `primary`; logs-2026 is served by `archive`.
    assert_eq!(
        post(
            "/v2/query",
            "demo-read-token",
            json!({"namespaces": ["logs-2026"]})
        ),
        (401, 0)
    );
    assert_eq!(
        post(
            "/v2/query",
            "demo-read-token",
            json!({"namespaces": ["shop-a"]})
        ),
        (404, 0)
    );
}

#[test]
fn access_log_names_the_namespace_envoy_routed_not_a_client_header() {
    let d = Demo::start().unwrap_or_else(|e| panic!("{e:#}"));
    let req = Request::new("GET", "/v1/namespaces/shop-a/metadata")
        .bearer("demo-read-token")
        .header("x-envoy-original-path", "/forged/by/the/client");
    assert_eq!(status_and_seen(&d, req).1, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = d.envoy.log();
        if log.contains("\"namespaces\":[\"shop-a\"]") {
            assert!(!log.contains("/forged/by/the/client"), "{log}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
