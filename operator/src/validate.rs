//! Validation of one namespace's objects (SPEC §7), as pure functions: objects in, a verdict
//! and conditions per object out. Nothing here talks to Kubernetes or the network.

use crate::conditions::{self, condition, reason};
use crate::crd::{ApiKey, ApiKeyPhase, InboundMode, Index, StoreKind, VectorStore};
use crate::manifests::{Objects, Secrets};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use layergate_filter::config::{ApiKeyConfig, Entitlement};
use layergate_filter::glob::NamespaceGlob;
use layergate_filter::route::valid_namespace;
use layergate_filter::scope::Scope;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Default ApiKey lifetime.
pub const DEFAULT_EXPIRES_AFTER: &str = "365d";

/// A store endpoint, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEndpoint {
    /// True for https.
    pub tls: bool,
    /// Host name or IP.
    pub host: String,
    /// Port (443/80 when omitted).
    pub port: u16,
}

/// A store that passed validation, with its secrets resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidStore {
    /// VectorStore name.
    pub name: String,
    /// True for the default store.
    pub default: bool,
    /// Where it lives.
    pub endpoint: StoreEndpoint,
    /// The store credential (never logged).
    pub credential: String,
    /// Where the credential comes from: (Secret name, key).
    pub credential_ref: (String, String),
    /// Inbound auth mode.
    pub mode: InboundMode,
    /// Inbound keys: name, scopes, SHA-256 hex of the token.
    pub keys: Vec<(String, Vec<Scope>, String)>,
}

/// Verdict on one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict<T> {
    /// Object name.
    pub name: String,
    /// Conditions to publish.
    pub conditions: Vec<Condition>,
    /// What the rendering uses; `None` when the object is left out.
    pub valid: Option<T>,
}

/// Everything validated in one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// Stores.
    pub stores: Vec<Verdict<ValidStore>>,
    /// Indexes: upstream namespace → store name.
    pub indexes: Vec<Verdict<(String, String)>>,
    /// ApiKeys: the filter's view of usable keys, plus phase.
    pub keys: Vec<Verdict<ApiKeyConfig>>,
    /// Phases of the ApiKeys, by name.
    pub phases: BTreeMap<String, ApiKeyPhase>,
}

impl Validation {
    /// Every object's conditions: (kind, name, conditions), stores then indexes then keys.
    pub fn conditions(&self) -> impl Iterator<Item = (&'static str, &str, &[Condition])> {
        let stores = self
            .stores
            .iter()
            .map(|x| ("vectorstore", x.name.as_str(), x.conditions.as_slice()));
        let indexes = self
            .indexes
            .iter()
            .map(|x| ("index", x.name.as_str(), x.conditions.as_slice()));
        let keys = self
            .keys
            .iter()
            .map(|x| ("apikey", x.name.as_str(), x.conditions.as_slice()));
        stores.chain(indexes).chain(keys)
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn secret<'a>(
    secrets: &'a Secrets,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<&'a str, (&'static str, String)> {
    let Some(data) = secrets.get(&(ns.to_owned(), name.to_owned())) else {
        return Err((
            reason::SECRET_NOT_FOUND,
            format!("Secret {ns}/{name} not found; create it with the key {key:?}"),
        ));
    };
    match data.get(key).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err((
            reason::SECRET_KEY_MISSING,
            format!("Secret {ns}/{name} has no non-empty key {key:?}"),
        )),
    }
}

/// Parses `https://host[:port][/]`; plain http only for loopback hosts (local use).
pub fn parse_endpoint(url: &str) -> Result<StoreEndpoint, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("endpoint.url {url:?} must start with https://"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("endpoint.url {url:?} must be a base URL (scheme://host[:port]) without path, query or credentials"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) if p > 0 => (h.to_owned(), p),
            _ => return Err(format!("endpoint.url {url:?} has an invalid port")),
        },
        _ => (authority.to_owned(), if tls { 443 } else { 80 }),
    };
    let loopback = matches!(host.as_str(), "localhost" | "[::1]") || host.starts_with("127.");
    if !tls && !loopback {
        return Err(format!("endpoint.url {url:?} must use https (plain http is allowed only for loopback, for local use)"));
    }
    Ok(StoreEndpoint { tls, host, port })
}

/// Parses `365d`, `12h`, `30m`, `45s` into seconds; `never` → `None`.
pub fn parse_duration(s: &str) -> Result<Option<i64>, String> {
    if s == "never" {
        return Ok(None);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("expiresAfter {s:?} must be like 365d, 12h, 30m, 45s or never"))?;
    let mult = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => {
            return Err(format!(
                "expiresAfter {s:?} must end in d, h, m or s (or be never)"
            ))
        }
    };
    if n <= 0 {
        return Err(format!("expiresAfter {s:?} must be positive"));
    }
    Ok(Some(n * mult))
}

