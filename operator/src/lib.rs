//! # layergate-operator
//!
//! Validates the `hevlayer.com` CRDs, mints API keys and renders the gateway's Envoy and
//! filter configuration from them.
//!
//! ```text
//!  manifests (dir of YAML) ─► manifests::Objects ─► validate ─► conditions per object
//!                                                      │
//!                                                      ▼
//!                                     render ─► filter config (layergate-filter types)
//!                                            └► one upstream per store
//!                                                 ├► envoy: CDS / LDS ──► output (dir) / cluster (Secret)
//!                                                 └► istio: resources ──► output (dir) / cluster (applied)
//! ```
#![forbid(unsafe_code)]

pub mod api;
pub mod authority;
pub mod cluster;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod endpoint;
pub mod envoy;
pub mod files;
pub mod informer;
pub mod istio;
pub mod keys;
pub mod keyservice;
pub mod kubeclient;
pub mod lease;
pub mod manifests;
pub mod output;
pub mod pass;
pub mod probe;
pub mod rbac;
pub mod render;
pub mod schema;
pub mod settings;
pub mod source;
pub mod state;
pub mod status;
pub mod validate;
