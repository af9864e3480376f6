//! The fragment: valid JSON whatever the text, bounded, and the fields each principal gives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::config::LookupHash;
use crate::decision::{decide_traced, Decision};
use crate::headers::{pairs, serialize, RequestHead};
use serde_json::{json, Value};

const TOKEN: &str = "hvl_auditReader0123456789abcdefABCDEFGH";
const INBOUND: &str = "inbound-token-0123456789";

fn policy() -> Policy {
    let cfg = json!({
        "version": 1,
        "stores": [{"name": "primary", "cluster": "store_primary",
                    "credential": {"inline": "store-secret"},
                    "inboundAuth": {"mode": "keys", "keys": [
                        {"name": "ci \"nightly\"\\\u{1}é", "scopes": ["read"],
                         "sha256": LookupHash::of(INBOUND).to_string()[7..]}]}}],
        "defaultStore": "primary",
        "apiKeys": [{"keyId": "key_1", "name": "shop", "owner": "Zoë \"ops\"\n",
                     "lookupHash": LookupHash::of(TOKEN).to_string(),
                     "entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": ["shop-*"]}}}],
    });
    Policy::from_json(cfg.to_string().as_bytes(), |_| None).expect("a valid configuration")
}

/// The line Envoy would write: its own members, then the fragment.
fn line(policy: Option<&Policy>, e: &Entry<'_>) -> (String, Value) {
    let mut fragment = String::from("stale");
    write(&mut fragment, policy, &e.facts, e.decision, e.reason);
    let text = format!("{{\"status\":200{fragment}}}");
    let v = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text}"));
    (text, v)
}

struct Entry<'r> {
    facts: Facts<'r>,
    decision: &'r str,
    reason: Option<&'r str>,
}

fn entry<'r>(trace: Trace<'r>, decision: &'r str, reason: Option<&'r str>) -> Entry<'r> {
    Entry {
        facts: Facts {
            request_id: "rid-1",
            trace,
            touched: None,
        },
        decision,
        reason,
    }
}

/// Decides `GET path` with `token`, returning the trace and the decision's label and reason.
fn decide_get(p: &Policy, path: &str, token: &str) -> (String, Value) {
    let auth = format!("Bearer {token}");
    let buf = serialize([
        (":method", "GET"),
        (":path", path),
        ("authorization", &*auth),
    ]);
    let head = RequestHead::from_pairs(pairs(&buf));
    let mut trace = Trace::default();
    let d = decide_traced(p, &head, || 1_795_528_719, &mut trace);
    let (label, reason) = match &d {
        Decision::Deny(d) => (d.label(), Some(d.message.to_string())),
        _ => ("allowed", None),
    };
    line(Some(p), &entry(trace, label, reason.as_deref()))
}

#[test]
fn text_with_quotes_backslashes_control_characters_and_non_ascii_stays_valid_json() {
    let nasty = "a\"b\\c\nd\re\tf\u{0}g\u{1f}h\u{7f}ié✓\u{2028}😀";
    let mut s = String::new();
    string(&mut s, nasty, MAX_TEXT_BYTES);
    assert_eq!(serde_json::from_str::<String>(&s).unwrap(), nasty);
    assert!(!s.contains('\n') && !s.contains('\u{0}'), "{s:?}");
}

#[test]
fn long_text_is_cut_at_a_character_boundary() {
    let long = "é".repeat(MAX_TEXT_BYTES); // two bytes each
    let mut s = String::new();
    string(&mut s, &long, MAX_TEXT_BYTES);
    let back: String = serde_json::from_str(&s).unwrap();
    assert_eq!(back, "é".repeat(MAX_TEXT_BYTES / 2));
    assert_eq!(cut("aé", 2), "a");
}

#[test]
fn numbers_are_written_in_decimal() {
    for n in [0, 7, 10, 16, 512, usize::MAX] {
        let mut s = String::new();
        number(&mut s, n);
        assert_eq!(s, n.to_string());
    }
}

#[test]
fn at_most_sixteen_namespaces_are_listed_and_all_are_counted() {
    let mut t = Touched::default();
    for i in 0..40 {
        t.note(&format!("ns-{i}"));
    }
    t.note("ns-3"); // kept already: not counted again
    t.note("");
    t.note(&"x".repeat(10_000));
    assert_eq!(t.names().count(), MAX_NAMESPACES);
    assert_eq!(t.count(), 41);
    let mut e = entry(Trace::default(), "denied_403", None);
    e.facts.touched = Some(&t);
    let (text, v) = line(None, &e);
    assert_eq!(v["namespaces"].as_array().unwrap().len(), MAX_NAMESPACES);
    assert_eq!(v["namespaces"][0], "ns-0");
    assert_eq!(v["namespace_count"], 41);
    assert!(text.len() < 1024, "{}", text.len());
}

