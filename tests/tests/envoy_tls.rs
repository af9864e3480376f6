//! Upstream identity through a real Envoy (issue 11): the store cluster the operator renders
//! sends the store credential only to an upstream whose certificate names the store's host.
//! The devstore serves TLS with a certificate from a CA made for the test, which the cluster
//! trusts (`trusted_ca`), so a certificate for another host is "publicly trusted" here: only
//! the subject-alternative-name check stands between the credential and that host.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use layergate_tests::demo::{self, PRIMARY_KEY};
use layergate_tests::devstore::DevStore;
use layergate_tests::envoy::{Cluster, Envoy, Gateway};
use layergate_tests::http::Request;
use layergate_tests::tls::TestCa;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The host name the `primary` store's endpoint names (what the certificate must carry).
const STORE_HOST: &str = "primary.layergate.test";

/// The demo gateway with `primary` behind TLS (a devstore presenting a certificate for
/// `names`, signed by a test CA the cluster trusts); `archive` stays plain loopback HTTP.
struct Scenario {
    envoy: Envoy,
    primary: DevStore,
    _archive: DevStore,
    _ca_dir: ScratchDir,
}

/// A scratch directory (the CA file Envoy reads), removed on drop.
struct ScratchDir(std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scenario(tag: &str, names: &[&str]) -> Scenario {
    let ca = TestCa::new().unwrap();
    let dir = ScratchDir(
        std::env::temp_dir().join(format!("layergate-envoy-tls-{tag}-{}", std::process::id())),
    );
    let ca_file = ca.write_pem(&dir.0).unwrap();
    let primary = DevStore::start_tls(PRIMARY_KEY, &ca.server_cert(names).unwrap()).unwrap();
    let archive = DevStore::start(demo::ARCHIVE_KEY).unwrap();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut gw: Gateway = demo::gateway(
        any,
        any,
        primary.addr(),
        archive.addr(),
        layergate_tests::envoy::Filter::under_test().unwrap_or_else(|e| panic!("{e:#}")),
        demo::filter_config().unwrap(),
    );
    let store = gw
        .clusters
        .iter_mut()
        .find(|c| c.name == "store_primary")
        .unwrap();
    *store = Cluster {
        hostname: STORE_HOST.into(),
        tls: true,
        trusted_ca: Some(ca_file.to_string_lossy().into_owned()),
        ..store.clone()
    };
    // What Envoy runs is the operator's rendering; Envoy accepts it in validate mode too.
    layergate_tests::envoy::validate(&gw.render()).unwrap_or_else(|e| panic!("{e:#}"));
    let envoy = Envoy::start(&gw).unwrap_or_else(|e| panic!("{e:#}"));
    Scenario {
        envoy,
        primary,
        _archive: archive,
        _ca_dir: dir,
    }
}

fn list_namespaces(s: &Scenario) -> layergate_tests::http::Response {
    Request::new("GET", "/v1/namespaces?page_size=1")
        .bearer("demo-read-token")
        .send(s.envoy.addr)
        .unwrap()
}

#[test]
fn a_certificate_for_another_host_gets_503_json_and_the_store_receives_nothing() {
    let s = scenario("other", &["attacker.layergate.test"]);
    let r = list_namespaces(&s);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json().unwrap();
    assert_eq!(body["status"], "error", "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(r#"store "primary""#) && message.contains("CERTIFICATE_VERIFY_FAILED"),
        "{message}"
    );
    // Envoy connected and refused the certificate during the handshake (the devstore counts
    // the aborted handshake as soon as it reads Envoy's alert): no request, so no credential,
    // ever reached the host.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.primary.failed_handshakes() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(s.primary.failed_handshakes() >= 1, "Envoy never connected");
    assert!(
        s.primary.requests().is_empty(),
        "the devstore received {:?}",
        s.primary.requests()
    );
    assert!(
        !r.text().contains(PRIMARY_KEY),
        "the error must not carry the credential"
    );
}

#[test]
fn a_certificate_naming_the_store_host_is_accepted_and_gets_the_credential() {
    let s = scenario("exact", &[STORE_HOST]);
    let r = list_namespaces(&s);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.primary.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {PRIMARY_KEY}").as_str())
    );
    assert_eq!(seen[0].header("host"), Some(STORE_HOST));
    assert_eq!(s.primary.failed_handshakes(), 0);
}

/// Stores such as `*.turbopuffer.com` serve wildcard certificates: the exact matcher on the
/// store's host accepts them by DNS wildcard rules (one label), as Envoy documents.
#[test]
fn a_wildcard_certificate_covering_the_store_host_is_accepted() {
    let s = scenario("wildcard", &["*.layergate.test"]);
    let r = list_namespaces(&s);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.primary.requests().len(), 1);
}
