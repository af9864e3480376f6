"""Drive a turbopuffer-compatible endpoint with the official client (turbopuffer==3.1.0).

usage: tpuf_roundtrip.py BASE_URL API_KEY NAMESPACE
Writes rows, queries by vector with a filter, lists namespaces by prefix, reads metadata,
deletes the namespace; prints one JSON object with what each step returned. Any API error
is printed as {"error": {"status": N, "message": ...}} with exit code 3.
"""
import json
import sys

import turbopuffer

base_url, api_key, ns_name = sys.argv[1:4]
client = turbopuffer.Turbopuffer(api_key=api_key, base_url=base_url, max_retries=0, timeout=10)
ns = client.namespace(ns_name)
out = {}
try:
    w = ns.write(
        upsert_rows=[
            {"id": 1, "vector": [0.1, 0.2, 0.3], "title": "Dune", "genre": "scifi"},
            {"id": 2, "vector": [0.9, 0.1, 0.0], "title": "Emma", "genre": "classic"},
            {"id": 3, "vector": [0.2, 0.2, 0.3], "title": "Hyperion", "genre": "scifi"},
        ],
        distance_metric="cosine_distance",
    )
    out["write"] = {"status": w.status, "rows_affected": w.rows_affected}
    q = ns.query(
        rank_by=("vector", "ANN", [0.1, 0.2, 0.3]),
        top_k=5,
        filters=("genre", "Eq", "scifi"),
        include_attributes=["title"],
    )
    out["query"] = [{"id": r.id, "title": r["title"]} for r in (q.rows or [])]
    prefix = ns_name.split("-")[0] + "-"
    out["list"] = [n.id for n in client.namespaces(prefix=prefix)]
    out["exists"] = ns.exists()
    md = ns.metadata()
    out["metadata_rows"] = md.approx_row_count
    ns.delete_all()
    out["deleted"] = True
except turbopuffer.APIStatusError as e:
    print(json.dumps({"error": {"status": e.status_code, "message": str(e)}, "partial": out}))
    sys.exit(3)
print(json.dumps(out))
