//! The write path: mint, revoke and delete, the files they write and leave alone, and writes
//! that race.

use crate::{fixture, key, ADMIN};
use layergate_operator::source::Source;
use serde_json::{json, Value};
use std::sync::Arc;

/// Issue 10: deleting the demo's `shop-reader` (token Secret written beforehand, in
/// `secrets.yaml`) and minting a key of the same name picked the old Secret up again.
#[test]
fn a_deleted_keys_token_dies_with_it_and_a_remint_gets_a_new_token_and_id() {
    let f = fixture("remint", 120, |_, t| t);
    let old_token = "hvl_demoShopReader0123456789abcdefABCDEF";
    let (_, before) = f.call("GET", "/v2/keys/shop-reader", Some(ADMIN), Value::Null);
    let old_id = before["keyId"].as_str().unwrap().to_owned();
    let (status, body) = f.call("DELETE", "/v2/keys/shop-reader", Some(ADMIN), Value::Null);
    assert_eq!(status, 200, "{body}");
    let secrets = std::fs::read_to_string(f.dir.join("secrets.yaml")).unwrap();
    assert!(
        !secrets.contains(old_token) && secrets.contains("primary-api-key"),
        "the token Secret is gone, the store Secrets stay:\n{secrets}"
    );
    let (status, minted) = f.call(
        "POST",
        "/v2/keys",
        Some(ADMIN),
        key(
            "shop-reader",
            json!({"vectorstore.primary": {"scopes": ["read"], "namespaces": ["shop-*"]}}),
        ),
    );
    assert_eq!(status, 201, "{minted}");
    assert_eq!(minted["phase"], "Active", "not born expired: {minted}");
    let new_token = minted["token"].as_str().unwrap();
    assert_ne!(new_token, old_token);
    assert_ne!(minted["keyId"].as_str().unwrap(), old_id, "a new keyId");
    assert_eq!(
        f.call(
            "POST",
            "/v2/keys/authenticate",
            None,
            json!({"token": old_token})
        )
        .0,
        401
    );
    assert_eq!(
        f.call(
            "POST",
            "/v2/keys/authenticate",
            None,
            json!({"token": new_token})
        )
        .0,
        200
    );
    // Minted token files are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(f.dir.join("apikey-shop-reader.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
}

/// Issue 10: `"expiresAfter": "5日"` through the API panicked the operator.
#[test]
fn malformed_mint_bodies_are_400_never_a_panic() {
    let f = fixture("bodies", 120, |_, t| t);
    for (body, want) in [
        (
            json!({"name": "a", "expiresAfter": "5日", "entitlements": {}}),
            "expiresAfter",
        ),
        (
            json!({"name": "a", "expiresAfter": "999999999999999999d"}),
            "100 years",
        ),
        (
            json!({"name": "a", "expiresAfter": "3000000d"}),
            "100 years",
        ),
        (json!({"name": "a", "entitlements": {"bogus": {}}}), "bogus"),
        (
            json!({"name": "a", "entitlements": {"vectorstore.primary": {"namespaces": ["a/b"]}}}),
            "a/b",
        ),
        (json!({"name": "a", "expiresAftr": "1d"}), "unknown field"),
        (json!({"name": "A_b"}), "name"),
        (json!({"name": "a", "entitlements": []}), "ApiKey"),
        (json!([1, 2]), "JSON object"),
    ] {
        let (status, reply) = f.call("POST", "/v2/keys", Some(ADMIN), body.clone());
        assert_eq!(status, 400, "{body} → {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(want),
            "{body} → {reply}"
        );
    }
    assert!(!f.dir.join("a.apikey.yaml").exists());
}

