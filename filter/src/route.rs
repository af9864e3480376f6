//! The route table: method + path → required scope, target and where namespaces come from.
//!
//! The default table is SPEC §4, compiled in as a `match` over path segments (borrowed, no
//! allocation). Config may add rules ([`RouteRule`]); they are tried first, in order.
//! The query string never affects matching. Unknown routes: `GET`/`HEAD` → `read` on a store,
//! anything else → `admin` (fail safe).

use crate::config::{RouteRuleConfig, RouteTargetConfig, ScopeRequirement};
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

const MAX_SEGMENTS: usize = 12;

/// Path segments without the query string, borrowed.
struct Segments<'a> {
    items: [&'a str; MAX_SEGMENTS],
    len: usize,
    /// More segments than `MAX_SEGMENTS`: matches no default route.
    overflow: bool,
}

impl<'a> Segments<'a> {
    fn get(&self) -> &[&'a str] {
        &self.items[..self.len]
    }
}

/// Splits `:path` into the path (no query) and the query string.
pub fn split_query(path: &str) -> (&str, Option<&str>) {
    match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    }
}

/// True when `path` holds a control character (NUL included), and when it holds `%2f`, `%5c`,
/// `%2e` or `%00` in any case: one pass over the bytes (four substring searches were about
/// two thousand instructions a request in the VM).
fn control_and_encoded(path: &str) -> (bool, bool) {
    let b = path.as_bytes();
    let (mut control, mut encoded) = (false, false);
    for (i, &c) in b.iter().enumerate() {
        if c.is_ascii_control() {
            control = true;
        } else if c == b'%' && i + 2 < b.len() && !encoded {
            encoded = matches!(
                (b[i + 1], b[i + 2].to_ascii_lowercase()),
                (b'2', b'f' | b'e') | (b'5', b'c') | (b'0', b'0')
            );
        }
    }
    (control, encoded)
}

/// Rejects what Envoy's normalization should already have removed, and what it must not pass:
/// encoded slashes/backslashes/dots/NUL, dot segments, empty segments (`//`), raw NUL.
fn check_path(path: &str) -> Result<(), Denial> {
    if !path.starts_with('/') {
        return Err(Denial::bad_request("the request path must start with '/'"));
    }
    let (control, encoded) = control_and_encoded(path);
    if control {
        return Err(Denial::bad_request(
            "the request path contains a control character (NUL?); remove it",
        ));
    }
    if encoded {
        return Err(Denial::bad_request(
            "the request path contains an encoded '/', '\\', '.' or NUL; send the path unencoded",
        ));
    }
    if path.len() > 1 {
        for seg in SlashSplit::new(&path[1..]) {
            if seg.is_empty() {
                return Err(Denial::bad_request(
                    "the request path contains an empty segment ('//'); remove it",
                ));
            }
            if seg == "." || seg == ".." {
                return Err(Denial::bad_request(
                    "the request path contains a '.' or '..' segment; remove it",
                ));
            }
        }
    }
    Ok(())
}

/// `str::split('/')` as a plain byte scan: the same pieces, without the generic searcher's
/// set-up on every call (in the VM, each `split` cost several hundred instructions).
struct SlashSplit<'a>(Option<&'a str>);

impl<'a> SlashSplit<'a> {
    fn new(s: &'a str) -> SlashSplit<'a> {
        SlashSplit(Some(s))
    }
}

impl<'a> Iterator for SlashSplit<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.0?;
        match rest.bytes().position(|b| b == b'/') {
            Some(i) => {
                self.0 = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

fn segments(path: &str) -> Segments<'_> {
    let mut s = Segments {
        items: [""; MAX_SEGMENTS],
        len: 0,
        overflow: false,
    };
    if path.len() > 1 {
        for seg in SlashSplit::new(&path[1..]) {
            if s.len == MAX_SEGMENTS {
                s.overflow = true;
                break;
            }
            s.items[s.len] = seg;
            s.len += 1;
        }
    }
    s
}

const fn route(scope: Option<Scope>, target: Target) -> Route<'static> {
    Route {
        scope,
        target,
        namespace: None,
        body: BodyRule::None,
        agent: None,
        known: true,
    }
}

const fn unknown(scope: Option<Scope>) -> Route<'static> {
    let mut r = route(scope, Target::Store);
    r.known = false;
    r
}

