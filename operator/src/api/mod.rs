//! The control API served by `run` (SPEC §7), in hev layer's JSON shapes: `/v2/keys` mint,
//! list (`?includeRevoked`), get, revoke (idempotent), delete, rotate (layergate's),
//! `/v2/keys/authenticate`
//! (no bearer; the token in the body is the credential; rate-limited), `/v2/vectorstores`
//! list/get with status, and `/healthz`, `/readyz`, `/metrics`.
//!
//! Callers are authenticated again with the filter crate's own decision code against the
//! configuration the operator last rendered, so the gateway and this API can never disagree:
//! admin for every `/v2/keys` route, read for `/v2/vectorstores`. Then [`crate::authority`]
//! bounds what they manage: a caller mints only entitlements it holds and sees, revokes and
//! deletes only keys it could have minted; `open` mode and anonymous callers get 401 on every
//! `/v2/keys…` route but `authenticate`, whose rate limit is per client address.
//!
//! In directory mode the API changes manifests: a minted key becomes an ApiKey file and a
//! Secret file in the directory, revoking sets `spec.revoked` in the ApiKey's document, deleting
//! removes it; the same pass that renders the gateway then picks the change up.

mod key_routes;
mod metrics;
mod rate;
mod rotate;
mod serve;
mod usage_routes;

use crate::authority::{self, Caller};
use crate::keys;
use crate::pass::Pass;
use crate::state::{Source, State};
use crate::status;
use crate::validate;
use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper::StatusCode;
use key_routes::{change_key, find_key, key_views, mint, Change};
use layergate_filter::decision::{decide, Decision, Principal};
use layergate_filter::headers::{pairs, serialize, RequestHead};
use layergate_filter::policy::Grant;
use metrics::metrics;
pub use rate::{client_address, RateLimiter, MAX_RATE_CLIENTS};
use serde_json::{json, Value};
pub use serve::Role;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
pub use usage_routes::USAGE_BODY_BYTES;

/// `POST /v2/keys/authenticate` calls allowed per minute (fixed window), as in hev layer.
pub const DEFAULT_AUTHENTICATE_PER_MINUTE: u32 = 120;

/// An answer before it is put on the wire.
struct Reply {
    status: StatusCode,
    body: Value,
    /// `WWW-Authenticate` for a 401.
    challenge: Option<String>,
    /// `Retry-After` (seconds) for a 503 the client should simply retry.
    retry_after: Option<u64>,
}

/// What one control API listener may hold (issue 13): the public gateway forwards
/// `authenticate` to it, so nothing a client sends may hold memory, sockets or time unbounded.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once; one more is answered 503 and closed at once.
    pub max_connections: usize,
    /// Time to send a request's headers (also the idle time of a kept-alive connection).
    pub header_timeout: std::time::Duration,
    /// Time to send a request's body once its headers are in; then 408.
    pub body_timeout: std::time::Duration,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            max_connections: 256,
            header_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Connections the key service's own listener serves at once: one long poll per gateway VM
/// (workers and the main thread of every replica), with room to spare.
pub const KEY_SERVICE_MAX_CONNECTIONS: usize = 1024;

/// `Retry-After` of a write refused by a replica that does not lead (one renewal period).
pub const RETRY_AFTER_SECS: u64 = 2;

/// How long a mint waits for the pass that publishes its key before answering anyway: the
/// token is returned once the ApiKey and its Secret exist, and the key is enforced when
/// that pass ends (issue 13: a slow pass must not lose the token to a client's timeout).
pub const MINT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Body cap of `POST /v2/keys/authenticate` (`{"token": "hvl_…"}`).
pub const AUTHENTICATE_BODY_BYTES: usize = 4 * 1024;
/// Body cap of a mint (`POST /v2/keys`: entitlements with up to 512 namespace globs each).
pub const MINT_BODY_BYTES: usize = 256 * 1024;
/// Body cap of every other route.
pub const OTHER_BODY_BYTES: usize = 64 * 1024;

