//! The key service failing and changing hands under a real Envoy (SPEC §6): the operator's
//! control API is stopped mid-run (the last table serves, `keys_stale_seconds` grows, minted
//! tokens get 503 past `maxStalenessSeconds`, inbound keys and store credentials keep working,
//! and the gateway recovers on its own), and one operator replica hands over to another that
//! never saw the first one's revision (it answers with a snapshot, and a key revoked across the
//! hand-over never passes once the new replica has brought every VM up to date).
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_operator::api::{Api, DEFAULT_AUTHENTICATE_PER_MINUTE};
use layergate_operator::source::{DirSource, Source};
use layergate_tests::demo::{self, ARCHIVE_KEY, PRIMARY_KEY};
use layergate_tests::devstore::DevStore;
use layergate_tests::envoy::Envoy;
use layergate_tests::http::Request;
use layergate_tests::paths;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Envoy workers: every worker's VM syncs on its own.
const WORKERS: usize = 2;
/// A minted key of the demo manifests, allowed on `shop-*` of `primary`.
const SHOP: &str = layergate_tests::tour::SHOP_READER_TOKEN;
/// `primary` has no such namespace: a key that passes the filter gets the devstore's 404.
const SHOP_PATH: &str = "/v1/namespaces/shop-a/metadata";
const STALE_GAUGE: &str = "wasmcustom.layergate.keys_stale_seconds";

/// One operator replica: a directory source and its control API on `addr`, stoppable like a
/// process that dies (listener and held long polls closed).
struct Replica {
    source: Arc<DirSource>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    fn serve(source: Arc<DirSource>, addr: SocketAddr) -> Replica {
        // The address was just released by the previous replica: retry the bind briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("bind {addr}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        let api = Arc::new(Api::new(source.clone(), DEFAULT_AUTHENTICATE_PER_MINUTE));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            api.serve_blocking(listener, layergate_operator::api::Role::Control, async {
                let _ = rx.await;
            })
            .unwrap();
        });
        Replica {
            source,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops serving and waits until the listener and every connection are closed.
    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    fn revision(&self) -> String {
        self.source.state().keys.table().revision.clone()
    }

    /// Long polls held now: one per VM whose table is at this replica's revision.
    fn waiting(&self) -> u64 {
        u64::try_from(self.source.state().keys.waiting.get()).unwrap_or(0)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.halt();
    }
}

struct Stack {
    envoy: Envoy,
    _stores: (DevStore, DevStore),
    dir: PathBuf,
    out: PathBuf,
    settings: layergate_operator::output::Settings,
    control: SocketAddr,
}

impl Stack {
    /// Devstores, the demo manifests, a rendering whose `keyService.maxStalenessSeconds` is
    /// `stale`, and Envoy with [`WORKERS`] workers; no operator serving yet.
    fn start(tag: &str, stale: u64) -> Stack {
        let primary = DevStore::start(PRIMARY_KEY).unwrap();
        let archive = DevStore::start(ARCHIVE_KEY).unwrap();
        let (dir, out) = demo::manifests_for(tag, &primary, &archive).unwrap();
        // A free port for the control API, released for the replicas to bind.
        let control = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut settings = demo::test_settings(Some(control)).unwrap_or_else(|e| panic!("{e:#}"));
        settings.key_max_staleness_seconds = stale;
        let first = DirSource::new(dir.clone(), out.clone(), settings.clone());
        first.refresh().unwrap();
        let bootstrap = std::fs::read_to_string(out.join("bootstrap.yaml")).unwrap();
        let envoy = Envoy::start_yaml_workers(&bootstrap, &paths::repo_root(), WORKERS)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Stack {
            envoy,
            _stores: (primary, archive),
            dir,
            out,
            settings,
            control,
        }
    }

    /// A new operator replica over the same manifests and output (and so the same gateway
    /// credential), after its first pass.
    fn replica(&self) -> Arc<DirSource> {
        let s = Arc::new(DirSource::new(
            self.dir.clone(),
            self.out.clone(),
            self.settings.clone(),
        ));
        s.refresh().unwrap();
        s
    }