const READ: Option<Scope> = Some(Scope::Read);
const WRITE: Option<Scope> = Some(Scope::Write);
const ADMIN: Option<Scope> = Some(Scope::Admin);

/// The compiled-in table of SPEC §4. `method` is already upper-case with `HEAD` mapped to
/// `GET`; `segs` are the path segments. Namespaces are filled in by the caller.
fn default_route(method: &str, segs: &[&str]) -> Route<'static> {
    use Target::{App, Control, Store};
    let get = method == "GET";
    let with_body = |mut r: Route<'static>, body| {
        r.body = body;
        r
    };
    match (method, segs) {
        // --- turbopuffer's own API: store target ---
        ("POST", ["v1" | "v2", "namespaces", _, "query"]) => route(READ, Store),
        ("POST", ["v2", "namespaces", _, "explain_query"]) => route(READ, Store),
        ("GET", ["v1", "namespaces"]) => with_body(route(READ, Store), BodyRule::NamespaceList),
        ("GET", ["v1", "namespaces", _]) => route(READ, Store),
        ("GET", ["v1" | "v2", "namespaces", _, "metadata"]) => route(READ, Store),
        ("GET", ["v1", "namespaces", _, "schema" | "hint_cache_warm"]) => route(READ, Store),
        ("GET", ["v1", "namespaces", _, "operations", _]) => route(READ, Store),
        ("POST", ["v2", "namespaces", _]) => {
            with_body(route(WRITE, Store), BodyRule::NamespaceWrite)
        }
        ("POST", ["v2", "namespaces", _, "async"]) => {
            with_body(route(WRITE, Store), BodyRule::AsyncCopy)
        }
        ("DELETE", ["v2", "namespaces", _]) => route(WRITE, Store),
        ("POST", ["v1", "namespaces", _, "schema"]) => route(WRITE, Store),
        ("PATCH", ["v1", "namespaces", _, "metadata"]) => route(WRITE, Store),
        ("POST", ["v1", "namespaces", _, "_debug", "recall"]) => route(WRITE, Store),

        // --- hev layer's app: read-shaped ---
        ("POST", ["v2", "namespaces", _, "documents" | "scans" | "search"]) => route(READ, App),
        ("POST", ["v2", "query"]) => with_body(route(READ, App), BodyRule::FederatedQuery),
        ("POST", ["v2", "agents", _, "query"]) => route(READ, App),
        ("GET" | "POST", ["v2", "metrics", "query" | "query_range"]) => {
            with_body(route(READ, App), BodyRule::Unjudged)
        }
        ("GET" | "POST", ["v2", "metrics", "api", "v1", "query" | "query_range"]) => {
            with_body(route(READ, App), BodyRule::Unjudged)
        }
        ("GET", ["v2", "metrics", "catalog"] | ["v2", "metrics", "catalog", _]) => route(None, App),

        // --- hev layer's app: namespace operations and ingestion ---
        (
            "POST",
            ["v2", "namespaces", _, "import" | "init" | "warm" | "checkpoints" | "snapshots"],
        ) => route(WRITE, App),
        ("POST", ["v2", "namespaces", _, "shard", "migrate"]) => route(WRITE, App),
        ("PUT", ["v2", "namespaces", _, "snapshot-policy"]) => route(WRITE, App),
        ("PUT", ["v1", "namespaces", _, "blobs", ..]) => route(WRITE, App),
        ("GET", ["v1", "namespaces", _, "blobs", ..]) => route(READ, App),
        ("DELETE", ["v2", "namespaces", _, "scans", _]) => route(WRITE, App),
        ("POST", ["v2", "metrics", "api", "v1", "import", "prometheus"]) => route(WRITE, App),
        ("POST", ["v1", "control", "restores", ..]) => route(WRITE, App),

        // --- worker queues ---
        ("POST", ["v2", "pipelines", _, "claim"]) => route(WRITE, App),
        ("POST", ["v2", "pipelines", _, "documents", "heartbeat" | "stage"]) => route(WRITE, App),
        (
            "PUT",
            ["v2", "pipelines", _, "documents", _]
            | ["v2", "pipelines", _, "documents", _, "vectors"],
        ) => route(WRITE, App),
        ("POST", ["v2", "udfs", _, "claim"]) => route(WRITE, App),
        ("POST", ["v2", "udfs", _, "items", "complete" | "fail" | "heartbeat"]) => {
            with_body(route(WRITE, App), BodyRule::Unjudged)
        }

        // --- Pipeline / Function control ---
        ("POST", ["v2", "pipelines"]) => with_body(route(ADMIN, App), BodyRule::PipelineCreate),
        ("DELETE", ["v2", "pipelines", _]) => route(ADMIN, App),
        ("POST", ["v2", "udfs"]) | ("PUT", ["v2", "udfs", _]) => {
            with_body(route(ADMIN, App), BodyRule::Unjudged)
        }
        ("DELETE", ["v2", "udfs", _]) => route(ADMIN, App),
        ("POST", ["v2", "udfs", _, "pause" | "resume" | "reset-failed"]) => route(ADMIN, App),
        ("POST", ["v2", "udfs", _, "discover"]) => with_body(route(ADMIN, App), BodyRule::Unjudged),

        // --- layergate's control API ---
        ("POST", ["v2", "keys", "authenticate"]) => route(None, Control),
        ("POST", ["v2", "keys"]) => with_body(route(ADMIN, Control), BodyRule::Unjudged),
        ("GET", ["v2", "keys", ..]) => route(ADMIN, Control),
        // Every other key path too (a rotation, a typo): the control API answers it (its
        // JSON 404 for what it does not know), never a store with the store's credential.
        (_, ["v2", "keys", ..]) => route(ADMIN, Control),
        ("GET", ["v2", "vectorstores", ..]) => route(READ, Control),
        (_, ["v2", "vectorstores", ..]) => route(ADMIN, Control),

        // --- everything else ---
        ("GET", ["v2", ..]) => {
            let mut r = route(READ, App);
            r.known = false;
            r
        }
        _ if get => unknown(READ),
        _ => unknown(ADMIN),
    }
}

