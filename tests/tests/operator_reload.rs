//! The operator's rendering drives a real Envoy through file-based dynamic config: a changed
//! manifest reaches the gateway by hot reload, with no failed in-flight requests.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_operator::source::DirSource;
use layergate_tests::demo::{self, ARCHIVE_KEY, PRIMARY_KEY};
use layergate_tests::devstore::DevStore;
use layergate_tests::envoy::Envoy;
use layergate_tests::http::Request;
use layergate_tests::paths;
use layergate_tests::tour::SHOP_READER_TOKEN as SHOP;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn revoking_a_key_in_a_manifest_takes_effect_under_load_without_failed_requests() {
    let primary = DevStore::start(PRIMARY_KEY).unwrap();
    let archive = DevStore::start(ARCHIVE_KEY).unwrap();
    let (manifest_dir, out) = demo::manifests_for("reload", &primary, &archive).unwrap();
    let settings = demo::test_settings(None).unwrap_or_else(|e| panic!("{e:#}"));
    let source = DirSource::new(manifest_dir.clone(), out.clone(), settings);
    source.refresh().unwrap();
    let bootstrap = std::fs::read_to_string(out.join("bootstrap.yaml")).unwrap();
    let envoy =
        Envoy::start_yaml(&bootstrap, &paths::repo_root()).unwrap_or_else(|e| panic!("{e:#}"));
    let gw = envoy.addr;
    let r = Request::new("POST", "/v2/namespaces/shop-a")
        .bearer("demo-rw-token")
        .json(&serde_json::json!({"upsert_rows": [{"id": 1}]}))
        .send(gw)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let shop_reader = || {
        Request::new("GET", "/v1/namespaces/shop-a/metadata")
            .bearer(SHOP)
            .send(gw)
            .unwrap()
            .status
    };
    assert_eq!(shop_reader(), 200);
    // A bounded loop of requests runs while the manifest changes and Envoy reloads.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut sent, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::SeqCst) && sent < 5_000 {
                let r = Request::new("POST", "/v2/namespaces/shop-a/query")
                    .bearer("demo-read-token")
                    .json(&serde_json::json!({"top_k": 1}))
                    .send(gw);
                match r {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failed.push(format!("{}: {}", r.status, r.text())),
                    Err(e) => failed.push(format!("{e:#}")),
                }
                sent += 1;
            }
            (sent, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let keys = manifest_dir.join("apikeys.yaml");
    let text = std::fs::read_to_string(&keys).unwrap().replace(
        "expiresAfter: never",
        "expiresAfter: never\n  revoked: true",
    );
    std::fs::write(&keys, text).unwrap();
    let changed = Instant::now();
    source.refresh().unwrap();
    while shop_reader() != 401 {
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "the revocation did not reach Envoy within 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = changed.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let (sent, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed during the reload: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(sent > 10, "the load loop barely ran ({sent})");
    eprintln!(
        "revocation effective after {took:?}; {sent} requests during the reload, none failed"
    );
}