/// One call of the control API, as its route named it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    /// `POST /v2/keys/authenticate`.
    Authenticate,
    /// `POST /v2/keys`.
    Mint,
    /// `GET /v2/keys`.
    List,
    /// `GET /v2/keys/{id}`.
    Get(String),
    /// `POST /v2/keys/{id}/revoke`.
    Revoke(String),
    /// `DELETE /v2/keys/{id}`.
    Delete(String),
    /// `GET /v2/keys/{id}/usage`.
    Usage(String),
    /// `POST /v2/keys/{id}/rotate`.
    Rotate(String),
    /// `GET /v2/vectorstores`.
    Stores,
    /// `GET /v2/vectorstores/{name}`.
    Store(String),
    /// No route: judged like the others, then 404.
    Unknown,
}

impl Call {
    /// Mint, revoke and delete: one at a time, and only on the replica that writes.
    fn writes(&self) -> bool {
        matches!(
            self,
            Call::Mint | Call::Revoke(_) | Call::Delete(_) | Call::Rotate(_)
        )
    }
}

/// State of the API.
pub struct Api {
    source: Arc<dyn Source>,
    limiter: Mutex<RateLimiter>,
    limits: ServeLimits,
    /// Held through a write (mint, revoke, delete): writes are serialized.
    writes: Mutex<()>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn reply(status: StatusCode, body: &Value) -> Reply {
    Reply {
        status,
        body: body.clone(),
        challenge: None,
        retry_after: None,
    }
}

fn error(status: StatusCode, message: &str) -> Reply {
    let mut r = reply(status, &json!({"status": "error", "error": message}));
    if status == StatusCode::UNAUTHORIZED {
        r.challenge = Some("Bearer realm=\"layergate\"".into());
    }
    r
}

fn http(r: Reply) -> axum::response::Response {
    let mut out = axum::response::Response::new(axum::body::Body::from(r.body.to_string()));
    *out.status_mut() = r.status;
    let headers = out.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(w) = r
        .challenge
        .and_then(|w| hyper::header::HeaderValue::from_str(&w).ok())
    {
        headers.insert(hyper::header::WWW_AUTHENTICATE, w);
    }
    if let Some(secs) = r.retry_after {
        headers.insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(secs),
        );
    }
    out
}

/// Marks a reply that leaves a body unread: the connection is closed after it, so nothing
/// more of that body is read.
fn close(mut r: axum::response::Response) -> axum::response::Response {
    r.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    r
}

impl Api {
    /// An API over a source (directory or cluster).
    pub fn new(source: Arc<dyn Source>, authenticate_per_minute: u32) -> Api {
        Api {
            source,
            limiter: Mutex::new(RateLimiter::new(authenticate_per_minute)),
            limits: ServeLimits::default(),
            writes: Mutex::new(()),
        }
    }

    /// The same API with other connection limits and timeouts (tests use small ones).
    pub fn with_limits(mut self, limits: ServeLimits) -> Api {
        self.limits = limits;
        self
    }

