//! Who is calling and what they may do (SPEC §3 steps 3–4): the bearer token parsed once from
//! the request head, the principal it is under one store's `inboundAuth` mode, and what a
//! request needs of it ([`Access`]) judged against what it holds ([`authorize`]).
//!
//! Store credentials, `open` mode and inbound keys hold their store whole (inbound keys with
//! their scopes); minted keys hold what their entitlements say. A **restricted** grant (one with
//! namespace globs) is default-deny: an access whose namespaces the filter cannot identify is
//! refused, never forwarded with the store's credential.
//!
//! [`check`] is the one authorization check of the filter: authenticate on a store, then
//! [`authorize`] the access. The header decision calls it for the route, and body
//! inspection calls it again for every namespace a body names — with the same credential,
//! re-authenticated on the store that namespace resolves to.

use crate::config::{token_hash, StoreId};
use crate::denial::Denial;
use crate::entitlement::Grantee;
use crate::headers::Authorization;
use crate::keys::Unusable;
use crate::policy::{Grant, Mode, Policy};
use crate::scope::{Scope, Scopes};
use std::fmt;

/// Longest bearer token considered (hev layer tokens are ~36 characters).
pub const MAX_TOKEN_BYTES: usize = 1024;

/// The credential a request carries, parsed from its `Authorization` header. Holds only the
/// token's SHA-256, never the token, so it can outlive the header callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// No `Authorization` header.
    Absent,
    /// `Bearer <token>`: the token's SHA-256.
    Bearer([u8; 32]),
    /// An `Authorization` header that is not one usable bearer token.
    Malformed(Malformed),
}

/// Why an `Authorization` header is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// More than one header (or one folded value with a comma).
    Repeated,
    /// A scheme other than `Bearer`.
    NotBearer,
    /// `Bearer` with nothing after it.
    Empty,
    /// Longer than [`MAX_TOKEN_BYTES`].
    TooLong,
}

impl Credential {
    /// Parses the request's `Authorization` header(s); the scheme is case-insensitive.
    pub fn parse(authz: Authorization<'_>) -> Credential {
        let header = match authz {
            Authorization::Absent => return Credential::Absent,
            Authorization::Repeated => return Credential::Malformed(Malformed::Repeated),
            Authorization::One(h) => h,
        };
        let (scheme, token) = header.split_once(' ').unwrap_or((header, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Credential::Malformed(Malformed::NotBearer);
        }
        let token = token.trim_matches(' ');
        if token.is_empty() {
            Credential::Malformed(Malformed::Empty)
        } else if token.len() > MAX_TOKEN_BYTES {
            Credential::Malformed(Malformed::TooLong)
        } else {
            Credential::Bearer(token_hash(token.as_bytes()))
        }
    }
}

impl Malformed {
    fn denial(self) -> Denial {
        match self {
            Malformed::Repeated => Denial::bad_request("send exactly one Authorization header"),
            Malformed::NotBearer => Denial::missing_token(
                "the Authorization header must use the Bearer scheme: 'Authorization: Bearer <token>'",
            ),
            Malformed::Empty => {
                Denial::missing_token("the Authorization header has an empty bearer token")
            }
            Malformed::TooLong => Denial::invalid_token(
                "the bearer token is longer than 1024 bytes; no layergate key is that long",
            ),
        }
    }
}

/// Who is calling, by reference into the [`Policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// No credential needed for the route; none considered.
    Anonymous,
    /// The store's `inboundAuth.mode` is `open`.
    Open,
    /// A token that matched one of the policy's grants.
    Token(Grant),
}

