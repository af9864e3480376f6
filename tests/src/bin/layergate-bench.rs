//! `make bench`: layergate beside what a user would pick instead (SPEC §9), on one Envoy
//! worker, the same upstream and listener for all, every variant in every round (A B C … A B
//! C …) so drift cancels. Figures: throughput, p50/p99 latency, Envoy CPU µs per request (and
//! the authorizer's, for ext_authz), Envoy RSS.
//!
//! Tables: the peers (header-only read); the price of each kind of host call (a no-op filter
//! that makes them); scale (minted keys, Index namespaces); request bodies (1 MiB writes).
//! Then one-off measurements: config reload at 100,000 keys, VM memory per copy, the filter's
//! configure time and the operator's render time; then the key churn run ([`churn`]:
//! 100,000 keys from the key service, ≥ 10 changes/s under load; alone: `BENCH_ONLY=churn`) and
//! the gateway's memory at 100,000 keys with 16 workers, both builds ([`memory`]; alone:
//! `BENCH_ONLY=memory`).

#[path = "layergate-bench/churn.rs"]
mod churn;
#[path = "layergate-bench/memory.rs"]
mod memory;

use anyhow::{Context, Result};
use layergate_filter::config::{ApiKeyConfig, Entitlement, FilterConfig};
use layergate_operator::envoy as render;
use layergate_tests::bench::{
    authz_response, cpu_time, load, rss_bytes, serve_http, start_upstream, LoadStats,
};
use layergate_tests::demo;
use layergate_tests::envoy::Envoy;
use layergate_tests::http::Request;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READ_PATH: &str = "/v1/namespaces/shop-a/metadata";
const WRITE_PATH: &str = "/v2/namespaces/shop-a";
const CONNECTIONS: usize = 16;
/// The SDK-free probe that enters the VM and returns: the base of the per-call prices.
const PROBE_ENTER: &str = "probe: enter the VM and return";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    Peers,
    HostCalls,
    Probes,
    Scale,
    Bodies,
}

const TABLES: [(Table, &str); 5] = [
    (
        Table::Peers,
        "Header-only read: layergate and the alternatives",
    ),
    (
        Table::HostCalls,
        "The price of host calls: the no-op filter making them on every request",
    ),
    (
        Table::Probes,
        "The wasm filter's per-request parts: an SDK-free probe (six exports) making one kind of host call",
    ),
    (
        Table::Scale,
        "Scale: per-request cost with many keys and namespaces",
    ),
    (Table::Bodies, "Request bodies: 1 MiB writes"),
];

#[derive(Clone)]
struct Variant {
    table: Table,
    name: String,
    yaml: String,
    path: &'static str,
    headers: Vec<(String, String)>,
    body: Option<PathBuf>,
    /// A process whose CPU counts with Envoy's (the ext_authz service).
    sidecar: Option<u32>,
    /// For the SDK-free probes: how many times in a row it makes its call (0: not a probe).
    repeat: u32,
}

#[derive(Default, Clone)]
struct Totals {
    requests: u64,
    errors: u64,
    secs: f64,
    cpu: Duration,
    sidecar_cpu: Duration,
    p50: Vec<Duration>,
    p99: Vec<Duration>,
    /// The lowest CPU µs/req of any round: on a shared machine, other load only ever adds.
    best: f64,
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

/// Envoy's own composition for the same job, as far as it can express it: api_key_auth knows
/// the three inbound keys, rbac gives read to all and write to rw/admin, credential_injector
/// puts the store credential in. It has no notion of namespaces or stores: the client names
/// the cluster, as in the bare variant.
fn native_filters() -> Vec<Value> {
    let client = |re: &str| json!({"header": {"name": "x-client-id", "string_match": {"safe_regex": {"regex": re}}}});
    let method = |m: &str| json!({"header": {"name": ":method", "string_match": {"exact": m}}});
    vec![
        json!({"name": "envoy.filters.http.api_key_auth", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
            "credentials": [{"key": "demo-read-token", "client": "demo-read"}, {"key": "demo-rw-token", "client": "demo-rw"}, {"key": "demo-admin-token", "client": "demo-admin"}],
            "key_sources": [{"header": "authorization"}],
            "forwarding": {"header": "x-client-id", "hide_credentials": true}}}),
        json!({"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {
                "read": {"permissions": [{"or_rules": {"rules": [method("GET"), method("HEAD")]}}], "principals": [client("demo-(read|rw|admin)")]},
                "write": {"permissions": [{"any": true}], "principals": [client("demo-(rw|admin)")]}}}}}),
        json!({"name": "envoy.filters.http.credential_injector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
            "overwrite": true,
            "credential": {"name": "envoy.http.injected_credentials.generic", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
                "credential": {"name": "store-primary"}, "header": "Authorization"}}}}),
        router(),
    ]
}

fn with_secret(yaml: &str) -> Result<String> {
    let mut v: Value = serde_yaml::from_str(yaml)?;
    v["static_resources"]["secrets"] = json!([{"name": "store-primary", "generic_secret": {"secret": {"inline_string": "Bearer tpuf-primary-dev-key"}}}]);
    Ok(serde_yaml::to_string(&v)?)
}

