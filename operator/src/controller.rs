//! The kube-mode control loop: watches trigger passes, debounced; the Lease decides whether
//! passes write; stores are re-probed on a jittered period; a failing step backs off on its
//! own; shutdown gives the Lease up.
//!
//! The Lease is renewed by its own task ([`elect`]), never behind a pass: a pass that runs
//! longer than the Lease does not stop renewal, and a renewal that hangs does not stop passes;
//! it only lets the local "leader until" deadline lapse, after which every write is refused.
//!
//! The watches are the caches' ([`crate::informer`]), the one mechanism that both feeds the
//! pass and triggers it: VectorStores, Indexes and ApiKeys trigger when they appear,
//! disappear or their `generation` moves (so the operator's own status writes do not),
//! Secrets only when one the last pass referenced, or the output Secret, changes. Every
//! replica keeps its caches, leader or not, so a hand-over starts from synced caches.

use crate::cluster::{referenced_secrets, Backoff, Cluster};
use crate::lease::{Leadership, LeaseLock};
use crate::state::{jitter, PROBE_INTERVAL};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// How long after the first change of a burst the pass runs (changes in between join it).
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// A pass runs at least this often without any change (expiry of keys, missed events).
pub const RESYNC: Duration = Duration::from_secs(60);
/// The loop turns at least this often, so `/healthz` can tell a stuck loop from a quiet one
/// ([`crate::state::STUCK_AFTER`]).
pub const HEARTBEAT: Duration = Duration::from_secs(10);

pub use crate::informer::Trigger;

/// Renews (or tries to take) the Lease every [`LeaseLock::renew_every`], for ever. Each
/// success moves the cluster's "leader until" to the start of that attempt plus the renew
/// deadline; a failure or a hang (each call is cut off) changes nothing, so the deadline
/// lapses on its own before any other replica may take over. `leading` is notified when this
/// replica starts to lead.
pub async fn elect(cluster: Arc<Cluster>, lock: Arc<LeaseLock>, leading: Arc<Notify>) {
    let mut tick = tokio::time::interval(lock.renew_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        let attempt = lock.try_acquire(k8s_openapi::jiff::Timestamp::now(), started);
        match tokio::time::timeout(lock.renew_deadline(), attempt).await {
            Ok(Ok(Leadership::Leading)) => {
                let was = cluster.is_leader();
                cluster.lead_until(Some(started + lock.renew_deadline()));
                if !was {
                    tracing::info!(identity = %lock.identity, "leading");
                    leading.notify_one();
                }
            }
            Ok(Ok(Leadership::Following(holder))) => {
                if cluster.is_leader() {
                    tracing::warn!(%holder, "lost the lease");
                }
                cluster.lead_until(None);
            }
            Ok(Err(e)) => tracing::warn!("lease: {e:#}"),
            Err(_) => tracing::warn!("lease: renewal did not finish in time"),
        }
    }
}

/// Runs the controller until `shutdown` completes, watching with the cluster's own client.
pub async fn run(
    cluster: Arc<Cluster>,
    lock: LeaseLock,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let watches = cluster.client.clone();
    run_with_watches(cluster, watches, lock, shutdown).await
}

/// Runs the controller until `shutdown` completes; the watches use `watches`, a client
/// without a read timeout ([`crate::kubeclient::for_watches`]).
pub async fn run_with_watches(
    cluster: Arc<Cluster>,
    watches: kube::Client,
    lock: LeaseLock,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let lock = Arc::new(lock);
    let leading = Arc::new(Notify::new());
    let elector = tokio::spawn(elect(cluster.clone(), lock.clone(), leading.clone()));
    let usage_writer = tokio::spawn(crate::cluster::usage::writer(cluster.clone()));
    let caches = cluster.start_caches(watches);
    let mut rx = caches.take_triggers().unwrap_or_else(|| {
        tracing::warn!("the caches' triggers are taken: passes run on the resync period only");
        mpsc::channel(1).1
    });
    tokio::pin!(shutdown);

    let mut backoff = Backoff::default();
    // The first pass waits for the caches' first full lists.
    let mut next_pass = None;
    let synced = {
        let caches = caches.clone();
        async move { caches.synced().await }
    };
    tokio::pin!(synced);
    let mut first_sync = true;
    let mut next_probe = Instant::now() + Duration::from_secs(1);
    let mut next_resync = Instant::now() + RESYNC;
    let far = || Instant::now() + Duration::from_secs(3600);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        cluster.state.beat();
        tokio::select! {
            _ = heartbeat.tick() => {}
            () = &mut shutdown => break,
            Some(trigger) = rx.recv() => {
                // Before the first sync the first pass is already coming; while one is due,
                // the change joins it (the set of referenced Secrets is only built when not).
                let relevant = || match &trigger {
                    Trigger::Object(_) => true,
                    Trigger::Secret(name) => *name == cluster.output_secret
                        || cluster.state.last().is_none_or(|p| referenced_secrets(&p.objects).contains(name)),
                };
                if !first_sync && next_pass.is_none() && relevant() {
                    tracing::debug!(?trigger, "change");
                    next_pass = Some(Instant::now() + DEBOUNCE);
                }
            }
            () = &mut synced, if first_sync => {
                first_sync = false;
                tracing::info!("caches synced");
                next_pass = Some(Instant::now());
            }
            () = leading.notified() => {
                if !first_sync {
                    next_pass = Some(Instant::now());
                }
            }
            () = tokio::time::sleep_until(next_pass.unwrap_or_else(far)), if next_pass.is_some() => {
                next_pass = None;
                match cluster.pass().await {
                    Ok(w) => {
                        backoff.succeeded();
                        next_resync = Instant::now() + RESYNC;
                        tracing::debug!(?w, "pass");
                    }
                    Err(e) => {
                        let wait = backoff.failed(e.step);
                        tracing::error!(step = ?e.step, retry_in = ?wait, failures = backoff.failures(e.step), "{:#}", e.error);
                        next_pass = Some(Instant::now() + wait);
                    }
                }
            }
            () = tokio::time::sleep_until(next_probe), if !first_sync => {
                // The probe ends with a pass (statuses judged against the objects as they are).
                match cluster.probe().await {
                    Ok(()) => backoff.succeeded(),
                    Err(e) => {
                        let wait = backoff.failed(e.step);
                        tracing::error!(step = ?e.step, retry_in = ?wait, "pass after probing: {:#}", e.error);
                        next_pass.get_or_insert_with(|| Instant::now() + wait);
                    }
                }
                next_probe = Instant::now() + PROBE_INTERVAL + jitter();
            }
            () = tokio::time::sleep_until(next_resync), if !first_sync => {
                next_resync = Instant::now() + RESYNC;
                next_pass.get_or_insert_with(Instant::now);
            }
        }
    }
    elector.abort();
    let _ = elector.await;
    usage_writer.abort();
    let _ = usage_writer.await;
    if cluster.is_leader() {
        cluster.set_leader(false);
        if let Err(e) = lock.release().await {
            tracing::warn!("releasing the lease: {e:#}");
        }
    }
    tracing::info!("stopped");
    Ok(())
}
