//! The per-request decision (SPEC §3): classify → resolve the store → authenticate and
//! authorize (one [`auth::check`]) → plan the forward, or a [`Denial`] that maps to a local
//! reply.
//!
//! Everything here borrows from the request head and the [`Policy`]; the success path of a
//! header-only request allocates nothing (a counting-allocator test proves it).

use crate::auth::{self, Credential};
use crate::auth::{Access, Allowed, Namespaces, On};
use crate::headers::{RequestHead, LAYERGATE_HEADER_PREFIX};
use crate::policy::{Policy, StoreId};
use crate::route::{classify, split_query, BodyRule, Route, Target};
use crate::scope::{Scope, Scopes};

pub use crate::auth::Principal;
pub use crate::denial::{Denial, DenialKind};

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
    /// The request's credential, kept (as a hash) to judge the namespaces its body names.
    pub credential: Credential,
    /// True when the grant that applied restricts namespaces.
    pub restricted: bool,
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

impl Decision {
    /// The plan of a request that is authorized (forwarded now or after its body).
    pub fn plan(&self) -> Option<&Plan> {
        match self {
            Decision::Forward(p) | Decision::ForwardWithPath(p, _) | Decision::Inspect(p, _) => {
                Some(p)
            }
            Decision::Deny(_) => None,
        }
    }
}

/// Up to five header writes; `None` value removes the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
                    Denial::unavailable(format!(
                            "store {:?} has no credential loaded: environment variable {var} is not set where the filter reads it \
                             (the wasm VM's vm_config.environment_variables; the native build: Envoy's own environment); set it and reload",
                            store.name
                    ))
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
                    .ok_or_else(|| Denial::no_upstream("the layer app"))?;
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
                    .ok_or_else(|| Denial::no_upstream("the layergate control API"))?;
                e.push(CLUSTER_HEADER, Some(cluster));
            }
        }
        Ok(e)
    }
}

/// What the decision learned on its way, for the audit line ([`crate::audit`]): a refusal
/// before any [`Plan`] still knows the namespace, store, route and (after authentication) the
/// principal it got as far as. Borrowed from the request head; no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trace<'a> {
    /// The namespace the path names.
    pub namespace: Option<&'a str>,
    /// The resolved store.
    pub store: Option<StoreId>,
    /// Where the route goes.
    pub target: Option<Target>,
    /// The scope the route requires.
    pub scope: Option<Scope>,
    /// Who is calling, once authenticated.
    pub principal: Option<Principal>,
}

impl Trace<'_> {
    /// What a plan knows (no path namespace: the plan outlives the request head).
    pub fn of(plan: &Plan) -> Trace<'static> {
        Trace {
            namespace: None,
            store: Some(plan.store),
            target: Some(plan.target),
            scope: plan.scope,
            principal: Some(plan.principal),
        }
    }
}

/// Decides a request from its head. `now` is the host clock in Unix seconds.
///
/// Refusals come in SPEC §3's order: a malformed request (400), then authentication (401) and
/// authorization (403), and only then what the gateway lacks for an allowed request (404 no
/// upstream, 503 credential not loaded) — so a caller without the scope learns nothing about
/// which upstreams exist. (For an inspected body the 404/503 waits for the body's verdict.)
pub fn decide(policy: &Policy, head: &RequestHead<'_>, now: impl Fn() -> i64) -> Decision {
    decide_traced(policy, head, now, &mut Trace::default())
}

/// [`decide`], noting in `trace` what it learned on its way.
pub fn decide_traced<'a>(
    policy: &Policy,
    head: &RequestHead<'a>,
    now: impl Fn() -> i64,
    trace: &mut Trace<'a>,
) -> Decision {
    let decision = decide_inner(policy, head, now, trace).and_then(|d| match &d {
        Decision::Forward(plan) | Decision::ForwardWithPath(plan, _) => {
            plan.header_edits(policy).map(|_| d)
        }
        _ => Ok(d),
    });
    decision.unwrap_or_else(Decision::Deny)
}

/// What the route needs of its caller; `None` for routes that need no credential.
fn access<'a>(route: &Route<'a>) -> Option<Access<'a>> {
    let scope = route.scope?;
    let on = match route.agent {
        Some(agent) => On::Agent(agent),
        None if route.namespace.is_some() || route.target == Target::Store => On::Store,
        None => On::Layer,
    };
    let namespaces = match route.namespace {
        _ if !route.known => Namespaces::Unidentified,
        Some(ns) => Namespaces::Named(ns),
        // A store route naming no namespace touches namespaces the filter cannot name,
        // except the listing, which restricted keys get narrowed (below).
        None if route.target == Target::Store && route.body != BodyRule::NamespaceList => {
            Namespaces::Unidentified
        }
        // Namespaces named where the gateway does not read them.
        None if route.body == BodyRule::Unjudged => Namespaces::Unidentified,
        None => Namespaces::NoneNamed,
    };
    Some(Access {
        scope,
        on,
        namespaces,
    })
}

