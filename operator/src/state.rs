//! What a running operator keeps, whichever source feeds it: the last good pass, probe results,
//! counters, the key service and the controller's heartbeat ([`State`]); what the control API
//! needs of a source ([`Source`]); and the small vocabulary both sources share. Directory mode
//! ([`crate::source`]) and kube mode ([`crate::cluster`]) build on this room; neither imports
//! the other.

use crate::crd::ApiKey;
use crate::keyservice::{self, KeyService};
use crate::pass::Pass;
use crate::probe::ProbeResult;
use crate::validate::{self, Validation};
use anyhow::Result;
use layergate_filter::config::ApiKeyConfig;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What every source keeps while it runs, for the control API and `/metrics`: the last good
/// pass, the latest probe results and counters.
#[derive(Default)]
pub struct State {
    last: Mutex<Option<Arc<Pass>>>,
    probes: Mutex<BTreeMap<String, ProbeResult>>,
    /// The passes', probes' and Kubernetes API's counters.
    pub metrics: crate::metrics::Metrics,
    /// The key service, fed by every successful pass.
    pub keys: KeyService,
    /// Per-key usage the gateways report.
    pub usage: crate::usage::UsageBook,
    /// The revision the last pass's keys were served at: while the key service is still
    /// there, the next pass hands over only what changed since that pass.
    served: Mutex<Option<String>>,
    /// Keys that spent a quota, by key id: until when (Unix seconds) the key service serves
    /// them with `quotaSpentUntil` (issue 25), over whatever the passes publish.
    spent: Mutex<BTreeMap<String, i64>>,
    /// When the controller loop last turned (kube mode; `None`: no loop to watch).
    heartbeat: Mutex<Option<Instant>>,
    /// How long the loop may not turn before `/healthz` fails (`None`: [`STUCK_AFTER`]).
    stuck_after: Mutex<Option<Duration>>,
}

/// `/healthz` fails when the controller loop has not turned for this long (it turns at least
/// every [`crate::controller::HEARTBEAT`]; a pass that takes longer is stuck on something),
/// so the kubelet restarts the process.
pub const STUCK_AFTER: Duration = Duration::from_secs(300);

