//! Per-key usage in the operator (SPEC §2, §6; issue 24): the gateways' reports added up per
//! key — `lastSeenAt`, requests allowed per scope and refused per status since creation, and
//! the last hour and day — kept where the API server (kube mode) or a file (directory mode)
//! holds them across restarts.
//!
//! ```text
//!  POST /v2/keys/usage (gateway credential; the leader) ─► report::read ─► UsageBook::take
//!  GET /v2/keys/{id}/usage, lastSeenAt in GET /v2/keys… ◄─ UsageBook::view / last_seen
//!  kube: the usage writer, ≤ N status writes a second, oldest first ◄─ UsageBook::due
//!  directory: usage.json beside the rendering, every few seconds ◄─ UsageBook::save
//! ```
//!
//! Memory: about 450 bytes per key in use (the name and id, the totals, twelve five-minute and
//! twenty-four one-hour buckets of allowed/refused counts): 45 MB at 100,000 keys all in use.
//! The windows hold totals, not the per-scope split, to keep that bound; the split is kept since
//! creation.

pub mod file;
pub mod report;

use layergate_filter::usage::REASONS;
use prometheus_client::metrics::counter::Counter;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;

/// `lastSeenAt` advances at most this often per key (hev layer's five minutes); it is also the
/// least time between two writes of one key's usage.
pub const LAST_SEEN_STEP: i64 = 300;

/// The scopes allowed requests are counted under, in [`Counts::allowed`] order.
pub const SCOPES: [&str; 3] = ["read", "write", "admin"];

/// Requests counted for a key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Allowed, by [`SCOPES`].
    pub allowed: [u64; 3],
    /// Refused, by [`REASONS`].
    pub refused: [u64; REASONS.len()],
}

impl Counts {
    /// Adds `other`.
    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.allowed.iter_mut().zip(other.allowed) {
            *a = a.saturating_add(b);
        }
        for (a, b) in self.refused.iter_mut().zip(other.refused) {
            *a = a.saturating_add(b);
        }
    }

    /// Allowed requests, all scopes.
    pub fn allowed_total(&self) -> u64 {
        self.allowed.iter().sum()
    }

    /// Refused requests, all reasons.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().sum()
    }

    /// As the ApiKey status and the usage answer write it.
    pub fn to_status(&self) -> crate::crd::UsageCounts {
        crate::crd::UsageCounts {
            allowed: SCOPES
                .iter()
                .zip(self.allowed)
                .map(|(s, n)| ((*s).to_owned(), n))
                .collect(),
            refused: REASONS
                .iter()
                .zip(self.refused)
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.to_string(), n))
                .collect(),
        }
    }

    /// Read back from a status (unknown names are ignored).
    pub fn from_status(s: &crate::crd::UsageCounts) -> Counts {
        let mut c = Counts::default();
        for (i, scope) in SCOPES.iter().enumerate() {
            c.allowed[i] = s.allowed.get(*scope).copied().unwrap_or(0);
        }
        for (i, r) in REASONS.iter().enumerate() {
            c.refused[i] = s.refused.get(&r.to_string()).copied().unwrap_or(0);
        }
        c
    }
}

/// One bucket of a window: allowed and refused requests from `start` (minutes since the
/// epoch) for the window's step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    start: u32,
    allowed: u32,
    refused: u32,
}

/// The last `N` steps of `STEP` minutes, as a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window<const N: usize, const STEP: u32> {
    buckets: [Bucket; N],
}

impl<const N: usize, const STEP: u32> Default for Window<N, STEP> {
    fn default() -> Self {
        Window {
            buckets: [Bucket::default(); N],
        }
    }
}

impl<const N: usize, const STEP: u32> Window<N, STEP> {
    fn add(&mut self, minute: u32, allowed: u64, refused: u64) {
        let start = minute - minute % STEP;
        let b = &mut self.buckets[(start / STEP) as usize % N];
        if b.start != start {
            *b = Bucket {
                start,
                ..Bucket::default()
            };
        }
        let cut = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        b.allowed = b.allowed.saturating_add(cut(allowed));
        b.refused = b.refused.saturating_add(cut(refused));
    }

    /// (allowed, refused) over the buckets of the last `N × STEP` minutes before `minute`.
    fn sum(&self, minute: u32) -> (u64, u64) {
        let oldest = minute.saturating_sub(N as u32 * STEP);
        self.buckets
            .iter()
            .filter(|b| (b.allowed > 0 || b.refused > 0) && b.start > oldest && b.start <= minute)
            .fold((0, 0), |(a, r), b| {
                (a + u64::from(b.allowed), r + u64::from(b.refused))
            })
    }
}