    /// The `authenticate` rate limit, checked before anything of the body is read: 429 for a
    /// client over its budget this minute.
    fn rate_limited(&self, headers: &[(String, String)], peer: IpAddr) -> Option<Reply> {
        let allowed = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(client_address(headers, peer), now());
        (!allowed).then(|| {
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many authenticate calls from your address this minute; retry in a minute",
            )
        })
    }

    /// Answers one `/v2/…` call whose body has been read: the whole API without the socket,
    /// the same for directory and kube mode.
    fn reply(
        &self,
        call: Call,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Reply {
        self.route(self.source.as_ref(), call, method, path, headers, body)
            .unwrap_or_else(|e| {
                // The chain names Secrets, API server messages and file paths: the log gets
                // it, the caller only a reference to look it up by.
                let reference = format!(
                    "{:04x}{:04x}",
                    crate::random::random_u16(),
                    crate::random::random_u16()
                );
                tracing::error!(%method, path = %path.split('?').next().unwrap_or_default(), reference, "control API: {e:#}");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("internal error (reference {reference}); see the operator's log"),
                )
            })
    }

    fn route(
        &self,
        source: &dyn Source,
        call: Call,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Reply> {
        let (bare, query) = path.split_once('?').unwrap_or((path, ""));
        let Some(pass) = source.state().last() else {
            return Ok(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no configuration rendered yet; see the operator's log",
            ));
        };
        let principal = match check(&pass, method, path, headers) {
            Ok(p) => p,
            Err(denied) => return Ok(denied),
        };
        if call == Call::Authenticate {
            return Ok(self.authenticate(&pass, body));
        }
        // `open` ignores tokens on the data plane; key management still needs one, so a
        // minted key's token counts here (a `layer` admin manages keys in an open install).
        let principal = match principal {
            Principal::Open => minted_bearer(&pass, headers).unwrap_or(principal),
            p => p,
        };
        let caller = authority::caller(&pass.policy, principal);
        if bare == "/v2/keys" || bare.starts_with("/v2/keys/") {
            match &caller {
                Caller::Anonymous => {
                    return Ok(error(
                        StatusCode::UNAUTHORIZED,
                        "key management needs a credential, whatever the store's inboundAuth mode: send 'Authorization: Bearer <admin token>'",
                    ))
                }
                Caller::Refused(why) => return Ok(error(StatusCode::FORBIDDEN, why)),
                Caller::Manager { .. } => {}
            }
        }
        let writes = call.writes();
        // One write at a time (mint, revoke, delete): parallel mints of one name get one
        // winner and 409s, and two rewrites of one manifest file never undo each other.
        let _one_writer = writes.then(|| {
            self.writes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        });
        // A write judges the state as it is once it holds the lock.
        let pass = match writes {
            true => source.state().last().unwrap_or(pass),
            false => pass,
        };
        if writes && !source.writable() {
            // Only the replica holding the Lease writes (two writers never); the Service
            // spreads calls over both, so the other answers "retry" rather than forwarding.
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this operator replica does not hold the lease and does not write; retry (the call reaches the leader or a new one within seconds)",
            );
            r.retry_after = Some(RETRY_AFTER_SECS);
            return Ok(r);
        }
        match call {
            Call::Mint => mint(source, &pass, &caller, body),
            Call::List => {
                let all = query
                    .split('&')
                    .any(|kv| kv == "includeRevoked=true" || kv == "includeRevoked=1");
                let book = &source.state().usage;
                let keys: Vec<Value> = key_views(&pass, &caller)
                    .into_iter()
                    .filter(|k| all || k["phase"] != "Revoked")
                    .map(|k| usage_routes::with_last_seen(book, k))
                    .collect();
                Ok(reply(StatusCode::OK, &json!({"keys": keys})))
            }
            Call::Get(id) => Ok(match find_key(&pass, &caller, &id) {
                Some(k) => reply(
                    StatusCode::OK,
                    &usage_routes::with_last_seen(&source.state().usage, k),
                ),
                None => error(StatusCode::NOT_FOUND, &format!("no API key {id:?}")),
            }),
            Call::Usage(id) => Ok(usage_routes::key_usage(
                &pass,
                &source.state().usage,
                &caller,
                &id,
            )),
            Call::Revoke(id) => change_key(source, &pass, &caller, &id, Change::Revoke),
            Call::Delete(id) => change_key(source, &pass, &caller, &id, Change::Delete),
            Call::Rotate(id) => rotate::rotate(source, &pass, &caller, &id, body),
            Call::Stores => Ok(reply(
                StatusCode::OK,
                &json!({"vectorstores": store_views(source, &pass)}),
            )),
            Call::Store(name) => Ok(
                match store_views(source, &pass)
                    .into_iter()
                    .find(|s| s["name"] == *name)
                {
                    Some(s) => reply(StatusCode::OK, &s),
                    None => error(StatusCode::NOT_FOUND, &format!("no VectorStore {name:?}")),
                },
            ),
            Call::Authenticate | Call::Unknown => Ok(error(
                StatusCode::NOT_FOUND,
                &format!("the control API has no route {method} {bare}"),
            )),
        }
    }

    /// `POST /v2/keys/authenticate`: the token in the body, judged now — an expired or
    /// revoked key is 401 whatever the last rendering said.
    /// The rate limit was checked before the body was read ([`Api::rate_limited`]).
    fn authenticate(&self, pass: &Pass, body: &[u8]) -> Reply {
        let Some(token) = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_owned))
        else {
            return error(StatusCode::BAD_REQUEST, "send {\"token\": \"hvl_…\"}");
        };
        let hash = layergate_filter::config::LookupHash::of(&token);
        let refused = || {
            error(
                StatusCode::UNAUTHORIZED,
                "the token is not an active API key (unknown, revoked or expired)",
            )
        };
        let Some(k) = pass.index().by_hash(pass, &hash, now()) else {
            return refused();
        };
        let expired = k
            .expires_at
            .as_deref()
            .is_some_and(|t| layergate_filter::time::parse_rfc3339(t).is_none_or(|at| at <= now()));
        let object = pass.index().named(pass, &k.name);
        let revoked = object.is_none_or(|o| o.spec.revoked == Some(true));
        if expired || revoked {
            return refused();
        }
        let owner = object.and_then(|o| o.spec.owner.clone());
        reply(
            StatusCode::OK,
            &json!({"keyId": k.key_id, "name": k.name, "owner": owner, "entitlements": k.entitlements, "expiresAt": k.expires_at}),
        )
    }
}

