//! `layergate-operator`: the control plane of layergate. See `--help`.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use layergate_filter::policy::Policy;
use layergate_operator::api;
use layergate_operator::conditions::{reason, READY};
use layergate_operator::crd;
use layergate_operator::endpoint::Allowlist;
use layergate_operator::manifests;
use layergate_operator::output;
use layergate_operator::render;
use layergate_operator::source;
use layergate_operator::validate::{self, Validation};
use std::path::Path;

const USAGE: &str = "usage: layergate-operator COMMAND

  crds                        print the CRD YAML (the same as operator/crds/)
  copy-filter WASM DIR        copy the filter .wasm into DIR (the gateway's initContainer;
                              the image has no shell)
  check -f DIR                validate the manifests in DIR (VectorStores, Indexes, ApiKeys
                              and their Secrets, as YAML files) offline; exit 1 on error
  render -f DIR -o OUT [--namespace NS] [--target envoy|istio]
                              write what the gateway loads: OUT/layergate.json (the filter
                              configuration), OUT/lds.json and OUT/cds.json (Envoy's
                              file-based dynamic config; they hold store credentials, mode
                              0600) and OUT/bootstrap.yaml, which watches them. Environment:
                              LAYERGATE_LISTEN (127.0.0.1:8080), LAYERGATE_ADMIN
                              (127.0.0.1:9901), LAYERGATE_WASM (path of the filter .wasm).
                              --target istio writes OUT/istio.yaml (WasmPlugin, a
                              ServiceEntry and DestinationRule per store, Gateway,
                              VirtualService, EnvoyFilter; no credentials) and
                              OUT/ingressgateway-patch.yaml (the proxy's credential
                              environment). Environment: LAYERGATE_ISTIO_NAMESPACE
                              (layergate-ingress), LAYERGATE_ISTIO_SELECTOR
                              (istio=layergate-ingressgateway: a dedicated gateway),
                              LAYERGATE_ISTIO_GATEWAY_DEPLOYMENT (layergate-ingressgateway),
                              LAYERGATE_ISTIO_PORT (8080, the Gateway port the WasmPlugin
                              and EnvoyFilter are scoped to),
                              LAYERGATE_WASM_URL (oci://ghcr.io/layergate/layergate-filter:0.1.0),
                              LAYERGATE_HOSTS (*, comma-separated; the filter acts only for
                              these), LAYERGATE_CONTROL_UPSTREAM
                              (HOST:PORT of the control API, not routed if unset),
                              LAYERGATE_KEY_SERVICE_UPSTREAM (HOST:PORT of the key
                              service's own listener; unset: the control API's),
                              LAYERGATE_ISTIO_FAIL_STRATEGY (FAIL_RELOAD: a filter panic
                              fails that request and reloads the VM; FAIL_CLOSE only for
                              Istio < 1.27: one panic turns that worker's requests into
                              503s until the pod restarts)
  run --source kube [--namespace NS] [--target envoy|istio]
                              the controller in a cluster: watches the VectorStores, Indexes,
                              ApiKeys (and the Secrets they name) of NS (default: the pod's own
                              namespace, POD_NAMESPACE), mints tokens into Secrets owned by
                              their ApiKey, writes the rendering into the Secret
                              LAYERGATE_OUTPUT_SECRET (layergate-gateway-config) or, with
                              --target istio, server-side applies the Istio resources into
                              LAYERGATE_ISTIO_NAMESPACE (settings as for render; deleting
                              those of removed stores), the credentials into the Secret
                              layergate-istio-credentials there, and their digest into the
                              gateway Deployment's pod template (which rolls it), and statuses
                              (server-side apply), with a Lease (LAYERGATE_LEASE,
                              layergate-operator; identity POD_NAME) so one replica writes.
                              Gateway settings: LAYERGATE_LISTEN (0.0.0.0:8080),
                              LAYERGATE_WASM (/etc/layergate/wasm/layergate_filter.wasm),
                              LAYERGATE_CONTROL_UPSTREAM (HOST:PORT the gateway reaches the
                              control API at; layergate-operator.NS.svc:9902),
                              LAYERGATE_KEY_SERVICE_UPSTREAM (the key service;
                              layergate-operator.NS.svc:9903). Serves the control API on
                              LAYERGATE_CONTROL (0.0.0.0:9902) and, on a listener of its own,
                              LAYERGATE_KEY_SERVICE (0.0.0.0:9903), the key service the
                              gateway syncs minted keys from (GET /v2/keys/sync; gateway
                              credential in the Secret layergate-gateway-credential, created
                              when absent). JSON logs
                              (LAYERGATE_LOG=text for plain lines)
  run --source dir:DIR --out OUT
                              directory mode: render DIR into OUT now and again whenever a
                              manifest changes (Envoy hot-reloads OUT); mint tokens for new
                              ApiKeys into Secret files in DIR; log status. A change that
                              cannot be rendered never replaces the last good output.
                              Serves the control API on LAYERGATE_CONTROL (127.0.0.1:9902):
                              /v2/keys, /v2/vectorstores, /healthz, /readyz, /metrics; and
                              the key service on LAYERGATE_KEY_SERVICE (127.0.0.1:9903):
                              /v2/keys/sync (gateway credential in OUT/gateway-credential,
                              0600, created once)
  --allow-endpoint PATTERN    (check, render, run; repeatable) also send store credentials to
                              endpoints matching SCHEME://HOST[:PORT] (HOST may be *.domain).
                              Admitted without it: https://*.turbopuffer.com and loopback IP
                              literals (127.0.0.0/8, ::1) or localhost; a VectorStore elsewhere
                              is InvalidEndpoint: neither probed nor rendered
  LAYERGATE_UPSTREAM_*        (render, both targets, and run) each store's limits, in the
                              clusters/DestinationRules and routes: _CONNECT_TIMEOUT_MS (5000;
                              100-60000), _REQUEST_TIMEOUT_MS (60000; 100-3600000: the whole
                              response, beyond it 504), _MAX_CONNECTIONS,
                              _MAX_PENDING_REQUESTS, _MAX_REQUESTS (circuit breakers, 1024
                              each; 1-100000, beyond them 503)
  check-filter-config FILE    parse and compile a filter configuration exactly as the wasm
                              filter's on_configure does; exit 1 with the reason if the
                              filter would refuse it";

fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `[--namespace NS] [--target envoy|istio]`, in any order, after `run --source kube` or
/// `render -f DIR -o OUT` (`command` names which, for the error).
fn namespace_and_target<'a>(command: &str, rest: &[&'a str]) -> Result<(Option<&'a str>, &'a str)> {
    let (mut namespace, mut target) = (None, "envoy");
    let mut flags = rest.iter();
    while let Some(flag) = flags.next() {
        match (*flag, flags.next()) {
            ("--namespace", Some(ns)) => namespace = Some(*ns),
            ("--target", Some(t)) => target = t,
            (other, _) => bail!("unknown {command} option {other:?}\n{USAGE}"),
        }
    }
    if !["envoy", "istio"].contains(&target) {
        bail!("--target must be envoy or istio, not {target:?}");
    }
    Ok((namespace, target))
}