/// Formats Unix seconds as RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn created_at(meta: &kube::core::ObjectMeta, now: i64) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0.as_second())
}

/// Validates one namespace's objects. `now` is Unix seconds.
pub fn validate(objects: &Objects, namespace: &str, now: i64) -> Validation {
    let in_ns = |m: &kube::core::ObjectMeta| {
        m.namespace
            .as_deref()
            .unwrap_or(crate::manifests::DEFAULT_NAMESPACE)
            == namespace
    };
    let stores: Vec<&VectorStore> = objects
        .stores
        .iter()
        .filter(|s| in_ns(&s.metadata))
        .collect();
    let defaults = stores
        .iter()
        .filter(|s| s.spec.default == Some(true))
        .count();
    let store_verdicts: Vec<Verdict<ValidStore>> = stores
        .iter()
        .map(|s| validate_store(s, namespace, &objects.secrets, defaults, stores.len(), now))
        .collect();
    let indexes: Vec<&Index> = objects
        .indexes
        .iter()
        .filter(|i| in_ns(&i.metadata))
        .collect();
    let index_verdicts = validate_indexes(&indexes, &store_verdicts, now);
    let mut phases = BTreeMap::new();
    let key_verdicts = objects
        .keys
        .iter()
        .filter(|k| in_ns(&k.metadata))
        .map(|k| {
            let (verdict, phase) = validate_key(k, namespace, objects, &store_verdicts, now);
            phases.insert(verdict.name.clone(), phase);
            verdict
        })
        .collect();
    Validation {
        stores: store_verdicts,
        indexes: index_verdicts,
        keys: key_verdicts,
        phases,
    }
}

fn validate_store(
    s: &VectorStore,
    ns: &str,
    secrets: &Secrets,
    defaults: usize,
    count: usize,
    now: i64,
) -> Verdict<ValidStore> {
    let name = s.metadata.name.clone().unwrap_or_default();
    let generation = s.metadata.generation;
    let fail = |r: &str, m: String| Verdict {
        name: name.clone(),
        conditions: vec![condition(conditions::READY, false, r, m, generation, now)],
        valid: None,
    };
    if s.spec.kind == StoreKind::Pinecone {
        return fail(
            reason::UNSUPPORTED_KIND,
            "kind pinecone is reserved but not supported yet; use kind: turbopuffer".into(),
        );
    }
    let endpoint = match parse_endpoint(&s.spec.endpoint.url) {
        Ok(e) => e,
        Err(m) => return fail(reason::INVALID_ENDPOINT, m),
    };
    if let Some(region) = &s.spec.endpoint.region {
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail(
                reason::INVALID_ENDPOINT,
                format!("endpoint.region {region:?} must be lower-case letters, digits and '-'"),
            );
        }
    }
    if s.spec.default == Some(true) && defaults > 1 {
        return fail(
            reason::MULTIPLE_DEFAULTS,
            format!("{defaults} VectorStores in {ns} say default: true; keep exactly one"),
        );
    }
    let cred = &s.spec.credential.secret_ref;
    let credential = match secret(secrets, ns, &cred.name, &cred.key) {
        Ok(v) => v.to_owned(),
        Err((r, m)) => return fail(r, format!("credential: {m}")),
    };
    let auth = s.spec.inbound_auth.clone().unwrap_or_default();
    if auth.mode != InboundMode::Keys && !auth.keys.is_empty() {
        return fail(
            reason::INVALID_INBOUND_AUTH,
            "inboundAuth.keys is only allowed with mode: keys".into(),
        );
    }
    let mut keys = Vec::new();
    for k in &auth.keys {
        if k.name.is_empty() || keys.iter().any(|(n, _, _): &(String, _, _)| *n == k.name) {
            return fail(
                reason::INVALID_INBOUND_AUTH,
                format!("inboundAuth.keys: name {:?} is empty or used twice", k.name),
            );
        }
        let mut scopes = k.scopes.clone();
        scopes.sort_by_key(|s| s.as_str());
        scopes.dedup();
        if scopes.is_empty() {
            return fail(
                reason::INVALID_INBOUND_AUTH,
                format!(
                    "inboundAuth.keys {:?}: scopes must list read, write and/or admin",
                    k.name
                ),
            );
        }
        let token = match secret(secrets, ns, &k.secret_ref.name, &k.secret_ref.key) {
            Ok(v) => v,
            Err((r, m)) => return fail(r, format!("inboundAuth.keys {:?}: {m}", k.name)),
        };
        keys.push((k.name.clone(), scopes, sha256_hex(token)));
    }
    let default = s.spec.default == Some(true) || (defaults == 0 && count == 1);
    Verdict {
        name: name.clone(),
        conditions: vec![condition(
            conditions::READY,
            true,
            reason::VALID,
            "spec and Secrets are valid",
            generation,
            now,
        )],
        valid: Some(ValidStore {
            name,
            default,
            endpoint,
            credential,
            credential_ref: (cred.name.clone(), cred.key.clone()),
            mode: auth.mode,
            keys,
        }),
    }
}

