//! What a grant allows (SPEC §2, §3 step 4): the entitlement a request needs (target, scope,
//! namespaces) and the one check of it against a principal.
//!
//! Store credentials, `open` mode and inbound keys hold their store whole (inbound keys with
//! their scopes); minted keys hold what their entitlements say. A **restricted** grant (one with
//! namespace globs) is default-deny: an access whose namespaces the filter cannot identify is
//! refused, never forwarded with the store's credential.

use crate::auth::Principal;
use crate::denial::Denial;
use crate::policy::{Grant, Grantee, Policy, StoreId};
use crate::scope::{Scope, Scopes};
use std::fmt;

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
    let key = &policy.keys[k];
    let target = TargetName(access.on, &policy.stores[store].name);
    let grant = match access.on {
        On::Store => key.stores[store].as_ref(),
        On::Layer => key.layer.as_ref(),
        On::Agent(agent) => key
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
