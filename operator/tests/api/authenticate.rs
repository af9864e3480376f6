//! `POST /v2/keys/authenticate`: judged at request time, and only on token Secrets it can trust.

use crate::{fixture, ADMIN};
use layergate_operator::source::Source;
use serde_json::{json, Value};

/// Issue 10: authenticate answered 200 for a key whose expiresAt had passed (the rendering
/// still listed it).
#[test]
fn authenticate_judges_expiry_and_revocation_at_request_time() {
    let f = fixture("authn", 120, |_, t| t);
    let (status, minted) = f.call(
        "POST",
        "/v2/keys",
        Some(ADMIN),
        json!({"name": "brief", "expiresAfter": "2s", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}}),
    );
    assert_eq!(status, 201, "{minted}");
    let token = json!({"token": minted["token"]});
    assert_eq!(
        f.call("POST", "/v2/keys/authenticate", None, token.clone())
            .0,
        200
    );
    std::thread::sleep(std::time::Duration::from_millis(3100));
    // No pass ran since: the last rendering still lists the key.
    assert!(f.config().contains("\"brief\""));
    let (status, body) = f.call("POST", "/v2/keys/authenticate", None, token);
    assert_eq!(status, 401, "expired: {body}");
    // Revoked (in the manifest, before any rendering) is refused too.
    let shop = json!({"token": "hvl_demoShopReader0123456789abcdefABCDEF"});
    assert_eq!(
        f.call("POST", "/v2/keys/authenticate", None, shop.clone())
            .0,
        200
    );
    assert_eq!(
        f.call(
            "POST",
            "/v2/keys/shop-reader/revoke",
            Some(ADMIN),
            Value::Null
        )
        .0,
        200
    );
    assert_eq!(f.call("POST", "/v2/keys/authenticate", None, shop).0, 401);
}

/// A Secret written by hand under a minted key's name, without the token label, is not
/// adopted (it could be anything: another key's token, a store credential).
#[test]
fn an_unmarked_or_weak_token_secret_is_refused_with_a_condition() {
    for (tag, secret, reason) in [
        (
            "unlabelled",
            "  labels: {hevlayer.com/apikey-token: shop-reader}\n",
            "",
        ),
        ("weak", "", "hvl_short"),
    ] {
        let f = fixture(tag, 120, |file, t| {
            if file != "secrets.yaml" {
                t
            } else if reason.is_empty() {
                t.replace(secret, "")
            } else {
                t.replace("hvl_demoShopReader0123456789abcdefABCDEF", reason)
            }
        });
        let pass = f.source.state().last().unwrap();
        let v = pass
            .validation
            .keys
            .iter()
            .find(|k| k.name == "shop-reader")
            .unwrap();
        assert!(v.valid.is_none(), "{tag}: left out");
        let ready = v.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            ready.reason, "InvalidTokenSecret",
            "{tag}: {}",
            ready.message
        );
        assert!(!f.config().contains("\"shop-reader\""));
    }
}
