//! `POST /v2/keys/{id}/rotate`: a new token for the same key, the old one accepted until the
//! overlap ends; what may not be rotated and why.

use crate::{fixture, key, ADMIN};
use layergate_operator::source::{DirSource, Source};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn authenticate(f: &crate::Fixture, token: &str) -> (u16, Value) {
    f.call(
        "POST",
        "/v2/keys/authenticate",
        None,
        json!({"token": token}),
    )
}

/// The key service's entry for `name` in the last pass.
fn served(source: &DirSource, name: &str) -> layergate_filter::config::ApiKeyConfig {
    let pass = source.state().last().unwrap();
    pass.keys.iter().find(|k| k.name == name).unwrap().clone()
}

#[test]
fn a_rotation_keeps_the_key_and_accepts_the_old_token_until_the_overlap_ends() {
    let f = fixture("rotate", 120, |_, t| t);
    let grants = json!({"vectorstore.primary": {"scopes": ["read"], "namespaces": ["shop-*"]}});
    let (status, minted) = f.call("POST", "/v2/keys", Some(ADMIN), key("rot", grants.clone()));
    assert_eq!(status, 201, "{minted}");
    let first = minted["token"].as_str().unwrap().to_owned();
    let revision = f.source.state().keys.table().revision.clone();

    // A long overlap first: it survives an operator restart.
    let (status, r1) = f.call(
        "POST",
        "/v2/keys/rot/rotate",
        Some(ADMIN),
        json!({"overlap": "1h"}),
    );
    assert_eq!(status, 200, "{r1}");
    let second = r1["token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    for field in ["keyId", "name", "entitlements", "expiresAt", "createdAt"] {
        assert_eq!(r1[field], minted[field], "{field} is kept: {r1}");
    }
    assert_eq!(r1["phase"], "Active");
    assert!(r1["previousTokenValidUntil"].is_string(), "{r1}");
    assert_ne!(r1["lookupHash"], minted["lookupHash"]);
    for t in [&first, &second] {
        let (status, who) = authenticate(&f, t);
        assert_eq!((status, &who["keyId"]), (200, &minted["keyId"]), "{who}");
    }
    // The key service carries the change: a new revision, the key with its previous token.
    assert_ne!(f.source.state().keys.table().revision, revision);
    let k = served(&f.source, "rot");
    assert_eq!(
        k.previous.as_ref().map(|p| p.lookup_hash.to_string()),
        minted["lookupHash"].as_str().map(str::to_owned)
    );
    // The token Secret is rewritten in place: no second file, still private, no old token.
    let secret = std::fs::read_to_string(f.dir.join("apikey-rot.yaml")).unwrap();
    assert!(
        secret.contains(&second) && !secret.contains(&first),
        "{secret}"
    );
    let restarted = DirSource::new(
        f.source.dir.clone(),
        f.source.out.clone(),
        f.source.settings.clone(),
    );
    restarted.refresh().unwrap();
    assert_eq!(
        served(&restarted, "rot"),
        k,
        "a restart keeps the overlap and the keyId"
    );

    // Rotating again ends the earlier overlap at once: only one previous token at a time.
    let started = Instant::now();
    let (status, r2) = f.call(
        "POST",
        &format!("/v2/keys/{}/rotate", minted["keyId"].as_str().unwrap()),
        Some(ADMIN),
        json!({"overlap": "2s"}),
    );
    assert_eq!(status, 200, "by keyId: {r2}");
    let third = r2["token"].as_str().unwrap().to_owned();
    assert_eq!(r2["keyId"], minted["keyId"]);
    assert_eq!(authenticate(&f, &first).0, 401, "the first token is gone");
    assert_eq!(authenticate(&f, &second).0, 200, "in its overlap");
    assert_eq!(authenticate(&f, &third).0, 200);
    // Refused within a second after the overlap, with no pass in between.
    while started.elapsed() < Duration::from_millis(2_000) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while authenticate(&f, &second).0 != 401 {
        assert!(Instant::now() < deadline, "the old token still works");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(started.elapsed() < Duration::from_millis(3_100));
    assert_eq!(authenticate(&f, &third).0, 200);
    // The next pass drops the ended overlap from what the gateways are served.
    f.source.refresh().unwrap();
    assert_eq!(served(&f.source, "rot").previous, None);
    assert_eq!(
        served(&f.source, "rot").key_id,
        minted["keyId"].as_str().unwrap()
    );
}

#[test]
fn revoked_expired_and_pre_provisioned_keys_are_409_and_bad_overlaps_400() {
    let f = fixture("rotate-bad", 120, |_, t| t);
    let grants = json!({"vectorstore.primary": {"scopes": ["read"]}});
    assert_eq!(
        f.call("POST", "/v2/keys", Some(ADMIN), key("ok", grants.clone()))
            .0,
        201
    );
    let before = f.config();
    for body in [
        json!({"overlap": "8d"}),
        json!({"overlap": "169h"}),
        json!({"overlap": "never"}),
        json!({"overlap": "1 day"}),
        json!({"overlap": "-5s"}),
        json!({"overlap": 60}),
        json!({"overlapp": "1h"}),
        json!(["1h"]),
    ] {
        let (status, reply) = f.call("POST", "/v2/keys/ok/rotate", Some(ADMIN), body.clone());
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("overlap"),
            "{body}: {reply}"
        );
    }
    assert_eq!(f.config(), before, "nothing changed");
    assert_eq!(
        f.call("POST", "/v2/keys/nope/rotate", Some(ADMIN), json!({}))
            .0,
        404
    );

    // Revoked.
    f.revoked("ok", "revoke");
    let (status, reply) = f.call("POST", "/v2/keys/ok/rotate", Some(ADMIN), json!({}));
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("revoked"),
        "{reply}"
    );

    // Expired.
    let short = json!({"name": "brief", "expiresAfter": "1s", "entitlements": grants});
    assert_eq!(f.call("POST", "/v2/keys", Some(ADMIN), short).0, 201);
    std::thread::sleep(Duration::from_millis(1_100));
    let (status, reply) = f.call(
        "POST",
        "/v2/keys/brief/rotate",
        Some(ADMIN),
        json!({"overlap": "1h"}),
    );
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("expired"),
        "{reply}"
    );

    // A token the user provisioned (tokenSecretRef) is theirs to rotate.
    std::fs::write(
        f.dir.join("own.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: own-token, namespace: layer, labels: {hevlayer.com/apikey-token: own}}\nstringData: {token: hvl_ownToken0123456789abcdefABCDEFGH}\n---\napiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {name: own, namespace: layer}\nspec:\n  tokenSecretRef: {name: own-token, key: token}\n  entitlements: {vectorstore.primary: {scopes: [read]}}\n",
    )
    .unwrap();
    f.source.refresh().unwrap();
    let (status, reply) = f.call("POST", "/v2/keys/own/rotate", Some(ADMIN), json!({}));
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("tokenSecretRef"),
        "{reply}"
    );
}

