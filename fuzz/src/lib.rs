//! The fuzz targets' bodies, with the oracle of issue 9: **a namespace-restricted key's
//! request is forwarded only if every namespace it names, read the way a lenient store might
//! read it, matches the key's globs.** Every target also checks that nothing panics.
//!
//! The fixture is the demo's filter config with `shop-reader` (`shop-*`) given read, write
//! and `layer` admin, and an app and control upstream, so every route kind is reachable.

use flate2::write::GzEncoder;
use layergate_filter::body;
use layergate_filter::decision::{decide, Decision, Plan};
use layergate_filter::headers::{pairs, serialize, RequestHead};
use layergate_filter::policy::Policy;
use layergate_filter::route::Target;
use std::io::Write;
use std::sync::OnceLock;

/// The restricted key's token (`shop-reader`, namespaces `shop-*`).
pub const SHOP: &str = "hvl_demoShopReader0123456789abcdefABCDEF";
const NOW: i64 = 1_795_528_719;

fn env(var: &str) -> Option<String> {
    Some(format!("credential-of-{var}"))
}

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let mut v: serde_json::Value =
            serde_json::from_str(include_str!("../../envoy/demo/layergate.json"))
                .unwrap_or_default();
        v["apiKeys"][0]["entitlements"] = serde_json::json!({
            "vectorstore.primary": {"scopes": ["read", "write"], "namespaces": ["shop-*"]},
            "layer": {"scopes": ["admin"], "namespaces": ["shop-*"]},
        });
        v["app"] = serde_json::json!({"cluster": "layer_app"});
        v["control"] = serde_json::json!({"cluster": "layergate_control"});
        match Policy::from_json(v.to_string().as_bytes(), env) {
            Ok(p) => p,
            Err(e) => panic!("fixture: {e}"),
        }
    })
}

fn allowed(ns: &str) -> bool {
    ns.starts_with("shop-")
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-decodes leniently (`+` as space when `plus`), as a forgiving server would.
fn decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Panics when a forwarded request of the restricted key names a namespace outside
/// `shop-*` in its path, or (going to a store) lists namespaces without a `shop-` prefix, as
/// a lenient server would read them: percent-decoded, case-insensitive, `;` parameters
/// stripped or kept.
fn judge_path(forwarded: &str, to_store: bool) {
    let (path, query) = forwarded.split_once('?').unwrap_or((forwarded, ""));
    let decoded = decode(path, false);
    let segments: Vec<&str> = decoded.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        for variant in [*seg, seg.split(';').next().unwrap_or("")] {
            if variant.eq_ignore_ascii_case("namespaces") {
                if let Some(next) = segments.get(i + 1) {
                    for ns in [*next, next.split(';').next().unwrap_or("")] {
                        assert!(
                            allowed(ns),
                            "forwarded {forwarded:?}: names namespace {ns:?}"
                        );
                    }
                }
            }
        }
    }
    // A listing: the path ends at `namespaces` (any case, any `;` parameters).
    let listing = to_store
        && segments.last().is_some_and(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .eq_ignore_ascii_case("namespaces")
        });
    if listing {
        let mut prefixes = 0;
        for param in query.split(['&', ';']) {
            let (k, v) = param.split_once('=').unwrap_or((param, ""));
            if decode(k, true).trim().eq_ignore_ascii_case("prefix") {
                prefixes += 1;
                let v = decode(v, true);
                assert!(allowed(&v), "forwarded {forwarded:?}: lists prefix {v:?}");
            }
        }
        assert!(
            prefixes >= 1,
            "forwarded {forwarded:?}: a listing without prefix"
        );
    }
}

/// Applies the path oracle to a decision of the restricted key.
fn judge(decision: &Decision, path: &str) {
    match decision {
        // The control API is layergate's own operator: it serves key and store records, never
        // namespace data, whatever its path says.
        Decision::Forward(plan)
        | Decision::Inspect(plan, _)
        | Decision::ForwardWithPath(plan, _)
            if plan.target == Target::Control => {}
        Decision::Forward(plan) | Decision::Inspect(plan, _) if plan.restricted => {
            judge_path(path, plan.target == Target::Store)
        }
        Decision::ForwardWithPath(plan, p) if plan.restricted => {
            judge_path(p, plan.target == Target::Store)
        }
        _ => {}
    }
}

fn run(method: &str, path: &str, extra: &[(&str, &str)]) -> Decision {
    let auth = format!("Bearer {SHOP}");
    let mut headers = vec![
        (":method", method),
        (":path", path),
        ("authorization", auth.as_str()),
    ];
    headers.extend_from_slice(extra);
    let buf = serialize(headers.iter().copied());
    decide(policy(), &RequestHead::from_pairs(pairs(&buf)), || NOW)
}

