//! Where the artifacts the tests need live, and actionable errors when one is missing.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

fn existing(var: &str, default: PathBuf, make_target: &str, what: &str) -> Result<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    if !path.is_file() {
        bail!(
            "{what} not found at {} — run `make {make_target}` (or set {var})",
            path.display()
        );
    }
    Ok(path)
}

/// The Envoy binary: `$ENVOY_BIN` or `.tools/bin/envoy` (installed by `make tools`).
pub fn envoy_bin() -> Result<PathBuf> {
    existing(
        "ENVOY_BIN",
        repo_root().join(".tools/bin/envoy"),
        "tools",
        "the Envoy binary",
    )
}

/// The built filter: `$LAYERGATE_WASM` or the release wasm32-wasip1 artifact (`make wasm`).
pub fn wasm_path() -> Result<PathBuf> {
    existing(
        "LAYERGATE_WASM",
        repo_root().join("target/wasm32-wasip1/wasm/layergate_filter.wasm"),
        "wasm",
        "the filter wasm",
    )
}

/// The filter as an Envoy dynamic module: `$LAYERGATE_NATIVE` or the debug build of
/// `filter/native` (`make native`).
pub fn native_path() -> Result<PathBuf> {
    existing(
        "LAYERGATE_NATIVE",
        repo_root().join("target/debug/liblayergate_native.so"),
        "native",
        "the filter's dynamic module (liblayergate_native.so)",
    )
}

/// The Envoy binaries the native build supports and is tested on (its ABI is 1.39's; by
/// Envoy's policy it runs on 1.39.x and 1.40.x), installed by `make native-envoys`.
pub const NATIVE_ENVOYS: [&str; 3] = ["1.39.0", "1.39.3", "1.40.0"];

/// The Envoy binary of `version` under `.tools/` (`make .tools/envoy-<version>/envoy`).
pub fn envoy_version_bin(version: &str) -> Result<PathBuf> {
    let path = repo_root().join(format!(".tools/envoy-{version}/envoy"));
    if !path.is_file() {
        bail!(
            "Envoy {version} not found at {} — run `make .tools/envoy-{version}/envoy` (or `make native-envoys`)",
            path.display()
        );
    }
    Ok(path)
}

/// The bench's probe filter (`tests/probe-filter`, SDK-free, makes only the host calls its
/// configuration names): `$LAYERGATE_PROBE_WASM` or its wasm32-wasip1 artifact.
pub fn probe_wasm_path() -> Result<PathBuf> {
    existing(
        "LAYERGATE_PROBE_WASM",
        repo_root().join("target/wasm32-wasip1/wasm/layergate_probe_filter.wasm"),
        "bench",
        "the probe filter wasm (cargo build -p layergate-probe-filter --target wasm32-wasip1 --profile wasm)",
    )
}

/// The Python interpreter with the official clients: `$LAYERGATE_PYTHON` or `.venv/bin/python`.
pub fn python() -> Result<PathBuf> {
    existing(
        "LAYERGATE_PYTHON",
        repo_root().join(".venv/bin/python"),
        "venv",
        "the Python venv with turbopuffer/hevlayer",
    )
}

/// A command the venv installs (`kubectl`, `kubernetes-validate`): `.venv/bin/<name>`.
pub fn venv_bin(name: &str) -> Result<PathBuf> {
    let path = repo_root().join(".venv/bin").join(name);
    if !path.is_file() {
        bail!("{name} not found at {} — run `make venv`", path.display());
    }
    Ok(path)
}

/// The demo's filter configuration.
pub fn demo_filter_config() -> PathBuf {
    repo_root().join("envoy/demo/layergate.json")
}