#[test]
fn an_overlap_never_outlives_the_key_and_no_overlap_ends_the_old_token_at_once() {
    let f = fixture("rotate-cap", 120, |_, t| t);
    let short = json!({"name": "brief", "expiresAfter": "1h", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}});
    let (_, minted) = f.call("POST", "/v2/keys", Some(ADMIN), short);
    let (status, r) = f.call(
        "POST",
        "/v2/keys/brief/rotate",
        Some(ADMIN),
        json!({"overlap": "7d"}),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["previousTokenValidUntil"], minted["expiresAt"],
        "cut to the key's expiry"
    );
    assert_eq!(
        r["expiresAt"], minted["expiresAt"],
        "the key lives no longer"
    );
    // No body: no overlap.
    let (status, r2) = f.call("POST", "/v2/keys/brief/rotate", Some(ADMIN), Value::Null);
    assert_eq!(status, 200, "{r2}");
    assert_eq!(r2["previousTokenValidUntil"], Value::Null);
    assert_eq!(authenticate(&f, r["token"].as_str().unwrap()).0, 401);
    assert_eq!(authenticate(&f, r2["token"].as_str().unwrap()).0, 200);
}

/// Directory mode's declarative rotation: a new value of `hevlayer.com/rotate` on the ApiKey
/// rotates its token once, with `hevlayer.com/rotate-overlap`; a key written with the
/// annotation is not rotated at its mint; an overlap that does not read rotates nothing.
#[test]
fn the_rotate_annotation_rotates_once_per_value() {
    let f = fixture("rotate-annotation", 120, |_, t| t);
    let manifest = |value: &str, overlap: &str| {
        format!("apiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata:\n  name: decl\n  namespace: layer\n  annotations: {{hevlayer.com/rotate: \"{value}\", hevlayer.com/rotate-overlap: \"{overlap}\"}}\nspec:\n  entitlements: {{vectorstore.primary: {{scopes: [read]}}}}\n")
    };
    let file = f.dir.join("decl.apikey.yaml");
    let token = || {
        let s = std::fs::read_to_string(f.dir.join("apikey-decl.yaml")).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&s).unwrap();
        v["stringData"]["token"].as_str().unwrap().to_owned()
    };
    std::fs::write(&file, manifest("1", "1h")).unwrap();
    f.source.refresh().unwrap();
    let first = token();
    let id = served(&f.source, "decl").key_id;
    f.source.refresh().unwrap();
    assert_eq!(
        token(),
        first,
        "minted with the annotation: not rotated at once"
    );
    std::fs::write(&file, manifest("2", "1h")).unwrap();
    f.source.refresh().unwrap();
    let second = token();
    assert_ne!(second, first);
    let k = served(&f.source, "decl");
    assert_eq!(
        (k.key_id.as_str(), k.lookup_hash),
        (
            id.as_str(),
            layergate_filter::config::LookupHash::of(&second)
        )
    );
    assert_eq!(
        k.previous.map(|p| p.lookup_hash),
        Some(layergate_filter::config::LookupHash::of(&first))
    );
    assert_eq!(authenticate(&f, &first).0, 200, "in the overlap");
    f.source.refresh().unwrap();
    assert_eq!(token(), second, "once per value");
    std::fs::write(&file, manifest("3", "30d")).unwrap();
    f.source.refresh().unwrap();
    assert_eq!(token(), second, "an overlap over 7d rotates nothing");
}
