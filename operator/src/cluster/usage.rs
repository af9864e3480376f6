//! Kube mode's usage writer (issue 24): what the gateways reported, written into each ApiKey's
//! `status.lastSeenAt` and `status.usage` by the leader, at most [`Cluster::usage_writes`] a
//! second, oldest first — so 100,000 keys in use cost the API server a bounded stream of
//! writes, not one per report.
//!
//! The two fields are this writer's alone: it server-side applies them under its own field
//! manager, [`USAGE_FIELD_MANAGER`], and a pass's status apply (the operator's manager) never
//! names them, so neither removes what the other wrote. What a crash can lose: the counts a
//! key gathered since its last write — at most [`crate::usage::LAST_SEEN_STEP`] of them while
//! writes keep up, longer (the number of keys in use ÷ the write rate) when they do not.

use super::*;
use crate::usage::Due;

/// The field manager of `status.lastSeenAt` and `status.usage`.
pub const USAGE_FIELD_MANAGER: &str = "layergate-usage";

/// The field manager of `status.quotaSpentUntil` (its own: the usage writer's applies name
/// only its two fields, and an apply drops what its manager no longer names).
pub const QUOTA_FIELD_MANAGER: &str = "layergate-quota";

/// Usage status writes a second, at most (`--usage-writes-per-second`).
pub const DEFAULT_USAGE_WRITES_PER_SECOND: usize = 20;

impl Cluster {
    /// Writes the usage of up to `max` keys whose status is behind, oldest first, when this
    /// replica leads; the number written. A key whose object is gone (deleted, or another key
    /// of the same name now) is forgotten, not written.
    pub async fn write_usage(&self, max: usize) -> Result<usize> {
        if !self.is_leader() {
            return Ok(0);
        }
        let Some(pass) = self.state.last() else {
            return Ok(0);
        };
        let at = now();
        let book = &self.state.usage;
        let mut written = 0;
        for due in book.due(max, at) {
            let current = pass.index().with_id(&pass, &due.key_id);
            if current.and_then(|k| k.metadata.name.as_deref()) != Some(due.name.as_str()) {
                book.retain(|id| id != due.key_id);
                continue;
            }
            self.ensure_leader()?;
            match self.apply_usage(&due).await {
                Ok(obj) => {
                    self.caches().merge(obj);
                    book.stored(&due, at);
                    self.state.metrics.usage_writes.inc();
                    written += 1;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    book.retain(|id| id != due.key_id);
                }
                Err(e) => {
                    self.state.metrics.kube_api_errors.inc();
                    return Err(e)
                        .with_context(|| format!("writing the usage of ApiKey {}", due.name));
                }
            }
        }
        Ok(written)
    }

    /// Writes `status.quotaSpentUntil` on the ApiKey `name` (the leader, when a report spends a
    /// quota): every replica's pass reads it and serves the key refused until then. Not
    /// rate-limited: one write per key and quota period at most.
    pub async fn write_quota_mark(&self, name: &str, until: i64) -> Result<()> {
        self.ensure_leader()?;
        let patch = serde_json::json!({
            "apiVersion": "hevlayer.com/v1alpha1",
            "kind": "ApiKey",
            "status": {"quotaSpentUntil": validate::rfc3339(until)},
        });
        let written = self
            .api::<ApiKey>()
            .patch_status(
                name,
                &PatchParams::apply(QUOTA_FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .with_context(|| format!("marking ApiKey {name}'s quota spent"))?;
        self.caches().merge(written);
        Ok(())
    }

    async fn apply_usage(&self, due: &Due) -> kube::Result<ApiKey> {
        let patch = serde_json::json!({
            "apiVersion": "hevlayer.com/v1alpha1",
            "kind": "ApiKey",
            "status": {
                "lastSeenAt": due.usage.last_seen.map(validate::rfc3339),
                "usage": due.usage.total.to_status(),
            },
        });
        self.api::<ApiKey>()
            .patch_status(
                &due.name,
                &PatchParams::apply(USAGE_FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
    }
}

/// Writes usage once a second for ever (the leader's writes; a follower's turn does nothing),
/// and once a minute forgets the usage of keys whose ApiKey is gone, so the book holds only
/// keys that exist.
pub async fn writer(cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for turn in 1u64.. {
        tick.tick().await;
        if let Err(e) = cluster.write_usage(cluster.usage_writes).await {
            tracing::warn!("usage: {e:#}");
        }
        if turn % 60 == 0 {
            if let Some(pass) = cluster.state.last() {
                let index = pass.index();
                cluster
                    .state
                    .usage
                    .retain(|id| index.with_id(&pass, id).is_some());
            }
        }
    }
}