/// Checks the caller exactly as the gateway does, with the filter's decision code: the
/// principal, or the refusal.
fn check(
    pass: &Pass,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<Principal, Reply> {
    let mut all: Vec<(&str, &str)> = vec![(":method", method), (":path", path)];
    all.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let buf = serialize(all.iter().copied());
    let head = RequestHead::from_pairs(pairs(&buf));
    match decide(&pass.policy, &head, now) {
        Decision::Deny(d) => {
            let mut r = reply(
                StatusCode::from_u16(d.status() as u16).unwrap_or(StatusCode::FORBIDDEN),
                &serde_json::from_str(&d.body()).unwrap_or_default(),
            );
            r.challenge = d.www_authenticate().map(str::to_owned);
            Err(r)
        }
        Decision::Forward(plan)
        | Decision::ForwardWithPath(plan, _)
        | Decision::Inspect(plan, _) => Ok(plan.principal),
    }
}

/// The minted key (active, not expired) whose token is the request's bearer, if any.
fn minted_bearer(pass: &Pass, headers: &[(String, String)]) -> Option<Principal> {
    let value = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))?
        .1
        .trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let keys = &pass.policy.keys;
    let k = keys.lookup(&layergate_filter::policy::token_hash(
        token.trim().as_bytes(),
    ))?;
    keys.key(k)
        .expires_at
        .is_none_or(|at| at > now())
        .then_some(Principal::Token(Grant::Minted(k)))
}

fn store_views(source: &dyn Source, pass: &Pass) -> Vec<Value> {
    let probes = source.state().probes();
    pass.objects
        .stores
        .iter()
        .map(|s| {
            let name = s.metadata.name.clone().unwrap_or_default();
            let default = pass
                .validation
                .stores
                .iter()
                .find(|v| v.name == name)
                .and_then(|v| v.valid.as_ref())
                .is_some_and(|v| v.default);
            json!({
                "name": name,
                "kind": s.spec.kind,
                "default": default,
                "endpoint": s.spec.endpoint,
                "turbopuffer": s.spec.turbopuffer,
                "credential": s.spec.credential,
                "inboundAuth": s.spec.inbound_auth,
                "status": status::store(pass, probes.get(&name), s, now()),
            })
        })
        .collect()
}

/// `/healthz`: 503 while the controller loop is stuck.
fn health(state: &State) -> Reply {
    match state.stuck_for() {
        None => reply(StatusCode::OK, &json!({"status": "ok"})),
        Some(d) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the controller loop has not turned for {} s", d.as_secs()),
        ),
    }
}
