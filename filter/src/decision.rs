//! The per-request decision (SPEC §3): classify → resolve the store → authenticate →
//! authorize → plan the forward, or a [`Denial`] that maps to a local reply.
//!
//! Everything here borrows from the request head and the [`Policy`]; the success path of a
//! header-only request allocates nothing (a counting-allocator test proves it).

use crate::headers::{Authorization, RequestHead, LAYERGATE_HEADER_PREFIX};
use crate::policy::{Grant, Grantee, Mode, Policy, StoreId};
use crate::route::{classify, split_query, BodyRule, Route, Target};
use crate::scope::{Scope, Scopes};
use std::borrow::Cow;

/// Longest bearer token considered (hev layer tokens are ~36 characters).
pub const MAX_TOKEN_BYTES: usize = 1024;

/// Why a request was refused; maps to status, `WWW-Authenticate` and a turbopuffer-shaped body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// What kind of refusal.
    pub kind: DenialKind,
    /// What was wrong and what would fix it. Never contains a token.
    pub message: Cow<'static, str>,
}

/// Kinds of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// 400: malformed request.
    BadRequest,
    /// 401 without `error=`: no credential was sent.
    MissingToken,
    /// 401 `error="invalid_token"`: unknown, expired or not accepted here.
    InvalidToken,
    /// 403 `error="insufficient_scope"`: scope or namespace not granted.
    InsufficientScope(Scope),
    /// 404: a route this gateway has no upstream for.
    NotFound,
    /// 413: body over the inspection limit.
    PayloadTooLarge,
    /// 415: a content encoding the filter cannot inspect.
    UnsupportedMediaType,
    /// 503: store not configured or credential not loaded.
    Unavailable,
}

impl Denial {
    fn new(kind: DenialKind, message: impl Into<Cow<'static, str>>) -> Denial {
        Denial {
            kind,
            message: message.into(),
        }
    }

    /// A 400.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Denial {
        Denial::new(DenialKind::BadRequest, message)
    }

    /// HTTP status code.
    pub const fn status(&self) -> u32 {
        match self.kind {
            DenialKind::BadRequest => 400,
            DenialKind::MissingToken | DenialKind::InvalidToken => 401,
            DenialKind::InsufficientScope(_) => 403,
            DenialKind::NotFound => 404,
            DenialKind::PayloadTooLarge => 413,
            DenialKind::UnsupportedMediaType => 415,
            DenialKind::Unavailable => 503,
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750), for 401 and 403.
    pub const fn www_authenticate(&self) -> Option<&'static str> {
        match self.kind {
            DenialKind::MissingToken => Some(r#"Bearer realm="layergate""#),
            DenialKind::InvalidToken => Some(r#"Bearer realm="layergate", error="invalid_token""#),
            DenialKind::InsufficientScope(Scope::Read) => {
                Some(r#"Bearer realm="layergate", error="insufficient_scope", scope="read""#)
            }
            DenialKind::InsufficientScope(Scope::Write) => {
                Some(r#"Bearer realm="layergate", error="insufficient_scope", scope="write""#)
            }
            DenialKind::InsufficientScope(Scope::Admin) => {
                Some(r#"Bearer realm="layergate", error="insufficient_scope", scope="admin""#)
            }
            _ => None,
        }
    }

    /// `{"status":"error","error":"<message>"}`, turbopuffer's error shape.
    pub fn body(&self) -> String {
        serde_json::json!({"status": "error", "error": self.message}).to_string()
    }

    /// Short label for stats and access logs (`denied_401`).
    pub const fn label(&self) -> &'static str {
        match self.status() {
            400 => "denied_400",
            401 => "denied_401",
            403 => "denied_403",
            404 => "denied_404",
            413 => "denied_413",
            415 => "denied_415",
            _ => "denied_503",
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
            Principal::Token(Grant::Minted(k)) => &policy.keys[k].principal,
        }
    }
}

/// Content encoding of a body to inspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As is.
    Identity,
    /// `Content-Encoding: gzip`.
    Gzip,
}

/// What to do with an authorized request. Plain indices, so it can outlive the header
/// callback while a body is buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Where it goes.
    pub target: Target,
    /// The resolved store.
    pub store: StoreId,
    /// Who is calling.
    pub principal: Principal,
    /// Scope the route required.
    pub scope: Option<Scope>,
    /// The caller's scopes where this request goes (sent to the app as `x-layergate-scopes`).
    pub scopes: Scopes,
}

/// A body that must be read before the request may continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspection {
    /// Which fields to check.
    pub rule: BodyRule,
    /// How the body is encoded.
    pub encoding: Encoding,
}

/// The outcome of the header phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward now.
    Forward(Plan),
    /// Forward with `:path` replaced (the `prefix` a restricted key may list).
    ForwardWithPath(Plan, String),
    /// Buffer the body, then call [`crate::body::check`].
    Inspect(Plan, Inspection),
    /// Refuse with a local reply.
    Deny(Denial),
}

