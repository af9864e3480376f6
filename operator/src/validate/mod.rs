//! Validation of one namespace's objects (SPEC §7), as pure functions: objects in, a verdict
//! and conditions per object out. Nothing here talks to Kubernetes or the network.

mod earlier;
mod expiring;
mod index;
mod key;
mod store;

pub use earlier::Earlier;
pub use expiring::{
    format_window, in_window, parse_window, says_expiring_soon, DEFAULT_EXPIRING_SOON,
    EXPIRING_SOON_OFF,
};
use index::validate_indexes;
use key::validate_key;
pub use key::{
    key_id, key_id_in, key_spec_problem, rotations_due, token_of, token_secret_refusal,
    token_source, token_strength, validate_new_key,
};
use store::validate_store;

use crate::conditions::{self, condition, reason};
use crate::crd::{ApiKey, ApiKeyPhase, InboundMode, Index, StoreKind, VectorStore};
use crate::manifests::Objects;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use layergate_filter::config::{ApiKeyConfig, Entitlement};
use layergate_filter::entitlement::{self, Target};
use layergate_filter::namespace::valid_namespace;
use layergate_filter::ratelimit::RateLimits;
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
    /// Inbound keys: name, scopes, SHA-256 hex of the token, limits (its own or the store's
    /// `defaultKeyLimits`).
    pub keys: Vec<(String, Vec<Scope>, String, Option<RateLimits>)>,
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

/// Validates one namespace's objects; store endpoints must pass `allow`; the `ExpiringSoon`
/// window is the default one. `now` is Unix seconds.
pub fn validate_in(objects: &Objects, namespace: &str, now: i64, allow: &Allowlist) -> Validation {
    validate_since(
        objects,
        namespace,
        now,
        allow,
        Some(DEFAULT_EXPIRING_SOON),
        None,
    )
}

/// True when an object with `meta` belongs to `namespace` (no namespace: the default one).
pub fn in_namespace(meta: &kube::core::ObjectMeta, namespace: &str) -> bool {
    meta.namespace
        .as_deref()
        .unwrap_or(crate::manifests::DEFAULT_NAMESPACE)
        == namespace
}

/// [`validate_in`], taking over from `earlier` (the last pass) the verdict of every ApiKey
/// that did not change ([`Earlier`]): the cost of a pass follows what changed, not how many
/// keys there are. The result is the one [`validate_in`] gives, but for the
/// `lastTransitionTime` of a taken-over condition, which is the last pass's (the status write
/// keeps the recorded time of a condition that did not change in any case). An Active key
/// expiring within `expiring_soon` (seconds; `None`: off) is `ExpiringSoon`.
pub fn validate_since(
    objects: &Objects,
    namespace: &str,
    now: i64,
    allow: &Allowlist,
    expiring_soon: Option<i64>,
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
        let taken = earlier.and_then(|e| e.verdict(o, k, stores_same, now, expiring_soon));
        let (mut verdict, mut phase) = match taken {
            Some((v, phase)) => {
                taken_over.push(true);
                (Arc::clone(v), phase)
            }
            None => {
                taken_over.push(false);
                let (v, phase) =
                    validate_key(k, namespace, objects, &store_verdicts, now, expiring_soon);
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
