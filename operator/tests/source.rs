//! Directory mode: minting into Secret files, last-good configuration, last valid forms.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_operator::conditions::READY;
use layergate_operator::output::Settings;
use layergate_operator::source;
use layergate_operator::validate;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn setup(tag: &str) -> (PathBuf, PathBuf) {
    let root = std::env::temp_dir().join(format!("layergate-source-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (dir, out) = (root.join("manifests"), root.join("out"));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/demo/manifests");
    for f in ["vectorstores.yaml", "indexes.yaml", "apikeys.yaml"] {
        std::fs::copy(demo.join(f), dir.join(f)).unwrap();
    }
    // The store Secrets, but no token for shop-reader: the operator mints it.
    let secrets = std::fs::read_to_string(demo.join("secrets.yaml")).unwrap();
    std::fs::write(
        dir.join("secrets.yaml"),
        secrets.split("\n---\n").next().unwrap(),
    )
    .unwrap();
    (dir, out)
}

fn settings() -> Settings {
    Settings {
        listen: "127.0.0.1:8080".parse().unwrap(),
        admin: "127.0.0.1:9901".parse().unwrap(),
        filter: Default::default(),
        wasm_path: "filter.wasm".into(),
        control: None,
        key_service: None,
        allow_endpoints: Default::default(),
        key_max_staleness_seconds: layergate_operator::output::DEFAULT_MAX_STALENESS_SECONDS,
        gateway_replicas: 1,
        limits: Default::default(),
        access_log_path: None,
    }
}

#[test]
fn a_new_api_key_is_minted_into_a_secret_file_and_rendered_by_hash_only() {
    let (dir, out) = setup("mint");
    let v = source::reconcile(&dir, &out, &settings(), None).unwrap();
    let secret: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("apikey-shop-reader.yaml")).unwrap(),
    )
    .unwrap();
    let token = secret["stringData"]["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("hvl_") && token.len() == 36);
    let config = std::fs::read_to_string(out.join("layergate.json")).unwrap();
    assert!(config.contains(&format!(
        "sha256:{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    )));
    assert!(
        !config.contains(&token)
            && !std::fs::read_to_string(out.join("lds.json"))
                .unwrap()
                .contains(&token)
    );
    assert!(v.validation.keys[0].valid.is_some());
    // A second pass mints nothing new.
    source::reconcile(&dir, &out, &settings(), Some(&v.validation)).unwrap();
    let again: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("apikey-shop-reader.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(again["stringData"]["token"].as_str(), Some(token.as_str()));
}

#[test]
fn an_unreadable_manifest_never_replaces_the_last_good_output() {
    let (dir, out) = setup("unreadable");
    source::reconcile(&dir, &out, &settings(), None).unwrap();
    let before = std::fs::read_to_string(out.join("lds.json")).unwrap();
    std::fs::write(
        dir.join("indexes.yaml"),
        "apiVersion: hevlayer.com/v1\nkind: Index\nmetadata: {name: logs\n",
    )
    .unwrap();
    let err = source::reconcile(&dir, &out, &settings(), None).unwrap_err();
    assert!(
        format!("{err:#}").contains("keeping the last good configuration"),
        "{err:#}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("lds.json")).unwrap(),
        before
    );
}

#[test]
fn a_store_that_becomes_invalid_keeps_its_last_valid_form() {
    let (dir, out) = setup("lastvalid");
    let first = source::reconcile(&dir, &out, &settings(), None).unwrap();
    let stores = dir.join("vectorstores.yaml");
    let text = std::fs::read_to_string(&stores)
        .unwrap()
        .replace("http://127.0.0.1:18082", "ftp://archive");
    std::fs::write(&stores, text).unwrap();
    let second = source::reconcile(&dir, &out, &settings(), Some(&first.validation)).unwrap();
    let archive = second
        .validation
        .stores
        .iter()
        .find(|s| s.name == "archive")
        .unwrap();
    assert!(archive.valid.is_some(), "archive keeps its last valid form");
    let ready = archive
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("last valid form"),
        "{}",
        ready.message
    );
    let config = std::fs::read_to_string(out.join("layergate.json")).unwrap();
    assert!(
        config.contains("\"logs-2026\": \"archive\""),
        "routing to archive is kept"
    );
}

#[test]
fn expiry_of_a_key_minted_in_directory_mode_counts_from_its_minting() {
    let (dir, out) = setup("expiry");
    let keys = dir.join("apikeys.yaml");
    let text = std::fs::read_to_string(&keys)
        .unwrap()
        .replace("expiresAfter: never", "expiresAfter: 30d");
    std::fs::write(&keys, text).unwrap();
    let first = source::reconcile(&dir, &out, &settings(), None).unwrap();
    let expires = first.validation.keys[0]
        .valid
        .as_ref()
        .unwrap()
        .expires_at
        .clone()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = source::reconcile(&dir, &out, &settings(), Some(&first.validation)).unwrap();
    assert_eq!(
        second.validation.keys[0]
            .valid
            .as_ref()
            .unwrap()
            .expires_at
            .as_deref(),
        Some(expires.as_str()),
        "expiry does not move"
    );
}

fn reason_of(pass: &source::Pass, key: &str) -> (String, String) {
    let v = pass
        .validation
        .keys
        .iter()
        .find(|k| k.name == key)
        .unwrap_or_else(|| panic!("no verdict for {key}"));
    let c = v.conditions.iter().find(|c| c.type_ == READY).unwrap();
    (c.reason.clone(), c.message.clone())
}

/// Issue 10: a key whose lifetime the filter cannot represent (`3000000d` ends in year 10239)
/// used to pass validation and then be refused by the filter's compiler, so every later pass
/// kept the old configuration — a revocation made right after never reached the gateway.
#[test]
fn one_bad_key_is_left_out_and_a_revocation_right_after_still_applies() {
    let (dir, out) = setup("badkey");
    let first = source::reconcile(&dir, &out, &settings(), None).unwrap();
    let config = std::fs::read_to_string(out.join("layergate.json")).unwrap();
    assert!(config.contains("\"shop-reader\""));
    // The attack: a key with an unrepresentable lifetime, one with a multibyte lifetime (it
    // panicked the operator), one with an overflowing count, and then a revocation.
    for (name, after) in [
        ("far-future", "3000000d"),
        ("multibyte", "5日"),
        ("overflow", "999999999999999999d"),
    ] {
        std::fs::write(
            dir.join(format!("{name}.apikey.yaml")),
            format!("apiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {{name: {name}, namespace: layer}}\nspec:\n  entitlements: {{vectorstore.primary: {{scopes: [read]}}}}\n  expiresAfter: \"{after}\"\n"),
        )
        .unwrap();
    }
    let keys = dir.join("apikeys.yaml");
    let text = std::fs::read_to_string(&keys).unwrap().replace(
        "expiresAfter: never",
        "expiresAfter: never\n  revoked: true",
    );
    std::fs::write(&keys, text).unwrap();
    let second = source::reconcile(&dir, &out, &settings(), Some(&first.validation)).unwrap();
    let config = std::fs::read_to_string(out.join("layergate.json")).unwrap();
    assert!(
        !config.contains("\"shop-reader\""),
        "the revocation reached the rendering"
    );
    for bad in ["far-future", "multibyte", "overflow"] {
        assert!(!config.contains(bad), "{bad} is left out of the rendering");
        let (reason, message) = reason_of(&second, bad);
        assert_eq!(reason, "InvalidSpec", "{bad}: {message}");
        assert!(message.contains("expiresAfter"), "{bad}: {message}");
    }
    assert_eq!(reason_of(&second, "shop-reader").0, "Revoked");
    // And the filter accepts what was rendered.
    layergate_filter::policy::Policy::from_json(config.as_bytes(), |_| None).unwrap();
}

/// Issue 10: a VectorStore whose host merely starts with `127.` was treated as loopback,
/// rendered as a plain-HTTP cluster and probed with the store credential.
#[test]
fn a_store_outside_the_endpoint_allowlist_is_neither_rendered_nor_probed() {
    let (dir, out) = setup("allowlist");
    let stores = dir.join("vectorstores.yaml");
    let text = std::fs::read_to_string(&stores).unwrap().replace(
        "http://127.0.0.1:18082",
        "http://127.0.0.1.attacker.example:80",
    );
    std::fs::write(&stores, text).unwrap();
    let pass = source::reconcile(&dir, &out, &settings(), None).unwrap();
    let archive = pass
        .validation
        .stores
        .iter()
        .find(|s| s.name == "archive")
        .unwrap();
    assert!(archive.valid.is_none(), "left out, so never probed");
    let ready = archive
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .unwrap();
    assert_eq!(ready.reason, "InvalidEndpoint", "{}", ready.message);
    let cds = std::fs::read_to_string(out.join("cds.json")).unwrap();
    assert!(!cds.contains("attacker"), "no cluster for it");
    assert!(!std::fs::read_to_string(out.join("layergate.json"))
        .unwrap()
        .contains("tpuf-archive-dev-key"));
    // `--allow-endpoint` widens the list exactly.
    let mut wide = settings();
    wide.allow_endpoints =
        validate::Allowlist::with(&["http://127.0.0.1.attacker.example:80".into()]).unwrap();
    let pass = source::reconcile(&dir, &out, &wide, None).unwrap();
    assert!(pass
        .validation
        .stores
        .iter()
        .any(|s| s.name == "archive" && s.valid.is_some()));
}

/// Two documents naming the same ApiKey would share a keyId, which the filter refuses: the
/// later is left out (and never gets the first one's last valid form), the rest renders.
#[test]
fn an_api_key_named_twice_is_left_out_not_a_frozen_rendering() {
    let (dir, out) = setup("twice");
    let first = source::reconcile(&dir, &out, &settings(), None).unwrap();
    let keys = std::fs::read_to_string(dir.join("apikeys.yaml")).unwrap();
    std::fs::write(
        dir.join("copy.apikey.yaml"),
        keys.replace("shop-*", "logs-*"),
    )
    .unwrap();
    let second = source::reconcile(&dir, &out, &settings(), Some(&first.validation)).unwrap();
    let verdicts: Vec<_> = second
        .validation
        .keys
        .iter()
        .filter(|k| k.name == "shop-reader")
        .collect();
    assert_eq!(verdicts.len(), 2);
    assert_eq!(verdicts.iter().filter(|k| k.valid.is_some()).count(), 1);
    let config = std::fs::read_to_string(out.join("layergate.json")).unwrap();
    assert!(
        config.contains("shop-*") && !config.contains("logs-*"),
        "{config}"
    );
}

/// A hand-written token (no `minted-at`) for an ApiKey without `creationTimestamp` counted its
/// lifetime from each pass's "now", so it never expired. Directory mode now records when it
/// first saw the token (`out/key-starts.json`) and counts from there, across restarts too.
#[test]
fn a_hand_written_token_expires_counted_from_when_it_was_first_seen() {
    let (dir, out) = setup("starts");
    std::fs::write(
        dir.join("handmade.yaml"),
        "apiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {name: handmade, namespace: layer}\nspec:\n  entitlements: {vectorstore.primary: {scopes: [read]}}\n  expiresAfter: 2s\n  tokenSecretRef: {name: handmade-token, key: token}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: handmade-token, namespace: layer, labels: {hevlayer.com/apikey-token: handmade}}\nstringData: {token: hvl_HandMadeToken0123456789abcdefABCDEF}\n",
    )
    .unwrap();
    let phase = |v: &source::Pass| v.validation.phase("handmade").unwrap();
    let first = source::reconcile(&dir, &out, &settings(), None).unwrap();
    assert_eq!(phase(&first), layergate_operator::crd::ApiKeyPhase::Active);
    let starts = std::fs::read_to_string(out.join(source::KEY_STARTS_FILE)).unwrap();
    assert!(starts.contains("\"layer/handmade-token\""), "{starts}");
    std::thread::sleep(std::time::Duration::from_millis(3_100));
    // A later pass (and a restart: no previous pass) counts from the recorded start.
    let later = source::reconcile(&dir, &out, &settings(), None).unwrap();
    assert_eq!(phase(&later), layergate_operator::crd::ApiKeyPhase::Expired);
    // A record that cannot be read fails the pass; it is never a fresh start.
    std::fs::write(out.join(source::KEY_STARTS_FILE), "not json").unwrap();
    let err = source::reconcile(&dir, &out, &settings(), None).unwrap_err();
    assert!(
        format!("{err:#}").contains(source::KEY_STARTS_FILE),
        "{err:#}"
    );
}

/// The control API's policy built from the last pass's key table with the change applied
/// answers every token as one compiled from scratch: changed, added and removed keys included.
#[test]
fn the_control_apis_key_table_taken_over_with_a_change_answers_as_one_built_anew() {
    use layergate_filter::config::{ApiKeyConfig, FilterConfig};
    use layergate_filter::policy::token_hash;
    let config: FilterConfig = serde_json::from_value(serde_json::json!({
        "version": 1,
        "stores": [{"name": "a", "cluster": "c", "credential": {"inline": "store-secret"}, "inboundAuth": {"mode": "deriveFromStore"}}],
    }))
    .unwrap();
    let key = |i: usize, scope: &str| -> ApiKeyConfig {
        serde_json::from_value(serde_json::json!({
            "keyId": format!("key_{i:024x}"), "name": format!("k{i}"),
            "lookupHash": format!("sha256:{}", hex::encode(token_hash(format!("token-{i}").as_bytes()))),
            "entitlements": {"vectorstore.a": {"scopes": [scope]}},
        }))
        .unwrap()
    };
    let env = std::collections::BTreeMap::new();
    let before: Vec<ApiKeyConfig> = (0..20).map(|i| key(i, "read")).collect();
    let last = source::api_policy(&config, &before, &env, None).unwrap();
    // k3 removed, k5 granted write, k20 added.
    let mut after: Vec<ApiKeyConfig> = before.clone();
    after.remove(3);
    after[4] = key(5, "write");
    after.push(key(20, "read"));
    let taken = source::api_policy(&config, &after, &env, Some((&last, &before))).unwrap();
    let anew = source::api_policy(&config, &after, &env, None).unwrap();
    for i in 0..=21 {
        let hash = token_hash(format!("token-{i}").as_bytes());
        let answer = |p: &layergate_filter::policy::Policy| {
            p.keys.lookup(&hash).map(|k| {
                let k = p.keys.key(k);
                (k.name().to_owned(), format!("{:?}", k.grants))
            })
        };
        assert_eq!(answer(&taken), answer(&anew), "token-{i}");
    }
    assert!(taken.keys.lookup(&token_hash(b"token-3")).is_none());
    assert!(taken.keys.lookup(&token_hash(b"token-20")).is_some());
}
