//! The strict fake API server refuses and serves as the real one does: CRD schemas, the status
//! subresource, object names, watches.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use layergate_operator::crd::{ApiKey, VectorStore};
use serde_json::{json, Value};
use std::time::Duration;

use super::support::{ClientBuilderJournal as _, StrictBuild as _};
use super::{api, builder, key_json, store_json, NS};

/// Issue 15: custom resources are checked against the generated CRD schema
/// (operator/crds/hevlayer.com.yaml), as the real API server checks them, on create and on
/// patch; the plain fake stores each of these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_what_the_crd_schema_refuses() {
    let client = builder().strict().await;
    let plain = builder().build().await.unwrap();
    let stores = api::<VectorStore>(&client);
    let keys = api::<ApiKey>(&client);
    let refused = |e: kube::Error| match e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.message
        }
        other => panic!("not an API refusal: {other}"),
    };
    // An empty secretRef.name (minLength, pattern).
    let empty = store_json("unnamed", false, "");
    let msg = refused(
        stores
            .create(&PostParams::default(), &empty)
            .await
            .unwrap_err(),
    );
    assert!(
        msg.contains("spec.credential.secretRef.name")
            && msg.contains("should be at least 1 chars long"),
        "{msg}"
    );
    api::<VectorStore>(&plain)
        .create(&PostParams::default(), &empty)
        .await
        .unwrap();
    // A scope outside the enum, on create and by a patch of a stored key.
    let resource = kube::api::ApiResource::erase::<ApiKey>(&());
    let raw = Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), NS, &resource);
    let bad_scope: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "hevlayer.com/v1alpha1", "kind": "ApiKey",
        "metadata": {"name": "over-scoped", "namespace": NS},
        "spec": {"entitlements": {"vectorstore.primary": {"scopes": ["root"], "namespaces": ["a-*"]}}}
    }))
    .unwrap();
    let msg = refused(
        raw.create(&PostParams::default(), &bad_scope)
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("Unsupported value: \"root\""), "{msg}");
    keys.create(&PostParams::default(), &key_json("fine", json!({})))
        .await
        .unwrap();
    let patch = json!({"spec": {"entitlements": {"vectorstore.primary": {"scopes": ["root"]}}}});
    let msg = refused(
        raw.patch("fine", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("spec.entitlements"), "{msg}");
    let stored = keys.get("fine").await.unwrap();
    let scopes = serde_json::to_value(&stored.spec).unwrap()["entitlements"]["vectorstore.primary"]
        ["scopes"]
        .clone();
    assert_eq!(scopes, json!(["read"]));
    // A wrong type, and a field the schema does not name.
    let stores_raw = Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        NS,
        &kube::api::ApiResource::erase::<VectorStore>(&()),
    );
    let patch = json!({"spec": {"default": "yes", "colour": "blue"}});
    let msg = refused(
        stores_raw
            .patch("primary", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_err(),
    );
    assert!(
        msg.contains("spec.default: Invalid value: \"yes\"")
            && msg.contains("spec.colour: unknown field"),
        "{msg}"
    );
}

/// Issue 15: `status` is written only through the status subresource, as on a real API server:
/// a create or a main-resource patch that carries one has it dropped, and a status write
/// changes nothing but the status. The plain fake keeps a status given on create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_written_only_through_the_status_subresource() {
    let client = builder().strict().await;
    let plain = builder().build().await.unwrap();
    let mut with_status =
        serde_json::to_value(store_json("side", false, "store-credential")).unwrap();
    with_status["status"] = json!({"reachable": true});
    let with_status: VectorStore = serde_json::from_value(with_status).unwrap();
    let stores = api::<VectorStore>(&client);
    let created = stores
        .create(&PostParams::default(), &with_status)
        .await
        .unwrap();
    assert!(created.status.is_none(), "{:?}", created.status);
    let kept = api::<VectorStore>(&plain)
        .create(&PostParams::default(), &with_status)
        .await
        .unwrap();
    assert!(kept.status.is_some(), "the plain fake kept the status");
    let patch = json!({"status": {"reachable": false}, "spec": {"default": true}});
    let patched = stores
        .patch("side", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert!(patched.status.is_none() && patched.spec.default == Some(true));
    let patch = json!({"status": {"reachable": true}, "spec": {"default": false}});
    let patched = stores
        .patch_status("side", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(patched.spec.default, Some(true));
    assert_eq!(patched.status.unwrap().reachable, Some(true));
}

/// Issue 15: object names are DNS-1123 subdomains of at most 253 characters; the plain fake
/// takes any name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_real_api_server_refuses_are_refused() {
    let client = builder().strict().await;
    let plain = builder().build().await.unwrap();
    for name in ["Upper", "under_score", "-dash", "dot.", &"a".repeat(254)] {
        let s: Secret = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        let err = api::<Secret>(&client)
            .create(&PostParams::default(), &s)
            .await
            .unwrap_err();
        assert!(
            format!("{err}").contains("RFC 1123 subdomain"),
            "{name}: {err}"
        );
        api::<Secret>(&plain)
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
    }
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "a.b-c.0"}})).unwrap();
    api::<Secret>(&client)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

