//! Directory mode keeps usage in a file beside the rendering (`usage.json`, 0600, replaced
//! atomically): every key's `lastSeenAt`, totals and windows, read back when the operator
//! starts, so a restart loses at most what came in since the last save.

use super::{Bucket, Counts, KeyUsage, PeriodCount, Stored, UsageBook, Window};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::Path;

/// The file's name in the output directory.
pub const FILE: &str = "usage.json";

/// How often directory mode writes the file when the usage changed: what an operator crash
/// can lose at most.
pub const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn counts(c: &Counts) -> Value {
    json!({"allowed": c.allowed, "refused": c.refused})
}

fn read_counts(v: &Value) -> Counts {
    let mut c = Counts::default();
    let fill = |out: &mut [u64], v: &Value| {
        for (o, n) in out.iter_mut().zip(v.as_array().into_iter().flatten()) {
            *o = n.as_u64().unwrap_or(0);
        }
    };
    fill(&mut c.allowed, &v["allowed"]);
    fill(&mut c.refused, &v["refused"]);
    c
}

fn window<const N: usize, const STEP: u32>(w: &Window<N, STEP>) -> Value {
    w.buckets
        .iter()
        .filter(|b| b.allowed > 0 || b.refused > 0)
        .map(|b| json!([b.start, b.allowed, b.refused]))
        .collect()
}

fn read_window<const N: usize, const STEP: u32>(v: &Value) -> Window<N, STEP> {
    let mut w = Window::<N, STEP>::default();
    for b in v.as_array().into_iter().flatten() {
        let n = |i: usize| {
            b[i].as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        };
        let start = n(0);
        w.buckets[(start / STEP) as usize % N] = Bucket {
            start,
            allowed: n(1),
            refused: n(2),
        };
    }
    w
}

fn periods(ps: &[PeriodCount]) -> Value {
    ps.iter()
        .map(|p| json!([p.quota, p.per.as_str(), p.start, p.used, p.spent]))
        .collect()
}

fn read_periods(v: &Value) -> Vec<PeriodCount> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let per = serde_json::from_value(p[1].clone()).ok()?;
            Some(PeriodCount {
                quota: p[0].as_u64()?,
                per,
                start: p[2].as_i64()?,
                used: p[3].as_u64()?,
                spent: p[4].as_bool()?,
            })
        })
        .collect()
}

impl UsageBook {
    /// Writes every key's usage to `dir/`[`FILE`], and marks it stored.
    pub fn save(&self, dir: &Path, now: i64) -> Result<()> {
        let mut keys = super::lock(&self.keys);
        let doc: serde_json::Map<String, Value> = keys
            .iter()
            .map(|(id, k)| {
                (
                    id.clone(),
                    json!({
                        "name": k.name,
                        "lastSeenAt": k.shown,
                        "total": counts(&k.total),
                        "hour": window(&k.hour),
                        "day": window(&k.day),
                        "quotas": periods(&k.periods),
                    }),
                )
            })
            .collect();
        crate::files::write_private(
            &dir.join(FILE),
            &json!({"version": 1, "keys": doc}).to_string(),
        )?;
        for k in keys.values_mut() {
            k.stored = Stored {
                last_seen: k.shown,
                total: k.total,
            };
            k.stored_at = now;
        }
        Ok(())
    }

    /// Writes the file when some key's usage changed since the last save, without the keys
    /// `exists` says are gone.
    pub fn save_changed(&self, dir: &Path, exists: impl Fn(&str) -> bool) -> Result<()> {
        if !self.changed() {
            return Ok(());
        }
        self.retain(exists);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.save(dir, now)
    }

    /// Keys with a quota spent in a period that has not ended at `now`, and that period's
    /// end: what a restarted operator serves as refused again.
    pub fn spent(&self, now: i64) -> Vec<(String, i64)> {
        super::lock(&self.keys)
            .iter()
            .flat_map(|(id, k)| {
                k.periods.iter().filter(|p| p.spent).filter_map(move |p| {
                    let (_, end) = p.per.bounds(p.start);
                    (end > now).then(|| (id.clone(), end))
                })
            })
            .collect()
    }

    /// True when some key's usage changed since it was last saved.
    pub fn changed(&self) -> bool {
        super::lock(&self.keys)
            .values()
            .any(|k| k.shown != k.stored.last_seen || k.total != k.stored.total)
    }

    /// Reads `dir/`[`FILE`] into an empty book (no file: nothing to read). A file that cannot
    /// be read is an error naming it: the operator says so rather than start counting from
    /// zero over it.
    pub fn load(&self, dir: &Path) -> Result<()> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let doc: Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not JSON; move it away to start counting anew",
                path.display()
            )
        })?;
        let mut keys = super::lock(&self.keys);
        for (id, k) in doc["keys"].as_object().into_iter().flatten() {
            let total = read_counts(&k["total"]);
            let last_seen = k["lastSeenAt"].as_i64();
            keys.insert(
                id.clone(),
                KeyUsage {
                    name: k["name"].as_str().unwrap_or_default().to_owned(),
                    shown: last_seen,
                    total,
                    hour: read_window(&k["hour"]),
                    day: read_window(&k["day"]),
                    stored: Stored { last_seen, total },
                    stored_at: 0,
                    periods: read_periods(&k["quotas"]),
                },
            );
        }
        Ok(())
    }
}
