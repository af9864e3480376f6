//! Rendering (pure: validated objects in → outputs out), in one place for both targets:
//!
//! ```text
//!  Validation ─► filter_config ─► FilterConfig (checked by the filter's own compiler)
//!             └► upstreams ─────► Upstream per store (host, port, TLS, SAN/SNI, limits)
//!                                   │
//!        Target::Envoy ─► envoy::translate: clusters, listener → Output::Envoy (files)
//!        Target::Istio ─► istio::translate: ServiceEntry, DestinationRule, … → Output::Istio
//! ```
//!
//! [`render`] is the one entry; the writers take its [`Rendering`]: `output::write` (a
//! directory: offline `render`, directory mode), `cluster::Cluster` (kube mode: the rendering
//! Secret, or the Istio resources server-side applied). A configuration the filter would
//! refuse is never returned, so never published.

use crate::crd::InboundMode;
use crate::settings::{Settings, UpstreamLimits};
use crate::validate::Validation;
use anyhow::Result;
use layergate_filter::config::{
    ApiKeyConfig, Credential, FilterConfig, InboundAuth, InboundKey, KeyServiceConfig, Limits,
    StoreConfig, UpstreamConfig, CONFIG_VERSION,
};
use layergate_filter::policy::{ConfigError, Policy};

/// Envoy cluster name for a store: `store_<name>`, keeping `a-z 0-9 -` and writing every
/// other byte as `_` and two hex digits (`prod.eu` → `store_prod_2eeu`). Injective: `_` only
/// ever starts an escape, so two stores never share a cluster (and so never each other's
/// endpoint).
pub fn store_cluster(store: &str) -> String {
    let mut out = String::from("store_");
    for b in store.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => out.push(char::from(b)),
            _ => out.push_str(&format!("_{b:02x}")),
        }
    }
    out
}

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
    Istio(crate::istio::IstioSettings),
}

/// One store as an upstream: the step both targets translate (Envoy: a cluster; Istio: a
/// ServiceEntry, a DestinationRule and VirtualService routes), so the two never derive a
/// store's host, TLS or limits differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The store's name.
    pub store: String,
    /// The cluster the filter routes the store's requests to ([`store_cluster`]).
    pub cluster: String,
    /// The host to connect to and to verify: a DNS name or an IP address, without brackets.
    pub host: String,
    /// The host as the endpoint URL writes it (an IPv6 address in brackets): the
    /// `:authority` Envoy rewrites to.
    pub authority_host: String,
    /// Port.
    pub port: u16,
    /// TLS to the upstream (always, except loopback endpoints for local use). The certificate
    /// must name [`Upstream::host`] as a subject alternative name; SNI is sent for a DNS name.
    pub tls: bool,
    /// Who the upstream is in the gateway's errors (`store "prod-eu"`).
    pub label: String,
    /// Timeouts and connection limits.
    pub limits: UpstreamLimits,
}

impl Upstream {
    /// True when [`Upstream::host`] is an IP address (an IP SAN, no SNI).
    pub fn host_is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }

    /// The SNI to send: the host, when TLS and a DNS name (RFC 6066 allows no IP literal).
    pub fn sni(&self) -> Option<&str> {
        (self.tls && !self.host_is_ip()).then_some(self.host.as_str())
    }
}

/// The upstream of every valid store, in the validation's order, each with the operator's
/// `limits` (one set for every store: `LAYERGATE_UPSTREAM_*`).
pub fn upstreams(v: &Validation, limits: &UpstreamLimits) -> Vec<Upstream> {
    v.stores
        .iter()
        .filter_map(|s| s.valid.as_ref())
        .map(|s| Upstream {
            store: s.name.clone(),
            cluster: store_cluster(&s.name),
            host: s
                .endpoint
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            authority_host: s.endpoint.host.clone(),
            port: s.endpoint.port,
            tls: s.endpoint.tls,
            label: crate::envoy::store_label(&s.name),
            limits: *limits,
        })
        .collect()
}

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
    }
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
    match target {
        Target::Envoy => crate::envoy::translate(v, &upstreams, settings, gateway),
        Target::Istio(s) => crate::istio::translate(v, &upstreams, s),
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
        limits: Limits::default(),
        hosts: options.hosts.clone(),
        key_service: options.key_service.clone(),
    };
    // Never publish what the filter would refuse.
    Policy::compile(&config, |_| None)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names that a lossy mapping would merge: separators, case, the escape characters
    /// themselves, and spellings of an escape.
    const TRICKY: [&str; 14] = [
        "prod-eu",
        "prod.eu",
        "prod_eu",
        "prod--eu",
        "prod-2eeu",
        "prodx2eeu",
        "prod_2eeu",
        "PROD-EU",
        "Prod-eu",
        "prod-eu.",
        "prod-eu-",
        "prodéu",
        "a",
        "a-",
    ];

    #[test]
    fn credential_variables_are_distinct_for_every_store_name() {
        assert_eq!(credential_env("prod-eu"), "LAYERGATE_CREDENTIAL_PROD_EU");
        assert_eq!(credential_env("prod.eu"), "LAYERGATE_CREDENTIAL_PRODx2eEU");
        let names: std::collections::BTreeSet<String> =
            TRICKY.iter().map(|s| credential_env(s)).collect();
        assert_eq!(names.len(), TRICKY.len(), "{names:?}");
        // Every one is a C identifier (what Istio's vmConfig.env and a container's env take).
        for n in &names {
            assert!(
                n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{n}"
            );
        }
    }

    #[test]
    fn store_clusters_are_distinct_for_every_store_name() {
        assert_eq!(
            store_cluster("turbopuffer-default"),
            "store_turbopuffer-default"
        );
        assert_eq!(store_cluster("prod.eu"), "store_prod_2eeu");
        let names: std::collections::BTreeSet<String> =
            TRICKY.iter().map(|s| store_cluster(s)).collect();
        assert_eq!(names.len(), TRICKY.len(), "{names:?}");
    }
}