/// Takes every `--allow-endpoint PATTERN` out of the arguments (run, render and check accept
/// it anywhere after the command) and returns the allowlist they make.
fn allow_endpoints(args: &mut Vec<String>) -> Result<Allowlist> {
    let mut patterns = Vec::new();
    while let Some(i) = args.iter().position(|a| a == "--allow-endpoint") {
        if i + 1 >= args.len() {
            bail!("--allow-endpoint needs a PATTERN (like https://*.example.com)");
        }
        patterns.push(args.remove(i + 1));
        args.remove(i);
    }
    Allowlist::with(&patterns).map_err(anyhow::Error::msg)
}

fn run(mut args: Vec<String>) -> Result<()> {
    let allow = allow_endpoints(&mut args)?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["crds"] => {
            print!("{}", crd::crds_yaml()?);
            Ok(())
        }
        ["check-filter-config", file] => check_filter_config(file),
        ["copy-filter", from, to_dir] => copy_filter(Path::new(from), Path::new(to_dir)),
        ["check", "-f", dir] => check(Path::new(dir), &allow),
        ["run", "--source", source, "--out", out] => match source.strip_prefix("dir:") {
            Some(dir) => {
                init_logs(false)?;
                run_dir(Path::new(dir), Path::new(out), allow)
            }
            None => bail!("--source must be dir:PATH (with --out) or kube (without)"),
        },
        ["run", "--source", "kube", rest @ ..] => {
            let (namespace, target) = namespace_and_target("run", rest)?;
            run_kube(namespace, target == "istio", allow)
        }
        ["render", "-f", dir, "-o", out, rest @ ..] => {
            let (namespace, target) = namespace_and_target("render", rest)?;
            render(Path::new(dir), Path::new(out), namespace, target, allow)
        }
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

/// Copies the filter `.wasm` into a directory (the gateway's initContainer: the operator image
/// has no shell and no `cp`). Written under a temporary name and renamed, so Envoy never sees a
/// partial file.
fn copy_filter(from: &Path, to_dir: &Path) -> Result<()> {
    let name = from.file_name().context("the filter path names no file")?;
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    if !bytes.starts_with(b"\0asm") {
        bail!("{} is not a wasm module", from.display());
    }
    let tmp = to_dir.join(".layergate_filter.wasm.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    let to = to_dir.join(name);
    std::fs::rename(&tmp, &to).with_context(|| format!("renaming to {}", to.display()))?;
    println!("{}: {} bytes", to.display(), bytes.len());
    Ok(())
}

fn check_filter_config(file: &str) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    // Credentials from the environment are resolved by the VM at run time; here an absent
    // variable only means that store would answer 503, which is reported.
    let policy = Policy::from_json(&bytes, |var| std::env::var(var).ok())?;
    println!(
        "{file}: valid ({} stores, {} namespaces, {} api keys)",
        policy.stores.len(),
        policy.namespaces.len(),
        policy.keys.len()
    );
    for s in &policy.stores {
        if let Err(var) = &s.bearer {
            println!(
                "note: store {:?} reads its credential from ${var} (not set here)",
                s.name
            );
        }
    }
    Ok(())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Prints one line per object, kubectl-style; returns how many are in error.
fn report(ns: &str, v: &Validation) -> usize {
    let mut errors = 0;
    for (kind, name, conditions) in v.conditions() {
        let Some(ready) = conditions.iter().find(|c| c.type_ == READY) else {
            continue;
        };
        let benign =
            [reason::NOT_MINTED, reason::REVOKED, reason::EXPIRED].contains(&ready.reason.as_str());
        let state = if ready.status == "True" {
            "ready"
        } else if benign {
            "not ready"
        } else {
            "error"
        };
        if state == "error" {
            errors += 1;
        }
        println!(
            "{kind}.hevlayer.com/{name} (namespace {ns}): {state}: {}: {}",
            ready.reason, ready.message
        );
        for c in conditions
            .iter()
            .filter(|c| c.type_ != READY && c.status == "True")
        {
            println!("  warning: {}: {}", c.reason, c.message);
        }
    }
    errors
}

/// Says on stderr what was read but left out (other kinds, kustomize features not applied).
fn note_skipped(objects: &manifests::Objects) {
    for s in &objects.skipped {
        eprintln!("note: {s}");
    }
}

fn check(dir: &Path, allow: &Allowlist) -> Result<()> {
    let objects = manifests::load_dir(dir)?;
    note_skipped(&objects);
    let mut errors = objects.problems.len();
    for p in &objects.problems {
        println!("error: {p}");
    }
    for ns in output::namespaces(&objects) {
        let v = validate::validate_in(&objects, &ns, now(), allow);
        errors += report(&ns, &v);
        if let Err(e) = render::filter_config(&v, &render::RenderOptions::default()) {
            println!("error: namespace {ns}: the rendered configuration would be refused: {e}");
            errors += 1;
        }
    }
    if errors > 0 {
        bail!("{errors} error(s) in {}", dir.display());
    }
    Ok(())
}

/// Directory mode: the watcher on this thread, the control API on its own.
fn run_dir(dir: &Path, out: &Path, allow: Allowlist) -> Result<()> {
    let control: std::net::SocketAddr = std::env::var("LAYERGATE_CONTROL")
        .unwrap_or_else(|_| "127.0.0.1:9902".into())
        .parse()
        .context("LAYERGATE_CONTROL must be IP:PORT")?;
    let keys: std::net::SocketAddr = std::env::var("LAYERGATE_KEY_SERVICE")
        .unwrap_or_else(|_| "127.0.0.1:9903".into())
        .parse()
        .context("LAYERGATE_KEY_SERVICE must be IP:PORT")?;
    let rate = authenticate_rate()?;
    let mut settings = settings()?;
    settings.control = Some((control.ip().to_string(), control.port()));
    settings.key_service = Some((keys.ip().to_string(), keys.port()));
    settings.allow_endpoints = allow;
    let source = std::sync::Arc::new(source::DirSource::new(
        dir.to_owned(),
        out.to_owned(),
        settings,
    ));
    spawn_control_api(source.clone(), rate, control, keys)?;
    source.watch()
}

/// Logs through `tracing`: JSON lines (kube mode's default) or plain text, at
/// LAYERGATE_LOG_LEVEL (info).
fn init_logs(json_default: bool) -> Result<()> {
    let json = match std::env::var("LAYERGATE_LOG").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        Ok(other) => bail!("LAYERGATE_LOG must be json or text, not {other:?}"),
        Err(_) => json_default,
    };
    let level: tracing::Level = std::env::var("LAYERGATE_LOG_LEVEL")
        .unwrap_or_else(|_| "info".into())
        .parse()
        .context("LAYERGATE_LOG_LEVEL must be error, warn, info, debug or trace")?;
    let logs = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    Ok(())
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn authenticate_rate() -> Result<u32> {
    match std::env::var("LAYERGATE_AUTHENTICATE_PER_MINUTE") {
        Ok(v) => v
            .parse()
            .context("LAYERGATE_AUTHENTICATE_PER_MINUTE must be a number"),
        Err(_) => Ok(api::DEFAULT_AUTHENTICATE_PER_MINUTE),
    }
}

/// Kube mode: the controller on a small runtime, the control API on its own thread.
fn run_kube(namespace: Option<&str>, istio: bool, allow: Allowlist) -> Result<()> {
    use layergate_operator::{cluster, controller, kubeclient, lease};
    init_logs(true)?;
    // One TLS stack: ring, for the API client as for the store probes.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let control: std::net::SocketAddr = env_or("LAYERGATE_CONTROL", "0.0.0.0:9902")
        .parse()
        .context("LAYERGATE_CONTROL must be IP:PORT")?;
    let keys: std::net::SocketAddr = env_or("LAYERGATE_KEY_SERVICE", "0.0.0.0:9903")
        .parse()
        .context("LAYERGATE_KEY_SERVICE must be IP:PORT")?;
    let rate = authenticate_rate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = kube::Config::infer()
            .await
            .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
        let client = kube::Client::try_from(kubeclient::for_calls(config.clone()))
            .context("connecting to the Kubernetes API")?;
        let watches = kube::Client::try_from(kubeclient::for_watches(config))
            .context("connecting to the Kubernetes API")?;
        let ns = namespace
            .map(str::to_owned)
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let upstream = env_or(
            "LAYERGATE_CONTROL_UPSTREAM",
            &format!("layergate-operator.{ns}.svc:9902"),
        );
        let (host, port) = host_port(&upstream)?;
        let keys_upstream = env_or(
            "LAYERGATE_KEY_SERVICE_UPSTREAM",
            &format!("layergate-operator.{ns}.svc:{}", keys.port()),
        );
        let keys_upstream = host_port(&keys_upstream)?;
        let settings = output::Settings {
            listen: env_or("LAYERGATE_LISTEN", "0.0.0.0:8080")
                .parse()
                .context("LAYERGATE_LISTEN must be IP:PORT")?,
            admin: "127.0.0.1:9901".parse()?,
            wasm_path: env_or(
                "LAYERGATE_WASM",
                "/etc/layergate/wasm/layergate_filter.wasm",
            ),
            control: Some((host, port)),
            key_service: Some(keys_upstream),
            allow_endpoints: allow,
            key_max_staleness_seconds: output::DEFAULT_MAX_STALENESS_SECONDS,
            limits: upstream_limits()?,
        };
        let out = env_or("LAYERGATE_OUTPUT_SECRET", cluster::DEFAULT_OUTPUT_SECRET);
        let target = if istio {
            render::Target::Istio(layergate_operator::istio::IstioSettings::from_env(
                settings.control.clone(),
                settings.key_service.clone(),
            )?)
        } else {
            render::Target::Envoy
        };
        let source = std::sync::Arc::new(
            cluster::Cluster::new(client.clone(), &ns, settings, &out).with_target(target),
        );
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("layergate-operator-{:08x}", std::process::id()));
        let lock = lease::LeaseLock::new(
            client,
            &ns,
            &env_or("LAYERGATE_LEASE", lease::DEFAULT_LEASE),
            &identity,
            lease::LEASE_DURATION,
        );
        tracing::info!(namespace = %ns, %identity, output = %out, "starting");
        // The caches watch with the watch client, before the control API can start a pass.
        source.start_caches(watches.clone());
        spawn_control_api(source.clone(), rate, control, keys)?;
        controller::run_with_watches(source, watches, lock, shutdown_signal()).await
    })
}

