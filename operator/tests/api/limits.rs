//! What a client can hold of the control API: the `authenticate` rate limit, body caps, header
//! and body timeouts, the connection limit, and the key service's listener of its own. The API
//! is served on a real socket here.

use crate::{fixture, Fixture};
use layergate_operator::api::{client_address, Api, RateLimiter, ServeLimits, MAX_RATE_CLIENTS};
use layergate_operator::source::Source;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Issue 10: the authenticate limit was one global counter — one client locked out all.
#[test]
fn the_authenticate_limit_is_per_client_address() {
    let f = fixture("ratelimit", 3, |_, t| t);
    let body = json!({"token": "hvl_demoShopReader0123456789abcdefABCDEF"});
    let from = |ip: &str| {
        f.call_from(
            "POST",
            "/v2/keys/authenticate",
            None,
            body.clone(),
            &[("x-forwarded-for", ip)],
        )
        .0
    };
    for _ in 0..3 {
        assert_eq!(from("198.51.100.7"), 200);
    }
    assert_eq!(from("198.51.100.7"), 429, "the noisy client is limited");
    assert_eq!(
        from("203.0.113.9"),
        200,
        "another client through the gateway is not"
    );
    // Envoy appends the address it saw: only the last entry counts.
    assert_eq!(from("203.0.113.9, 198.51.100.7"), 429);
    assert_eq!(from("198.51.100.7, 203.0.113.10"), 200);
}

#[test]
fn the_client_address_is_the_last_forwarded_hop_else_the_peer() {
    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    let h = |v: &str| vec![("X-Forwarded-For".to_owned(), v.to_owned())];
    assert_eq!(client_address(&[], peer), peer);
    assert_eq!(
        client_address(&h("1.1.1.1, 2.2.2.2"), peer),
        "2.2.2.2".parse::<IpAddr>().unwrap()
    );
    assert_eq!(client_address(&h("garbage"), peer), peer);
    assert_eq!(
        client_address(&h("::1"), peer),
        "::1".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn the_rate_limiter_table_stays_bounded() {
    let mut l = RateLimiter::new(1);
    let ip = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(i));
    for i in 0..(MAX_RATE_CLIENTS as u32 * 3) {
        assert!(l.allow(ip(i), 60) || i >= MAX_RATE_CLIENTS as u32);
    }
    assert!(l.tracked() <= MAX_RATE_CLIENTS);
    // Overflow clients share one budget this minute; a tracked client keeps its own.
    assert!(!l.allow(ip(0), 60));
    // Next minute the old entries make room again.
    assert!(l.allow(ip(u32::MAX), 120));
    assert!(l.allow(ip(u32::MAX - 1), 120));
    assert!(l.tracked() <= MAX_RATE_CLIENTS);
}

/// The API served on a real socket with `limits`; its address.
fn serve(f: &Fixture, per_minute: u32, limits: ServeLimits) -> std::net::SocketAddr {
    let api = Arc::new(Api::new(f.source.clone(), per_minute).with_limits(limits));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        api.serve_blocking(
            listener,
            layergate_operator::api::Role::Control,
            std::future::pending(),
        )
    });
    addr
}

fn small_limits() -> ServeLimits {
    ServeLimits {
        max_connections: 8,
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
    }
}

/// Reads until the server closes (or 10 s pass); the status line's code, and how long it took.
fn answer(s: &mut TcpStream) -> (u16, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, started.elapsed())
}

fn authenticate_head(len: &str) -> String {
    format!("POST /v2/keys/authenticate HTTP/1.1\r\nhost: control\r\ncontent-type: application/json\r\n{len}\r\n")
}

