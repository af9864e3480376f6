//! The filter's configuration document (SPEC §6): strict serde types, camelCase,
//! `deny_unknown_fields` everywhere, with a `version`. The operator renders exactly these
//! types, so the two can never drift. [`crate::policy::Policy::compile`] turns a parsed
//! document into lookup structures once per `on_configure`.

pub use crate::digest::{token_hash, LookupHash};
pub use crate::ratelimit::RateLimits;
use crate::scope::Scope;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod key_service;
pub use key_service::*;

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
    /// Minted ApiKeys that are usable (Active), for hand-written configurations. Revoked keys
    /// are not listed. Not allowed together with [`FilterConfig::key_service`]: with a key
    /// service, minted keys come only from it (SPEC §6), and the rendering no longer grows
    /// with their number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Where the filter syncs minted keys from: the operator's key service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_service: Option<KeyServiceConfig>,
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
    /// The hosts this filter acts for, compared case-insensitively with the request's
    /// `:authority` without its port: exact names (`vectors.example.com`) or one-label
    /// wildcards (`*.example.com`). Empty (the default): every host, as on a gateway that
    /// serves only layergate. On a shared Istio ingress gateway the operator lists the
    /// `Gateway`'s hosts, and a request for any other host must pass through untouched: no
    /// authentication, no routing header, no credential.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
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

/// A secret value: from the filter's environment (preferred; the wasm VM's, or Envoy's own for
/// the native build) or inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Credential {
    /// Name of an environment variable: the wasm VM's (`vm_config.environment_variables`), or
    /// Envoy's own for the native build.
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
    /// Rate limit (and quotas) of this key; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RateLimits>,
}

/// Longest `owner` of a minted key, in bytes: the audit line stays bounded.
pub const MAX_OWNER_BYTES: usize = 256;

/// Longest `keyId` and `name` of a minted key, in bytes (a Kubernetes object name is at most
/// 253 characters; the operator's keyIds are 36).
pub const MAX_KEY_NAME_BYTES: usize = 253;

/// A minted ApiKey (hev layer's model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Stable key id (`status.keyId`).
    pub key_id: String,
    /// The ApiKey's name.
    pub name: String,
    /// Who the key is for (the ApiKey's `spec.owner`), written in the audit line; at most
    /// [`MAX_OWNER_BYTES`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// SHA-256 of the token, written `sha256:<64 lower-case hex>`.
    pub lookup_hash: LookupHash,
    /// RFC 3339 UTC expiry (`2027-01-01T00:00:00Z`); absent = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Target (`vectorstore.<name>`, `layer`, `agent.<name>`, `warehouse.<name>`) → grant.
    pub entitlements: Entitlements,
    /// The token this key had before its last rotation, accepted until its overlap ends
    /// (layergate's rotation; absent when no overlap is running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousToken>,
    /// Rate limit and quotas (layergate's `spec.limits`); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RateLimits>,
    /// RFC 3339 UTC: the key spent a quota and is refused (429) until then, the end of the
    /// quota's period, by the filter's own clock (set by the operator from the gateways'
    /// usage reports; absent: no quota spent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_spent_until: Option<String>,
}

/// A rotated key's previous token: the same key (keyId, entitlements, expiry) until `until`,
/// judged by the filter's own clock, so it is refused at `until` even if no sync arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviousToken {
    /// SHA-256 of the previous token, written `sha256:<64 lower-case hex>`.
    pub lookup_hash: LookupHash,
    /// RFC 3339 UTC end of the overlap: from then on the previous token is refused.
    pub until: String,
}

/// An ApiKey's entitlements: a JSON object of target → grant, held as a vector sorted by
/// target. A key has one to three targets; a `BTreeMap` would allocate a whole B-tree node
/// (about 1 KiB) for each of them, which at 100,000 keys is most of a VM's memory while the
/// configuration is read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entitlements(Vec<(String, Entitlement)>);

impl Entitlements {
    /// (target, grant) pairs, sorted by target.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entitlement)> {
        self.0.iter().map(|(t, e)| (t, e))
    }

    /// The grant for `target`.
    pub fn get(&self, target: &str) -> Option<&Entitlement> {
        self.0
            .binary_search_by(|(t, _)| t.as_str().cmp(target))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no target.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, Entitlement)> for Entitlements {
    /// Sorted by target; a later duplicate replaces an earlier one, as in a map.
    fn from_iter<I: IntoIterator<Item = (String, Entitlement)>>(iter: I) -> Entitlements {
        let map: BTreeMap<String, Entitlement> = iter.into_iter().collect();
        Entitlements(map.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Entitlements {
    type Item = (&'a String, &'a Entitlement);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Entitlement)>,
        fn(&'a (String, Entitlement)) -> (&'a String, &'a Entitlement),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(t, e)| (t, e))
    }
}

impl Serialize for Entitlements {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(t, e)| (t, e)))
    }
}

impl<'de> Deserialize<'de> for Entitlements {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Entitlements, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entitlements;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of target → entitlement")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entitlements, A::Error> {
                let mut v: Vec<(String, Entitlement)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(1).min(16));
                while let Some((t, e)) = map.next_entry::<String, Entitlement>()? {
                    v.push((t, e));
                }
                v.sort_by(|a, b| a.0.cmp(&b.0));
                if let Some(w) = v.windows(2).find(|w| w[0].0 == w[1].0) {
                    return Err(serde::de::Error::custom(format!(
                        "entitlement target {:?} appears twice",
                        w[0].0
                    )));
                }
                v.shrink_to_fit();
                Ok(Entitlements(v))
            }
        }
        d.deserialize_map(Visitor)
    }
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
    /// Gateway processes sharing each key's rate: each enforces `1/gatewayReplicas` of it.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub gateway_replicas: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn default_inspect_body_bytes() -> u64 {
    DEFAULT_INSPECT_BODY_BYTES
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            inspect_body_bytes: DEFAULT_INSPECT_BODY_BYTES,
            gateway_replicas: 1,
        }
    }
}

impl FilterConfig {
    /// Parses a JSON document (strictly: unknown fields are errors).
    pub fn from_json(bytes: &[u8]) -> Result<FilterConfig, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Index of a store in `Policy::stores`.
pub type StoreId = usize;

/// Why a configuration was refused (the filter then refuses `on_configure`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, or not the documented shape.
    #[error("filter configuration is not valid: {0}")]
    Parse(serde_json::Error),
    /// A field has a value the filter cannot use.
    #[error("filter configuration is not valid: {0}")]
    Invalid(String),
}

impl From<serde_json::Error> for ConfigError {
    fn from(e: serde_json::Error) -> Self {
        ConfigError::Parse(e)
    }
}

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(msg.into()))
}
