//! The filter's configuration document (SPEC §6): strict serde types, camelCase,
//! `deny_unknown_fields` everywhere, with a `version`. The operator renders exactly these
//! types, so the two can never drift. [`crate::policy::Policy::compile`] turns a parsed
//! document into lookup structures once per `on_configure`.

use crate::scope::Scope;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The only configuration version this build understands.
pub const CONFIG_VERSION: u32 = 1;

/// Default body-inspection limit (16 MiB).
pub const DEFAULT_INSPECT_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// Root of the filter configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterConfig {
    /// Must be [`CONFIG_VERSION`].
    pub version: u32,
    /// The VectorStores this gateway fronts.
    pub stores: Vec<StoreConfig>,
    /// Name of the default store (namespace-less routes, namespaces without an Index).
    /// Absent: requests that need a default store get 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_store: Option<String>,
    /// Upstream namespace → store name, from Index objects.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, String>,
    /// Minted ApiKeys that are usable (Active). Revoked keys are not rendered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Upstream for hev-layer-only routes (`app` target). Absent: those routes answer 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<UpstreamConfig>,
    /// The operator's control API (`control` target). Absent: those routes answer 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<UpstreamConfig>,
    /// Route rules tried before the compiled-in table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteRuleConfig>,
    /// Size limits.
    #[serde(default)]
    pub limits: Limits,
}

/// One VectorStore as the filter sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreConfig {
    /// The VectorStore's name (entitlement target `vectorstore.<name>`).
    pub name: String,
    /// The Envoy cluster serving this store; the filter writes it to `x-layergate-cluster`.
    pub cluster: String,
    /// Upstream `:authority` to set. Absent: the Envoy route's `auto_host_rewrite` sets it from
    /// the cluster endpoint's hostname (one header write fewer per request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Where the store credential comes from.
    pub credential: Credential,
    /// Who may call through this store.
    pub inbound_auth: InboundAuth,
}

/// A secret value: from the wasm VM's environment (preferred) or inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Credential {
    /// Name of an environment variable of the wasm VM (`vm_config.environment_variables`).
    Env(String),
    /// The value itself (keep such configs out of logs; the operator renders these into a Secret).
    Inline(String),
}

/// `inboundAuth` of a VectorStore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "camelCase", deny_unknown_fields)]
pub enum InboundAuth {
    /// Accept the default store's credential (and this store's own) with full scopes.
    DeriveFromStore,
    /// Accept the listed keys with their scopes.
    Keys {
        /// The inbound keys.
        keys: Vec<InboundKey>,
    },
    /// No token needed; full scopes.
    Open,
}

/// One `inboundAuth.keys[]` entry; the token is known only by its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundKey {
    /// Key name (logged as the principal `key:<store>/<name>`).
    pub name: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
}

/// A minted ApiKey (hev layer's model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Stable key id (`status.keyId`).
    pub key_id: String,
    /// The ApiKey's name.
    pub name: String,
    /// `sha256:<hex>` of the token.
    pub lookup_hash: String,
    /// RFC 3339 UTC expiry (`2027-01-01T00:00:00Z`); absent = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Target (`vectorstore.<name>`, `layer`, `agent.<name>`, `warehouse.<name>`) → grant.
    pub entitlements: BTreeMap<String, Entitlement>,
}

/// What one entitlement grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entitlement {
    /// Granted scopes.
    #[serde(default)]
    pub scopes: Vec<Scope>,
    /// Namespace globs (upstream names); absent = `["*"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Opaque claims (`warehouse.*`), carried for the control API only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<String>,
}

/// An upstream cluster for the `app` or `control` target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Envoy cluster name.
    pub cluster: String,
}

/// Scope a config route rule requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeRequirement {
    /// No credential needed.
    None,
    /// `read`.
    Read,
    /// `write`.
    Write,
    /// `admin`.
    Admin,
}

/// Target of a config route rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteTargetConfig {
    /// A store (credential swap).
    Store,
    /// hev layer's app.
    App,
    /// The operator's API.
    Control,
}

/// A route rule: `path` segments are literals, `{ns}` (the namespace), `*` (one segment) or a
/// final `**` (the rest). `method` upper-case, absent or `*` = any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRuleConfig {
    /// HTTP method, or absent for any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path pattern.
    pub path: String,
    /// Required scope.
    pub scope: ScopeRequirement,
    /// Where it goes.
    pub target: RouteTargetConfig,
}

/// Size limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Largest body buffered for inspection (after gzip decompression); 413 beyond.
    #[serde(default = "default_inspect_body_bytes")]
    pub inspect_body_bytes: u64,
}

fn default_inspect_body_bytes() -> u64 {
    DEFAULT_INSPECT_BODY_BYTES
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            inspect_body_bytes: DEFAULT_INSPECT_BODY_BYTES,
        }
    }
}

impl FilterConfig {
    /// Parses a JSON document (strictly: unknown fields are errors).
    pub fn from_json(bytes: &[u8]) -> Result<FilterConfig, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
