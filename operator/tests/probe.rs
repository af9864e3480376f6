//! Store probes against real loopback servers: 200, 401, 500, slow, and a closed port.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_operator::probe::{probe, probe_all, ProbeResult};
use layergate_operator::validate::{parse_endpoint, ValidStore};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A one-route HTTP server answering `status` after `delay`; records request heads.
fn server(status: u16, delay: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                std::thread::sleep(delay);
                let body = r#"{"namespaces":[]}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (url, seen)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn probe_matrix() {
    let rt = runtime();
    let t = Duration::from_millis(500);
    let (ok, seen) = server(200, Duration::ZERO);
    assert_eq!(
        rt.block_on(probe(&parse_endpoint(&ok).unwrap(), "store-key", t)),
        ProbeResult::Answered(200)
    );
    let head = seen.lock().unwrap()[0].clone();
    assert!(
        head.starts_with("GET /v1/namespaces?page_size=1 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer store-key\r\n"),
        "{head}"
    );
    let (unauthorized, _) = server(401, Duration::ZERO);
    let r = rt.block_on(probe(&parse_endpoint(&unauthorized).unwrap(), "k", t));
    assert_eq!(r, ProbeResult::Answered(401));
    assert!(r.reachable());
    assert_eq!(r.condition("s", None, 0).reason, "Unauthorized");
    let (broken, _) = server(500, Duration::ZERO);
    let r = rt.block_on(probe(&parse_endpoint(&broken).unwrap(), "k", t));
    assert_eq!(
        (r.clone(), r.condition("s", None, 0).reason.as_str()),
        (ProbeResult::Answered(500), "Unhealthy")
    );
    let (slow, _) = server(200, Duration::from_secs(3));
    let r = rt.block_on(probe(&parse_endpoint(&slow).unwrap(), "k", t));
    assert!(
        matches!(&r, ProbeResult::Unreachable(why) if why.contains("500 ms")),
        "{r:?}"
    );
    assert_eq!(r.condition("s", None, 0).reason, "Unreachable");
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let r = rt.block_on(probe(&parse_endpoint(&closed).unwrap(), "k", t));
    assert!(
        matches!(&r, ProbeResult::Unreachable(why) if why.contains("connect")),
        "{r:?}"
    );
    assert!(!r.reachable());
}

#[test]
fn probe_all_is_bounded_and_keeps_order() {
    let rt = runtime();
    let stores: Vec<ValidStore> = (0..6)
        .map(|i| {
            let (url, _) = server(
                if i % 2 == 0 { 200 } else { 401 },
                Duration::from_millis(100),
            );
            ValidStore {
                name: format!("s{i}"),
                default: i == 0,
                endpoint: parse_endpoint(&url).unwrap(),
                credential: "k".into(),
                credential_ref: ("s".into(), "k".into()),
                mode: Default::default(),
                keys: vec![],
            }
        })
        .collect();
    let started = std::time::Instant::now();
    let results = rt.block_on(probe_all(&stores, Duration::from_secs(2)));
    let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4", "s5"]);
    assert_eq!(results[1].1, ProbeResult::Answered(401));
    // 6 probes of 100 ms, 4 at a time: two rounds.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}
