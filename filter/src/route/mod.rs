//! The route table: method + path → required scope, target and where namespaces come from.
//!
//! The default table is SPEC §4, compiled in as a `match` over path segments (borrowed, no
//! allocation). Config may add rules ([`RouteRule`]); they are tried first, in order.
//! The query string never affects matching. Unknown routes: `GET`/`HEAD` → `read` on a store,
//! anything else → `admin` (fail safe).
//!
//! The rooms: this file (what a classified request is, and [`classify`]), `path` (the checks
//! and the borrowed segments of `:path`), `table` (SPEC §4's rows), `rule` (the config's
//! rules). Below them: `config`, `denial`, `namespace`, `scope`; nothing above.

mod path;
mod rule;
mod table;
#[cfg(test)]
mod tests;

pub use self::path::split_query;
pub use self::rule::RouteRule;

use self::path::{check_path, segments};
use self::table::{default_route, route, unknown, ADMIN, READ};
use crate::denial::Denial;
use crate::namespace::valid_namespace;
use crate::scope::Scope;

/// Where a request goes after it is authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A turbopuffer store: credential swap, store cluster.
    Store,
    /// hev layer's app (routes turbopuffer does not have).
    App,
    /// layergate's operator API (`/v2/keys…`, `/v2/vectorstores…`).
    Control,
}

impl Target {
    /// Lowercase name, as in config.
    pub const fn as_str(self) -> &'static str {
        match self {
            Target::Store => "store",
            Target::App => "app",
            Target::Control => "control",
        }
    }
}

/// Namespaces a body may name, checked for restricted principals (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRule {
    /// Nothing in the body names a namespace.
    None,
    /// `POST /v2/namespaces/{ns}`: `copy_from_namespace` / `branch_from_namespace` (a name,
    /// or an object naming `source_namespace`), and a top-level `source_namespace`.
    NamespaceWrite,
    /// `POST /v2/namespaces/{ns}/async`: the same fields (turbopuffer's client nests the
    /// source in `copy_from_namespace`).
    AsyncCopy,
    /// `POST /v2/query`: `namespaces[]` (required for restricted principals, ≤ 512).
    FederatedQuery,
    /// `POST /v2/pipelines`: `target_namespace`.
    PipelineCreate,
    /// `GET /v1/namespaces`: the `prefix` query parameter (not a body, but the same idea).
    NamespaceList,
    /// The body or query names namespaces the gateway does not read (a Function's
    /// `spec.target_namespaces`, `namespaces[]` to discover, work items' `items[].namespace`,
    /// a minted key's entitlement globs, PromQL label matchers): restricted principals are
    /// refused (SPEC §3 step 4), everyone else streams.
    Unjudged,
}

/// A classified request. Borrowed from the request path: no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// Scope required; `None` for routes that need no credential.
    pub scope: Option<Scope>,
    /// Where the request goes.
    pub target: Target,
    /// The namespace named by the path (`/v{1,2}/namespaces/{ns}…`), validated.
    pub namespace: Option<&'a str>,
    /// Namespaces named elsewhere.
    pub body: BodyRule,
    /// `POST /v2/agents/{name}/query`: the agent, gated by the `agent.<name>` entitlement.
    pub agent: Option<&'a str>,
    /// False for requests no row of the table (or of the config's rules) matched; they get the
    /// fail-safe scope, and restricted principals are refused (SPEC §3 step 4).
    pub known: bool,
}

/// Classifies a request. `method` as sent (`HEAD` is treated as `GET`), `path` is `:path`
/// including any query string (ignored for matching).
pub fn classify<'a>(rules: &[RouteRule], method: &str, path: &'a str) -> Result<Route<'a>, Denial> {
    let (path, _) = split_query(path);
    check_path(path)?;
    let method = if method == "HEAD" { "GET" } else { method };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Denial::bad_request(
            "the request method must be an upper-case HTTP method",
        ));
    }
    let s = segments(path);
    let segs = s.get();
    // The key service is internal (SPEC §6): the gateways reach the operator on its own
    // cluster; through the public listener the route does not exist, for any caller.
    if let ["v2", "keys", "sync", ..] = segs {
        return Err(Denial::no_upstream(
            "the layergate key service (internal: gateways sync from the operator directly)",
        ));
    }
    let mut route = match rules.iter().find(|r| r.matches(method, segs)) {
        Some(rule) => route(rule.scope, rule.target),
        None if s.overflow => unknown(if method == "GET" { READ } else { ADMIN }),
        None => default_route(method, segs),
    };
    // Any path under /v1|v2/namespaces/{ns} names a namespace, known route or not.
    if let ["v1" | "v2", "namespaces", ns, ..] = segs {
        if !valid_namespace(ns) {
            return Err(Denial::bad_request(
                "invalid namespace name: use 1 to 128 characters from A-Z a-z 0-9 _ - .",
            ));
        }
        route.namespace = Some(ns);
    }
    if let (Some(Scope::Read), ["v2", "agents", name, "query"]) = (route.scope, segs) {
        route.agent = Some(name);
    }
    Ok(route)
}
