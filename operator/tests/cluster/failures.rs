//! API errors and broken objects: a failed step keeps the last pass and is retried, calls are
//! bounded by timeouts, and one broken Secret or name is that object's condition only.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Client;
use kube_fake_client::{interceptor, Error as FakeError};
use layergate_operator::cluster::{Backoff, Step};
use layergate_operator::crd::{ApiKey, ApiKeyPhase, VectorStore};
use layergate_operator::lease::LeaseLock;
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::support;
use super::support::{ClientBuilderJournal as _, StrictBuild as _};
use super::{api, builder, key_json, kinds, leader, pass, published, ready, store_json, NS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_fail_the_step_keep_the_last_pass_and_are_retried() {
    let fail_lists = Arc::new(AtomicU32::new(0));
    let fail_status = Arc::new(AtomicU32::new(0));
    let (fl, fs) = (fail_lists.clone(), fail_status.clone());
    let (client, journal) = builder()
        .with_interceptor_funcs(
            interceptor::Funcs::new()
                .list(move |_| {
                    if fl.load(Ordering::SeqCst) > 0 {
                        let _ = fl.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                            Some(n.saturating_sub(1))
                        });
                        return Err(FakeError::Internal("etcdserver: request timed out".into()));
                    }
                    Ok(None)
                })
                .patch_status(move |_| {
                    if fs.load(Ordering::SeqCst) > 0 {
                        fs.fetch_sub(1, Ordering::SeqCst);
                        return Err(FakeError::Conflict("Operation cannot be fulfilled".into()));
                    }
                    Ok(None)
                }),
        )
        .strict_with_journal()
        .await;
    // Until the caches have listed, a pass has nothing to read: the read step fails (within
    // the sync bound) and is retried.
    fail_lists.store(u32::MAX, Ordering::SeqCst);
    let c = leader(&client);
    let e = c.pass().await.unwrap_err();
    assert_eq!(e.step, Step::Read);
    assert!(format!("{e}").contains("first list"), "{e}");
    assert!(c.state.last().is_none());
    fail_lists.store(0, Ordering::SeqCst);
    pass(&c).await.unwrap();
    let good = c.state.last().unwrap().config.clone();

    // A relist that fails (the watches ended and the events are compacted away: every
    // cache must list again, and every list fails) leaves the caches as they were: passes go
    // on from them, and the last good rendering stays.
    fail_lists.store(u32::MAX, Ordering::SeqCst);
    journal.compact();
    journal.end_watches();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.pass().await.unwrap();
    assert_eq!(
        c.state.last().unwrap().config,
        good,
        "the last good pass stays"
    );
    fail_lists.store(0, Ordering::SeqCst);

    // A status write refused with 409 fails only the status step; the next pass retries it.
    api::<ApiKey>(&client)
        .create(&PostParams::default(), &key_json("cohort", json!({})))
        .await
        .unwrap();
    fail_status.store(1, Ordering::SeqCst);
    let e = pass(&c).await.unwrap_err();
    assert_eq!(e.step, Step::Status);
    let w = pass(&c).await.unwrap();
    assert!(w.statuses >= 1, "{w:?}");
    assert_eq!(
        api::<ApiKey>(&client)
            .get("cohort")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase,
        Some(ApiKeyPhase::Active)
    );

    // Backoff per step: doubling, capped, reset by a success.
    let mut b = Backoff::default();
    let waits: Vec<u64> = (0..8).map(|_| b.failed(Step::Read).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(
        b.failed(Step::Status).as_secs(),
        1,
        "each step backs off on its own"
    );
    b.succeeded();
    assert_eq!(b.failed(Step::Read).as_secs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_never_answers_times_the_pass_out() {
    // A real socket that accepts and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let _conns: Vec<_> = listener.incoming().take(8).collect();
    });
    let mut config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    config.read_timeout = Some(Duration::from_millis(300));
    config.connect_timeout = Some(Duration::from_millis(300));
    // The test build links both of rustls' providers (the fake client brings aws-lc-rs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_from(config).unwrap();
    let c = leader(&client);
    let started = std::time::Instant::now();
    let e = pass(&c).await.unwrap_err();
    assert_eq!(e.step, Step::Read);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(c.state.last().is_none());
    assert_eq!(c.state.metrics.kube_api_errors.get(), 1);
}