    fn status(&self, method: &str, path: &str, token: &str) -> u16 {
        Request::new(method, path)
            .bearer(token)
            .send(self.envoy.addr)
            .unwrap()
            .status
    }

    /// Polls until `path` answers `want` for `token`, at most `within`; returns how long it took.
    fn eventually(&self, path: &str, token: &str, want: u16, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let got = self.status("GET", path, token);
            if got == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "{path} answered {got}, not {want}, after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn stale_seconds(&self) -> u64 {
        self.envoy.stat(STALE_GAUGE).unwrap().unwrap_or(0)
    }

    /// Waits until `n` long polls are held at `replica` (every syncing VM is at its revision).
    fn all_synced(&self, replica: &Replica, n: u64, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        while replica.waiting() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} VMs synced after {within:?}",
                replica.waiting()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Instant::now()
    }
}

/// How many VMs of the gateway sync (a worker's each, maybe the main thread's): the long polls
/// held at `replica` once they have settled.
fn syncing_vms(s: &Stack, replica: &Replica) -> u64 {
    s.all_synced(replica, WORKERS as u64, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    replica.waiting()
}

/// Inbound keys and store credentials never depend on the key service.
fn unaffected(s: &Stack) {
    assert_eq!(
        s.status("GET", SHOP_PATH, "demo-read-token"),
        404,
        "an inbound key"
    );
    assert_eq!(
        s.status("GET", "/v1/namespaces/logs-2026/metadata", ARCHIVE_KEY),
        404,
        "archive's own credential (deriveFromStore)"
    );
}

#[test]
fn key_service_down_mid_run_serves_the_last_table_then_fails_closed_then_recovers() {
    const STALE: u64 = 4;
    let s = Stack::start("ks-down", STALE);
    let a = Replica::serve(s.replica(), s.control);
    s.eventually(SHOP_PATH, SHOP, 404, Duration::from_secs(10));
    let vms = syncing_vms(&s, &a);
    assert!(s.stale_seconds() <= 1, "{}", s.stale_seconds());
    unaffected(&s);

    // The operator goes away: its held long polls are cut, its port refuses.
    a.stop();
    let down = Instant::now();
    assert_eq!(
        s.status("GET", SHOP_PATH, SHOP),
        404,
        "the last table serves"
    );
    // The gauge grows while minted tokens keep passing, up to maxStalenessSeconds.
    let mut seen = 0;
    while down.elapsed() < Duration::from_secs(STALE - 2) {
        seen = seen.max(s.stale_seconds());
        assert_eq!(
            s.status("GET", SHOP_PATH, SHOP),
            404,
            "the last table serves within maxStalenessSeconds ({:?} down)",
            down.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen >= 1, "keys_stale_seconds reached only {seen}");
    // Past it: minted tokens fail closed, nothing else does.
    let closed = s.eventually(SHOP_PATH, SHOP, 503, Duration::from_secs(STALE + 4));
    let r = Request::new("GET", SHOP_PATH)
        .bearer(SHOP)
        .send(s.envoy.addr)
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(r.text().contains("stale"), "{}", r.text());
    assert!(s.stale_seconds() >= STALE, "{}", s.stale_seconds());
    unaffected(&s);
    println!(
        "key service down: minted tokens 503 after {:?} (maxStalenessSeconds {STALE})",
        down.elapsed()
    );
    let _ = closed;

    // It comes back (a new process over the same objects): the gateway finds it by itself.
    let b = Replica::serve(s.replica(), s.control);
    let back = Instant::now();
    let recovered = s.eventually(SHOP_PATH, SHOP, 404, Duration::from_secs(15));
    s.all_synced(&b, vms, Duration::from_secs(15));
    println!(
        "key service back: minted tokens pass {recovered:?} later, every VM synced {:?} later",
        back.elapsed()
    );
    // Every VM is fresh again: minted tokens pass on every connection, the gauge is back down.
    for _ in 0..20 {
        assert_eq!(s.status("GET", SHOP_PATH, SHOP), 404);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while s.stale_seconds() > 1 {
        assert!(
            Instant::now() < deadline,
            "keys_stale_seconds stays at {}",
            s.stale_seconds()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    unaffected(&s);
}

#[test]
fn replica_hand_over_answers_an_unknown_revision_with_a_snapshot_and_a_revoked_key_stays_out() {
    let s = Stack::start("ks-handover", 300);
    let a = Replica::serve(s.replica(), s.control);
    s.eventually(SHOP_PATH, SHOP, 404, Duration::from_secs(10));
    // Mint through the gateway (replica a answers) and use the key.
    let admin = "demo-admin-token";
    let minted = Request::new("POST", "/v2/keys")
        .bearer(admin)
        .json(&json!({"name": "handed-over", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}}))
        .send(s.envoy.addr)
        .unwrap();
    assert_eq!(minted.status, 201, "{}", minted.text());
    let minted = minted.json().unwrap();
    let token = minted["token"].as_str().unwrap().to_owned();
    let key_id = minted["keyId"].as_str().unwrap().to_owned();
    s.eventually(SHOP_PATH, &token, 404, Duration::from_secs(5));
    let vms = syncing_vms(&s, &a);
    let rev_a = a.revision();

    // Revisions mean the same on every replica: another process over the same objects names
    // the same one, and holds a gateway at it like the first would.
    let twin = s.replica();
    assert_eq!(twin.state().keys.table().revision, rev_a);
    drop(twin);

    // A client hammers the gateway with the key throughout the hand-over.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let (stop, addr, token) = (stop.clone(), s.envoy.addr, token.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let status = Request::new("GET", SHOP_PATH)
                    .bearer(&token)
                    .send(addr)
                    .map_or(0, |r| r.status);
                seen.push((sent, status));
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    // Hand-over: a stops; the key is revoked while no replica serves (written to the
    // manifests, as a revocation the old leader wrote last); b starts from the objects and so
    // never knew rev_a.
    let pass = a.source.last().unwrap();
    a.stop();
    let b_source = Arc::new(DirSource::new(
        s.dir.clone(),
        s.out.clone(),
        s.settings.clone(),
    ));
    b_source.revoke_key(&pass, "handed-over").unwrap();
    b_source.refresh().unwrap();
    let b = Replica::serve(b_source, s.control);
    let serving = Instant::now();
    let rev_b = b.revision();
    assert_ne!(rev_b, rev_a);
    // b does not know rev_a: it answers a gateway at rev_a with a snapshot without the key.
    let answer: serde_json::Value =
        serde_json::from_slice(&b.source.state().keys.table().answer(Some(&rev_a))).unwrap();
    assert_eq!(answer["snapshot"], true, "{answer}");
    assert_eq!(answer["revision"], rev_b.as_str());
    assert!(
        !answer["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["keyId"] == key_id.as_str()),
        "the revoked key is in b's snapshot"
    );

    // Every VM moves to b's revision on its own; from then on the key never passes.
    let synced = s.all_synced(&b, vms, Duration::from_secs(10));
    println!(
        "hand-over: every VM at b's revision {:?} after b started serving",
        synced - serving
    );
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let seen = hammer.join().unwrap();
    let after: Vec<u16> = seen
        .iter()
        .filter(|(sent, _)| *sent > synced)
        .map(|&(_, st)| st)
        .collect();
    assert!(
        after.len() >= 10,
        "only {} requests after the sync",
        after.len()
    );
    assert!(
        after.iter().all(|&st| st == 401),
        "the revoked key got {after:?} after every VM synced"
    );
    let before: Vec<u16> = seen
        .iter()
        .filter(|(sent, _)| *sent < serving)
        .map(|&(_, st)| st)
        .collect();
    assert!(
        before.iter().all(|&st| st == 404),
        "no failed request before the hand-over: {before:?}"
    );
    // Keys untouched by the change kept working, and b serves the control API too.
    assert_eq!(s.status("GET", SHOP_PATH, SHOP), 404);
    unaffected(&s);
    let again = Request::new("POST", "/v2/keys")
        .bearer(admin)
        .json(&json!({"name": "after-hand-over", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}}))
        .send(s.envoy.addr)
        .unwrap();
    assert_eq!(again.status, 201, "{}", again.text());
    let token2 = again.json().unwrap()["token"].as_str().unwrap().to_owned();
    s.eventually(SHOP_PATH, &token2, 404, Duration::from_secs(5));
}
