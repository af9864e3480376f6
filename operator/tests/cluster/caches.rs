//! The watch-fed caches: a change reaches a pass through the watch with no list, a minted
//! Secret is read back at once, a 410 relists, a deletion leaves the key service.

use kube::api::{DeleteParams, PostParams};
use layergate_operator::crd::{ApiKey, ApiKeyPhase};
use serde_json::json;
use std::time::Duration;

use super::support;
use super::support::{ClientBuilderJournal as _, StrictBuild as _};
use super::{api, builder, key_json, leader, pass, running, served, NS};

/// LISTs (GETs of a collection that are not watches) among recorded calls.
fn lists(calls: &[(String, String, String)]) -> Vec<String> {
    calls
        .iter()
        .filter(|(m, p, q)| {
            let segments = p.trim_start_matches('/').split('/').count();
            let collection = segments == if p.starts_with("/api/") { 5 } else { 6 };
            m == "GET" && collection && !q.contains("watch=")
        })
        .map(|(_, p, q)| format!("{p}?{q}"))
        .collect()
}

/// Issue 12: once the caches are synced, a change made through the API reaches a pass through
/// the watch, and no pass LISTs (or GETs a Secret): before, every pass listed every
/// VectorStore, Index and ApiKey and the Secrets' metadata (8.3 s of an 11.2 s pass at
/// 100,000 keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_a_pass_through_the_watch_with_no_list() {
    let fake = builder().strict().await;
    let tap = support::Tap::new(&fake);
    let (c, stop, task) = running(&tap).await;
    let synced = tap.calls.lock().unwrap().len();
    let before = lists(&tap.calls.lock().unwrap()[..synced]);
    assert!(
        before.iter().any(|l| l.contains("/apikeys?"))
            && before.iter().any(|l| l.contains("/secrets?")),
        "the caches listed first: {before:?}"
    );
    // Written by someone else (kubectl): only the watch tells the operator.
    api::<ApiKey>(&fake)
        .create(&PostParams::default(), &key_json("watched", json!({})))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while !served(&c).keys.iter().any(|k| k.name == "watched") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the change never reached a pass"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "a created ApiKey was served {:?} after its create",
        started.elapsed()
    );
    let status = |k: ApiKey| k.status.map(|s| s.phase);
    let started = std::time::Instant::now();
    while status(api::<ApiKey>(&fake).get("watched").await.unwrap())
        != Some(Some(ApiKeyPhase::Active))
    {
        assert!(started.elapsed() < Duration::from_secs(10), "no status");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    let calls = tap.calls.lock().unwrap().clone();
    let after = lists(&calls[synced..]);
    assert!(after.is_empty(), "LISTs after the first sync: {after:?}");
    let secret_gets: Vec<_> = calls[synced..]
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.contains("/secrets/"))
        .collect();
    assert!(secret_gets.is_empty(), "{secret_gets:?}");
}

/// Issue 12: a token this replica mints is seen by the pass that minted it and by the very
/// next one, even when the watch has not delivered it yet (read-your-writes: the create's
/// answer goes into the cache). Without that, the next pass would not find the token: the
/// key would not be served, and the pass would try to mint it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_secret_is_seen_by_the_very_next_pass() {
    let (fake, journal) = builder().strict_with_journal().await;
    let tap = support::Tap::new(&fake);
    let c = leader(&tap.client(NS));
    pass(&c).await.unwrap();
    api::<ApiKey>(&fake)
        .create(&PostParams::default(), &key_json("fresh", json!({})))
        .await
        .unwrap();
    support::settle(&c, NS).await;
    // From here the watch lags: nothing it would bring arrives.
    journal.hold_watches(true);
    let posts = |tap: &support::Tap| {
        tap.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p, _)| m == "POST" && p.ends_with("/secrets"))
            .count()
    };
    let created_before = posts(&tap);
    let minting = c.pass().await.unwrap();
    assert_eq!(minting.minted, 1, "{minting:?}");
    assert!(
        served(&c).keys.iter().any(|k| k.name == "fresh"),
        "served by the minting pass"
    );
    let next = c.pass().await.unwrap();
    assert_eq!(next.minted, 0, "{next:?}");
    assert!(
        served(&c).keys.iter().any(|k| k.name == "fresh"),
        "served by the next pass"
    );
    assert_eq!(
        posts(&tap) - created_before,
        1,
        "one create, never a second try"
    );
    journal.hold_watches(false);
}

/// Issue 12: a watch that resumes from a version the API server no longer keeps gets 410 Gone
/// and its cache lists again; an ApiKey deleted meanwhile (its DELETED event compacted away)
/// leaves the cache and the key service, one created meanwhile joins them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_relists_and_what_was_missed_is_caught_up() {
    let (fake, journal) = builder().strict_with_journal().await;
    let tap = support::Tap::new(&fake);
    let c = leader(&tap.client(NS));
    pass(&c).await.unwrap();
    let first = served(&c)
        .keys
        .iter()
        .map(|k| k.name.clone())
        .next()
        .expect("a demo key");
    journal.hold_watches(true);
    api::<ApiKey>(&fake)
        .delete(&first, &DeleteParams::default())
        .await
        .unwrap();
    api::<ApiKey>(&fake)
        .create(&PostParams::default(), &key_json("meanwhile", json!({})))
        .await
        .unwrap();
    let before = tap.calls.lock().unwrap().len();
    journal.compact();
    journal.end_watches();
    journal.hold_watches(false);
    let started = std::time::Instant::now();
    loop {
        let names: Vec<String> = c
            .caches()
            .keys
            .values()
            .iter()
            .map(|k| kube::ResourceExt::name_any(&**k))
            .collect();
        if !names.contains(&first) && names.contains(&"meanwhile".to_owned()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{names:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relists = lists(&tap.calls.lock().unwrap()[before..]);
    assert!(
        relists.iter().any(|l| l.contains("/apikeys?")),
        "{relists:?}"
    );
    c.pass().await.unwrap();
    let names: Vec<String> = served(&c).keys.iter().map(|k| k.name.clone()).collect();
    assert!(!names.contains(&first), "{names:?}");
    assert!(names.contains(&"meanwhile".to_owned()), "{names:?}");
}

/// Issue 12: an ApiKey deleted through the API (kubectl) leaves the cache through the watch's
/// DELETED event, and the pass it triggers takes it out of the key service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_leaves_the_key_service() {
    let fake = builder().strict().await;
    let tap = support::Tap::new(&fake);
    let (c, stop, task) = running(&tap).await;
    let gone = served(&c)
        .keys
        .iter()
        .map(|k| k.name.clone())
        .next()
        .expect("a demo key");
    api::<ApiKey>(&fake)
        .delete(&gone, &DeleteParams::default())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while served(&c).keys.iter().any(|k| k.name == gone) {
        assert!(started.elapsed() < Duration::from_secs(10), "still served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.caches().keys.get(&gone).is_none());
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
