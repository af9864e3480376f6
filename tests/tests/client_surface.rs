//! The client surface (issue 9 item 3, SPEC §5): every method of the official Python clients
//! **turbopuffer 3.1.0** and **hevlayer 0.7.3** that names a namespace anywhere — path, query,
//! body, nested objects — driven through the real gateway (Envoy + the built filter) by the
//! namespace-restricted minted key `shop-reader` (read+write on `shop-*` of `primary`, and
//! `layer` admin on `shop-*`) naming the foreign namespace `hr-salaries`: every call is refused
//! with 403, no store sees any of them, and `hr-salaries` is unchanged. The same methods naming
//! only `shop-*` namespaces go through, so the refusals are not broken calls.
//!
//! The enumeration comes from the installed clients' source (`turbopuffer/resources/
//! namespaces.py`, `turbopuffer/_client.py`, `turbopuffer/lib/nested_body.py`,
//! `turbopuffer/lib/transport_*.py`; `hevlayer/client.py`, `hevlayer/models.py`), and what they
//! actually send is captured by `tests/python/client_surface.py capture` (a capturing HTTP
//! server) and checked against [`SURFACE`] by
//! [`the_clients_send_what_the_enumeration_says`]. Findings from the capture:
//! - turbopuffer's `copy_from`, `branch_from` **and `start_copy_from`** nest the source:
//!   `{"copy_from_namespace": {"source_namespace": …}}` (`lib/nested_body.py`), on
//!   `POST /v2/namespaces/{ns}?stainless_overload=copyFrom|branchFrom` and on
//!   `POST /v2/namespaces/{ns}/async?stainless_overload=startCopyFrom`. The filter used to read
//!   only a top-level `source_namespace` on `…/async`: `start_copy_from` copied a foreign
//!   namespace into an allowed one (fixed in `filter/src/body.rs`).
//! - With `compression=True` turbopuffer gzips every body over 1024 bytes (`Content-Encoding:
//!   gzip`; httpx transport for the sync client, aiohttp for the async one). The calls pad
//!   their bodies past that, so each body-carrying call also runs gzipped.
//! - `?stainless_overload=…` on `multi_query`, `copy_from`, `branch_from`, `start_copy_from`,
//!   `poll_copy_from` (and hevlayer's `batch_query_namespace`, `copy_namespace`,
//!   `branch_namespace`).
//! - hevlayer also names namespaces where the gateway does not read them: a Function's
//!   `spec.target_namespaces`, `namespaces[]` to discover, work items' `items[].namespace`, a
//!   minted key's entitlement globs, PromQL label matchers. These used to pass for a restricted
//!   `layer` grant (on to the app or the control API); they are now refused for restricted
//!   principals (`BodyRule::Unjudged` in `filter/src/route/mod.rs`).
//!
//! | call (`tpuf.*`: each of sync, sync+gzip, async+gzip) | request | where the namespace is | own namespace |
//! |---|---|---|---|
//! | `tpuf.namespaces(prefix=)`, `hev.list_turbopuffer_namespaces(prefix=)` | `GET /v1/namespaces?prefix=` | query `prefix` | store |
//! | `tpuf ns.write(upsert_rows / patch_rows / deletes …)`, `hev.write_namespace`, `hev.patch_columns`, `hevlayer.TpufClient.patch_columns` | `POST /v2/namespaces/{ns}` | path | store |
//! | `tpuf ns.write(copy_from_namespace=str / {source_namespace})`, same for `branch_from_namespace`; `hev.copy_namespace`, `hev.branch_namespace` | `POST /v2/namespaces/{ns}[?stainless_overload=copyFrom\|branchFrom]` | path; body `copy_from_namespace` / `branch_from_namespace` (string or `.source_namespace`) | store |
//! | `tpuf ns.copy_from`, `ns.branch_from` | `POST /v2/namespaces/{ns}?stainless_overload=copyFrom\|branchFrom` | path; body `copy_from_namespace.source_namespace` / `branch_from_namespace.source_namespace` | store |
//! | `tpuf ns.start_copy_from` | `POST /v2/namespaces/{ns}/async?stainless_overload=startCopyFrom` | path; body `copy_from_namespace.source_namespace` | store |
//! | `tpuf ns.query`, `hev.query_namespace`, `hevlayer.TpufClient.query` | `POST /v2/namespaces/{ns}/query` | path | store |
//! | `tpuf ns.multi_query`, `hev.batch_query_namespace` | `POST /v2/namespaces/{ns}/query?stainless_overload=multiQuery` | path | store |
//! | `hev.query_turbopuffer_namespace` | `POST /v1/namespaces/{ns}/query` | path | store |
//! | `tpuf ns.explain_query`, `hev.explain_turbopuffer_query` | `POST /v2/namespaces/{ns}/explain_query` | path | store |
//! | `tpuf ns.recall`, `hev.evaluate_turbopuffer_recall` | `POST /v1/namespaces/{ns}/_debug/recall` | path | store |
//! | `tpuf ns.metadata`, `hev.get_namespace_metadata` | `GET /v2/namespaces/{ns}/metadata` | path | store |
//! | `hev.get_turbopuffer_v1_namespace_metadata` | `GET /v1/namespaces/{ns}/metadata` | path | store |
//! | `tpuf ns.update_metadata`, `hev.update_turbopuffer_namespace_metadata` | `PATCH /v1/namespaces/{ns}/metadata` | path | store |
//! | `tpuf ns.schema`, `ns.exists`, `hev.get_turbopuffer_namespace_schema` | `GET /v1/namespaces/{ns}/schema` | path | store |
//! | `tpuf ns.update_schema`, `hev.update_turbopuffer_namespace_schema` | `POST /v1/namespaces/{ns}/schema` | path | store |
//! | `tpuf ns.hint_cache_warm`, `hev.hint_cache_warm` | `GET /v1/namespaces/{ns}/hint_cache_warm[?turbopuffer=…]` | path | store |
//! | `tpuf ns.poll_copy_from` | `GET /v1/namespaces/{ns}/operations/{token}?stainless_overload=pollCopyFrom` | path | store |
//! | `tpuf ns.delete_all`, `hev.delete_namespace` | `DELETE /v2/namespaces/{ns}` | path | store |
//! | `hev.fetch_documents`, `create_scan`, `scan`, `TpufClient.list_ids`, `delete_scan`, `create_checkpoint`, `create_snapshot`, `put_snapshot_policy`, `warm_cache`, `warm_namespace`, `init_namespace`, `import_namespace`, `put_blob`, `get_blob` | `POST /v2/namespaces/{ns}/{documents,scans,checkpoints,snapshots,warm,init,import}`, `DELETE …/scans/{id}`, `PUT …/snapshot-policy`, `PUT/GET /v1/namespaces/{ns}/blobs…` | path | app (404: no app here) |
//! | `hev.fetch_document`, `TpufClient.fetch`, `list_scans`, `get_scan`, `wait_for_scan`, `get_scan_results`, `list_checkpoints`, `get_checkpoint`, `get_namespace_snapshot`, `list_snapshot_jobs`, `get_snapshot_job`, `get_snapshot_policy`, `list_namespace_history`, `get_namespace_capabilities`, `list_clickstream`, `list_search_history`, `list_warm_jobs`, `get_warm_job` | `GET /v2/namespaces/{ns}/…` (not in the route table) | path | 403 (restricted keys: default-deny) |
//! | `hev.list_namespaces(prefix=)` | `GET /v2/namespaces?prefix=` (not in the table) | query `prefix` | 403 (default-deny) |
//! | `hev.list_snapshot_activity(namespace=)` | `GET /v2/activity/snapshots?namespace=` (not in the table) | query `namespace` | 403 (default-deny) |
//! | `hev.query` | `POST /v2/query` | body `namespaces[]` | app |
//! | `hev.create_pipeline`, `hev.ensure_pipeline` | `POST /v2/pipelines` | body `target_namespace` | app |
//! | `hev.create_udf`, `hev.upsert_udf` | `POST /v2/udfs`, `PUT /v2/udfs/{id}` | body `spec.target_namespaces[]` | 403 (unread) |
//! | `hev.discover_udf` | `POST /v2/udfs/{id}/discover` | body `namespaces[]` | 403 (unread) |
//! | `hev.heartbeat_udf_items`, `complete_udf_items`, `fail_udf_items` | `POST /v2/udfs/{id}/items/{heartbeat,complete,fail}` | body `items[].namespace` | 403 (unread) |
//! | `hev.mint_key` | `POST /v2/keys` | body `entitlements.*.namespaces[]` | 403 (unread) |
//! | `hev.query_metrics`, `query_metrics_range`, `query_metrics_api_v1`, `query_metrics_range_api_v1` | `GET /v2/metrics/[api/v1/]{query,query_range}?query=` | query `query` (PromQL label matcher) | 403 (unread) |
//!
//! Methods that name no namespace (key lookup/revoke/delete, vector stores, warehouses, cost,
//! license, metric catalog, pipeline/UDF ids and their worker queues, agents,
//! `authenticate_key`) are not driven; `run_udf_worker` only echoes the namespaces the app's
//! claim returns, through `complete_udf_items`/`fail_udf_items` (driven above).
//!
//! The foreign pass runs twice: `hr-salaries` on the default store `primary` (the key's own
//! store) and `logs-2026`, the Index on store `archive` (where the key has no entitlement).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use layergate_tests::demo::{self, Demo, ARCHIVE_KEY};
use layergate_tests::http::Request;
use layergate_tests::tour::SHOP_READER_TOKEN as SHOP;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const ALLOWED: &str = "shop-books";
const FOREIGN: &str = "hr-salaries";