/// Up to five header writes; `None` value removes the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderEdits<'p> {
    items: [(&'static str, Option<&'p str>); 5],
    len: usize,
}

impl<'p> HeaderEdits<'p> {
    fn push(&mut self, name: &'static str, value: Option<&'p str>) {
        self.items[self.len] = (name, value);
        self.len += 1;
    }

    /// The edits, in order.
    pub fn as_slice(&self) -> &[(&'static str, Option<&'p str>)] {
        &self.items[..self.len]
    }

    /// True when `name` (lower-case) is written by these edits.
    pub fn writes(&self, name: &[u8]) -> bool {
        self.as_slice().iter().any(|(n, _)| n.as_bytes() == name)
    }
}

/// Name of the header the Envoy route reads to pick the cluster.
pub const CLUSTER_HEADER: &str = "x-layergate-cluster";

/// Header marking a request whose body the filter inspects; the Envoy route it selects
/// enables the buffer filter that holds the request until the body is judged.
pub const INSPECT_HEADER: &str = "x-layergate-inspect";

/// True for client-sent headers the filter must remove (`x-layergate-*` it does not overwrite).
pub fn must_strip(name: &[u8], edits: &HeaderEdits<'_>) -> bool {
    name.len() > LAYERGATE_HEADER_PREFIX.len()
        && name[..LAYERGATE_HEADER_PREFIX.len()]
            .eq_ignore_ascii_case(LAYERGATE_HEADER_PREFIX.as_bytes())
        && !edits.writes(name)
}

impl Plan {
    /// The header writes that forward this request: credential swap and routing for stores,
    /// identity headers for the app, routing only (Authorization kept) for the control API.
    /// Fails when the store credential is not loaded.
    pub fn header_edits<'p>(&self, policy: &'p Policy) -> Result<HeaderEdits<'p>, Denial> {
        let mut e = HeaderEdits {
            items: [("", None); 5],
            len: 0,
        };
        let store = &policy.stores[self.store];
        match self.target {
            Target::Store => {
                let bearer = store.bearer.as_deref().map_err(|var| {
                    Denial::new(
                        DenialKind::Unavailable,
                        format!(
                            "store {:?} has no credential loaded: environment variable {var} is not set in the wasm VM; \
                             set it (vm_config.environment_variables) and reload",
                            store.name
                        ),
                    )
                })?;
                e.push("authorization", Some(bearer));
                e.push(CLUSTER_HEADER, Some(&store.cluster));
                if let Some(a) = &store.authority {
                    e.push(":authority", Some(a));
                }
            }
            Target::App => {
                let cluster = policy
                    .app_cluster
                    .as_deref()
                    .ok_or_else(|| no_upstream("the layer app"))?;
                e.push("authorization", None);
                e.push(CLUSTER_HEADER, Some(cluster));
                e.push("x-layergate-principal", Some(self.principal.name(policy)));
                e.push("x-layergate-scopes", Some(self.scopes.as_str()));
                e.push("x-layergate-store", Some(&store.name));
            }
            Target::Control => {
                let cluster = policy
                    .control_cluster
                    .as_deref()
                    .ok_or_else(|| no_upstream("the layergate control API"))?;
                e.push(CLUSTER_HEADER, Some(cluster));
            }
        }
        Ok(e)
    }
}

fn no_upstream(what: &str) -> Denial {
    Denial::new(
        DenialKind::NotFound,
        format!("route served by {what}, which this gateway does not have"),
    )
}

fn bearer_token(header: &str) -> Result<&str, Denial> {
    let (scheme, token) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denial::new(
            DenialKind::MissingToken,
            "the Authorization header must use the Bearer scheme: 'Authorization: Bearer <token>'",
        ));
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(Denial::new(
            DenialKind::MissingToken,
            "the Authorization header has an empty bearer token",
        ));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Denial::new(
            DenialKind::InvalidToken,
            "the bearer token is longer than 1024 bytes; no layergate key is that long",
        ));
    }
    Ok(token)
}

fn insufficient(scope: Scope, message: String) -> Denial {
    Denial::new(DenialKind::InsufficientScope(scope), message)
}

/// Decides a request from its head. `now` is the host clock in Unix seconds.
pub fn decide(policy: &Policy, head: &RequestHead<'_>, now: impl Fn() -> i64) -> Decision {
    match decide_inner(policy, head, now) {
        Ok(d) => d,
        Err(denial) => Decision::Deny(denial),
    }
}

