//! What a grant allows (SPEC §2, §3 step 4, §7), checked once for the filter and the operator
//! alike:
//!
//! - **configuration**: what an ApiKey's grants may say (entitlement targets, globs, expiry)
//!   and whether one set of grants lies inside another, which bounds the keys a caller may
//!   mint;
//! - **requests**: the entitlement a request needs (target, scope, namespaces) and the one
//!   check of it against a principal ([`authorize`]).
//!
//! ```text
//!  "vectorstore.primary" ──parse_target──► Target::VectorStore("primary")
//!  ApiKeyConfig          ──check_api_key──► Ok, or the reason the filter would refuse it
//!  held ⊇ asked          ──within────────► Ok, or what the caller does not hold
//!  principal + Access    ──authorize─────► Allowed, or the Denial
//! ```
//!
//! Store credentials, `open` mode and inbound keys hold their store whole (inbound keys with
//! their scopes); minted keys hold what their entitlements say. A **restricted** grant (one with
//! namespace globs) is default-deny: an access whose namespaces the filter cannot identify is
//! refused, never forwarded with the store's credential.

use crate::auth::Principal;
use crate::config::{ApiKeyConfig, Entitlement, Entitlements};
use crate::denial::Denial;
use crate::glob::{globs_contain, NamespaceGlob};
use crate::policy::{Grant, Grantee, Policy, StoreId};
use crate::scope::{Scope, Scopes};
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

/// Everything about one minted key that would make the filter refuse its configuration:
/// the expiry, every target, every grant's globs. The filter's compiler calls this for each
/// key; the operator calls it before rendering a key, so one bad key is left out (with its
/// reason) instead of the whole configuration being refused.
pub fn check_api_key(k: &ApiKeyConfig) -> Result<(), String> {
    if let Some(t) = &k.expires_at {
        if crate::time::parse_rfc3339(t).is_none() {
            return Err(format!("expiresAt {t:?} is not an RFC 3339 timestamp"));
        }
    }
    for (target, e) in &k.entitlements {
        parse_target(target)?;
        grant_globs(target, e)?;
    }
    Ok(())
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

/// The entitlement target an access is judged by, for minted keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On<'a> {
    /// `vectorstore.<store>`: data routes and anything naming a namespace.
    Store,
    /// `layer`: the namespace-less app and control routes.
    Layer,
    /// `agent.<name>`: `POST /v2/agents/<name>/query`.
    Agent(&'a str),
}

/// Which namespaces an access touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespaces<'a> {
    /// Exactly this one.
    Named(&'a str),
    /// None: a known route that names no namespace (key lookups, pipeline and Function ids).
    NoneNamed,
    /// The filter cannot tell (an unknown route, a store route naming none, a route naming
    /// namespaces where the filter does not read them): refused for restricted grants.
    Unidentified,
}

/// What a request (or one namespace named in its body) needs of its caller on one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access<'a> {
    /// The scope needed.
    pub scope: Scope,
    /// The entitlement target it is judged by.
    pub on: On<'a>,
    /// The namespaces it touches.
    pub namespaces: Namespaces<'a>,
}

/// What the caller holds where the access goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed<'p> {
    /// The caller's scopes there (sent to the app as `x-layergate-scopes`).
    pub scopes: Scopes,
    /// The minted key's grant that applied, if any.
    pub grant: Option<&'p Grantee>,
}

impl Allowed<'_> {
    /// True when the grant that applied restricts namespaces.
    pub fn is_restricted(&self) -> bool {
        self.grant.is_some_and(Grantee::is_restricted)
    }
}

impl fmt::Display for On<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            On::Store => f.write_str("vectorstore"),
            On::Layer => f.write_str("layer"),
            On::Agent(a) => write!(f, "agent.{a}"),
        }
    }
}

/// An entitlement target, formatted only when a message needs it.
struct TargetName<'a>(On<'a>, &'a str);

impl fmt::Display for TargetName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            On::Store => write!(f, "vectorstore.{}", self.1),
            other => other.fmt(f),
        }
    }
}

