//! The churn run (SPEC §6, §9): 100,000 minted keys served by the operator's key service to a
//! real Envoy (`BENCH_CHURN_WORKERS` workers, default 2) under wrk load, while keys are minted
//! and revoked at `BENCH_CHURN_RATE` changes a second (default 10) for `BENCH_CHURN_SECONDS`
//! (default 30).
//!
//! Change-to-enforced delay: from the moment the operator's key service has the change (its
//! `publish` returned, which wakes every held long poll) until every syncing VM of the gateway
//! has applied it, seen at the key service as every VM's next long poll arriving (a VM sends it
//! only after swapping in the answer). Each change is then checked at the data plane: a revoked
//! token must get 401 and a minted one pass, on a new connection.

use super::{bench_token, free_port, READ_PATH};
use anyhow::{bail, ensure, Context, Result};
use layergate_filter::config::{
    ApiKeyConfig, Credential, Entitlement, FilterConfig, KeyServiceConfig,
};
use layergate_operator::api::{Api, DEFAULT_AUTHENTICATE_PER_MINUTE};
use layergate_operator::keyservice::{Change, GatewayCredential, SYNC_PATH};
use layergate_operator::source::{Pass, Source, State};
use layergate_tests::bench::load;
use layergate_tests::demo;
use layergate_tests::envoy::{Cluster, Envoy};
use layergate_tests::http::Request;
use serde_json::json;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) const KEYS: usize = 100_000;
pub(super) const CREDENTIAL: &str = "lgw_benchChurn0123456789abcdefABCDEF";
const LOAD_TOKEN: &str = "hvl_benchLoad0123456789abcdefABCDEFG";

/// A source that only serves the key service (the bench feeds it directly).
pub(super) struct KeysOnly(pub(super) State);

impl Source for KeysOnly {
    fn state(&self) -> &State {
        &self.0
    }
    fn refresh(&self) -> Result<()> {
        Ok(())
    }
    fn create_key(
        &self,
        _: &str,
        _: &str,
        _: &serde_json::Value,
        _: &str,
    ) -> Result<layergate_operator::crd::ApiKey> {
        bail!("the churn bench mints through the key service directly")
    }
    fn revoke_key(&self, _: &Pass, _: &str) -> Result<()> {
        bail!("the churn bench revokes through the key service directly")
    }
    fn delete_key(&self, _: &Pass, _: &str) -> Result<()> {
        bail!("the churn bench deletes through the key service directly")
    }
    fn rotate_key(
        &self,
        _: &Pass,
        _: &str,
        _: &str,
        _: &layergate_operator::keys::Rotation,
    ) -> Result<()> {
        bail!("the churn bench rotates through the key service directly")
    }
}