/// The clock in Unix seconds.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// The controller loop turned now.
    pub fn beat(&self) {
        *lock(&self.heartbeat) = Some(Instant::now());
    }

    /// How long the controller loop may not turn before `/healthz` fails (default
    /// [`STUCK_AFTER`]).
    pub fn set_stuck_after(&self, after: Duration) {
        *lock(&self.stuck_after) = Some(after);
    }

    /// How long the controller loop has not turned, when that is longer than
    /// [`STUCK_AFTER`] (or what [`State::set_stuck_after`] said): the process is alive but
    /// stuck, and should be restarted.
    pub fn stuck_for(&self) -> Option<Duration> {
        let after = lock(&self.stuck_after).unwrap_or(STUCK_AFTER);
        lock(&self.heartbeat)
            .map(|t| t.elapsed())
            .filter(|d| *d > after)
    }

    /// The last good pass, if any: shared, so a control-API call or a probe round costs no
    /// copy of the pass (at 100,000 ApiKeys a deep clone per `/readyz` was megabytes).
    pub fn last(&self) -> Option<Arc<Pass>> {
        lock(&self.last).clone()
    }

    /// Runs `pass` with the previous validation, serialized with every other pass; keeps the
    /// result when it succeeds and counts it either way.
    pub fn run_pass(&self, pass: impl FnOnce(Option<&Validation>) -> Result<Pass>) -> Result<()> {
        let mut last = lock(&self.last);
        let started = Instant::now();
        let result = pass(last.as_ref().map(|p| &p.validation));
        self.count(result.as_ref().map(|_| ()), started);
        let pass = result?;
        self.serve_keys(&pass, last.as_deref());
        *last = Some(Arc::new(pass));
        Ok(())
    }

    /// Hands a pass's keys (and gateway credential) to the key service: what changed since
    /// `previous` (the pass whose keys the key service serves now, when it does), else the
    /// whole set.
    fn serve_keys(&self, pass: &Pass, previous: Option<&Pass>) {
        if let Some(g) = &pass.gateway {
            self.keys.set_credential(g.clone());
        }
        let mut served = lock(&self.served);
        let revision = match previous {
            Some(p) if served.as_deref() == Some(self.keys.table().revision.as_str()) => {
                let mut change = keyservice::Change::between(&p.keys, &pass.keys);
                // A key whose mark changed on its object (written by the leader) changed for
                // the gateways, whether or not the pass changed it.
                let (before, now) = (marks(&p.objects.keys), marks(&pass.objects.keys));
                for (name, _) in before.symmetric_difference(&now) {
                    let upserted = change.upsert.iter().any(|k| k.name == *name);
                    if let (false, Some(k)) = (upserted, pass.index().usable(pass, name)) {
                        change.upsert.push(k.clone());
                    }
                }
                self.mark_spent(&mut change.upsert, &pass.objects.keys);
                self.keys.apply(change)
            }
            _ => {
                let mut keys = pass.keys.clone();
                self.mark_spent(&mut keys, &pass.objects.keys);
                self.keys.publish(&keys)
            }
        };
        *served = Some(revision);
    }

    /// Sets `quotaSpentUntil` on the keys that spent a quota whose period has not ended (and
    /// forgets the ones whose period has).
    fn mark_spent(&self, keys: &mut [ApiKeyConfig], objects: &[Arc<ApiKey>]) {
        let mut spent = lock(&self.spent);
        let now = unix_now();
        spent.retain(|_, until| *until > now);
        // What the leader recorded on the objects (every replica reads it), by name.
        let marked: BTreeMap<String, i64> = marks(objects).into_iter().collect();
        if spent.is_empty() && marked.is_empty() {
            return;
        }
        for k in keys {
            let until = spent.get(&k.key_id).or_else(|| marked.get(&k.name));
            let until = until.filter(|u| **u > now);
            if let Some(until) = until {
                k.quota_spent_until = Some(crate::validate::rfc3339(*until));
            }
        }
    }

    /// `key` spent a quota: the key service serves it refused until `until` (the end of the
    /// quota's period), at once — every gateway's next long poll carries it, as a revocation.
    pub fn quota_spent(&self, key: &ApiKeyConfig, until: i64) {
        let mut served = lock(&self.served);
        lock(&self.spent).insert(key.key_id.clone(), until);
        let before = self.keys.table().revision.clone();
        let mut marked = key.clone();
        marked.quota_spent_until = Some(crate::validate::rfc3339(until));
        let revision = self.keys.apply(keyservice::Change {
            upsert: vec![marked],
            remove: Vec::new(),
        });
        // The key service is still the last pass's keys with the marks: the next pass may
        // hand over only what changed.
        if served.as_deref() == Some(before.as_str()) {
            *served = Some(revision);
        }
    }

    /// Keeps a pass made elsewhere (kube mode serializes its own passes) and counts it; a
    /// failed pass leaves the last good one in place.
    pub fn finish(&self, result: Result<Pass>, started: Instant) -> Result<()> {
        self.count(result.as_ref().map(|_| ()), started);
        let pass = result?;
        let mut last = lock(&self.last);
        self.serve_keys(&pass, last.as_deref());
        let replaced = last.replace(Arc::new(pass));
        drop(last);
        // Freeing a pass of 100,000 keys takes a good part of a pass's budget; nothing waits
        // for it, so it is done beside the next one.
        // (A thread that cannot be started drops its closure, and the pass, right here.)
        if let Some(old) = replaced {
            let _ = std::thread::Builder::new()
                .name("free-pass".into())
                .spawn(move || drop(old));
        }
        Ok(())
    }

    fn count(&self, result: Result<(), &anyhow::Error>, started: Instant) {
        if result.is_ok() {
            self.metrics.rendered(started.elapsed());
        } else {
            self.metrics.render_errors.inc();
        }
    }

    /// Directory mode: reads the usage book from `dir` (at start), the quotas spent in
    /// periods that have not ended included: the next pass serves those keys refused again.
    pub fn load_usage(&self, dir: &std::path::Path) -> Result<()> {
        self.usage.load(dir)?;
        let now = unix_now();
        lock(&self.spent).extend(self.usage.spent(now));
        Ok(())
    }

    /// Directory mode: writes the usage book into `dir` when it changed, without the keys
    /// whose ApiKey is gone.
    pub fn save_usage(&self, dir: &std::path::Path) -> Result<()> {
        let pass = self.last();
        let exists = |id: &str| {
            pass.as_ref()
                .is_none_or(|p| p.index().with_id(p, id).is_some())
        };
        self.usage.save_changed(dir, exists)
    }

    /// The latest probe result per store.
    pub fn probes(&self) -> BTreeMap<String, ProbeResult> {
        lock(&self.probes).clone()
    }

    /// Replaces the probe results.
    pub fn set_probes(&self, results: Vec<(String, ProbeResult)>, took: Duration) {
        self.metrics.probed(took);
        let mut probes = lock(&self.probes);
        probes.clear();
        probes.extend(results);
    }

    /// Stores to probe: the valid ones of the last pass.
    pub fn stores(&self) -> Vec<validate::ValidStore> {
        self.last()
            .map(|p| {
                p.validation
                    .stores
                    .iter()
                    .filter_map(|s| s.valid.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What the control API needs from a running operator, whichever source feeds it: the state,
/// a way to run a pass now, and the three changes the API makes to ApiKeys. Directory mode
/// edits manifest files; kube mode writes objects.
pub trait Source: Send + Sync {
    /// The shared state.
    fn state(&self) -> &State;
    /// Runs one pass now.
    fn refresh(&self) -> Result<()>;
    /// Runs one pass, waiting for it at most `bound`: true when it finished in time. A pass
    /// that takes longer goes on (or is started again) in the background; the control API
    /// answers a mint without waiting for it (issue 13).
    fn refresh_within(&self, bound: Duration) -> Result<bool> {
        let _ = bound;
        self.refresh().map(|()| true)
    }
    /// Whether the control API may write now: false on a replica that does not hold the
    /// Lease (kube mode), which answers writes with 503 and `Retry-After`.
    fn writable(&self) -> bool {
        true
    }
    /// Records on the ApiKey named `name` that it spent a quota until `until` (Unix seconds), so
    /// every replica's passes serve it refused (kube mode: its status; directory mode has one
    /// operator, whose usage file keeps it).
    fn mark_quota_spent(&self, name: &str, until: i64) -> Result<()> {
        let _ = (name, until);
        Ok(())
    }
    /// Writes a new ApiKey (`manifest`, a complete object) and the Secret with its token;
    /// returns the ApiKey as stored (in a cluster, with its uid and creation time).
    fn create_key(
        &self,
        namespace: &str,
        name: &str,
        manifest: &serde_json::Value,
        token: &str,
    ) -> Result<ApiKey>;
    /// Sets `spec.revoked` (and the revoked-at annotation) on an ApiKey.
    fn revoke_key(&self, pass: &Pass, name: &str) -> Result<()>;
    /// Puts `token` into the ApiKey's minted token Secret (`apikey-<name>`) with `rotation`
    /// recorded beside it; when the token was first minted stays as it was.
    fn rotate_key(
        &self,
        pass: &Pass,
        name: &str,
        token: &str,
        rotation: &crate::keys::Rotation,
    ) -> Result<()>;
    /// Deletes an ApiKey and its token Secret.
    fn delete_key(&self, pass: &Pass, name: &str) -> Result<()>;
}

/// The quota marks the leader wrote on ApiKey objects (`status.quotaSpentUntil`): (name,
/// until), whether or not the period has ended (a mark that ends is a change too).
fn marks(objects: &[Arc<ApiKey>]) -> std::collections::BTreeSet<(String, i64)> {
    objects
        .iter()
        .filter_map(|k| {
            let at = k.status.as_ref()?.observed.quota_spent_until.as_deref()?;
            let until = layergate_filter::time::parse_rfc3339(at)?;
            Some((k.metadata.name.clone()?, until))
        })
        .collect()
}

/// How often stores are probed (plus up to [`PROBE_JITTER`], so replicas and stores spread out).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// Random extra delay per probe round.
pub const PROBE_JITTER: Duration = Duration::from_secs(5);

/// A random delay up to [`PROBE_JITTER`], so replicas and stores spread their probes out.
pub fn jitter() -> Duration {
    Duration::from_millis(
        u64::from(crate::random::random_u16()) % (PROBE_JITTER.as_millis() as u64 + 1),
    )
}

/// A write refused because its object (or file) exists: the control API answers 409.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Exists(pub String);

/// Annotation recording when a key was revoked through the API.
pub const REVOKED_AT_ANNOTATION: &str = "hevlayer.com/revoked-at";