/// What one key's usage was last stored as (its status, or the file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// `lastSeenAt`, Unix seconds.
    pub last_seen: Option<i64>,
    /// Since creation.
    pub total: Counts,
}

/// What a report's key name resolves to: the key the key service serves under that name.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// Its key id.
    pub key_id: String,
    /// What its status (or the file) holds, read the first time this process sees the key.
    pub stored: Stored,
    /// Its quotas (`spec.limits.quotas`).
    pub quotas: Vec<layergate_filter::ratelimit::Quota>,
}

/// A quota's count in its current calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeriodCount {
    quota: u64,
    per: layergate_filter::ratelimit::Period,
    /// The period's first second (Unix seconds).
    start: i64,
    /// Allowed requests counted in it.
    used: u64,
    /// Spent: the key was marked refused until the period's end.
    spent: bool,
}

/// A key that has just spent a quota: refused until `until` (the period's end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spent {
    /// The key's id.
    pub key_id: String,
    /// Its ApiKey's name.
    pub name: String,
    /// The end of the quota's period (Unix seconds).
    pub until: i64,
}

/// One key's usage.
#[derive(Debug, Clone, Default)]
struct KeyUsage {
    name: String,
    /// `lastSeenAt` as shown: advances at most every [`LAST_SEEN_STEP`].
    shown: Option<i64>,
    total: Counts,
    hour: Window<12, 5>,
    day: Window<24, 60>,
    /// What the status (or file) holds, and when it was written.
    stored: Stored,
    stored_at: i64,
    /// Each quota's count in its current period (the leader's memory only).
    periods: Vec<PeriodCount>,
}

/// A key whose stored usage is behind: what to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The key's id.
    pub key_id: String,
    /// Its ApiKey's name.
    pub name: String,
    /// What to store.
    pub usage: Stored,
}

/// What a report did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Keys counted.
    pub keys: usize,
    /// Names of keys the operator does not serve (ignored).
    pub unknown: Vec<String>,
    /// Keys that spent a quota with this report.
    pub spent: Vec<Spent>,
}

/// Every key's usage in this operator, and counters of the reports.
#[derive(Default)]
pub struct UsageBook {
    keys: Mutex<HashMap<String, KeyUsage>>,
    /// Reports taken.
    pub reports: Counter,
    /// Keys named in reports that the operator does not serve (deleted, revoked, unknown).
    pub unknown_keys: Counter,
    /// Counts cut to the largest a report may say.
    pub clamped: Counter,
    /// Requests gateways could not attribute to a key (their tally was full).
    pub dropped: Counter,
}

/// Adds `allowed` requests at `now` to each of `quotas`' current period (a new period starts
/// from zero); a quota reached for the first time in its period is `spent` until its end.
fn count_quotas(
    k: &mut KeyUsage,
    quotas: &[layergate_filter::ratelimit::Quota],
    allowed: u64,
    now: i64,
    key_id: &str,
    spent: &mut Vec<Spent>,
) {
    k.periods.resize(
        quotas.len(),
        PeriodCount {
            quota: 0,
            per: layergate_filter::ratelimit::Period::Hour,
            start: i64::MIN,
            used: 0,
            spent: false,
        },
    );
    for (q, p) in quotas.iter().zip(k.periods.iter_mut()) {
        let (start, end) = q.per.bounds(now);
        if p.start != start || p.per != q.per || p.quota != q.requests {
            *p = PeriodCount {
                quota: q.requests,
                per: q.per,
                start,
                used: 0,
                spent: false,
            };
        }
        p.used = p.used.saturating_add(allowed);
        if !p.spent && p.used >= q.requests {
            p.spent = true;
            spent.push(Spent {
                key_id: key_id.to_owned(),
                name: k.name.clone(),
                until: end,
            });
        }
    }
}

impl std::fmt::Debug for UsageBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageBook")
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn minute(now: i64) -> u32 {
    u32::try_from(now.max(0) / 60).unwrap_or(u32::MAX)
}

