//! The compiled configuration: every lookup the request path needs, built once per
//! `on_configure` and shared by reference by all requests of a VM.
//!
//! ```text
//! FilterConfig ──compile──► Policy
//!   stores[]                  stores: Vec<Store>            (index = StoreId)
//!   namespaces{}              namespaces: FastMap<ns, StoreId>
//!   inboundAuth.keys[].sha256 ┐
//!   store credentials         ├► tokens: FastMap<[u8; 32], Grants>
//!   apiKeys[].lookupHash      ┘
//!   apiKeys[].entitlements    keys: Vec<MintedKey> (per-store grants indexed by StoreId)
//! ```

use crate::config::{invalid, Credential, FilterConfig, InboundAuth, CONFIG_VERSION};
pub use crate::config::{token_hash, ConfigError, StoreId};
pub use crate::entitlement::{Grantee, KeyGrants, MintedKey};
use crate::fasthash::{self, FastMap};
use crate::keys::{Freshness, KeyTable};
use crate::namespace::valid_namespace;
use crate::ratelimit::{RateLimits, MAX_REPLICAS};
use crate::route::RouteRule;
use crate::scope::Scopes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// How a store authenticates inbound requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `deriveFromStore`.
    DeriveFromStore,
    /// `keys`.
    Keys,
    /// `open`.
    Open,
}

impl Mode {
    /// The name used in config and messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::DeriveFromStore => "deriveFromStore",
            Mode::Keys => "keys",
            Mode::Open => "open",
        }
    }
}

/// A compiled store.
#[derive(Debug, Clone)]
pub struct Store {
    /// VectorStore name.
    pub name: Box<str>,
    /// Envoy cluster.
    pub cluster: Box<str>,
    /// `:authority` to write, if configured.
    pub authority: Option<Box<str>>,
    /// `Bearer <credential>` ready to write, or the name of the missing environment variable.
    pub bearer: Result<Box<str>, Box<str>>,
    /// Inbound auth mode.
    pub mode: Mode,
    /// Principal name for the store credential (`store:<name>`).
    pub principal: Box<str>,
    /// Names of the inbound keys (`key:<store>/<name>`), indexed by key position.
    pub key_principals: Vec<Box<str>>,
    /// `limits` of the inbound keys, indexed by key position (empty when none has any).
    pub key_limits: Vec<Option<RateLimits>>,
}

/// What a token hash grants; one token may appear in several roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The credential of a store (accepted under `deriveFromStore`).
    StoreCredential(StoreId),
    /// An `inboundAuth.keys[]` entry of a store.
    InboundKey {
        /// The store listing it.
        store: StoreId,
        /// Position in that store's key list.
        key: usize,
        /// Its scopes.
        scopes: Scopes,
    },
    /// A minted ApiKey (index into [`Policy::keys`]).
    Minted(usize),
}

/// The grants one token carries: almost always one, held inline (no allocation per key).
#[derive(Debug, Clone)]
pub enum Grants {
    /// The usual case.
    One(Grant),
    /// A token that is several things at once (say, two stores' inbound key).
    Many(Vec<Grant>),
}

impl Grants {
    /// The grants, in configuration order.
    pub fn as_slice(&self) -> &[Grant] {
        match self {
            Grants::One(g) => std::slice::from_ref(g),
            Grants::Many(v) => v,
        }
    }

    fn push(&mut self, g: Grant) {
        match self {
            Grants::One(first) => *self = Grants::Many(vec![*first, g]),
            Grants::Many(v) => v.push(g),
        }
    }
}

fn add_grant(tokens: &mut FastMap<[u8; 32], Grants>, hash: [u8; 32], g: Grant) {
    match tokens.entry(hash) {
        std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().push(g),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(Grants::One(g));
        }
    }
}

