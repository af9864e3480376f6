//! The native build's ABI against the Envoy binaries it supports (1.39.0, 1.39.3, 1.40.0):
//! the shared object exports exactly the 21 hooks Envoy 1.39 requires of an HTTP-filter module
//! and the two optional ones the key-service sync uses, Envoy looks each of them up by name
//! (so each name is a string in every binary), and every
//! callback the shared object imports is exported by every binary (`nm -D --defined-only`).
//! The names come from the built `liblayergate_native.so` itself, so nothing the module calls
//! or exports escapes the check. Fails, never skips, when the module or an Envoy is missing.
//!
//! The pin these names come from is in `filter/src/native/abi.rs` (Envoy 1.39.0's
//! `abi.h`, sha256 `77378e79…f633`, ABI `v0.1.0`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use layergate_tests::paths::{envoy_version_bin, native_path, NATIVE_ENVOYS};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The hooks Envoy 1.39's HTTP dynamic-module filter requires (it refuses a module without any
/// of them): `on_program_init` and the 20 `on_http_filter_*` it resolves without fallback.
const HOOKS: [&str; 21] = [
    "envoy_dynamic_module_on_program_init",
    "envoy_dynamic_module_on_http_filter_config_new",
    "envoy_dynamic_module_on_http_filter_config_destroy",
    "envoy_dynamic_module_on_http_filter_new",
    "envoy_dynamic_module_on_http_filter_destroy",
    "envoy_dynamic_module_on_http_filter_request_headers",
    "envoy_dynamic_module_on_http_filter_request_body",
    "envoy_dynamic_module_on_http_filter_request_trailers",
    "envoy_dynamic_module_on_http_filter_response_headers",
    "envoy_dynamic_module_on_http_filter_response_body",
    "envoy_dynamic_module_on_http_filter_response_trailers",
    "envoy_dynamic_module_on_http_filter_stream_complete",
    "envoy_dynamic_module_on_http_filter_http_callout_done",
    "envoy_dynamic_module_on_http_filter_http_stream_headers",
    "envoy_dynamic_module_on_http_filter_http_stream_data",
    "envoy_dynamic_module_on_http_filter_http_stream_trailers",
    "envoy_dynamic_module_on_http_filter_http_stream_complete",
    "envoy_dynamic_module_on_http_filter_http_stream_reset",
    "envoy_dynamic_module_on_http_filter_scheduled",
    "envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark",
    "envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark",
];

/// Hooks Envoy 1.39 looks up but does not require, which the key-service sync uses.
const OPTIONAL_HOOKS: [&str; 2] = [
    "envoy_dynamic_module_on_http_filter_config_scheduled",
    "envoy_dynamic_module_on_http_filter_config_http_callout_done",
];

/// A binutils tool's standard output (the test fails when it cannot run).
fn run(tool: &str, args: &[&str], file: &Path) -> String {
    let out = Command::new(tool)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("running {tool} (binutils): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Dynamic symbols of `file` starting with `prefix` (`nm -D` with `filter`).
fn dynamic_symbols(file: &Path, filter: &str, prefix: &str) -> BTreeSet<String> {
    run("nm", &["-D", filter], file)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|s| s.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// The `envoy_dynamic_module_on_*` names written in `file` as strings.
fn hook_strings(file: &Path) -> BTreeSet<String> {
    const PREFIX: &str = "envoy_dynamic_module_on_";
    let mut names = BTreeSet::new();
    for line in run("strings", &["-a", "-n", "24"], file).lines() {
        let mut rest = line;
        // Literals may sit back to back with no NUL between them: a name ends at the next
        // byte that cannot be in one, or where the next name begins.
        while let Some(at) = rest.find(PREFIX) {
            let tail = &rest[at + PREFIX.len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let end = tail[..end].find(PREFIX).unwrap_or(end);
            names.insert(format!("{PREFIX}{}", &tail[..end]));
            rest = &tail[end..];
        }
    }
    names
}

fn module() -> std::path::PathBuf {
    native_path().unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn the_module_exports_exactly_the_hooks_envoy_1_39_requires_and_the_two_it_uses() {
    let so = module();
    let exported = dynamic_symbols(&so, "--defined-only", "envoy_");
    let hooks: BTreeSet<String> = HOOKS
        .iter()
        .chain(&OPTIONAL_HOOKS)
        .map(|h| (*h).to_owned())
        .collect();
    assert_eq!(
        exported,
        hooks,
        "{} exports other envoy_ symbols than the 21 required hooks and the 2 optional ones",
        so.display()
    );
    let undefined = dynamic_symbols(&so, "--undefined-only", "envoy_");
    assert!(
        undefined
            .iter()
            .all(|s| s.starts_with("envoy_dynamic_module_callback_")),
        "imports that are not callbacks: {undefined:?}"
    );
    assert!(
        undefined.len() >= 7,
        "the module should import the header, reply and body callbacks: {undefined:?}"
    );
}

#[test]
fn every_hook_and_callback_name_is_envoys_on_each_supported_version() {
    let so = module();
    let callbacks = dynamic_symbols(&so, "--undefined-only", "envoy_dynamic_module_callback_");
    let mut missing = Vec::new();
    for version in NATIVE_ENVOYS {
        let envoy = envoy_version_bin(version).unwrap_or_else(|e| panic!("{e:#}"));
        let exported = dynamic_symbols(&envoy, "--defined-only", "envoy_dynamic_module_callback_");
        assert!(
            exported.len() > 100,
            "Envoy {version} exports only {} dynamic-module callbacks: is it a dynamic-modules build?",
            exported.len()
        );
        for c in callbacks.difference(&exported) {
            missing.push(format!("Envoy {version} does not export the callback {c}"));
        }
        let looked_up = hook_strings(&envoy);
        for h in HOOKS
            .iter()
            .chain(&OPTIONAL_HOOKS)
            .filter(|h| !looked_up.contains(**h))
        {
            missing.push(format!("Envoy {version} never names the hook {h}"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
