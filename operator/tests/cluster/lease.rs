//! The Lease: hand-over only after expiry or release, clock skew, racing candidates, and
//! controllers that never write at the same time (a hung renewal, a pass longer than the Lease).

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::Client;
use kube_fake_client::{interceptor, Error as FakeError};
use layergate_operator::cluster::{Cluster, DEFAULT_OUTPUT_SECRET};
use layergate_operator::crd::ApiKey;
use layergate_operator::lease::{Leadership, LeaseLock};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::support;
use super::support::StrictBuild as _;
use super::{api, builder, key_json, pass, NS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_hands_over_only_after_it_expires_or_is_released() {
    let client = builder().strict().await;
    let d = Duration::from_secs(15);
    let a = LeaseLock::new(client.clone(), NS, "layergate-operator", "a", d);
    let b = LeaseLock::new(client.clone(), NS, "layergate-operator", "b", d);
    let (t0, l0) = (
        k8s_openapi::jiff::Timestamp::now(),
        std::time::Instant::now(),
    );
    let at = |s: u64| {
        (
            t0 + k8s_openapi::jiff::SignedDuration::from_secs(s as i64),
            l0 + Duration::from_secs(s),
        )
    };
    let (w, l) = at(0);
    assert_eq!(a.try_acquire(w, l).await.unwrap(), Leadership::Leading);
    assert_eq!(
        b.try_acquire(w, l).await.unwrap(),
        Leadership::Following("a".into())
    );
    let (w, l) = at(5);
    assert_eq!(
        a.try_acquire(w, l).await.unwrap(),
        Leadership::Leading,
        "renewal"
    );
    // b sees the renewal at 6 (its local clock); a stops renewing: b waits out the whole
    // duration from when it saw the last change.
    let (w, l) = at(6);
    assert_eq!(
        b.try_acquire(w, l).await.unwrap(),
        Leadership::Following("a".into())
    );
    let (w, l) = at(20);
    assert_eq!(
        b.try_acquire(w, l).await.unwrap(),
        Leadership::Following("a".into())
    );
    let (w, l) = at(21);
    assert_eq!(b.try_acquire(w, l).await.unwrap(), Leadership::Leading);
    let (w, l) = at(22);
    assert_eq!(
        a.try_acquire(w, l).await.unwrap(),
        Leadership::Following("b".into())
    );
    let lease = api::<Lease>(&client)
        .get("layergate-operator")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(lease.lease_transitions, Some(1));
    // Release on shutdown: a takes over at once.
    b.release().await.unwrap();
    let (w, l) = at(23);
    assert_eq!(a.try_acquire(w, l).await.unwrap(), Leadership::Leading);
    a.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_clock_is_a_minute_off_keeps_its_lease() {
    // Expiry is judged on the candidate's own clock since it last saw the Lease change, never
    // by comparing the holder's renewTime with the local wall clock.
    let client = builder().strict().await;
    let d = Duration::from_secs(15);
    let minute = k8s_openapi::jiff::SignedDuration::from_secs(60);
    let slow = LeaseLock::new(client.clone(), NS, "skew", "slow", d);
    let fast = LeaseLock::new(client.clone(), NS, "skew", "fast", d);
    let me = LeaseLock::new(client.clone(), NS, "skew", "me", d);
    let (t0, l0) = (
        k8s_openapi::jiff::Timestamp::now(),
        std::time::Instant::now(),
    );
    // The holder's wall clock runs 60 s behind: its renewTime looks a minute old.
    assert_eq!(
        slow.try_acquire(t0 - minute, l0).await.unwrap(),
        Leadership::Leading
    );
    assert_eq!(
        me.try_acquire(t0, l0).await.unwrap(),
        Leadership::Following("slow".into()),
        "a live Lease is not stolen because its holder's clock is behind"
    );
    let s = |n: u64| l0 + Duration::from_secs(n);
    assert_eq!(
        slow.try_acquire(
            t0 - minute + k8s_openapi::jiff::SignedDuration::from_secs(10),
            s(10)
        )
        .await
        .unwrap(),
        Leadership::Leading
    );
    assert_eq!(
        me.try_acquire(t0, s(12)).await.unwrap(),
        Leadership::Following("slow".into())
    );
    // It stops renewing: taken over a whole duration after the last change was seen.
    assert_eq!(
        me.try_acquire(t0, s(26)).await.unwrap(),
        Leadership::Following("slow".into())
    );
    assert_eq!(
        me.try_acquire(t0, s(27)).await.unwrap(),
        Leadership::Leading
    );
    me.release().await.unwrap();
    // A holder whose clock runs 60 s ahead cannot keep a dead Lease alive for a minute.
    let (t1, l1) = (
        k8s_openapi::jiff::Timestamp::now(),
        std::time::Instant::now(),
    );
    assert_eq!(
        fast.try_acquire(t1 + minute, l1).await.unwrap(),
        Leadership::Leading
    );
    assert_eq!(
        me.try_acquire(t1, l1).await.unwrap(),
        Leadership::Following("fast".into())
    );
    assert_eq!(
        me.try_acquire(t1, l1 + Duration::from_secs(16))
            .await
            .unwrap(),
        Leadership::Leading,
        "expired 15 s after the last observed change, whatever its renewTime says"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_racing_for_a_lease_cannot_both_win() {
    // Every Lease replace but the first is refused with 409, as an API server refuses a
    // stale resourceVersion.
    let replaced = Arc::new(AtomicU32::new(0));
    let seen = replaced.clone();
    let client = builder()
        .with_interceptor_funcs(interceptor::Funcs::new().replace(move |ctx| {
            if ctx.object["kind"] == "Lease" && seen.fetch_add(1, Ordering::SeqCst) > 0 {
                return Err(FakeError::Conflict("the object has been modified".into()));
            }
            Ok(None)
        }))
        .strict()
        .await;
    let (t0, l0) = (
        k8s_openapi::jiff::Timestamp::now(),
        std::time::Instant::now(),
    );
    let old = LeaseLock::new(client.clone(), NS, "l", "gone", Duration::from_secs(15));
    old.try_acquire(t0, l0).await.unwrap();
    let a = LeaseLock::new(client.clone(), NS, "l", "a", Duration::from_secs(15));
    let b = LeaseLock::new(client.clone(), NS, "l", "b", Duration::from_secs(15));
    // Both see the Lease at l0, and again a minute later unchanged: expired for both.
    a.try_acquire(t0, l0).await.unwrap();
    b.try_acquire(t0, l0).await.unwrap();
    let later = (
        t0 + k8s_openapi::jiff::SignedDuration::from_secs(60),
        l0 + Duration::from_secs(60),
    );
    let (ra, rb) = (
        a.try_acquire(later.0, later.1).await.unwrap(),
        b.try_acquire(later.0, later.1).await.unwrap(),
    );
    assert_eq!(
        [&ra, &rb]
            .iter()
            .filter(|r| ***r == Leadership::Leading)
            .count(),
        1,
        "{ra:?} {rb:?}"
    );
}

/// Two controllers (the loop `run --source kube` runs) on one cluster: one leads and
/// publishes, the other follows; when the leader shuts down it releases the Lease and the
/// follower takes over at its next renewal, without waiting for the Lease to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_one_writer_and_a_graceful_hand_over() {
    use layergate_operator::controller;
    use layergate_operator::lease::{LEASE_DURATION, RENEW_EVERY};
    let client = builder().strict().await;
    let start = |id: &'static str, stop: tokio::sync::oneshot::Receiver<()>| {
        let cluster = Arc::new(Cluster::new(
            client.clone(),
            NS,
            support::kube_settings(),
            DEFAULT_OUTPUT_SECRET,
        ));
        let lock = LeaseLock::new(client.clone(), NS, "layergate-operator", id, LEASE_DURATION);
        let c = cluster.clone();
        let task = tokio::spawn(async move {
            controller::run(c, lock, async { stop.await.unwrap_or(()) }).await
        });
        (cluster, task)
    };
    let (stop_a, rx_a) = tokio::sync::oneshot::channel();
    let (a, task_a) = start("a", rx_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_stop_b, rx_b) = tokio::sync::oneshot::channel();
    let (b, _task_b) = start("b", rx_b);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a.is_leader() && !b.is_leader());
    assert!(
        api::<Secret>(&client)
            .get_opt(DEFAULT_OUTPUT_SECRET)
            .await
            .unwrap()
            .is_some(),
        "the leader published"
    );
    assert!(b.state.last().is_some(), "the follower rendered in memory");
    let holder = |l: Lease| l.spec.unwrap().holder_identity;
    assert_eq!(
        holder(
            api::<Lease>(&client)
                .get("layergate-operator")
                .await
                .unwrap()
        )
        .as_deref(),
        Some("a")
    );

    stop_a.send(()).unwrap();
    task_a.await.unwrap().unwrap();
    assert!(!a.is_leader());
    let released = std::time::Instant::now();
    while !b.is_leader() {
        assert!(
            released.elapsed() < RENEW_EVERY + Duration::from_secs(2),
            "b did not take over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        holder(
            api::<Lease>(&client)
                .get("layergate-operator")
                .await
                .unwrap()
        )
        .as_deref(),
        Some("b")
    );
}

/// A kube client for one replica over the shared fake API server that records every write the
/// server accepted (who, when, and for Lease writes the holder it set), can make this
/// replica's Lease calls hang, and can slow its other writes down.
#[derive(Clone)]
struct Replica {
    inner: Client,
    id: &'static str,
    log: Arc<std::sync::Mutex<Vec<Applied>>>,
    hang_lease: Arc<std::sync::atomic::AtomicBool>,
    slow_writes_ms: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug, Clone)]
