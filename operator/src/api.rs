//! The control API served by `run` (SPEC §7), in hev layer's JSON shapes: `/v2/keys` mint,
//! list (`?includeRevoked`), get, revoke (idempotent), delete, `/v2/keys/authenticate`
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

use crate::authority::{self, Caller};
use crate::keys;
use crate::pass::Pass;
use crate::state::{Source, State};
use crate::status;
use crate::validate;
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::StatusCode;
use layergate_filter::decision::{decide, Decision, Principal};
use layergate_filter::headers::{pairs, serialize, RequestHead};
use layergate_filter::policy::Grant;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

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

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The control API (and, for gateways rendered before the key service had its own
    /// listener, the key service too).
    Control,
    /// The key service alone.
    Keys,
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

/// The body cap for a route.
fn body_cap(method: &str, path: &str) -> usize {
    match (method, path.split('?').next().unwrap_or_default()) {
        ("POST", "/v2/keys/authenticate") => AUTHENTICATE_BODY_BYTES,
        ("POST", "/v2/keys") => MINT_BODY_BYTES,
        _ => OTHER_BODY_BYTES,
    }
}

/// Most clients the `authenticate` rate limiter tracks at once; when the table is full and
/// nothing in it is from an older minute, further new clients share one overflow budget.
pub const MAX_RATE_CLIENTS: usize = 4096;

/// A fixed-window limit per client address, in bounded memory.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    clients: HashMap<IpAddr, (i64, u32)>,
    overflow: (i64, u32),
}

impl RateLimiter {
    /// A limiter allowing `per_minute` calls per client per minute.
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            clients: HashMap::new(),
            overflow: (0, 0),
        }
    }

    /// Counts one call of `client` at `now` (Unix seconds); false when over its limit.
    pub fn allow(&mut self, client: IpAddr, now: i64) -> bool {
        let minute = now.div_euclid(60);
        if !self.clients.contains_key(&client) && self.clients.len() >= MAX_RATE_CLIENTS {
            self.clients.retain(|_, (m, _)| *m == minute);
        }
        let slot = if self.clients.len() < MAX_RATE_CLIENTS || self.clients.contains_key(&client) {
            self.clients.entry(client).or_insert((minute, 0))
        } else {
            &mut self.overflow
        };
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 = slot.1.saturating_add(1);
        slot.1 <= self.per_minute
    }

    /// Clients tracked now (at most [`MAX_RATE_CLIENTS`]).
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }
}

/// The client a request is from: through the gateway, the address Envoy saw (the last
/// `x-forwarded-for` entry — the rendered listener sets `use_remote_address`, so Envoy appends
/// the peer address itself and a client cannot choose it); called directly, the peer address.
pub fn client_address(headers: &[(String, String)], peer: IpAddr) -> IpAddr {
    headers
        .iter()
        .rfind(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for"))
        .and_then(|(_, v)| v.rsplit(',').next())
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or(peer)
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

fn http(r: Reply) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(r.body.to_string())));
    *out.status_mut() = r.status;
    out.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(w) = r
        .challenge
        .and_then(|w| hyper::header::HeaderValue::from_str(&w).ok())
    {
        out.headers_mut().insert("www-authenticate", w);
    }
    if let Some(secs) = r.retry_after {
        out.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(secs),
        );
    }
    out
}

