//! Who may manage which keys (SPEC §7 "Who may manage keys"): the one place this is decided,
//! for both modes and every key route. A key is never worth more than the caller who made it,
//! in lifetime too.
//!
//! ```text
//!  Principal (the filter's decision) ──caller──► Anonymous | Refused(why) | Manager{holds, expires}
//!  Manager + asked entitlements ──may_mint──► Ok | what the caller does not hold
//!  Manager + asked lifetime ──lifetime──► no longer than the maker's
//!  Manager + an existing ApiKey ──may_manage──► list/get/revoke/delete it, or not even see it
//! ```
//!
//! | caller | manages |
//! |---|---|
//! | the bootstrap admin (the default store's credential under `deriveFromStore`) | every key |
//! | a minted key with `layer` admin and no namespace globs | every key, never outliving it |
//! | an inbound `admin` key of store A | `vectorstore.A` keys |
//! | any other credential (a minted key without that grant, a glob-limited `layer` admin, a non-admin inbound key) | nothing: 403 |
//! | no credential (`open` mode included) | nothing: 401 |
//!
//! A `layer` admin grant limited by globs keeps its meaning on the app routes that name
//! namespaces (`target_namespace` of a pipeline); key management names none, so such a grant
//! manages no keys — the same answer the gateway gives for any restricted grant on a route
//! whose namespaces it cannot identify. Agent grants never reach key management.

use crate::crd::ApiKey;
use layergate_filter::config::{ApiKeyConfig, Entitlement, Entitlements};
use layergate_filter::decision::Principal;
use layergate_filter::entitlement;
use layergate_filter::policy::{Grant, Policy};
use layergate_filter::ratelimit::RateLimits;
use layergate_filter::scope::{Scope, Scopes};

/// What a manager holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holds {
    /// Every target (the bootstrap admin, an unrestricted `layer` admin).
    Everything,
    /// These grants and no more (an inbound admin key: its store whole).
    Grants(Entitlements),
}

/// What a control-API caller is, for key management.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credential (or `open` mode without a minted key's token): 401.
    Anonymous,
    /// A credential that manages no keys: 403, saying why.
    Refused(String),
    /// A credential that manages keys.
    Manager {
        /// What it may grant, see and touch.
        holds: Holds,
        /// When it expires (Unix seconds): what it mints expires no later.
        expires_at: Option<i64>,
        /// Its own limits: what it mints is limited no more loosely.
        limits: Option<RateLimits>,
    },
}

/// The SPEC's default-deny message for key management, naming who may.
const WHO_MAY: &str = "key management needs the bootstrap admin, a minted key with an unrestricted `layer` admin grant, or an inbound admin key";

fn scope_list(s: Scopes) -> Vec<Scope> {
    [Scope::Read, Scope::Write, Scope::Admin]
        .into_iter()
        .filter(|x| s.allows(*x) && (*x == Scope::Admin || !s.allows(Scope::Admin)))
        .collect()
}

/// The caller a principal is for key management, given the policy it was authenticated with.
/// `open` is the principal of an `open` store with no (usable) minted key's token: anonymous.
pub fn caller(policy: &Policy, principal: Principal) -> Caller {
    match principal {
        Principal::Anonymous | Principal::Open => Caller::Anonymous,
        // Only the default store's credential under deriveFromStore reaches the control routes
        // (namespace-less, so resolved to the default store): the bootstrap admin.
        Principal::Token(Grant::StoreCredential(_)) => Caller::Manager {
            holds: Holds::Everything,
            expires_at: None,
            limits: None,
        },
        Principal::Token(Grant::InboundKey { store, key, scopes }) => {
            let Some(s) = policy.stores.get(store) else {
                return Caller::Anonymous;
            };
            if !scopes.allows(Scope::Admin) {
                return Caller::Refused(format!(
                    "{} is not an admin key; {WHO_MAY}",
                    principal.name(policy)
                ));
            }
            Caller::Manager {
                holds: Holds::Grants(Entitlements::from_iter([(
                    format!("vectorstore.{}", s.name),
                    Entitlement {
                        scopes: scope_list(scopes),
                        namespaces: None,
                        claims: Vec::new(),
                    },
                )])),
                expires_at: None,
                limits: s.key_limits.get(key).cloned().flatten(),
            }
        }
        Principal::Token(Grant::Minted(k)) => {
            let Some(key) = policy.keys.get(k) else {
                return Caller::Anonymous;
            };
            match &key.grants.layer {
                Some(g) if g.scopes.allows(Scope::Admin) && !g.is_restricted() => Caller::Manager {
                    holds: Holds::Everything,
                    expires_at: key.expires_at,
                    limits: key.grants.limits.clone(),
                },
                Some(g) if g.scopes.allows(Scope::Admin) => Caller::Refused(format!(
                    "API key {:?} holds `layer` admin only for some namespaces, and key management names none; {WHO_MAY}",
                    key.name()
                )),
                _ => Caller::Refused(format!(
                    "API key {:?} holds no `layer` admin grant; {WHO_MAY}",
                    key.name()
                )),
            }
        }
    }
}

/// An ApiKey's entitlements in the filter's types.
pub fn spec_entitlements(k: &ApiKey) -> Entitlements {
    k.spec
        .entitlements
        .iter()
        .map(|(t, e)| {
            (
                t.clone(),
                Entitlement {
                    scopes: e.scopes.clone(),
                    namespaces: e.namespaces.clone(),
                    claims: e.claims.clone(),
                },
            )
        })
        .collect()
}