#[test]
fn a_slow_1_mib_upload_to_authenticate_is_refused_without_being_read() {
    let f = fixture("slow-upload", 120, |_, t| t);
    let addr = serve(&f, 120, small_limits());
    // Declared 1 MiB: refused on its headers, and the connection closed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(authenticate_head("content-length: 1048576\r\n").as_bytes())
        .unwrap();
    s.write_all(&[b'x'; 1024]).unwrap();
    let (code, took) = answer(&mut s);
    assert_eq!(code, 413);
    assert!(took < Duration::from_millis(900), "{took:?}");
    // Chunked, 1 KiB every 20 ms: cut at the 4 KiB cap, long before 1 MiB.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(authenticate_head("transfer-encoding: chunked\r\n").as_bytes())
        .unwrap();
    let mut sent = 0;
    let reader = s.try_clone().unwrap();
    let started = Instant::now();
    while sent < 1 << 20 {
        let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
        sent += 1024;
        std::thread::sleep(Duration::from_millis(20));
        let mut probe = [0u8; 1];
        reader.set_nonblocking(true).unwrap();
        let closed = reader.peek(&mut probe).is_ok();
        reader.set_nonblocking(false).unwrap();
        if closed {
            break;
        }
    }
    let (code, _) = answer(&mut s);
    assert_eq!(code, 413);
    assert!(
        sent <= 64 * 1024,
        "the server read {sent} bytes before refusing"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // A body under the cap that never finishes: 408 after the body timeout.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(authenticate_head("content-length: 200\r\n").as_bytes())
        .unwrap();
    s.write_all(b"{\"token\": ").unwrap();
    let (code, took) = answer(&mut s);
    assert_eq!(code, 408);
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// Every route has a body cap, the methods a route does not serve and the paths no route
/// matches too (a 1 MiB body to `PUT /v2/keys` or `POST /nowhere` is refused on its headers,
/// and a chunked one is cut at 64 KiB), and every 413 is in the API's JSON shape.
#[test]
fn every_route_and_every_unknown_one_caps_its_body() {
    let f = fixture("caps", 120, |_, t| t);
    let addr = serve(&f, 120, small_limits());
    for (method, path) in [
        ("PUT", "/v2/keys"),
        ("PATCH", "/v2/keys/shop-reader"),
        ("GET", "/v2/keys/shop-reader/revoke"),
        ("POST", "/nowhere"),
        ("POST", "/v2/vectorstores"),
        ("DELETE", "/v2/keys/authenticate"),
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: control\r\ncontent-length: 1048576\r\n\r\n"
        )
        .unwrap();
        let started = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 413"), "{method} {path}: {text}");
        assert!(
            text.contains("application/json") && text.contains("\"status\":\"error\""),
            "{text}"
        );
        assert!(started.elapsed() < Duration::from_millis(900));
        // Chunked: cut at the 64 KiB cap.
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: control\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        .unwrap();
        let reader = s.try_clone().unwrap();
        let mut sent = 0;
        while sent < 1 << 20 {
            let chunk = format!("2000\r\n{}\r\n", "x".repeat(8 * 1024));
            if s.write_all(chunk.as_bytes()).is_err() {
                break;
            }
            sent += 8 * 1024;
            std::thread::sleep(Duration::from_millis(5));
            let mut probe = [0u8; 1];
            reader.set_nonblocking(true).unwrap();
            let answered = reader.peek(&mut probe).is_ok();
            reader.set_nonblocking(false).unwrap();
            if answered {
                break;
            }
        }
        let (code, _) = answer(&mut s);
        assert_eq!(code, 413, "{method} {path}");
        assert!(
            sent <= 96 * 1024,
            "{method} {path}: the server read {sent} bytes"
        );
    }
}

#[test]
fn the_authenticate_rate_limit_answers_before_the_body_is_read() {
    let f = fixture("rate-first", 1, |_, t| t);
    let addr = serve(&f, 1, small_limits());
    let body = r#"{"token": "hvl_nope"}"#;
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        format!(
            "{}{body}",
            authenticate_head(&format!(
                "content-length: {}\r\nconnection: close\r\n",
                body.len()
            ))
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(answer(&mut s).0, 401);
    // Over budget: 429 on the headers alone, the body never sent.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(authenticate_head("content-length: 4000\r\n").as_bytes())
        .unwrap();
    let (code, took) = answer(&mut s);
    assert_eq!(code, 429);
    assert!(took < Duration::from_millis(500), "{took:?}");
}

#[test]
fn idle_connections_beyond_the_limit_are_refused_and_the_api_recovers() {
    let f = fixture("conn-limit", 120, |_, t| t);
    let addr = serve(&f, 120, small_limits());
    let idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    // The ninth is answered 503 and closed at once.
    let mut extra = TcpStream::connect(addr).unwrap();
    let (code, took) = answer(&mut extra);
    assert_eq!(code, 503);
    assert!(took < Duration::from_millis(500), "{took:?}");
    // The idle ones are closed by the header timeout...
    for mut s in idle {
        let (_, took) = answer(&mut s);
        assert!(
            took < Duration::from_secs(3),
            "an idle connection held {took:?}"
        );
    }
    // ...and a good request works again.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: control\r\nconnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(answer(&mut s).0, 200);
}

/// Issue 21.8: ~320 slow requests through the public gateway held the control API's
/// connections, and key syncs failed with them. The key service has a listener of its own:
/// with every control connection taken, a sync still answers at once.
#[test]
fn the_key_service_keeps_its_capacity_when_the_control_api_is_full() {
    let f = fixture("keys-capacity", 120, |_, t| t);
    let limits = ServeLimits {
        header_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(30),
        ..small_limits()
    };
    let api = Arc::new(Api::new(f.source.clone(), 120).with_limits(limits));
    let (control, keys) = (
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let (control_addr, keys_addr) = (control.local_addr().unwrap(), keys.local_addr().unwrap());
    let key_service = api.clone();
    std::thread::spawn(move || {
        api.serve_blocking(
            control,
            layergate_operator::api::Role::Control,
            std::future::pending(),
        )
    });
    std::thread::spawn(move || {
        key_service.serve_blocking(
            keys,
            layergate_operator::api::Role::Keys,
            std::future::pending(),
        )
    });
    // Every control connection held by a request whose body trickles.
    let held: Vec<TcpStream> = (0..limits.max_connections)
        .map(|_| {
            let mut s = TcpStream::connect(control_addr).unwrap();
            s.write_all(authenticate_head("content-length: 100\r\n").as_bytes())
                .unwrap();
            s.write_all(b"{").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut refused = TcpStream::connect(control_addr).unwrap();
    assert_eq!(answer(&mut refused).0, 503, "the control API is full");
    let out = f.source.state().last().unwrap();
    let credential = match &out.config.key_service.as_ref().unwrap().credential {
        layergate_filter::config::Credential::Inline(c) => c.clone(),
        other => panic!("{other:?}"),
    };
    let started = Instant::now();
    let mut s = TcpStream::connect(keys_addr).unwrap();
    s.write_all(format!("GET /v2/keys/sync HTTP/1.1\r\nhost: keys\r\nauthorization: Bearer {credential}\r\nconnection: close\r\n\r\n").as_bytes()).unwrap();
    assert_eq!(answer(&mut s).0, 200, "the key service answers");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The key service's listener serves nothing else.
    let mut s = TcpStream::connect(keys_addr).unwrap();
    s.write_all(b"GET /v2/keys HTTP/1.1\r\nhost: keys\r\nconnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(answer(&mut s).0, 404);
    drop(held);
}