/// Marks a reply that leaves a body unread: the connection is closed after it, so nothing
/// more of that body is read.
fn close(mut r: hyper::Response<Full<Bytes>>) -> hyper::Response<Full<Bytes>> {
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
    fn rate_limited(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        peer: IpAddr,
    ) -> Option<Reply> {
        if (method, path.split('?').next().unwrap_or_default()) != ("POST", "/v2/keys/authenticate")
        {
            return None;
        }
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

    /// Binds `addr` and serves until the process stops.
    pub fn serve(self: Arc<Self>, addr: SocketAddr) -> Result<()> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the control API on {addr}"))?;
        self.serve_on(listener)
    }

    /// Serves on a bound listener until the process stops.
    pub fn serve_on(self: Arc<Self>, listener: std::net::TcpListener) -> Result<()> {
        self.serve_until(listener, std::future::pending())
    }

    /// Serves on a bound listener until `stop` completes; then the listener and every open
    /// connection (held key-service long polls too) are closed, as when the process dies.
    /// Tests stop one operator replica and start another on the same address this way.
    pub fn serve_until(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        self.serve_role(listener, stop, Role::Control)
    }

    /// Binds `addr` and serves the key service alone (see [`Api::serve_keys_until`]).
    pub fn serve_keys(self: Arc<Self>, addr: SocketAddr) -> Result<()> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the key service on {addr}"))?;
        self.serve_keys_until(listener, std::future::pending())
    }

    /// Serves the key service (`GET /v2/keys/sync`, and `/healthz`) alone on its own
    /// listener, with its own connection budget ([`KEY_SERVICE_MAX_CONNECTIONS`]): what clients
    /// of the public gateway do to the control API's listener (slow bodies, many connections)
    /// never takes the capacity the gateways sync through (SPEC §7). Every other path is 404.
    pub fn serve_keys_until(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        self.serve_role(listener, stop, Role::Keys)
    }

    fn serve_role(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        stop: impl std::future::Future<Output = ()> + Send,
        role: Role,
    ) -> Result<()> {
        let (what, max_connections) = match role {
            Role::Control => ("control API", self.limits.max_connections),
            Role::Keys => ("key service", KEY_SERVICE_MAX_CONNECTIONS),
        };
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tracing::info!(addr = %listener.local_addr()?, "{what} listening");
            let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
            let mut stop = std::pin::pin!(stop);
            loop {
                let accepted = tokio::select! {
                    () = &mut stop => return Ok::<(), anyhow::Error>(()),
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors (EMFILE) and the like: log, let connections
                        // close, and keep serving.
                        tracing::warn!("{what}: accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "{what}: connection limit reached");
                    let _ = stream.try_write(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    continue;
                };
                let api = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let header_timeout = api.limits.header_timeout;
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(match role {
                                Role::Control => api.handle(req, peer.ip()).await,
                                Role::Keys => api.handle_keys(req).await,
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    }

    async fn handle(
        &self,
        req: hyper::Request<Incoming>,
        peer: IpAddr,
    ) -> hyper::Response<Full<Bytes>> {
        let method = req.method().as_str().to_owned();
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if method == "GET" && path == "/metrics" {
            return metrics(self.source.state());
        }
        let bare = path.split_once('?').map_or(path.as_str(), |(b, _)| b);
        if method == "GET" && bare == crate::keyservice::SYNC_PATH {
            // Gateways rendered before the key service had its own listener sync here.
            return self.handle_keys(req).await;
        }
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        if let Some(limited) = self.rate_limited(&method, &path, &headers, peer) {
            return close(http(limited));
        }
        let cap = body_cap(&method, &path);
        let too_large = || {
            close(http(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is over {cap} bytes"),
            )))
        };
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cap as u64) {
            return too_large();
        }
        let read = Limited::new(req.into_body(), cap).collect();
        let body = match tokio::time::timeout(self.limits.body_timeout, read).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => return too_large(),
            Err(_) => {
                return close(http(error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                )))
            }
        };
        // The handlers touch files and locks: keep them off the async workers.
        http(tokio::task::block_in_place(|| {
            self.reply(&method, &path, &headers, &body, peer)
        }))
    }

    /// The key service's listener: `GET /v2/keys/sync` and `/healthz`, nothing else.
    async fn handle_keys(&self, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let (bare, query) = path.split_once('?').unwrap_or((path, ""));
        match (req.method().as_str(), bare) {
            ("GET", crate::keyservice::SYNC_PATH) => {
                let bearer = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim().to_owned());
                key_sync(
                    self.source
                        .state()
                        .keys
                        .sync(query, bearer.as_deref())
                        .await,
                )
            }
            ("GET", "/healthz") => http(health(self.source.state())),
            (method, _) => http(error(
                StatusCode::NOT_FOUND,
                &format!(
                    "the key service has no route {method} {bare}; it serves GET {} only",
                    crate::keyservice::SYNC_PATH
                ),
            )),
        }
    }

    /// Answers one request: (status, JSON body). `peer` is the TCP peer's address. This is
    /// the whole API without the socket, the same for directory and kube mode.
    pub fn respond(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
        peer: IpAddr,
    ) -> (StatusCode, Value) {
        let r = self
            .rate_limited(method, path, headers, peer)
            .unwrap_or_else(|| self.reply(method, path, headers, body, peer));
        (r.status, r.body)
    }

    fn reply(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
        peer: IpAddr,
    ) -> Reply {
        self.route(self.source.as_ref(), method, path, headers, body, peer)
            .unwrap_or_else(|e| {
                // The chain names Secrets, API server messages and file paths: the log gets
                // it, the caller only a reference to look it up by.
                let reference = format!(
                    "{:04x}{:04x}",
                    crate::state::random_u16(),
                    crate::state::random_u16()
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
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
        _peer: IpAddr,
    ) -> Result<Reply> {
        let (bare, query) = path.split_once('?').unwrap_or((path, ""));
        let segs: Vec<&str> = bare.trim_start_matches('/').split('/').collect();
        match (method, segs.as_slice()) {
            ("GET", ["healthz"]) => return Ok(health(source.state())),
            ("GET", ["readyz"]) => {
                return Ok(match source.state().last() {
                    Some(_) => reply(StatusCode::OK, &json!({"status": "ready"})),
                    None => error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no configuration rendered yet",
                    ),
                })
            }
            _ => {}
        }
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
        if let ("POST", ["v2", "keys", "authenticate"]) = (method, segs.as_slice()) {
            return Ok(self.authenticate(&pass, body));
        }
        // `open` ignores tokens on the data plane; key management still needs one, so a
        // minted key's token counts here (a `layer` admin manages keys in an open install).
        let principal = match principal {
            Principal::Open => minted_bearer(&pass, headers).unwrap_or(principal),
            p => p,
        };
        let caller = authority::caller(&pass.policy, principal);
        if segs.get(..2) == Some(&["v2", "keys"]) {
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
        let writes = matches!(
            (method, segs.as_slice()),
            ("POST", ["v2", "keys"])
                | ("POST", ["v2", "keys", _, "revoke"])
                | ("DELETE", ["v2", "keys", _])
        );
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
        match (method, segs.as_slice()) {
            ("POST", ["v2", "keys"]) => mint(source, &pass, &caller, body),
            ("GET", ["v2", "keys"]) => {
                let all = query
                    .split('&')
                    .any(|kv| kv == "includeRevoked=true" || kv == "includeRevoked=1");
                let keys: Vec<Value> = key_views(&pass, &caller)
                    .into_iter()
                    .filter(|k| all || k["phase"] != "Revoked")
                    .collect();
                Ok(reply(StatusCode::OK, &json!({"keys": keys})))
            }
            ("GET", ["v2", "keys", id]) => Ok(match find_key(&pass, &caller, id) {
                Some(k) => reply(StatusCode::OK, &k),
                None => error(StatusCode::NOT_FOUND, &format!("no API key {id:?}")),
            }),
            ("POST", ["v2", "keys", id, "revoke"]) => {
                change_key(source, &pass, &caller, id, Change::Revoke)
            }
            ("DELETE", ["v2", "keys", id]) => {
                change_key(source, &pass, &caller, id, Change::Delete)
            }
            ("GET", ["v2", "vectorstores"]) => Ok(reply(
                StatusCode::OK,
                &json!({"vectorstores": store_views(source, &pass)}),
            )),
            ("GET", ["v2", "vectorstores", name]) => Ok(
                match store_views(source, &pass)
                    .into_iter()
                    .find(|s| s["name"] == *name)
                {
                    Some(s) => reply(StatusCode::OK, &s),
                    None => error(StatusCode::NOT_FOUND, &format!("no VectorStore {name:?}")),
                },
            ),
            _ => Ok(error(
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
        let Some(k) = pass.keys.iter().find(|k| k.lookup_hash == hash) else {
            return refused();
        };
        let expired = k
            .expires_at
            .as_deref()
            .is_some_and(|t| layergate_filter::time::parse_rfc3339(t).is_none_or(|at| at <= now()));
        let object = pass
            .objects
            .keys
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(k.name.as_str()));
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

/// The keys `caller` may see, in hev layer's shape.
fn key_views(pass: &Pass, caller: &Caller) -> Vec<Value> {
    key_views_where(pass, caller, |_| true)
}

/// The views of the keys `caller` may see (see [`authority::may_manage`]) for which `pick`
/// holds (given the object; a view is built only for those).
fn key_views_where(
    pass: &Pass,
    caller: &Caller,
    pick: impl Fn(&crate::crd::ApiKey) -> bool,
) -> Vec<Value> {
    let lookup = status::KeyLookup::of(pass);
    let enforced = |i: usize, k: &crate::crd::ApiKey| {
        pass.validation
            .keys
            .get(i)
            .filter(|v| Some(v.name.as_str()) == k.metadata.name.as_deref())
            .and_then(|v| v.valid.as_ref())
    };
    pass.objects
        .keys
        .iter()
        .enumerate()
        .filter(|(i, k)| pick(k) && authority::may_manage(caller, k, enforced(*i, k)))
        .map(|(_, k)| key_view(&lookup, pass, k))
        .collect()
}

/// One key in hev layer's shape.
fn key_view(lookup: &status::KeyLookup, pass: &Pass, k: &crate::crd::ApiKey) -> Value {
    let st = status::key_in(lookup, pass, k, now());
    json!({
        "keyId": st.key_id,
        "name": k.metadata.name,
        "owner": k.spec.owner,
        "description": k.spec.description,
        "entitlements": k.spec.entitlements,
        "expiresAfter": k.spec.expires_after.clone().unwrap_or_else(|| validate::DEFAULT_EXPIRES_AFTER.to_owned()),
        "phase": st.phase,
        "createdAt": st.created_at,
        "expiresAt": st.expires_at,
        "revokedAt": st.revoked_at,
        "lookupHash": st.lookup_hash,
        "secretRef": st.secret_ref,
    })
}

fn find_key(pass: &Pass, caller: &Caller, id: &str) -> Option<Value> {
    // By name first: one view built, not every key's.
    let by_name = key_views_where(pass, caller, |k| k.metadata.name.as_deref() == Some(id));
    by_name.into_iter().next().or_else(|| {
        key_views(pass, caller)
            .into_iter()
            .find(|k| k["keyId"] == id)
    })
}

/// The key named `name` as `pass` reads it, whoever may see it now: a write's answer, read
/// back after the write the caller was allowed to make.
fn read_back(pass: &Pass, name: &str) -> Option<Value> {
    let lookup = status::KeyLookup::of(pass);
    pass.objects
        .keys
        .iter()
        .find(|k| k.metadata.name.as_deref() == Some(name))
        .map(|k| key_view(&lookup, pass, k))
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

/// The fields a mint request may carry; anything else is refused (a typo must not be ignored).
const MINT_FIELDS: [&str; 5] = [
    "name",
    "owner",
    "description",
    "entitlements",
    "expiresAfter",
];

fn mint(source: &dyn Source, pass: &Pass, caller: &Caller, body: &[u8]) -> Result<Reply> {
    let req = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "send a JSON object: {\"name\": …, \"entitlements\": {…}}",
            ))
        }
    };
    if let Some(k) = req.keys().find(|k| !MINT_FIELDS.contains(&k.as_str())) {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            &format!(
                "unknown field {:?}; a key has {}",
                k.chars().take(64).collect::<String>(),
                MINT_FIELDS.join(", ")
            ),
        ));
    }
    let name = req
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !keys::valid_key_name(&name) {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "name must be 1-63 lower-case letters, digits or '-' (a Kubernetes name)",
        ));
    }
    let mut spec = serde_json::Map::new();
    for field in ["owner", "description", "entitlements", "expiresAfter"] {
        if let Some(v) = req.get(field).filter(|v| !v.is_null()) {
            spec.insert(field.to_owned(), v.clone());
        }
    }
    let manifest = json!({"apiVersion": "hevlayer.com/v1alpha1", "kind": "ApiKey", "metadata": {"name": name, "namespace": pass.namespace}, "spec": spec});
    // Check it as the operator will, before anything is written: shape, every field the filter
    // would refuse, then what the caller may grant.
    let key: crate::crd::ApiKey = match serde_json::from_value(manifest.clone()) {
        Ok(k) => k,
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                &format!("not a valid ApiKey: {e}"),
            ))
        }
    };
    if let Some(m) = validate::key_spec_problem(&key, now()) {
        return Ok(error(StatusCode::BAD_REQUEST, &m));
    }
    if let Err(m) = authority::may_mint(caller, &authority::spec_entitlements(&key)) {
        return Ok(error(StatusCode::FORBIDDEN, &m));
    }
    // Never longer-lived than its maker: a shorter lifetime is written into the spec, so the
    // object says what the gateway enforces.
    let asked = key
        .spec
        .expires_after
        .as_deref()
        .unwrap_or(validate::DEFAULT_EXPIRES_AFTER);
    let asked = layergate_filter::time::parse_duration(asked).ok().flatten();
    let (manifest, key) = match authority::lifetime(caller, asked, now()) {
        Err(m) => return Ok(error(StatusCode::FORBIDDEN, &m)),
        Ok(l) if l == asked => (manifest, key),
        Ok(l) => {
            let mut m = manifest;
            m["spec"]["expiresAfter"] = json!(format!("{}s", l.unwrap_or_default()));
            let key = serde_json::from_value(m.clone()).context("the capped ApiKey")?;
            (m, key)
        }
    };
    if pass
        .objects
        .keys
        .iter()
        .any(|k| k.metadata.name.as_deref() == Some(name.as_str()))
    {
        return Ok(error(
            StatusCode::CONFLICT,
            &format!("an API key named {name:?} exists; revoke or delete it, or pick another name"),
        ));
    }
    let token = keys::mint_token()?;
    // Judged as the next pass will judge it, before anything is written: a key that pass
    // would not make Active is refused here and never exists.
    let (verdict, phase) = validate::validate_new_key(
        &key,
        &pass.namespace,
        &token,
        &pass.validation.stores,
        now(),
    );
    if phase != crate::crd::ApiKeyPhase::Active {
        let msg = verdict
            .conditions
            .into_iter()
            .next()
            .map_or_else(|| "invalid key".to_owned(), |c| c.message);
        return Ok(error(StatusCode::BAD_REQUEST, &msg));
    }
    let created = match source.create_key(&pass.namespace, &name, &manifest, &token) {
        Ok(created) => created,
        Err(e) => {
            return match e.downcast_ref::<crate::state::Exists>() {
                Some(exists) => Ok(error(StatusCode::CONFLICT, &exists.0)),
                None => Err(e),
            }
        }
    };
    // The key and its token exist now: from here on the caller gets the token. The pass that
    // publishes the key is waited for only so long; a slow one (API latency, a queue of
    // passes) ends in the background and the key is enforced when it does.
    let published = match source.refresh_within(MINT_WAIT) {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(apikey = %name, "the pass after a mint failed (it is retried): {e:#}");
            false
        }
    };
    let last = source.state().last().filter(|_| published);
    let view = match last.as_ref().and_then(|p| find_key(p, caller, &name)) {
        Some(v) if v["phase"] != "Active" => {
            // The pass saw more than this request could (the objects changed meanwhile).
            let reason = last.as_ref().and_then(|p| {
                p.validation
                    .keys
                    .iter()
                    .find(|k| k.name == name)
                    .map(|k| k.conditions.clone())
            });
            if let Some(p) = &last {
                source.delete_key(p, &name)?;
            }
            source.refresh()?;
            let msg = reason
                .and_then(|c| c.into_iter().next())
                .map_or_else(|| "invalid key".to_owned(), |c| c.message);
            return Ok(error(StatusCode::BAD_REQUEST, &msg));
        }
        Some(v) => v,
        None => {
            // As the pass will show it (the keyId comes from the stored object's uid).
            let (verdict, _) = validate::validate_new_key(
                &created,
                &pass.namespace,
                &token,
                &pass.validation.stores,
                now(),
            );
            let Some(config) = verdict.valid else {
                return Err(anyhow::anyhow!(
                    "ApiKey {name} was written but no longer validates"
                ));
            };
            new_key_view(&created, &config)
        }
    };
    let mut out = view;
    out["token"] = json!(token);
    Ok(reply(StatusCode::CREATED, &out))
}

