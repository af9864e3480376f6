//! # layergate-filter
//!
//! Auth, scope classification and store routing for the hev layer gateway in front of
//! turbopuffer, built twice (SPEC §10): as a proxy-wasm filter (`wasm`, for `wasm32`) and as an
//! Envoy dynamic module (`native`, with the `native` feature; the shared object is
//! `filter/native`'s). Everything but those two host bindings is plain Rust that builds and
//! tests natively; the operator depends on this crate for the configuration types.
//!
//! ```text
//!  on_configure:  JSON ──serde──► config::FilterConfig ──compile──► policy::Policy (per root, Rc)
//!  key sync:      operator's key service ──dispatch_http_call──► keys::KeyTable (swapped whole)
//!
//!  on_request_headers (one header-map read):
//!    headers::RequestHead ──► route::classify ──► Policy::store_for
//!        ──► auth::check  (auth::authenticate, then entitlement::authorize)
//!        ──► decision::Decision
//!             Forward(plan)        → plan.header_edits(): credential swap + x-layergate-cluster
//!             Inspect(plan, rule)  → buffer body → body::check (auth::check per namespace)
//!             Deny(denial)         → local reply {"status":"error","error":…} (denial)
//! ```
//!
//! Floors, nothing importing upward: `wasm` (+ `abi`, the hand-declared proxy-wasm ABI) and
//! `native` (+ `native::abi`, the hand-declared dynamic-module ABI) →
//! `outcome`, `audit` (the counters and the access-log line every host binding reports) →
//! `decision`, `body`, `keysync` (the key-service client as a state machine), `usage` (per-key
//! counts and their reports) → `auth` → `entitlement` → `policy`, `keys` → `route` → leaves
//! (`denial`, `glob`, `scope`, `time`, `config`, `headers`, `fasthash`).
//!
//! The operator validates with this crate's own checks — [`time`] (lifetimes, timestamps),
//! [`entitlement`] (targets, a key's grants, containment of one grant in another), [`glob`]
//! and [`namespace::valid_namespace`] — so it refuses exactly what the filter refuses.

pub mod answer;
pub mod audit;
pub mod auth;
pub mod body;
pub mod buckets;
pub mod config;
pub mod decision;
pub mod denial;
pub mod digest;
pub mod entitlement;
pub mod fasthash;
pub mod glob;
pub mod headers;
pub mod keys;
pub mod keysync;
pub mod namespace;
pub mod outcome;
pub mod policy;
pub mod ratelimit;
pub mod route;
pub mod scope;
pub mod staleness;
pub mod time;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
mod native;

#[cfg(target_arch = "wasm32")]
mod wasm;
