//! What a grant is (SPEC §2, §7): the leaf of the filter's house, used by the filter and the
//! operator alike:
//!
//! - what an ApiKey's grants may say (entitlement targets, globs, expiry), compiled once per
//!   key by [`compile_key`] — and [`check_api_key`] is that compile with nothing kept, so the
//!   operator refuses exactly what the filter would;
//! - whether one set of grants lies inside another ([`within`]), which bounds the keys a caller
//!   may mint.
//!
//! ```text
//!  "vectorstore.primary" ──parse_target──► Target::VectorStore("primary")
//!  ApiKeyConfig          ──compile_key───► MintedKey (grants by store, layer, agents)
//!  ApiKeyConfig          ──check_api_key─► Ok, or the reason the filter would refuse it
//!  held ⊇ asked          ──within────────► Ok, or what the caller does not hold
//! ```
//!
//! What a request needs of these grants, and the check of it, is [`crate::auth`]'s.

use crate::config::{ApiKeyConfig, Entitlement, Entitlements, StoreId};
use crate::glob::{globs_contain, NamespaceGlob};
use crate::scope::{Scope, Scopes};
use std::collections::HashMap;
use std::fmt;

/// An entitlement target, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `vectorstore.<name>`: data-plane routes that resolve to that store.
    VectorStore(&'a str),
    /// `layer`: the namespace-less app and control routes.
    Layer,
    /// `agent.<name>`: `POST /v2/agents/<name>/query`.
    Agent(&'a str),
    /// `warehouse.<name>`: grants nothing in the gateway; its claims are echoed.
    Warehouse(&'a str),
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::VectorStore(n) => write!(f, "vectorstore.{n}"),
            Target::Layer => f.write_str("layer"),
            Target::Agent(n) => write!(f, "agent.{n}"),
            Target::Warehouse(n) => write!(f, "warehouse.{n}"),
        }
    }
}

/// Longest name after `vectorstore.`, `agent.` or `warehouse.` (a Kubernetes object name).
pub const MAX_TARGET_NAME: usize = 253;

/// True for a name a target may carry: 1-253 characters of `A-Z a-z 0-9 _ . -`.
pub fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TARGET_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses an entitlement target: `vectorstore.<name>`, `layer`, `agent.<name>` or
/// `warehouse.<name>`, names as in [`valid_target_name`].
pub fn parse_target(target: &str) -> Result<Target<'_>, String> {
    let named = |prefix: &str| target.strip_prefix(prefix).filter(|n| valid_target_name(n));
    if target == "layer" {
        return Ok(Target::Layer);
    }
    named("vectorstore.")
        .map(Target::VectorStore)
        .or_else(|| named("agent.").map(Target::Agent))
        .or_else(|| named("warehouse.").map(Target::Warehouse))
        .ok_or_else(|| {
            format!(
                "entitlement target {:?} is not vectorstore.<name>, layer, agent.<name> or warehouse.<name> \
                 (names: 1-{MAX_TARGET_NAME} characters of A-Z a-z 0-9 _ . -)",
                target.chars().take(80).collect::<String>()
            )
        })
}

/// The namespace globs of a grant: empty for every namespace (absent, or a `*` among them).
pub fn grant_globs(target: &str, e: &Entitlement) -> Result<Vec<NamespaceGlob>, String> {
    match &e.namespaces {
        None => Ok(Vec::new()),
        Some(list) if list.is_empty() => Err(format!(
            "entitlement {target:?} has an empty namespaces list (omit it for all namespaces)"
        )),
        Some(list) => {
            let globs = list
                .iter()
                .map(|g| NamespaceGlob::new(g))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| format!("entitlement {target:?}: {err}"))?;
            Ok(if globs.iter().any(NamespaceGlob::is_any) {
                Vec::new()
            } else {
                globs
            })
        }
    }
}

/// Everything about one minted key that would make the filter refuse its configuration: the
/// expiry, every target, every grant's globs. The operator calls it before rendering a key, so
/// one bad key is left out (with its reason) instead of the whole configuration being refused.
/// It is [`compile_key`] with nothing kept: one per-key compile, never two that could disagree.
pub fn check_api_key(k: &ApiKeyConfig) -> Result<(), String> {
    compile_key(k, &HashMap::new(), 0).map(drop)
}