/// Issue 21.4: with CRLF line endings or a `--- # comment` separator, revoke and delete
/// answered 200 and changed nothing (the rewriter split on a literal "\n---\n").
#[test]
fn revoke_and_delete_work_whatever_the_document_separators() {
    for (tag, edit) in [
        (
            "crlf",
            (|t: String| t.replace('\n', "\r\n")) as fn(String) -> String,
        ),
        ("comment", |t: String| {
            t.replace("\n---\n", "\n--- # next\n")
        }),
    ] {
        let f = fixture(&format!("sep-{tag}"), 120, |file, t| {
            if file == "apikeys.yaml" {
                edit(format!("{t}\n---\napiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {{name: second, namespace: layer}}\nspec:\n  entitlements: {{vectorstore.primary: {{scopes: [read]}}}}\n"))
            } else {
                t
            }
        });
        let token = {
            f.source.refresh().unwrap();
            let pass = f.source.state().last().unwrap();
            assert!(
                pass.keys.iter().any(|k| k.name == "second"),
                "{tag}: minted"
            );
            "hvl_demoShopReader0123456789abcdefABCDEF"
        };
        f.revoked("shop-reader", tag);
        let (status, _) = f.call(
            "POST",
            "/v2/keys/authenticate",
            None,
            json!({"token": token}),
        );
        assert_eq!(status, 401, "{tag}: the revoked token is refused");
        let (status, body) = f.call("DELETE", "/v2/keys/second", Some(ADMIN), Value::Null);
        assert_eq!(status, 200, "{tag}: {body}");
        assert!(!f.config().contains("\"second\""), "{tag}: deleted");
        let (status, _) = f.call("GET", "/v2/keys/second", Some(ADMIN), Value::Null);
        assert_eq!(status, 404, "{tag}");
    }
}