/// Issue 13: in kube mode one object's broken Secret used to stop every pass. A Secret that
/// exists but the API server will not return (500/403), an ApiKey whose token Secret name would be over 253
/// characters (the API server refuses the name), and a token Secret the API server refuses to
/// create (a quota) each become that object's condition; every other object, and a revocation,
/// still publishes. (An empty `secretRef.name` never reaches the operator in kube mode: the
/// CRD's schema refuses it, which `the_api_server_refuses_what_the_crd_schema_refuses` shows.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_secret_or_name_is_that_objects_condition_and_the_rest_publishes() {
    let long = "k".repeat(250);
    // Counts GETs of the store's Secret, each failed as an etcd timeout would: a pass must make
    // none (it reads Secrets from the watch's cache).
    let secret_gets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = secret_gets.clone();
    let client = builder()
        .with_object(store_json("locked", false, "locked-credential"))
        .with_object(Secret {
            metadata: kube::core::ObjectMeta {
                name: Some("locked-credential".into()),
                namespace: Some(NS.into()),
                ..Default::default()
            },
            data: Some(std::collections::BTreeMap::from([(
                "api-key".to_owned(),
                k8s_openapi::ByteString(b"tpuf_locked".to_vec()),
            )])),
            ..Default::default()
        })
        .with_object(key_json(&long, json!({})))
        .with_object(key_json("quota", json!({})))
        .with_object(key_json("cohort", json!({})))
        .with_interceptor_funcs(
            interceptor::Funcs::new()
                .get(move |ctx| {
                    if ctx.name == "locked-credential" {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return Err(FakeError::Internal("etcdserver: request timed out".into()));
                    }
                    Ok(None)
                })
                .create(move |ctx| {
                    let name = ctx.object["metadata"]["name"].as_str().unwrap_or_default();
                    if name == "apikey-quota" {
                        return Err(FakeError::InvalidRequest(
                            "exceeded quota: secrets=100".into(),
                        ));
                    }
                    Ok(None)
                }),
        )
        .strict()
        .await;
    let c = leader(&client);
    let _ = pass(&c).await;
    let _ = pass(&c).await;
    // Minted keys reach the gateways through the key service: what it serves.
    let served = c.state.last().unwrap().keys.clone();
    let names: Vec<&str> = served.iter().map(|k| k.name.as_str()).collect();
    assert!(names.contains(&"cohort"), "{names:?}");
    assert!(!names.contains(&"quota") && !names.contains(&long.as_str()));
    let stores = api::<VectorStore>(&client);
    let reason = |s: Option<layergate_operator::crd::VectorStoreStatus>| {
        ready(&s.expect("a status").conditions)
    };
    // A pass reads Secrets from the watch's cache, never by a GET of its own: a GET of this
    // Secret that would fail does not matter (before issue 12 it was the store's condition).
    assert_eq!(
        secret_gets.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no pass GETs a Secret"
    );
    assert_eq!(
        reason(stores.get("locked").await.unwrap().status),
        ("True".into(), "Valid".into())
    );
    let keys = api::<ApiKey>(&client);
    let key_reason = |k: ApiKey| ready(&k.status.expect("a status").conditions);
    assert_eq!(
        key_reason(keys.get("quota").await.unwrap()),
        ("False".into(), "SecretUnreadable".into())
    );
    assert_eq!(
        key_reason(keys.get(&long).await.unwrap()),
        ("False".into(), "InvalidSpec".into())
    );
    // A revocation still publishes while all of that stays broken.
    keys.patch(
        "cohort",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"revoked": true}})),
    )
    .await
    .unwrap();
    let _ = pass(&c).await;
    assert!(
        !c.state
            .last()
            .unwrap()
            .keys
            .iter()
            .any(|k| k.name == "cohort"),
        "the revoked key left what the key service serves"
    );
}