/// `LAYERGATE_CONTROL_UPSTREAM`'s (or `LAYERGATE_KEY_SERVICE_UPSTREAM`'s) `HOST:PORT`.
fn host_port(s: &str) -> Result<(String, u16)> {
    s.rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("{s:?} must be HOST:PORT"))
}

/// Serves the control API and the key service, each on its own listener and thread; the
/// process exits if either stops.
fn spawn_control_api(
    source: std::sync::Arc<dyn layergate_operator::source::Source>,
    rate: u32,
    control: std::net::SocketAddr,
    keys: std::net::SocketAddr,
) -> Result<()> {
    let api = std::sync::Arc::new(api::Api::new(source, rate));
    let key_service = api.clone();
    std::thread::Builder::new()
        .name("control-api".into())
        .spawn(move || {
            if let Err(e) = api.serve(control) {
                tracing::error!("control API stopped: {e:#}");
                std::process::exit(1);
            }
        })?;
    std::thread::Builder::new()
        .name("key-service".into())
        .spawn(move || {
            if let Err(e) = key_service.serve_keys(keys) {
                tracing::error!("key service stopped: {e:#}");
                std::process::exit(1);
            }
        })?;
    Ok(())
}

/// Completes on SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

/// Gateway settings from the environment (see the usage text).
fn settings() -> Result<output::Settings> {
    let setting =
        |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.to_owned());
    Ok(output::Settings {
        listen: setting("LAYERGATE_LISTEN", "127.0.0.1:8080")
            .parse()
            .context("LAYERGATE_LISTEN must be IP:PORT")?,
        admin: setting("LAYERGATE_ADMIN", "127.0.0.1:9901")
            .parse()
            .context("LAYERGATE_ADMIN must be IP:PORT")?,
        wasm_path: setting(
            "LAYERGATE_WASM",
            "target/wasm32-wasip1/wasm/layergate_filter.wasm",
        ),
        control: None,
        key_service: None,
        allow_endpoints: Allowlist::default(),
        key_max_staleness_seconds: output::DEFAULT_MAX_STALENESS_SECONDS,
        limits: upstream_limits()?,
    })
}

