//! Validation of one namespace's objects (SPEC §7), as pure functions: objects in, a verdict
//! and conditions per object out. Nothing here talks to Kubernetes or the network.

use crate::conditions::{self, condition, reason};
use crate::crd::{ApiKey, ApiKeyPhase, InboundMode, Index, StoreKind, VectorStore};
use crate::manifests::Objects;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use layergate_filter::config::{ApiKeyConfig, Entitlement};
use layergate_filter::entitlement::{self, Target};
use layergate_filter::route::valid_namespace;
use layergate_filter::scope::Scope;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Default ApiKey lifetime.
pub const DEFAULT_EXPIRES_AFTER: &str = "365d";

pub use crate::endpoint::{parse_endpoint, Allowlist, StoreEndpoint};
/// Key lifetimes are parsed by the filter crate's own parser (one validation).
pub use layergate_filter::time::parse_duration;

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
    objects: &'a Objects,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<&'a str, (&'static str, String)> {
    if name.is_empty() {
        return Err((reason::INVALID_SPEC, "secretRef.name is empty".into()));
    }
    let id = (ns.to_owned(), name.to_owned());
    if let Some(e) = objects.secret_errors.get(&id) {
        return Err((
            reason::SECRET_UNREADABLE,
            format!("Secret {ns}/{name}: {e}"),
        ));
    }
    let Some(data) = objects.secrets.get(&id) else {
        return Err((
            reason::SECRET_NOT_FOUND,
            format!("Secret {ns}/{name} not found; create it with the key {key:?}"),
        ));
    };
    match data.get(key).map(String::as_str) {
        Some(v) if !v.is_empty() => match credential_problem(v) {
            None => Ok(v),
            Some(p) => Err((
                reason::SECRET_VALUE_INVALID,
                format!("Secret {ns}/{name} key {key:?}: {p}"),
            )),
        },
        _ => Err((
            reason::SECRET_KEY_MISSING,
            format!("Secret {ns}/{name} has no non-empty key {key:?}"),
        )),
    }
}

/// What makes a Secret value unusable as a credential or token exactly as stored, if
/// anything: whitespace around it (a trailing newline from `echo` into a file) or a control
/// character. Such a value is refused with this reason, never trimmed: a silent change would
/// send another credential than the one stored.
pub fn credential_problem(v: &str) -> Option<String> {
    if v.ends_with('\n') || v.ends_with('\r') {
        Some("the value ends with a newline; store it without one (printf '%s', kubectl create secret --from-literal)".into())
    } else if v.trim() != v {
        Some("the value has whitespace around it; store it without".into())
    } else if v.chars().any(char::is_control) {
        Some("the value contains a control character".into())
    } else {
        None
    }
}

/// Formats Unix seconds as RFC 3339 UTC with the filter's own formatter (what the filter
/// reads back); empty outside 1970..=9999, which validation never lets through to a rendering.
pub fn rfc3339(secs: i64) -> String {
    layergate_filter::time::format_rfc3339(secs).unwrap_or_default()
}

fn created_at(meta: &kube::core::ObjectMeta, now: i64) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0.as_second())
}

/// Validates one namespace's objects with the default endpoint allowlist. `now` is Unix
/// seconds.
pub fn validate(objects: &Objects, namespace: &str, now: i64) -> Validation {
    validate_in(objects, namespace, now, &Allowlist::default())
}