impl UsageBook {
    /// Adds a gateway's report at `now`. `resolve` names the key a name is served as (its id,
    /// and its stored usage, read the first time this process sees the key); a name it does
    /// not know is skipped, never created.
    pub fn take(
        &self,
        report: &report::Report,
        now: i64,
        resolve: impl Fn(&str) -> Option<Resolved>,
    ) -> Taken {
        self.reports.inc();
        self.dropped.inc_by(report.dropped);
        self.clamped.inc_by(report.clamped as u64);
        let mut taken = Taken::default();
        let mut keys = lock(&self.keys);
        for (name, counts) in &report.keys {
            let Some(Resolved {
                key_id,
                stored,
                quotas,
            }) = resolve(name)
            else {
                self.unknown_keys.inc();
                if taken.unknown.len() < 10 {
                    taken.unknown.push(name.clone());
                }
                continue;
            };
            let k = keys.entry(key_id.clone()).or_insert_with(|| KeyUsage {
                name: name.clone(),
                shown: stored.last_seen,
                total: stored.total,
                stored: stored.clone(),
                ..KeyUsage::default()
            });
            k.name.clone_from(name);
            k.total.add(counts);
            let (allowed, refused) = (counts.allowed_total(), counts.refused_total());
            k.hour.add(minute(now), allowed, refused);
            k.day.add(minute(now), allowed, refused);
            if k.shown.is_none_or(|s| now - s >= LAST_SEEN_STEP) {
                k.shown = Some(now);
            }
            count_quotas(k, &quotas, allowed, now, &key_id, &mut taken.spent);
            taken.keys += 1;
        }
        taken
    }

    /// `lastSeenAt` of `key_id` as this process knows it (`None`: not seen since it started).
    pub fn last_seen(&self, key_id: &str) -> Option<i64> {
        lock(&self.keys).get(key_id).and_then(|k| k.shown)
    }

    /// The usage answer of `key_id` at `now`; `stored` is what its status holds, for a key no
    /// report named since this process started.
    pub fn view(&self, key_id: &str, stored: &Stored, now: i64) -> Value {
        let keys = lock(&self.keys);
        let k = keys.get(key_id);
        let (last_seen, total) = match k {
            Some(k) => (k.shown, k.total),
            None => (stored.last_seen, stored.total),
        };
        let window = |(allowed, refused): (u64, u64)| json!({"allowed": allowed, "refused": refused, "requests": allowed + refused});
        let (hour, day) = k.map_or(((0, 0), (0, 0)), |k| {
            (k.hour.sum(minute(now)), k.day.sum(minute(now)))
        });
        let c = total.to_status();
        let quotas: Vec<Value> = k
            .map(|k| {
                k.periods
                    .iter()
                    .filter(|p| p.start != i64::MIN)
                    .map(|p| {
                        let (start, end) = p.per.bounds(p.start);
                        let current = now < end;
                        json!({
                            "requests": p.quota,
                            "per": p.per.as_str(),
                            "periodStart": crate::validate::rfc3339(start),
                            "used": if current { p.used } else { 0 },
                            "spent": current && p.spent,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "quotas": quotas,
            "lastSeenAt": last_seen.map(crate::validate::rfc3339),
            "sinceCreation": {
                "allowed": c.allowed,
                "refused": c.refused,
                "requests": total.allowed_total() + total.refused_total(),
            },
            "lastHour": window(hour),
            "lastDay": window(day),
        })
    }

    /// Up to `max` keys whose stored usage is behind, oldest write first: `lastSeenAt`
    /// advanced, or counts changed and the key was last written [`LAST_SEEN_STEP`] ago.
    pub fn due(&self, max: usize, now: i64) -> Vec<Due> {
        let keys = lock(&self.keys);
        let mut due: Vec<(&String, &KeyUsage)> = keys
            .iter()
            .filter(|(_, k)| {
                k.shown != k.stored.last_seen
                    || (k.total != k.stored.total && now - k.stored_at >= LAST_SEEN_STEP)
            })
            .collect();
        if due.len() > max {
            due.select_nth_unstable_by_key(max, |(_, k)| k.stored_at);
            due.truncate(max);
        }
        due.sort_by_key(|(_, k)| k.stored_at);
        due.into_iter()
            .map(|(id, k)| Due {
                key_id: id.clone(),
                name: k.name.clone(),
                usage: Stored {
                    last_seen: k.shown,
                    total: k.total,
                },
            })
            .collect()
    }

    /// `due` was stored at `now`.
    pub fn stored(&self, due: &Due, now: i64) {
        if let Some(k) = lock(&self.keys).get_mut(&due.key_id) {
            k.stored = due.usage.clone();
            k.stored_at = now;
        }
    }

    /// Forgets keys `keep` says no longer exist.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.keys).retain(|id, _| keep(id));
    }

    /// Keys in the book.
    pub fn len(&self) -> usize {
        lock(&self.keys).len()
    }

    /// True when no key was seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests;
