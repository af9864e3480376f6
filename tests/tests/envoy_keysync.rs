//! Minted keys from the key service through a real Envoy, for the build under test
//! (`LAYERGATE_FILTER`; SPEC §6): a scripted key service on loopback answers the filter's long
//! polls. The first sync brings the key in; a revocation is enforced as soon as the held poll
//! answers; with the key service gone the last table serves, the stale gauge grows and minted
//! tokens get 503 past `maxStalenessSeconds` while inbound keys keep working; when it comes
//! back the gateway recovers on its own. The native build does this once per process, on
//! Envoy's main thread; the wasm build once per VM.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_tests::demo::{self, PRIMARY_KEY};
use layergate_tests::devstore::DevStore;
use layergate_tests::envoy::{Cluster, Envoy, Filter};
use layergate_tests::http::Request;
use layergate_tests::tour::SHOP_READER_TOKEN as SHOP;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the scripted key service serves.
#[derive(Default)]
struct Script {
    revision: u32,
    keys: Vec<Value>,
    /// Answer 503 to everything.
    down: bool,
    /// Request paths and credentials seen.
    seen: Vec<(String, Option<String>)>,
}

/// A key service on loopback: a snapshot when the caller is behind, a held poll (up to `wait`
/// seconds, answered at once on a change) when it is current.
struct KeyService {
    addr: SocketAddr,
    script: Arc<(Mutex<Script>, Condvar)>,
}

impl KeyService {
    fn start(keys: Vec<Value>) -> KeyService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new((
            Mutex::new(Script {
                revision: 1,
                keys,
                ..Script::default()
            }),
            Condvar::new(),
        ));
        let theirs = Arc::clone(&script);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let script = Arc::clone(&theirs);
                std::thread::spawn(move || serve(conn, &script));
            }
        });
        KeyService { addr, script }
    }

    fn change(&self, f: impl FnOnce(&mut Script)) {
        let (lock, wake) = &*self.script;
        f(&mut lock.lock().unwrap());
        wake.notify_all();
    }

    fn seen(&self) -> Vec<(String, Option<String>)> {
        self.script.0.lock().unwrap().seen.clone()
    }
}

fn serve(mut conn: TcpStream, script: &(Mutex<Script>, Condvar)) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    let auth = head
        .lines()
        .find_map(|l| l.strip_prefix("authorization: ").map(str::to_owned));
    let param = |name: &str| {
        path.split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
            .split('&')
            .find_map(|p| p.strip_prefix(&format!("{name}=")).map(str::to_owned))
    };
    let since = param("since");
    let wait: u64 = param("wait").and_then(|w| w.parse().ok()).unwrap_or(0);
    let (lock, wake) = script;
    let mut s = lock.lock().unwrap();
    s.seen.push((path.clone(), auth));
    let current = |s: &Script| since.as_deref() == Some(format!("r{}", s.revision).as_str());
    let deadline = Instant::now() + Duration::from_secs(wait);
    while !s.down && current(&s) && Instant::now() < deadline {
        s = wake
            .wait_timeout(s, deadline.saturating_duration_since(Instant::now()))
            .unwrap()
            .0;
    }
    let (status, body) = if s.down {
        ("503 Service Unavailable", String::new())
    } else if current(&s) {
        let rev = format!("r{}", s.revision);
        (
            "200 OK",
            json!({"revision": rev, "snapshot": false}).to_string(),
        )
    } else {
        let rev = format!("r{}", s.revision);
        (
            "200 OK",
            json!({"revision": rev, "snapshot": true, "keys": s.keys}).to_string(),
        )
    };
    drop(s);
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Polls `f` until it is true (or panics with `what` after `secs`).
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn minted_keys_sync_from_the_key_service_and_fail_closed_when_it_is_gone() {
    let mut cfg: Value = serde_json::from_str(&demo::filter_config().unwrap()).unwrap();
    let shop = cfg["apiKeys"][0].clone();
    cfg.as_object_mut().unwrap().remove("apiKeys");
    cfg["keyService"] = json!({
        "cluster": "layergate_keys", "credential": {"inline": "gw-cred"},
        "maxStalenessSeconds": 3, "pollSeconds": 2,
    });
    let keys = KeyService::start(vec![shop]);
    let primary = DevStore::start(PRIMARY_KEY).unwrap();
    let archive = DevStore::start(demo::ARCHIVE_KEY).unwrap();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut gw = demo::gateway(
        any,
        any,
        primary.addr(),
        archive.addr(),
        Filter::under_test().unwrap_or_else(|e| panic!("{e:#}")),
        cfg.to_string(),
    );
    gw.clusters.push(Cluster {
        name: "layergate_keys".into(),
        address: "127.0.0.1".into(),
        port: keys.addr.port(),
        hostname: "layergate-keys".into(),
        tls: false,
        trusted_ca: None,
        label: "the operator's key service".into(),
    });
    let envoy = Envoy::start(&gw).unwrap_or_else(|e| panic!("{e:#}"));
    let status = |token: &str| {
        Request::new("GET", "/v1/namespaces/shop-a/metadata")
            .bearer(token)
            .send(envoy.addr)
            .unwrap()
            .status
    };
    // The devstore has no shop-a: a request the filter lets through gets its 404.
    let through = 404;

    eventually(5, "the first sync lets the minted key in", || {
        status(SHOP) == through
    });
    let seen = keys.seen();
    assert_eq!(seen[0].0, "/v2/keys/sync?wait=2&config=1", "{seen:?}");
    assert_eq!(seen[0].1.as_deref(), Some("Bearer gw-cred"));
    eventually(5, "the next long poll asks from r1", || {
        keys.seen()
            .iter()
            .any(|(p, _)| p == "/v2/keys/sync?wait=2&config=1&since=r1")
    });

    // Revoked: the held poll answers at once.
    let revoked = Instant::now();
    keys.change(|s| {
        s.revision = 2;
        s.keys.clear();
    });
    eventually(2, "the revocation is enforced", || status(SHOP) == 401);
    eprintln!("revocation enforced after {:?}", revoked.elapsed());
    keys.change(|s| {
        s.revision = 3;
        s.keys = vec![cfg_key()];
    });
    eventually(2, "minted again", || status(SHOP) == through);

    // The key service goes away: the table serves, then goes stale; inbound keys keep working.
    keys.change(|s| s.down = true);
    assert_eq!(status(SHOP), through, "the last table serves");
    eventually(8, "past maxStalenessSeconds, minted tokens get 503", || {
        status(SHOP) == 503
    });
    assert_eq!(status("demo-read-token"), through);
    let stale = envoy
        .filter_stat("layergate.keys_stale_seconds")
        .unwrap()
        .unwrap_or(0);
    assert!(stale >= 3, "stale gauge {stale}");
    assert!(
        envoy
            .filter_stat("layergate.keys_sync_failures")
            .unwrap()
            .unwrap_or(0)
            >= 1
    );

    // It comes back: the gateway recovers on its own.
    keys.change(|s| s.down = false);
    eventually(15, "a sync after the outage", || status(SHOP) == through);
    eventually(5, "the gauge is back to 0", || {
        envoy
            .filter_stat("layergate.keys_stale_seconds")
            .unwrap()
            .unwrap_or(1)
            == 0
    });
    assert!(
        envoy
            .filter_stat("layergate.keys_syncs")
            .unwrap()
            .unwrap_or(0)
            >= 3
    );
}

/// The demo's minted key (`shop-reader`).
fn cfg_key() -> Value {
    let cfg: Value = serde_json::from_str(&demo::filter_config().unwrap()).unwrap();
    cfg["apiKeys"][0].clone()
}