/// Validates one namespace's objects; store endpoints must pass `allow`. `now` is Unix seconds.
pub fn validate_in(objects: &Objects, namespace: &str, now: i64, allow: &Allowlist) -> Validation {
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
        .enumerate()
        .map(|(i, s)| {
            // Two documents naming the same store: the first wins, the later is left out.
            let first = stores[..i].iter().all(|o| o.metadata.name != s.metadata.name);
            let mut v = validate_store(s, namespace, objects, defaults, stores.len(), allow, now);
            if !first {
                v.valid = None;
                v.conditions = vec![condition(
                    conditions::READY,
                    false,
                    reason::CONFLICT,
                    format!("another VectorStore document is also named {:?}; it came first, so it wins", v.name),
                    s.metadata.generation,
                    now,
                )];
            }
            v
        })
        .collect();
    let indexes: Vec<&Index> = objects
        .indexes
        .iter()
        .filter(|i| in_ns(&i.metadata))
        .collect();
    let index_verdicts = validate_indexes(&indexes, &store_verdicts, now);
    let mut phases = BTreeMap::new();
    let keys: Vec<&ApiKey> = objects.keys.iter().filter(|k| in_ns(&k.metadata)).collect();
    let mut names = std::collections::HashSet::with_capacity(keys.len());
    let key_verdicts = keys
        .iter()
        .map(|k| {
            let (mut verdict, mut phase) =
                validate_key(k, namespace, objects, &store_verdicts, now);
            // Two documents naming the same key would share a keyId, which the filter refuses:
            // the first wins, the later is left out.
            if !names.insert(k.metadata.name.as_deref()) {
                verdict.valid = None;
                verdict.conditions = vec![condition(
                    conditions::READY,
                    false,
                    reason::INVALID_SPEC,
                    format!(
                        "another ApiKey document is also named {:?}; it came first, so it wins",
                        verdict.name
                    ),
                    k.metadata.generation,
                    now,
                )];
                phase = phases
                    .get(&verdict.name)
                    .copied()
                    .unwrap_or(ApiKeyPhase::Pending);
            }
            phases.entry(verdict.name.clone()).or_insert(phase);
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
    objects: &Objects,
    defaults: usize,
    count: usize,
    allow: &Allowlist,
    now: i64,
) -> Verdict<ValidStore> {
    let name = s.metadata.name.clone().unwrap_or_default();
    let generation = s.metadata.generation;
    let fail = |r: &str, m: String| Verdict {
        name: name.clone(),
        conditions: vec![condition(conditions::READY, false, r, m, generation, now)],
        valid: None,
    };
    // The filter refuses a configuration with an empty store name, and keys name stores as
    // `vectorstore.<name>`: a name the target parser refuses could never be granted.
    if !entitlement::valid_target_name(&name) {
        return fail(
            reason::INVALID_SPEC,
            format!("metadata.name {name:?} must be 1-253 characters of A-Z a-z 0-9 _ . -"),
        );
    }
    if s.spec.kind == StoreKind::Pinecone {
        return fail(
            reason::UNSUPPORTED_KIND,
            "kind pinecone is reserved but not supported yet; use kind: turbopuffer".into(),
        );
    }
    let endpoint = match crate::endpoint::admitted(&s.spec.endpoint.url, allow) {
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
    let credential = match secret(objects, ns, &cred.name, &cred.key) {
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
        let token = match secret(objects, ns, &k.secret_ref.name, &k.secret_ref.key) {
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

/// A key's id: from its uid in a cluster (a new object, a new id); in directory mode from
/// namespace, name and its token (a re-minted key of the same name gets a new id, and a
/// revoked key, whose token Secret stays, keeps its id).
pub fn key_id(k: &ApiKey, ns: &str, token: Option<&str>) -> String {
    let name = k.metadata.name.as_deref().unwrap_or_default();
    match (&k.metadata.uid, token) {
        (Some(uid), _) => format!("key_{}", uid.replace('-', "")),
        (None, Some(t)) => format!(
            "key_{}",
            &sha256_hex(&format!("{ns}/{name}/{}", sha256_hex(t)))[..24]
        ),
        (None, None) => format!("key_{}", &sha256_hex(&format!("{ns}/{name}"))[..24]),
    }
}

/// The Secret (name, key) an ApiKey's token is read from: `tokenSecretRef`, else the minted
/// `apikey-<name>`/`token`.
pub fn token_source(k: &ApiKey) -> crate::crd::SecretKeyRef {
    k.spec
        .token_secret_ref
        .clone()
        .unwrap_or_else(|| crate::crd::SecretKeyRef {
            name: crate::keys::secret_name(k.metadata.name.as_deref().unwrap_or_default()),
            key: crate::keys::TOKEN_KEY.into(),
        })
}

/// The token an ApiKey would use, when its Secret is one the key may use (see
/// [`token_secret_refusal`]) and holds a token.
pub fn token_of<'a>(k: &ApiKey, ns: &str, objects: &'a Objects) -> Option<&'a str> {
    let source = token_source(k);
    let t = secret(objects, ns, &source.name, &source.key).ok()?;
    token_secret_refusal(k, ns, objects).is_none().then_some(t)
}

/// Why the Secret an ApiKey names may not serve as its token, if it may not. A token Secret is
/// either owned by this very ApiKey (its uid: a Secret left by a deleted key of the same name
/// is refused) or labelled `hevlayer.com/apikey-token: <key name>` (what the operator writes
/// in directory mode and what a pre-provisioned Secret must carry; `"true"` for a Secret
/// holding many keys' tokens), so an ApiKey cannot adopt an arbitrary Secret — a store
/// credential, another key's token — as its token.
pub fn token_secret_refusal(k: &ApiKey, ns: &str, objects: &Objects) -> Option<String> {
    let name = k.metadata.name.as_deref().unwrap_or_default();
    let source = token_source(k);
    let id = (ns.to_owned(), source.name.clone());
    if objects.duplicate_secrets.contains(&id) {
        return Some(format!(
            "Secret {ns}/{} is defined by more than one document; keep one",
            source.name
        ));
    }
    let marks = objects.secret_marks.get(&id)?;
    if !marks.apikey_owners.is_empty() {
        return match &k.metadata.uid {
            Some(uid) if marks.apikey_owners.contains(uid) => None,
            Some(_) => Some(format!(
                "Secret {ns}/{} belongs to another (deleted) ApiKey; it is not reused and will be replaced",
                source.name
            )),
            None => None,
        };
    }
    // `true` marks a Secret holding many keys' tokens (one data key each), for bulk
    // provisioning; it is never deleted with one of them.
    let marked = matches!(marks.token_label.as_deref(), Some(l) if l == name || l == "true");
    (!marked).then(|| {
        format!(
            "Secret {ns}/{} is not marked as this key's token: label it {}={name} (or let the operator mint one)",
            source.name,
            crate::keys::TOKEN_LABEL
        )
    })
}

/// Checks a token's strength: `hvl_` + at least 32 base62 characters (hev layer's format,
/// about 190 bits), or at least 32 base62 characters without the prefix; 256 characters at most.
pub fn token_strength(token: &str) -> Result<(), String> {
    let body = token
        .strip_prefix(crate::keys::TOKEN_PREFIX)
        .unwrap_or(token);
    if body.len() < crate::keys::TOKEN_CHARS
        || token.len() > 256
        || !body.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(format!(
            "the token is too weak or malformed: it must be hvl_ followed by at least {} letters and digits \
             (about 190 random bits); let the operator mint one",
            crate::keys::TOKEN_CHARS
        ));
    }
    Ok(())
}

/// What the filter (or the operator) would refuse in an ApiKey's spec, before any token exists:
/// its name, entitlement targets and globs, and its lifetime counted from now. The control API
/// refuses such a mint with 400 instead of writing it.
pub fn key_spec_problem(k: &ApiKey, now: i64) -> Option<String> {
    let name = k.metadata.name.as_deref().unwrap_or_default();
    if !crate::keys::valid_key_name(name) {
        return Some(
            "name must be 1-63 lower-case letters, digits or '-' (a Kubernetes name)".into(),
        );
    }
    for (target, e) in &k.spec.entitlements {
        let grant = Entitlement {
            scopes: e.scopes.clone(),
            namespaces: e.namespaces.clone(),
            claims: e.claims.clone(),
        };
        if let Err(m) = entitlement::parse_target(target)
            .map(|_| ())
            .and_then(|()| entitlement::grant_globs(target, &grant).map(|_| ()))
        {
            return Some(m);
        }
    }
    let after = k
        .spec
        .expires_after
        .as_deref()
        .unwrap_or(DEFAULT_EXPIRES_AFTER);
    match parse_duration(after) {
        Err(e) => Some(e.to_string()),
        Ok(l) => layergate_filter::time::expiry(now, l)
            .err()
            .map(|m| format!("expiresAfter {after:?}: {m}")),
    }
}

/// Judges a key about to be minted with `token` exactly as the next pass will (against the
/// last pass's `stores`), without reading anything: the control API answers a mint from this
/// instead of waiting for a pass that may be slow (issue 13).
pub fn validate_new_key(
    k: &ApiKey,
    ns: &str,
    token: &str,
    stores: &[Verdict<ValidStore>],
    now: i64,
) -> (Verdict<ApiKeyConfig>, ApiKeyPhase) {
    let source = token_source(k);
    let mut objects = Objects::default();
    let id = (ns.to_owned(), source.name);
    objects
        .secrets
        .insert(id.clone(), BTreeMap::from([(source.key, token.to_owned())]));
    objects.minted_at.insert(id, now);
    validate_key(k, ns, &objects, stores, now)
}

fn validate_key(
    k: &ApiKey,
    ns: &str,
    objects: &Objects,
    stores: &[Verdict<ValidStore>],
    now: i64,
) -> (Verdict<ApiKeyConfig>, ApiKeyPhase) {
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
    if !crate::keys::valid_object_name(&name) {
        return out(
            ApiKeyPhase::Pending,
            reason::INVALID_SPEC,
            "metadata.name must be 1-246 lower-case letters, digits, '-' or '.' (a Kubernetes name that leaves room for the apikey- prefix of its Secret)".into(),
            vec![],
            None,
        );
    }
    let mut entitlements = BTreeMap::new();
    let mut missing = Vec::new();
    for (target, e) in &k.spec.entitlements {
        // The filter's own parser (one validation).
        let store = match entitlement::parse_target(target) {
            Ok(Target::VectorStore(s)) => Some(s),
            Ok(_) => None,
            Err(m) => return out(ApiKeyPhase::Pending, reason::INVALID_SPEC, m, vec![], None),
        };
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
        Err(m) => {
            return out(
                ApiKeyPhase::Pending,
                reason::INVALID_SPEC,
                m.to_string(),
                extra,
                None,
            )
        }
    };
    // Everything else the filter checks per key, before any token is looked at: a key the
    // filter would refuse is left out here, never in the rendering (one bad key must not
    // freeze every other change).
    let shape = ApiKeyConfig {
        key_id: String::new(),
        name: name.clone(),
        lookup_hash: layergate_filter::config::LookupHash([0; 32]),
        expires_at: None,
        entitlements: entitlements.into_iter().collect(),
    };
    if let Err(m) = entitlement::check_api_key(&shape) {
        return out(ApiKeyPhase::Pending, reason::INVALID_SPEC, m, extra, None);
    }
    if k.spec.revoked == Some(true) {
        return out(
            ApiKeyPhase::Revoked,
            reason::REVOKED,
            "revoked; the gateway no longer accepts this key".into(),
            extra,
            None,
        );
    }
    let source = token_source(k);
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
    let expires = match layergate_filter::time::expiry(created, lifetime) {
        Ok(e) => e,
        Err(m) => {
            return out(
                ApiKeyPhase::Pending,
                reason::INVALID_SPEC,
                format!("expiresAfter: {m}; use a shorter lifetime or never"),
                extra,
                None,
            )
        }
    };
    if let Some(at) = expires.filter(|e| *e <= now) {
        return out(
            ApiKeyPhase::Expired,
            reason::EXPIRED,
            format!("expired at {}; mint a new key", rfc3339(at)),
            extra,
            None,
        );
    }
    let token = match secret(objects, ns, &source.name, &source.key) {
        Ok(t) => t,
        Err((r, m)) if r != reason::SECRET_NOT_FOUND && r != reason::SECRET_KEY_MISSING => {
            return out(ApiKeyPhase::Pending, r, m, extra, None)
        }
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
    if let Some(m) = token_secret_refusal(k, ns, objects) {
        return out(ApiKeyPhase::Pending, reason::INVALID_TOKEN, m, extra, None);
    }
    if let Err(m) = token_strength(token) {
        let m = format!("Secret {ns}/{} key {:?}: {m}", source.name, source.key);
        return out(ApiKeyPhase::Pending, reason::INVALID_TOKEN, m, extra, None);
    }
    let mut config = shape;
    config.key_id = key_id(k, ns, Some(token));
    config.lookup_hash = layergate_filter::config::LookupHash::of(token);
    config.expires_at = expires.map(rfc3339);
    if let Err(m) = entitlement::check_api_key(&config) {
        return out(ApiKeyPhase::Pending, reason::INVALID_SPEC, m, extra, None);
    }
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
        // A name that is already valid now (a second document of the same name) never gets a
        // second, carried form: two forms of one key would share a keyId, which the filter refuses.
        let valid_now: std::collections::HashSet<String> = now
            .iter()
            .filter(|v| v.valid.is_some())
            .map(|v| v.name.clone())
            .collect();
        // The first of a name, as `find` would.
        let mut last_forms = std::collections::HashMap::with_capacity(before.len());
        for b in before {
            last_forms.entry(b.name.as_str()).or_insert(b);
        }
        for v in now.iter_mut().filter(|v| v.valid.is_none()) {
            if valid_now.contains(&v.name) {
                continue;
            }
            let Some(last) = last_forms
                .get(v.name.as_str())
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
