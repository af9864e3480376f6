//! The compiled-in route table of SPEC §4: a `match` over method and borrowed path segments,
//! and the fail-safe rows for what it does not know.

use super::{BodyRule, Route, Target};
use crate::scope::Scope;

pub(super) const fn route(scope: Option<Scope>, target: Target) -> Route<'static> {
    Route {
        scope,
        target,
        namespace: None,
        body: BodyRule::None,
        agent: None,
        known: true,
    }
}

pub(super) const fn unknown(scope: Option<Scope>) -> Route<'static> {
    let mut r = route(scope, Target::Store);
    r.known = false;
    r
}

pub(super) const READ: Option<Scope> = Some(Scope::Read);
pub(super) const WRITE: Option<Scope> = Some(Scope::Write);
pub(super) const ADMIN: Option<Scope> = Some(Scope::Admin);

/// The compiled-in table of SPEC §4. `method` is already upper-case with `HEAD` mapped to
/// `GET`; `segs` are the path segments. Namespaces are filled in by the caller.
pub(super) fn default_route(method: &str, segs: &[&str]) -> Route<'static> {
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