#[test]
fn a_refusal_before_any_plan_or_configuration_gives_nulls() {
    let (_, v) = line(
        None,
        &entry(
            Trace::default(),
            "denied_503",
            Some("layergate has no configuration"),
        ),
    );
    assert_eq!(v["decision"], "denied_503");
    assert_eq!(v["reason"], "layergate has no configuration");
    assert_eq!(v["request_id"], "rid-1");
    for field in [
        "principal",
        "principal_kind",
        "key_name",
        "store",
        "route",
        "scope",
    ] {
        assert_eq!(v[field], Value::Null, "{field}");
    }
    assert_eq!(v["namespaces"], json!([]));
    assert_eq!(v["namespace_count"], 0);
}

#[test]
fn a_minted_key_is_logged_with_its_id_name_and_owner_and_never_its_token() {
    let p = policy();
    let (text, v) = decide_get(&p, "/v1/namespaces/shop-1/metadata", TOKEN);
    assert_eq!(v["decision"], "allowed");
    assert_eq!(v["principal"], "apikey:shop");
    assert_eq!(v["principal_kind"], "minted_key");
    assert_eq!(v["key_name"], "shop");
    assert_eq!(v["key_owner"], "Zoë \"ops\"\n");
    assert_eq!(v["store"], "primary");
    assert_eq!(v["namespaces"], json!(["shop-1"]));
    assert_eq!(
        (v["route"].as_str(), v["scope"].as_str()),
        (Some("store"), Some("read"))
    );
    assert_eq!(v["reason"], Value::Null);
    let hash = LookupHash::of(TOKEN).to_string();
    assert!(
        !text.contains(TOKEN) && !text.contains(&hash[7..]),
        "{text}"
    );
}

#[test]
fn a_refused_key_is_still_named_with_the_namespace_it_asked_for() {
    let p = policy();
    let (_, v) = decide_get(&p, "/v1/namespaces/other/metadata", TOKEN);
    assert_eq!(v["decision"], "denied_403");
    assert_eq!(v["key_name"], "shop");
    assert_eq!(v["namespaces"], json!(["other"]));
    assert!(v["reason"].as_str().unwrap().contains("other"), "{v}");
}

#[test]
fn an_inbound_key_is_logged_by_its_name_escaped() {
    let p = policy();
    let (_, v) = decide_get(&p, "/v1/namespaces/any/metadata", INBOUND);
    assert_eq!(v["principal_kind"], "inbound_key");
    assert_eq!(v["key_name"], "ci \"nightly\"\\\u{1}é");
    assert_eq!(v["key_owner"], Value::Null);
    let (_, v) = decide_get(&p, "/v1/namespaces/any/metadata", "nobody");
    assert_eq!(
        (v["decision"].as_str(), v["principal"].as_str()),
        (Some("denied_401"), None)
    );
    assert_eq!(v["store"], "primary");
}

#[test]
fn an_inspected_request_keeps_its_path_namespace_first_and_its_request_id() {
    let p = policy();
    let buf = serialize([
        (":method", "GET"),
        (":path", "/v1/namespaces/shop-1/metadata"),
        ("authorization", &*format!("Bearer {TOKEN}")),
        ("x-request-id", "r\"1"),
    ]);
    let head = RequestHead::from_pairs(pairs(&buf));
    let mut trace = Trace::default();
    let Decision::Forward(plan) = decide_traced(&p, &head, || 1_795_528_719, &mut trace) else {
        panic!("allowed")
    };
    let mut held = Held::of(&Facts {
        request_id: head.request_id,
        trace,
        touched: None,
    });
    held.note("shop-2");
    held.note("shop-1");
    let e = Entry {
        facts: held.facts(&plan),
        decision: "allowed",
        reason: None,
    };
    let (_, v) = line(Some(&p), &e);
    assert_eq!(v["request_id"], "r\"1");
    assert_eq!(v["namespaces"], json!(["shop-1", "shop-2"]));
    assert_eq!(
        (v["namespace_count"].as_u64(), v["key_name"].as_str()),
        (Some(2), Some("shop"))
    );
}