/// One segment of a config route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternSegment {
    Literal(Box<str>),
    /// `{ns}`: the namespace.
    Namespace,
    /// `*`: any one segment.
    Any,
    /// `**` (last only): any remaining segments, including none.
    Rest,
}

/// A compiled route rule from config, tried before the default table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    method: Option<Box<str>>,
    pattern: Vec<PatternSegment>,
    scope: Option<Scope>,
    target: Target,
}

impl RouteRule {
    /// Compiles a config rule; see [`RouteRuleConfig`] for the pattern syntax.
    pub fn compile(rule: &RouteRuleConfig) -> Result<RouteRule, String> {
        let path = rule.path.as_str();
        if !path.starts_with('/') || path.contains('?') {
            return Err(format!(
                "route path {path:?} must start with '/' and carry no query string"
            ));
        }
        let raw: Vec<&str> = if path == "/" {
            Vec::new()
        } else {
            path[1..].split('/').collect()
        };
        let mut pattern = Vec::with_capacity(raw.len());
        for (i, seg) in raw.iter().enumerate() {
            pattern.push(match *seg {
                "{ns}" => PatternSegment::Namespace,
                "*" => PatternSegment::Any,
                "**" if i + 1 == raw.len() => PatternSegment::Rest,
                "**" => {
                    return Err(format!(
                        "route path {path:?}: '**' is only allowed as the last segment"
                    ))
                }
                s if s.is_empty() || s.contains(['{', '}', '*']) => {
                    return Err(format!(
                    "route path {path:?}: segment {s:?} is not a literal, '{{ns}}', '*' or '**'"
                ))
                }
                s => PatternSegment::Literal(s.into()),
            });
        }
        let method = match rule.method.as_deref() {
            None | Some("*") => None,
            Some(m) if m.bytes().all(|b| b.is_ascii_uppercase()) && !m.is_empty() => {
                Some(if m == "HEAD" { "GET".into() } else { m.into() })
            }
            Some(m) => {
                return Err(format!(
                    "route method {m:?} must be an upper-case HTTP method or '*'"
                ))
            }
        };
        let scope = match rule.scope {
            ScopeRequirement::None => None,
            ScopeRequirement::Read => READ,
            ScopeRequirement::Write => WRITE,
            ScopeRequirement::Admin => ADMIN,
        };
        let target = match rule.target {
            RouteTargetConfig::Store => Target::Store,
            RouteTargetConfig::App => Target::App,
            RouteTargetConfig::Control => Target::Control,
        };
        Ok(RouteRule {
            method,
            pattern,
            scope,
            target,
        })
    }