fn decide_inner(
    policy: &Policy,
    head: &RequestHead<'_>,
    now: impl Fn() -> i64,
) -> Result<Decision, Denial> {
    if head.malformed || head.method.is_empty() || head.path.is_empty() {
        return Err(Denial::bad_request(
            "the request has no valid :method/:path, or a header is not valid UTF-8",
        ));
    }
    let route = classify(&policy.rules, head.method, head.path)?;
    match route.target {
        Target::App if policy.app_cluster.is_none() => return Err(no_upstream("the layer app")),
        Target::Control if policy.control_cluster.is_none() => {
            return Err(no_upstream("the layergate control API"))
        }
        _ => {}
    }
    let store = policy.store_for(route.namespace).ok_or_else(|| {
        Denial::new(
            DenialKind::Unavailable,
            "no default VectorStore is configured; mark one store `default: true` or add an Index for this namespace",
        )
    })?;
    let principal = authenticate(policy, store, &route, head.authorization, now)?;
    let mut plan = Plan {
        target: route.target,
        store,
        principal,
        scope: route.scope,
        scopes: Scopes::ALL,
    };
    let k = match principal {
        Principal::Anonymous => {
            plan.scopes = Scopes::default();
            return Ok(Decision::Forward(plan));
        }
        Principal::Token(Grant::InboundKey { scopes, .. })
            if !route.scope.is_some_and(|s| scopes.allows(s)) =>
        {
            let scope = route.scope.unwrap_or(Scope::Read);
            return Err(insufficient(
                scope,
                format!(
                    "{} lacks the {scope} scope; it has [{}]",
                    principal.name(policy),
                    scopes.as_str()
                ),
            ));
        }
        Principal::Token(Grant::InboundKey { scopes, .. }) => {
            plan.scopes = scopes;
            return Ok(Decision::Forward(plan));
        }
        // Store credentials and open mode hold every scope and namespace of their store.
        Principal::Open | Principal::Token(Grant::StoreCredential(_)) => {
            return Ok(Decision::Forward(plan))
        }
        Principal::Token(Grant::Minted(k)) => k,
    };
    let grantee = authorize_minted(policy, k, store, &route)?;
    plan.scopes = match (grantee, route.scope) {
        (Some(g), _) => g.scopes,
        (None, Some(s)) => Scopes::from_slice(&[s]),
        (None, None) => Scopes::default(),
    };
    let needs_body = match route.body {
        BodyRule::None => false,
        BodyRule::FederatedQuery => true,
        BodyRule::NamespaceList => {
            return match grantee.filter(|g| g.is_restricted()) {
                None => Ok(Decision::Forward(plan)),
                Some(g) => namespace_list(policy, k, g, head.path).map(|p| match p {
                    None => Decision::Forward(plan),
                    Some(path) => Decision::ForwardWithPath(plan, path),
                }),
            };
        }
        _ => grantee.is_some_and(Grantee::is_restricted),
    };
    if !needs_body {
        return Ok(Decision::Forward(plan));
    }
    if head
        .content_length
        .is_some_and(|n| n > policy.inspect_body_bytes)
    {
        return Err(too_large(policy));
    }
    let encoding = match head.content_encoding.map(str::trim) {
        None | Some("") => Encoding::Identity,
        Some(e) if e.eq_ignore_ascii_case("identity") => Encoding::Identity,
        Some(e) if e.eq_ignore_ascii_case("gzip") => Encoding::Gzip,
        Some(_) => {
            return Err(Denial::new(
                DenialKind::UnsupportedMediaType,
                "this request body is inspected for namespaces and may only be sent plain or with Content-Encoding: gzip",
            ))
        }
    };
    Ok(Decision::Inspect(
        plan,
        Inspection {
            rule: route.body,
            encoding,
        },
    ))
}

/// The 413 for this policy's limit.
pub fn too_large(policy: &Policy) -> Denial {
    Denial::new(
        DenialKind::PayloadTooLarge,
        format!(
            "the request body is over the inspection limit of {} bytes (limits.inspectBodyBytes) that applies to \
             namespace-restricted keys; send a smaller body or use a key without namespace restrictions",
            policy.inspect_body_bytes
        ),
    )
}

