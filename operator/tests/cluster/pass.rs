//! The kube pass: what one leader pass publishes, the statuses, conditions and Events it
//! writes for each kind, and what it leaves alone (nothing changed, a restart, a follower).

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use layergate_operator::cluster::{Cluster, DEFAULT_OUTPUT_SECRET};
use layergate_operator::crd::{ApiKey, ApiKeyPhase, Index, VectorStore};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::support;
use super::support::StrictBuild as _;
use super::{
    api, builder, conflicting_index, key_json, leader, pass, published, ready, served, store_json,
    NS,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_publishes_the_rendering_statuses_and_mints_nothing_it_need_not() {
    let client = builder().strict().await;
    let c = leader(&client);
    let w = pass(&c).await.unwrap();
    assert!(w.published);
    assert_eq!(w.minted, 0, "shop-reader's token is pre-provisioned");
    assert_eq!(w.statuses, 4, "2 stores, 1 index, 1 key");
    let config = published(&client).await;
    assert_eq!(config["stores"].as_array().unwrap().len(), 2);
    assert_eq!(config["namespaces"]["logs-2026"], "archive");
    // Status, with observedGeneration, under our field manager.
    let primary = api::<VectorStore>(&client).get("primary").await.unwrap();
    let st = primary.status.unwrap();
    assert_eq!(ready(&st.conditions), ("True".into(), "Valid".into()));
    assert_eq!(st.observed_generation, primary.metadata.generation);
    let key = api::<ApiKey>(&client)
        .get("shop-reader")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(key.phase, Some(ApiKeyPhase::Active));
    let hash = hex::encode(Sha256::digest(b"hvl_demoShopReader0123456789abcdefABCDEF"));
    assert_eq!(
        key.lookup_hash.as_deref(),
        Some(format!("sha256:{hash}").as_str())
    );
    // The control cluster points at the operator's Service.
    let cds = api::<Secret>(&client)
        .get(DEFAULT_OUTPUT_SECRET)
        .await
        .unwrap()
        .data
        .unwrap();
    assert!(String::from_utf8_lossy(&cds["cds.json"].0).contains("layergate-operator.layer.svc"));

    // Nothing changed: nothing is written again.
    let again = pass(&c).await.unwrap();
    assert_eq!(
        (again.published, again.statuses, again.events),
        (false, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_and_delete_of_each_kind_reach_status_and_output() {
    let client = builder().strict().await;
    let c = leader(&client);
    pass(&c).await.unwrap();
    let pp = PostParams::default();

    // VectorStore: a new one with its Secret appears in the rendering.
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "eu", "namespace": NS}, "data": {"api-key": "ZXUta2V5"}}),
    )
    .unwrap();
    api::<Secret>(&client).create(&pp, &secret).await.unwrap();
    api::<VectorStore>(&client)
        .create(&pp, &store_json("eu", false, "eu"))
        .await
        .unwrap();
    pass(&c).await.unwrap();
    let stores: Vec<String> = published(&client).await["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(stores.contains(&"eu".to_owned()), "{stores:?}");
    // Update: an http endpoint that is not loopback is refused; the store keeps its last
    // valid form and says so.
    let patch = json!({"spec": {"endpoint": {"url": "http://example.com"}}});
    api::<VectorStore>(&client)
        .patch("eu", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let w = pass(&c).await.unwrap();
    assert!(w.events >= 1, "a Warning Event for the refused endpoint");
    let eu = api::<VectorStore>(&client).get("eu").await.unwrap();
    let (status, reason) = ready(&eu.status.unwrap().conditions);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidEndpoint")
    );
    assert!(
        published(&client).await["stores"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "eu"),
        "last valid form kept"
    );
    let events = api::<Event>(&client)
        .list(&Default::default())
        .await
        .unwrap();
    let message = &eu_ready_message(&client).await;
    assert!(
        events.items.iter().any(|e| {
            let about = e.regarding.as_ref().unwrap();
            e.reason.as_deref() == Some("InvalidEndpoint")
                && about.name.as_deref() == Some("eu")
                && about.kind.as_deref() == Some("VectorStore")
                && e.type_.as_deref() == Some("Warning")
                && e.note.as_ref() == Some(message)
        }),
        "{events:?}"
    );
    // Delete: gone from the rendering.
    api::<VectorStore>(&client)
        .delete("eu", &DeleteParams::default())
        .await
        .unwrap();
    pass(&c).await.unwrap();
    assert!(!published(&client).await["stores"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "eu"));

    // Index: create routes a namespace; delete unroutes it.
    let idx: Index = serde_json::from_value(json!({"apiVersion": "hevlayer.com/v1", "kind": "Index", "metadata": {"name": "cold", "namespace": NS}, "spec": {"backend": {"storeRef": "archive", "namespace": "cold-1"}}})).unwrap();
    api::<Index>(&client).create(&pp, &idx).await.unwrap();
    pass(&c).await.unwrap();
    assert_eq!(published(&client).await["namespaces"]["cold-1"], "archive");
    let st = api::<Index>(&client)
        .get("cold")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(ready(&st.conditions).0, "True");
    api::<Index>(&client)
        .delete("cold", &DeleteParams::default())
        .await
        .unwrap();
    pass(&c).await.unwrap();
    assert!(published(&client).await["namespaces"]
        .get("cold-1")
        .is_none());

    // ApiKey: create mints an owned Secret; the key is rendered with its hash.
    api::<ApiKey>(&client)
        .create(&pp, &key_json("cohort", json!({})))
        .await
        .unwrap();
    let w = pass(&c).await.unwrap();
    assert_eq!(w.minted, 1);
    let secret = api::<Secret>(&client).get("apikey-cohort").await.unwrap();
    let key = api::<ApiKey>(&client).get("cohort").await.unwrap();
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.name.as_str(),
            Some(owner.uid.as_str())
        ),
        ("ApiKey", "cohort", key.metadata.uid.as_deref())
    );
    assert_eq!(owner.controller, Some(true));
    let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    assert!(token.starts_with("hvl_") && token.len() == 36);
    let st = key.status.unwrap();
    assert_eq!(st.phase, Some(ApiKeyPhase::Active));
    let hash = format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())));
    assert_eq!(st.lookup_hash.as_deref(), Some(hash.as_str()));
    assert!(served(&c)
        .keys
        .iter()
        .any(|k| k.lookup_hash.to_string() == hash));
    assert!(published(&client).await.get("apiKeys").is_none());
    // Revoke: kept on record, gone from the gateway, the token Secret stays unread.
    let patch = json!({"spec": {"revoked": true}});
    api::<ApiKey>(&client)
        .patch("cohort", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    pass(&c).await.unwrap();
    let st = api::<ApiKey>(&client)
        .get("cohort")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.phase, Some(ApiKeyPhase::Revoked));
    assert!(st.revoked_at.is_some());
    assert_eq!(
        st.lookup_hash.as_deref(),
        Some(hash.as_str()),
        "the record keeps its hash"
    );
    assert!(!served(&c)
        .keys
        .iter()
        .any(|k| k.lookup_hash.to_string() == hash));
    // Delete: the owned Secret goes with it (the API server's garbage collection).
    api::<ApiKey>(&client)
        .delete("cohort", &DeleteParams::default())
        .await
        .unwrap();
    pass(&c).await.unwrap();
    assert!(api::<Secret>(&client)
        .get_opt("apikey-cohort")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_leaves_the_gateway() {
    let mut old = key_json("old", json!({"expiresAfter": "30d"}));
    old.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now()
            - k8s_openapi::jiff::SignedDuration::from_hours(24 * 31),
    ));
    let client = builder().with_object(old).strict().await;
    let c = leader(&client);
    pass(&c).await.unwrap();
    let st = api::<ApiKey>(&client)
        .get("old")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.phase, Some(ApiKeyPhase::Expired));
    assert_eq!(ready(&st.conditions).1, "Expired");
    assert!(!served(&c).keys.iter().any(|k| k.name == "old"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_deleted_under_a_live_store_keeps_its_last_valid_form() {
    let client = builder().strict().await;
    let c = leader(&client);
    pass(&c).await.unwrap();
    api::<Secret>(&client)
        .delete("layer", &DeleteParams::default())
        .await
        .unwrap();
    let w = pass(&c).await.unwrap();
    assert!(
        !w.published,
        "the rendering is unchanged: both stores keep their last valid form"
    );
    let primary = api::<VectorStore>(&client)
        .get("primary")
        .await
        .unwrap()
        .status
        .unwrap();
    let c0 = primary
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (c0.status.as_str(), c0.reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(c0.message.contains("last valid"), "{}", c0.message);
    assert_eq!(
        published(&client).await["stores"].as_array().unwrap().len(),
        2
    );
}

/// The Ready message of the store `eu`.
async fn eu_ready_message(client: &kube::Client) -> String {
    let eu = api::<VectorStore>(client).get("eu").await.unwrap();
    let st = eu.status.unwrap();
    st.conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message
}

/// The Warning Event is an events.k8s.io/v1 Event from kube's Recorder, about the object,
/// reported by the operator and this replica; a new message for the same reason on the same
/// object is recorded (once per reason and message), as the first Event's series counted up:
/// the API server keeps an Event's note, so the note stays the first message and the
/// object's condition has the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_event_is_recorded_once_per_message_and_a_repeat_counts_in_its_series() {
    let client = builder()
        .with_object(store_json("broken", false, "missing"))
        .strict()
        .await;
    let c = Cluster::new(
        client.clone(),
        NS,
        support::kube_settings(),
        DEFAULT_OUTPUT_SECRET,
    )
    .with_identity("layergate-operator-0");
    c.set_leader(true);
    let w = pass(&c).await.unwrap();
    assert_eq!(w.events, 1, "{w:?}");
    let broken = api::<VectorStore>(&client).get("broken").await.unwrap();
    let first = broken
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(first.reason, "SecretNotFound");
    let events = api::<Event>(&client)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.reason.as_deref(), Some("SecretNotFound"));
    assert_eq!(e.note.as_ref(), Some(&first.message));
    assert_eq!(e.action.as_deref(), Some("Reconcile"));
    assert_eq!(
        e.reporting_controller.as_deref(),
        Some("layergate-operator")
    );
    assert_eq!(
        e.reporting_instance.as_deref(),
        Some("layergate-operator-0")
    );
    assert!(e.event_time.is_some());
    assert_eq!(e.series, None);
    assert_eq!(e.metadata.namespace.as_deref(), Some(NS));
    let about = e.regarding.as_ref().unwrap();
    assert_eq!(
        (
            about.api_version.as_deref(),
            about.kind.as_deref(),
            about.name.as_deref(),
            about.namespace.as_deref(),
            about.uid.as_ref(),
        ),
        (
            Some("hevlayer.com/v1alpha1"),
            Some("VectorStore"),
            Some("broken"),
            Some(NS),
            broken.metadata.uid.as_ref(),
        )
    );

    // Another missing Secret: the same reason, a new message.
    let patch = json!({"spec": {"credential": {"secretRef": {"name": "missing-too"}}}});
    api::<VectorStore>(&client)
        .patch("broken", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let w = pass(&c).await.unwrap();
    assert_eq!((w.statuses, w.events), (1, 1), "{w:?}");
    let second = api::<VectorStore>(&client)
        .get("broken")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(second.reason, "SecretNotFound");
    assert!(second.message.contains("missing-too"), "{}", second.message);
    let events = api::<Event>(&client)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    assert_eq!(events.len(), 1, "{events:?}");
    let series = events[0].series.as_ref().expect("a series");
    assert_eq!(series.count, 2);
    assert_eq!(events[0].note.as_ref(), Some(&first.message));

    // Nothing changed: nothing recorded again.
    let again = pass(&c).await.unwrap();
    assert_eq!((again.statuses, again.events), (0, 0));
    let events = api::<Event>(&client)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].series.as_ref().map(|s| s.count), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_default_stores_and_an_index_conflict_are_conditions_and_events() {
    let dup = conflicting_index();
    let mut second = store_json("second", true, "layer");
    second.spec.credential.secret_ref.key = "primary-api-key".into();
    let client = builder()
        .with_object(dup)
        .with_object(second)
        .strict()
        .await;
    let c = leader(&client);
    let w = pass(&c).await.unwrap();
    for name in ["primary", "second"] {
        let st = api::<VectorStore>(&client)
            .get(name)
            .await
            .unwrap()
            .status
            .unwrap();
        assert_eq!(
            ready(&st.conditions),
            ("False".into(), "MultipleDefaults".into()),
            "{name}"
        );
    }
    let st = api::<Index>(&client)
        .get("logs-copy")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(ready(&st.conditions), ("False".into(), "Conflict".into()));
    let msg = &st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        msg.contains("\"logs\"") || msg.contains(" logs"),
        "names the Index that owns it: {msg}"
    );
    assert!(w.events >= 3, "{w:?}");
}

/// A probe round after a pass that wrote a status and an Event writes neither again (it
/// judges the objects as they are now). The demo's stores are loopback addresses with nothing
/// listening: the probe finds them unreachable at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_after_a_pass_repeats_no_status_write_and_no_event() {
    let dup = conflicting_index();
    let client = builder().with_object(dup).strict().await;
    let c = leader(&client);
    let w = pass(&c).await.unwrap();
    assert_eq!(w.events, 1, "the conflict");
    c.probe().await.unwrap();
    let st = api::<VectorStore>(&client)
        .get("primary")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        (st.reachable, ready(&st.conditions).1.as_str()),
        (Some(false), "Unreachable")
    );
    c.probe().await.unwrap();
    let events = api::<Event>(&client)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    let conflicts: Vec<_> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Conflict"))
        .collect();
    assert_eq!(conflicts.len(), 1, "{events:?}");
    assert_eq!(conflicts[0].series, None, "recorded once, never repeated");
    let again = pass(&c).await.unwrap();
    assert_eq!((again.statuses, again.events), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_finds_its_outputs_and_rewrites_nothing() {
    let client = builder()
        .with_object(key_json("cohort", json!({})))
        .strict()
        .await;
    pass(&leader(&client)).await.unwrap();
    let token = api::<Secret>(&client)
        .get("apikey-cohort")
        .await
        .unwrap()
        .data
        .unwrap()["token"]
        .clone();
    // A new process: empty memory, same cluster.
    let restarted = leader(&client);
    let w = pass(&restarted).await.unwrap();
    assert_eq!(
        (w.minted, w.published, w.statuses, w.events),
        (0, false, 0, 0)
    );
    let after = api::<Secret>(&client)
        .get("apikey-cohort")
        .await
        .unwrap()
        .data
        .unwrap()["token"]
        .clone();
    assert_eq!(token, after, "the token is never re-minted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_renders_in_memory_and_writes_nothing() {
    let client = builder()
        .with_object(key_json("cohort", json!({})))
        .strict()
        .await;
    let c = Cluster::new(
        client.clone(),
        NS,
        support::kube_settings(),
        DEFAULT_OUTPUT_SECRET,
    );
    let w = pass(&c).await.unwrap();
    assert_eq!((w.minted, w.published, w.statuses), (0, false, 0));
    assert!(api::<Secret>(&client)
        .get_opt(DEFAULT_OUTPUT_SECRET)
        .await
        .unwrap()
        .is_none());
    assert!(api::<Secret>(&client)
        .get_opt("apikey-cohort")
        .await
        .unwrap()
        .is_none());
    assert!(
        c.state.last().is_some(),
        "the control API can answer from a follower"
    );
}