fn with_cluster(yaml: &str, name: &str, addr: SocketAddr) -> Result<String> {
    let mut v: Value = serde_yaml::from_str(yaml)?;
    let clusters = v["static_resources"]["clusters"]
        .as_array_mut()
        .context("clusters")?;
    clusters.push(render::cluster(&render::Cluster {
        name: name.into(),
        address: addr.ip().to_string(),
        port: addr.port(),
        hostname: name.into(),
        tls: false,
        trusted_ca: None,
        label: name.into(),
    }));
    Ok(serde_yaml::to_string(&v)?)
}

/// Token of the `i`-th synthetic minted key.
fn bench_token(i: usize) -> String {
    format!("hvl_bench{i:027}")
}

/// The demo configuration plus `keys` minted keys (read on `shop-*` of primary) and
/// `namespaces` Index namespaces (`ns-<i>` on primary), and a restricted writer.
fn scaled_config(keys: usize, namespaces: usize) -> Result<String> {
    let mut config: FilterConfig = serde_json::from_str(&demo::filter_config()?)?;
    let grant = |scopes: &[&str]| -> Result<Entitlement> {
        Ok(serde_json::from_value(
            json!({"scopes": scopes, "namespaces": ["shop-*"]}),
        )?)
    };
    let key = |name: String, token: &str, scope: &[&str]| -> Result<ApiKeyConfig> {
        Ok(ApiKeyConfig {
            key_id: format!("key_{name}"),
            name,
            owner: None,
            lookup_hash: layergate_filter::config::LookupHash::of(token),
            expires_at: None,
            entitlements: [("vectorstore.primary".to_owned(), grant(scope)?)]
                .into_iter()
                .collect(),
            previous: None,
            limits: None,
            quota_spent_until: None,
        })
    };
    for i in 0..keys {
        config
            .api_keys
            .push(key(format!("bench-{i}"), &bench_token(i), &["read"])?);
    }
    config
        .api_keys
        // Read too: its copy_from body reads the source namespace (a write-only key is 403).
        .push(key(
            "bench-writer".into(),
            WRITER_TOKEN,
            &["read", "write"],
        )?);
    for i in 0..namespaces {
        config
            .namespaces
            .insert(format!("ns-{i}"), "primary".into());
    }
    Ok(serde_json::to_string(&config)?)
}

const WRITER_TOKEN: &str = "hvl_benchWriter0123456789abcdefABCD";

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A 1 MiB JSON write body; `copy_from` makes it one a restricted key's body inspection reads.
fn write_body(dir: &Path, copy_from: bool) -> Result<PathBuf> {
    let text = "x".repeat(1 << 20);
    let body = if copy_from {
        json!({"copy_from_namespace": "shop-b", "upsert_rows": [{"id": 1, "text": text}]})
    } else {
        json!({"upsert_rows": [{"id": 1, "text": text}]})
    };
    let path = dir.join(if copy_from {
        "copy-from.json"
    } else {
        "write.json"
    });
    std::fs::write(&path, body.to_string())?;
    Ok(path)
}