/// Issue 21.5: a key whose spec became invalid could not be revoked (validation stopped at the
/// bad field and the last valid, Active form was carried).
#[test]
fn a_key_with_an_invalid_spec_is_still_revoked() {
    let f = fixture("invalid-revoke", 120, |_, t| t);
    let token = json!({"token": "hvl_demoShopReader0123456789abcdefABCDEF"});
    let file = f.dir.join("apikeys.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    // A mistyped target (the CRD cannot check map keys): the last valid form is carried.
    std::fs::write(
        &file,
        text.replace("vectorstore.primary:", "\"vectorstore.primary!\":"),
    )
    .unwrap();
    f.source.refresh().unwrap();
    assert_eq!(
        f.call("POST", "/v2/keys/authenticate", None, token.clone())
            .0,
        200,
        "carried"
    );
    f.revoked("shop-reader", "an invalid spec");
    assert_eq!(
        f.call("POST", "/v2/keys/authenticate", None, token.clone())
            .0,
        401
    );
    let pass = f.source.state().last().unwrap();
    assert!(
        !pass.keys.iter().any(|k| k.name == "shop-reader"),
        "no longer served"
    );
    // Written by hand beside the bad target, too.
    let f = fixture("invalid-revoke-hand", 120, |_, t| t);
    let file = f.dir.join("apikeys.yaml");
    std::fs::write(
        &file,
        text.replace("vectorstore.primary:", "\"vectorstore.primary!\":"),
    )
    .unwrap();
    f.source.refresh().unwrap();
    std::fs::write(
        &file,
        text.replace("vectorstore.primary:", "\"vectorstore.primary!\":") + "  revoked: true\n",
    )
    .unwrap();
    f.source.refresh().unwrap();
    assert_eq!(f.call("POST", "/v2/keys/authenticate", None, token).0, 401);
    let pass = f.source.state().last().unwrap();
    assert!(
        !pass.keys.iter().any(|k| k.name == "shop-reader"),
        "not served"
    );
    assert_eq!(
        pass.validation.phase("shop-reader"),
        Some(layergate_operator::crd::ApiKeyPhase::Revoked)
    );
}

/// Issue 21.6: minting `team` replaced `team.apikey.yaml` and `apikey-team.yaml`, files that
/// held other keys and their token Secret.
#[test]
fn a_mint_never_overwrites_a_file_it_did_not_make() {
    let f = fixture("overwrite", 120, |_, t| t);
    let other = "apiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {name: other, namespace: layer}\nspec:\n  entitlements: {vectorstore.primary: {scopes: [read]}}\n  tokenSecretRef: {name: other-token, key: token}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: other-token, namespace: layer, labels: {hevlayer.com/apikey-token: other}}\nstringData: {token: hvl_otherOther0123456789abcdefABCDEFGHI}\n";
    for file in ["team.apikey.yaml", "apikey-team.yaml"] {
        let _ = std::fs::remove_file(f.dir.join("team.apikey.yaml"));
        let _ = std::fs::remove_file(f.dir.join("apikey-team.yaml"));
        std::fs::write(f.dir.join(file), other).unwrap();
        f.source.refresh().unwrap();
        assert!(f.config().contains("\"other\""), "{file}: other is active");
        let (status, body) = f.call(
            "POST",
            "/v2/keys",
            Some(ADMIN),
            key("team", json!({"vectorstore.primary": {"scopes": ["read"]}})),
        );
        assert_eq!(status, 409, "{file}: {body}");
        assert_eq!(
            std::fs::read_to_string(f.dir.join(file)).unwrap(),
            other,
            "{file} untouched"
        );
        f.source.refresh().unwrap();
        assert!(
            f.config().contains("\"other\""),
            "{file}: other still active"
        );
        assert!(!f.config().contains("\"team\""));
    }
}

/// Issue 21.7: parallel mints of one name answered 201 with tokens the gateway refused, or 500.
#[test]
fn parallel_mints_of_one_name_have_one_winner_whose_token_works() {
    let f = Arc::new(fixture("parallel", 120, |_, t| t));
    for round in 0..3 {
        let name = format!("race-{round}");
        let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..6)
                .map(|_| {
                    let (f, name) = (f.clone(), name.clone());
                    s.spawn(move || {
                        f.call(
                            "POST",
                            "/v2/keys",
                            Some(ADMIN),
                            key(&name, json!({"vectorstore.primary": {"scopes": ["read"]}})),
                        )
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let won: Vec<&Value> = answers
            .iter()
            .filter(|a| a.0 == 201)
            .map(|a| &a.1)
            .collect();
        assert_eq!(won.len(), 1, "{answers:?}");
        assert!(
            answers.iter().all(|a| a.0 == 201 || a.0 == 409),
            "{answers:?}"
        );
        f.source.refresh().unwrap();
        let (status, body) = f.call(
            "POST",
            "/v2/keys/authenticate",
            None,
            json!({"token": won[0]["token"]}),
        );
        assert_eq!(
            (status, body["name"].as_str()),
            (200, Some(name.as_str())),
            "{body}"
        );
    }
}

/// Helper report on issue 21: two revokes of keys in one hand-written file, at once, each read
/// the file and wrote it back: the second write undid the first revocation. Writes are
/// serialized.
#[test]
fn parallel_revokes_in_one_file_both_hold() {
    let f = Arc::new(fixture("parallel-revoke", 120, |file, t| {
        if file == "apikeys.yaml" {
            let mut t = t;
            for i in 0..6 {
                t.push_str(&format!("\n---\napiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {{name: many-{i}, namespace: layer}}\nspec:\n  entitlements: {{vectorstore.primary: {{scopes: [read]}}}}\n"));
            }
            t
        } else {
            t
        }
    }));
    f.source.refresh().unwrap();
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let f = f.clone();
                s.spawn(move || {
                    f.call(
                        "POST",
                        &format!("/v2/keys/many-{i}/revoke"),
                        Some(ADMIN),
                        Value::Null,
                    )
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|a| a.0 == 200), "{answers:?}");
    f.source.refresh().unwrap();
    let pass = f.source.state().last().unwrap();
    for i in 0..6 {
        assert_eq!(
            pass.validation.phase(&format!("many-{i}")),
            Some(layergate_operator::crd::ApiKeyPhase::Revoked),
            "many-{i}"
        );
    }
}

/// Helper report on issue 21: deleting key `x` removed the Secret `apikey-x` even when it was
/// labelled as another key's token.
#[test]
fn a_delete_leaves_a_secret_labelled_for_another_key() {
    let f = fixture("delete-other-secret", 120, |file, t| {
        match file {
        "apikeys.yaml" => t + "\n---\napiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {name: x, namespace: layer}\nspec:\n  entitlements: {vectorstore.primary: {scopes: [read]}}\n  tokenSecretRef: {name: x-token, key: token}\n---\napiVersion: hevlayer.com/v1alpha1\nkind: ApiKey\nmetadata: {name: other, namespace: layer}\nspec:\n  entitlements: {vectorstore.primary: {scopes: [read]}}\n  tokenSecretRef: {name: apikey-x, key: token}\n",
        "secrets.yaml" => t + "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: apikey-x, namespace: layer, labels: {hevlayer.com/apikey-token: other}}\nstringData: {token: hvl_otherOther0123456789abcdefABCDEFGHI}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: x-token, namespace: layer, labels: {hevlayer.com/apikey-token: x}}\nstringData: {token: hvl_xxxxXxxx0123456789abcdefABCDEFGHIJKL}\n",
        _ => t,
    }
    });
    f.source.refresh().unwrap();
    assert!(f.config().contains("\"other\"") && f.config().contains("\"x\""));
    let (status, body) = f.call("DELETE", "/v2/keys/x", Some(ADMIN), Value::Null);
    assert_eq!(status, 200, "{body}");
    let secrets = std::fs::read_to_string(f.dir.join("secrets.yaml")).unwrap();
    assert!(
        secrets.contains("hvl_otherOther"),
        "other's token stays:\n{secrets}"
    );
    assert!(!secrets.contains("hvl_xxxxXxxx"), "x's own token goes");
    assert!(f.config().contains("\"other\""), "other still works");
}

/// Directory mode writes no status: the key views carry its conditions, `ExpiringSoon` among
/// them — in the mint's answer as in every later read.
#[test]
fn a_key_view_shows_expiring_soon() {
    let f = fixture("expiring", 120, |_, t| t);
    let grant = json!({"vectorstore.primary": {"scopes": ["read"], "namespaces": ["shop-*"]}});
    let expiring = |v: &Value| -> (String, String, String) {
        let c = v["conditions"]
            .as_array()
            .unwrap_or_else(|| panic!("conditions in {v}"))
            .iter()
            .find(|c| c["type"] == "ExpiringSoon")
            .unwrap_or_else(|| panic!("ExpiringSoon in {v}"));
        let s = |k: &str| c[k].as_str().unwrap().to_owned();
        (s("status"), s("reason"), s("message"))
    };
    for (name, after, status, reason) in [
        ("soon", "3d", "True", "ExpiresWithin"),
        ("later", "30d", "False", "ExpiresLater"),
    ] {
        let mut body = key(name, grant.clone());
        body["expiresAfter"] = json!(after);
        let (code, minted) = f.call("POST", "/v2/keys", Some(ADMIN), body);
        assert_eq!(code, 201, "{minted}");
        let (_, read) = f.call("GET", &format!("/v2/keys/{name}"), Some(ADMIN), Value::Null);
        for v in [&minted, &read] {
            let (s, r, m) = expiring(v);
            assert_eq!((s.as_str(), r.as_str()), (status, reason), "{v}");
            assert!(m.contains(read["expiresAt"].as_str().unwrap()), "{m}");
        }
    }
    let (_, list) = f.call("GET", "/v2/keys", Some(ADMIN), Value::Null);
    let listed = list["keys"]
        .as_array()
        .or(list.as_array())
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .find(|k| k["name"] == "soon")
        .cloned()
        .unwrap();
    assert_eq!(expiring(&listed).0, "True");
}
