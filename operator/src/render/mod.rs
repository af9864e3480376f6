//! Rendering (pure: validated objects in → outputs out), in one place for both targets:
//!
//! ```text
//!  Validation ─► filter::filter_config ─► FilterConfig (checked by the filter's own compiler)
//!             └► upstream::upstreams ───► Upstream per store (host, port, TLS, SAN/SNI, limits)
//!                                   │
//!        Target::Envoy ─► envoy::translate: clusters, listener → Output::Envoy (files)
//!        Target::Istio ─► istio::translate: ServiceEntry, DestinationRule, … → Output::Istio
//! ```
//!
//! [`render`] is the one entry; the writers take its [`Rendering`]: `output::write` (a
//! directory: offline `render`, directory mode), `cluster::Cluster` (kube mode: the rendering
//! Secret, or the Istio resources server-side applied). A configuration the filter would
//! refuse is never returned, so never published.
//!
//! Floors, nothing importing upward:
//!
//! ```text
//!  mod.rs       Target, Output, Rendering, render(): picks the translator, wraps its output
//!    │
//!  envoy/  istio/   the two translators; neither imports the other, nor this file
//!    │       │
//!  filter.rs        the filter configuration both embed (RenderOptions, filter_config, …)
//!    │
//!  upstream.rs      stores as upstreams, the gateway limits both write (ms, buffer limits)
//! ```
//!
//! Below all of them: `settings` and the validation. The lower floors' items are re-exported
//! here, so `render::filter_config`, `render::Upstream`, … name them.

pub mod envoy;
mod filter;
pub mod istio;
#[cfg(test)]
mod tests;
mod upstream;

pub use self::filter::{credential_env, filter_config, key_service, usable_keys, RenderOptions};
pub use self::upstream::{store_cluster, upstreams, Upstream};

use crate::settings::Settings;
use crate::validate::Validation;
use anyhow::Result;
use layergate_filter::config::FilterConfig;

/// Where a rendering goes, which decides its translation and its writer: the Envoy target
/// (the gateway's files: a directory, or in kube mode the rendering Secret) or the Istio
/// target (Istio resources: files from `render`, or in kube mode server-side applied into the
/// Istio namespace).
#[derive(Debug, Clone, Default)]
pub enum Target {
    /// Envoy's file-based dynamic configuration.
    #[default]
    Envoy,
    /// Istio resources for an ingress gateway.
    Istio(istio::IstioSettings),
}

/// What a target's translation produced.
#[derive(Debug, Clone)]
pub enum Output {
    /// `layergate.json`, `cds.json`, `lds.json`, in the order they must be replaced.
    Envoy(Vec<(&'static str, String)>),
    /// The Istio resources, and the offline patch for the gateway Deployment that fills the
    /// proxy's credential environment from the stores' own Secrets (kube mode fills it from
    /// its one Secret instead, see `istio::gateway_apply`).
    Istio {
        /// WasmPlugin, per store ServiceEntry and DestinationRule, Gateway, VirtualService,
        /// EnvoyFilter.
        resources: Vec<serde_json::Value>,
        /// Strategic-merge patch for the ingress gateway Deployment.
        gateway_patch: serde_json::Value,
        /// The settings they were rendered with (kube mode publishes by them).
        settings: Box<istio::IstioSettings>,
    },
}

/// A rendering: the filter configuration and the target's output.
#[derive(Debug, Clone)]
pub struct Rendering {
    /// The filter configuration (inside the listener, or the WasmPlugin's `pluginConfig`).
    pub config: FilterConfig,
    /// What the writer writes.
    pub output: Output,
}

/// Renders a validation for `target`. `gateway` is the key service's gateway credential: with
/// it and a control API (`settings.control`; for Istio, the target's `control`), the filter
/// syncs minted keys from the operator and the rendering carries none, so its size does not
/// grow with them. Fails (and nothing may be published) when the filter would refuse the
/// configuration.
pub fn render(
    v: &Validation,
    settings: &Settings,
    target: &Target,
    gateway: Option<&str>,
) -> Result<Rendering> {
    let upstreams = upstreams(v, &settings.limits);
    Ok(match target {
        Target::Envoy => {
            let (config, files) = envoy::translate(v, &upstreams, settings, gateway)?;
            Rendering {
                config,
                output: Output::Envoy(files),
            }
        }
        Target::Istio(s) => {
            let (config, resources, gateway_patch) = istio::translate(v, &upstreams, s)?;
            Rendering {
                config,
                output: Output::Istio {
                    resources,
                    gateway_patch,
                    settings: Box::new(s.clone()),
                },
            }
        }
    })
}
