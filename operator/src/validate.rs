//! Validation of one namespace's objects (SPEC §7), as pure functions: objects in, a verdict
//! and conditions per object out. Nothing here talks to Kubernetes or the network.

use crate::conditions::{self, condition, reason};
use crate::crd::{ApiKey, ApiKeyPhase, InboundMode, Index, StoreKind, VectorStore};
use crate::manifests::Objects;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use layergate_filter::config::{ApiKeyConfig, Entitlement};
use layergate_filter::entitlement::{self, Target};
use layergate_filter::namespace::valid_namespace;
use layergate_filter::scope::Scope;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

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
    /// ApiKeys: the filter's view of usable keys. Shared: a verdict taken over from the last
    /// pass is that pass's ([`validate_since`]).
    pub keys: Vec<Arc<Verdict<ApiKeyConfig>>>,
    /// Phases of the ApiKeys, by verdict in `keys` (a second document of a name has the
    /// first's).
    pub phases: Vec<ApiKeyPhase>,
    /// By verdict in `keys`: true where the verdict was taken over from the last pass
    /// unjudged ([`validate_since`]); false (or absent) where it was judged now.
    pub taken_over: Vec<bool>,
}

impl Validation {
    /// The phase of the ApiKey named `name` (the first document of that name).
    pub fn phase(&self, name: &str) -> Option<ApiKeyPhase> {
        let i = self.keys.iter().position(|k| k.name == name)?;
        self.phases.get(i).copied()
    }

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
    validate_since(objects, namespace, now, allow, None)
}

/// True when an object with `meta` belongs to `namespace` (no namespace: the default one).
pub fn in_namespace(meta: &kube::core::ObjectMeta, namespace: &str) -> bool {
    meta.namespace
        .as_deref()
        .unwrap_or(crate::manifests::DEFAULT_NAMESPACE)
        == namespace
}

/// A pass's identities, for the pass after it to judge again only what changed (kube mode,
/// where an object that did not change is the same shared allocation in both passes).
///
/// An ApiKey is *unchanged* when the last pass judged the same key — this very object
/// ([`Arc::ptr_eq`]), or one that differs only in what a verdict does not read (its status,
/// labels, annotations: same uid, name, creation time, generation and spec) — and nothing
/// about its token Secret changed (data, minted-at, marks, read errors, duplicates). Its
/// verdict then depends only on the stores' names (compared once) and on time: an active key
/// with an expiry is judged again once the expiry is reached, and a key without a creation
/// time (whose lifetime counts from now) always is.
///
/// Its status is *settled* when, besides, the object is the very one whose status the last
/// pass found as written, or wrote ([`crate::source::Pass::settled`]).
pub struct Earlier<'e> {
    validation: &'e Validation,
    /// By ApiKey of this pass's objects: (index of the last pass's verdict, index of the
    /// object in the last pass's objects) when it is unchanged.
    unchanged: Vec<Option<(usize, usize)>>,
    /// By index in the last pass's objects: the object whose status is as that pass wanted.
    settled: &'e [Option<Arc<ApiKey>>],
}

impl<'e> Earlier<'e> {
    /// What `now` (this pass's objects) has in common with the last pass (`objects`, judged
    /// as `validation`, with `settled` statuses by object: see [`crate::source::Pass`]) in
    /// `namespace`: one walk of each, each key compared once, with no allocation per
    /// unchanged key.
    pub fn new(
        now: &Objects,
        objects: &'e Objects,
        validation: &'e Validation,
        settled: &'e [Option<Arc<ApiKey>>],
        namespace: &str,
    ) -> Earlier<'e> {
        let in_ns = |k: &Arc<ApiKey>| in_namespace(&k.metadata, namespace);
        let mut last = HashMap::with_capacity(validation.keys.len());
        // Verdicts are in the order of the namespace's keys; the first of a name wins.
        let mut i = 0;
        for (o, k) in objects.keys.iter().enumerate() {
            if !in_ns(k) {
                continue;
            }
            if let Some(name) = k.metadata.name.as_deref() {
                last.entry(name).or_insert((k, i, o));
            }
            i += 1;
        }
        let mut changed_secrets = HashSet::new();
        changed(
            &objects.secrets,
            &now.secrets,
            Arc::ptr_eq,
            &mut changed_secrets,
        );
        changed(
            &objects.minted_at,
            &now.minted_at,
            PartialEq::eq,
            &mut changed_secrets,
        );
        changed(
            &objects.secret_marks,
            &now.secret_marks,
            PartialEq::eq,
            &mut changed_secrets,
        );
        changed(
            &objects.secret_errors,
            &now.secret_errors,
            PartialEq::eq,
            &mut changed_secrets,
        );
        changed_secrets.extend(
            objects
                .duplicate_secrets
                .symmetric_difference(&now.duplicate_secrets)
                .cloned(),
        );
        let unchanged = now
            .keys
            .iter()
            .map(|k| {
                let (was, i, o) = last.get(k.metadata.name.as_deref()?)?;
                if !in_ns(k) || !same_key(was, k) {
                    return None;
                }
                let secret_changed = !changed_secrets.is_empty()
                    && changed_secrets.contains(&(namespace.to_owned(), token_source(k).name));
                (!secret_changed).then_some((*i, *o))
            })
            .collect();
        Earlier {
            validation,
            unchanged,
            settled,
        }
    }

    /// The last pass's phase of `k` (this pass's key number `o`) when `k` is unchanged since
    /// and that pass found its status as written (a leader's pass, which had also minted and
    /// adopted what `k` needed) on this very object.
    pub fn settled(&self, o: usize, k: &Arc<ApiKey>) -> Option<ApiKeyPhase> {
        let (i, was) = self.unchanged.get(o).copied().flatten()?;
        if !self
            .settled
            .get(was)?
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, k))
        {
            return None;
        }
        self.validation.phases.get(i).copied()
    }

    /// The last verdict on `k` (this pass's key number `o`) and its phase, when nothing it
    /// depends on can have changed.
    fn verdict(
        &self,
        o: usize,
        k: &ApiKey,
        stores_same: bool,
        now: i64,
    ) -> Option<(&'e Arc<Verdict<ApiKeyConfig>>, ApiKeyPhase)> {
        if !stores_same || k.metadata.creation_timestamp.is_none() {
            return None;
        }
        let (i, _) = self.unchanged.get(o).copied().flatten()?;
        let v = &self.validation.keys[i];
        let expired = v
            .valid
            .as_ref()
            .and_then(|c| c.expires_at.as_deref())
            .is_some_and(|at| layergate_filter::time::parse_rfc3339(at).is_none_or(|at| at <= now));
        if expired {
            return None;
        }
        Some((v, *self.validation.phases.get(i)?))
    }
}