fn variants(
    upstream: SocketAddr,
    authz: SocketAddr,
    authz_pid: u32,
    scratch: &Path,
) -> Result<Vec<Variant>> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let wasm = layergate_tests::paths::wasm_path()?;
    let gateway = |config: String| {
        demo::gateway(
            any,
            any,
            upstream,
            upstream,
            layergate_tests::envoy::Filter {
                build: render::FilterBuild::Wasm,
                path: wasm.clone(),
            },
            config,
        )
    };
    let gw = gateway(demo::filter_config()?);
    // The demo's minted key `shop-reader` with a rate limit no run reaches (issue 25: what the
    // check costs), beside the same key without one.
    let limited_config = {
        let mut c: Value = serde_json::from_str(&demo::filter_config()?)?;
        let key = c["apiKeys"]
            .as_array_mut()
            .and_then(|keys| keys.iter_mut().find(|k| k["name"] == "shop-reader"))
            .context("the demo fixture's shop-reader key")?;
        key["limits"] = json!({"requestsPerSecond": 1_000_000, "burst": 1_000_000});
        c.to_string()
    };
    let gw_limited = gateway(limited_config.clone());
    let native_limited = demo::gateway(
        any,
        any,
        upstream,
        upstream,
        layergate_tests::envoy::Filter {
            build: render::FilterBuild::Native,
            path: layergate_tests::paths::native_path()?,
        },
        limited_config,
    );
    // The same gateway with the filter as an Envoy dynamic module (`make bench` builds it in
    // release and names it with LAYERGATE_NATIVE).
    let native = demo::gateway(
        any,
        any,
        upstream,
        upstream,
        layergate_tests::envoy::Filter {
            build: render::FilterBuild::Native,
            path: layergate_tests::paths::native_path()?,
        },
        demo::filter_config()?,
    );
    let plain = render::listener(&render::Listener {
        listen: any,
        build: render::FilterBuild::Wasm,
        filter_path: wasm.to_string_lossy().into_owned(),
        filter_config: None,
        vm_env: Vec::new(),
        buffer_limit_bytes: render::DEFAULT_BUFFER_LIMIT_BYTES,
        access_log_path: None,
    });
    let bootstrap = |listener: Value| render::bootstrap_with_listener(any, listener, &gw.clusters);
    // The same chain as layergate's (wasm, buffer, router), with a filter that does nothing,
    // or only the host calls its configuration names.
    let noop_wasm = layergate_tests::paths::repo_root()
        .join("target/wasm32-wasip1/wasm/layergate_noop_filter.wasm");
    anyhow::ensure!(
        noop_wasm.is_file(),
        "{} is missing: run `make bench`",
        noop_wasm.display()
    );
    // A wasm module in layergate's chain (wasm, buffer, router) with the given configuration.
    let in_chain = |wasm: &Path, config: &str| {
        bootstrap(render::listener(&render::Listener {
            listen: any,
            build: render::FilterBuild::Wasm,
            filter_path: wasm.to_string_lossy().into_owned(),
            filter_config: Some(config.to_owned()),
            vm_env: Vec::new(),
            buffer_limit_bytes: render::DEFAULT_BUFFER_LIMIT_BYTES,
            access_log_path: None,
        }))
    };
    let probe = |calls: &str| in_chain(&noop_wasm, calls);
    // The SDK-free probe (`tests/probe-filter`) in the same chain: the price of each part of
    // layergate's per-request work, against the same module doing nothing.
    let probe_wasm = layergate_tests::paths::probe_wasm_path()?;
    let sdk_free = |steps: &str| in_chain(&probe_wasm, steps);
    let lua = json!({"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": LUA_KEY_CHECK}}});
    let ext_authz = json!({"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        // The routing header arrives with the authorizer's answer: pick the route again.
        "clear_route_cache": true,
        "http_service": {
            "server_uri": {"uri": format!("http://{authz}"), "cluster": "ext_authz", "timeout": "1s"},
            "authorization_request": {"allowed_headers": {"patterns": [{"exact": "authorization"}]}},
            "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": "authorization"}, {"exact": "x-layergate-cluster"}]}}}}});
    let read = headers(&[("authorization", "Bearer demo-read-token")]);
    let minted = headers(&[(
        "authorization",
        &format!("Bearer {}", layergate_tests::tour::SHOP_READER_TOKEN),
    )]);
    let read_routed = headers(&[
        ("authorization", "Bearer demo-read-token"),
        ("x-layergate-cluster", "store_primary"),
    ]);
    let v = |table, name: &str, yaml: String, path, headers: &Vec<(String, String)>| Variant {
        table,
        name: name.to_owned(),
        yaml,
        path,
        headers: headers.clone(),
        body: None,
        sidecar: None,
        repeat: 0,
    };
    let mut all = vec![
        v(
            Table::Peers,
            "bare Envoy (router only)",
            bootstrap(with_filters(plain.clone(), vec![router()])),
            READ_PATH,
            &read_routed,
        ),
        v(
            Table::Peers,
            "no-op wasm filter (the wasm floor)",
            probe(""),
            READ_PATH,
            &read_routed,
        ),
        v(
            Table::Peers,
            "layergate (demo fixture)",
            gw.render(),
            READ_PATH,
            &read,
        ),
        v(
            Table::Peers,
            "layergate native (dynamic module, demo fixture)",
            native.render(),
            READ_PATH,
            &read,
        ),
        v(
            Table::Peers,
            "layergate, minted key",
            gw.render(),
            READ_PATH,
            &minted,
        ),
        v(
            Table::Peers,
            "layergate, minted key with a rate limit (not reached)",
            gw_limited.render(),
            READ_PATH,
            &minted,
        ),
        v(
            Table::Peers,
            "layergate native, minted key",
            native.render(),
            READ_PATH,
            &minted,
        ),
        v(
            Table::Peers,
            "layergate native, minted key with a rate limit (not reached)",
            native_limited.render(),
            READ_PATH,
            &minted,
        ),
        v(
            Table::Peers,
            "native api_key_auth + rbac + credential_injector",
            with_secret(&bootstrap(with_filters(plain.clone(), native_filters())))?,
            READ_PATH,
            &read_routed,
        ),
        v(
            Table::Peers,
            "Lua key check + credential swap",
            bootstrap(with_filters(plain.clone(), vec![lua, router()])),
            READ_PATH,
            &read,
        ),
        Variant {
            sidecar: Some(authz_pid),
            ..v(
                Table::Peers,
                "ext_authz HTTP service (Rust, loopback)",
                with_cluster(
                    &bootstrap(with_filters(plain.clone(), vec![ext_authz, router()])),
                    "ext_authz",
                    authz,
                )?,
                READ_PATH,
                &read,
            )
        },
        v(
            Table::HostCalls,
            "read the header map",
            probe("read"),
            READ_PATH,
            &read_routed,
        ),
        v(
            Table::HostCalls,
            "read + 2 header writes",
            probe("read,write,write"),
            READ_PATH,
            &read_routed,
        ),
        v(
            Table::HostCalls,
            "read + 2 header writes + set_property",
            probe("read,write,write,property"),
            READ_PATH,
            &read_routed,
        ),
    ];
    // One call costs a microsecond or two, below this machine's run-to-run noise: the probes
    // make it 16 times, and the price of one is (probe − "enter") ÷ 16. A single write beside
    // 16 separates the write from the route re-pick it causes (once per request).
    for (name, steps, repeat) in [
        (PROBE_ENTER, "", 1),
        (
            "probe: 16 × read the header map (get_header_map_pairs)",
            "map*16",
            16,
        ),
        (
            "probe: 16 × read 1 header (get_header_map_value)",
            "get:authorization*16",
            16,
        ),
        (
            "probe: 1 × header write (replace authorization)",
            "set:authorization",
            1,
        ),
        (
            "probe: 16 × header write (replace authorization)",
            "set:authorization*16",
            16,
        ),
        ("probe: 16 × set_property", "property*16", 16),
        (
            "probe: 16 × SHA-256 of a token (in the VM)",
            "sha256*16",
            16,
        ),
        (
            "probe: layergate's calls (map read, 2 writes, set_property)",
            "map,set:authorization,set:x-probe-a,property",
            1,
        ),
    ] {
        all.push(Variant {
            repeat,
            ..v(
                Table::Probes,
                name,
                sdk_free(steps),
                READ_PATH,
                &read_routed,
            )
        });
    }
    for (keys, namespaces) in [(10, 10), (10_000, 10), (100_000, 10), (10, 10_000)] {
        let minted = headers(&[(
            "authorization",
            &format!("Bearer {}", bench_token(keys / 2)),
        )]);
        let name =
            format!("layergate, {keys} minted keys, {namespaces} Index namespaces (minted key)");
        all.push(v(
            Table::Scale,
            &name,
            gateway(scaled_config(keys, namespaces)?).render(),
            READ_PATH,
            &minted,
        ));
    }
    let indexed = "/v1/namespaces/ns-5000/metadata";
    all.push(v(
        Table::Scale,
        "layergate, 10 keys, 10,000 Index namespaces (inbound key, ns-5000)",
        gateway(scaled_config(10, 10_000)?).render(),
        indexed,
        &read,
    ));
    let rw = headers(&[("authorization", "Bearer demo-rw-token")]);
    let rw_routed = headers(&[
        ("authorization", "Bearer demo-rw-token"),
        ("x-layergate-cluster", "store_primary"),
    ]);
    let writer = headers(&[("authorization", &format!("Bearer {WRITER_TOKEN}"))]);
    let (plain_body, copy_body) = (write_body(scratch, false)?, write_body(scratch, true)?);
    let with_body = |mut v: Variant, body: &PathBuf| {
        v.body = Some(body.clone());
        v
    };
    all.push(with_body(
        v(
            Table::Bodies,
            "bare Envoy: 1 MiB write",
            bootstrap(with_filters(plain, vec![router()])),
            WRITE_PATH,
            &rw_routed,
        ),
        &plain_body,
    ));
    all.push(with_body(
        v(
            Table::Bodies,
            "no-op wasm: 1 MiB write",
            probe(""),
            WRITE_PATH,
            &rw_routed,
        ),
        &plain_body,
    ));
    // With one store a copy's source is always the destination's: unrestricted writes stream.
    // With several, the writes that may copy are read for every caller (issue 21).
    let one_store = {
        let mut c: serde_json::Value = serde_json::from_str(&demo::filter_config()?)?;
        if let Some(stores) = c["stores"].as_array_mut() {
            stores.truncate(1);
        }
        c["namespaces"] = json!({});
        c.to_string()
    };
    all.push(with_body(
        v(
            Table::Bodies,
            "layergate: 1 MiB write, unrestricted key, one store (streamed)",
            gateway(one_store).render(),
            WRITE_PATH,
            &rw,
        ),
        &plain_body,
    ));
    all.push(with_body(
        v(
            Table::Bodies,
            "layergate: 1 MiB write, unrestricted key, two stores (read for copy sources)",
            gw.render(),
            WRITE_PATH,
            &rw,
        ),
        &plain_body,
    ));
    all.push(with_body(
        v(
            Table::Bodies,
            "layergate: 1 MiB copy_from write, restricted key (inspected)",
            gateway(scaled_config(10, 10)?).render(),
            WRITE_PATH,
            &writer,
        ),
        &copy_body,
    ));
    Ok(all)
}