/// May `caller` mint a key with `asked`? The error names what the caller does not hold.
pub fn may_mint(caller: &Caller, asked: &Entitlements) -> Result<(), String> {
    match caller {
        Caller::Anonymous => Err("key management needs a credential".into()),
        Caller::Refused(why) => Err(why.clone()),
        Caller::Manager {
            holds: Holds::Everything,
            ..
        } => Ok(()),
        Caller::Manager {
            holds: Holds::Grants(held),
            ..
        } => entitlement::within(held, asked).map_err(|m| {
            format!("a key can never be worth more than the caller who makes it: {m}")
        }),
    }
}

/// How far a key minted now may be from its end of life: what was asked (`None`: never),
/// cut to the maker's remaining lifetime less [`CREATION_MARGIN_SECS`] (the new key's life
/// counts from its creation, which the API server stamps a moment later). `Err` when the maker
/// has too little left to mint anything.
pub fn lifetime(caller: &Caller, asked: Option<i64>, now: i64) -> Result<Option<i64>, String> {
    let Caller::Manager {
        expires_at: Some(end),
        ..
    } = caller
    else {
        return Ok(asked);
    };
    let left = end - now - CREATION_MARGIN_SECS;
    if left < 1 {
        return Err(format!(
            "a key never outlives the key that mints it, and yours expires at {}",
            crate::validate::rfc3339(*end)
        ));
    }
    Ok(Some(asked.map_or(left, |a| a.min(left))))
}

/// The limits a key minted now carries: what was asked, when the maker is unlimited; the
/// maker's own, when nothing was asked and the maker is limited (a key is never worth more than
/// its maker, in rate too); `Err` naming what is looser when the asked limits are looser than
/// the maker's (a higher rate or burst, a larger or missing quota).
pub fn limits(caller: &Caller, asked: Option<&RateLimits>) -> Result<Option<RateLimits>, String> {
    let Caller::Manager {
        limits: Some(mine), ..
    } = caller
    else {
        return Ok(asked.cloned());
    };
    let Some(asked) = asked else {
        return Ok(Some(mine.clone()));
    };
    match mine.looser(asked) {
        None => Ok(Some(asked.clone())),
        Some(why) => Err(format!(
            "a key can never be worth more than the caller who makes it, and your key is limited: the asked limits have {why}"
        )),
    }
}

/// Seconds a minted key's lifetime is kept short of its maker's end, to cover the time between
/// the mint and the creation stamp its lifetime counts from.
pub const CREATION_MARGIN_SECS: i64 = 60;

/// May `caller` see, revoke or delete `key`: exactly when it could have minted what the key
/// grants — `enforced`, the form the gateway enforces (a last valid form while the spec is
/// invalid), else its spec read as a grant: a target that does not parse grants nothing and is
/// left out, a grant whose globs do not compile counts as the whole target. So a key whose spec
/// went bad stays revocable by whoever could have minted what it still names; a key naming no
/// target that parses, only by a caller holding everything.
pub fn may_manage(caller: &Caller, key: &ApiKey, enforced: Option<&ApiKeyConfig>) -> bool {
    if let Some(config) = enforced {
        return may_mint(caller, &config.entitlements).is_ok();
    }
    let spec = spec_entitlements(key);
    let named: Entitlements = spec
        .iter()
        .filter(|(target, _)| entitlement::parse_target(target).is_ok())
        .map(|(target, e)| {
            let mut e = e.clone();
            if entitlement::grant_globs(target, &e).is_err() {
                e.namespaces = None;
            }
            (target.clone(), e)
        })
        .collect();
    if named.is_empty() && !key.spec.entitlements.is_empty() {
        return matches!(
            caller,
            Caller::Manager {
                holds: Holds::Everything,
                ..
            }
        );
    }
    may_mint(caller, &named).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scope_lists_name_admin_alone_or_the_plain_scopes() {
        assert_eq!(
            scope_list(Scopes::from_slice(&[Scope::Admin])),
            [Scope::Admin]
        );
        assert_eq!(
            scope_list(Scopes::from_slice(&[Scope::Read, Scope::Write])),
            [Scope::Read, Scope::Write]
        );
        assert_eq!(
            scope_list(Scopes::from_slice(&[Scope::Read])),
            [Scope::Read]
        );
    }

    #[test]
    fn a_minted_lifetime_is_cut_to_the_makers() {
        let maker = |end| Caller::Manager {
            holds: Holds::Everything,
            expires_at: end,
            limits: None,
        };
        let now = 1_000_000;
        assert_eq!(lifetime(&maker(None), None, now), Ok(None));
        assert_eq!(lifetime(&maker(None), Some(5), now), Ok(Some(5)));
        let end = Some(now + 3_600);
        assert_eq!(lifetime(&maker(end), None, now), Ok(Some(3_540)));
        assert_eq!(lifetime(&maker(end), Some(86_400), now), Ok(Some(3_540)));
        assert_eq!(lifetime(&maker(end), Some(60), now), Ok(Some(60)));
        assert!(lifetime(&maker(Some(now + 30)), Some(5), now).is_err());
    }

    #[test]
    fn a_minted_key_is_limited_no_more_loosely_than_its_maker() {
        let rate = |r| RateLimits {
            requests_per_second: Some(r),
            ..RateLimits::default()
        };
        let maker = |limits| Caller::Manager {
            holds: Holds::Everything,
            expires_at: None,
            limits,
        };
        assert_eq!(limits(&maker(None), None), Ok(None));
        assert_eq!(limits(&maker(None), Some(&rate(500))), Ok(Some(rate(500))));
        let limited = maker(Some(rate(10)));
        assert_eq!(
            limits(&limited, None),
            Ok(Some(rate(10))),
            "inherits the maker's"
        );
        assert_eq!(limits(&limited, Some(&rate(5))), Ok(Some(rate(5))));
        let m = limits(&limited, Some(&rate(11))).unwrap_err();
        assert!(m.contains("requestsPerSecond 11 is over yours (10)"), "{m}");
    }
}
