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
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

mod cli;

use clap::Parser;
use cli::{Cli, Command, Mode, SourceKind, TargetKind};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let allow = Allowlist::with(&cli.allow_endpoint).map_err(anyhow::Error::msg)?;
    let window = cli.expiring_soon.0;
    match cli.command {
        Command::Crds => {
            print!("{}", crd::crds_yaml()?);
            Ok(())
        }
        Command::CheckFilterConfig { file } => check_filter_config(&file),
        Command::CopyFilter { wasm, dir } => copy_filter(&wasm, &dir),
        Command::Check { dir } => check(&dir, &allow, window),
        Command::Render { dir, out, render } => {
            render.check()?;
            let settings = render.gateway.settings(Mode::Local, allow);
            let upstreams = &render.upstreams;
            let target = render.target(
                upstreams.control_upstream.clone(),
                upstreams.key_service_upstream.clone(),
            );
            let ns = render.namespace.as_deref();
            self::render(&dir, &out, ns, &target, &settings, window)
        }
        Command::Run {
            source,
            out,
            render,
            serve,
            kube,
        } => {
            render.check()?;
            match (source, out) {
                (SourceKind::Dir(dir), Some(out)) => {
                    if render.namespace.is_some() || render.target != TargetKind::Envoy {
                        bail!("--namespace and --target are kube mode's (directory mode renders for Envoy)");
                    }
                    serve.init_logs(false)?;
                    let (control, keys) = serve.listeners(Mode::Local);
                    let mut settings = render.gateway.settings(Mode::Local, allow);
                    settings.control = Some((control.ip().to_string(), control.port()));
                    settings.key_service = Some((keys.ip().to_string(), keys.port()));
                    run_dir(
                        &dir,
                        &out,
                        settings,
                        window,
                        serve.authenticate_per_minute,
                        (control, keys),
                    )
                }
                (SourceKind::Dir(_), None) => bail!("--source dir:PATH needs --out OUT"),
                (SourceKind::Kube, Some(_)) => {
                    bail!("--out is directory mode's: kube mode writes to the Secret LAYERGATE_OUTPUT_SECRET")
                }
                (SourceKind::Kube, None) => {
                    serve.init_logs(true)?;
                    let kube_run = KubeRun {
                        namespace: render.namespace.clone().or(kube.pod_namespace.clone()),
                        settings: render.gateway.settings(Mode::Pod, allow),
                        render,
                        listeners: serve.listeners(Mode::Pod),
                        rate: serve.authenticate_per_minute,
                        kube,
                        window,
                    };
                    run_kube(kube_run)
                }
            }
        }
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

fn check_filter_config(path: &Path) -> Result<()> {
    let file = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("reading {file}"))?;
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

fn check(dir: &Path, allow: &Allowlist, window: Option<i64>) -> Result<()> {
    let objects = manifests::load_dir(dir)?;
    note_skipped(&objects);
    let mut errors = objects.problems.len();
    for p in &objects.problems {
        println!("error: {p}");
    }
    for ns in output::namespaces(&objects) {
        let v = validate::validate_since(&objects, &ns, now(), allow, window, None);
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

/// Directory mode: the watcher on this thread, the control API and key service on the runtime.
fn run_dir(
    dir: &Path,
    out: &Path,
    settings: output::Settings,
    window: Option<i64>,
    rate: u32,
    (control, keys): (SocketAddr, SocketAddr),
) -> Result<()> {
    let mut source = source::DirSource::new(dir.to_owned(), out.to_owned(), settings);
    source.expiring_soon = window;
    let source = Arc::new(source);
    // The control API and key service on the operator's runtime; the watcher, which blocks,
    // on this thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    spawn_control_api(runtime.handle(), source.clone(), rate, control, keys);
    // The watcher blocks this thread; its probes run on the runtime it has entered.
    let _entered = runtime.enter();
    source.watch()
}

/// Kube mode's parsed command line.
struct KubeRun {
    namespace: Option<String>,
    settings: output::Settings,
    render: cli::RenderArgs,
    listeners: (SocketAddr, SocketAddr),
    rate: u32,
    kube: cli::KubeArgs,
    /// The `ExpiringSoon` window (`None`: off).
    window: Option<i64>,
}

/// Kube mode: the controller, the control API and the key service on one runtime.
fn run_kube(run: KubeRun) -> Result<()> {
    use layergate_operator::{cluster, controller, kubeclient, lease};
    // One TLS stack: ring, for the API client as for the store probes.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (control, keys) = run.listeners;
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
        let ns = run
            .namespace
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let mut settings = run.settings;
        settings.control = Some(
            run.render
                .upstreams
                .control_upstream
                .clone()
                .unwrap_or_else(|| (format!("layergate-operator.{ns}.svc"), 9902)),
        );
        settings.key_service = Some(
            run.render
                .upstreams
                .key_service_upstream
                .clone()
                .unwrap_or_else(|| (format!("layergate-operator.{ns}.svc"), keys.port())),
        );
        let target = run
            .render
            .target(settings.control.clone(), settings.key_service.clone());
        let out = run.kube.output_secret;
        let identity = run
            .kube
            .pod_name
            .unwrap_or_else(|| format!("layergate-operator-{:08x}", std::process::id()));
        let mut cluster = cluster::Cluster::new(client.clone(), &ns, settings, &out)
            .with_target(target)
            .with_identity(&identity);
        cluster.usage_writes = usize::try_from(run.kube.usage_writes_per_second).unwrap_or(1);
        cluster.expiring_soon = run.window;
        let source = Arc::new(cluster);
        let lock = lease::LeaseLock::new(
            client,
            &ns,
            &run.kube.lease,
            &identity,
            lease::LEASE_DURATION,
        );
        tracing::info!(namespace = %ns, %identity, output = %out, "starting");
        // The caches watch with the watch client, before the control API can start a pass.
        source.start_caches(watches.clone());
        spawn_control_api(
            &tokio::runtime::Handle::current(),
            source.clone(),
            run.rate,
            control,
            keys,
        );
        controller::run_with_watches(source, watches, lock, shutdown_signal()).await
    })
}

/// Serves the control API and the key service, each on its own listener, as tasks on the
/// operator's runtime; the process exits if either stops (a port taken, say).
fn spawn_control_api(
    runtime: &tokio::runtime::Handle,
    source: Arc<dyn layergate_operator::source::Source>,
    rate: u32,
    control: SocketAddr,
    keys: SocketAddr,
) {
    let api = Arc::new(api::Api::new(source, rate));
    for (role, addr) in [(api::Role::Control, control), (api::Role::Keys, keys)] {
        let serve = api.clone().serve_role(addr, role, std::future::pending());
        runtime.spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!("{role:?} listener stopped: {e:#}");
                std::process::exit(1);
            }
        });
    }
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

/// What both render targets start from: the manifests of one namespace, read (refusing any
/// that cannot be read), validated and reported.
fn validated(
    dir: &Path,
    namespace: Option<&str>,
    allow: &Allowlist,
    window: Option<i64>,
) -> Result<Validation> {
    let objects = manifests::load_dir(dir)?;
    note_skipped(&objects);
    if !objects.problems.is_empty() {
        bail!("cannot render: {}", objects.problems.join("; "));
    }
    let ns = output::namespace(&objects, namespace)?;
    let v = validate::validate_since(&objects, &ns, now(), allow, window, None);
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
    target: &render::Target,
    settings: &output::Settings,
    window: Option<i64>,
) -> Result<()> {
    let v = validated(dir, namespace, &settings.allow_endpoints, window)?;
    let rendering = render::render(&v, settings, target, None)?;
    for path in output::write(&rendering, out, settings)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}
