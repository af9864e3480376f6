//! The validation matrix (every reason) and the demo rendering golden.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_operator::conditions::{
    reason, ENTITLEMENT_TARGET_MISSING, INBOUND_KEY_REFUSED, READY,
};
use layergate_operator::crd::ApiKeyPhase;
use layergate_operator::manifests::{self, Objects};
use layergate_operator::render::{self, RenderOptions};
use layergate_operator::validate::{self, parse_duration, parse_endpoint, Validation};

const NOW: i64 = 1_795_528_719; // 2026-11-24

const SECRETS: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: layer, namespace: t}
data: {store-key: c3RvcmUta2V5}   # "store-key"
stringData: {inbound: inbound-token, empty: ""}
"#;

fn store(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: hevlayer.com/v1alpha1\nkind: VectorStore\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  kind: turbopuffer\n  endpoint: {{url: \"https://api.example.com\"}}\n  credential: {{secretRef: {{name: layer, key: store-key}}}}\n{extra}"
    )
}

fn run(docs: &[String]) -> Validation {
    let mut o = Objects::default();
    o.add_yaml("secrets", SECRETS);
    for (i, d) in docs.iter().enumerate() {
        o.add_yaml(&format!("doc{i}"), d);
    }
    assert!(o.problems.is_empty(), "{:?}", o.problems);
    // The stores live at api.example.com: outside the default allowlist, so the tests widen
    // it as `--allow-endpoint` would.
    let allow = validate::Allowlist::with(&["https://api.example.com".into()]).unwrap();
    validate::validate_in(&o, "t", NOW, &allow)
}

fn ready_reason(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> (String, String) {
    let c = conditions.iter().find(|c| c.type_ == READY).unwrap();
    (c.status.clone(), c.reason.clone())
}

fn store_reason(extra: &str) -> String {
    let v = run(&[store("s", extra)]);
    ready_reason(&v.stores[0].conditions).1
}

#[test]
fn store_reasons() {
    assert_eq!(store_reason(""), reason::VALID);
    assert_eq!(
        store_reason("  turbopuffer: {orgId: org_1}\n"),
        reason::VALID
    );
    let pinecone = store("s", "").replace("kind: turbopuffer", "kind: pinecone");
    assert_eq!(
        ready_reason(&run(&[pinecone]).stores[0].conditions).1,
        reason::UNSUPPORTED_KIND
    );
    let http = store("s", "").replace("https://api.example.com", "http://api.example.com");
    assert_eq!(
        ready_reason(&run(&[http]).stores[0].conditions).1,
        reason::INVALID_ENDPOINT
    );
    let region = store("s", "").replace(
        "{url: \"https://api.example.com\"}",
        "{url: \"https://api.example.com\", region: \"US East\"}",
    );
    assert_eq!(
        ready_reason(&run(&[region]).stores[0].conditions).1,
        reason::INVALID_ENDPOINT
    );
    let no_secret =
        store("s", "").replace("name: layer, key: store-key", "name: nope, key: store-key");
    assert_eq!(
        ready_reason(&run(&[no_secret]).stores[0].conditions).1,
        reason::SECRET_NOT_FOUND
    );
    let no_key = store("s", "").replace("key: store-key", "key: absent");
    assert_eq!(
        ready_reason(&run(&[no_key]).stores[0].conditions).1,
        reason::SECRET_KEY_MISSING
    );
    let empty = store("s", "").replace("key: store-key", "key: empty");
    assert_eq!(
        ready_reason(&run(&[empty]).stores[0].conditions).1,
        reason::SECRET_KEY_MISSING
    );
    let key = |name: &str, scopes: &str| {
        format!("      - {{name: {name}, scopes: {scopes}, secretRef: {{name: layer, key: inbound}}}}\n")
    };
    let keys = |body: String| format!("  inboundAuth:\n    mode: keys\n    keys:\n{body}");
    assert_eq!(store_reason(&keys(key("a", "[read]"))), reason::VALID);
    assert_eq!(
        store_reason(&keys(key("a", "[read]") + &key("a", "[write]"))),
        reason::INVALID_INBOUND_AUTH
    );
    assert_eq!(
        store_reason(&keys(key("a", "[]"))),
        reason::INVALID_INBOUND_AUTH
    );
    assert_eq!(
        store_reason(&keys(key("a", "[read]")).replace("mode: keys", "mode: open")),
        reason::INVALID_INBOUND_AUTH
    );
    let bad_secret = keys(key("a", "[read]")).replace("key: inbound", "key: empty");
    assert_eq!(store_reason(&bad_secret), reason::SECRET_KEY_MISSING);
}

#[test]
fn two_default_stores_are_both_refused() {
    let v = run(&[
        store("a", "  default: true\n"),
        store("b", "  default: true\n"),
    ]);
    for s in &v.stores {
        assert_eq!(ready_reason(&s.conditions).1, reason::MULTIPLE_DEFAULTS);
    }
    // A single store is the default without saying so.
    let v = run(&[store("only", "")]);
    assert!(v.stores[0].valid.as_ref().unwrap().default);
}

fn index(name: &str, backend: &str, created: &str) -> String {
    format!("apiVersion: hevlayer.com/v1\nkind: Index\nmetadata: {{name: {name}, namespace: t, creationTimestamp: \"{created}\"}}\nspec:\n  backend: {backend}\n")
}

#[test]
fn index_routing_conflicts_and_missing_stores() {
    let v = run(&[
        store("main", "  default: true\n"),
        store("cold", ""),
        index(
            "newer",
            "{storeRef: cold, namespace: shared}",
            "2026-02-01T00:00:00Z",
        ),
        index("older", "{namespace: shared}", "2026-01-01T00:00:00Z"),
        index("plain", "{}", "2026-01-01T00:00:00Z"),
        index("ghost", "{storeRef: nope}", "2026-01-01T00:00:00Z"),
        index("bad", "{namespace: \"a/b\"}", "2026-01-01T00:00:00Z"),
    ]);
    let by = |n: &str| v.indexes.iter().find(|i| i.name == n).unwrap();
    assert_eq!(by("older").valid, Some(("shared".into(), "main".into())));
    assert_eq!(ready_reason(&by("newer").conditions).1, reason::CONFLICT);
    assert!(by("newer").conditions[0].message.contains("\"older\""));
    assert_eq!(
        by("plain").valid,
        Some(("plain".into(), "main".into())),
        "namespace defaults to the Index name"
    );
    assert_eq!(
        ready_reason(&by("ghost").conditions).1,
        reason::STORE_NOT_FOUND
    );
    assert_eq!(
        ready_reason(&by("bad").conditions).1,
        reason::INVALID_NAMESPACE
    );
}

fn key(name: &str, spec: &str) -> String {
    format!("apiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {{name: {name}, namespace: t, creationTimestamp: \"2026-11-01T00:00:00Z\"}}\nspec:\n{spec}")
}

const TOKEN: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: apikey-k, namespace: t, labels: {hevlayer.com/apikey-token: k}}\nstringData: {token: hvl_abcdefghijklmnopqrstuvwxyz012345}\n";

#[test]
fn api_key_phases_and_reasons() {
    let ok = "  entitlements:\n    vectorstore.s: {scopes: [read], namespaces: [\"a-*\"]}\n";
    let v = run(&[store("s", ""), key("k", ok), TOKEN.into()]);
    let k = &v.keys[0];
    assert_eq!(v.phase("k").unwrap(), ApiKeyPhase::Active);
    let cfg = k.valid.as_ref().unwrap();
    assert!(
        cfg.lookup_hash.to_string().starts_with("sha256:")
            && !format!("{cfg:?}").contains("hvl_abcdefghijklmnop"),
        "the token never leaves the Secret"
    );
    assert_eq!(
        cfg.expires_at.as_deref(),
        Some("2027-11-01T00:00:00Z"),
        "365d by default"
    );
    // Not minted yet.
    let v = run(&[store("s", ""), key("k", ok)]);
    assert_eq!(
        (v.phase("k").unwrap(), ready_reason(&v.keys[0].conditions).1),
        (ApiKeyPhase::Pending, reason::NOT_MINTED.into())
    );
    // Revoked, expired.
    let v = run(&[
        store("s", ""),
        key("k", &format!("{ok}  revoked: true\n")),
        TOKEN.into(),
    ]);
    assert_eq!(v.phase("k").unwrap(), ApiKeyPhase::Revoked);
    assert!(v.keys[0].valid.is_none());
    let v = run(&[
        store("s", ""),
        key("k", &format!("{ok}  expiresAfter: 1d\n")),
        TOKEN.into(),
    ]);
    assert_eq!(v.phase("k").unwrap(), ApiKeyPhase::Expired);
    // Malformed targets, globs and lifetimes.
    for bad in [
        "  entitlements: {bucket.x: {scopes: [read]}}\n",
        "  entitlements: {\"vectorstore.\": {scopes: [read]}}\n",
        "  entitlements: {layer: {scopes: [admin], namespaces: [\"a/b\"]}}\n",
        "  entitlements: {layer: {scopes: [admin]}}\n  expiresAfter: 3 weeks\n",
    ] {
        let v = run(&[store("s", ""), key("k", bad), TOKEN.into()]);
        assert_eq!(
            ready_reason(&v.keys[0].conditions).1,
            reason::INVALID_SPEC,
            "{bad}"
        );
    }
    // A target naming a missing store is a condition, not an error.
    let v = run(&[store("s", ""), key("k", "  entitlements:\n    vectorstore.gone: {scopes: [read]}\n    warehouse.w: {claims: [\"x:*\"]}\n"), TOKEN.into()]);
    assert_eq!(v.phase("k").unwrap(), ApiKeyPhase::Active);
    let missing = v.keys[0]
        .conditions
        .iter()
        .find(|c| c.type_ == ENTITLEMENT_TARGET_MISSING)
        .unwrap();
    assert_eq!(
        (missing.status.as_str(), missing.reason.as_str()),
        ("True", reason::TARGET_MISSING)
    );
}

#[test]
fn endpoint_and_duration_parsing() {
    assert_eq!(
        parse_endpoint("https://aws-us-east-1.turbopuffer.com")
            .unwrap()
            .port,
        443
    );
    assert_eq!(
        parse_endpoint("http://127.0.0.1:18081/").unwrap().port,
        18081
    );
    for bad in [
        "ftp://x",
        "https://",
        "https://x/path",
        "https://user@x",
        "https://x:0",
    ] {
        assert!(parse_endpoint(bad).is_err(), "{bad}");
    }
    // Parsed, but outside the default allowlist.
    let allow = validate::Allowlist::default();
    for outside in [
        "http://example.com",
        "https://x",
        "http://127.0.0.1.attacker.example:80",
    ] {
        assert!(
            allow.admits(&parse_endpoint(outside).unwrap()).is_err(),
            "{outside}"
        );
    }
    assert_eq!(parse_duration("365d").unwrap(), Some(365 * 86_400));
    assert_eq!(parse_duration("never").unwrap(), None);
    assert!(
        parse_duration("0d").is_err()
            && parse_duration("5w").is_err()
            && parse_duration("").is_err()
    );
}

#[test]
fn malformed_manifests_are_reported_not_fatal() {
    let mut o = Objects::default();
    o.add_yaml("a.yaml", "apiVersion: hevlayer.com/v1alpha1\nkind: VectorStore\nmetadata: {name: x}\nspec: {kind: milvus}\n");
    o.add_yaml("b.yaml", "kind: Deployment\napiVersion: apps/v1\n");
    o.add_yaml("c.yaml", ": : :\n");
    o.add_yaml(
        "d.yaml",
        "apiVersion: hevlayer.com/v1\nkind: VectorStore\nmetadata: {name: y}\n",
    );
    // Another kind beside ours is skipped with a note (issue 15), not refused.
    assert_eq!(o.problems.len(), 3, "{:?}", o.problems);
    assert!(o.problems[0].starts_with("a.yaml"));
    assert!(o.problems[2].starts_with("d.yaml"), "{:?}", o.problems);
    assert_eq!(o.skipped.len(), 1, "{:?}", o.skipped);
    assert!(
        o.skipped[0].contains("apps/v1 Deployment"),
        "{:?}",
        o.skipped
    );
}

#[test]
fn demo_manifests_render_the_checked_in_filter_config() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let objects =
        manifests::load_dir(&std::path::Path::new(root).join("envoy/demo/manifests")).unwrap();
    assert!(objects.problems.is_empty(), "{:?}", objects.problems);
    let v = validate::validate(&objects, "layer", NOW);
    let config = render::filter_config(&v, &RenderOptions::default()).unwrap();
    let rendered = serde_json::to_string_pretty(&config).unwrap() + "\n";
    let on_disk =
        std::fs::read_to_string(std::path::Path::new(root).join("envoy/demo/layergate.json"))
            .unwrap();
    assert!(
        rendered == on_disk,
        "envoy/demo/layergate.json is stale: run `make envoy-demo` and commit it"
    );
}