/// Authorizes `access` on `store` for a principal authenticated there.
pub fn authorize<'p>(
    policy: &'p Policy,
    principal: Principal,
    store: StoreId,
    access: &Access<'_>,
) -> Result<Allowed<'p>, Denial> {
    let scope = access.scope;
    let k = match principal {
        // Authenticated on this store: its credential and open mode hold it whole.
        Principal::Anonymous => {
            return Err(Denial::missing_token(
                "this route needs a credential: send 'Authorization: Bearer <token>'",
            ))
        }
        Principal::Open | Principal::Token(Grant::StoreCredential(_)) => {
            return Ok(Allowed {
                scopes: Scopes::ALL,
                grant: None,
            })
        }
        Principal::Token(Grant::InboundKey { scopes, .. }) => {
            if !scopes.allows(scope) {
                return Err(Denial::insufficient(
                    scope,
                    format!(
                        "{} lacks the {scope} scope; it has [{}]",
                        principal.name(policy),
                        scopes.as_str()
                    ),
                ));
            }
            return Ok(Allowed {
                scopes,
                grant: None,
            });
        }
        Principal::Token(Grant::Minted(k)) => k,
    };
    let key = policy.keys.key(k);
    let target = TargetName(access.on, &policy.stores[store].name);
    let grant = match access.on {
        On::Store => key.grants.stores[store].as_ref(),
        On::Layer => key.grants.layer.as_ref(),
        On::Agent(agent) => key
            .grants
            .agents
            .iter()
            .find(|(a, _)| **a == *agent)
            .map(|(_, g)| g),
    };
    let Some(g) = grant else {
        return Err(Denial::insufficient(
            scope,
            format!(
                "API key {:?} has no {target} entitlement; add it to the key's spec.entitlements",
                key.name()
            ),
        ));
    };
    if !g.scopes.allows(scope) {
        return Err(Denial::insufficient(
            scope,
            format!(
                "API key {:?} lacks the {scope} scope on {target}; it has [{}]",
                key.name(),
                g.scopes.as_str()
            ),
        ));
    }
    match access.namespaces {
        Namespaces::Named(ns) if !g.allows_namespace(ns) => {
            return Err(Denial::namespace(key.name(), ns, scope, &target))
        }
        Namespaces::Unidentified if g.is_restricted() => {
            return Err(Denial::insufficient(
                scope,
                format!(
                    "API key {:?} is limited to some namespaces of {target}, and the gateway cannot tell which \
                     namespaces this request touches (its route is not in the route table, or names namespaces where the gateway does not read them); \
                     use a key without namespace limits",
                    key.name()
                ),
            ))
        }
        _ => {}
    }
    Ok(Allowed {
        scopes: g.scopes,
        grant: Some(g),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn grant(scopes: &[Scope], namespaces: Option<&[&str]>) -> Entitlement {
        Entitlement {
            scopes: scopes.to_vec(),
            namespaces: namespaces.map(|n| n.iter().map(|s| (*s).to_owned()).collect()),
            claims: Vec::new(),
        }
    }

    fn ents(list: &[(&str, Entitlement)]) -> Entitlements {
        list.iter()
            .map(|(t, e)| ((*t).to_owned(), e.clone()))
            .collect()
    }

    #[test]
    fn targets_parse_and_malformed_ones_are_refused() {
        assert_eq!(parse_target("layer"), Ok(Target::Layer));
        assert_eq!(
            parse_target("vectorstore.primary"),
            Ok(Target::VectorStore("primary"))
        );
        assert_eq!(parse_target("agent.a_1"), Ok(Target::Agent("a_1")));
        assert_eq!(
            parse_target("warehouse.prod-snowflake"),
            Ok(Target::Warehouse("prod-snowflake"))
        );
        for bad in [
            "",
            "layers",
            "vectorstore.",
            "vectorstore",
            "agent.",
            "warehouse.",
            "store.x",
            "vectorstore.a/b",
            "vectorstore.日本",
            "Layer",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?}");
        }
        assert!(parse_target(&format!("agent.{}", "a".repeat(254))).is_err());
    }

    #[test]
    fn a_key_with_an_unreadable_expiry_or_glob_is_refused() {
        let mut k = ApiKeyConfig {
            key_id: "key_1".into(),
            name: "k".into(),
            lookup_hash: crate::config::LookupHash::of("t"),
            expires_at: Some("10239-01-01T00:00:00Z".into()),
            entitlements: ents(&[("layer", grant(&[Scope::Read], None))]),
        };
        assert!(check_api_key(&k)
            .err()
            .unwrap_or_default()
            .contains("RFC 3339"));
        k.expires_at = Some("2027-01-01T00:00:00Z".into());
        assert_eq!(check_api_key(&k), Ok(()));
        k.entitlements = ents(&[("vectorstore.a", grant(&[], Some(&[])))]);
        assert!(check_api_key(&k)
            .err()
            .unwrap_or_default()
            .contains("empty namespaces"));
        k.entitlements = ents(&[("vectorstore.a", grant(&[], Some(&["a/b"])))]);
        assert!(check_api_key(&k).is_err());
        k.entitlements = ents(&[("bogus", grant(&[], None))]);
        assert!(check_api_key(&k).is_err());
    }

    #[test]
    fn scopes_must_be_held_admin_holds_all() {
        let admin = grant(&[Scope::Admin], None);
        let read = grant(&[Scope::Read], None);
        let rw = grant(&[Scope::Read, Scope::Write], None);
        assert!(grant_within("t", &admin, &rw).is_ok());
        assert!(grant_within("t", &admin, &admin).is_ok());
        assert!(grant_within("t", &rw, &read).is_ok());
        assert!(grant_within("t", &read, &rw)
            .err()
            .unwrap_or_default()
            .contains("write"));
        assert!(grant_within("t", &rw, &admin)
            .err()
            .unwrap_or_default()
            .contains("admin"));
    }

    #[test]
    fn namespaces_must_be_contained() {
        let shop = grant(&[Scope::Read], Some(&["shop-*"]));
        let all = grant(&[Scope::Read], None);
        let star = grant(&[Scope::Read], Some(&["*"]));
        assert!(grant_within("t", &all, &shop).is_ok());
        assert!(grant_within("t", &star, &shop).is_ok());
        assert!(grant_within("t", &shop, &shop).is_ok());
        assert!(grant_within("t", &shop, &grant(&[Scope::Read], Some(&["shop-eu-*"]))).is_ok());
        assert!(grant_within("t", &shop, &all).is_err(), "omitted means all");
        assert!(grant_within("t", &shop, &star).is_err());
        assert!(grant_within("t", &shop, &grant(&[Scope::Read], Some(&["shop*"]))).is_err());
        assert!(grant_within("t", &shop, &grant(&[Scope::Read], Some(&["[s]hop-*"]))).is_err());
    }

    #[test]
    fn claims_must_be_held() {
        let mut held = grant(&[], None);
        held.claims = vec!["notes:cohort:*:read".into()];
        let mut asked = held.clone();
        assert!(grant_within("warehouse.w", &held, &asked).is_ok());
        asked.claims.push("notes:*:*:write".into());
        assert!(grant_within("warehouse.w", &held, &asked).is_err());
    }

    #[test]
    fn a_target_not_held_is_refused_even_with_admin_elsewhere() {
        let held = ents(&[("vectorstore.primary", grant(&[Scope::Admin], None))]);
        let ok = ents(&[(
            "vectorstore.primary",
            grant(&[Scope::Read], Some(&["cohort-*"])),
        )]);
        assert!(within(&held, &ok).is_ok());
        let other_store = ents(&[("vectorstore.archive", grant(&[Scope::Admin], None))]);
        assert!(within(&held, &other_store)
            .err()
            .unwrap_or_default()
            .contains("vectorstore.archive"));
        let layer = ents(&[("layer", grant(&[Scope::Read], None))]);
        assert!(within(&held, &layer).is_err());
        assert!(within(&held, &Entitlements::default()).is_ok());
    }
}