impl Principal {
    /// Name for logs and `x-layergate-principal`: `anonymous`, `open`, `store:<name>`,
    /// `key:<store>/<name>`, `apikey:<name>`.
    pub fn name<'p>(&self, policy: &'p Policy) -> &'p str {
        match *self {
            Principal::Anonymous => "anonymous",
            Principal::Open => "open",
            Principal::Token(Grant::StoreCredential(s)) => &policy.stores[s].principal,
            Principal::Token(Grant::InboundKey { store, key, .. }) => {
                &policy.stores[store].key_principals[key]
            }
            Principal::Token(Grant::Minted(k)) => policy.keys.key(k).principal,
        }
    }

    /// The rate limit this principal's requests are held to, if any: a minted key's
    /// `limits`, an inbound key's; store credentials, `open` and anonymous callers have none.
    pub fn rate(&self, policy: &Policy) -> Option<crate::ratelimit::Rate> {
        match *self {
            Principal::Token(Grant::Minted(k)) => policy.keys.get(k)?.rate(),
            Principal::Token(Grant::InboundKey { store, key, .. }) => policy
                .stores
                .get(store)?
                .key_limits
                .get(key)?
                .as_ref()?
                .rate(),
            _ => None,
        }
    }
}

/// The principal `credential` is on `store`, under that store's `inboundAuth` mode (SPEC §3):
/// `open` needs nothing; `deriveFromStore` accepts the store's own and the default store's
/// credential; `keys` accepts the store's listed keys; minted keys (Active, not expired at
/// `now`, Unix seconds) are accepted everywhere and judged by their entitlements.
pub fn authenticate(
    policy: &Policy,
    store: StoreId,
    credential: Credential,
    now: impl Fn() -> i64,
) -> Result<Principal, Denial> {
    let s = &policy.stores[store];
    if s.mode == Mode::Open {
        return Ok(Principal::Open);
    }
    let hash = match credential {
        Credential::Absent => {
            return Err(Denial::missing_token(
                "this route needs a credential: send 'Authorization: Bearer <token>'",
            ))
        }
        Credential::Malformed(m) => return Err(m.denial()),
        Credential::Bearer(hash) => hash,
    };
    let grants = policy
        .tokens
        .get(&hash)
        .map(crate::policy::Grants::as_slice)
        .unwrap_or(&[]);
    for &g in grants {
        match g {
            Grant::StoreCredential(id)
                if s.mode == Mode::DeriveFromStore
                    && (id == store || Some(id) == policy.default_store) =>
            {
                return Ok(Principal::Token(g))
            }
            Grant::InboundKey { store: id, .. } if id == store && s.mode == Mode::Keys => {
                return Ok(Principal::Token(g))
            }
            _ => {}
        }
    }
    if !grants.is_empty() {
        // A credential of the configuration, for another store: never a minted key.
        return Err(Denial::invalid_token(format!(
            "the bearer token is not accepted by store {:?} (inboundAuth mode {})",
            &*s.name,
            s.mode.as_str()
        )));
    }
    // Not a credential of the configuration: a minted key, judged by a table that must be
    // fresh (SPEC §6: fail closed, visibly).
    if let Err(why) = policy.keys.usable(now()) {
        return Err(Denial::unavailable(match why {
            Unusable::NotLoaded => {
                "the key table is not loaded yet (the gateway has not synced with the layergate key service); retry shortly"
            }
            Unusable::Stale => {
                "the key table is stale (the gateway could not reach the layergate key service for longer than keyService.maxStalenessSeconds); minted keys are refused until it syncs"
            }
        }));
    }
    if let Some(k) = policy.keys.lookup(&hash) {
        let key = policy.keys.key(k);
        return match key.expires_at {
            Some(at) if at <= now() => Err(Denial::invalid_token(format!(
                "API key {:?} has expired; mint a new key",
                key.name()
            ))),
            _ => Ok(Principal::Token(Grant::Minted(k))),
        };
    }
    Err(Denial::invalid_token(
        "the bearer token is not a known key (unknown, revoked or mistyped); check the token or mint a new key",
    ))
}

/// The one authorization check: `credential` authenticated on `store`, then `access`
/// authorized for the principal it is there. Returns the principal and what it holds.
pub fn check<'p>(
    policy: &'p Policy,
    credential: Credential,
    store: StoreId,
    access: &Access<'_>,
    now: impl Fn() -> i64,
) -> Result<(Principal, Allowed<'p>), Denial> {
    let principal = authenticate(policy, store, credential, now)?;
    let allowed = authorize(policy, principal, store, access)?;
    Ok((principal, allowed))
}

// ---- authorization: what a request needs, judged against what the principal holds ----

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