/// The gateway Deployment's bootstrap, as the ConfigMap `operator/deploy/` applies.
fn bootstrap_configmap(bootstrap: &str) -> String {
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "layergate-gateway-bootstrap"},
        "data": {"envoy.yaml": bootstrap},
    });
    format!(
        "# Generated from envoy/bootstrap.yaml by operator/tests/validate.rs (UPDATE_GOLDEN=1).\n{}",
        serde_yaml::to_string(&cm).unwrap()
    )
}

/// The Envoy outputs for the demo manifests, with the default settings, as checked in under
/// `operator/tests/golden/` (regenerate with `UPDATE_GOLDEN=1 cargo test -p layergate-operator`),
/// and the production gateway bootstrap in `envoy/bootstrap.yaml` (and its ConfigMap in
/// `operator/deploy/`).
#[test]
fn envoy_outputs_match_the_goldens() {
    use layergate_operator::{envoy, output, render};
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let objects = manifests::load_dir(&root.join("envoy/demo/manifests")).unwrap();
    let v = validate::validate(&objects, "layer", NOW);
    let settings = output::Settings {
        listen: "127.0.0.1:8080".parse().unwrap(),
        admin: "127.0.0.1:9901".parse().unwrap(),
        filter: Default::default(),
        wasm_path: "target/wasm32-wasip1/wasm/layergate_filter.wasm".into(),
        control: Some(("127.0.0.1".to_owned(), 9902)),
        key_service: None,
        allow_endpoints: Default::default(),
        key_max_staleness_seconds: layergate_operator::output::DEFAULT_MAX_STALENESS_SECONDS,
        gateway_replicas: 1,
        limits: Default::default(),
        access_log_path: None,
    };
    let out = std::env::temp_dir().join(format!("layergate-golden-{}", std::process::id()));
    let envoy = render::render(&v, &settings, &render::Target::Envoy, None).unwrap();
    output::write(&envoy, &out, &settings).unwrap();
    let golden = root.join("operator/tests/golden/demo");
    let production = envoy::dynamic_bootstrap(
        "127.0.0.1:9901".parse().unwrap(),
        std::path::Path::new("/etc/layergate/config"),
    );
    // The Istio target of the same objects, as `render --target istio` writes it.
    let istio_settings = layergate_operator::istio::IstioSettings {
        control: Some(("layergate-operator.layer.svc".to_owned(), 9902)),
        ..Default::default()
    };
    let istio =
        render::render(&v, &settings, &render::Target::Istio(istio_settings), None).unwrap();
    let istio_out = out.join("istio");
    output::write(&istio, &istio_out, &settings).unwrap();
    let read = |dir: &std::path::Path, name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let pairs = [
        (read(&istio_out, "istio.yaml"), golden.join("istio.yaml")),
        (
            read(&istio_out, "ingressgateway-patch.yaml"),
            golden.join("ingressgateway-patch.yaml"),
        ),
        (
            std::fs::read_to_string(out.join("cds.json")).unwrap(),
            golden.join("cds.json"),
        ),
        (
            std::fs::read_to_string(out.join("lds.json")).unwrap(),
            golden.join("lds.json"),
        ),
        (production.clone(), root.join("envoy/bootstrap.yaml")),
        (
            bootstrap_configmap(&production),
            root.join("operator/deploy/gateway-bootstrap.yaml"),
        ),
    ];
    for (rendered, file) in pairs {
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &rendered).unwrap();
        }
        let on_disk = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(rendered == on_disk, "{} differs from the rendering; run UPDATE_GOLDEN=1 cargo test -p layergate-operator and review the diff", file.display());
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Issue 11: `tokenSecretRef` could name any Secret — a store credential, another key's token —
/// and make it a minted key's token; and a weak value was accepted.
#[test]
fn token_secret_ref_must_name_a_marked_secret_with_a_strong_token() {
    let ok = "  entitlements:\n    vectorstore.s: {scopes: [read]}\n";
    let with_ref =
        |secret: &str, key: &str| format!("{ok}  tokenSecretRef: {{name: {secret}, key: {key}}}\n");
    // The store's own credential Secret: not marked as a token.
    let v = run(&[store("s", ""), key("k", &with_ref("layer", "store-key"))]);
    assert_eq!(ready_reason(&v.keys[0].conditions).1, reason::INVALID_TOKEN);
    assert!(v.keys[0].valid.is_none());
    // Marked, but weak.
    let weak = "apiVersion: v1\nkind: Secret\nmetadata: {name: pre, namespace: t, labels: {hevlayer.com/apikey-token: k}}\nstringData: {token: hvl_abc}\n";
    let v = run(&[
        store("s", ""),
        key("k", &with_ref("pre", "token")),
        weak.into(),
    ]);
    let (_, why) = ready_reason(&v.keys[0].conditions);
    assert_eq!(why, reason::INVALID_TOKEN);
    // Marked for another key.
    let other = weak
        .replace("apikey-token: k", "apikey-token: other")
        .replace("hvl_abc", "hvl_abcdefghijklmnopqrstuvwxyz012345");
    let v = run(&[
        store("s", ""),
        key("k", &with_ref("pre", "token")),
        other.clone(),
    ]);
    assert_eq!(ready_reason(&v.keys[0].conditions).1, reason::INVALID_TOKEN);
    // Marked for this key and strong: active; so is a Secret marked as holding many tokens.
    let good = other.replace("apikey-token: other", "apikey-token: k");
    let v = run(&[store("s", ""), key("k", &with_ref("pre", "token")), good]);
    assert_eq!(v.phase("k").unwrap(), ApiKeyPhase::Active);
    let shared = other.replace("apikey-token: other", "apikey-token: \"true\"");
    let v = run(&[store("s", ""), key("k", &with_ref("pre", "token")), shared]);
    assert_eq!(v.phase("k").unwrap(), ApiKeyPhase::Active);
}