/// The compiled configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Stores by [`StoreId`].
    pub stores: Vec<Store>,
    /// The default store.
    pub default_store: Option<StoreId>,
    /// Upstream namespace → store (from Indexes).
    pub namespaces: FastMap<Box<str>, StoreId>,
    /// SHA-256(token) → grants.
    pub tokens: FastMap<[u8; 32], Grants>,
    /// Minted keys.
    pub keys: Arc<KeyTable>,
    /// Where minted keys are synced from (`keyService`), resolved.
    pub key_service: Option<KeyService>,
    /// `app` target cluster.
    pub app_cluster: Option<Box<str>>,
    /// `control` target cluster.
    pub control_cluster: Option<Box<str>>,
    /// Config route rules, tried first.
    pub rules: Vec<RouteRule>,
    /// `limits.inspectBodyBytes`.
    pub inspect_body_bytes: u64,
    /// `limits.gatewayReplicas`: each key's rate is split across this many gateways.
    pub replicas: u32,
    /// The hosts the filter acts for (lower-case; `*.` prefixed for one-label wildcards);
    /// empty for every host.
    pub hosts: Vec<Box<str>>,
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(())?;
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn valid_cluster(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic())
}

impl Policy {
    /// Parses and compiles a JSON document. `env` reads the wasm VM's environment.
    pub fn from_json(
        bytes: &[u8],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Policy, ConfigError> {
        Policy::compile(&FilterConfig::from_json(bytes)?, env)
    }

    /// Compiles a parsed document, checking everything the request path relies on.
    pub fn compile(
        cfg: &FilterConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Policy, ConfigError> {
        if cfg.version != CONFIG_VERSION {
            return invalid(format!(
                "version {} is not supported; this filter reads version {CONFIG_VERSION}",
                cfg.version
            ));
        }
        if cfg.limits.inspect_body_bytes == 0 {
            return invalid("limits.inspectBodyBytes must be greater than 0");
        }
        if !(1..=MAX_REPLICAS).contains(&cfg.limits.gateway_replicas) {
            return invalid(format!(
                "limits.gatewayReplicas must be between 1 and {MAX_REPLICAS}"
            ));
        }
        let mut tokens: FastMap<[u8; 32], Grants> = fasthash::with_capacity(cfg.api_keys.len() + 8);
        let mut by_name: HashMap<&str, StoreId> = HashMap::new();
        let mut stores = Vec::with_capacity(cfg.stores.len());
        for (id, s) in cfg.stores.iter().enumerate() {
            if s.name.is_empty() || by_name.insert(&s.name, id).is_some() {
                return invalid(format!("store name {:?} is empty or used twice", s.name));
            }
            if !valid_cluster(&s.cluster) {
                return invalid(format!(
                    "store {:?}: cluster {:?} is not a valid Envoy cluster name",
                    s.name, s.cluster
                ));
            }
            let secret = match &s.credential {
                Credential::Inline(v) => Some(v.clone()),
                Credential::Env(var) => env(var),
            }
            .filter(|v| !v.is_empty());
            let bearer = match (&secret, &s.credential) {
                (Some(v), _) => Ok(format!("Bearer {v}").into_boxed_str()),
                (None, Credential::Env(var)) => Err(var.clone().into_boxed_str()),
                (None, Credential::Inline(_)) => {
                    return invalid(format!("store {:?}: credential.inline is empty", s.name));
                }
            };
            if let Some(v) = &secret {
                add_grant(
                    &mut tokens,
                    token_hash(v.as_bytes()),
                    Grant::StoreCredential(id),
                );
            }
            let mut key_limits = Vec::new();
            let (mode, mut key_principals) = match &s.inbound_auth {
                InboundAuth::DeriveFromStore => (Mode::DeriveFromStore, Vec::new()),
                InboundAuth::Open => (Mode::Open, Vec::new()),
                InboundAuth::Keys { keys } => (Mode::Keys, Vec::with_capacity(keys.len())),
            };
            if let InboundAuth::Keys { keys } = &s.inbound_auth {
                let mut seen = HashSet::new();
                for (k, key) in keys.iter().enumerate() {
                    if key.name.is_empty() || !seen.insert(key.name.as_str()) {
                        return invalid(format!(
                            "store {:?}: inbound key name {:?} is empty or used twice",
                            s.name, key.name
                        ));
                    }
                    let Some(hash) = parse_hex32(&key.sha256) else {
                        return invalid(format!(
                            "store {:?}: key {:?}: sha256 must be 64 lower-case hex digits",
                            s.name, key.name
                        ));
                    };
                    if key.scopes.is_empty() {
                        return invalid(format!(
                            "store {:?}: key {:?} has no scopes",
                            s.name, key.name
                        ));
                    }
                    add_grant(
                        &mut tokens,
                        hash,
                        Grant::InboundKey {
                            store: id,
                            key: k,
                            scopes: Scopes::from_slice(&key.scopes),
                        },
                    );
                    key_principals.push(format!("key:{}/{}", s.name, key.name).into_boxed_str());
                    if let Some(l) = &key.limits {
                        if let Err(m) = l.check() {
                            return invalid(format!("store {:?}: key {:?}: {m}", s.name, key.name));
                        }
                        key_limits.resize(k, None);
                        key_limits.push(Some(l.clone()));
                    }
                }
            }
            stores.push(Store {
                name: s.name.as_str().into(),
                cluster: s.cluster.as_str().into(),
                authority: s.authority.as_deref().map(Into::into),
                bearer,
                mode,
                principal: format!("store:{}", s.name).into_boxed_str(),
                key_principals,
                key_limits,
            });
        }
        let default_store = match &cfg.default_store {
            None => None,
            Some(name) => match by_name.get(name.as_str()) {
                Some(&id) => Some(id),
                None => return invalid(format!("defaultStore {name:?} is not one of the stores")),
            },
        };
        let mut namespaces = fasthash::with_capacity(cfg.namespaces.len());
        for (ns, store) in &cfg.namespaces {
            if !valid_namespace(ns) {
                return invalid(format!("namespaces: {ns:?} is not a valid namespace name"));
            }
            let Some(&id) = by_name.get(store.as_str()) else {
                return invalid(format!(
                    "namespaces: {ns:?} maps to unknown store {store:?}"
                ));
            };
            namespaces.insert(ns.as_str().into(), id);
        }
        let keys = match &cfg.key_service {
            Some(_) if !cfg.api_keys.is_empty() => {
                return invalid(
                    "apiKeys and keyService are exclusive: with a key service, minted keys come only from it",
                )
            }
            Some(ks) => KeyTable::awaiting_sync(Arc::new(Freshness::new(ks.max_staleness_seconds))),
            None => KeyTable::from_keys(&cfg.api_keys, &by_name, stores.len())?,
        };
        let key_service = cfg
            .key_service
            .as_ref()
            .map(|ks| KeyService::compile(ks, &env))
            .transpose()?;
        let rules = cfg
            .routes
            .iter()
            .map(RouteRule::compile)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::Invalid)?;
        let upstream = |u: &Option<crate::config::UpstreamConfig>, what: &str| match u {
            None => Ok(None),
            Some(u) if valid_cluster(&u.cluster) => Ok(Some(u.cluster.as_str().into())),
            Some(u) => invalid(format!(
                "{what}.cluster {:?} is not a valid Envoy cluster name",
                u.cluster
            )),
        };
        Ok(Policy {
            stores,
            default_store,
            namespaces,
            tokens,
            keys: Arc::new(keys),
            key_service,
            app_cluster: upstream(&cfg.app, "app")?,
            control_cluster: upstream(&cfg.control, "control")?,
            rules,
            inspect_body_bytes: cfg.limits.inspect_body_bytes,
            replicas: cfg.limits.gateway_replicas,
            hosts: cfg
                .hosts
                .iter()
                .map(|h| compile_host(h))
                .collect::<Result<_, _>>()?,
        })
    }

    /// True when the filter acts for a request to `authority` (`host[:port]`): every host when
    /// no hosts are configured, else an exact name or a one-label `*.` wildcard, compared
    /// case-insensitively without the port.
    pub fn serves_host(&self, authority: &str) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        let host = match authority.rsplit_once(':') {
            // `[::1]:8080`, `name:8080`; a bare IPv6 literal has no brackets to split after.
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
            _ => authority,
        };
        self.hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host.split_once('.').is_some_and(|(label, rest)| {
                    !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
                }),
                None => host.eq_ignore_ascii_case(pattern),
            })
    }

    /// Store name → id, as key compilation wants it.
    pub fn store_ids(&self) -> HashMap<&str, StoreId> {
        self.stores
            .iter()
            .enumerate()
            .map(|(id, s)| (&*s.name, id))
            .collect()
    }

    /// This policy with another key table (a key-service sync): everything else shared.
    pub fn with_keys(&self, keys: KeyTable) -> Policy {
        Policy {
            keys: Arc::new(keys),
            ..self.clone()
        }
    }

    /// The store serving an upstream namespace: its Index's store, else the default.
    pub fn store_for(&self, ns: Option<&str>) -> Option<StoreId> {
        ns.and_then(|ns| self.namespaces.get(ns).copied())
            .or(self.default_store)
    }
}

