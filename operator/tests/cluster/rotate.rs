//! Rotation in kube mode: through the control API (the token Secret patched in place, the
//! overlap recorded on it, so another replica or a restart keeps it) and declaratively, with
//! the `hevlayer.com/rotate` annotation on the ApiKey.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use layergate_operator::crd::ApiKey;
use serde_json::{json, Value};
use std::sync::Arc;

use super::support::StrictBuild as _;
use super::{api, builder, leader, pass, served};

fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer demo-admin-token\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let json = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| serde_json::from_str(b).unwrap_or(Value::Null))
        .unwrap();
    (status, json)
}

fn token_of(s: &Secret) -> String {
    String::from_utf8(s.data.as_ref().unwrap()["token"].0.clone()).unwrap()
}

fn hash(token: &str) -> String {
    layergate_filter::config::LookupHash::of(token).to_string()
}

/// The served entry of `name`: (lookupHash, previous lookupHash).
fn entry(c: &layergate_operator::cluster::Cluster, name: &str) -> (String, Option<String>) {
    let k = served(c).keys.into_iter().find(|k| k.name == name).unwrap();
    (
        k.lookup_hash.to_string(),
        k.previous.map(|p| p.lookup_hash.to_string()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_through_the_api_and_by_annotation_keeps_the_key() {
    let client = builder().strict().await;
    let c = Arc::new(leader(&client));
    pass(&c).await.unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let control = Arc::new(layergate_operator::api::Api::new(c.clone(), 120));
    std::thread::spawn(move || {
        control.serve_blocking(
            listener,
            layergate_operator::api::Role::Control,
            std::future::pending(),
        )
    });
    let call = move |m: &'static str, p: &'static str, b: &'static str| {
        tokio::task::spawn_blocking(move || http(addr, m, p, b))
    };
    let (status, minted) = call(
        "POST",
        "/v2/keys",
        r#"{"name": "cohort", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{minted}");
    let first = minted["token"].as_str().unwrap().to_owned();
    let uid = api::<ApiKey>(&client)
        .get("cohort")
        .await
        .unwrap()
        .metadata
        .uid;

    let (status, rotated) = call("POST", "/v2/keys/cohort/rotate", r#"{"overlap": "24h"}"#)
        .await
        .unwrap();
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["token"].as_str().unwrap().to_owned();
    assert_eq!(rotated["keyId"], minted["keyId"]);
    assert_eq!(rotated["entitlements"], minted["entitlements"]);
    let secret = api::<Secret>(&client).get("apikey-cohort").await.unwrap();
    assert_eq!(token_of(&secret), second, "the Secret holds the new token");
    let notes = secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        notes.get("hevlayer.com/previous-lookup-hash"),
        Some(&hash(&first))
    );
    assert!(notes.contains_key("hevlayer.com/minted-at"), "kept");
    assert_eq!(
        secret.metadata.owner_references.unwrap()[0].uid,
        uid.unwrap(),
        "still owned by its key"
    );
    assert_eq!(entry(&c, "cohort"), (hash(&second), Some(hash(&first))));
    // Another replica (or a restart) serves the same overlap.
    let other = leader(&client);
    pass(&other).await.unwrap();
    assert_eq!(entry(&other, "cohort"), (hash(&second), Some(hash(&first))));

    // Declaratively: a new value of the annotation rotates once, with its overlap.
    let annotate = |v: &str| json!({"metadata": {"annotations": {"hevlayer.com/rotate": v, "hevlayer.com/rotate-overlap": "1h"}}});
    api::<ApiKey>(&client)
        .patch(
            "cohort",
            &PatchParams::default(),
            &Patch::Merge(&annotate("2026-12-01")),
        )
        .await
        .unwrap();
    pass(&c).await.unwrap();
    pass(&c).await.unwrap();
    let third = token_of(&api::<Secret>(&client).get("apikey-cohort").await.unwrap());
    assert_ne!(third, second, "rotated");
    assert_eq!(entry(&c, "cohort"), (hash(&third), Some(hash(&second))));
    assert_eq!(
        served(&c)
            .keys
            .iter()
            .find(|k| k.name == "cohort")
            .unwrap()
            .key_id,
        minted["keyId"].as_str().unwrap()
    );
    pass(&c).await.unwrap();
    assert_eq!(
        token_of(&api::<Secret>(&client).get("apikey-cohort").await.unwrap()),
        third,
        "once per value"
    );

    // A revoked key is never rotated, by either way.
    let (status, _) = call("POST", "/v2/keys/cohort/revoke", "").await.unwrap();
    assert_eq!(status, 200);
    let (status, refused) = call("POST", "/v2/keys/cohort/rotate", "{}").await.unwrap();
    assert_eq!(status, 409, "{refused}");
    api::<ApiKey>(&client)
        .patch(
            "cohort",
            &PatchParams::default(),
            &Patch::Merge(&annotate("again")),
        )
        .await
        .unwrap();
    pass(&c).await.unwrap();
    assert_eq!(
        token_of(&api::<Secret>(&client).get("apikey-cohort").await.unwrap()),
        third
    );
}
