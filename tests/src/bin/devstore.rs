//! `devstore --listen 127.0.0.1:18081 --api-key KEY`: a turbopuffer-compatible in-memory
//! server for local runs and tests. Runs until Ctrl-C or SIGTERM.

use anyhow::{bail, Context, Result};
use layergate_tests::devstore::DevStore;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut key) = ("127.0.0.1:0".to_owned(), None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "--api-key" => key = Some(args.next().context("--api-key needs a value")?),
            other => {
                bail!("unknown argument {other:?}; usage: devstore --listen ADDR --api-key KEY")
            }
        }
    }
    let key = key.context("--api-key is required")?;
    let store = DevStore::start_on(listen.parse().context("--listen must be IP:PORT")?, &key)?;
    println!("devstore listening on {}", store.addr());
    DevStore::wait_for_signal()
}