fn run_once(v: &Variant, duration: Duration) -> Result<(LoadStats, Duration, Duration, u64)> {
    let envoy = Envoy::start_yaml(&v.yaml, &layergate_tests::paths::repo_root())
        .with_context(|| format!("starting {}", v.name))?;
    let url = format!("http://{}{}", envoy.addr, v.path);
    let hs: Vec<(&str, &str)> = v
        .headers
        .iter()
        .map(|(k, x)| (k.as_str(), x.as_str()))
        .collect();
    let body = v.body.as_deref();
    load(&url, &hs, body, CONNECTIONS, Duration::from_secs(1))?; // warm-up
    let sidecar = |pid: Option<u32>| pid.map_or(Ok(Duration::ZERO), cpu_time);
    let (before, side_before) = (cpu_time(envoy.pid())?, sidecar(v.sidecar)?);
    let stats = load(&url, &hs, body, CONNECTIONS, duration)?;
    let cpu = cpu_time(envoy.pid())? - before;
    let side = sidecar(v.sidecar)? - side_before;
    let rss = rss_bytes(envoy.pid())?;
    Ok((stats, cpu, side, rss))
}

fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    format!("{cpu}, {cores} cores")
}

fn env_number<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The ext_authz service in its own process (this binary, `authz`), so its CPU is measured
/// apart from the upstream's and the load generator's.
fn start_authz() -> Result<(Child, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("authz")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().context("authz stdout")?),
        &mut line,
    )?;
    Ok((child, line.trim().parse().context("authz address")?))
}

