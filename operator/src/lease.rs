//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! does it, so two replicas never write at once:
//!
//! ```text
//!  elector task (own task)           pass / control API
//!  every renew_every:                before every write:
//!    get+replace Lease (each call      Cluster::ensure_leader()
//!    bounded by a timeout)               = Instant::now() < leader_until
//!    ok  -> leader_until = start + renew_deadline
//!    err -> nothing: leader_until lapses on its own
//! ```
//!
//! Expiry is judged by *locally observed* time: a candidate remembers when it last saw the
//! Lease record change (resourceVersion, holder or renewTime) on its own monotonic clock, and
//! takes the Lease over only after `leaseDurationSeconds` have passed on that clock without a
//! change. The holder's `renewTime` is written for humans but never compared with the local
//! clock, so clock skew between nodes cannot steal a live Lease. The holder stops writing at
//! `renew_deadline` (two thirds of the duration) after the start of its last successful
//! renewal; a follower cannot have observed that renewal before it started, so it waits at
//! least the whole duration from then. Every write carries the `resourceVersion` it read, so
//! two candidates racing for the same expired Lease cannot both win: the API server refuses
//! the second with 409.

use anyhow::{anyhow, Context, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a Lease stays valid without an observed change.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and a standby retries): `LEASE_DURATION * 2 / 15`.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How long after the start of its last successful renewal the holder keeps writing:
/// `LEASE_DURATION * 2 / 3`.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Default Lease name.
pub const DEFAULT_LEASE: &str = "layergate-operator";

/// The record as last seen, and when (local monotonic clock).
#[derive(Debug, Clone)]
struct Observed {
    record: (Option<String>, Option<String>, Option<Timestamp>),
    at: Instant,
}

/// One replica's handle on the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    /// This replica's identity (the pod name in a cluster).
    pub identity: String,
    duration: Duration,
    observed: Mutex<Option<Observed>>,
}

/// What a [`LeaseLock::try_acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This replica holds the Lease.
    Leading,
    /// Another replica holds it.
    Following(String),
}

fn record(lease: &Lease) -> (Option<String>, Option<String>, Option<Timestamp>) {
    let spec = lease.spec.as_ref();
    (
        lease.metadata.resource_version.clone(),
        spec.and_then(|s| s.holder_identity.clone()),
        spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
    )
}

impl LeaseLock {
    /// A handle on Lease `name` in `namespace`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> LeaseLock {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            observed: Mutex::new(None),
        }
    }

    /// The Lease duration this replica writes.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// How often to renew: two fifteenths of the duration (2 s of 15 s).
    pub fn renew_every(&self) -> Duration {
        self.duration * 2 / 15
    }

    /// How long after the start of a successful renewal this replica may write: two thirds
    /// of the duration (10 s of 15 s), so it stops well before any follower may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// Each API call of a renewal is cut off after this long (one renewal period).
    fn call_timeout(&self) -> Duration {
        self.renew_every().max(Duration::from_millis(100))
    }

    async fn call<T>(&self, what: &str, f: impl Future<Output = kube::Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.call_timeout(), f).await {
            Ok(r) => r.map_err(|e| anyhow!(e).context(format!("{what} the Lease"))),
            Err(_) => Err(anyhow!(
                "{what} the Lease: no answer within {:?}",
                self.call_timeout()
            )),
        }
    }

    /// Notes `lease` as seen at `local`; returns when its record last changed.
    fn observe(&self, lease: &Lease, local: Instant) -> Instant {
        let rec = record(lease);
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match observed.as_ref() {
            Some(o) if o.record == rec => o.at,
            _ => {
                *observed = Some(Observed {
                    record: rec,
                    at: local,
                });
                local
            }
        }
    }

    /// Takes or renews the Lease if it is free, expired or already ours. `wall` is written as
    /// `renewTime`/`acquireTime`; `local` (a monotonic instant) judges expiry: a Lease held by
    /// another replica is expired only when its record has not changed for its duration as
    /// observed by this replica.
    pub async fn try_acquire(&self, wall: Timestamp, local: Instant) -> Result<Leadership> {
        let micro = MicroTime(wall);
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(current) = self.call("reading", self.api.get_opt(&self.name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(micro.clone()),
                    renew_time: Some(micro),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match tokio::time::timeout(
                self.call_timeout(),
                self.api.create(&PostParams::default(), &lease),
            )
            .await
            {
                Ok(Ok(created)) => {
                    self.observe(&created, local);
                    Ok(Leadership::Leading)
                }
                Ok(Err(kube::Error::Api(e))) if e.is_already_exists() || e.is_conflict() => {
                    Ok(Leadership::Following(String::new()))
                }
                Ok(Err(e)) => Err(e).context("creating the Lease"),
                Err(_) => Err(anyhow!("creating the Lease: no answer in time")),
            };
        };
        let changed_at = self.observe(&current, local);
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        let held_for = spec
            .lease_duration_seconds
            .and_then(|d| u64::try_from(d).ok())
            .map_or(self.duration, Duration::from_secs);
        let expired = local.saturating_duration_since(changed_at) >= held_for;
        if !ours && !holder.is_empty() && !expired {
            return Ok(Leadership::Following(holder));
        }
        let mut lease = current;
        let mut next = spec;
        if !ours {
            next.acquire_time = Some(micro.clone());
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        }
        next.holder_identity = Some(self.identity.clone());
        next.lease_duration_seconds = Some(secs);
        next.renew_time = Some(micro);
        lease.spec = Some(next);
        // `replace` sends the resourceVersion read above: a racing writer gets 409.
        match tokio::time::timeout(
            self.call_timeout(),
            self.api.replace(&self.name, &PostParams::default(), &lease),
        )
        .await
        {
            Ok(Ok(written)) => {
                self.observe(&written, local);
                Ok(Leadership::Leading)
            }
            Ok(Err(kube::Error::Api(e))) if e.is_conflict() => Ok(Leadership::Following(holder)),
            Ok(Err(e)) => Err(e).context("renewing the Lease"),
            Err(_) => Err(anyhow!("renewing the Lease: no answer in time")),
        }
    }

    /// Gives the Lease up (on shutdown), so a standby takes over at once instead of waiting
    /// for it to expire. Only a Lease this replica still holds is touched.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.call("reading", self.api.get_opt(&self.name)).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match tokio::time::timeout(
            self.call_timeout(),
            self.api.replace(&self.name, &PostParams::default(), &lease),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(kube::Error::Api(e))) if e.is_conflict() => Ok(()),
            Ok(Err(e)) => Err(e).context("releasing the Lease"),
            Err(_) => Err(anyhow!("releasing the Lease: no answer in time")),
        }
    }
}
