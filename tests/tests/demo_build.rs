//! Issue 15: the first `make run` compiled wasmtime and cranelift (the demo runner shared a
//! crate with the wasmtime test host) and took about nine minutes on 2 cores. The demo's build
//! (`--no-default-features`, as the Makefile runs it) must not pull them in again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use layergate_tests::paths;
use std::process::Command;

#[test]
fn the_demo_builds_without_wasmtime_or_cranelift() {
    let makefile = std::fs::read_to_string(paths::repo_root().join("Makefile")).unwrap();
    let run = makefile
        .lines()
        .find(|l| l.contains("--bin layergate-demo -- run"))
        .expect("make run starts layergate-demo");
    assert!(run.contains("--no-default-features"), "{run}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(paths::repo_root())
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "layergate-tests",
            "--no-default-features",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let heavy: Vec<&str> = tree
        .lines()
        .filter(|l| l.starts_with("wasmtime") || l.starts_with("cranelift"))
        .collect();
    assert!(heavy.is_empty(), "the demo's build compiles {heavy:?}");
    assert!(tree.lines().any(|l| l.starts_with("layergate-operator")));
}
