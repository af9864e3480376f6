//! Test harnesses for layergate: a real Envoy launcher, a wasmtime proxy-wasm host and
//! `devstore`, a turbopuffer-compatible in-memory server; plus the demo tour.

pub mod bench;
pub mod demo;
pub mod devstore;
pub mod envoy;
pub mod h2;
pub mod http;
pub mod paths;
pub mod python;
pub mod tls;
pub mod tour;
/// The wasmtime proxy-wasm host; only with the `wasm-host` feature (on by default; `make run`
/// builds without it).
#[cfg(feature = "wasm-host")]
pub mod wasm_host;
