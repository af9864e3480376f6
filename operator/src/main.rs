//! `layergate-operator`: the control plane of layergate.
//!
//! Today it offers the offline check of a rendered filter configuration; the CRD controller
//! (validation, probes, rendering, minted keys) grows here on top of the same
//! `layergate-filter` types, so the operator and the filter can never disagree on the format.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use layergate_filter::policy::Policy;

const USAGE: &str = "usage: layergate-operator check-filter-config FILE\n\
\n\
  check-filter-config FILE   parse and compile a filter configuration exactly as the\n\
                             wasm filter's on_configure does; exit 1 with the reason if\n\
                             the filter would refuse it";

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
        ["check-filter-config", file] => {
            let bytes = std::fs::read(file).with_context(|| format!("reading {file}"))?;
            // Credentials from the environment are resolved by the VM at run time; here an
            // absent variable only means that store would answer 503, which is reported.
            let policy = Policy::from_json(&bytes, |var| std::env::var(var).ok())?;
            println!(
                "{file}: valid ({} stores, {} namespaces, {} api keys)",
                policy.stores.len(),
                policy.namespaces.len(),
                policy.keys.len()
            );
            for s in policy
                .stores
                .iter()
                .filter_map(|s| s.bearer.as_ref().err().map(|v| (&s.name, v)))
            {
                println!(
                    "note: store {:?} reads its credential from ${} (not set here)",
                    s.0, s.1
                );
            }
            Ok(())
        }
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}
