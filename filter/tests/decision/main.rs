//! Native tests of the whole header/body decision against the demo fixture
//! (`envoy/demo/layergate.json`) and small variations of it.
//!
//! One test binary, one room per topic; this file holds the fixture and helpers they share:
//! - `config`: the configuration compiled (or refused), hosts, credentials the gateway lacks;
//! - `auth`: who the caller is (bearer, inbound keys, store credentials, minted keys, open mode)
//!   and what its scopes allow;
//! - `routes`: restricted listings, routes the table does not know or whose namespaces it does
//!   not read, the app and control upstreams, the headers a plan writes and strips;
//! - `bodies`: inspected bodies (named namespaces, encodings, limits) and who streams uninspected;
//! - `copies`: copy and branch sources, in every form, on the same store only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod auth;
mod bodies;
mod config;
mod copies;
mod routes;

use layergate_filter::body;
use layergate_filter::decision::{decide, Decision, Denial, Plan};
use layergate_filter::headers::{pairs, serialize, RequestHead};
use layergate_filter::policy::Policy;
use serde_json::json;

const NOW: i64 = 1_795_528_719; // 2026-11-24
const SHOP: &str = "hvl_demoShopReader0123456789abcdefABCDEF";

fn demo_json() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../envoy/demo/layergate.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn env(var: &str) -> Option<String> {
    match var {
        "LAYERGATE_PRIMARY_KEY" => Some("tpuf-primary-dev-key".into()),
        "LAYERGATE_ARCHIVE_KEY" => Some("tpuf-archive-dev-key".into()),
        _ => None,
    }
}

fn policy_from(v: &serde_json::Value) -> Policy {
    Policy::from_json(v.to_string().as_bytes(), env).unwrap()
}

fn demo() -> Policy {
    policy_from(&demo_json())
}

fn run(p: &Policy, method: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
    let mut all = vec![(":method", method), (":path", path)];
    all.extend_from_slice(headers);
    let buf = serialize(all.iter().copied());
    let head = RequestHead::from_pairs(pairs(&buf));
    decide(p, &head, || NOW)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn forward(d: Decision) -> Plan {
    match d {
        Decision::Forward(p) => p,
        other => panic!("expected Forward, got {other:?}"),
    }
}

/// The plan of an allowed request, forwarded now or once its body is judged (with several
/// stores, every write that may copy is inspected).
fn allowed(d: Decision) -> Plan {
    match d {
        Decision::Forward(p) | Decision::Inspect(p, _) => p,
        other => panic!("expected Forward or Inspect, got {other:?}"),
    }
}

fn denied(d: Decision) -> Denial {
    match d {
        Decision::Deny(d) => d,
        other => panic!("expected Deny, got {other:?}"),
    }
}

fn call(p: &Policy, method: &str, path: &str, token: &str) -> Decision {
    run(p, method, path, &[("authorization", &bearer(token))])
}

fn inspect(
    p: &Policy,
    method: &str,
    path: &str,
    body_json: &serde_json::Value,
) -> Result<(), Denial> {
    match call(p, method, path, SHOP) {
        Decision::Inspect(plan, ins) => {
            body::check(p, &plan, ins, body_json.to_string().as_bytes(), || 0)
        }
        Decision::Deny(d) => Err(d),
        other => panic!("expected Inspect, got {other:?}"),
    }
}

fn writer_policy() -> Policy {
    let mut v = demo_json();
    v["apiKeys"][0]["entitlements"]["vectorstore.primary"]["scopes"] = json!(["read", "write"]);
    v["apiKeys"][0]["entitlements"]["layer"] =
        json!({"scopes": ["admin"], "namespaces": ["shop-*"]});
    v["app"] = json!({"cluster": "layer_app"});
    policy_from(&v)
}