/// A verdict without its conditions' times (a verdict taken over keeps the last pass's).
fn timeless(v: &Validation) -> Validation {
    let mut v = v.clone();
    for k in &mut v.keys {
        for c in &mut std::sync::Arc::make_mut(k).conditions {
            c.last_transition_time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            );
        }
    }
    v.taken_over.clear();
    v
}

/// A pass that takes over the verdicts of unchanged keys (kube mode: the same shared objects
/// as the last pass) judges exactly as one that judges every key: a key replaced, its token
/// Secret's data, marks or read error changed, its expiry reached, the stores renamed — each
/// is judged again, and only the rest is taken over.
#[test]
fn a_pass_that_takes_over_unchanged_verdicts_judges_as_one_from_scratch() {
    use std::sync::Arc;
    let allow = validate::Allowlist::with(&["https://api.example.com".into()]).unwrap();
    let mut first = Objects::default();
    first.add_yaml("secrets", SECRETS);
    first.add_yaml("store", &store("s", ""));
    for i in 0..10 {
        let lifetime = if i == 5 { "1h" } else { "never" };
        first.add_yaml(
            &format!("k{i}"),
            &key(
                &format!("k{i}"),
                &format!("  expiresAfter: \"{lifetime}\"\n  entitlements: {{vectorstore.s: {{scopes: [read]}}}}\n"),
            ),
        );
        first.add_yaml(
            &format!("t{i}"),
            &TOKEN
                .replace("apikey-k,", &format!("apikey-k{i},"))
                .replace("apikey-token: k}", &format!("apikey-token: k{i}}}")),
        );
    }
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    // k5 lives an hour from its creation: judged within it, then after it.
    let created = 1_793_491_200; // 2026-11-01T00:00:00Z
    let (t1, t2) = (created + 1_800, created + 7_200);
    let v1 = validate::validate_in(&first, "t", t1, &allow);
    assert!(v1.keys.iter().all(|k| k.valid.is_some()), "{v1:?}");
    let id = |name: &str| ("t".to_owned(), name.to_owned());
    let index = |o: &Objects, name: &str| {
        o.keys
            .iter()
            .position(|k| k.metadata.name.as_deref() == Some(name))
            .unwrap()
    };

    let mut second = first.clone();
    // k1: revoked (a new object).
    let i = index(&second, "k1");
    let mut k1 = (*second.keys[i]).clone();
    k1.spec.revoked = Some(true);
    second.keys[i] = Arc::new(k1);
    // k2: its token replaced by a weak one (new data).
    second.secrets.insert(
        id("apikey-k2"),
        Arc::new([("token".to_owned(), "hvl_short".to_owned())].into()),
    );
    // k3: its Secret no longer marked as its token (same data).
    second
        .secret_marks
        .get_mut(&id("apikey-k3"))
        .unwrap()
        .token_label = None;
    // k4: its Secret could not be read.
    second
        .secret_errors
        .insert(id("apikey-k4"), "forbidden".into());
    // k6: deleted; k10: new.
    second.keys.remove(index(&second, "k6"));
    second.add_yaml(
        "k10",
        &key("k10", "  entitlements: {vectorstore.s: {scopes: [read]}}\n"),
    );
    second.add_yaml(
        "t10",
        &TOKEN
            .replace("apikey-k,", "apikey-k10,")
            .replace("apikey-token: k}", "apikey-token: k10}"),
    );
    let earlier = validate::Earlier::new(&second, &first, &v1, &[], "t");
    let since = validate::validate_since(
        &second,
        "t",
        t2,
        &allow,
        Some(validate::DEFAULT_EXPIRING_SOON),
        Some(&earlier),
    );
    let scratch = validate::validate_in(&second, "t", t2, &allow);
    assert_eq!(timeless(&since), timeless(&scratch));
    let taken: Vec<&str> = since
        .keys
        .iter()
        .zip(&since.taken_over)
        .filter(|(_, t)| **t)
        .map(|(k, _)| k.name.as_str())
        .collect();
    assert_eq!(taken, ["k0", "k7", "k8", "k9"]);
    let reason_of = |name: &str| {
        let k = since.keys.iter().find(|k| k.name == name).unwrap();
        ready_reason(&k.conditions).1
    };
    assert_eq!(reason_of("k1"), reason::REVOKED);
    assert_eq!(reason_of("k2"), reason::INVALID_TOKEN);
    assert_eq!(reason_of("k3"), reason::INVALID_TOKEN);
    assert_eq!(reason_of("k4"), reason::SECRET_UNREADABLE);
    assert_eq!(reason_of("k5"), reason::EXPIRED);

    // The stores renamed: every key is judged again (its entitlement names a store).
    let mut third = second.clone();
    let s = Arc::make_mut(&mut third.stores[0]);
    s.metadata.name = Some("s2".into());
    let earlier = validate::Earlier::new(&third, &second, &since, &[], "t");
    let again = validate::validate_since(
        &third,
        "t",
        t2,
        &allow,
        Some(validate::DEFAULT_EXPIRING_SOON),
        Some(&earlier),
    );
    assert_eq!(
        timeless(&again),
        timeless(&validate::validate_in(&third, "t", t2, &allow))
    );
    assert!(again.taken_over.iter().all(|t| !t));
    assert_eq!(
        again.keys[0].conditions[1].type_,
        ENTITLEMENT_TARGET_MISSING
    );
}

