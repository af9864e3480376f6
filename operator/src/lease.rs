//! Leader election with a `coordination.k8s.io/v1` Lease, so two replicas never write at
//! once. The holder renews every [`RENEW_EVERY`]; another replica takes the Lease over only
//! after it has gone unrenewed for its whole duration. Every write carries the
//! `resourceVersion` it read, so two candidates racing for the same expired Lease cannot both
//! win: the API server refuses the second with 409.
//!
//! A holder that cannot renew before its Lease expires must stop writing: [`LeaseLock::renew`]
//! says so, and the controller drops leadership before anyone else can take it.

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use std::time::Duration;

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and a standby retries).
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// Default Lease name.
pub const DEFAULT_LEASE: &str = "layergate-operator";

/// One replica's handle on the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    /// This replica's identity (the pod name in a cluster).
    pub identity: String,
    duration: Duration,
}

/// What a [`LeaseLock::try_acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This replica holds the Lease.
    Leading,
    /// Another replica holds it.
    Following(String),
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
        }
    }

    /// Takes or renews the Lease if it is free, expired or already ours, at time `now`.
    pub async fn try_acquire(&self, now: Timestamp) -> Result<Leadership> {
        let micro = MicroTime(now);
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(current) = self
            .api
            .get_opt(&self.name)
            .await
            .context("reading the Lease")?
        else {
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
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Leadership::Leading),
                Err(kube::Error::Api(e)) if e.is_already_exists() || e.is_conflict() => {
                    Ok(Leadership::Following(String::new()))
                }
                Err(e) => Err(e).context("creating the Lease"),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(t), Some(d)) => t.0.as_second() + i64::from(d) <= now.as_second(),
            _ => true,
        };
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
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Leadership::Leading),
            Err(kube::Error::Api(e)) if e.is_conflict() => Ok(Leadership::Following(holder)),
            Err(e) => Err(e).context("renewing the Lease"),
        }
    }

    /// Gives the Lease up (on shutdown), so a standby takes over at once instead of waiting
    /// for it to expire. Only a Lease this replica still holds is touched.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
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
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.is_conflict() => Ok(()),
            Err(e) => Err(e).context("releasing the Lease"),
        }
    }
}