/// The key service, resolved from `keyService` (SPEC §6).
#[derive(Debug, Clone)]
pub struct KeyService {
    /// Envoy cluster of the operator's control port.
    pub cluster: Box<str>,
    /// `:authority` sent.
    pub authority: Box<str>,
    /// Sync path.
    pub path: Box<str>,
    /// `Bearer <gateway credential>`, or the environment variable that is not set.
    pub bearer: Result<Box<str>, Box<str>>,
    /// Long-poll hold asked for (≤ 30 s).
    pub poll_seconds: u64,
    /// Where usage reports go.
    pub usage_path: Box<str>,
    /// Seconds between a VM's usage reports.
    pub report_seconds: u64,
}

impl KeyService {
    fn compile(
        ks: &crate::config::KeyServiceConfig,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<KeyService, ConfigError> {
        if !valid_cluster(&ks.cluster) {
            return invalid(format!(
                "keyService.cluster {:?} is not a valid Envoy cluster name",
                ks.cluster
            ));
        }
        for (field, path) in [("path", &ks.path), ("usagePath", &ks.usage_path)] {
            if !path.starts_with('/') || path.contains(['?', '#']) {
                return invalid(format!(
                    "keyService.{field} {path:?} must start with '/' and carry no query"
                ));
            }
        }
        if ks.max_staleness_seconds == 0 || ks.poll_seconds == 0 || ks.poll_seconds > 30 {
            return invalid(
                "keyService: maxStalenessSeconds must be > 0 and pollSeconds between 1 and 30",
            );
        }
        if !(1..=60).contains(&ks.report_seconds) {
            return invalid("keyService.reportSeconds must be between 1 and 60");
        }
        let bearer = match &ks.credential {
            Credential::Inline(v) if v.is_empty() => {
                return invalid("keyService.credential.inline is empty")
            }
            Credential::Inline(v) => Ok(format!("Bearer {v}").into_boxed_str()),
            Credential::Env(var) => match env(var).filter(|v| !v.is_empty()) {
                Some(v) => Ok(format!("Bearer {v}").into_boxed_str()),
                None => Err(var.as_str().into()),
            },
        };
        Ok(KeyService {
            cluster: ks.cluster.as_str().into(),
            authority: ks.authority.as_deref().unwrap_or(&ks.cluster).into(),
            path: ks.path.as_str().into(),
            bearer,
            poll_seconds: ks.poll_seconds,
            usage_path: ks.usage_path.as_str().into(),
            report_seconds: ks.report_seconds,
        })
    }
}

/// A `hosts[]` entry: a DNS name or IP literal, or `*.` and a DNS name; lower-cased.
fn compile_host(h: &str) -> Result<Box<str>, ConfigError> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !ok {
        return invalid(format!(
            "hosts entry {h:?} is not a host name, an IP literal or '*.' and a host name"
        ));
    }
    Ok(h.to_ascii_lowercase().into_boxed_str())
}