    fn matches(&self, method: &str, segs: &[&str]) -> bool {
        if self.method.as_deref().is_some_and(|m| m != method) {
            return false;
        }
        let mut i = 0;
        for p in &self.pattern {
            match p {
                PatternSegment::Rest => return true,
                _ if i >= segs.len() => return false,
                PatternSegment::Literal(l) if **l != *segs[i] => return false,
                _ => {}
            }
            i += 1;
        }
        i == segs.len()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: &str, path: &str) -> Route<'static> {
        let path: &'static str = Box::leak(path.to_owned().into_boxed_str());
        classify(&[], method, path).unwrap_or_else(|d| unreachable!("{method} {path}: {d:?}"))
    }

    fn is(method: &str, path: &str, scope: Option<Scope>, target: Target) {
        let r = c(method, path);
        assert_eq!((r.scope, r.target), (scope, target), "{method} {path}");
    }

    #[test]
    fn encoded_and_control_bytes_are_found_in_one_pass() {
        // Against the plain definition: any case-insensitive occurrence of the four escapes.
        let naive = |p: &str| {
            let l = p.to_ascii_lowercase();
            (
                p.bytes().any(|b| b.is_ascii_control()),
                ["%2f", "%5c", "%2e", "%00"].iter().any(|n| l.contains(n)),
            )
        };
        for p in [
            "/v1/namespaces/a",
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/a%2E%2e",
            "/a%00",
            "/a%0",
            "/a%",
            "/a%%2f",
            "/a%25%32%66",
            "/a%41%2e",
            "/a\x01b",
            "/a\x7f",
            "/%2",
            "/ok%20x%2F",
        ] {
            assert_eq!(control_and_encoded(p), naive(p), "{p:?}");
        }
    }

    #[test]
    fn slash_split_is_split() {
        for p in [
            "",
            "a",
            "a/b",
            "a//b",
            "/",
            "a/",
            "/a/",
            "v1/namespaces/x/metadata",
        ] {
            let ours: Vec<&str> = SlashSplit::new(p).collect();
            let std: Vec<&str> = p.split('/').collect();
            assert_eq!(ours, std, "{p:?}");
        }
    }

    // One test per row of SPEC §4.
    #[test]
    fn row_query_routes_are_store_reads() {
        is("POST", "/v2/namespaces/ns/query", READ, Target::Store);
        is("POST", "/v1/namespaces/ns/query", READ, Target::Store);
        is(
            "POST",
            "/v2/namespaces/ns/explain_query",
            READ,
            Target::Store,
        );
        assert_eq!(
            c("POST", "/v2/namespaces/shop-a/query?stainless_overload=x").namespace,
            Some("shop-a")
        );
    }

    #[test]
    fn row_store_gets_are_reads() {
        let r = c("GET", "/v1/namespaces?prefix=shop-&page_size=10");
        assert_eq!(
            (r.scope, r.target, r.body, r.namespace),
            (READ, Target::Store, BodyRule::NamespaceList, None)
        );
        for p in [
            "/v1/namespaces/ns",
            "/v1/namespaces/ns/metadata",
            "/v2/namespaces/ns/metadata",
            "/v1/namespaces/ns/schema",
            "/v1/namespaces/ns/hint_cache_warm",
            "/v1/namespaces/ns/operations/tok123",
        ] {
            is("GET", p, READ, Target::Store);
            is("HEAD", p, READ, Target::Store);
        }
    }

    #[test]
    fn row_store_writes() {
        assert_eq!(
            c("POST", "/v2/namespaces/ns").body,
            BodyRule::NamespaceWrite
        );
        assert_eq!(
            c("POST", "/v2/namespaces/ns/async").body,
            BodyRule::AsyncCopy
        );
        for (m, p) in [
            ("POST", "/v2/namespaces/ns"),
            ("POST", "/v2/namespaces/ns/async"),
            ("DELETE", "/v2/namespaces/ns"),
            ("POST", "/v1/namespaces/ns/schema"),
            ("PATCH", "/v1/namespaces/ns/metadata"),
            ("POST", "/v1/namespaces/ns/_debug/recall"),
        ] {
            is(m, p, WRITE, Target::Store);
            assert_eq!(c(m, p).namespace, Some("ns"));
        }
    }

    #[test]
    fn row_app_reads() {
        for p in [
            "/v2/namespaces/ns/documents",
            "/v2/namespaces/ns/scans",
            "/v2/namespaces/ns/search",
        ] {
            is("POST", p, READ, Target::App);
        }
        assert_eq!(c("POST", "/v2/query").body, BodyRule::FederatedQuery);
        let agent = c("POST", "/v2/agents/support/query");
        assert_eq!(
            (agent.scope, agent.target, agent.agent),
            (READ, Target::App, Some("support"))
        );
        for p in [
            "/v2/metrics/query",
            "/v2/metrics/query_range",
            "/v2/metrics/api/v1/query",
            "/v2/metrics/api/v1/query_range",
        ] {
            is("GET", p, READ, Target::App);
            is("POST", p, READ, Target::App);
        }
    }

    #[test]
    fn row_metrics_catalog_needs_no_scope() {
        is("GET", "/v2/metrics/catalog", None, Target::App);
        is(
            "GET",
            "/v2/metrics/catalog/requests_total",
            None,
            Target::App,
        );
    }

    #[test]
    fn row_app_writes() {
        for p in [
            "import",
            "init",
            "warm",
            "checkpoints",
            "snapshots",
            "shard/migrate",
        ] {
            is(
                "POST",
                &format!("/v2/namespaces/ns/{p}"),
                WRITE,
                Target::App,
            );
        }
        is(
            "PUT",
            "/v2/namespaces/ns/snapshot-policy",
            WRITE,
            Target::App,
        );
        is(
            "GET",
            "/v2/namespaces/ns/snapshot-policy",
            READ,
            Target::App,
        );
        is("PUT", "/v1/namespaces/ns/blobs/a/b", WRITE, Target::App);
        is("GET", "/v1/namespaces/ns/blobs/a", READ, Target::App);
        is("DELETE", "/v2/namespaces/ns/scans/s1", WRITE, Target::App);
        is(
            "POST",
            "/v2/metrics/api/v1/import/prometheus",
            WRITE,
            Target::App,
        );
        is("POST", "/v1/control/restores", WRITE, Target::App);
        is("POST", "/v1/control/restores/r1/start", WRITE, Target::App);
    }

    #[test]
    fn row_worker_queues_are_writes() {
        for (m, p) in [
            ("POST", "/v2/pipelines/p1/claim"),
            ("POST", "/v2/pipelines/p1/documents/heartbeat"),
            ("POST", "/v2/pipelines/p1/documents/stage"),
            ("PUT", "/v2/pipelines/p1/documents/d1"),
            ("PUT", "/v2/pipelines/p1/documents/d1/vectors"),
            ("POST", "/v2/udfs/u1/claim"),
            ("POST", "/v2/udfs/u1/items/complete"),
            ("POST", "/v2/udfs/u1/items/fail"),
            ("POST", "/v2/udfs/u1/items/heartbeat"),
        ] {
            is(m, p, WRITE, Target::App);
        }
    }

    #[test]
    fn row_pipeline_and_function_control_is_admin() {
        assert_eq!(c("POST", "/v2/pipelines").body, BodyRule::PipelineCreate);
        for (m, p) in [
            ("POST", "/v2/pipelines"),
            ("DELETE", "/v2/pipelines/p1"),
            ("POST", "/v2/udfs"),
            ("PUT", "/v2/udfs/u1"),
            ("DELETE", "/v2/udfs/u1"),
            ("POST", "/v2/udfs/u1/pause"),
            ("POST", "/v2/udfs/u1/resume"),
            ("POST", "/v2/udfs/u1/reset-failed"),
            ("POST", "/v2/udfs/u1/discover"),
        ] {
            is(m, p, ADMIN, Target::App);
        }
    }

    #[test]
    fn row_keys_are_admin_control() {
        for (m, p) in [
            ("POST", "/v2/keys"),
            ("GET", "/v2/keys"),
            ("GET", "/v2/keys/k1"),
            ("DELETE", "/v2/keys/k1"),
            ("POST", "/v2/keys/k1/revoke"),
        ] {
            is(m, p, ADMIN, Target::Control);
        }
        is(
            "GET",
            "/v2/keys?includeRevoked=true",
            ADMIN,
            Target::Control,
        );
    }

    #[test]
    fn row_authenticate_needs_no_scope() {
        is("POST", "/v2/keys/authenticate", None, Target::Control);
    }

    #[test]
    fn row_other_v2_gets_are_app_reads_and_vectorstores_go_to_control() {
        for p in [
            "/v2/namespaces",
            "/v2/cost",
            "/v2/license",
            "/v2/activity",
            "/v2/warehouses",
            "/v2/pipelines",
            "/v2/udfs",
            "/v2/history",
        ] {
            is("GET", p, READ, Target::App);
        }
        is("GET", "/v2/vectorstores", READ, Target::Control);
        is("GET", "/v2/vectorstores/primary", READ, Target::Control);
    }

    #[test]
    fn unknown_routes_fail_safe() {
        is("GET", "/v1/namespaces/ns/brand-new", READ, Target::Store);
        is("GET", "/something/else", READ, Target::Store);
        is("POST", "/v1/namespaces/ns/brand-new", ADMIN, Target::Store);
        is("PURGE", "/v2/namespaces/ns", ADMIN, Target::Store);
        is("PUT", "/v2/namespaces/ns", ADMIN, Target::Store);
        assert_eq!(
            c("POST", "/v1/namespaces/ns/brand-new").namespace,
            Some("ns")
        );
    }

    #[test]
    fn rejects_encoded_slashes_dot_segments_nul_and_bad_namespaces() {
        for p in [
            "/v2/namespaces/a%2Fb/query",
            "/v2/namespaces/a%2fb",
            "/v2/namespaces/%2e%2e/query",
            "/v2/namespaces/../x",
            "/v2/namespaces/./x",
            "/v2//namespaces/x",
            "/v2/namespaces/x\0/query",
            "/v2/namespaces/bad*name/query",
            "/v2/namespaces/has space/query",
            "relative/path",
        ] {
            let d = classify(&[], "POST", p)
                .err()
                .unwrap_or_else(|| unreachable!("{p} accepted"));
            assert_eq!(d.status(), 400, "{p}");
        }
        let long = format!("/v2/namespaces/{}/query", "a".repeat(129));
        assert!(classify(&[], "POST", &long).is_err());
        let max = format!("/v2/namespaces/{}/query", "a".repeat(128));
        assert!(classify(&[], "POST", &max).is_ok());
    }

    #[test]
    fn config_rules_are_tried_first() {
        let rule = |m: Option<&str>, p: &str, scope, target| {
            RouteRule::compile(&RouteRuleConfig {
                method: m.map(str::to_owned),
                path: p.into(),
                scope,
                target,
            })
            .unwrap_or_else(|e| unreachable!("{e}"))
        };
        let rules = [
            rule(
                Some("POST"),
                "/v2/namespaces/{ns}/custom",
                ScopeRequirement::Read,
                RouteTargetConfig::Store,
            ),
            rule(
                None,
                "/v3/**",
                ScopeRequirement::Write,
                RouteTargetConfig::App,
            ),
        ];
        let r = classify(&rules, "POST", "/v2/namespaces/shop/custom")
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(
            (r.scope, r.target, r.namespace),
            (READ, Target::Store, Some("shop"))
        );
        let r = classify(&rules, "DELETE", "/v3/a/b/c").unwrap_or_else(|_| unreachable!());
        assert_eq!((r.scope, r.target), (WRITE, Target::App));
        assert!(RouteRule::compile(&RouteRuleConfig {
            method: Some("get".into()),
            path: "/x".into(),
            scope: ScopeRequirement::Read,
            target: RouteTargetConfig::Store
        })
        .is_err());
    }
}