/// What a call naming only the key's own namespaces gets through the demo gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    /// Forwarded to the store (which answers, possibly 404 for routes the devstore lacks).
    Store,
    /// Authorized, then 404: the demo has no hev layer app upstream.
    App,
    /// Refused 403 for restricted keys even on their own namespaces: a route the table does
    /// not know, or one naming namespaces where the gateway does not read them.
    Refused,
}
use Own::{App, Refused, Store};

/// Every call of `client_surface.py` in its foreign phase: the first request it sends (method,
/// path and query, as captured), where that request names `hr-salaries` (`path`; `?param` for
/// a query parameter; a JSON pointer into the body), and what the own-namespace call gets.
/// `tpuf.` rows run for each of the three turbopuffer clients (`tpuf.sync.`, `tpuf.gzip.`,
/// `tpuf.async.`).
const SURFACE: &[(&str, &str, &str, Own)] = &[
    ("tpuf.namespaces[prefix]", "GET /v1/namespaces?prefix=hr-", "?prefix", Store),
    ("tpuf.write[path]", "POST /v2/namespaces/hr-salaries", "path", Store),
    ("tpuf.write.patch_rows[path]", "POST /v2/namespaces/hr-salaries", "path", Store),
    ("tpuf.write.deletes[path]", "POST /v2/namespaces/hr-salaries", "path", Store),
    ("tpuf.query[path]", "POST /v2/namespaces/hr-salaries/query", "path", Store),
    ("tpuf.multi_query[path]", "POST /v2/namespaces/hr-salaries/query?stainless_overload=multiQuery", "path", Store),
    ("tpuf.explain_query[path]", "POST /v2/namespaces/hr-salaries/explain_query", "path", Store),
    ("tpuf.recall[path]", "POST /v1/namespaces/hr-salaries/_debug/recall", "path", Store),
    ("tpuf.metadata[path]", "GET /v2/namespaces/hr-salaries/metadata", "path", Store),
    ("tpuf.update_metadata[path]", "PATCH /v1/namespaces/hr-salaries/metadata", "path", Store),
    ("tpuf.schema[path]", "GET /v1/namespaces/hr-salaries/schema", "path", Store),
    ("tpuf.exists[path]", "GET /v1/namespaces/hr-salaries/schema", "path", Store),
    ("tpuf.update_schema[path]", "POST /v1/namespaces/hr-salaries/schema", "path", Store),
    ("tpuf.hint_cache_warm[path]", "GET /v1/namespaces/hr-salaries/hint_cache_warm", "path", Store),
    ("tpuf.poll_copy_from[path]", "GET /v1/namespaces/hr-salaries/operations/op_1?stainless_overload=pollCopyFrom", "path", Store),
    ("tpuf.delete_all[path]", "DELETE /v2/namespaces/hr-salaries", "path", Store),
    ("tpuf.copy_from[path]", "POST /v2/namespaces/hr-salaries?stainless_overload=copyFrom", "path", Store),
    ("tpuf.copy_from[source]", "POST /v2/namespaces/shop-books-stolen?stainless_overload=copyFrom", "/copy_from_namespace/source_namespace", Store),
    ("tpuf.branch_from[path]", "POST /v2/namespaces/hr-salaries?stainless_overload=branchFrom", "path", Store),
    ("tpuf.branch_from[source]", "POST /v2/namespaces/shop-books-stolen?stainless_overload=branchFrom", "/branch_from_namespace/source_namespace", Store),
    ("tpuf.start_copy_from[path]", "POST /v2/namespaces/hr-salaries/async?stainless_overload=startCopyFrom", "path", Store),
    ("tpuf.start_copy_from[source]", "POST /v2/namespaces/shop-books-stolen/async?stainless_overload=startCopyFrom", "/copy_from_namespace/source_namespace", Store),
    ("tpuf.write.copy_from_namespace[source]", "POST /v2/namespaces/shop-books-stolen", "/copy_from_namespace", Store),
    ("tpuf.write.copy_from_namespace{}[source]", "POST /v2/namespaces/shop-books-stolen", "/copy_from_namespace/source_namespace", Store),
    ("tpuf.write.branch_from_namespace[source]", "POST /v2/namespaces/shop-books-stolen", "/branch_from_namespace", Store),
    ("tpuf.write.branch_from_namespace{}[source]", "POST /v2/namespaces/shop-books-stolen", "/branch_from_namespace/source_namespace", Store),
    ("hev.write_namespace[path]", "POST /v2/namespaces/hr-salaries", "path", Store),
    ("hev.patch_columns[path]", "POST /v2/namespaces/hr-salaries", "path", Store),
    ("hev.query_turbopuffer_namespace[path]", "POST /v1/namespaces/hr-salaries/query", "path", Store),
    ("hev.batch_query_namespace[path]", "POST /v2/namespaces/hr-salaries/query?stainless_overload=multiQuery", "path", Store),
    ("hev.explain_turbopuffer_query[path]", "POST /v2/namespaces/hr-salaries/explain_query", "path", Store),
    ("hev.evaluate_turbopuffer_recall[path]", "POST /v1/namespaces/hr-salaries/_debug/recall", "path", Store),
    ("hev.get_namespace_metadata[path]", "GET /v2/namespaces/hr-salaries/metadata", "path", Store),
    ("hev.get_turbopuffer_v1_namespace_metadata[path]", "GET /v1/namespaces/hr-salaries/metadata", "path", Store),
    ("hev.update_turbopuffer_namespace_metadata[path]", "PATCH /v1/namespaces/hr-salaries/metadata", "path", Store),
    ("hev.get_turbopuffer_namespace_schema[path]", "GET /v1/namespaces/hr-salaries/schema", "path", Store),
    ("hev.update_turbopuffer_namespace_schema[path]", "POST /v1/namespaces/hr-salaries/schema", "path", Store),
    ("hev.hint_cache_warm[path]", "GET /v1/namespaces/hr-salaries/hint_cache_warm?turbopuffer=true", "path", Store),
    ("hev.delete_namespace[path]", "DELETE /v2/namespaces/hr-salaries", "path", Store),
    ("hev.copy_namespace[path]", "POST /v2/namespaces/hr-salaries?stainless_overload=copyFrom", "path", Store),
    ("hev.copy_namespace[source]", "POST /v2/namespaces/shop-books-stolen?stainless_overload=copyFrom", "/copy_from_namespace", Store),
    ("hev.copy_namespace{}[source]", "POST /v2/namespaces/shop-books-stolen?stainless_overload=copyFrom", "/copy_from_namespace/source_namespace", Store),
    ("hev.branch_namespace[path]", "POST /v2/namespaces/hr-salaries?stainless_overload=branchFrom", "path", Store),
    ("hev.branch_namespace[source]", "POST /v2/namespaces/shop-books-stolen?stainless_overload=branchFrom", "/branch_from_namespace", Store),
    ("hev.branch_namespace{}[source]", "POST /v2/namespaces/shop-books-stolen?stainless_overload=branchFrom", "/branch_from_namespace/source_namespace", Store),
    ("hev.query_namespace[path]", "POST /v2/namespaces/hr-salaries/query", "path", Store),
    ("hev.fetch_documents[path]", "POST /v2/namespaces/hr-salaries/documents", "path", App),
    ("hev.fetch_document[path]", "GET /v2/namespaces/hr-salaries/documents/1", "path", Refused),
    ("hev.create_scan[path]", "POST /v2/namespaces/hr-salaries/scans", "path", App),
    ("hev.scan[path]", "POST /v2/namespaces/hr-salaries/scans", "path", App),
    ("hev.list_scans[path]", "GET /v2/namespaces/hr-salaries/scans", "path", Refused),
    ("hev.get_scan[path]", "GET /v2/namespaces/hr-salaries/scans/s1", "path", Refused),
    ("hev.wait_for_scan[path]", "GET /v2/namespaces/hr-salaries/scans/s1", "path", Refused),
    ("hev.get_scan_results[path]", "GET /v2/namespaces/hr-salaries/scans/s1/results?limit=1", "path", Refused),
    ("hev.delete_scan[path]", "DELETE /v2/namespaces/hr-salaries/scans/s1", "path", App),
    ("hev.create_checkpoint[path]", "POST /v2/namespaces/hr-salaries/checkpoints", "path", App),
    ("hev.list_checkpoints[path]", "GET /v2/namespaces/hr-salaries/checkpoints", "path", Refused),
    ("hev.get_checkpoint[path]", "GET /v2/namespaces/hr-salaries/checkpoints/c1", "path", Refused),
    ("hev.create_snapshot[path]", "POST /v2/namespaces/hr-salaries/snapshots", "path", App),
    ("hev.get_namespace_snapshot[path]", "GET /v2/namespaces/hr-salaries/snapshots/abc", "path", Refused),
    ("hev.list_snapshot_jobs[path]", "GET /v2/namespaces/hr-salaries/snapshot-jobs", "path", Refused),
    ("hev.get_snapshot_job[path]", "GET /v2/namespaces/hr-salaries/snapshot-jobs/j1", "path", Refused),
    ("hev.get_snapshot_policy[path]", "GET /v2/namespaces/hr-salaries/snapshot-policy", "path", Refused),
    ("hev.put_snapshot_policy[path]", "PUT /v2/namespaces/hr-salaries/snapshot-policy", "path", App),
    ("hev.list_namespace_history[path]", "GET /v2/namespaces/hr-salaries/history?limit=1", "path", Refused),
    ("hev.get_namespace_capabilities[path]", "GET /v2/namespaces/hr-salaries/capabilities", "path", Refused),
    ("hev.list_clickstream[path]", "GET /v2/namespaces/hr-salaries/clickstream?limit=1", "path", Refused),
    ("hev.list_search_history[path]", "GET /v2/namespaces/hr-salaries/search-history?limit=1", "path", Refused),
    ("hev.warm_cache[path]", "POST /v2/namespaces/hr-salaries/warm?page_size=10", "path", App),
    ("hev.warm_namespace[path]", "POST /v2/namespaces/hr-salaries/warm", "path", App),
    ("hev.list_warm_jobs[path]", "GET /v2/namespaces/hr-salaries/warm-jobs", "path", Refused),
    ("hev.get_warm_job[path]", "GET /v2/namespaces/hr-salaries/warm-jobs/w1", "path", Refused),
    ("hev.init_namespace[path]", "POST /v2/namespaces/hr-salaries/init", "path", App),
    ("hev.import_namespace[path]", "POST /v2/namespaces/hr-salaries/import", "path", App),
    ("hev.put_blob[path]", "PUT /v1/namespaces/hr-salaries/blobs?warm=false", "path", App),
    ("hev.get_blob[path]", "GET /v1/namespaces/hr-salaries/blobs/0000000000000000000000000000000000000000000000000000000000000000", "path", App),
    ("hev.udf.TpufClient.fetch[path]", "GET /v2/namespaces/hr-salaries/documents/1", "path", Refused),
    ("hev.udf.TpufClient.query[path]", "POST /v2/namespaces/hr-salaries/query", "path", Store),
    ("hev.udf.TpufClient.list_ids[path]", "POST /v2/namespaces/hr-salaries/scans", "path", App),
    ("hev.udf.TpufClient.patch_columns[path]", "POST /v2/namespaces/hr-salaries", "path", Store),
    ("hev.list_turbopuffer_namespaces[prefix]", "GET /v1/namespaces?prefix=hr-", "?prefix", Store),
    ("hev.list_namespaces[prefix]", "GET /v2/namespaces?prefix=hr-", "?prefix", Refused),
    ("hev.list_snapshot_activity[namespace]", "GET /v2/activity/snapshots?limit=1&namespace=hr-salaries", "?namespace", Refused),
    ("hev.query[namespaces]", "POST /v2/query", "/namespaces/1", App),
    ("hev.create_pipeline[target_namespace]", "POST /v2/pipelines", "/target_namespace", App),
    ("hev.ensure_pipeline[target_namespace]", "POST /v2/pipelines", "/target_namespace", App),
    ("hev.create_udf[spec.target_namespaces]", "POST /v2/udfs", "/spec/target_namespaces/0", Refused),
    ("hev.upsert_udf[spec.target_namespaces]", "PUT /v2/udfs/u1", "/spec/target_namespaces/0", Refused),
    ("hev.discover_udf[namespaces]", "POST /v2/udfs/u1/discover", "/namespaces/0", Refused),
    ("hev.heartbeat_udf_items[items.namespace]", "POST /v2/udfs/u1/items/heartbeat", "/items/0/namespace", Refused),
    ("hev.complete_udf_items[items.namespace]", "POST /v2/udfs/u1/items/complete", "/items/0/namespace", Refused),
    ("hev.fail_udf_items[items.namespace]", "POST /v2/udfs/u1/items/fail", "/items/0/namespace", Refused),
    ("hev.mint_key[entitlements.namespaces]", "POST /v2/keys", "/entitlements/vectorstore.primary/namespaces/0", Refused),
    ("hev.query_metrics[promql]", "GET /v2/metrics/query?query=sum%28tpuf_requests_total%7Bnamespace%3D%22hr-salaries%22%7D%29", "?query", Refused),
    ("hev.query_metrics_range[promql]", "GET /v2/metrics/query_range?query=sum%28tpuf_requests_total%7Bnamespace%3D%22hr-salaries%22%7D%29&start=0&end=1&step=1", "?query", Refused),
    ("hev.query_metrics_api_v1[promql]", "GET /v2/metrics/api/v1/query?query=sum%28tpuf_requests_total%7Bnamespace%3D%22hr-salaries%22%7D%29", "?query", Refused),
    ("hev.query_metrics_range_api_v1[promql]", "GET /v2/metrics/api/v1/query_range?query=sum%28tpuf_requests_total%7Bnamespace%3D%22hr-salaries%22%7D%29&start=0&end=1&step=1", "?query", Refused),
];