/// True when `a` and `b` are the same key as far as a verdict goes: one object, or objects
/// that differ only in what validation does not read (status, labels, annotations, version).
fn same_key(a: &Arc<ApiKey>, b: &Arc<ApiKey>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.metadata.uid == b.metadata.uid
            && a.metadata.name == b.metadata.name
            && a.metadata.namespace == b.metadata.namespace
            && a.metadata.creation_timestamp == b.metadata.creation_timestamp
            && a.metadata.generation == b.metadata.generation
            && a.metadata.deletion_timestamp == b.metadata.deletion_timestamp
            && a.spec == b.spec)
}

/// Adds to `out` every id whose entry differs between `a` and `b` (by `same`), in one walk
/// of both maps side by side.
fn changed<V>(
    a: &BTreeMap<(String, String), V>,
    b: &BTreeMap<(String, String), V>,
    same: impl Fn(&V, &V) -> bool,
    out: &mut HashSet<(String, String)>,
) {
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some((ka, _)), None) => {
                out.insert((*ka).clone());
                a.next();
            }
            (None, Some((kb, _))) => {
                out.insert((*kb).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.insert((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.insert((*kb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !same(va, vb) {
                        out.insert((*ka).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// [`validate_in`], taking over from `earlier` (the last pass) the verdict of every ApiKey
/// that did not change ([`Earlier`]): the cost of a pass follows what changed, not how many
/// keys there are. The result is the one [`validate_in`] gives, but for the
/// `lastTransitionTime` of a taken-over condition, which is the last pass's (the status write
/// keeps the recorded time of a condition that did not change in any case).
pub fn validate_since(
    objects: &Objects,
    namespace: &str,
    now: i64,
    allow: &Allowlist,
    earlier: Option<&Earlier<'_>>,
) -> Validation {
    let in_ns = |m: &kube::core::ObjectMeta| in_namespace(m, namespace);
    let stores: Vec<&VectorStore> = objects
        .stores
        .iter()
        .filter(|s| in_ns(&s.metadata))
        .map(|s| &**s)
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
        .map(|i| &**i)
        .collect();
    let index_verdicts = validate_indexes(&indexes, &store_verdicts, now);
    // Keys name stores by name: a verdict may be taken over while the names are the same.
    let stores_same = earlier.is_some_and(|e| {
        e.validation.stores.len() == store_verdicts.len()
            && e.validation
                .stores
                .iter()
                .zip(&store_verdicts)
                .all(|(a, b)| a.name == b.name)
    });
    // (number among all keys, key) of the namespace's keys.
    let keys: Vec<(usize, &Arc<ApiKey>)> = objects
        .keys
        .iter()
        .enumerate()
        .filter(|(_, k)| in_ns(&k.metadata))
        .collect();
    // Names in strictly increasing order (as kube mode lists them) have no duplicates.
    let unique = keys
        .windows(2)
        .all(|w| w[0].1.metadata.name < w[1].1.metadata.name);
    let mut first_of: HashMap<Option<&str>, usize> = HashMap::new();
    let mut key_verdicts = Vec::with_capacity(keys.len());
    let mut phases = Vec::with_capacity(keys.len());
    let mut taken_over = Vec::with_capacity(keys.len());
    for (n, &(o, k)) in keys.iter().enumerate() {
        let (mut verdict, mut phase) = match earlier.and_then(|e| e.verdict(o, k, stores_same, now))
        {
            Some((v, phase)) => {
                taken_over.push(true);
                (Arc::clone(v), phase)
            }
            None => {
                taken_over.push(false);
                let (v, phase) = validate_key(k, namespace, objects, &store_verdicts, now);
                (Arc::new(v), phase)
            }
        };
        // Two documents naming the same key would share a keyId, which the filter refuses:
        // the first wins, the later is left out.
        let first = if unique {
            None
        } else {
            match first_of.entry(k.metadata.name.as_deref()) {
                std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(n);
                    None
                }
            }
        };
        if let Some(first) = first {
            let v = Arc::make_mut(&mut verdict);
            v.valid = None;
            v.conditions = vec![condition(
                conditions::READY,
                false,
                reason::INVALID_SPEC,
                format!(
                    "another ApiKey document is also named {:?}; it came first, so it wins",
                    v.name
                ),
                k.metadata.generation,
                now,
            )];
            phase = phases[first];
        }
        key_verdicts.push(verdict);
        phases.push(phase);
    }
    Validation {
        stores: store_verdicts,
        indexes: index_verdicts,
        keys: key_verdicts,
        phases,
        taken_over,
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
    objects.secrets.insert(
        id.clone(),
        Arc::new(BTreeMap::from([(source.key, token.to_owned())])),
    );
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
    // Revoked wins over everything (SPEC §7): whatever else is wrong with the spec, a key that
    // says revoked is Revoked, and a Revoked verdict never gets a last valid form.
    if k.spec.revoked == Some(true) {
        return out(
            ApiKeyPhase::Revoked,
            reason::REVOKED,
            "revoked; the gateway no longer accepts this key".into(),
            vec![],
            None,
        );
    }
    // Being deleted (a finalizer holds the object): gone for the gateway from the moment the
    // delete was accepted, so a delete that answers 200 never leaves the token working.
    if k.metadata.deletion_timestamp.is_some() {
        return out(
            ApiKeyPhase::Revoked,
            reason::REVOKED,
            "being deleted; the gateway no longer accepts this key".into(),
            vec![],
            None,
        );
    }
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
    /// Carries last valid forms into `now`; returns the indexes that got one. Costs one walk
    /// of each list plus what is invalid now (usually nothing).
    fn carry<T: Clone, V: std::borrow::Borrow<Verdict<T>>>(
        now: &mut [V],
        before: &[V],
        edit: impl Fn(&mut V) -> &mut Verdict<T>,
        allowed: impl Fn(&Verdict<T>, &T) -> bool,
    ) -> Vec<usize> {
        fn at<T, V: std::borrow::Borrow<Verdict<T>>>(v: &V) -> &Verdict<T> {
            v.borrow()
        }
        let invalid: Vec<usize> = (0..now.len())
            .filter(|&i| at(&now[i]).valid.is_none())
            .collect();
        if invalid.is_empty() {
            return Vec::new();
        }
        let names: HashSet<&str> = invalid.iter().map(|&i| at(&now[i]).name.as_str()).collect();
        // A name that is already valid now (a second document of the same name) never gets a
        // second, carried form: two forms of one key would share a keyId, which the filter refuses.
        let valid_now: HashSet<String> = now
            .iter()
            .map(at)
            .filter(|v| v.valid.is_some() && names.contains(v.name.as_str()))
            .map(|v| v.name.clone())
            .collect();
        // The first of a name, as `find` would.
        let mut last_forms: HashMap<String, Option<T>> = HashMap::new();
        for b in before
            .iter()
            .map(at)
            .filter(|b| names.contains(b.name.as_str()))
        {
            last_forms
                .entry(b.name.clone())
                .or_insert_with(|| b.valid.clone());
        }
        let mut carried = Vec::new();
        for i in invalid {
            if valid_now.contains(&at(&now[i]).name) {
                continue;
            }
            let Some(last) = last_forms.get(&at(&now[i]).name).cloned().flatten() else {
                continue;
            };
            if !allowed(at(&now[i]), &last) {
                continue;
            }
            let v = edit(&mut now[i]);
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
            carried.push(i);
        }
        carried
    }
    let is_error = |v: &[Condition]| {
        v.iter().any(|c| {
            c.type_ == conditions::READY
                && ![reason::REVOKED, reason::EXPIRED, reason::CONFLICT]
                    .contains(&c.reason.as_str())
        })
    };
    carry(
        &mut current.stores,
        &previous.stores,
        |v| v,
        |v, _| is_error(&v.conditions),
    );
    let stores: Vec<String> = current
        .stores
        .iter()
        .filter(|s| s.valid.is_some())
        .map(|s| s.name.clone())
        .collect();
    carry(
        &mut current.indexes,
        &previous.indexes,
        |v| v,
        |v, (_, store)| is_error(&v.conditions) && stores.contains(store),
    );
    let carried = carry(&mut current.keys, &previous.keys, Arc::make_mut, |v, _| {
        v.conditions
            .iter()
            .any(|c| c.type_ == conditions::READY && c.reason == reason::INVALID_SPEC)
    });
    // Every other valid key is active already.
    for i in carried {
        current.phases[i] = ApiKeyPhase::Active;
    }
}
