//! Who may manage which keys (SPEC §7 "Who may manage keys"), as pure functions the control
//! API calls in both modes: a key is never worth more than the caller who made it.
//!
//! ```text
//!  Principal (the filter's decision) ──caller──► Caller::{Anonymous, Everything, Holds(grants)}
//!  Caller + asked entitlements ──may_mint──► Ok | what the caller does not hold
//!  Caller + an existing ApiKey ──may_manage──► list/get/revoke/delete it, or not even see it
//! ```
//!
//! - the bootstrap admin (the default store's credential under `deriveFromStore`) and a minted
//!   key holding `layer` admin: everything;
//! - an inbound key of store A (only `admin` ones reach key management): `vectorstore.A` with
//!   its scopes and every namespace — so it mints and manages `vectorstore.A` keys only;
//! - anyone else (`open` mode, no token): nothing; the API answers 401.

use crate::crd::ApiKey;
use layergate_filter::config::{ApiKeyConfig, Entitlement, Entitlements};
use layergate_filter::decision::Principal;
use layergate_filter::entitlement;
use layergate_filter::policy::{Grant, Policy};
use layergate_filter::scope::{Scope, Scopes};

/// What a control-API caller holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credential (or `open` mode): may manage nothing.
    Anonymous,
    /// The bootstrap admin or a `layer` admin key: may manage every key.
    Everything,
    /// These grants and no more.
    Holds(Entitlements),
}

fn scope_list(s: Scopes) -> Vec<Scope> {
    [Scope::Read, Scope::Write, Scope::Admin]
        .into_iter()
        .filter(|x| s.allows(*x) && (*x == Scope::Admin || !s.allows(Scope::Admin)))
        .collect()
}

/// The caller a principal is, given the policy and the minted keys it was compiled from.
pub fn caller(policy: &Policy, keys: &[ApiKeyConfig], principal: Principal) -> Caller {
    match principal {
        Principal::Anonymous | Principal::Open => Caller::Anonymous,
        // Only the default store's credential under deriveFromStore reaches the control routes
        // (namespace-less, so resolved to the default store): the bootstrap admin.
        Principal::Token(Grant::StoreCredential(_)) => Caller::Everything,
        Principal::Token(Grant::InboundKey { store, scopes, .. }) => {
            let Some(s) = policy.stores.get(store) else {
                return Caller::Anonymous;
            };
            Caller::Holds(Entitlements::from_iter([(
                format!("vectorstore.{}", s.name),
                Entitlement {
                    scopes: scope_list(scopes),
                    namespaces: None,
                    claims: Vec::new(),
                },
            )]))
        }
        Principal::Token(Grant::Minted(k)) => {
            let Some(name) = policy.keys.get(k).map(|m| m.name()) else {
                return Caller::Anonymous;
            };
            let Some(cfg) = keys.iter().find(|c| c.name == name) else {
                return Caller::Anonymous;
            };
            let layer_admin = cfg
                .entitlements
                .get("layer")
                .is_some_and(|e| e.scopes.contains(&Scope::Admin));
            if layer_admin {
                Caller::Everything
            } else {
                Caller::Holds(cfg.entitlements.clone())
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
        Caller::Everything => Ok(()),
        Caller::Holds(held) => entitlement::within(held, asked).map_err(|m| {
            format!("a key can never be worth more than the caller who makes it: {m}")
        }),
    }
}

/// May `caller` see, revoke or delete `key`: exactly when it could have minted it.
pub fn may_manage(caller: &Caller, key: &ApiKey) -> bool {
    may_mint(caller, &spec_entitlements(key)).is_ok()
}

#[cfg(test)]
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
}