/// A serialized header map (proxy-wasm's wire format): parsed and decided without panic;
/// a restricted key's forward obeys the oracle.
pub fn headers(data: &[u8]) {
    let head = RequestHead::from_pairs(pairs(data));
    let d = decide(policy(), &head, || NOW);
    judge(&d, head.path);
}

/// Method and path (first byte picks the method): classification never panics.
pub fn route(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let method = METHODS[m as usize % METHODS.len()];
    if let Ok(r) = layergate_filter::route::classify(&policy().rules, method, path) {
        if let Some(ns) = r.namespace {
            assert!(
                layergate_filter::namespace::valid_namespace(ns),
                "{path:?} → {ns:?}"
            );
            assert!(path.contains(ns));
        }
    }
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get",
];

/// A request line of the restricted key (first byte picks the method): the path, its query
/// string and the decision obey the oracle.
pub fn request(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let method = METHODS[m as usize % METHODS.len()];
    let d = run(method, path, &[]);
    judge(&d, path);
}

/// The routes whose bodies are inspected (SPEC §5).
const BODY_ROUTES: [&str; 4] = [
    "/v2/namespaces/shop-x",
    "/v2/namespaces/shop-x/async",
    "/v2/query",
    "/v2/pipelines",
];

/// Panics when an accepted body names, in any field a store reads namespaces from, one
/// outside `shop-*`, or copies with another key.
fn judge_body(route: &str, json: &[u8]) {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice::<serde_json::Value>(json)
    else {
        return;
    };
    let check = |what: &str, v: &serde_json::Value| {
        if let Some(ns) = v.as_str() {
            assert!(allowed(ns), "{route}: {what} {ns:?} accepted");
        }
    };
    for field in ["copy_from_namespace", "branch_from_namespace"] {
        match fields.get(field) {
            Some(serde_json::Value::Object(o)) => {
                check(
                    field,
                    o.get("source_namespace")
                        .unwrap_or(&serde_json::Value::Null),
                );
                assert!(
                    !o.contains_key("source_api_key"),
                    "{route}: source_api_key accepted"
                );
            }
            Some(v) => check(field, v),
            None => {}
        }
    }
    for field in ["source_namespace", "target_namespace"] {
        if let Some(v) = fields.get(field) {
            check(field, v);
        }
    }
    assert!(
        !fields.contains_key("source_api_key"),
        "{route}: source_api_key accepted"
    );
    match fields.get("namespaces") {
        Some(serde_json::Value::Array(list)) => list.iter().for_each(|v| check("namespaces[]", v)),
        _ if route == "/v2/query" => {
            panic!("{route}: a federated query without a namespace list accepted")
        }
        _ => {}
    }
}

/// A body on an inspected route (first byte: route and encoding): the verdict obeys the
/// oracle, plain and gzip.
pub fn body(data: &[u8]) {
    let Some((&sel, json)) = data.split_first() else {
        return;
    };
    let route = BODY_ROUTES[sel as usize % BODY_ROUTES.len()];
    let mode = (sel as usize / BODY_ROUTES.len()) % 3;
    let (wire, encoding): (Vec<u8>, &[(&str, &str)]) = match mode {
        0 => (json.to_vec(), &[]),
        1 => {
            let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = gz.write_all(json);
            (
                gz.finish().unwrap_or_default(),
                &[("content-encoding", "gzip")],
            )
        }
        _ => (json.to_vec(), &[("content-encoding", "gzip")]),
    };
    let d = run("POST", route, encoding);
    let plan: Plan = match d {
        Decision::Inspect(plan, inspection) => {
            if body::check(policy(), &plan, inspection, &wire, || NOW).is_err() {
                return;
            }
            plan
        }
        Decision::Forward(plan) => plan,
        _ => return,
    };
    if plan.restricted {
        // Mode 2 sends the bytes as gzip: accepted only if they inflate.
        let inflated;
        let json = if mode == 0 {
            json
        } else {
            let mut out = Vec::new();
            let mut r = flate2::read::GzDecoder::new(&wire[..]);
            if std::io::Read::read_to_end(&mut r, &mut out).is_err() {
                return;
            }
            inflated = out;
            &inflated
        };
        judge_body(route, json);
    }
}

/// A filter configuration: parsed and compiled without panic; a compiled one decides.
pub fn config(data: &[u8]) {
    if let Ok(p) = Policy::from_json(data, env) {
        for token in [SHOP, "demo-read-token", ""] {
            let auth = format!("Bearer {token}");
            let buf = serialize([
                (":method", "POST"),
                (":path", "/v2/namespaces/shop-a/query"),
                ("authorization", auth.as_str()),
            ]);
            let _ = decide(&p, &RequestHead::from_pairs(pairs(&buf)), || NOW);
        }
    }
}
