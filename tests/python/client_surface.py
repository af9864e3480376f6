"""Every namespace-naming method of the official clients (turbopuffer==3.1.0, hevlayer==0.7.3).

usage: client_surface.py BASE_URL TOKEN ALLOWED FOREIGN PHASE

PHASE:
  foreign  every method names FOREIGN wherever the method lets a namespace be named (path,
           query, body, nested objects; copies also the other way round: an ALLOWED
           destination with a FOREIGN source). Prints {"<call>": {"status": N, "error": ...}}
           or {"<call>": "ok"} per call.
  allowed  the same methods naming only ALLOWED-derived namespaces (ALLOWED must exist with
           rows; copies write to ALLOWED-copy*), to prove each works through the gateway.
  capture  the foreign calls against a capturing HTTP server started here (BASE_URL and TOKEN
           are ignored): prints, per call, every request the client actually sent — method,
           path with query, content-encoding, and the body (gunzipped) — so the list of
           inspected fields comes from what the clients do.

turbopuffer calls run three times: the sync client (httpx transport), the sync client with
compression=True (gzip bodies over 1024 bytes; the calls pad their bodies past that), and the
async client (aiohttp transport) with compression=True. hevlayer has only an async client.
"""
import asyncio
import gzip
import http.server
import inspect
import json
import sys
import threading

import hevlayer
import turbopuffer

base_url, token, allowed, foreign, phase = sys.argv[1:6]
assert phase in ("foreign", "allowed", "capture"), phase

# Names the calls use. In the foreign phase every call names `foreign` somewhere; the copies
# also target an allowed destination with a foreign source (the attack of issue 9).
if phase == "allowed":
    path_ns = allowed  # the namespace in paths
    copy_dest_ns = f"{allowed}-copy"  # the destination of the [path] copies (source: ALLOWED)
    source_ns = allowed  # the source of the [source] copies
    dest_ns = f"{allowed}-copy"  # the destination of the [source] copies
    victim_ns = f"{allowed}-copy"  # deletes
    list_prefix = allowed.split("-")[0] + "-"
else:
    path_ns = foreign
    copy_dest_ns = foreign
    source_ns = foreign
    dest_ns = f"{allowed}-stolen"
    victim_ns = foreign
    list_prefix = foreign.split("-")[0] + "-"

PAD = "x" * 1500  # pushes a body past the clients' 1024-byte gzip threshold

captured = []  # capture phase: (call, request)
current = [None]


