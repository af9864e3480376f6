//! Support shared by the kube-mode test binaries (`cluster`, `istio`) and `crds`: the strict fake
//! Kubernetes API ([`StrictBuild::strict`], in `strict`, `watch` and `rules`), the one OpenAPI v3
//! validator ([`validate`], in `openapi`), what the code calls of the API (`rbac`), and the
//! demo's objects and settings (`fixtures`), a pass's step timings from its spans (`steps`). Each binary uses a part of it.
#![allow(dead_code, clippy::panic)]

mod fixtures;
mod openapi;
mod rbac;
mod rules;
mod steps;
mod strict;
mod watch;

// Each binary uses some of these.
#[allow(unused_imports)]
pub use fixtures::{demo_objects, kube_settings, resident_bytes, settle};
#[allow(unused_imports)]
pub use openapi::validate;
#[allow(unused_imports)]
pub use rbac::{assert_role_is, permissions_used, Tap};
#[allow(unused_imports)]
pub use rules::{
    dns1123_subdomain, merge, DATA_LIMIT, EVENT_NOTE_LIMIT, REQUEST_LIMIT, STORE_LIMIT,
};
#[allow(unused_imports)]
pub use steps::{steps, Steps};
#[allow(unused_imports)]
pub use strict::{ClientBuilderJournal, Strict, StrictBody, StrictBuild};
#[allow(unused_imports)]
pub use watch::Journal;
