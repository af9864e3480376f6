//! `make bench`: layergate beside what a user would pick instead, on one Envoy worker, the
//! same upstream and listener for all, interleaved (A B C A B C …) so drift cancels.
//! Figures: throughput, p50/p99 latency, Envoy CPU µs per request, Envoy RSS.
//!
//! Variants measured today: bare Envoy (router only), a no-op wasm filter (the wasm floor),
//! a Lua filter doing the same key check and credential swap, and layergate with the demo
//! fixture (header-only read). Envoy's native api_key_auth+rbac+credential_injector,
//! ext_authz and the scale runs of SPEC §9 are still to come (issue 5).

use anyhow::{Context, Result};
use layergate_operator::envoy as render;
use layergate_tests::bench::{cpu_time, load, rss_bytes, start_upstream, LoadStats};
use layergate_tests::demo;
use layergate_tests::envoy::Envoy;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

struct Variant {
    name: &'static str,
    yaml: String,
    /// Extra request headers (all variants send the same read with a bearer).
    headers: Vec<(&'static str, &'static str)>,
}

const PATH: &str = "/v1/namespaces/shop-a/metadata";

#[derive(Default, Clone)]
struct Totals {
    requests: u64,
    errors: u64,
    secs: f64,
    cpu: Duration,
    p50: Vec<Duration>,
    p99: Vec<Duration>,
    rss: u64,
}

const LUA_KEY_CHECK: &str = r#"
local keys = {["Bearer demo-read-token"] = true, ["Bearer demo-rw-token"] = true, ["Bearer demo-admin-token"] = true}
function envoy_on_request(h)
  local headers = h:headers()
  if not keys[headers:get("authorization")] then
    h:respond({[":status"] = "401"}, "unauthorized")
    return
  end
  headers:replace("authorization", "Bearer tpuf-primary-dev-key")
  headers:replace("x-layergate-cluster", "store_primary")
end
"#;

fn with_filters(mut listener: Value, filters: Vec<Value>) -> Value {
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = json!(filters);
    listener
}

fn router() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

fn variants(upstream: SocketAddr) -> Result<Vec<Variant>> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let wasm = layergate_tests::paths::wasm_path()?;
    let gw = demo::gateway(
        any,
        any,
        upstream,
        upstream,
        wasm.clone(),
        demo::filter_config()?,
    );
    let plain = render::listener(&render::Listener {
        listen: any,
        wasm_path: wasm.to_string_lossy().into_owned(),
        filter_config: None,
        vm_env: Vec::new(),
        buffer_limit_bytes: render::DEFAULT_BUFFER_LIMIT_BYTES,
    });
    // The same chain as layergate's (wasm, buffer, router), with a filter that does nothing.
    let noop_wasm = layergate_tests::paths::repo_root()
        .join("target/wasm32-wasip1/wasm/layergate_noop_filter.wasm");
    anyhow::ensure!(
        noop_wasm.is_file(),
        "{} is missing: run `make bench`",
        noop_wasm.display()
    );
    let noop = render::listener(&render::Listener {
        listen: any,
        wasm_path: noop_wasm.to_string_lossy().into_owned(),
        filter_config: Some(String::new()),
        vm_env: Vec::new(),
        buffer_limit_bytes: render::DEFAULT_BUFFER_LIMIT_BYTES,
    });
    let lua = json!({"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": LUA_KEY_CHECK}}});
    let cluster = vec![("x-layergate-cluster", "store_primary")];
    Ok(vec![
        Variant {
            name: "bare Envoy (router only)",
            yaml: render::bootstrap_with_listener(
                any,
                with_filters(plain.clone(), vec![router()]),
                &gw.clusters,
            ),
            headers: cluster.clone(),
        },
        Variant {
            name: "no-op wasm filter (the wasm floor)",
            yaml: render::bootstrap_with_listener(any, noop, &gw.clusters),
            headers: cluster.clone(),
        },
        Variant {
            name: "Lua key check + credential swap",
            yaml: render::bootstrap_with_listener(
                any,
                with_filters(plain, vec![lua, router()]),
                &gw.clusters,
            ),
            headers: Vec::new(),
        },
        Variant {
            name: "layergate (demo fixture)",
            yaml: gw.render(),
            headers: Vec::new(),
        },
    ])
}

