//! `layergate-operator`: the control plane of layergate. See `--help`.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use layergate_filter::policy::Policy;
use layergate_operator::crd;

const USAGE: &str = "usage: layergate-operator COMMAND

  crds                        print the CRD YAML (the same as operator/crds/)
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
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["crds"] => {
            print!("{}", crd::crds_yaml()?);
            Ok(())
        }
        ["check-filter-config", file] => check_filter_config(file),
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
            println!("note: store {:?} reads its credential from ${var} (not set here)", s.name);
        }
    }
    Ok(())
}
