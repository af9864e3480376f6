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
            let mut failed = outcomes.iter().filter(|o| !o.ok).count();
            // A key minted, then revoked, through the gateway: each must take effect at the
            // gateway within a second (SPEC §6).
            let bound = std::time::Duration::from_secs(1);
            match tour::key_lifecycle(addr) {
                Ok(l) => {
                    for (what, took) in [
                        ("a key minted through the gateway works", l.minted_works),
                        ("the same key revoked is refused (401)", l.revoked_refused),
                    ] {
                        let ok = took < bound;
                        failed += usize::from(!ok);
                        let mark = if ok { "ok" } else { "FAIL" };
                        println!("{mark:<4} {what:<60} < 1 s   {took:.0?}");
                    }
                }
                Err(e) => {
                    failed += 1;
                    println!("FAIL minting and revoking a key: {e:#}");
                }
            }
            // A key rotated with a 3 s overlap: the new token at once, the old one during the
            // overlap and refused within a second after it (issue 24).
            match tour::rotation(addr) {
                Ok(r) => {
                    let rows = [
                        (
                            "a rotated key's new token works",
                            r.new_works < bound,
                            format!("{:.0?}", r.new_works),
                        ),
                        (
                            "its old token still works during the overlap",
                            r.old_works_during,
                            format!("{:?} overlap", r.overlap),
                        ),
                        (
                            "its old token is refused within a second of the overlap's end",
                            r.old_refused_ms.abs() < 1000,
                            format!("{} ms after it", r.old_refused_ms),
                        ),
                    ];
                    for (what, ok, took) in rows {
                        failed += usize::from(!ok);
                        let mark = if ok { "ok" } else { "FAIL" };
                        println!("{mark:<4} {what:<60} {took}");
                    }
                }
                Err(e) => {
                    failed += 1;
                    println!("FAIL rotating a key: {e:#}");
                }
            }
            // What the gateway reported of the demo's minted key.
            match tour::usage_line(addr) {
                Ok(line) => println!("ok   {line}"),
                Err(e) => {
                    failed += 1;
                    println!("FAIL usage: {e:#}");
                }
            }
            if failed > 0 {
                bail!(
                    "{failed} step(s) did not go as documented (is `make run` running on {addr}?)"
                );
            }
            println!("all {} steps as documented", outcomes.len() + 6);
            Ok(())
        }
        _ => bail!("usage: layergate-demo run | tour [GATEWAY_ADDR]"),
    }
}