class Capture(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _handle(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        enc = self.headers.get("content-encoding")
        body = gzip.decompress(raw) if enc == "gzip" else raw
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = {"<non-json bytes>": len(body)}
        captured.append(
            (
                current[0],
                {
                    "method": self.command,
                    "path": self.path,
                    "content_encoding": enc,
                    "body": parsed,
                },
            )
        )
        out = b"{}"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def log_message(self, *args):
        pass


if phase == "capture":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    token = "capture-token"

loop = asyncio.new_event_loop()


def settle(value):
    """Awaits coroutines and drains paginators, sync or async."""
    if inspect.isawaitable(value) and not hasattr(value, "__aiter__"):
        value = loop.run_until_complete(value)
    if hasattr(value, "__aiter__"):

        async def drain(v):
            return [x async for x in v]

        return loop.run_until_complete(drain(value))
    if hasattr(value, "__iter__") and type(value).__name__.endswith("Page"):
        return list(value)
    return value


def tpuf_client(kind):
    common = dict(api_key=token, base_url=base_url, max_retries=0, timeout=10)
    if kind == "sync":
        return turbopuffer.Turbopuffer(**common)
    if kind == "gzip":
        return turbopuffer.Turbopuffer(compression=True, **common)
    return turbopuffer.AsyncTurbopuffer(compression=True, **common)


ROWS = [{"id": 101, "vector": [0.5, 0.5], "note": PAD}]


def tpuf_calls(c):
    """(name, thunk) for every namespace-naming method of turbopuffer 3.1.0."""
    ns = c.namespace(path_ns)
    dst = c.namespace(dest_ns)
    into = c.namespace(copy_dest_ns)
    pad = {"pad": PAD}
    q = dict(rank_by=("vector", "ANN", [0.5, 0.5]), top_k=1)
    return [
        # client-level listing: the namespace prefix is a query parameter
        ("namespaces[prefix]", lambda: c.namespaces(prefix=list_prefix)),
        # path
        ("write[path]", lambda: ns.write(upsert_rows=ROWS, distance_metric="cosine_distance")),
        ("write.patch_rows[path]", lambda: ns.write(patch_rows=[{"id": 101, "note": PAD}])),
        ("write.deletes[path]", lambda: ns.write(deletes=[101], extra_body=pad)),
        ("query[path]", lambda: ns.query(**q, extra_body=pad)),
        ("multi_query[path]", lambda: ns.multi_query(queries=[q], extra_body=pad)),
        ("explain_query[path]", lambda: ns.explain_query(**q, extra_body=pad)),
        ("recall[path]", lambda: ns.recall(num=1, top_k=1, extra_body=pad)),
        ("metadata[path]", lambda: ns.metadata()),
        ("update_metadata[path]", lambda: ns.update_metadata(read_only=False, extra_body=pad)),
        ("schema[path]", lambda: ns.schema()),
        ("exists[path]", lambda: ns.exists()),
        ("update_schema[path]", lambda: ns.update_schema(schema={"note": {"type": "string"}}, extra_body=pad)),
        ("hint_cache_warm[path]", lambda: ns.hint_cache_warm()),
        ("poll_copy_from[path]", lambda: ns.poll_copy_from("op_1")),
        ("delete_all[path]", lambda: c.namespace(victim_ns).delete_all()),
        # copies: the destination in the path, the source in the body
        ("copy_from[path]", lambda: into.copy_from(source_namespace=allowed, extra_body=pad)),
        ("copy_from[source]", lambda: dst.copy_from(source_namespace=source_ns, extra_body=pad)),
        ("branch_from[path]", lambda: into.branch_from(source_namespace=allowed, extra_body=pad)),
        ("branch_from[source]", lambda: dst.branch_from(source_namespace=source_ns, extra_body=pad)),
        ("start_copy_from[path]", lambda: into.start_copy_from(source_namespace=allowed, extra_body=pad)),
        ("start_copy_from[source]", lambda: dst.start_copy_from(source_namespace=source_ns, extra_body=pad)),
        ("write.copy_from_namespace[source]", lambda: dst.write(copy_from_namespace=source_ns, extra_body=pad)),
        (
            "write.copy_from_namespace{}[source]",
            lambda: dst.write(copy_from_namespace={"source_namespace": source_ns}, extra_body=pad),
        ),
        ("write.branch_from_namespace[source]", lambda: dst.write(branch_from_namespace=source_ns, extra_body=pad)),
        (
            "write.branch_from_namespace{}[source]",
            lambda: dst.write(branch_from_namespace={"source_namespace": source_ns}, extra_body=pad),
        ),
    ]


def hev_calls(h):
    """(name, thunk) for every namespace-naming method of hevlayer 0.7.3 (all async)."""
    ns = path_ns
    return [
        # path: turbopuffer-shaped routes
        ("write_namespace[path]", lambda: h.write_namespace(ns, {"upsert_rows": [{"id": 102, "vector": [0.5, 0.5]}]})),
        ("patch_columns[path]", lambda: h.patch_columns(ns, ["102"], {"note": ["n"]})),
        ("query_turbopuffer_namespace[path]", lambda: h.query_turbopuffer_namespace(ns, {"rank_by": ["vector", "ANN", [0.5, 0.5]], "top_k": 1})),
        ("batch_query_namespace[path]", lambda: h.batch_query_namespace(ns, {"queries": [{"rank_by": ["id", "asc"], "top_k": 1}]})),
        ("explain_turbopuffer_query[path]", lambda: h.explain_turbopuffer_query(ns, {"rank_by": ["id", "asc"], "top_k": 1})),
        ("evaluate_turbopuffer_recall[path]", lambda: h.evaluate_turbopuffer_recall(ns, {"num": 1, "top_k": 1})),
        ("get_namespace_metadata[path]", lambda: h.get_namespace_metadata(ns)),
        ("get_turbopuffer_v1_namespace_metadata[path]", lambda: h.get_turbopuffer_v1_namespace_metadata(ns)),
        ("update_turbopuffer_namespace_metadata[path]", lambda: h.update_turbopuffer_namespace_metadata(ns, {"pinning": None})),
        ("get_turbopuffer_namespace_schema[path]", lambda: h.get_turbopuffer_namespace_schema(ns)),
        ("update_turbopuffer_namespace_schema[path]", lambda: h.update_turbopuffer_namespace_schema(ns, {"note": {"type": "string"}})),
        ("hint_cache_warm[path]", lambda: h.hint_cache_warm(ns, turbopuffer=True)),
        ("delete_namespace[path]", lambda: h.delete_namespace(victim_ns)),
        ("copy_namespace[path]", lambda: h.copy_namespace(copy_dest_ns, {"copy_from_namespace": allowed})),
        ("copy_namespace[source]", lambda: h.copy_namespace(dest_ns, {"copy_from_namespace": source_ns})),
        ("copy_namespace{}[source]", lambda: h.copy_namespace(dest_ns, {"copy_from_namespace": {"source_namespace": source_ns}})),
        ("branch_namespace[path]", lambda: h.branch_namespace(copy_dest_ns, {"branch_from_namespace": allowed})),
        ("branch_namespace[source]", lambda: h.branch_namespace(dest_ns, {"branch_from_namespace": source_ns})),
        ("branch_namespace{}[source]", lambda: h.branch_namespace(dest_ns, {"branch_from_namespace": {"source_namespace": source_ns}})),
        # path: hev layer app routes
        ("query_namespace[path]", lambda: h.query_namespace(ns, {"vector": [0.5, 0.5], "top_k": 1})),
        ("fetch_documents[path]", lambda: h.fetch_documents(ns, {"ids": ["1"]})),
        ("fetch_document[path]", lambda: h.fetch_document(ns, "1")),
        ("create_scan[path]", lambda: h.create_scan(ns, {"filters": None})),
        ("scan[path]", lambda: h.scan(ns, {"filters": None}, timeout=1)),
        ("list_scans[path]", lambda: h.list_scans(ns)),
        ("get_scan[path]", lambda: h.get_scan(ns, "s1")),
        ("wait_for_scan[path]", lambda: h.wait_for_scan(ns, "s1", timeout=1)),
        ("get_scan_results[path]", lambda: h.get_scan_results(ns, "s1", limit=1)),
        ("delete_scan[path]", lambda: h.delete_scan(ns, "s1")),
        ("create_checkpoint[path]", lambda: h.create_checkpoint(ns, {"label": "c1"})),
        ("list_checkpoints[path]", lambda: h.list_checkpoints(ns)),
        ("get_checkpoint[path]", lambda: h.get_checkpoint(ns, "c1")),
        ("create_snapshot[path]", lambda: h.create_snapshot(ns, {"field": "note"})),
        ("get_namespace_snapshot[path]", lambda: h.get_namespace_snapshot(ns, "abc")),
        ("list_snapshot_jobs[path]", lambda: h.list_snapshot_jobs(ns)),
        ("get_snapshot_job[path]", lambda: h.get_snapshot_job(ns, "j1")),
        ("get_snapshot_policy[path]", lambda: h.get_snapshot_policy(ns)),
        ("put_snapshot_policy[path]", lambda: h.put_snapshot_policy(ns, {"interval": "5m"})),
        ("list_namespace_history[path]", lambda: h.list_namespace_history(ns, limit=1)),
        ("get_namespace_capabilities[path]", lambda: h.get_namespace_capabilities(ns)),
        ("list_clickstream[path]", lambda: h.list_clickstream(ns, limit=1)),
        ("list_search_history[path]", lambda: h.list_search_history(ns, limit=1)),
        ("warm_cache[path]", lambda: h.warm_cache(ns, page_size=10)),
        ("warm_namespace[path]", lambda: h.warm_namespace(ns)),
        ("list_warm_jobs[path]", lambda: h.list_warm_jobs(ns)),
        ("get_warm_job[path]", lambda: h.get_warm_job(ns, "w1")),
        ("init_namespace[path]", lambda: h.init_namespace(ns, {"schema_version": 1})),
        ("import_namespace[path]", lambda: h.import_namespace(ns, b"ARROW1")),
        ("put_blob[path]", lambda: h.put_blob(ns, b"blob", warm=False)),
        ("get_blob[path]", lambda: h.get_blob(ns, "0" * 64)),
        # hevlayer.udf.TpufClient, the turbopuffer facade UDF workers get
        ("udf.TpufClient.fetch[path]", lambda: hevlayer.TpufClient(h).fetch(ns, "1")),
        ("udf.TpufClient.query[path]", lambda: hevlayer.TpufClient(h).query(ns, {"vector": [0.5, 0.5], "top_k": 1})),
        ("udf.TpufClient.list_ids[path]", lambda: hevlayer.TpufClient(h).list_ids(ns, None)),
        ("udf.TpufClient.patch_columns[path]", lambda: hevlayer.TpufClient(h).patch_columns(ns, ["102"], {"note": ["n"]})),
        # query parameters
        ("list_turbopuffer_namespaces[prefix]", lambda: h.list_turbopuffer_namespaces(prefix=list_prefix)),
        ("list_namespaces[prefix]", lambda: h.list_namespaces(prefix=list_prefix)),
        ("list_snapshot_activity[namespace]", lambda: h.list_snapshot_activity(namespace=path_ns, limit=1)),
        # bodies
        ("query[namespaces]", lambda: h.query({"vector": [0.5, 0.5], "namespaces": [allowed, path_ns]})),
        ("create_pipeline[target_namespace]", lambda: h.create_pipeline({"id": "p1", "target_namespace": path_ns})),
        ("ensure_pipeline[target_namespace]", lambda: h.ensure_pipeline({"id": "p1", "target_namespace": path_ns})),
        ("create_udf[spec.target_namespaces]", lambda: h.create_udf({"id": "u1", "spec": {"target_namespaces": [path_ns], "worker": {"url": "http://w"}}})),
        ("upsert_udf[spec.target_namespaces]", lambda: h.upsert_udf("u1", {"spec": {"target_namespaces": [path_ns], "worker": {"url": "http://w"}}})),
        ("discover_udf[namespaces]", lambda: h.discover_udf("u1", {"namespaces": [path_ns]})),
        ("heartbeat_udf_items[items.namespace]", lambda: h.heartbeat_udf_items("u1", {"worker_id": "w", "items": [{"namespace": path_ns, "id": "1"}]})),
        ("complete_udf_items[items.namespace]", lambda: h.complete_udf_items("u1", {"worker_id": "w", "items": [{"namespace": path_ns, "id": "1", "vector": [0.5, 0.5]}]})),
        ("fail_udf_items[items.namespace]", lambda: h.fail_udf_items("u1", {"worker_id": "w", "items": [{"namespace": path_ns, "id": "1", "kind": "permanent"}]})),
        (
            "mint_key[entitlements.namespaces]",
            lambda: h.mint_key({"name": "k1", "entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": [path_ns]}}}),
        ),
        # PromQL may name (or group by) any namespace's label
        ("query_metrics[promql]", lambda: h.query_metrics(query=f'sum(tpuf_requests_total{{namespace="{path_ns}"}})')),
        ("query_metrics_range[promql]", lambda: h.query_metrics_range(query=f'sum(tpuf_requests_total{{namespace="{path_ns}"}})', start="0", end="1", step="1")),
        ("query_metrics_api_v1[promql]", lambda: h.query_metrics_api_v1(query=f'sum(tpuf_requests_total{{namespace="{path_ns}"}})')),
        ("query_metrics_range_api_v1[promql]", lambda: h.query_metrics_range_api_v1(query=f'sum(tpuf_requests_total{{namespace="{path_ns}"}})', start="0", end="1", step="1")),
    ]


def outcome(thunk):
    try:
        settle(thunk())
        return "ok"
    except turbopuffer.APIStatusError as e:
        return {"status": e.status_code, "error": str(e)[:300]}
    except hevlayer.HevlayerError as e:
        return {"status": e.status_code, "error": e.message[:300]}
    except Exception as e:  # a client-side failure (e.g. a response model that did not parse)
        return {"exception": f"{type(e).__name__}: {str(e)[:300]}"}


calls = []
for kind in ("sync", "gzip", "async"):
    client = tpuf_client(kind)
    calls += [(f"tpuf.{kind}.{name}", thunk) for name, thunk in tpuf_calls(client)]
hev = hevlayer.AsyncHevlayer(api_key=token, base_url=base_url, timeout=10)
calls += [(f"hev.{name}", thunk) for name, thunk in hev_calls(hev)]

out = {}
for name, thunk in calls:
    current[0] = name
    result = outcome(thunk)
    if phase == "capture":
        out[name] = [req for call, req in captured if call == name]
    else:
        out[name] = result
print(json.dumps(out))