pub(super) fn key(name: &str, token: &str) -> Result<ApiKeyConfig> {
    let grant: Entitlement =
        serde_json::from_value(json!({"scopes": ["read"], "namespaces": ["shop-*"]}))?;
    Ok(ApiKeyConfig {
        key_id: format!("key_{name}"),
        name: name.to_owned(),
        owner: None,
        lookup_hash: layergate_filter::config::LookupHash::of(token),
        expires_at: None,
        entitlements: [("vectorstore.primary".to_owned(), grant)]
            .into_iter()
            .collect(),
        previous: None,
        limits: None,
        quota_spent_until: None,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The filter's table in one VM: wasm linear memory before and after a 100,000-key snapshot
/// answered through the ABI (wasmtime, the same module Envoy runs).
fn vm_table_memory(config: &str, snapshot: &[u8]) -> Result<(usize, usize)> {
    use layergate_tests::wasm_host::{FilterHost, FilterModule};
    let module = FilterModule::compile(&layergate_tests::paths::wasm_path()?)?;
    let mut host = FilterHost::load(&module, config, &[])?;
    let before = host.memory_bytes()?;
    let call = host
        .calls()
        .into_iter()
        .next()
        .context("the filter made no key-service call")?;
    host.answer_call(call.token, Some(200), snapshot)?;
    ensure!(
        host.calls().len() > 1,
        "the filter did not poll again after the snapshot: {:?}",
        host.logs()
    );
    Ok((before, host.memory_bytes()?))
}

/// The operator's key service holding `keys`, behind a control API on loopback.
pub(super) fn key_service(keys: &[ApiKeyConfig]) -> Result<(Arc<KeysOnly>, SocketAddr)> {
    let source = Arc::new(KeysOnly(State::default()));
    source
        .0
        .keys
        .set_credential(GatewayCredential::of(CREDENTIAL));
    source.0.keys.publish(keys);
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let control = listener.local_addr()?;
    let api = Arc::new(Api::new(source.clone(), DEFAULT_AUTHENTICATE_PER_MINUTE));
    std::thread::spawn(move || {
        api.serve_blocking(
            listener,
            layergate_operator::api::Role::Control,
            std::future::pending(),
        )
    });
    Ok((source, control))
}

/// The demo filter configuration without minted keys, syncing them from the key service.
pub(super) fn syncing_config() -> Result<String> {
    let mut config: FilterConfig = serde_json::from_str(&demo::filter_config()?)?;
    config.api_keys.clear();
    config.key_service = Some(KeyServiceConfig {
        cluster: "layergate_control".into(),
        authority: None,
        path: SYNC_PATH.into(),
        credential: Credential::Inline(CREDENTIAL.into()),
        max_staleness_seconds: 300,
        poll_seconds: 30,
        usage_path: layergate_filter::config::DEFAULT_USAGE_PATH.into(),
        report_seconds: layergate_filter::config::DEFAULT_REPORT_SECONDS,
    });
    Ok(serde_json::to_string(&config)?)
}

/// The gateway's cluster for the operator's control API at `control`.
pub(super) fn control_cluster(control: SocketAddr) -> Cluster {
    Cluster {
        name: "layergate_control".into(),
        address: control.ip().to_string(),
        port: control.port(),
        hostname: "layergate-control".into(),
        tls: false,
        trusted_ca: None,
        label: "the operator's control API".into(),
    }
}

/// Runs the churn and returns its Markdown section.
pub fn run(upstream: SocketAddr) -> Result<String> {
    let seconds: u64 = super::env_number("BENCH_CHURN_SECONDS", 30);
    let rate: u64 = super::env_number("BENCH_CHURN_RATE", 10);
    let workers: usize = super::env_number("BENCH_CHURN_WORKERS", 2);

    // The operator side: the key service with 100,000 keys, on a control API.
    let mut keys: Vec<ApiKeyConfig> = (0..KEYS)
        .map(|i| key(&format!("bench-{i}"), &bench_token(i)))
        .collect::<Result<_>>()?;
    keys.push(key("bench-load", LOAD_TOKEN)?);
    let started = Instant::now();
    let (source, control) = key_service(&keys)?;
    let first_publish = started.elapsed();
    let service = &source.0.keys;
    let snapshot_get = || -> Result<(Duration, Vec<u8>)> {
        let started = Instant::now();
        let r = Request::new("GET", SYNC_PATH)
            .bearer(CREDENTIAL)
            .send(control)?;
        let took = started.elapsed();
        ensure!(r.status == 200, "snapshot: {}", r.status);
        Ok((took, r.body))
    };
    std::thread::sleep(Duration::from_millis(100));
    let (snapshot_first, body) = snapshot_get()?;
    let (snapshot_again, _) = snapshot_get()?;

    let config = syncing_config()?;
    let (vm_before, vm_after) = vm_table_memory(&config, &body)?;
    drop(body);
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut gateway = demo::gateway(
        listen,
        admin,
        upstream,
        upstream,
        layergate_tests::envoy::Filter::wasm()?,
        config,
    );
    gateway.clusters.push(control_cluster(control));
    let envoy = Envoy::start_yaml_workers(
        &gateway.render(),
        &layergate_tests::paths::repo_root(),
        workers,
    )?;
    let status = |token: &str| -> u16 {
        Request::new("GET", READ_PATH)
            .bearer(token)
            .send(envoy.addr)
            .map_or(0, |r| r.status)
    };
    // Every VM synced: as many long polls held as syncing VMs, steadily.
    let waiting = || u64::try_from(service.waiting.get()).unwrap_or(0);
    let answered = || service.answered.get();
    let started = Instant::now();
    while waiting() < workers as u64 {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{} of {workers} VMs synced 100,000 keys after 60 s",
            waiting()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_sync = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let vms = waiting();
    ensure!(status(LOAD_TOKEN) == 200, "the load key does not pass");
    ensure!(status(&bench_token(7)) == 200, "a synced key does not pass");

    // Load for the whole churn, from another thread.
    let url = format!("http://{}{READ_PATH}", envoy.addr);
    let load_for = Duration::from_secs(seconds + 2);
    let wrk = std::thread::spawn(move || {
        let auth = format!("Bearer {LOAD_TOKEN}");
        load(
            &url,
            &[("authorization", auth.as_str())],
            None,
            super::CONNECTIONS,
            load_for,
        )
    });
    std::thread::sleep(Duration::from_millis(1000));

    let changes = (seconds * rate) as usize;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut delays = Vec::with_capacity(changes);
    let mut publishes = Vec::with_capacity(changes);
    let (mut misses, mut minted, mut revoked) = (0usize, 0usize, 0usize);
    let churn_started = Instant::now();
    for change in 0..changes {
        let due = churn_started + period * change as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Even changes mint a new key, odd ones revoke one of the original keys; each is handed
        // to the key service as what changed (`apply`), and `keys` follows the whole set.
        let (token, want, what) = if change % 2 == 0 {
            let i = KEYS + change;
            let k = key(&format!("bench-{i}"), &bench_token(i))?;
            keys.push(k.clone());
            minted += 1;
            (
                bench_token(i),
                200,
                Change {
                    upsert: vec![k],
                    remove: vec![],
                },
            )
        } else {
            let i = change * 997 % KEYS;
            let name = format!("bench-{i}");
            let at = keys
                .iter()
                .position(|k| k.name == name)
                .context("the key to revoke")?;
            let gone = keys.swap_remove(at);
            revoked += 1;
            (
                bench_token(i),
                401,
                Change {
                    upsert: vec![],
                    remove: vec![gone.key_id],
                },
            )
        };
        let before = answered();
        let published = Instant::now();
        service.apply(what);
        let answering = Instant::now();
        publishes.push(answering - published);
        while answered() < before + vms || waiting() < vms {
            if answering.elapsed() > Duration::from_secs(10) {
                bail!("change {change}: the gateway's VMs did not all sync within 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        delays.push(answering.elapsed());
        if status(&token) != want {
            misses += 1;
        }
    }
    let churn_took = churn_started.elapsed();
    let stats = wrk
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    delays.sort_unstable();
    publishes.sort_unstable();
    // A pass hands over its whole key set (`publish`: a lookup and a comparison per key):
    // one change that way, 20 times (a key revoked, then back).
    let mut whole = Vec::with_capacity(20);
    for round in 0..20 {
        let set = if round % 2 == 0 {
            &keys[1..]
        } else {
            &keys[..]
        };
        let started = Instant::now();
        service.publish(set);
        whole.push(started.elapsed());
    }
    whole.sort_unstable();
    let achieved = changes as f64 / churn_took.as_secs_f64();
    let mut out = String::new();
    let _ = write!(
        out,
        "\n### Key churn: 100,000 minted keys from the key service, under load\n\n\
Envoy with {workers} workers ({vms} VMs syncing), the operator's key service in-process on loopback; wrk with {} connections on a key that never changes ({:.0} req/s) while {changes} changes ({minted} mints, {revoked} revocations) are made at {achieved:.1}/s for {:.1} s. \
Change-to-enforced: from the key service having the change (its publish returned and woke the held long polls) to every VM's next long poll arriving (each VM sends it after swapping the answer in).\n\n\
| what | measured |\n|---|---|\n\
| change-to-enforced at every VM, p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |\n\
| failed requests under load (non-2xx or socket errors, of {}) | {} |\n\
| changes not enforced at the data plane right after (revoked token not 401, minted not passing) | {misses} of {changes} |\n\
| operator: publishing one change into a 100,000-key table, p50 / p99: as the change (`apply`, what the churn does) | {:.2} / {:.2} ms |\n\
| operator: publishing one change as the whole key set (`publish`, what a pass does), p50 / max of 20 | {:.1} / {:.1} ms |\n\
| operator: first publish of 100,000 keys | {:.0} ms |\n\
| key-service snapshot of 100,000 keys over HTTP: first (built) / again (cached) | {:.0} / {:.0} ms |\n\
| gateway start → every VM synced the 100,000-key snapshot | {:.0} ms |\n\
| one VM's wasm linear memory: configured / after the 100,000-key snapshot (a high-water mark: it includes parsing the answer) | {:.1} / {:.1} MiB |\n",
        super::CONNECTIONS,
        stats.throughput(),
        churn_took.as_secs_f64(),
        ms(percentile(&delays, 0.5)),
        ms(percentile(&delays, 0.99)),
        ms(percentile(&delays, 1.0)),
        stats.requests,
        stats.errors,
        ms(percentile(&publishes, 0.5)),
        ms(percentile(&publishes, 0.99)),
        ms(percentile(&whole, 0.5)),
        ms(percentile(&whole, 1.0)),
        ms(first_publish),
        ms(snapshot_first),
        ms(snapshot_again),
        ms(first_sync),
        vm_before as f64 / (1 << 20) as f64,
        vm_after as f64 / (1 << 20) as f64,
    );
    drop(envoy);
    Ok(out)
}