fn run_once(
    v: &Variant,
    duration: Duration,
    connections: usize,
) -> Result<(LoadStats, Duration, u64)> {
    let envoy = Envoy::start_yaml(&v.yaml, &layergate_tests::paths::repo_root())
        .with_context(|| format!("starting {}", v.name))?;
    let url = format!("http://{}{PATH}", envoy.addr);
    let mut headers = vec![("authorization", "Bearer demo-read-token")];
    headers.extend(v.headers.iter().copied());
    load(&url, &headers, connections, Duration::from_secs(1))?; // warm-up
    let before = cpu_time(envoy.pid())?;
    let stats = load(&url, &headers, connections, duration)?;
    let cpu = cpu_time(envoy.pid())? - before;
    let rss = rss_bytes(envoy.pid())?;
    Ok((stats, cpu, rss))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::fs::read_to_string("/proc/cpuinfo").map_or(0, |c| {
        c.lines().filter(|l| l.starts_with("processor")).count()
    });
    format!("{cpu}, {cores} cores")
}

fn main() -> Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let connections = 16;
    let upstream = start_upstream()?;
    let variants = variants(upstream)?;
    let mut totals = vec![Totals::default(); variants.len()];
    for round in 0..rounds {
        for (v, t) in variants.iter().zip(totals.iter_mut()) {
            let (stats, cpu, rss) = run_once(v, Duration::from_secs(seconds), connections)?;
            eprintln!(
                "round {}: {:<34} {:>9.0} req/s  {:>6.2} µs CPU/req",
                round + 1,
                v.name,
                stats.throughput(),
                cpu.as_secs_f64() * 1e6 / stats.requests.max(1) as f64
            );
            t.requests += stats.requests;
            t.errors += stats.errors;
            t.secs += stats.elapsed.as_secs_f64();
            t.cpu += cpu;
            t.p50.push(stats.p50);
            t.p99.push(stats.p99);
            t.rss = t.rss.max(rss);
        }
    }
    let envoy_version = std::process::Command::new(layergate_tests::paths::envoy_bin()?)
        .arg("--version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.split("version: ")
                .nth(1)
                .and_then(|v| v.split('/').nth(1))
                .unwrap_or("?")
                .to_owned()
        })
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu_us = |t: &Totals| t.cpu.as_secs_f64() * 1e6 / t.requests.max(1) as f64;
    let (bare, floor) = (cpu_us(&totals[0]), cpu_us(&totals[1]));
    let mut table = format!(
        "Envoy {envoy_version}, one worker (`--concurrency 1`{}); wrk, one thread, {connections} keep-alive connections, closed loop; {rounds} interleaved rounds of {seconds} s after a 1 s warm-up; `GET {PATH}` with a bearer; {}; {date}.\n\n\
| variant | req/s | p50 | p99 | Envoy CPU µs/req | × bare | − wasm floor µs | Envoy CPU busy | Envoy RSS MiB | errors |\n|---|---|---|---|---|---|---|---|---|---|\n",
        std::env::var("LAYERGATE_ENVOY_CPU").map(|c| format!(", pinned to CPU {c}")).unwrap_or_default(),
        machine()
    );
    for (v, t) in variants.iter().zip(&mut totals) {
        // Latency: the median over rounds of each round's percentile.
        let median = |v: &mut Vec<Duration>| {
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        let stats = LoadStats {
            requests: t.requests,
            errors: t.errors,
            elapsed: Duration::from_secs_f64(t.secs),
            p50: median(&mut t.p50),
            p99: median(&mut t.p99),
        };
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.0} µs | {:.0} µs | {:.2} | {:.2} | {:+.2} | {:.0}% | {:.1} | {} |",
            v.name,
            stats.throughput(),
            stats.p50.as_secs_f64() * 1e6,
            stats.p99.as_secs_f64() * 1e6,
            cpu_us(t),
            cpu_us(t) / bare,
            cpu_us(t) - floor,
            100.0 * t.cpu.as_secs_f64() / t.secs,
            t.rss as f64 / (1 << 20) as f64,
            t.errors
        );
    }
    print!("{table}");
    let out = layergate_tests::paths::repo_root().join("tests/bench/results.md");
    std::fs::create_dir_all(out.parent().context("results dir")?)?;
    std::fs::write(&out, format!("# `make bench` results\n\n{table}"))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