/// A key just minted, in the shape of [`key_views`], before any pass has seen it.
fn new_key_view(k: &crate::crd::ApiKey, config: &layergate_filter::config::ApiKeyConfig) -> Value {
    let created = k
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or_else(now, |t| t.0.as_second());
    json!({
        "keyId": config.key_id,
        "name": k.metadata.name,
        "owner": k.spec.owner,
        "description": k.spec.description,
        "entitlements": k.spec.entitlements,
        "expiresAfter": k.spec.expires_after.clone().unwrap_or_else(|| validate::DEFAULT_EXPIRES_AFTER.to_owned()),
        "phase": crate::crd::ApiKeyPhase::Active,
        "createdAt": validate::rfc3339(created),
        "expiresAt": config.expires_at,
        "revokedAt": null,
        "lookupHash": config.lookup_hash.to_string(),
        "secretRef": validate::token_source(k),
    })
}

enum Change {
    Revoke,
    Delete,
}

/// Revokes or deletes an ApiKey through the source; a key the caller could not have minted
/// is not found.
fn change_key(
    source: &dyn Source,
    pass: &Pass,
    caller: &Caller,
    id: &str,
    change: Change,
) -> Result<Reply> {
    // A key minted a moment ago may not be in the last pass yet (mint answers before the
    // pass that publishes it ends): look again after one.
    let fresh;
    let (pass, view) = match find_key(pass, caller, id) {
        Some(v) => (pass, v),
        None => {
            // Bounded: a missing key must not make every 404 wait for a slow pass.
            if let Err(e) = source.refresh_within(MINT_WAIT) {
                tracing::warn!("a pass before answering {id:?}: {e:#}");
            }
            fresh = source.state().last();
            match fresh
                .as_ref()
                .and_then(|p| find_key(p, caller, id).map(|v| (&**p, v)))
            {
                Some(found) => found,
                None => return Ok(error(StatusCode::NOT_FOUND, &format!("no API key {id:?}"))),
            }
        }
    };
    let name = view["name"].as_str().unwrap_or_default().to_owned();
    match change {
        Change::Revoke if view["phase"] == "Revoked" => return Ok(reply(StatusCode::OK, &view)),
        Change::Revoke => source.revoke_key(pass, &name)?,
        Change::Delete => source.delete_key(pass, &name)?,
    }
    source.refresh()?;
    // The answer is the state read back after the write, never the one hoped for: a write
    // that changed nothing is an error.
    let after = source.state().last();
    let now_seen = after.as_ref().and_then(|p| read_back(p, &name));
    Ok(match (change, now_seen) {
        (Change::Revoke, Some(v)) if v["phase"] == "Revoked" => reply(StatusCode::OK, &v),
        (Change::Revoke, seen) => {
            return Err(anyhow::anyhow!(
                "API key {name} was written revoked, but the pass after the write reads it as {}",
                seen.map_or_else(|| "gone".to_owned(), |v| v["phase"].to_string())
            ))
        }
        (Change::Delete, None) => reply(
            StatusCode::OK,
            &json!({"status": "OK", "message": format!("API key {name} deleted")}),
        ),
        (Change::Delete, Some(_)) => {
            return Err(anyhow::anyhow!(
                "API key {name} was deleted, but the pass after the write still reads it"
            ))
        }
    })
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

/// The key service's answer on the wire (see [`crate::keyservice`]).
fn key_sync(answer: crate::keyservice::Sync) -> hyper::Response<Full<Bytes>> {
    use crate::keyservice::Sync;
    match answer {
        Sync::Answer(body) => {
            let mut out = hyper::Response::new(Full::new(body));
            out.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/json"),
            );
            out
        }
        Sync::Unauthorized => http(error(
            StatusCode::UNAUTHORIZED,
            "the key service accepts only the gateway credential (keyService.credential in the rendering)",
        )),
        Sync::NotReady => http(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no key table yet: the operator has not completed a pass; see its log",
        )),
    }
}

