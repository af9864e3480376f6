//! `layergate-operator`: the control plane of layergate. See `--help`.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use layergate_filter::policy::Policy;
use layergate_operator::api;
use layergate_operator::conditions::{reason, READY};
use layergate_operator::crd;
use layergate_operator::manifests;
use layergate_operator::output;
use layergate_operator::render::{self, RenderOptions};
use layergate_operator::source;
use layergate_operator::validate::{self, Validation};
use std::path::Path;

const USAGE: &str = "usage: layergate-operator COMMAND

  crds                        print the CRD YAML (the same as operator/crds/)
  check -f DIR                validate the manifests in DIR (VectorStores, Indexes, ApiKeys
                              and their Secrets, as YAML files) offline; exit 1 on error
  render -f DIR -o OUT [--namespace NS]
                              write what the gateway loads: OUT/layergate.json (the filter
                              configuration), OUT/lds.yaml and OUT/cds.yaml (Envoy's
                              file-based dynamic config; they hold store credentials, mode
                              0600) and OUT/bootstrap.yaml, which watches them. Environment:
                              LAYERGATE_LISTEN (127.0.0.1:8080), LAYERGATE_ADMIN
                              (127.0.0.1:9901), LAYERGATE_WASM (path of the filter .wasm)
  run --source dir:DIR --out OUT
                              directory mode: render DIR into OUT now and again whenever a
                              manifest changes (Envoy hot-reloads OUT); mint tokens for new
                              ApiKeys into Secret files in DIR; log status. A change that
                              cannot be rendered never replaces the last good output.
                              Serves the control API on LAYERGATE_CONTROL (127.0.0.1:9902):
                              /v2/keys, /v2/vectorstores, /healthz, /readyz, /metrics
  check-filter-config FILE    parse and compile a filter configuration exactly as the wasm
                              filter's on_configure does; exit 1 with the reason if the
                              filter would refuse it";

fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Vec<String>) -> Result<()> {
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
        ["check", "-f", dir] => check(Path::new(dir)),
        ["run", "--source", source, "--out", out] => match source.strip_prefix("dir:") {
            Some(dir) => run_dir(Path::new(dir), Path::new(out)),
            None if *source == "kube" => bail!(
                "--source kube (the in-cluster controller) is not built yet; use --source dir:PATH"
            ),
            None => bail!("--source must be dir:PATH or kube"),
        },
        ["render", "-f", dir, "-o", out] => render(Path::new(dir), Path::new(out), None),
        ["render", "-f", dir, "-o", out, "--namespace", ns] => {
            render(Path::new(dir), Path::new(out), Some(ns))
        }
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
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

fn check(dir: &Path) -> Result<()> {
    let objects = manifests::load_dir(dir)?;
    let mut errors = objects.problems.len();
    for p in &objects.problems {
        println!("error: {p}");
    }
    for ns in output::namespaces(&objects) {
        let v = validate::validate(&objects, &ns, now());
        errors += report(&ns, &v);
        if let Err(e) = render::filter_config(&v, &RenderOptions::default()) {
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
fn run_dir(dir: &Path, out: &Path) -> Result<()> {
    let control: std::net::SocketAddr = std::env::var("LAYERGATE_CONTROL")
        .unwrap_or_else(|_| "127.0.0.1:9902".into())
        .parse()
        .context("LAYERGATE_CONTROL must be IP:PORT")?;
    let rate = match std::env::var("LAYERGATE_AUTHENTICATE_PER_MINUTE") {
        Ok(v) => v
            .parse()
            .context("LAYERGATE_AUTHENTICATE_PER_MINUTE must be a number")?,
        Err(_) => api::DEFAULT_AUTHENTICATE_PER_MINUTE,
    };
    let mut settings = settings()?;
    settings.control = Some(control);
    let source = std::sync::Arc::new(source::DirSource::new(
        dir.to_owned(),
        out.to_owned(),
        settings,
    ));
    let api = std::sync::Arc::new(api::Api::new(source.clone(), rate));
    std::thread::Builder::new()
        .name("control-api".into())
        .spawn(move || {
            if let Err(e) = api.serve(control) {
                eprintln!("layergate-operator: control API stopped: {e:#}");
                std::process::exit(1);
            }
        })?;
    source.watch()
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
    })
}

fn render(dir: &Path, out: &Path, namespace: Option<&str>) -> Result<()> {
    let settings = settings()?;
    let objects = manifests::load_dir(dir)?;
    if !objects.problems.is_empty() {
        bail!("cannot render: {}", objects.problems.join("; "));
    }
    let ns = output::namespace(&objects, namespace)?;
    let v = validate::validate(&objects, &ns, now());
    report(&ns, &v);
    output::write(&v, out, &settings)?;
    for name in output::FILES {
        println!("wrote {}", out.join(name).display());
    }
    Ok(())
}