fn validate_indexes(
    indexes: &[&Index],
    stores: &[Verdict<ValidStore>],
    now: i64,
) -> Vec<Verdict<(String, String)>> {
    let default = stores
        .iter()
        .filter_map(|s| s.valid.as_ref())
        .find(|s| s.default)
        .map(|s| s.name.clone());
    // The older Index (creationTimestamp, then name) wins a contested namespace.
    let mut order: Vec<&Index> = indexes.to_vec();
    order.sort_by_key(|i| (created_at(&i.metadata, now), i.metadata.name.clone()));
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    order
        .into_iter()
        .map(|i| {
            let name = i.metadata.name.clone().unwrap_or_default();
            let generation = i.metadata.generation;
            let verdict = |ok, r: &str, m: String, valid| Verdict {
                name: name.clone(),
                conditions: vec![condition(conditions::READY, ok, r, m, generation, now)],
                valid,
            };
            let upstream = i.spec.backend.namespace.clone().unwrap_or_else(|| name.clone());
            if !valid_namespace(&upstream) {
                return verdict(false, reason::INVALID_NAMESPACE, format!("upstream namespace {upstream:?} must be 1-128 characters of A-Z a-z 0-9 _ - ."), None);
            }
            let store = match &i.spec.backend.store_ref {
                Some(s) if stores.iter().any(|v| v.name == *s && v.valid.is_some()) => s.clone(),
                Some(s) => return verdict(false, reason::STORE_NOT_FOUND, format!("backend.storeRef {s:?} is not a valid VectorStore in this namespace"), None),
                None => match &default {
                    Some(d) => d.clone(),
                    None => return verdict(false, reason::STORE_NOT_FOUND, "no backend.storeRef and no default VectorStore".into(), None),
                },
            };
            if let Some(winner) = owners.get(&upstream) {
                return verdict(false, reason::CONFLICT, format!("Index {winner:?} already routes namespace {upstream:?}; it is older, so it wins"), None);
            }
            owners.insert(upstream.clone(), name.clone());
            verdict(true, reason::VALID, format!("namespace {upstream:?} is served by store {store:?}"), Some((upstream, store)))
        })
        .collect()
}

/// A key's stable id: from its uid in a cluster, else from namespace and name.
pub fn key_id(k: &ApiKey, ns: &str) -> String {
    match &k.metadata.uid {
        Some(uid) => format!("key_{}", uid.replace('-', "")),
        None => format!(
            "key_{}",
            &sha256_hex(&format!(
                "{ns}/{}",
                k.metadata.name.as_deref().unwrap_or_default()
            ))[..24]
        ),
    }
}

