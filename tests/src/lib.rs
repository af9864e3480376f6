//! Test harnesses for layergate: a real Envoy launcher, a wasmtime proxy-wasm host and
//! `devstore`, a turbopuffer-compatible in-memory server.