/// Helper report on issue 21: a kube-mode delete of an ApiKey held by a finalizer answered
/// 200, and the watch brought the object back (with its deletionTimestamp), served again.
/// A key being deleted is gone for the gateway.
#[test]
fn a_key_being_deleted_is_not_served() {
    let ok = "  entitlements:\n    vectorstore.s: {scopes: [read]}\n";
    let deleting = key("k", ok).replace(
        "creationTimestamp: \"2026-11-01T00:00:00Z\"}",
        "creationTimestamp: \"2026-11-01T00:00:00Z\", deletionTimestamp: \"2026-11-24T00:00:00Z\", finalizers: [example.com/hold]}",
    );
    let v = run(&[store("s", ""), deleting, TOKEN.into()]);
    assert_eq!(v.phase("k").unwrap(), ApiKeyPhase::Revoked);
    assert!(v.keys[0].valid.is_none(), "not served");
    // Revoked wins over an invalid spec too (issue 21.5).
    let bad = "  entitlements: {\"vectorstore.s!\": {scopes: [read]}}\n  revoked: true\n";
    let v = run(&[store("s", ""), key("k", bad), TOKEN.into()]);
    assert_eq!(
        (v.phase("k").unwrap(), ready_reason(&v.keys[0].conditions).1),
        (ApiKeyPhase::Revoked, reason::REVOKED.into())
    );
}