struct Applied {
    by: &'static str,
    at: std::time::Instant,
    /// For a Lease write, the holder it set; None for any other write.
    lease_holder: Option<Option<String>>,
    what: String,
}

impl tower_service::Service<hyper::Request<kube::client::Body>> for Replica {
    type Response = hyper::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, kube::Error>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), kube::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: hyper::Request<kube::client::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let lease = req.uri().path().contains("/leases");
            let write = req.method() != hyper::Method::GET;
            let what = format!("{} {}", req.method(), req.uri().path());
            if lease && this.hang_lease.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let slow = this.slow_writes_ms.load(Ordering::SeqCst);
            if write && !lease && slow > 0 {
                tokio::time::sleep(Duration::from_millis(slow)).await;
            }
            let resp = this.inner.send(req).await?;
            if !write || !resp.status().is_success() {
                return Ok(resp);
            }
            let (parts, body) = resp.into_parts();
            let bytes = body.collect_bytes().await?;
            let lease_holder = lease.then(|| {
                serde_json::from_slice::<Lease>(&bytes)
                    .ok()
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity)
            });
            this.log.lock().unwrap().push(Applied {
                by: this.id,
                at: std::time::Instant::now(),
                lease_holder,
                what,
            });
            Ok(hyper::Response::from_parts(parts, bytes.into()))
        })
    }
}