const TPUF_CLIENTS: [&str; 3] = ["sync", "gzip", "async"];

/// `SURFACE` with the `tpuf.` rows expanded to the script's call names.
fn surface() -> Vec<(String, &'static str, &'static str, Own)> {
    let mut out = Vec::new();
    for &(name, request, place, own) in SURFACE {
        match name.strip_prefix("tpuf.") {
            Some(rest) => {
                for client in TPUF_CLIENTS {
                    out.push((format!("tpuf.{client}.{rest}"), request, place, own));
                }
            }
            None => out.push((name.to_owned(), request, place, own)),
        }
    }
    out
}

fn script(url: &str, phase: &str) -> Value {
    let (code, out) = layergate_tests::python::run_script(
        "client_surface.py",
        &[url, SHOP, ALLOWED, FOREIGN, phase],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(code, 0, "client_surface.py {phase}: {out}");
    out
}

/// The calls of a phase's output, by name.
fn names(out: &Value) -> BTreeSet<String> {
    out.as_object().unwrap().keys().cloned().collect()
}

fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// The enumeration is what the clients send: each call's first request is the table's, names
/// the foreign namespace where the table says, and turbopuffer's compressing clients gzip
/// every body.
#[test]
fn the_clients_send_what_the_enumeration_says() {
    let captured = script("unused", "capture");
    let table = surface();
    assert_eq!(
        names(&captured),
        table.iter().map(|r| r.0.clone()).collect(),
        "the script's calls and SURFACE differ"
    );
    for (name, request, place, _) in &table {
        let requests = captured[name].as_array().unwrap();
        let first = requests
            .first()
            .unwrap_or_else(|| panic!("{name} sent nothing"));
        let path = first["path"].as_str().unwrap();
        assert_eq!(
            format!("{} {path}", first["method"].as_str().unwrap()),
            *request,
            "{name}"
        );
        let (bare, query) = path.split_once('?').unwrap_or((path, ""));
        match *place {
            "path" => assert!(bare.split('/').any(|seg| seg == FOREIGN), "{name}: {path}"),
            p if p.starts_with('?') => {
                let value = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{}=", &p[1..])))
                    .unwrap_or_else(|| panic!("{name}: no {p} in {path}"));
                let value = percent_decoded(value);
                assert!(
                    value.contains(FOREIGN) || (!value.is_empty() && FOREIGN.starts_with(&value)),
                    "{name}: {p}={value}"
                );
            }
            pointer => assert_eq!(
                first["body"].pointer(pointer),
                Some(&json!(FOREIGN)),
                "{name}: {}",
                first["body"]
            ),
        }
        // Any further request of the call (hevlayer's scan polls) names it too.
        for r in requests {
            let text = percent_decoded(&r.to_string());
            assert!(text.contains("hr-"), "{name}: {r}");
        }
        let has_body = !first["body"].is_null();
        let compressing = name.starts_with("tpuf.gzip.") || name.starts_with("tpuf.async.");
        let gzip = first["content_encoding"].as_str() == Some("gzip");
        assert_eq!(gzip, compressing && has_body, "{name}: content-encoding");
    }
    // The nested copy source on `…/async` (the hole this test found).
    assert_eq!(
        captured["tpuf.sync.start_copy_from[source]"][0]["body"]["copy_from_namespace"],
        json!({"source_namespace": FOREIGN})
    );
}

/// The demo with `shop-reader` allowed to read and write `shop-*` on `primary` and to
/// administer `shop-*` through `layer` (so pipeline and Function routes get past their scope).
fn start() -> Demo {
    let mut config: Value = serde_json::from_str(&demo::filter_config().unwrap()).unwrap();
    let grants = &mut config["apiKeys"][0]["entitlements"];
    grants["vectorstore.primary"]["scopes"] = json!(["read", "write"]);
    grants["layer"] = json!({"scopes": ["admin"], "namespaces": ["shop-*"]});
    Demo::start_with(config.to_string(), Vec::new()).unwrap_or_else(|e| panic!("{e:#}"))
}

fn seed(d: &Demo, ns: &str, token: &str, rows: Value) {
    let r = Request::new("POST", &format!("/v2/namespaces/{ns}"))
        .bearer(token)
        .json(&json!({"upsert_rows": rows, "distance_metric": "cosine_distance"}))
        .send(d.addr())
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Every row of `ns`, read through the gateway with an unrestricted key.
fn rows(d: &Demo, ns: &str, token: &str) -> Value {
    let r = Request::new("POST", &format!("/v2/namespaces/{ns}/query"))
        .bearer(token)
        .json(&json!({"rank_by": ["id", "asc"], "top_k": 1000,
                      "include_attributes": ["vector", "salary", "name"]}))
        .send(d.addr())
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["rows"].clone()
}

/// Runs the foreign phase naming `foreign` and checks: every call refused with 403, no store
/// saw anything, no namespace appeared, `foreign`'s rows unchanged.
fn foreign_pass(d: &Demo, foreign: &str, reader: &str) {
    let url = format!("http://{}", d.addr());
    let rows_before = rows(d, foreign, reader);
    assert!(!rows_before.as_array().unwrap().is_empty());
    let namespaces = (d.primary.namespaces(), d.archive.namespaces());
    let before = d.store_counts();
    let seen_before = (d.primary.requests().len(), d.archive.requests().len());
    let (code, out) = layergate_tests::python::run_script(
        "client_surface.py",
        &[&url, SHOP, ALLOWED, foreign, "foreign"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(code, 0, "client_surface.py foreign {foreign}: {out}");
    let leaked: Vec<String> = d.primary.requests()[seen_before.0..]
        .iter()
        .chain(&d.archive.requests()[seen_before.1..])
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let table = surface();
    assert_eq!(
        names(&out),
        table.iter().map(|r| r.0.clone()).collect(),
        "the script's calls and SURFACE differ"
    );
    let wrong: Vec<String> = table
        .iter()
        .filter(|(name, ..)| out[name]["status"] != 403)
        .map(|(name, ..)| format!("{name}: {}", out[name]))
        .collect();
    assert!(
        wrong.is_empty(),
        "calls naming {foreign} not refused with 403:\n{}\nreached a store: {leaked:?}",
        wrong.join("\n")
    );
    assert_eq!(
        d.store_counts(),
        before,
        "a call naming {foreign} reached a store: {leaked:?}"
    );
    assert_eq!(
        (d.primary.namespaces(), d.archive.namespaces()),
        namespaces,
        "a namespace appeared"
    );
    assert_eq!(rows(d, foreign, reader), rows_before, "{foreign} changed");
}

#[test]
fn every_client_method_naming_a_foreign_namespace_is_refused_and_nothing_reaches_a_store() {
    let d = start();
    let hr = json!([{"id": 1, "vector": [0.1, 0.2], "salary": 250000, "name": "ceo"},
                    {"id": 2, "vector": [0.2, 0.1], "salary": 90000, "name": "eng"}]);
    seed(&d, FOREIGN, "demo-rw-token", hr);
    // `logs-2026` is served by `archive`, whose own key is its credential (deriveFromStore).
    seed(
        &d,
        "logs-2026",
        ARCHIVE_KEY,
        json!([{"id": 7, "vector": [0.3, 0.3], "name": "boot"}]),
    );
    seed(
        &d,
        ALLOWED,
        "demo-rw-token",
        json!([{"id": 1, "vector": [0.5, 0.5], "name": "Dune"}]),
    );

    foreign_pass(&d, FOREIGN, "demo-rw-token");
    foreign_pass(&d, "logs-2026", ARCHIVE_KEY);

    // Own namespaces: the same methods work (or get what the gateway documents).
    let foreign_rows = rows(&d, FOREIGN, "demo-rw-token");
    let before = d.primary.requests().len();
    let out = script(&format!("http://{}", d.addr()), "allowed");
    let mut wrong = Vec::new();
    for (name, _, _, own) in &surface() {
        let got = &out[name];
        let status = got["status"].as_u64();
        let error = got["error"].as_str().unwrap_or_default();
        let ok = match own {
            // "ok", a client-side parse failure of the devstore's answer, or the devstore's own
            // 404 (a route it lacks, a namespace not there yet): all answered by the store.
            Store => {
                got == "ok"
                    || got.get("exception").is_some()
                    || (status == Some(404) && error.contains("devstore has no route"))
                    || (status == Some(404) && error.contains("was not found"))
            }
            App => status == Some(404) && error.contains("the layer app"),
            Refused => status == Some(403),
        };
        if !ok {
            wrong.push(format!("{name} (expected {own:?}): {got}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "own-namespace calls not as documented:\n{}",
        wrong.join("\n")
    );
    // Inspected gzip bodies reached the store whole, the nested async copy among them.
    let seen = &d.primary.requests()[before..];
    assert!(seen
        .iter()
        .any(|r| r.header("content-encoding") == Some("gzip")
            && r.path
                == format!(
                    "/v2/namespaces/{ALLOWED}-copy/async?stainless_overload=startCopyFrom"
                )));
    assert!(seen.iter().all(|r| !r.path.contains(FOREIGN)));
    assert_eq!(
        rows(&d, FOREIGN, "demo-rw-token"),
        foreign_rows,
        "{FOREIGN} changed"
    );
    assert!(!d
        .primary
        .namespaces()
        .contains(&format!("{ALLOWED}-stolen")));
}