#[test]
fn a_negative_zero_or_absurd_limit_refuses_that_key_and_the_rest_publishes() {
    let ok = "  entitlements:\n    vectorstore.s: {scopes: [read]}\n";
    let token = |name: &str| {
        TOKEN
            .replace("apikey-k", &format!("apikey-{name}"))
            .replace("apikey-token: k", &format!("apikey-token: {name}"))
    };
    for (limits, says) in [
        (
            "{requestsPerSecond: -5}",
            "spec.limits.requestsPerSecond is -5; it must be between 1 and 1000000",
        ),
        (
            "{requestsPerSecond: 0}",
            "spec.limits.requestsPerSecond is 0",
        ),
        (
            "{requestsPerSecond: 5000000}",
            "is 5000000; it must be between 1 and 1000000",
        ),
        (
            "{requestsPerSecond: 10, burst: 0}",
            "spec.limits.burst is 0",
        ),
        (
            "{quotas: [{requests: 10, per: week}]}",
            "hour, day or month",
        ),
    ] {
        let v = run(&[
            store("s", ""),
            key("bad", &format!("{ok}  limits: {limits}\n")),
            token("bad"),
            key(
                "good",
                &format!("{ok}  limits: {{requestsPerSecond: 10, burst: 20}}\n"),
            ),
            token("good"),
        ]);
        let bad = v.keys.iter().find(|k| k.name == "bad").unwrap();
        let ready = bad.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::INVALID_SPEC)
        );
        assert!(ready.message.contains(says), "{}", ready.message);
        assert!(bad.valid.is_none());
        let good = v.keys.iter().find(|k| k.name == "good").unwrap();
        let limits = good.valid.as_ref().and_then(|c| c.limits.as_ref()).unwrap();
        assert_eq!(
            (limits.requests_per_second, limits.burst),
            (Some(10), Some(20))
        );
        // The rendering publishes the good key with its limits, not the bad one.
        let cfg = render::filter_config(&v, &RenderOptions::default()).unwrap();
        let names: Vec<&str> = cfg.api_keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["good"]);
    }
}

