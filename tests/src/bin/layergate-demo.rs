//! `layergate-demo run|tour` — the demo behind `make run` and `make demo`.

use anyhow::{bail, Result};
use layergate_tests::demo::{self, Demo};
use layergate_tests::tour;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => {
            let demo = Demo::start_from_manifests()?;
            println!(
                "layergate demo: gateway http://{} (Envoy admin http://{}), stores primary {} and archive {}",
                demo.addr(),
                demo.envoy.admin,
                demo.primary.addr(),
                demo.archive.addr()
            );
            println!("the operator renders envoy/demo/manifests/ into .run/ and re-renders on every change");
            println!("tokens: demo-read-token, demo-rw-token, demo-admin-token, {}; try `make demo`. Ctrl-C stops.", tour::SHOP_READER_TOKEN);
            layergate_tests::devstore::DevStore::wait_for_signal()?;
            println!("stopping");
            Ok(())
        }
        Some("tour") => {
            let addr = args.get(1).map_or(demo::LISTEN, String::as_str).parse()?;
            let outcomes = tour::run(addr, None);
            print!("{}", tour::table(&outcomes));
            let failed = outcomes.iter().filter(|o| !o.ok).count();
            if failed > 0 {
                bail!(
                    "{failed} step(s) did not go as documented (is `make run` running on {addr}?)"
                );
            }
            println!("all {} steps as documented", outcomes.len());
            Ok(())
        }
        _ => bail!("usage: layergate-demo run | tour [GATEWAY_ADDR]"),
    }
}