/// Time from writing a new listener (one more minted key, at `keys` keys) to that key's first
/// success, through Envoy's file-based LDS as the operator publishes it.
fn reload_time(upstream: SocketAddr, keys: usize) -> Result<Duration> {
    let dir = tempdir("reload")?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let wasm = layergate_tests::paths::wasm_path()?;
    let gw = demo::gateway(
        listen,
        listen,
        upstream,
        upstream,
        layergate_tests::envoy::Filter {
            build: render::FilterBuild::Wasm,
            path: wasm.clone(),
        },
        String::new(),
    );
    let lds = |config: String| {
        render::lds(&render::Listener {
            listen,
            build: render::FilterBuild::Wasm,
            filter_path: wasm.to_string_lossy().into_owned(),
            filter_config: Some(config),
            vm_env: Vec::new(),
            buffer_limit_bytes: render::DEFAULT_BUFFER_LIMIT_BYTES,
            access_log_path: None,
        })
    };
    let clusters: Vec<render::Cluster> = gw
        .clusters
        .iter()
        .map(|c| render::Cluster {
            name: c.name.clone(),
            address: c.address.clone(),
            port: c.port,
            hostname: c.hostname.clone(),
            tls: false,
            trusted_ca: None,
            label: c.label.clone(),
        })
        .collect();
    std::fs::write(dir.join("cds.json"), render::cds(&clusters))?;
    std::fs::write(dir.join("lds.json"), lds(scaled_config(keys, 10)?))?;
    let admin = SocketAddr::from(([127, 0, 0, 1], 0));
    let bootstrap = render::dynamic_bootstrap(admin, &dir);
    let envoy = Envoy::start_yaml(&bootstrap, &layergate_tests::paths::repo_root())?;
    let new_token = bench_token(keys);
    let status = |token: &str| {
        Request::new("GET", READ_PATH)
            .bearer(token)
            .send(envoy.addr)
            .map(|r| r.status)
            .unwrap_or(0)
    };
    anyhow::ensure!(
        status(&bench_token(0)) == 200 && status(&new_token) == 401,
        "reload setup"
    );
    let next = scaled_config(keys + 1, 10)?;
    let text = lds(next);
    let tmp = dir.join("lds.tmp");
    std::fs::write(&tmp, text)?;
    let started = Instant::now();
    std::fs::rename(&tmp, dir.join("lds.json"))?;
    while status(&new_token) != 200 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the new key never worked"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = started.elapsed();
    if std::env::var_os("RELOAD_LOG").is_some() {
        std::thread::sleep(Duration::from_millis(500));
        eprintln!("{}", envoy.log());
    }
    Ok(took)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn tempdir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("layergate-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Envoy's RSS after start and a few requests, at `workers` workers and `keys` keys.
fn rss_with(upstream: SocketAddr, keys: usize, workers: usize) -> Result<u64> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let gw = demo::gateway(
        any,
        any,
        upstream,
        upstream,
        layergate_tests::envoy::Filter::wasm()?,
        scaled_config(keys, 10)?,
    );
    let envoy =
        Envoy::start_yaml_workers(&gw.render(), &layergate_tests::paths::repo_root(), workers)?;
    for i in 0..(4 * workers) {
        let r = Request::new("GET", READ_PATH)
            .bearer(&bench_token(i))
            .send(envoy.addr)?;
        anyhow::ensure!(r.status == 200, "status {}", r.status);
    }
    std::thread::sleep(Duration::from_millis(300));
    rss_bytes(envoy.pid())
}

/// The filter's linear memory after `proxy_on_configure` with `config`, and after a second
/// one (in wasmtime: the same module, a deterministic figure).
fn vm_linear_memory(config: &str) -> Result<(usize, usize)> {
    use layergate_tests::wasm_host::{FilterHost, FilterModule};
    let module = FilterModule::compile(&layergate_tests::paths::wasm_path()?)?;
    let mut host = FilterHost::start(&module, &[])?;
    anyhow::ensure!(host.configure(config)?, "configure refused");
    let once = host.memory_bytes()?;
    anyhow::ensure!(host.configure(config)?, "configure refused");
    Ok((once, host.memory_bytes()?))
}

/// The operator's pass, timed: validate + render for `keys` ApiKeys and `indexes` Indexes.
fn operator_render_time(keys: usize, indexes: usize) -> Result<Duration> {
    use layergate_operator::{manifests, output, validate};
    let mut yaml = String::from("apiVersion: v1\nkind: Secret\nmetadata: {name: layer, namespace: layer}\nstringData: {key: tpuf-key}\n---\napiVersion: hevlayer.com/v1alpha1\nkind: VectorStore\nmetadata: {name: primary, namespace: layer}\nspec: {kind: turbopuffer, default: true, endpoint: {url: \"https://aws-us-east-1.turbopuffer.com\"}, credential: {secretRef: {name: layer, key: key}}}\n");
    let mut tokens = String::from("---\napiVersion: v1\nkind: Secret\nmetadata: {name: tokens, namespace: layer, labels: {hevlayer.com/apikey-token: \"true\"}}\nstringData:\n");
    for i in 0..keys {
        let _ = write!(yaml, "---\napiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {{name: k{i}, namespace: layer}}\nspec: {{entitlements: {{vectorstore.primary: {{scopes: [read], namespaces: [\"team-{i}-*\"]}}}}, tokenSecretRef: {{name: tokens, key: t{i}}}}}\n");
        let _ = writeln!(tokens, "  t{i}: {}", bench_token(i));
    }
    for i in 0..indexes {
        let _ = write!(yaml, "---\napiVersion: hevlayer.com/v1\nkind: Index\nmetadata: {{name: i{i}, namespace: layer}}\nspec: {{backend: {{storeRef: primary, namespace: ns-{i}}}}}\n");
    }
    yaml.push_str(&tokens);
    let mut objects = manifests::Objects::default();
    objects.add_yaml("bench", &yaml);
    anyhow::ensure!(objects.problems.is_empty(), "{:?}", objects.problems);
    let settings = output::Settings {
        listen: "127.0.0.1:8080".parse()?,
        admin: "127.0.0.1:9901".parse()?,
        filter: Default::default(),
        wasm_path: "x.wasm".into(),
        control: None,
        key_service: None,
        allow_endpoints: Default::default(),
        key_max_staleness_seconds: layergate_operator::output::DEFAULT_MAX_STALENESS_SECONDS,
        gateway_replicas: 1,
        limits: Default::default(),
        access_log_path: None,
    };
    let started = Instant::now();
    let v = validate::validate(&objects, "layer", 1_800_000_000);
    let rendering = layergate_operator::render::render(
        &v,
        &settings,
        &layergate_operator::render::Target::Envoy,
        None,
    )?;
    let took = started.elapsed();
    anyhow::ensure!(
        rendering.config.api_keys.len() == keys && rendering.config.namespaces.len() == indexes,
        "render"
    );
    Ok(took)
}

/// `layergate-bench probes`: the per-call prices with less noise than the tables. Bare Envoy,
/// the SDK no-op floor, layergate and every probe run side by side (all started once, so rounds can be short and many); each
/// round loads each for `BENCH_SECONDS` (default 1), and a price is the median over rounds of
/// a difference within one round — against bare Envoy, and for one call, against the probe
/// that only enters the VM, ÷ its calls. Other load on a shared machine comes in bursts; a
/// median of paired differences leaves most of them out, where totals and best rounds do not.
fn probes() -> Result<()> {
    let seconds: u64 = env_number("BENCH_SECONDS", 1);
    let rounds: usize = env_number("BENCH_ROUNDS", 15);
    let upstream = start_upstream()?;
    let scratch = tempdir("probes")?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut all = variants(upstream, any, 0, &scratch)?;
    // `LAYERGATE_BASELINE_WASM`: other builds of the filter (comma-separated paths) beside
    // layergate in the same paired rounds (before/after a change, on the same loaded machine).
    // They get the routing header with the request, as bare Envoy does, so a build that writes
    // no headers still reaches the upstream.
    if let Ok(baselines) = std::env::var("LAYERGATE_BASELINE_WASM") {
        let wasm = layergate_tests::paths::wasm_path()?;
        for (i, baseline) in baselines.split(',').enumerate() {
            let mut v = all[2].clone();
            v.name = format!("layergate, baseline build ({baseline})");
            v.yaml = v.yaml.replace(&*wasm.to_string_lossy(), baseline);
            v.headers = all[0].headers.clone();
            anyhow::ensure!(
                v.yaml != all[2].yaml,
                "the baseline build's path did not go in"
            );
            all.insert(3 + i, v);
        }
    }
    // `BENCH_BEARER`: the token layergate and its baselines are called with (default the
    // inbound `demo-read-token`; e.g. the demo's minted `shop-reader` key, whose requests the
    // filter counts for usage).
    if let Ok(bearer) = std::env::var("BENCH_BEARER") {
        for v in all.iter_mut().filter(|v| v.name.starts_with("layergate")) {
            for (k, x) in v.headers.iter_mut() {
                if k.as_str() == "authorization" {
                    *x = format!("Bearer {bearer}");
                }
            }
        }
    }
    // `BENCH_ONLY` narrows the probes (bare Envoy, the floor, layergate, a baseline build and
    // the enter-only probe always run).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let chosen: Vec<&Variant> = all
        .iter()
        .enumerate()
        // Bare Envoy, the SDK no-op floor, layergate, then the probes.
        .filter(|(i, v)| {
            *i < 3
                || v.name.starts_with("layergate, baseline build")
                || v.table == Table::Probes
                    && (only.is_empty()
                        || v.name == PROBE_ENTER
                        || only.split('|').any(|o| v.name.contains(o)))
        })
        .map(|(_, v)| v)
        .collect();
    let enter = chosen
        .iter()
        .position(|v| v.name == PROBE_ENTER)
        .context("the enter-only probe")?;
    let envoys = chosen
        .iter()
        .map(|v| {
            Envoy::start_yaml(&v.yaml, &layergate_tests::paths::repo_root())
                .with_context(|| format!("starting {}", v.name))
        })
        .collect::<Result<Vec<_>>>()?;
    let run = |v: &Variant, envoy: &Envoy, length: Duration| -> Result<f64> {
        let url = format!("http://{}{}", envoy.addr, v.path);
        let hs: Vec<(&str, &str)> = v
            .headers
            .iter()
            .map(|(k, x)| (k.as_str(), x.as_str()))
            .collect();
        let before = cpu_time(envoy.pid())?;
        let stats = load(&url, &hs, None, CONNECTIONS, length)?;
        anyhow::ensure!(stats.errors == 0, "{}: {} non-2xx", v.name, stats.errors);
        Ok((cpu_time(envoy.pid())? - before).as_secs_f64() * 1e6 / stats.requests.max(1) as f64)
    };
    for (v, envoy) in chosen.iter().zip(&envoys) {
        run(v, envoy, Duration::from_secs(1))?; // warm-up
    }
    // per_request[variant][round]
    let mut per_request = vec![Vec::with_capacity(rounds); chosen.len()];
    for round in 0..rounds {
        for (i, (v, envoy)) in chosen.iter().zip(&envoys).enumerate() {
            per_request[i].push(run(v, envoy, Duration::from_secs(seconds))?);
        }
        eprintln!(
            "round {}: bare {:.1} µs/req, enter {:.1}",
            round + 1,
            per_request[0][round],
            per_request[enter][round]
        );
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let diff = |a: usize, b: usize| -> Vec<f64> {
        per_request[a]
            .iter()
            .zip(&per_request[b])
            .map(|(x, y)| x - y)
            .collect()
    };
    let bare = median(per_request[0].clone());
    let mut out = format!(
        "Paired probes: Envoy {} side by side, one worker each{}; {rounds} rounds, each loading every variant for {seconds} s in turn (wrk, one thread, {CONNECTIONS} connections); {}. Medians over rounds of differences within a round; bare Envoy's median is {bare:.2} µs/req.\n\n| variant | µs/req − bare | × bare | µs per call (− enter-only, ÷ calls) |\n|---|---|---|---|\n",
        chosen.len(),
        std::env::var("LAYERGATE_ENVOY_CPU").map(|c| format!(", all pinned to CPU {c}")).unwrap_or_default(),
        machine()
    );
    for (i, v) in chosen.iter().enumerate().skip(1) {
        let over_bare = median(diff(i, 0));
        let per_call = if i == enter {
            "—".to_owned()
        } else {
            let calls = f64::from(v.repeat.max(1));
            format!(
                "{:+.2}",
                median(diff(i, enter).into_iter().map(|d| d / calls).collect())
            )
        };
        let _ = writeln!(
            out,
            "| {} | {over_bare:+.2} | {:.3} | {per_call} |",
            v.name,
            (bare + over_bare) / bare
        );
    }
    print!("{out}");
    Ok(())
}

fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some("reload") {
        let upstream = start_upstream()?;
        let keys = std::env::args()
            .nth(2)
            .and_then(|k| k.parse().ok())
            .unwrap_or(100_000);
        println!("reload at {keys} keys: {:?}", reload_time(upstream, keys)?);
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("probes") {
        return probes();
    }
    if std::env::args().nth(1).as_deref() == Some("authz") {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        println!("{}", listener.local_addr()?);
        serve_http(listener, authz_response);
        return Ok(());
    }
    let seconds: u64 = env_number("BENCH_SECONDS", 4);
    let rounds: usize = env_number("BENCH_ROUNDS", 3);
    let upstream = start_upstream()?;
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("churn") => {
            print!("{}", churn::run(upstream)?);
            return Ok(());
        }
        Ok("memory") => {
            print!("{}", memory::run(upstream)?);
            return Ok(());
        }
        _ => {}
    }
    let (mut authz, authz_addr) = start_authz()?;
    let scratch = tempdir("bodies")?;
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let variants: Vec<Variant> = variants(upstream, authz_addr, authz.id(), &scratch)?
        .into_iter()
        .enumerate()
        .filter(|(i, v)| *i < 2 || only.is_empty() || only.split('|').any(|o| v.name.contains(o)))
        .map(|(_, v)| v)
        .collect();
    if let Ok(dir) = std::env::var("BENCH_DUMP") {
        for (i, v) in variants.iter().enumerate() {
            std::fs::write(Path::new(&dir).join(format!("variant-{i}.yaml")), &v.yaml)?;
        }
    }
    let mut totals = vec![Totals::default(); variants.len()];
    for round in 0..rounds {
        for (v, t) in variants.iter().zip(totals.iter_mut()) {
            let (stats, cpu, side, rss) = run_once(v, Duration::from_secs(seconds))?;
            eprintln!(
                "round {}: {:<70} {:>8.0} req/s {:>7.2} µs CPU/req",
                round + 1,
                v.name,
                stats.throughput(),
                (cpu + side).as_secs_f64() * 1e6 / stats.requests.max(1) as f64
            );
            t.requests += stats.requests;
            t.errors += stats.errors;
            t.secs += stats.elapsed.as_secs_f64();
            t.cpu += cpu;
            t.sidecar_cpu += side;
            t.p50.push(stats.p50);
            t.p99.push(stats.p99);
            t.rss = t.rss.max(rss);
            let per_request = (cpu + side).as_secs_f64() * 1e6 / stats.requests.max(1) as f64;
            t.best = if round == 0 {
                per_request
            } else {
                t.best.min(per_request)
            };
        }
    }
    let _ = authz.kill();

    let envoy_version = Command::new(layergate_tests::paths::envoy_bin()?)
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
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu_us =
        |t: &Totals| (t.cpu + t.sidecar_cpu).as_secs_f64() * 1e6 / t.requests.max(1) as f64;
    let (bare, floor) = (cpu_us(&totals[0]), cpu_us(&totals[1]));
    let bare_best = totals[0].best;
    let mut out = format!(
        "Envoy {envoy_version}, one worker (`--concurrency 1`{}); wrk, one thread, {CONNECTIONS} keep-alive connections, closed loop; {rounds} interleaved rounds of {seconds} s after a 1 s warm-up per run; {}; {date}. \
CPU µs/req is Envoy's user+system time over the run ÷ requests (for ext_authz, plus the authorizer's); × and − are against bare Envoy and the no-op wasm filter of this run; the best round is each variant's lowest CPU µs/req over the rounds (other load on a shared machine only adds), compared with bare Envoy's lowest.\n",
        std::env::var("LAYERGATE_ENVOY_CPU").map(|c| format!(", pinned to CPU {c}")).unwrap_or_default(),
        machine()
    );
    for (table, title) in TABLES {
        if !variants.iter().any(|v| v.table == table) {
            continue;
        }
        let _ = write!(out, "\n### {title}\n\n| variant | req/s | p50 | p99 | CPU µs/req | × bare | − wasm floor µs | best round µs/req | best × bare's best | Envoy RSS MiB | non-2xx |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (v, t) in variants
            .iter()
            .zip(&mut totals)
            .filter(|(v, _)| v.table == table)
        {
            let median = |v: &mut Vec<Duration>| {
                v.sort_unstable();
                v.get(v.len() / 2).copied().unwrap_or_default()
            };
            let (p50, p99) = (median(&mut t.p50), median(&mut t.p99));
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} µs | {:.0} µs | {:.2} | {:.2} | {:+.2} | {:.2} | {:.2} | {:.1} | {} |",
                v.name,
                t.requests as f64 / t.secs.max(1e-9),
                p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6,
                cpu_us(t),
                cpu_us(t) / bare,
                cpu_us(t) - floor,
                t.best,
                t.best / bare_best,
                t.rss as f64 / (1 << 20) as f64,
                t.errors
            );
        }
    }
    // Each probe's call, priced from the best rounds against the probe that only enters.
    let enter = variants
        .iter()
        .zip(&totals)
        .find(|(v, _)| v.name == PROBE_ENTER)
        .map(|(_, t)| t.best);
    if let Some(enter) = enter {
        let _ = write!(
            out,
            "\nPer call (best rounds): (probe − \"enter the VM and return\") ÷ calls; the enter-only probe is {:.2}× bare's best, {:+.2} µs.\n\n| probe | µs per call |\n|---|---|\n",
            enter / bare_best,
            enter - bare_best
        );
        for (v, t) in variants.iter().zip(&totals).filter(|(v, _)| v.repeat > 0) {
            if v.name != PROBE_ENTER {
                let _ = writeln!(
                    out,
                    "| {} | {:+.2} |",
                    v.name,
                    (t.best - enter) / f64::from(v.repeat)
                );
            }
        }
    }
    if !only.is_empty() {
        print!("{out}");
        return Ok(()); // A partial run (BENCH_ONLY): no one-off measurements, no results file.
    }
    eprintln!("one-off measurements…");
    let reload = reload_time(upstream, 100_000)?;
    let (one_10, two_10) = (rss_with(upstream, 10, 1)?, rss_with(upstream, 10, 2)?);
    let (one_100k, two_100k) = (
        rss_with(upstream, 100_000, 1)?,
        rss_with(upstream, 100_000, 2)?,
    );
    let per_copy = (two_100k as i64 - one_100k as i64) - (two_10 as i64 - one_10 as i64);
    let config_100k = scaled_config(100_000, 10)?;
    let started = Instant::now();
    let policy = layergate_filter::policy::Policy::from_json(config_100k.as_bytes(), |_| None)?;
    let configure = started.elapsed();
    anyhow::ensure!(policy.keys.len() > 100_000, "compile");
    let render_time = operator_render_time(10_000, 1_000)?;
    let (linear, linear_again) = vm_linear_memory(&config_100k)?;
    let mib = |b: i64| b as f64 / (1 << 20) as f64;
    let _ = write!(
        out,
        "\n### One-off measurements\n\n| what | measured |\n|---|---|\n\
| config reload at 100,000 minted keys: new listener file renamed in → the new key's first 200 | {:.0} ms |\n\
| filter configure (parse + compile) of 100,000 keys, native release build | {:.0} ms |\n\
| VM memory per copy at 100,000 keys: (RSS 2 workers − 1 worker) at 100k keys − the same at 10 keys | {:.1} MiB |\n\
| Envoy RSS at 100,000 keys: 1 worker / 2 workers (10 keys: {:.1} / {:.1}) | {:.1} / {:.1} MiB |\n\
| the filter's linear memory after configuring 100,000 keys (wasmtime; it never shrinks, so this is the high-water mark) / after a second configure in the same VM (a reload: both policies alive during the swap) | {:.1} / {:.1} MiB |\n\
| operator render (validate + filter config + CDS/LDS) of 10,000 ApiKeys + 1,000 Indexes, release build | {:.0} ms |\n",
        reload.as_secs_f64() * 1e3,
        configure.as_secs_f64() * 1e3,
        mib(per_copy),
        mib(one_10 as i64),
        mib(two_10 as i64),
        mib(one_100k as i64),
        mib(two_100k as i64),
        mib(linear as i64),
        mib(linear_again as i64),
        render_time.as_secs_f64() * 1e3,
    );
    eprintln!("key churn…");
    out.push_str(&churn::run(upstream)?);
    eprintln!("memory at 100,000 keys…");
    out.push_str(&memory::run(upstream)?);
    print!("{out}");
    let file = layergate_tests::paths::repo_root().join("tests/bench/results.md");
    std::fs::create_dir_all(file.parent().context("results dir")?)?;
    std::fs::write(&file, format!("# `make bench` results\n\n{out}"))?;
    eprintln!("wrote {}", file.display());
    Ok(())
}
