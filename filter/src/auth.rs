//! Who is calling (SPEC §3 step 3): the bearer token parsed once from the request head, and
//! the principal it is under one store's `inboundAuth` mode.
//!
//! [`check`] is the one authorization check of the filter: authenticate on a store, then
//! [`entitlement::authorize`] the access. The header decision calls it for the route, and body
//! inspection calls it again for every namespace a body names — with the same credential,
//! re-authenticated on the store that namespace resolves to.

use crate::denial::Denial;
use crate::entitlement::{self, Access, Allowed};
use crate::headers::Authorization;
use crate::keys::Unusable;
use crate::policy::{token_hash, Grant, Mode, Policy, StoreId};

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
    let allowed = entitlement::authorize(policy, principal, store, access)?;
    Ok((principal, allowed))
}
