//! The control API over kube mode: mint, revoke and delete through Kubernetes, only on the
//! leader, quickly behind slow passes, with no internal error chain in a 500.

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube_fake_client::{interceptor, Error as FakeError};
use layergate_operator::cluster::{Cluster, DEFAULT_OUTPUT_SECRET};
use layergate_operator::crd::ApiKey;
use layergate_operator::lease::LeaseLock;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::support;
use super::support::StrictBuild as _;
use super::{api, builder, control_api, http_head, key_json, leader, pass, served, NS};

/// A raw HTTP/1.1 exchange (the control API closes nothing early; read until the body).
fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
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

/// The control API over kube mode: mint creates the ApiKey and its owned token Secret, revoke
/// patches the spec, delete deletes; each answer reflects the pass that followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_writes_api_keys_through_kubernetes() {
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

    // The same rules as in directory mode: demo-admin (primary's inbound admin) cannot mint
    // into archive, nor give itself the layer.
    for body in [
        r#"{"name": "evil", "entitlements": {"vectorstore.archive": {"scopes": ["admin"]}}}"#,
        r#"{"name": "evil", "entitlements": {"layer": {"scopes": ["admin"]}}}"#,
    ] {
        let (status, refused) = call("POST", "/v2/keys", body).await.unwrap();
        assert_eq!(status, 403, "{refused}");
    }
    assert!(api::<ApiKey>(&client)
        .get_opt("evil")
        .await
        .unwrap()
        .is_none());
    let (status, minted) = call(
        "POST",
        "/v2/keys",
        r#"{"name": "cohort", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{minted}");
    assert_eq!(minted["phase"], "Active");
    let token = minted["token"].as_str().unwrap().to_owned();
    let key = api::<ApiKey>(&client).get("cohort").await.unwrap();
    let secret = api::<Secret>(&client).get("apikey-cohort").await.unwrap();
    assert_eq!(
        secret.metadata.owner_references.unwrap()[0].uid,
        key.metadata.uid.unwrap()
    );
    let hash = format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())));
    assert_eq!(minted["lookupHash"], hash.as_str());

    let (status, revoked) = call("POST", "/v2/keys/cohort/revoke", "").await.unwrap();
    assert_eq!(
        (status, revoked["phase"].as_str()),
        (200, Some("Revoked")),
        "{revoked}"
    );
    assert_eq!(
        api::<ApiKey>(&client)
            .get("cohort")
            .await
            .unwrap()
            .spec
            .revoked,
        Some(true)
    );

    let (status, _) = call("DELETE", "/v2/keys/cohort", "").await.unwrap();
    assert_eq!(status, 200);
    assert!(api::<ApiKey>(&client)
        .get_opt("cohort")
        .await
        .unwrap()
        .is_none());
    assert!(api::<Secret>(&client)
        .get_opt("apikey-cohort")
        .await
        .unwrap()
        .is_none());
}

