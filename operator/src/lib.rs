//! # layergate-operator
//!
//! Validates the `hevlayer.com` CRDs, mints API keys and renders the gateway's Envoy and
//! filter configuration from them.
//!
//! ```text
//!  dir of YAML (source) ──┐                    ┌─► files: CDS / LDS / filter config (output)
//!                         ├─► Objects ─► pass ─┤
//!  watch-fed caches ──────┘   (manifests)  │   └─► Secret / Istio resources, statuses (cluster)
//!  (informer, cluster)                     │
//!              validate ─► keep last valid ─► render (envoy | istio) ─► usable keys ─► policy
//!                                                                          │
//!                                      key service (gateways sync) ◄──────┘──► control API
//! ```
#![forbid(unsafe_code)]

pub mod api;
pub mod authority;
pub mod cluster;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod documents;
pub mod endpoint;
pub mod files;
pub mod informer;
pub mod keys;
pub mod keyservice;
pub mod kubeclient;
pub mod lease;
pub mod limits;
pub mod manifests;
pub mod metrics;
pub mod output;
pub mod pass;
pub mod probe;
pub mod random;
pub mod rbac;
pub mod render;
pub mod settings;
pub mod source;
pub mod state;
pub mod status;
pub mod usage;
pub mod validate;

// The translators live under `render/` (below its entry point, above the filter-config floor);
// their paths from before the move stay: `layergate_operator::envoy::…`, `…::istio::…`.
pub use render::{envoy, istio};