/// Asserts that every non-Lease write was applied while its writer was the last one the
/// Lease named: never two writers.
fn one_writer_at_a_time(log: &[Applied]) {
    let mut holder: Option<&str> = None;
    for w in log {
        match &w.lease_holder {
            Some(h) => holder = h.as_deref(),
            None => assert_eq!(
                Some(w.by),
                holder,
                "{} wrote ({}) while the Lease named {holder:?}; log: {log:#?}",
                w.by,
                w.what
            ),
        }
    }
}

struct Candidates {
    clusters: Vec<Arc<Cluster>>,
    replicas: Vec<Replica>,
    log: Arc<std::sync::Mutex<Vec<Applied>>>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// Two controllers ("a" first, then "b") on one fake API server, with a `lease` duration;
/// each of a's writes other than the Lease's takes `slow_a_ms`.
async fn candidates(client: &Client, lease: Duration, slow_a_ms: u64) -> Candidates {
    use layergate_operator::controller;
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut out = Candidates {
        clusters: vec![],
        replicas: vec![],
        log: log.clone(),
        stops: vec![],
    };
    for id in ["a", "b"] {
        let replica = Replica {
            inner: client.clone(),
            id,
            log: log.clone(),
            hang_lease: Arc::default(),
            slow_writes_ms: Arc::new(std::sync::atomic::AtomicU64::new(if id == "a" {
                slow_a_ms
            } else {
                0
            })),
        };
        let rc = Client::new(replica.clone(), NS);
        let cluster = Arc::new(Cluster::new(
            rc.clone(),
            NS,
            support::kube_settings(),
            DEFAULT_OUTPUT_SECRET,
        ));
        let lock = LeaseLock::new(rc, NS, "layergate-operator", id, lease);
        let (stop, rx) = tokio::sync::oneshot::channel();
        let c = cluster.clone();
        tokio::spawn(
            async move { controller::run(c, lock, async { rx.await.unwrap_or(()) }).await },
        );
        out.clusters.push(cluster);
        out.replicas.push(replica);
        out.stops.push(stop);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    out
}

/// Keeps creating ApiKeys (each one a mint, a status and a publish for the leader).
fn keep_changing(client: &Client) -> tokio::task::JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move {
        for i in 0.. {
            let _ = api::<ApiKey>(&client)
                .create(
                    &PostParams::default(),
                    &key_json(&format!("k{i}"), json!({})),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_hangs_stops_the_leader_writing_before_another_takes_over() {
    let client = builder().strict().await;
    let lease = Duration::from_secs(3);
    let c = candidates(&client, lease, 0).await;
    let (a, b) = (c.clusters[0].clone(), c.clusters[1].clone());
    let load = keep_changing(&client);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(a.is_leader() && !b.is_leader());
    // a's Lease calls never answer from now on; its passes (and the control API's, which
    // call pass() directly) go on.
    c.replicas[0].hang_lease.store(true, Ordering::SeqCst);
    let hung = std::time::Instant::now();
    while !b.is_leader() {
        let _ = pass(&a).await;
        assert!(hung.elapsed() < lease * 3, "b never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!a.is_leader(), "a stopped leading before b could take over");
    for _ in 0..20 {
        let _ = pass(&a).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.abort();
    let log = c.log.lock().unwrap().clone();
    assert!(log.iter().any(|w| w.by == "a" && w.lease_holder.is_none()));
    assert!(log.iter().any(|w| w.by == "b" && w.lease_holder.is_none()));
    one_writer_at_a_time(&log);
    drop(c.stops);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_longer_than_the_lease_does_not_stop_renewal() {
    // Five keys to mint, and every write of a's (but the Lease's) takes 700 ms: its first
    // pass (mints, publish, statuses) runs well past the 3 s Lease.
    let mut b = builder();
    for i in 0..5 {
        b = b.with_object(key_json(&format!("k{i}"), json!({})));
    }
    let client = b.strict().await;
    let lease = Duration::from_secs(3);
    let c = candidates(&client, lease, 700).await;
    let (a, b) = (c.clusters[0].clone(), c.clusters[1].clone());
    // The controller's own pass (triggered by the watch) runs for seconds; b looks on.
    let mut b_led = false;
    for _ in 0..240 {
        b_led |= b.is_leader();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!b_led, "b took over a Lease a was renewing");
    assert!(a.is_leader());
    let log = c.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .filter(|w| w.lease_holder.is_none())
            .all(|w| w.by == "a"),
        "only a wrote: {log:#?}"
    );
    let writes: Vec<_> = log.iter().filter(|w| w.lease_holder.is_none()).collect();
    let (first, last) = (writes[0].at, writes[writes.len() - 1].at);
    assert!(
        last - first > lease * 2,
        "the pass wrote for only {:?}",
        last - first
    );
    assert!(
        log.iter()
            .any(|w| w.lease_holder.is_some() && w.at > first && w.at < last),
        "a renewed while its pass was writing"
    );
    one_writer_at_a_time(&log);
    drop(c.stops);
}