/// events.k8s.io/v1 Events are checked as the Events API checks them: a note over 1 kB, a
/// missing action, a core/v1 field or a series of 1 is refused on create, and a patch may
/// count the series up but not change the note; the plain fake stores each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_events_api_refuses_are_refused() {
    use super::support::EVENT_NOTE_LIMIT;
    use k8s_openapi::api::events::v1::Event;
    let client = builder().strict().await;
    let plain = builder().build().await.unwrap();
    let event = |name: &str, extra: Value| -> Event {
        let mut v = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": name, "namespace": NS},
            "eventTime": "2030-01-01T00:00:00.000000Z", "type": "Warning",
            "reason": "SecretNotFound", "action": "Reconcile", "note": "Secret missing",
            "reportingController": "layergate-operator", "reportingInstance": "operator-0",
            "regarding": {"apiVersion": "hevlayer.com/v1alpha1", "kind": "VectorStore",
                          "name": "primary", "namespace": NS},
        });
        super::support::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    };
    let refused = |e: kube::Error| match e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.message
        }
        other => panic!("not an API refusal: {other}"),
    };
    let pp = PostParams::default();
    for (extra, field) in [
        (json!({"note": "x".repeat(EVENT_NOTE_LIMIT + 1)}), "note"),
        (json!({"action": null}), "action: Required"),
        (json!({"reason": "R".repeat(129)}), "reason"),
        (json!({"type": "Error"}), "type"),
        (json!({"eventTime": null}), "eventTime: Required"),
        (json!({"deprecatedCount": 1}), "deprecatedCount"),
        (
            json!({"reportingController": "layergate operator"}),
            "reportingController",
        ),
        (
            json!({"series": {"count": 1, "lastObservedTime": "2030-01-01T00:00:00.000000Z"}}),
            "series.count",
        ),
    ] {
        let e = event("refused", extra.clone());
        let msg = refused(
            Api::<Event>::namespaced(client.clone(), NS)
                .create(&pp, &e)
                .await
                .unwrap_err(),
        );
        assert!(msg.contains(field), "{extra}: {msg}");
        let plain_events = Api::<Event>::namespaced(plain.clone(), NS);
        plain_events.create(&pp, &e).await.unwrap();
        plain_events
            .delete("refused", &DeleteParams::default())
            .await
            .unwrap();
    }
    let events = Api::<Event>::namespaced(client.clone(), NS);
    let fine = "x".repeat(EVENT_NOTE_LIMIT);
    events
        .create(&pp, &event("fine", json!({"note": fine})))
        .await
        .unwrap();
    // A repeat counts the series up; the note stays.
    let series = json!({"series": {"count": 2, "lastObservedTime": "2030-01-01T00:01:00.000000Z"}});
    let counted = events
        .patch("fine", &PatchParams::default(), &Patch::Merge(&series))
        .await
        .unwrap();
    assert_eq!(counted.series.unwrap().count, 2);
    let msg = refused(
        events
            .patch(
                "fine",
                &PatchParams::default(),
                &Patch::Merge(&json!({"note": "another message"})),
            )
            .await
            .unwrap_err(),
    );
    assert!(
        msg.contains("note: Invalid value: field is immutable"),
        "{msg}"
    );
    assert_eq!(events.get("fine").await.unwrap().note.as_ref(), Some(&fine));
}

/// Lines of a watch response, as the client's raw request reads them.
async fn watch_lines(client: &Client, path_and_query: &str) -> (u16, Vec<Value>) {
    use futures::AsyncBufReadExt as _;
    use futures::TryStreamExt as _;
    let req = hyper::Request::get(path_and_query)
        .body(Vec::new())
        .unwrap();
    match client.request_stream(req).await {
        Ok(body) => {
            let lines: Vec<String> = std::pin::pin!(body).lines().try_collect().await.unwrap();
            let events = lines
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (200, events)
        }
        Err(kube::Error::Api(e)) => (e.code, Vec::new()),
        Err(e) => panic!("{e}"),
    }
}

