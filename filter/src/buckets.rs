//! The process-wide table of rate buckets the native build keeps (issue 25): one TAT per
//! limited key, shared by every worker thread of the gateway process, so a key's rate is the
//! process's, not each worker's. (The wasm build, whose VMs are one per worker, keeps the same
//! TATs in the host's shared data instead: `wasm/buckets.rs`.)
//!
//! 64 shards, each a mutex over a map of principal name → TAT, held for one map look-up and one
//! [`Bucket::take`]; two workers meet on a shard only when they judge keys of that shard at
//! the same instant.
//!
//! Bounded: only limited keys that sent a request have an entry (keys without limits never
//! reach it). An entry whose TAT is not after now is a full bucket, exactly what a missing
//! entry means, so dropping it loses nothing: a shard drops them when it has doubled since its
//! last sweep, and never drops a bucket still refilling (in use). About 40 bytes per entry
//! plus the name (the map's 24-byte slot and control byte, the boxed name, at most twice the
//! live entries between sweeps): about 6 MB for 100,000 limited keys all active at once.

use crate::fasthash::FastHasher;
use crate::ratelimit::{Admitted, Bucket, Limited};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, OnceLock, PoisonError};

const SHARDS: usize = 64;

/// A shard sweeps once it holds this many entries, at least.
const FIRST_SWEEP: usize = 1024;

#[derive(Default)]
struct Shard {
    tats: HashMap<Box<str>, u64, BuildHasherDefault<FastHasher>>,
    /// Sweep when `tats` reaches this length.
    sweep_at: usize,
}

/// Rate buckets by principal name.
pub struct Buckets {
    shards: [Mutex<Shard>; SHARDS],
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
        }
    }
}

impl Buckets {
    /// The table of this process.
    pub fn process() -> &'static Buckets {
        static TABLE: OnceLock<Buckets> = OnceLock::new();
        TABLE.get_or_init(Buckets::default)
    }

    /// Judges a request of `name` at `now` (ns) against its bucket, and records it when
    /// admitted.
    pub fn take(&self, name: &str, bucket: Bucket, now: u64) -> Result<Admitted, Limited> {
        let mut h = FastHasher::default();
        h.write(name.as_bytes());
        let shard = &self.shards[(h.finish() >> 58) as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = shard.tats.get(name).copied().unwrap_or(0);
        let admitted = bucket.take(tat, now)?;
        match shard.tats.get_mut(name) {
            Some(t) => *t = admitted.tat,
            None => {
                shard.tats.insert(name.into(), admitted.tat);
                if shard.tats.len() >= shard.sweep_at.max(FIRST_SWEEP) {
                    shard.tats.retain(|_, tat| *tat > now);
                    shard.sweep_at = (shard.tats.len() * 2).max(FIRST_SWEEP);
                }
            }
        }
        Ok(admitted)
    }

    /// Entries held (for tests and memory figures).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).tats.len())
            .sum()
    }

    /// True when no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ratelimit::Rate;

    const S: u64 = 1_000_000_000;

    #[test]
    fn threads_share_one_bucket_per_key() {
        let table = Buckets::default();
        let b = Bucket::of(
            Rate {
                per_second: 100,
                burst: 100,
            },
            1,
        );
        let now = 1_000 * S;
        let admitted: usize = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..100)
                            .filter(|_| table.take("apikey:a", b, now).is_ok())
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(
            admitted, 100,
            "one burst for the process, not one per thread"
        );
        assert!(
            table.take("apikey:b", b, now).is_ok(),
            "another key has its own"
        );
    }

    #[test]
    fn idle_buckets_are_swept_and_busy_ones_kept() {
        let table = Buckets::default();
        let b = Bucket::of(
            Rate {
                per_second: 1,
                burst: 2,
            },
            1,
        );
        // A busy key: empty bucket, refilling for the next 2 s.
        let busy_at = 100 * S;
        table.take("busy", b, busy_at).unwrap();
        table.take("busy", b, busy_at).unwrap();
        // Many keys seen once, long ago relative to the sweep.
        for i in 0..(SHARDS * FIRST_SWEEP) {
            table.take(&format!("k{i}"), b, busy_at - 10 * S).unwrap();
        }
        // Later keys (still refilling) make every shard sweep: the old entries (full again)
        // go, the busy ones stay.
        let later = 4 * SHARDS * FIRST_SWEEP;
        for i in 0..later {
            table.take(&format!("n{i}"), b, busy_at + S / 2).unwrap();
        }
        assert_eq!(table.len(), later + 1);
        assert!(
            table.take("busy", b, busy_at + S / 2).is_err(),
            "the busy key's bucket survived every sweep"
        );
    }
}
