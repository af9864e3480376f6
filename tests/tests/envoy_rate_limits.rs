//! Per-key rate limits in the real Envoy (issue 25), for both builds: with two workers, a key
//! sending twice its limit for 10 s is admitted at its limit (one bucket for the process, not
//! one per worker), and refused with 429, `Retry-After` and the `RateLimit` fields; the official
//! turbopuffer client gets the 429, backs off and succeeds once the bucket refills. Figures are
//! printed with `--nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use layergate_tests::demo::{self, ARCHIVE_KEY, PRIMARY_KEY};
use layergate_tests::devstore::DevStore;
use layergate_tests::envoy::{Envoy, Filter};
use layergate_tests::http::Request;
use layergate_tests::tour::SHOP_READER_TOKEN as SHOP;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WORKERS: usize = 2;

/// The demo gateway with two workers; the shop reader key limited to `rate`/s, burst `burst`.
fn start(filter: Filter, rate: u32, burst: u32) -> (Envoy, DevStore, DevStore) {
    let primary = DevStore::start(PRIMARY_KEY).unwrap();
    let archive = DevStore::start(ARCHIVE_KEY).unwrap();
    let mut cfg: Value = serde_json::from_str(&demo::filter_config().unwrap()).unwrap();
    assert_eq!(cfg["apiKeys"][0]["name"], "shop-reader");
    cfg["apiKeys"][0]["limits"] = json!({"requestsPerSecond": rate, "burst": burst});
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let gw = demo::gateway(
        any,
        any,
        primary.addr(),
        archive.addr(),
        filter,
        cfg.to_string(),
    );
    let envoy = Envoy::start_gateway_workers(&gw, &gw.render(), WORKERS)
        .unwrap_or_else(|e| panic!("{e:#}"));
    (envoy, primary, archive)
}

fn read(addr: SocketAddr, token: &str) -> layergate_tests::http::Response {
    Request::new("GET", "/v1/namespaces/shop-books/metadata")
        .bearer(token)
        .send(addr)
        .unwrap()
}

/// `threads` clients, each on new connections (so both workers judge them), together sending
/// `rate` requests a second for `secs` seconds; (admitted, refused with 429).
fn load(addr: SocketAddr, rate: u64, secs: u64, threads: u64) -> (u64, u64) {
    let (ok, limited) = (AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (ok, limited) = (&ok, &limited);
            s.spawn(move || {
                let per = rate / threads;
                for i in 0..per * secs {
                    let at = start
                        + Duration::from_nanos(
                            (i * 1_000_000_000 + t * 1_000_000_000 / threads) / per,
                        );
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    match read(addr, SHOP).status {
                        429 => limited.fetch_add(1, Ordering::Relaxed),
                        _ => ok.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
    });
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(secs) + Duration::from_millis(1500),
        "the load generator fell behind ({took:?}); the admitted rate would not mean much"
    );
    (ok.into_inner(), limited.into_inner())
}

fn admitted_rate_is_the_limit(filter: Filter) {
    let build = format!("{:?}", filter.build);
    let (rate, burst, secs) = (100u64, 10u64, 10u64);
    let (envoy, _primary, _archive) = start(filter, rate as u32, burst as u32);
    let (ok, limited) = load(envoy.addr, 2 * rate, secs, 4);
    let admitted = (ok - burst) as f64 / secs as f64;
    eprintln!("{build}: {WORKERS} workers, limit {rate}/s burst {burst}, sent {}/s for {secs} s: admitted {ok} ({admitted:.1}/s after the burst), refused {limited}", 2 * rate);
    assert!(
        (admitted - rate as f64).abs() <= 0.05 * rate as f64,
        "{build}: admitted {admitted:.1}/s, the limit is {rate}/s"
    );
    assert_eq!(ok + limited, 2 * rate * secs, "every request answered");
    // The wasm build flushes its counters once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    let counted = loop {
        let n = envoy.filter_stat("layergate.denied_429").unwrap();
        if n == Some(limited) || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(counted, Some(limited), "the denied_429 counter");
}

#[test]
fn two_workers_admit_a_key_at_its_limit_wasm() {
    admitted_rate_is_the_limit(Filter::wasm().unwrap());
}

#[test]
fn two_workers_admit_a_key_at_its_limit_native() {
    admitted_rate_is_the_limit(Filter::native().unwrap());
}

#[test]
fn a_limited_key_gets_429_with_retry_after_and_ratelimit_fields() {
    let (envoy, primary, _archive) = start(Filter::under_test().unwrap(), 1, 2);
    assert_ne!(read(envoy.addr, SHOP).status, 429);
    assert_ne!(read(envoy.addr, SHOP).status, 429);
    let before = primary.request_count();
    let r = read(envoy.addr, SHOP);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=2;w=2"));
    assert_eq!(r.header("ratelimit"), Some("\"default\";r=0;t=1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(body["status"], "error");
    assert!(
        body["error"].as_str().unwrap().contains(
            "apikey:shop-reader is over its rate limit of 1 requests per second (burst 2)"
        ),
        "{body}"
    );
    assert_eq!(
        primary.request_count(),
        before,
        "a refused request never reaches the store"
    );
    // Another principal is not limited by this key's bucket.
    assert_ne!(read(envoy.addr, PRIMARY_KEY).status, 429);
    std::thread::sleep(Duration::from_millis(1100));
    assert_ne!(
        read(envoy.addr, SHOP).status,
        429,
        "refilled after Retry-After"
    );
}

#[test]
fn the_official_client_backs_off_and_succeeds_once_the_bucket_refills() {
    let (envoy, _primary, _archive) = start(Filter::under_test().unwrap(), 2, 2);
    let base = format!("http://{}", envoy.addr);
    let (code, out) =
        layergate_tests::python::run_script("tpuf_rate_limit.py", &[&base, SHOP, "shop-books"])
            .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("official client: {out}");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["status"], 429, "{out}");
    assert_eq!(out["first_429_after"], 2, "the burst of 2 first: {out}");
    assert_eq!(out["retry_after"], "1", "{out}");
    assert_eq!(out["ratelimit_policy"], "\"default\";q=2;w=1", "{out}");
    assert_eq!(out["retried_ok"], true, "{out}");
}