#[test]
fn an_inbound_key_with_a_bad_limit_is_left_out_and_the_store_publishes() {
    let auth = |limits: &str| {
        format!("  inboundAuth:\n    mode: keys\n    defaultKeyLimits: {{requestsPerSecond: 7}}\n    keys:\n      - {{name: bad, scopes: [read], secretRef: {{name: layer, key: inbound}}, limits: {limits}}}\n      - {{name: plain, scopes: [read], secretRef: {{name: layer, key: inbound}}}}\n")
    };
    let v = run(&[store("s", &auth("{requestsPerSecond: -1}"))]);
    let s = &v.stores[0];
    assert_eq!(
        ready_reason(&s.conditions),
        ("True".into(), reason::VALID.into())
    );
    let refused = s
        .conditions
        .iter()
        .find(|c| c.type_ == INBOUND_KEY_REFUSED)
        .unwrap();
    assert_eq!(refused.reason, reason::INVALID_LIMITS);
    assert!(
        refused
            .message
            .contains("inboundAuth.keys \"bad\" is left out: limits.requestsPerSecond is -1"),
        "{}",
        refused.message
    );
    let keys = &s.valid.as_ref().unwrap().keys;
    assert_eq!(keys.len(), 1, "only the good key publishes");
    assert_eq!(
        (
            keys[0].0.as_str(),
            keys[0].3.as_ref().and_then(|l| l.requests_per_second)
        ),
        ("plain", Some(7)),
        "the store's default applies"
    );
    // A bad default is the store's own field: the store is refused.
    let v = run(&[store(
        "s",
        &auth("{requestsPerSecond: 1}").replace(
            "defaultKeyLimits: {requestsPerSecond: 7}",
            "defaultKeyLimits: {requestsPerSecond: 0}",
        ),
    )]);
    assert_eq!(
        ready_reason(&v.stores[0].conditions),
        ("False".into(), reason::INVALID_INBOUND_AUTH.into())
    );
}
