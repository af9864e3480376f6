//! Token Secrets and the key service: what a key adopts, replaces or takes along, and the
//! gateway credential Secret the key service answers to.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use layergate_operator::cluster::{Cluster, DEFAULT_OUTPUT_SECRET};
use layergate_operator::crd::{ApiKey, ApiKeyPhase};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

use super::support;
use super::support::StrictBuild as _;
use super::{api, builder, key_json, leader, pass, published, ready, served, NS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_collision_with_an_existing_token_secret_is_not_overwritten() {
    // Someone else's Secret under the name the operator would mint into, neither owned by the
    // key nor labelled for it: the key does not adopt it as its token (issue 10: an old token
    // picked up by a new key), and the operator never replaces what is not its own.
    let foreign: Secret = serde_json::from_value(json!({"metadata": {"name": "apikey-cohort", "namespace": NS}, "data": {"token": "aHZsX2ZvcmVpZ24="}})).unwrap();
    let client = builder()
        .with_object(foreign)
        .with_object(key_json("cohort", json!({})))
        .strict()
        .await;
    let w = pass(&leader(&client)).await.unwrap();
    assert_eq!(w.minted, 0);
    let s = api::<Secret>(&client).get("apikey-cohort").await.unwrap();
    assert_eq!(s.data.unwrap()["token"].0, b"hvl_foreign");
    assert!(s.metadata.owner_references.is_none());
    let key = api::<ApiKey>(&client).get("cohort").await.unwrap();
    let status = key.status.unwrap();
    assert_eq!(status.phase, Some(ApiKeyPhase::Pending));
    assert_eq!(
        ready(&status.conditions),
        ("False".into(), "InvalidTokenSecret".into())
    );
    let config = published(&client).await;
    assert!(!config.to_string().contains("\"cohort\""), "{config}");
}

/// Issue 10 in kube mode: a key deleted and re-created under the same name before Kubernetes
/// collected its token Secret got the old token back. The Secret is owned by the old uid: the
/// operator removes it and mints a new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_secret_left_by_a_deleted_key_is_replaced_not_adopted() {
    let old_token = "hvl_OLDoldOLDoldOLDoldOLDoldOLDold12";
    let stale: Secret = serde_json::from_value(json!({"metadata": {"name": "apikey-cohort", "namespace": NS,
        "labels": {"hevlayer.com/apikey-token": "cohort"},
        "ownerReferences": [{"apiVersion": "hevlayer.com/v1alpha1", "kind": "ApiKey", "name": "cohort", "uid": "uid-of-the-deleted-key", "controller": true}]},
        "data": {"token": base64::engine::general_purpose::STANDARD.encode(old_token)}})).unwrap();
    let client = builder()
        .with_object(stale)
        .with_object(key_json("cohort", json!({})))
        .strict()
        .await;
    let c = leader(&client);
    let mut minted = 0;
    for _ in 0..2 {
        minted += pass(&c).await.unwrap().minted;
    }
    assert_eq!(minted, 1, "a new token");
    let key = api::<ApiKey>(&client).get("cohort").await.unwrap();
    let s = api::<Secret>(&client).get("apikey-cohort").await.unwrap();
    assert_eq!(
        s.metadata.owner_references.unwrap()[0].uid,
        key.metadata.uid.clone().unwrap()
    );
    let new_token = String::from_utf8(s.data.unwrap()["token"].0.clone()).unwrap();
    assert_ne!(new_token, old_token);
    let config = serde_json::to_string(&served(&c)).unwrap();
    let hash = |t: &str| format!("sha256:{}", hex::encode(Sha256::digest(t.as_bytes())));
    assert!(config.contains(&hash(&new_token)), "{config}");
    assert!(!config.contains(&hash(old_token)), "{config}");
    assert_eq!(key.status.unwrap().phase, Some(ApiKeyPhase::Active));
}

/// A pre-provisioned token Secret (the demo's `apikey-shop-reader`, labelled for its key) is
/// made owned by its ApiKey, so `kubectl delete apikey` takes the token along and a new key of
/// the same name cannot find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_provisioned_token_secret_is_taken_along_when_its_key_is_deleted() {
    let client = builder().strict().await;
    let c = leader(&client);
    pass(&c).await.unwrap();
    let key = api::<ApiKey>(&client).get("shop-reader").await.unwrap();
    let s = api::<Secret>(&client)
        .get("apikey-shop-reader")
        .await
        .unwrap();
    let owners = s.metadata.owner_references.unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(Some(&owners[0].uid), key.metadata.uid.as_ref());
    assert_eq!(owners[0].kind, "ApiKey");
    // The next pass has nothing to adopt.
    pass(&c).await.unwrap();
    let again = api::<Secret>(&client)
        .get("apikey-shop-reader")
        .await
        .unwrap();
    assert_eq!(again.metadata.owner_references.unwrap_or_default().len(), 1);
}