/// Issue 12: the strict fake serves `watch=true` as the real API server does (kube-fake-client
/// has none): lists carry the resourceVersion they were read at (continued pages the first
/// page's); a watch from it streams ADDED, MODIFIED and DELETED of every later write (a
/// deletion at a version of its own, the dependents garbage-collected with an object too),
/// ends at `timeoutSeconds` with a BOOKMARK; a version older than the journal keeps is an
/// ERROR event with a 410 Expired Status; selectors, which it does not apply, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_serves_watches_as_the_real_api_server_does() {
    let (client, journal) = builder()
        .with_object(key_json("one", json!({})))
        .with_object(key_json("two", json!({})))
        .strict_with_journal()
        .await;
    let keys = "/apis/hevlayer.com/v1alpha1/namespaces/layer/apikeys";
    let listed = api::<ApiKey>(&client)
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .unwrap();
    let from = listed.metadata.resource_version.clone().unwrap();
    assert_eq!(
        from,
        journal.latest().to_string(),
        "a list carries the latest version"
    );
    let token = listed
        .metadata
        .continue_
        .clone()
        .expect("more than one key");
    let next = api::<ApiKey>(&client)
        .list(
            &kube::api::ListParams::default()
                .limit(1)
                .continue_token(&token),
        )
        .await
        .unwrap();
    assert_eq!(
        next.metadata.resource_version.as_deref(),
        Some(from.as_str())
    );

    let created = api::<ApiKey>(&client)
        .create(&PostParams::default(), &key_json("watched", json!({})))
        .await
        .unwrap();
    let token = Secret {
        metadata: kube::core::ObjectMeta {
            name: Some("apikey-watched".into()),
            owner_references: Some(vec![layergate_operator::cluster::owner(&created).unwrap()]),
            ..Default::default()
        },
        data: Some(std::collections::BTreeMap::from([(
            "token".to_owned(),
            k8s_openapi::ByteString(b"hvl_x".to_vec()),
        )])),
        ..Default::default()
    };
    api::<Secret>(&client)
        .create(&PostParams::default(), &token)
        .await
        .unwrap();
    api::<ApiKey>(&client)
        .patch(
            "watched",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revoked": true}})),
        )
        .await
        .unwrap();
    api::<ApiKey>(&client)
        .delete("watched", &DeleteParams::default())
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let (code, events) = watch_lines(
        &client,
        &format!(
            "{keys}?watch=true&resourceVersion={from}&timeoutSeconds=1&allowWatchBookmarks=true"
        ),
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(900)
            && started.elapsed() < Duration::from_secs(5),
        "timeoutSeconds: {:?}",
        started.elapsed()
    );
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["ADDED", "MODIFIED", "DELETED", "BOOKMARK"],
        "{events:?}"
    );
    let versions: Vec<u64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert_eq!(events[1]["object"]["spec"]["revoked"], true);
    // The owned Secret went with its key, and the Secrets' watch says so.
    let (_, secrets) = watch_lines(
        &client,
        &format!(
            "/api/v1/namespaces/layer/secrets?watch=true&resourceVersion={from}&timeoutSeconds=1"
        ),
    )
    .await;
    let kinds: Vec<(&str, &str)> = secrets
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("ADDED", "apikey-watched"), ("DELETED", "apikey-watched")]
    );

    // Compacted away: 410 Gone, as an ERROR event.
    journal.compact();
    let (code, events) = watch_lines(
        &client,
        &format!("{keys}?watch=true&resourceVersion={from}&timeoutSeconds=1"),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
    // From the latest version: nothing until a write.
    let latest = journal.latest();
    let (_, events) = watch_lines(
        &client,
        &format!("{keys}?watch=true&resourceVersion={latest}&timeoutSeconds=1"),
    )
    .await;
    assert!(events.is_empty(), "{events:?}");
    // A selector it would not apply is refused, never answered unfiltered.
    let (code, _) = watch_lines(
        &client,
        &format!("{keys}?watch=true&resourceVersion={latest}&labelSelector=a%3Db"),
    )
    .await;
    assert_eq!(code, 400);
}