/// The one per-key compile: the expiry, every target (parsed before its grant), every grant's
/// scopes and globs. `stores` maps store names to their ids in a configuration of
/// `store_count` stores; a `vectorstore.` target naming a store not in it grants nothing (the
/// operator reports `EntitlementTargetMissing`), which is not an error.
pub fn compile_key(
    k: &ApiKeyConfig,
    stores: &HashMap<&str, StoreId>,
    store_count: usize,
) -> Result<MintedKey, String> {
    use crate::config::{MAX_KEY_NAME_BYTES, MAX_OWNER_BYTES};
    for (what, text, max) in [
        ("keyId", k.key_id.as_str(), MAX_KEY_NAME_BYTES),
        ("name", k.name.as_str(), MAX_KEY_NAME_BYTES),
        (
            "owner",
            k.owner.as_deref().unwrap_or_default(),
            MAX_OWNER_BYTES,
        ),
    ] {
        if text.len() > max {
            return Err(format!(
                "{what} is {} bytes long; at most {max} are allowed",
                text.len()
            ));
        }
    }
    let expires_at = match &k.expires_at {
        None => None,
        Some(t) => Some(
            crate::time::parse_rfc3339(t)
                .ok_or_else(|| format!("expiresAt {t:?} is not an RFC 3339 timestamp"))?,
        ),
    };
    let previous = match &k.previous {
        None => None,
        Some(p) => {
            let until = crate::time::parse_rfc3339(&p.until).ok_or_else(|| {
                format!("previous.until {:?} is not an RFC 3339 timestamp", p.until)
            })?;
            if p.lookup_hash == k.lookup_hash {
                return Err("previous.lookupHash is the key's own lookupHash".into());
            }
            // Never longer than the key itself.
            Some((p.lookup_hash.0, expires_at.map_or(until, |e| e.min(until))))
        }
    };
    if let Some(l) = &k.limits {
        l.check()?;
    }
    let spent_until = match &k.quota_spent_until {
        None => None,
        Some(t) => Some(
            crate::time::parse_rfc3339(t)
                .ok_or_else(|| format!("quotaSpentUntil {t:?} is not an RFC 3339 timestamp"))?,
        ),
    };
    let limits = k.limits.clone().filter(|l| !l.is_empty());
    let mut key = MintedKey {
        expires_at,
        previous,
        spent_until,
        grants: KeyGrants {
            stores: vec![None; store_count],
            layer: None,
            agents: Vec::new(),
            limits,
        },
    };
    for (target, e) in &k.entitlements {
        let parsed = parse_target(target)?;
        let grant = Grantee {
            scopes: Scopes::from_slice(&e.scopes),
            globs: grant_globs(target, e)?,
        };
        match parsed {
            Target::VectorStore(store) => {
                if let Some(&id) = stores.get(store) {
                    key.grants.stores[id] = Some(grant);
                }
            }
            Target::Layer => key.grants.layer = Some(grant),
            Target::Agent(agent) => key.grants.agents.push((agent.into(), grant)),
            Target::Warehouse(_) => {}
        }
    }
    Ok(key)
}

/// One entitlement of a minted key, compiled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grantee {
    /// Scopes granted.
    pub scopes: Scopes,
    /// Namespace globs; empty means every namespace.
    pub globs: Vec<NamespaceGlob>,
}

impl Grantee {
    /// True when the globs restrict namespaces (anything but `*`).
    pub fn is_restricted(&self) -> bool {
        !self.globs.is_empty()
    }

    /// True when `ns` matches a glob (or there are none).
    pub fn allows_namespace(&self, ns: &str) -> bool {
        self.globs.is_empty() || self.globs.iter().any(|g| g.matches(ns))
    }

    /// The literal prefix when the grant is exactly one prefix glob (`shop-*` → `shop-`).
    pub fn single_prefix(&self) -> Option<&str> {
        match self.globs.as_slice() {
            [only] => only.literal_prefix(),
            _ => None,
        }
    }
}

/// What a minted key's entitlements grant, compiled. Keys with the same entitlements share
/// one (the key table interns them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyGrants {
    /// `vectorstore.<name>` grants, indexed by [`StoreId`].
    pub stores: Vec<Option<Grantee>>,
    /// `layer` grant.
    pub layer: Option<Grantee>,
    /// `agent.<name>` grants.
    pub agents: Vec<(Box<str>, Grantee)>,
    /// The key's `limits`, if it declares any; interned with the grants, so keys with the
    /// same entitlements and limits share one.
    pub limits: Option<crate::ratelimit::RateLimits>,
}

impl KeyGrants {
    /// The rate the gateway holds the key to, if any.
    pub fn rate(&self) -> Option<crate::ratelimit::Rate> {
        self.limits.as_ref()?.rate()
    }
}

/// A compiled minted ApiKey, before the key table stores it compactly.
#[derive(Debug, Clone)]
pub struct MintedKey {
    /// Expiry in Unix seconds.
    pub expires_at: Option<i64>,
    /// The previous token's digest and when it stops being accepted (Unix seconds, never
    /// after `expires_at`), during a rotation's overlap.
    pub previous: Option<([u8; 32], i64)>,
    /// Until when (Unix seconds) the key is refused for a spent quota.
    pub spent_until: Option<i64>,
    /// What it grants.
    pub grants: KeyGrants,
}

/// True when `held` grants `asked`: `admin` holds every scope, otherwise the same scope.
fn scope_held(held: &[Scope], asked: Scope) -> bool {
    held.contains(&Scope::Admin) || held.contains(&asked)
}

/// Checks that the grant `asked` for `target` is no wider than `held`: each scope held, the
/// namespace globs contained in the held ones (conservatively, see
/// [`NamespaceGlob::contains`]), each claim held. The error says what is missing.
pub fn grant_within(target: &str, held: &Entitlement, asked: &Entitlement) -> Result<(), String> {
    if let Some(s) = asked.scopes.iter().find(|s| !scope_held(&held.scopes, **s)) {
        return Err(format!("you do not hold the {s} scope on {target}"));
    }
    let (held_globs, asked_globs) = (grant_globs(target, held)?, grant_globs(target, asked)?);
    if !globs_contain(&held_globs, &asked_globs) {
        let show = |e: &Entitlement| {
            e.namespaces
                .as_ref()
                .map_or_else(|| "[\"*\"]".to_owned(), |n| format!("{n:?}"))
        };
        return Err(format!(
            "the namespaces {} on {target} are not within yours ({})",
            show(asked),
            show(held)
        ));
    }
    if let Some(c) = asked.claims.iter().find(|c| !held.claims.contains(c)) {
        return Err(format!("you do not hold the claim {c:?} on {target}"));
    }
    Ok(())
}

/// Checks that every grant of `asked` lies within `held` (SPEC §7: a key is never worth more
/// than the caller who made it). A target the caller does not hold at all is refused.
pub fn within(held: &Entitlements, asked: &Entitlements) -> Result<(), String> {
    for (target, e) in asked {
        parse_target(target)?;
        match held.get(target) {
            Some(h) => grant_within(target, h, e)?,
            None => return Err(format!("you hold no entitlement on {target}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
