//! The filter configuration both translators embed (Envoy: in the listener and
//! `layergate.json`; Istio: the WasmPlugin's `pluginConfig`): [`RenderOptions`] say how the
//! target delivers credentials and keys, [`filter_config`] builds the configuration and refuses
//! what the filter's own compiler would refuse. Below the translators; imports neither.

use super::upstream::store_cluster;
use crate::crd::InboundMode;
use crate::validate::Validation;
use layergate_filter::config::{
    ApiKeyConfig, Credential, FilterConfig, InboundAuth, InboundKey, KeyServiceConfig, Limits,
    StoreConfig, UpstreamConfig, CONFIG_VERSION,
};
use layergate_filter::policy::{ConfigError, Policy};

/// The key service as a rendering names it (SPEC §6): the cluster and `:authority` the
/// filter calls, the gateway credential it sends, and how long minted tokens are judged
/// without a sync; path and poll are the operator's.
pub fn key_service(
    cluster: String,
    authority: Option<String>,
    credential: Credential,
    max_staleness_seconds: u64,
) -> KeyServiceConfig {
    KeyServiceConfig {
        cluster,
        authority,
        path: crate::keyservice::SYNC_PATH.to_owned(),
        credential,
        max_staleness_seconds,
        poll_seconds: crate::keyservice::MAX_WAIT.as_secs(),
        usage_path: layergate_filter::config::DEFAULT_USAGE_PATH.into(),
        report_seconds: layergate_filter::config::DEFAULT_REPORT_SECONDS,
    }
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
    /// The hosts the filter acts for (`FilterConfig::hosts`); empty: every host.
    pub hosts: Vec<String>,
    /// Where the filter syncs minted keys from (the operator's key service, SPEC §6). Set:
    /// the rendering carries no `apiKeys`, so it does not grow with them. Unset (an offline
    /// `render` with no operator to sync from, `check`): the usable keys are inline.
    pub key_service: Option<KeyServiceConfig>,
    /// Gateway processes sharing each key's rate (`limits.gatewayReplicas`).
    pub gateway_replicas: u32,
}

/// The VM environment variable carrying a store's credential when credentials come from the
/// environment: `LAYERGATE_CREDENTIAL_<STORE>`, a C identifier in which `a-z` are upper-cased,
/// digits stay, `-` becomes `_`, and every other byte is written `x` and two lower-case hex
/// digits (`prod-eu` → `…_PROD_EU`, `prod.eu` → `…_PRODx2eEU`). Injective: the literal
/// characters are `A-Z 0-9 _` and a lower-case `x` only ever starts an escape, so two stores
/// never read each other's credential.
pub fn credential_env(store: &str) -> String {
    let mut out = String::from("LAYERGATE_CREDENTIAL_");
    for b in store.bytes() {
        match b {
            b'a'..=b'z' => out.push(char::from(b.to_ascii_uppercase())),
            b'0'..=b'9' => out.push(char::from(b)),
            b'-' => out.push('_'),
            _ => out.push_str(&format!("x{b:02x}")),
        }
    }
    out
}

/// The minted keys a gateway may accept: every valid ApiKey (validation leaves revoked and
/// invalid ones out), what the key service serves.
pub fn usable_keys(v: &Validation) -> Vec<ApiKeyConfig> {
    v.keys.iter().filter_map(|k| k.valid.clone()).collect()
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
                        .map(|(name, scopes, sha256, limits)| InboundKey {
                            name: name.clone(),
                            scopes: scopes.clone(),
                            sha256: sha256.clone(),
                            limits: limits.clone(),
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
    let api_keys: Vec<ApiKeyConfig> = match options.key_service {
        Some(_) => Vec::new(),
        None => usable_keys(v),
    };
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
        limits: Limits {
            gateway_replicas: options.gateway_replicas.max(1),
            ..Limits::default()
        },
        hosts: options.hosts.clone(),
        key_service: options.key_service.clone(),
    };
    // Never publish what the filter would refuse.
    Policy::compile(&config, |_| None)?;
    Ok(config)
}