/// `GET /v2/keys/sync{query}` over a fresh connection: (status, body).
fn sync_http(addr: std::net::SocketAddr, query: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    write!(s, "GET /v2/keys/sync{query} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out.split_once("\r\n\r\n").unwrap().1.to_owned())
}

fn synced(
    addr: std::net::SocketAddr,
    query: &str,
    token: &str,
) -> (layergate_filter::config::SyncResponse, String) {
    let (status, body) = sync_http(addr, query, token);
    assert_eq!(status, 200, "{body}");
    (serde_json::from_str(&body).unwrap(), body)
}

/// Kube mode: the gateway credential is a Secret the operator creates once and every replica
/// reads; the key service over the real HTTP server follows ApiKeys created, revoked and
/// deleted through the API server; two replicas name the same revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_mode_serves_the_key_service_with_a_credential_secret() {
    use layergate_operator::keyservice::{CREDENTIAL_KEY, CREDENTIAL_SECRET};
    let client = builder().strict().await;
    let c = Arc::new(leader(&client));
    pass(&c).await.unwrap();
    let secret = api::<Secret>(&client).get(CREDENTIAL_SECRET).await.unwrap();
    let credential = String::from_utf8(secret.data.unwrap()[CREDENTIAL_KEY].0.clone()).unwrap();
    assert!(credential.starts_with("lgw_") && credential.len() == 36);
    let config = published(&client).await;
    assert!(config.get("apiKeys").is_none(), "{config}");
    assert_eq!(config["keyService"]["cluster"], "layergate_control");
    assert_eq!(
        config["keyService"]["credential"]["inline"],
        credential.as_str()
    );
    // A follower reads the same credential and names the same revision.
    let follower = Cluster::new(
        client.clone(),
        NS,
        support::kube_settings(),
        DEFAULT_OUTPUT_SECRET,
    );
    pass(&follower).await.unwrap();
    assert_eq!(
        follower.state.keys.table().revision,
        c.state.keys.table().revision
    );
    pass(&c).await.unwrap();
    let again = api::<Secret>(&client).get(CREDENTIAL_SECRET).await.unwrap();
    assert_eq!(
        again.data.unwrap()[CREDENTIAL_KEY].0,
        credential.as_bytes(),
        "kept"
    );

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
    let get = |query: String, token: String| {
        tokio::task::spawn_blocking(move || sync_http(addr, &query, &token))
    };
    let get_ok = |query: String| {
        let credential = credential.clone();
        tokio::task::spawn_blocking(move || synced(addr, &query, &credential))
    };
    for token in [
        "demo-admin-token",
        "tpuf-primary-dev-key",
        "hvl_demoShopReader0123456789abcdefABCDEF",
        "x",
    ] {
        let (status, body) = get(String::new(), token.into()).await.unwrap();
        assert_eq!(status, 401, "{token}: {body}");
    }
    let (first, _) = get_ok(String::new()).await.unwrap();
    assert!(first.snapshot);
    assert_eq!(
        first
            .keys
            .iter()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>(),
        ["shop-reader"]
    );

    // Create → delta with the key (never its token).
    api::<ApiKey>(&client)
        .create(&PostParams::default(), &key_json("cohort", json!({})))
        .await
        .unwrap();
    pass(&c).await.unwrap();
    let token = String::from_utf8(
        api::<Secret>(&client)
            .get("apikey-cohort")
            .await
            .unwrap()
            .data
            .unwrap()["token"]
            .0
            .clone(),
    )
    .unwrap();
    let (d1, body) = get_ok(format!("?since={}", first.revision)).await.unwrap();
    assert!(!d1.snapshot && d1.removed.is_empty());
    assert_eq!(d1.keys.len(), 1);
    assert_eq!(
        d1.keys[0].lookup_hash,
        layergate_filter::config::LookupHash::of(&token)
    );
    assert!(!body.contains(&token) && !body.contains("hvl_"), "{body}");
    let id = d1.keys[0].key_id.clone();

    // Long poll, then revoke: answered with the removal as soon as the pass publishes.
    let poll = get_ok(format!("?since={}&wait=20", d1.revision));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let patch = json!({"spec": {"revoked": true}});
    api::<ApiKey>(&client)
        .patch("cohort", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let changed = std::time::Instant::now();
    pass(&c).await.unwrap();
    let passed = changed.elapsed();
    let (d2, _) = poll.await.unwrap();
    let answered = changed.elapsed();
    eprintln!(
        "kube mode: revoke pass {passed:?}, long poll answered {answered:?} after the pass started"
    );
    assert!(answered < passed + Duration::from_secs(1), "{answered:?}");
    assert_eq!((d2.keys.len(), d2.removed.clone()), (0, vec![id.clone()]));

    // Delete → removed; the follower agrees on the revision.
    api::<ApiKey>(&client)
        .create(&PostParams::default(), &key_json("second", json!({})))
        .await
        .unwrap();
    pass(&c).await.unwrap();
    let (d3, _) = get_ok(format!("?since={}", d2.revision)).await.unwrap();
    assert_eq!(d3.keys.len(), 1);
    api::<ApiKey>(&client)
        .delete("second", &DeleteParams::default())
        .await
        .unwrap();
    pass(&c).await.unwrap();
    let (d4, _) = get_ok(format!("?since={}", d3.revision)).await.unwrap();
    assert_eq!(
        (d4.keys.len(), d4.removed.clone()),
        (0, vec![d3.keys[0].key_id.clone()])
    );
    pass(&follower).await.unwrap();
    assert_eq!(follower.state.keys.table().revision, d4.revision);
    // An unknown revision: a snapshot.
    let (unknown, _) = get_ok("?since=sha256:feed".into()).await.unwrap();
    assert!(unknown.snapshot && unknown.keys.len() == 1);
}