fn metrics(state: &State) -> hyper::Response<Full<Bytes>> {
    let pass = state.last();
    let active = pass.as_ref().map_or(0, |p| p.keys.len());
    let ready = pass.as_ref().map_or(0, |p| {
        p.validation
            .stores
            .iter()
            .filter(|s| s.valid.is_some())
            .count()
    });
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let seconds = |c: &std::sync::atomic::AtomicU64| get(c) as f64 / 1e6;
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        text.push_str(&format!(
            "# HELP layergate_operator_{name} {help}\n# TYPE layergate_operator_{name} {kind}\nlayergate_operator_{name} {value}\n"
        ));
    };
    metric(
        "renders_total",
        "counter",
        "Successful passes (reconciles) that published a rendering.",
        get(&state.renders).to_string(),
    );
    metric(
        "render_errors_total",
        "counter",
        "Passes that failed and kept the last good rendering.",
        get(&state.render_errors).to_string(),
    );
    metric(
        "render_seconds_total",
        "counter",
        "Time spent in successful passes.",
        seconds(&state.render_micros).to_string(),
    );
    metric(
        "probe_rounds_total",
        "counter",
        "Probe rounds (every valid store).",
        get(&state.probe_rounds).to_string(),
    );
    metric(
        "probe_round_seconds_total",
        "counter",
        "Time the probe rounds took.",
        seconds(&state.probe_micros).to_string(),
    );
    metric(
        "status_writes_total",
        "counter",
        "Status subresource writes (kube mode).",
        get(&state.status_writes).to_string(),
    );
    metric(
        "kube_api_errors_total",
        "counter",
        "Kubernetes API calls that failed (kube mode).",
        get(&state.api_errors).to_string(),
    );
    metric(
        "api_keys_active",
        "gauge",
        "API keys the key service serves (usable: valid, not revoked).",
        active.to_string(),
    );
    metric(
        "key_syncs_total",
        "counter",
        "Key service syncs answered (snapshots, deltas, long polls that ended).",
        get(&state.keys.answered).to_string(),
    );
    metric(
        "key_syncs_refused_total",
        "counter",
        "Key service calls refused: not the gateway credential.",
        get(&state.keys.refused).to_string(),
    );
    metric(
        "key_syncs_waiting",
        "gauge",
        "Long polls the key service holds now.",
        get(&state.keys.waiting).to_string(),
    );
    metric(
        "key_syncs_outdated_filter_total",
        "counter",
        "Key service syncs from a gateway whose filter reads an older configuration version than this operator renders (it refuses the rendering and keeps its previous one).",
        get(&state.keys.outdated).to_string(),
    );
    metric(
        "gateway_filter_outdated",
        "gauge",
        "1 when a gateway filter reported, in the last two minutes, a configuration version older than this operator renders.",
        u8::from(state.keys.outdated_reader(now()).is_some()).to_string(),
    );
    metric(
        "vectorstores_rendered",
        "gauge",
        "VectorStores in the rendering.",
        ready.to_string(),
    );
    let mut r = hyper::Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
