//! Store probes against real loopback servers: 200, 401, 500, slow, a closed port, and TLS
//! servers whose certificate names the endpoint's host, another host, or chains to no trusted
//! root.
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

/// A test CA, and a TLS server on `127.0.0.1:0` presenting a certificate for `names` signed by
/// it, answering 200; returns (port, request heads seen, failed handshakes).
struct TlsServer {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    failed: Arc<std::sync::atomic::AtomicUsize>,
}

fn test_ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "probe test CA");
    let der = params.self_signed(&key).unwrap().der().to_vec();
    (rcgen::Issuer::new(params, key), der)
}

async fn tls_server(ca: &rcgen::Issuer<'static, rcgen::KeyPair>, names: &[&str]) -> TlsServer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, failed) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let (log, failures) = (seen.clone(), failed.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let mut buf = [0u8; 4096];
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    log.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    let body = r#"{"namespaces":[]}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
                Err(_) => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    });
    TlsServer { port, seen, failed }
}

/// The probe carries the store credential, so it checks the upstream's identity as the
/// gateway does: a certificate from a trusted CA for another host fails the handshake and the
/// credential is never written; the right host name (DNS or IP SAN) passes.
#[test]
fn probe_over_tls_sends_the_credential_only_to_a_certificate_naming_the_host() {
    use layergate_operator::probe::{probe_trusting, Trust};
    let rt = runtime();
    let t = Duration::from_secs(2);
    let (ca, ca_der) = test_ca();
    let trust = Trust::only(&[ca_der]).unwrap();
    rt.block_on(async {
        // Trusted CA, another host's name: refused before any request.
        let other = tls_server(&ca, &["attacker.example"]).await;
        let endpoint = parse_endpoint(&format!("https://localhost:{}", other.port)).unwrap();
        let r = probe_trusting(&endpoint, "store-key", t, &trust).await;
        assert!(
            matches!(&r, ProbeResult::Unreachable(why) if why.contains("TLS") && why.contains("not valid for name \"localhost\"")),
            "{r:?}"
        );
        assert_eq!(r.condition("s", None, 0).reason, "Unreachable");
        // The server reads the client's alert after the probe returned.
        for _ in 0..100 {
            if other.failed.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(other.failed.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(other.seen.lock().unwrap().is_empty(), "the credential was sent");

        // The host's own name: the probe goes through, with the credential.
        let right = tls_server(&ca, &["localhost"]).await;
        let endpoint = parse_endpoint(&format!("https://localhost:{}", right.port)).unwrap();
        assert_eq!(
            probe_trusting(&endpoint, "store-key", t, &trust).await,
            ProbeResult::Answered(200)
        );
        let head = right.seen.lock().unwrap()[0].to_ascii_lowercase();
        assert!(head.contains("authorization: bearer store-key\r\n"), "{head}");

        // An IP endpoint needs an IP SAN: a DNS name does not stand in for it.
        let ip = tls_server(&ca, &["127.0.0.1"]).await;
        let endpoint = parse_endpoint(&format!("https://127.0.0.1:{}", ip.port)).unwrap();
        assert_eq!(
            probe_trusting(&endpoint, "k", t, &trust).await,
            ProbeResult::Answered(200)
        );
        let endpoint = parse_endpoint(&format!("https://127.0.0.1:{}", right.port)).unwrap();
        let r = probe_trusting(&endpoint, "k", t, &trust).await;
        assert!(matches!(&r, ProbeResult::Unreachable(why) if why.contains("TLS")), "{r:?}");
        assert_eq!(right.seen.lock().unwrap().len(), 1);

        // The right name from a CA nobody trusts: the production roots refuse it too.
        let r = probe(&endpoint_for(right.port), "k", t).await;
        assert!(matches!(&r, ProbeResult::Unreachable(why) if why.contains("TLS")), "{r:?}");
        assert_eq!(right.seen.lock().unwrap().len(), 1);
    });
}

fn endpoint_for(port: u16) -> layergate_operator::validate::StoreEndpoint {
    parse_endpoint(&format!("https://localhost:{port}")).unwrap()
}

/// The store faults the gateway tests put behind Envoy (tests/tests/envoy_faults.rs), as the
/// probe and the `Ready` condition see them: a store that accepts and never answers, one that
/// closes the connection before answering, and one answering 503 — each `Ready=False` with a
/// reason and a message saying what happened.
#[test]
fn probe_reports_store_faults_in_the_ready_condition() {
    let rt = runtime();
    let t = Duration::from_millis(500);
    let fault_server = |close: bool| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().take(4) {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                if !close {
                    held.push(stream); // hangs: the connection stays open, unanswered
                }
            }
        });
        url
    };
    let hang = fault_server(false);
    let r = rt.block_on(probe(&parse_endpoint(&hang).unwrap(), "k", t));
    let c = r.condition("s", None, 0);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "Unreachable")
    );
    assert!(
        c.message.contains("no answer within 500 ms"),
        "{}",
        c.message
    );

    let closes = fault_server(true);
    let r = rt.block_on(probe(&parse_endpoint(&closes).unwrap(), "k", t));
    assert!(!r.reachable(), "{r:?}");
    let c = r.condition("s", None, 0);
    assert_eq!(c.reason, "Unreachable");
    assert!(
        c.message
            .starts_with("the store did not answer the probe: ")
            && c.message.len() > 40,
        "{}",
        c.message
    );

    let (overloaded, _) = server(503, Duration::ZERO);
    let r = rt.block_on(probe(&parse_endpoint(&overloaded).unwrap(), "k", t));
    assert!(r.reachable());
    let c = r.condition("s", None, 0);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "Unhealthy")
    );
    assert!(c.message.contains("503"), "{}", c.message);
}
