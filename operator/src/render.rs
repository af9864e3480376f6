//! Rendering (pure: validated objects in → outputs out). Today: the filter configuration, in
//! the filter crate's own types, checked by the filter's own compiler before it is returned —
//! a configuration the filter would refuse is never published.

use crate::crd::InboundMode;
use crate::validate::Validation;
use layergate_filter::config::{
    ApiKeyConfig, Credential, FilterConfig, InboundAuth, InboundKey, Limits, StoreConfig,
    UpstreamConfig, CONFIG_VERSION,
};
use layergate_filter::policy::{ConfigError, Policy};

/// Envoy cluster name for a store (`store_<name>`, non-alphanumerics as `_`).
pub fn store_cluster(store: &str) -> String {
    let safe: String = store
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("store_{safe}")
}

/// Options that are not part of the objects.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Cluster of the operator's control API, if the gateway routes to it.
    pub control_cluster: Option<String>,
    /// Cluster of hev layer's app, if any.
    pub app_cluster: Option<String>,
    /// Render store credentials as `{env: NAME}` (see [`credential_env`]) instead of inline:
    /// the Istio target, where the proxy's environment supplies them.
    pub credentials_from_env: bool,
}

/// The VM environment variable carrying a store's credential when credentials come from the
/// environment: `LAYERGATE_CREDENTIAL_<STORE>` (upper case, non-alphanumerics as `_`).
pub fn credential_env(store: &str) -> String {
    let safe: String = store
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("LAYERGATE_CREDENTIAL_{safe}")
}

/// Renders the filter configuration from one namespace's validation. Store credentials are
/// inline unless asked otherwise: the rendered output then holds secrets and belongs in a
/// Secret (or a private directory).
pub fn filter_config(v: &Validation, options: &RenderOptions) -> Result<FilterConfig, ConfigError> {
    let stores: Vec<StoreConfig> = v
        .stores
        .iter()
        .filter_map(|s| s.valid.as_ref())
        .map(|s| StoreConfig {
            name: s.name.clone(),
            cluster: store_cluster(&s.name),
            authority: None,
            credential: if options.credentials_from_env {
                Credential::Env(credential_env(&s.name))
            } else {
                Credential::Inline(s.credential.clone())
            },
            inbound_auth: match s.mode {
                InboundMode::DeriveFromStore => InboundAuth::DeriveFromStore,
                InboundMode::Open => InboundAuth::Open,
                InboundMode::Keys => InboundAuth::Keys {
                    keys: s
                        .keys
                        .iter()
                        .map(|(name, scopes, sha256)| InboundKey {
                            name: name.clone(),
                            scopes: scopes.clone(),
                            sha256: sha256.clone(),
                        })
                        .collect(),
                },
            },
        })
        .collect();
    let default_store = v
        .stores
        .iter()
        .filter_map(|s| s.valid.as_ref())
        .find(|s| s.default)
        .map(|s| s.name.clone());
    let namespaces = v.indexes.iter().filter_map(|i| i.valid.clone()).collect();
    let api_keys: Vec<ApiKeyConfig> = v.keys.iter().filter_map(|k| k.valid.clone()).collect();
    let config = FilterConfig {
        version: CONFIG_VERSION,
        stores,
        default_store,
        namespaces,
        api_keys,
        app: options
            .app_cluster
            .clone()
            .map(|cluster| UpstreamConfig { cluster }),
        control: options
            .control_cluster
            .clone()
            .map(|cluster| UpstreamConfig { cluster }),
        routes: Vec::new(),
        limits: Limits::default(),
    };
    // Never publish what the filter would refuse.
    Policy::compile(&config, |_| None)?;
    Ok(config)
}