/// The store clusters' timeouts and circuit breakers: the defaults, or the
/// `LAYERGATE_UPSTREAM_*` variables (see the usage text).
fn upstream_limits() -> Result<layergate_operator::envoy::UpstreamLimits> {
    layergate_operator::envoy::UpstreamLimits::from_vars(|v| std::env::var(v).ok())
        .map_err(anyhow::Error::msg)
}

/// What both render targets start from: the manifests of one namespace, read (refusing any
/// that cannot be read), validated and reported.
fn validated(dir: &Path, namespace: Option<&str>, allow: &Allowlist) -> Result<Validation> {
    let objects = manifests::load_dir(dir)?;
    note_skipped(&objects);
    if !objects.problems.is_empty() {
        bail!("cannot render: {}", objects.problems.join("; "));
    }
    let ns = output::namespace(&objects, namespace)?;
    let v = validate::validate_in(&objects, &ns, now(), allow);
    report(&ns, &v);
    Ok(v)
}

/// `render`: one rendering for the target asked for, written into `out`. The Istio target's
/// control API is `LAYERGATE_CONTROL_UPSTREAM` (not routed if unset); the Envoy target's
/// offline rendering has none (minted keys inline).
fn render(
    dir: &Path,
    out: &Path,
    namespace: Option<&str>,
    target: &str,
    allow: Allowlist,
) -> Result<()> {
    let mut settings = settings()?;
    let target = match target {
        "envoy" => render::Target::Envoy,
        "istio" => {
            let upstream = |var: &str| match std::env::var(var) {
                Ok(u) => host_port(&u).map(Some),
                Err(_) => Ok(None),
            };
            render::Target::Istio(layergate_operator::istio::IstioSettings::from_env(
                upstream("LAYERGATE_CONTROL_UPSTREAM")?,
                upstream("LAYERGATE_KEY_SERVICE_UPSTREAM")?,
            )?)
        }
        other => bail!("--target must be envoy or istio, not {other:?}"),
    };
    let v = validated(dir, namespace, &allow)?;
    settings.allow_endpoints = allow;
    let rendering = render::render(&v, &settings, &target, None)?;
    for path in output::write(&rendering, out, &settings)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}
