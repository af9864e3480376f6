"""A rate-limited key through the gateway, with the official client (turbopuffer==3.1.0).

usage: tpuf_rate_limit.py BASE_URL API_KEY NAMESPACE
Reads metadata without retries until the gateway answers 429 (recording its Retry-After),
then once more with the client's own retries (which honour Retry-After); prints one JSON
object: {"first_429_after": N, "status": 429, "retry_after": "…", "ratelimit": "…",
"retried_ok": true, "retried_seconds": S}.
"""
import json
import sys
import time

import turbopuffer

base_url, api_key, ns_name = sys.argv[1:4]
out = {}
quick = turbopuffer.Turbopuffer(api_key=api_key, base_url=base_url, max_retries=0, timeout=10)
for i in range(50):
    try:
        quick.namespace(ns_name).exists()
    except turbopuffer.RateLimitError as e:
        out["first_429_after"] = i
        out["status"] = e.status_code
        out["retry_after"] = e.response.headers.get("retry-after")
        out["ratelimit"] = e.response.headers.get("ratelimit")
        out["ratelimit_policy"] = e.response.headers.get("ratelimit-policy")
        out["message"] = e.body.get("error") if isinstance(e.body, dict) else str(e.body)
        break
patient = turbopuffer.Turbopuffer(api_key=api_key, base_url=base_url, max_retries=3, timeout=10)
started = time.monotonic()
try:
    patient.namespace(ns_name).exists()
    out["retried_ok"] = True
except turbopuffer.APIStatusError as e:
    out["retried_ok"] = False
    out["retried_status"] = e.status_code
out["retried_seconds"] = round(time.monotonic() - started, 3)
print(json.dumps(out))