/// Issue 13: a mint answers with its token once the ApiKey and its Secret exist, even while
/// the passes that publish keys are slow (every LIST held 3 s: a pass reads for 9 s); the
/// controller's next pass then publishes the key and the token works. Before, the mint ran a
/// whole pass inside the request, behind the controller's: over 20 s here. (Since issue 12
/// passes read watch-fed caches and list nothing, so slow lists no longer slow them; the
/// mint's bound is kept.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mint_answers_before_a_slow_pass_and_the_token_then_works() {
    use layergate_operator::controller;
    let fake = builder().strict().await;
    let tap = support::Tap::new(&fake);
    let c = Arc::new(Cluster::new(
        tap.client(NS),
        NS,
        support::kube_settings(),
        DEFAULT_OUTPUT_SECRET,
    ));
    let lock = LeaseLock::new(
        tap.client(NS),
        NS,
        "layergate-operator",
        "a",
        layergate_operator::lease::LEASE_DURATION,
    );
    let run = c.clone();
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move { controller::run(run, lock, async { rx.await.unwrap_or(()) }).await });
    let started = std::time::Instant::now();
    while !(c.is_leader() && c.state.last().is_some_and(|p| !p.keys.is_empty())) {
        assert!(started.elapsed() < Duration::from_secs(10), "no first pass");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = control_api(c.clone());

    // From now on every pass is slow; a change starts one in the controller.
    tap.slow_lists_ms.store(3000, Ordering::SeqCst);
    api::<ApiKey>(&fake)
        .create(&PostParams::default(), &key_json("other", json!({})))
        .await
        .unwrap();
    tokio::time::sleep(controller::DEBOUNCE + Duration::from_millis(300)).await;

    let asked = std::time::Instant::now();
    let (status, _, minted) = tokio::task::spawn_blocking(move || {
        http_head(
            addr,
            "POST",
            "/v2/keys",
            r#"{"name": "quick", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}}"#,
        )
    })
    .await
    .unwrap();
    let took = asked.elapsed();
    assert_eq!(status, 201, "{minted}");
    assert!(
        took < Duration::from_secs(4),
        "the mint took {took:?} behind slow passes"
    );
    assert_eq!(minted["phase"], "Active");
    let token = minted["token"].as_str().unwrap().to_owned();
    let hash = format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())));
    assert_eq!(minted["lookupHash"], hash.as_str());
    let key = api::<ApiKey>(&fake).get("quick").await.unwrap();
    assert_eq!(
        minted["keyId"],
        format!("key_{}", key.metadata.uid.unwrap().replace('-', "")),
        "the keyId the passes will show"
    );
    assert!(api::<Secret>(&fake)
        .get_opt("apikey-quick")
        .await
        .unwrap()
        .is_some());

    // The token then works: the key service serves it, and authenticate accepts it.
    while !served(&c)
        .keys
        .iter()
        .any(|k| k.lookup_hash.to_string() == hash)
    {
        assert!(
            asked.elapsed() < Duration::from_secs(60),
            "the minted key was never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tap.slow_lists_ms.store(0, Ordering::SeqCst);
    let body = format!(r#"{{"token": "{token}"}}"#);
    let (status, _, who) = tokio::task::spawn_blocking(move || {
        http_head(addr, "POST", "/v2/keys/authenticate", &body)
    })
    .await
    .unwrap();
    assert_eq!(
        (status, who["name"].as_str()),
        (200, Some("quick")),
        "{who}"
    );
}

/// Issue 13: only the replica holding the Lease writes, the control API's writes included. A
/// follower answers mint, revoke and delete with 503, a JSON error and `Retry-After`, and
/// writes nothing (before, its control API created and deleted ApiKeys as a second writer);
/// it still answers reads. The leader's API mints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_control_api_writes_with_503_and_retry_after() {
    let fake = builder().strict().await;
    let leader_tap = support::Tap::new(&fake);
    let follower_tap = support::Tap::new(&fake);
    let a = Arc::new(leader(&leader_tap.client(NS)));
    pass(&a).await.unwrap();
    let b = Arc::new(Cluster::new(
        follower_tap.client(NS),
        NS,
        support::kube_settings(),
        DEFAULT_OUTPUT_SECRET,
    ));
    pass(&b).await.unwrap();
    let on_b = control_api(b.clone());
    let on_a = control_api(a.clone());
    let call = move |addr, m: &'static str, p: &'static str, body: &'static str| {
        tokio::task::spawn_blocking(move || http_head(addr, m, p, body))
    };
    follower_tap.calls.lock().unwrap().clear();
    let mint =
        r#"{"name": "cohort", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}}"#;
    for (m, p, body) in [
        ("POST", "/v2/keys", mint),
        ("POST", "/v2/keys/shop-reader/revoke", ""),
        ("DELETE", "/v2/keys/shop-reader", ""),
    ] {
        let (status, head, answer) = call(on_b, m, p, body).await.unwrap();
        assert_eq!(status, 503, "{m} {p}: {answer}");
        assert!(head.contains("\r\nretry-after: 2"), "{head}");
        assert_eq!(answer["status"], "error");
        assert!(
            answer["error"].as_str().unwrap().contains("lease"),
            "{answer}"
        );
    }
    let writes: Vec<_> = follower_tap
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _, _)| m != "GET")
        .cloned()
        .collect();
    assert!(writes.is_empty(), "the follower wrote: {writes:?}");
    assert!(api::<ApiKey>(&fake)
        .get_opt("cohort")
        .await
        .unwrap()
        .is_none());
    let shop = api::<ApiKey>(&fake).get("shop-reader").await.unwrap();
    assert_ne!(shop.spec.revoked, Some(true));

    let (status, _, listed) = call(on_b, "GET", "/v2/keys", "").await.unwrap();
    assert_eq!(status, 200, "{listed}");
    let (status, _, minted) = call(on_a, "POST", "/v2/keys", mint).await.unwrap();
    assert_eq!(status, 201, "{minted}");
}

/// Issue 13: a 500 from the control API carries no internal error chain (API server
/// messages, Secret names): the caller gets a reference, the log the chain. Before, the body
/// was the whole `{e:#}` chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_from_the_control_api_has_no_internal_error_chain() {
    let client = builder()
        .with_interceptor_funcs(interceptor::Funcs::new().create(|ctx| {
            if ctx.object["kind"] == "ApiKey" {
                return Err(FakeError::Internal(
                    "etcdserver: request timed out on /registry/secrets/layer/layer".into(),
                ));
            }
            Ok(None)
        }))
        .strict()
        .await;
    let c = Arc::new(leader(&client));
    pass(&c).await.unwrap();
    let addr = control_api(c);
    let (status, _, answer) = tokio::task::spawn_blocking(move || {
        http_head(
            addr,
            "POST",
            "/v2/keys",
            r#"{"name": "cohort", "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}}"#,
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 500, "{answer}");
    let text = answer["error"].as_str().unwrap();
    assert!(text.contains("reference") && text.contains("log"), "{text}");
    for leak in ["etcd", "registry", "creating the ApiKey", "layer/layer"] {
        assert!(!text.contains(leak), "{text}");
    }
}