/// Issue 13: the clients `run --source kube` builds bound every call. An API server that
/// accepts the connection and never answers fails the pass (and a control API mint) within
/// the read timeout; before, `Client::try_default()` had no read timeout and the call hung
/// for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_api_call_ends_within_the_clients_read_timeout() {
    use layergate_operator::kubeclient::{for_calls, for_watches, READ_TIMEOUT};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let _conns: Vec<_> = listener.incoming().take(16).collect();
        std::thread::sleep(Duration::from_secs(600));
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    assert_eq!(for_watches(config.clone()).read_timeout, None);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_from(for_calls(config)).unwrap();
    // A call (here the LIST a cache starts with) ends at the read timeout.
    let started = std::time::Instant::now();
    api::<ApiKey>(&client)
        .list(&Default::default())
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= READ_TIMEOUT - Duration::from_millis(500)
            && took < READ_TIMEOUT + Duration::from_secs(3),
        "{took:?}"
    );
    // A pass whose caches cannot list fails its read step at the sync bound.
    let c = leader(&client);
    let started = std::time::Instant::now();
    let e = c.pass().await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.step, Step::Read);
    let bound = layergate_operator::informer::SYNC_TIMEOUT;
    assert!(
        took >= bound - Duration::from_millis(100) && took < bound + Duration::from_secs(2),
        "{took:?}"
    );
    // The Lease's calls are bounded too (one renewal period each).
    let lock = LeaseLock::new(
        client,
        NS,
        "layergate-operator",
        "a",
        Duration::from_secs(3),
    );
    let started = std::time::Instant::now();
    assert!(lock
        .try_acquire(
            k8s_openapi::jiff::Timestamp::now(),
            std::time::Instant::now()
        )
        .await
        .is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Issue 13: Secret values are used exactly as stored. A store credential with a trailing
/// newline is `SecretValueInvalid` (before, it was sent with the newline and the store
/// showed as Unreachable); one that is not UTF-8 makes its Secret `SecretUnreadable` (before,
/// it was decoded lossily into another credential); a gateway credential with a newline is an
/// error naming its Secret (before, it was trimmed silently). Every other object publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_with_a_newline_or_not_utf8_are_conditions_not_silent_changes() {
    use base64::engine::general_purpose::STANDARD;
    let mut objects = support::demo_objects();
    for o in &mut objects {
        if o["kind"] == "Secret" && o["metadata"]["name"] == "layer" {
            o["data"]["primary-api-key"] = json!(STANDARD.encode("tpuf-primary-dev-key\n"));
        }
    }
    objects.push(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "binary", "namespace": NS},
        "data": {"api-key": STANDARD.encode([0x74u8, 0x70, 0xff, 0xfe, 0x21])}}));
    objects.push(serde_json::to_value(store_json("third", false, "binary")).unwrap());
    let client = kinds().with_runtime_objects(objects).strict().await;
    let c = leader(&client);
    pass(&c).await.unwrap();
    let status = |name: &'static str| {
        let client = client.clone();
        async move {
            let s = api::<VectorStore>(&client).get(name).await.unwrap();
            let conditions = s.status.unwrap().conditions;
            let c = conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .unwrap()
                .clone();
            (c.status, c.reason, c.message)
        }
    };
    let (ok, reason, message) = status("primary").await;
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("False", "SecretValueInvalid"),
        "{message}"
    );
    assert!(
        message.contains("newline") && message.contains("primary-api-key"),
        "{message}"
    );
    let (ok, reason, message) = status("third").await;
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("False", "SecretUnreadable"),
        "{message}"
    );
    assert!(message.contains("not UTF-8"), "{message}");
    let config = published(&client).await;
    let text = config.to_string();
    assert!(
        !text.contains("tpuf-primary-dev-key"),
        "the newline credential was rendered"
    );
    assert!(
        text.contains("tpuf-archive-dev-key"),
        "archive still publishes"
    );

    // The gateway credential: refused with the Secret's name, not trimmed.
    let name = layergate_operator::keyservice::CREDENTIAL_SECRET;
    let key = layergate_operator::keyservice::CREDENTIAL_KEY;
    let mut s = api::<Secret>(&client).get(name).await.unwrap();
    let value = String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap();
    s.data.as_mut().unwrap().insert(
        key.into(),
        k8s_openapi::ByteString(format!("{value}\n").into_bytes()),
    );
    api::<Secret>(&client)
        .replace(name, &PostParams::default(), &s)
        .await
        .unwrap();
    support::settle(&c, NS).await;
    let e = c.gateway_credential().await.unwrap_err();
    assert!(
        format!("{e:#}").contains(name) && format!("{e:#}").contains("newline"),
        "{e:#}"
    );
}
