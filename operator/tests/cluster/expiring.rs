//! `ExpiringSoon`: an Active key whose `expiresAt` is within the window gets the condition and
//! one Warning Event; the incremental pass notices a key that enters the window.

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use layergate_operator::crd::{ApiKey, ApiKeyPhase};
use serde_json::json;

use super::support::StrictBuild as _;
use super::{api, builder, key_json, leader, pass};

const DAY: i64 = 86_400;

/// A key of lifetime `days` created `age` seconds ago.
fn aged_key(name: &str, days: i64, age: i64) -> ApiKey {
    let mut k = key_json(name, json!({"expiresAfter": format!("{days}d")}));
    k.metadata.creation_timestamp = Some(Time(Timestamp::now() - SignedDuration::from_secs(age)));
    k
}

async fn expiring_soon(client: &kube::Client, name: &str) -> Option<Condition> {
    let st = api::<ApiKey>(client)
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.phase, Some(ApiKeyPhase::Active), "{name}: {st:?}");
    st.conditions
        .into_iter()
        .find(|c| c.type_ == "ExpiringSoon")
}

async fn events_about(client: &kube::Client, name: &str) -> Vec<Event> {
    api::<Event>(client)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_expiring_within_the_window_is_expiring_soon_with_one_event_across_passes() {
    // 30 days, 25 of them gone: expires in 5 days, within the default 7. Another created now.
    let client = builder()
        .with_object(aged_key("soon", 30, 25 * DAY))
        .with_object(aged_key("later", 30, 0))
        .strict()
        .await;
    let c = leader(&client);
    let first = pass(&c).await.unwrap();
    let soon = expiring_soon(&client, "soon").await.expect("the condition");
    assert_eq!(
        (soon.status.as_str(), soon.reason.as_str()),
        ("True", "ExpiresWithin")
    );
    let expires_at = api::<ApiKey>(&client)
        .get("soon")
        .await
        .unwrap()
        .status
        .unwrap()
        .expires_at
        .unwrap();
    assert!(soon.message.contains(&expires_at), "{}", soon.message);
    assert!(soon.message.contains("mint a new key"), "{}", soon.message);
    let later = expiring_soon(&client, "later")
        .await
        .expect("the condition");
    assert_eq!(
        (later.status.as_str(), later.reason.as_str()),
        ("False", "ExpiresLater")
    );
    assert_eq!(first.events, 1, "soon's alone: {first:?}");

    // Several passes: no new status, no new Event.
    for _ in 0..3 {
        let again = pass(&c).await.unwrap();
        assert_eq!((again.statuses, again.events), (0, 0), "{again:?}");
    }
    let events = events_about(&client, "soon").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.reason.as_deref(), Some("ExpiresWithin"));
    assert_eq!(e.note.as_ref(), Some(&soon.message));
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.kind.as_deref()),
        Some("ApiKey")
    );
    assert!(events_about(&client, "later").await.is_empty());
}

/// A key that was judged (and its status settled) outside the window is judged again by a
/// later pass once its window started, and nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_key_that_enters_the_window_becomes_expiring_soon_on_a_later_pass() {
    // Expires in 7 days and `LEAD` seconds: its window starts `LEAD` seconds from now.
    const LEAD: i64 = 6;
    let client = builder()
        .with_object(aged_key("crossing", 30, 23 * DAY - LEAD))
        .strict()
        .await;
    let started = std::time::Instant::now();
    let c = leader(&client);
    pass(&c).await.unwrap();
    assert!(
        started.elapsed().as_secs() + 2 < LEAD as u64,
        "the first pass ran before the window started"
    );
    let before = expiring_soon(&client, "crossing").await.unwrap();
    assert_eq!(before.status, "False", "{before:?}");
    let settled = pass(&c).await.unwrap();
    assert_eq!((settled.statuses, settled.events), (0, 0), "{settled:?}");

    tokio::time::sleep(std::time::Duration::from_secs(LEAD as u64 + 1)).await;
    let crossed = pass(&c).await.unwrap();
    assert_eq!((crossed.statuses, crossed.events), (1, 1), "{crossed:?}");
    let after = expiring_soon(&client, "crossing").await.unwrap();
    assert_eq!(
        (after.status.as_str(), after.reason.as_str()),
        ("True", "ExpiresWithin")
    );
    let again = pass(&c).await.unwrap();
    assert_eq!((again.statuses, again.events), (0, 0), "{again:?}");
    assert_eq!(events_about(&client, "crossing").await.len(), 1);
}

/// `--expiring-soon off`: no key carries the condition, and none gets an Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_window_off_no_key_is_expiring_soon() {
    let client = builder()
        .with_object(aged_key("soon", 30, 25 * DAY))
        .strict()
        .await;
    let mut c = leader(&client);
    c.expiring_soon = None;
    let w = pass(&c).await.unwrap();
    assert_eq!(w.events, 0, "{w:?}");
    assert!(expiring_soon(&client, "soon").await.is_none());
}
