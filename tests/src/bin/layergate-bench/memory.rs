//! Gateway memory at 100,000 minted keys (SPEC §9, issue 23): the resident size of an Envoy
//! with `BENCH_MEMORY_WORKERS` workers (default 16) once every syncing VM (wasm: each worker's
//! and the main thread's) or the process's one table (native) holds the key service's
//! 100,000-key snapshot, beside the same gateway whose key service holds no keys. The
//! difference is what the keys cost the process. Alone: `BENCH_ONLY=memory`.

use super::churn::{control_cluster, key, key_service, syncing_config, KEYS};
use super::{bench_token, free_port};
use anyhow::{ensure, Result};
use layergate_filter::config::ApiKeyConfig;
use layergate_tests::bench::rss_bytes;
use layergate_tests::demo;
use layergate_tests::envoy::{Envoy, Filter};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MIB: f64 = (1 << 20) as f64;

/// The resident size of a gateway of `filter` with `workers` workers, once `vms` long polls
/// are held at a key service serving `keys`.
fn gateway_rss(
    upstream: SocketAddr,
    filter: Filter,
    keys: &[ApiKeyConfig],
    workers: usize,
    vms: u64,
) -> Result<u64> {
    let (source, control) = key_service(keys)?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut gateway = demo::gateway(listen, admin, upstream, upstream, filter, syncing_config()?);
    gateway.clusters.push(control_cluster(control));
    let envoy = Envoy::start_yaml_workers(
        &gateway.render(),
        &layergate_tests::paths::repo_root(),
        workers,
    )?;
    let waiting = || u64::try_from(source.0.keys.waiting.get()).unwrap_or(0);
    let started = Instant::now();
    while waiting() < vms {
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "{} of {vms} syncs held after 120 s",
            waiting()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Settle: the last answers' buffers are freed, the allocator's pages stay resident.
    std::thread::sleep(Duration::from_secs(2));
    rss_bytes(envoy.pid())
}

/// Measures each build's RSS with and without the keys; the Markdown section.
pub fn run(upstream: SocketAddr) -> Result<String> {
    let workers: usize = super::env_number("BENCH_MEMORY_WORKERS", 16);
    let keys: Vec<ApiKeyConfig> = (0..KEYS)
        .map(|i| key(&format!("bench-{i}"), &bench_token(i)))
        .collect::<Result<_>>()?;
    let mut builds = vec![("wasm", Filter::wasm()?, workers as u64 + 1)];
    match Filter::native() {
        Ok(native) => builds.push(("native", native, 1)),
        Err(e) => eprintln!("memory: no native build measured ({e:#})"),
    }
    let mut out = format!(
        "\n### Gateway memory at 100,000 minted keys\n\n\
Envoy 1.40 with {workers} workers, keys from the operator's key service; RSS once every sync \
is held (wasm: one table per VM, {} VMs; native: one table per process), against the same \
gateway whose key service holds no keys.\n\n\
| build | RSS, no keys | RSS, 100,000 keys | the keys cost |\n|---|---|---|---|\n",
        workers + 1
    );
    for (name, filter, vms) in builds {
        let empty = gateway_rss(upstream, filter.clone(), &[], workers, vms)?;
        let full = gateway_rss(upstream, filter, &keys, workers, vms)?;
        let _ = writeln!(
            out,
            "| {name} | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            empty as f64 / MIB,
            full as f64 / MIB,
            (full as f64 - empty as f64) / MIB
        );
    }
    Ok(out)
}