fn validate_key(
    k: &ApiKey,
    ns: &str,
    objects: &Objects,
    stores: &[Verdict<ValidStore>],
    now: i64,
) -> (Verdict<ApiKeyConfig>, ApiKeyPhase) {
    let secrets = &objects.secrets;
    let name = k.metadata.name.clone().unwrap_or_default();
    let generation = k.metadata.generation;
    let out = |phase, r: &str, m: String, extra: Vec<Condition>, valid: Option<ApiKeyConfig>| {
        let mut conditions = vec![condition(
            conditions::READY,
            valid.is_some(),
            r,
            m,
            generation,
            now,
        )];
        conditions.extend(extra);
        (
            Verdict {
                name: name.clone(),
                conditions,
                valid,
            },
            phase,
        )
    };
    let mut entitlements = BTreeMap::new();
    let mut missing = Vec::new();
    for (target, e) in &k.spec.entitlements {
        let named = |p: &str| target.strip_prefix(p).filter(|n| !n.is_empty());
        let store = named("vectorstore.");
        if !(store.is_some()
            || target == "layer"
            || named("agent.").is_some()
            || named("warehouse.").is_some())
        {
            return out(ApiKeyPhase::Pending, reason::INVALID_SPEC, format!("entitlement {target:?}: targets are vectorstore.<name>, layer, agent.<name> or warehouse.<name>"), vec![], None);
        }
        for g in e.namespaces.iter().flatten() {
            if let Err(err) = NamespaceGlob::new(g) {
                return out(
                    ApiKeyPhase::Pending,
                    reason::INVALID_SPEC,
                    format!("entitlement {target:?}: {err}"),
                    vec![],
                    None,
                );
            }
        }
        if let Some(s) = store {
            if !stores.iter().any(|v| v.name == s) {
                missing.push(target.clone());
            }
        }
        entitlements.insert(
            target.clone(),
            Entitlement {
                scopes: e.scopes.clone(),
                namespaces: e.namespaces.clone(),
                claims: e.claims.clone(),
            },
        );
    }
    let extra = if missing.is_empty() {
        vec![condition(
            conditions::ENTITLEMENT_TARGET_MISSING,
            false,
            reason::VALID,
            "every entitlement target exists",
            generation,
            now,
        )]
    } else {
        vec![condition(
            conditions::ENTITLEMENT_TARGET_MISSING,
            true,
            reason::TARGET_MISSING,
            format!(
                "{} name stores that do not exist; they grant nothing",
                missing.join(", ")
            ),
            generation,
            now,
        )]
    };
    let lifetime = match parse_duration(
        k.spec
            .expires_after
            .as_deref()
            .unwrap_or(DEFAULT_EXPIRES_AFTER),
    ) {
        Ok(l) => l,
        Err(m) => return out(ApiKeyPhase::Pending, reason::INVALID_SPEC, m, extra, None),
    };
    if k.spec.revoked == Some(true) {
        return out(
            ApiKeyPhase::Revoked,
            reason::REVOKED,
            "revoked; the gateway no longer accepts this key".into(),
            extra,
            None,
        );
    }
    let source = k
        .spec
        .token_secret_ref
        .clone()
        .unwrap_or(crate::crd::SecretKeyRef {
            name: format!("apikey-{name}"),
            key: "token".into(),
        });
    // Creation time: the object's, else when the operator minted its token (directory mode),
    // else now (a pre-provisioned token without either: its lifetime starts at every start).
    let created = match &k.metadata.creation_timestamp {
        Some(t) => t.0.as_second(),
        None => objects
            .minted_at
            .get(&(ns.to_owned(), source.name.clone()))
            .copied()
            .unwrap_or(now),
    };
    let expires = lifetime.map(|l| created + l);
    if expires.is_some_and(|e| e <= now) {
        return out(
            ApiKeyPhase::Expired,
            reason::EXPIRED,
            format!(
                "expired at {}; mint a new key",
                rfc3339(expires.unwrap_or_default())
            ),
            extra,
            None,
        );
    }
    let token = match secret(secrets, ns, &source.name, &source.key) {
        Ok(t) => t,
        Err((_, m)) => {
            return out(
                ApiKeyPhase::Pending,
                reason::NOT_MINTED,
                format!("no token yet: {m}"),
                extra,
                None,
            )
        }
    };
    let config = ApiKeyConfig {
        key_id: key_id(k, ns),
        name: name.clone(),
        lookup_hash: layergate_filter::config::LookupHash::of(token),
        expires_at: expires.map(rfc3339),
        entitlements: entitlements.into_iter().collect(),
    };
    out(
        ApiKeyPhase::Active,
        reason::VALID,
        "active".into(),
        extra,
        Some(config),
    )
}

/// While the operator runs, an object that becomes invalid keeps its last valid form (and its
/// condition says so); objects that were deleted, revoked or expired are really gone. An
/// Index keeps its last form only while its store is still rendered.
pub fn keep_last_valid(current: &mut Validation, previous: &Validation) {
    fn carry<T: Clone>(
        now: &mut [Verdict<T>],
        before: &[Verdict<T>],
        allowed: impl Fn(&Verdict<T>, &T) -> bool,
    ) {
        for v in now.iter_mut().filter(|v| v.valid.is_none()) {
            let Some(last) = before
                .iter()
                .find(|b| b.name == v.name)
                .and_then(|b| b.valid.clone())
            else {
                continue;
            };
            if !allowed(v, &last) {
                continue;
            }
            for c in v
                .conditions
                .iter_mut()
                .filter(|c| c.type_ == conditions::READY)
            {
                c.message.push_str(
                    " (the gateway keeps this object's last valid form until it is fixed)",
                );
            }
            v.valid = Some(last);
        }
    }
    let is_error = |v: &[Condition]| {
        v.iter().any(|c| {
            c.type_ == conditions::READY
                && ![reason::REVOKED, reason::EXPIRED, reason::CONFLICT]
                    .contains(&c.reason.as_str())
        })
    };
    carry(&mut current.stores, &previous.stores, |v, _| {
        is_error(&v.conditions)
    });
    let stores: Vec<String> = current
        .stores
        .iter()
        .filter(|s| s.valid.is_some())
        .map(|s| s.name.clone())
        .collect();
    carry(&mut current.indexes, &previous.indexes, |v, (_, store)| {
        is_error(&v.conditions) && stores.contains(store)
    });
    carry(&mut current.keys, &previous.keys, |v, _| {
        v.conditions
            .iter()
            .any(|c| c.type_ == conditions::READY && c.reason == reason::INVALID_SPEC)
    });
    for k in current.keys.iter().filter(|k| k.valid.is_some()) {
        current.phases.insert(k.name.clone(), ApiKeyPhase::Active);
    }
}