fn authenticate(
    policy: &Policy,
    store: StoreId,
    route: &Route<'_>,
    authz: Authorization<'_>,
    now: impl Fn() -> i64,
) -> Result<Principal, Denial> {
    if route.scope.is_none() {
        return Ok(Principal::Anonymous);
    }
    let s = &policy.stores[store];
    if s.mode == Mode::Open {
        return Ok(Principal::Open);
    }
    let header = match authz {
        Authorization::Absent => {
            return Err(Denial::new(
                DenialKind::MissingToken,
                "this route needs a credential: send 'Authorization: Bearer <token>'",
            ))
        }
        Authorization::Repeated => {
            return Err(Denial::bad_request("send exactly one Authorization header"))
        }
        Authorization::One(h) => h,
    };
    let token = bearer_token(header)?;
    let grants = policy
        .tokens
        .get(&crate::policy::token_hash(token.as_bytes()))
        .map(crate::policy::Grants::as_slice)
        .unwrap_or(&[]);
    let mut expired = None;
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
            Grant::Minted(k) => match policy.keys[k].expires_at {
                Some(at) if at <= now() => expired = Some(k),
                _ => return Ok(Principal::Token(g)),
            },
            _ => {}
        }
    }
    Err(match expired {
        Some(k) => Denial::new(
            DenialKind::InvalidToken,
            format!("API key {:?} has expired; mint a new key", policy.keys[k].name()),
        ),
        None if grants.is_empty() => Denial::new(
            DenialKind::InvalidToken,
            "the bearer token is not a known key (unknown, revoked or mistyped); check the token or mint a new key",
        ),
        None => Denial::new(
            DenialKind::InvalidToken,
            format!("the bearer token is not accepted by store {:?} (inboundAuth mode {})", &*s.name, mode_name(s.mode)),
        ),
    })
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::DeriveFromStore => "deriveFromStore",
        Mode::Keys => "keys",
        Mode::Open => "open",
    }
}

/// The entitlement a minted key needs for a route, and its check. Returns the grant that
/// applied (`None` for the federated query, whose body namespaces are checked one by one).
fn authorize_minted<'p>(
    policy: &'p Policy,
    k: usize,
    store: StoreId,
    route: &Route<'_>,
) -> Result<Option<&'p Grantee>, Denial> {
    let key = &policy.keys[k];
    let Some(scope) = route.scope else {
        return Ok(None);
    };
    if route.body == BodyRule::FederatedQuery {
        return Ok(None);
    }
    let (grantee, target) = if let Some(agent) = route.agent {
        (
            key.agents
                .iter()
                .find(|(a, _)| **a == *agent)
                .map(|(_, g)| g),
            EntitlementTarget::Agent(agent),
        )
    } else if route.namespace.is_some() || route.target == Target::Store {
        (
            key.stores[store].as_ref(),
            EntitlementTarget::Store(&policy.stores[store].name),
        )
    } else {
        (key.layer.as_ref(), EntitlementTarget::Layer)
    };
    let Some(g) = grantee else {
        return Err(insufficient(
            scope,
            format!(
                "API key {:?} has no {target} entitlement; add it to the key's spec.entitlements",
                key.name()
            ),
        ));
    };
    if !g.scopes.allows(scope) {
        return Err(insufficient(
            scope,
            format!(
                "API key {:?} lacks the {scope} scope on {target}; it has [{}]",
                key.name(),
                g.scopes.as_str()
            ),
        ));
    }
    if let Some(ns) = route.namespace {
        if !g.allows_namespace(ns) {
            return Err(namespace_denied(key.name(), ns, scope, &target.to_string()));
        }
    }
    Ok(Some(g))
}

/// An entitlement target, formatted only when a message needs it.
enum EntitlementTarget<'a> {
    Agent(&'a str),
    Store(&'a str),
    Layer,
}

impl std::fmt::Display for EntitlementTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntitlementTarget::Agent(a) => write!(f, "agent.{a}"),
            EntitlementTarget::Store(s) => write!(f, "vectorstore.{s}"),
            EntitlementTarget::Layer => f.write_str("layer"),
        }
    }
}

/// The 403 for a namespace outside a key's globs.
pub fn namespace_denied(key: &str, ns: &str, scope: Scope, target: &str) -> Denial {
    insufficient(
        scope,
        format!("API key {key:?} may not access namespace {ns:?}: it is outside the key's {target} namespace globs"),
    )
}

/// `GET /v1/namespaces` for a restricted key: allowed with one prefix glob; the `prefix`
/// parameter is set when absent and must be at least as narrow when present.
fn namespace_list(
    policy: &Policy,
    k: usize,
    g: &Grantee,
    path: &str,
) -> Result<Option<String>, Denial> {
    let key = &policy.keys[k];
    let Some(prefix) = g.single_prefix() else {
        return Err(insufficient(
            Scope::Read,
            format!(
                "API key {:?} is limited to namespace globs that are not a single prefix (like shop-*), so it may not list namespaces",
                key.name()
            ),
        ));
    };
    let (base, query) = split_query(path);
    let sent = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("prefix=")));
    match sent {
        Some(p) if p.starts_with(prefix) && !p.contains('%') => Ok(None),
        Some(p) => Err(insufficient(
            Scope::Read,
            format!("API key {:?} may only list namespaces starting with {prefix:?}; prefix={p:?} is wider", key.name()),
        )),
        None => Ok(Some(match query {
            Some(q) if !q.is_empty() => format!("{base}?{q}&prefix={prefix}"),
            _ => format!("{base}?prefix={prefix}"),
        })),
    }
}