fn decide_inner<'a>(
    policy: &Policy,
    head: &RequestHead<'a>,
    now: impl Fn() -> i64,
    trace: &mut Trace<'a>,
) -> Result<Decision, Denial> {
    if head.malformed || head.method.is_empty() || head.path.is_empty() {
        return Err(Denial::bad_request(
            "the request has no valid :method/:path, or a header is not valid UTF-8",
        ));
    }
    let route = classify(&policy.rules, head.method, head.path)?;
    (trace.namespace, trace.target, trace.scope) =
        (route.namespace, Some(route.target), route.scope);
    let store = policy.store_for(route.namespace).ok_or_else(|| {
        Denial::unavailable(
            "no default VectorStore is configured; mark one store `default: true` or add an Index for this namespace",
        )
    })?;
    trace.store = Some(store);
    let credential = Credential::parse(head.authorization);
    let mut plan = Plan {
        target: route.target,
        store,
        principal: Principal::Anonymous,
        scope: route.scope,
        scopes: Scopes::default(),
        credential,
        restricted: false,
    };
    let Some(access) = access(&route) else {
        trace.principal = Some(plan.principal);
        return Ok(Decision::Forward(plan));
    };
    // A federated query names its namespaces (and so its stores) in the body: here the caller
    // is only authenticated; each namespace is checked on its own store after the body.
    if route.body == BodyRule::FederatedQuery {
        plan.principal = auth::authenticate(policy, store, credential, &now)?;
        trace.principal = Some(plan.principal);
        plan.scopes = Scopes::from_slice(&[access.scope]);
        return inspect(policy, head, plan, route.body);
    }
    // `auth::check`'s two steps, so a refused principal is still named in the audit line.
    let principal = auth::authenticate(policy, store, credential, &now)?;
    trace.principal = Some(principal);
    let allowed = auth::authorize(policy, principal, store, &access)?;
    plan.principal = principal;
    plan.scopes = allowed.scopes;
    plan.restricted = allowed.is_restricted();
    if !plan.restricted {
        // A copy reads its source with the destination store's credential, inside that
        // store's organisation (SPEC §5): with several stores, whether the source is the
        // destination's is judged for every caller, so a write that may copy is inspected.
        let may_copy = matches!(route.body, BodyRule::NamespaceWrite | BodyRule::AsyncCopy);
        if may_copy && policy.stores.len() > 1 {
            return inspect(policy, head, plan, route.body);
        }
        return Ok(Decision::Forward(plan));
    }
    match route.body {
        // (`Unjudged` is refused for restricted principals by the check above.)
        BodyRule::None | BodyRule::Unjudged => Ok(Decision::Forward(plan)),
        BodyRule::NamespaceList => {
            namespace_list(policy, principal, allowed, head.path).map(|p| match p {
                None => Decision::Forward(plan),
                Some(path) => Decision::ForwardWithPath(plan, path),
            })
        }
        rule => inspect(policy, head, plan, rule),
    }
}

/// Plans the inspection of a body: refused early when its declared size or encoding rules it
/// out.
fn inspect(
    policy: &Policy,
    head: &RequestHead<'_>,
    plan: Plan,
    rule: BodyRule,
) -> Result<Decision, Denial> {
    if head
        .content_length
        .is_some_and(|n| n > policy.inspect_body_bytes)
    {
        return Err(Denial::too_large(policy.inspect_body_bytes));
    }
    let encoding = match head.content_encoding.map(str::trim) {
        None | Some("") => Encoding::Identity,
        Some(e) if e.eq_ignore_ascii_case("identity") => Encoding::Identity,
        Some(e) if e.eq_ignore_ascii_case("gzip") => Encoding::Gzip,
        Some(_) => return Err(Denial::unsupported_encoding()),
    };
    Ok(Decision::Inspect(plan, Inspection { rule, encoding }))
}

/// `GET /v1/namespaces` for a restricted key: allowed with one prefix glob; the `prefix`
/// parameter is set when absent and must be at least as narrow when present. The query string
/// is read strictly, the way any store might read it (SPEC §5): a repeated or case-varied
/// `prefix`, a percent-encoded or otherwise odd parameter name, a `;` separator, an empty
/// parameter or an encoded `prefix` value is a 400, so what is forwarded has exactly one
/// `prefix` that means the same to every parser.
fn namespace_list(
    policy: &Policy,
    principal: Principal,
    allowed: Allowed<'_>,
    path: &str,
) -> Result<Option<String>, Denial> {
    let name = principal.name(policy);
    let Some(prefix) = allowed.grant.and_then(|g| g.single_prefix()) else {
        return Err(Denial::insufficient(
            Scope::Read,
            format!(
                "{name} is limited to namespace globs that are not a single prefix (like shop-*), so it may not list namespaces"
            ),
        ));
    };
    let (base, query) = split_query(path);
    let query = query.unwrap_or("");
    let mut sent = None;
    if !query.is_empty() {
        if query.contains(';') {
            return Err(Denial::bad_request(
                "the query string of a namespace listing may not contain ';'; separate parameters with '&'",
            ));
        }
        for param in query.split('&') {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let plain_name = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !plain_name || (key != "prefix" && key.eq_ignore_ascii_case("prefix")) {
                return Err(Denial::bad_request(format!(
                    "the query parameter name {key:?} of a namespace listing is not a plain name (A-Z a-z 0-9 _ -)"
                )));
            }
            if key != "prefix" {
                continue;
            }
            if sent.is_some() || !param.contains('=') {
                return Err(Denial::bad_request(
                    "a namespace listing may carry exactly one prefix=<value> parameter",
                ));
            }
            if !value.bytes().all(crate::namespace::is_namespace_byte) {
                return Err(Denial::bad_request(
                    "the prefix of a namespace listing must be sent unencoded, from A-Z a-z 0-9 _ - .",
                ));
            }
            sent = Some(value);
        }
    }
    match sent {
        Some(p) if p.starts_with(prefix) => Ok(None),
        Some(p) => Err(Denial::insufficient(
            Scope::Read,
            format!(
                "{name} may only list namespaces starting with {prefix:?}; prefix={p:?} is wider"
            ),
        )),
        None if query.is_empty() => Ok(Some(format!("{base}?prefix={prefix}"))),
        None => Ok(Some(format!("{base}?{query}&prefix={prefix}"))),
    }
}
