//! Rate buckets in the host's shared data (issue 25): Envoy runs one VM per worker, and a
//! key's rate is the gateway process's, so each limited key's TAT (see [`crate::ratelimit`])
//! lives in a shared-data entry every VM of the plugin's VM id reads, updated with the
//! compare-and-swap on the entry's version:
//!
//! ```text
//!  layergate.rate.<principal>   8 bytes: the TAT, little-endian nanoseconds
//!  get (value, cas) ─► Bucket::take ─► set(value', cas) ─► ok │ another VM was first: again
//! ```
//!
//! One get and one set per request of a limited key; keys without limits make no host call.
//! A key's first request finds no entry and writes with CAS 0 (unconditionally): two workers
//! meeting on that very first request may each count one request against a full bucket.
//! proxy-wasm 0.2.1 cannot remove shared data, so an entry stays for the life of the process:
//! one per limited principal that sent a request (about 100 bytes of Envoy's map each: the
//! name, 8 bytes of value, a version).

use crate::abi;
use crate::ratelimit::{Admitted, Bucket, Limited};
use std::cell::RefCell;

/// Shared-data key prefix of a principal's bucket.
const PREFIX: &str = "layergate.rate.";

/// Tries before a request whose bucket other VMs keep changing is refused (fail closed).
const TRIES: usize = 8;

thread_local! {
    static KEY: RefCell<String> = RefCell::new(String::with_capacity(64));
}

/// Judges a request of `name` at `now` (ns) against its shared bucket.
pub(super) fn take(name: &str, bucket: Bucket, now: u64) -> Result<Admitted, Limited> {
    KEY.with(|key| {
        let mut key = key.try_borrow_mut().map_err(|_| busy(bucket))?;
        key.clear();
        key.push_str(PREFIX);
        key.push_str(name);
        for _ in 0..TRIES {
            let (tat, cas) = match abi::get_shared_data(&key) {
                Some((v, cas)) => (read_tat(&v), cas),
                None => (0, 0),
            };
            let admitted = bucket.take(tat, now)?;
            if abi::set_shared_data(&key, &admitted.tat.to_le_bytes(), cas) {
                return Ok(admitted);
            }
        }
        Err(busy(bucket))
    })
}

/// A TAT from its entry (0, a full bucket, for anything that is not 8 bytes).
fn read_tat(v: &[u8]) -> u64 {
    <[u8; 8]>::try_from(v).map_or(0, u64::from_le_bytes)
}

/// The refusal of a request whose bucket could not be updated.
fn busy(bucket: Bucket) -> Limited {
    Limited {
        retry_after: 1,
        burst: bucket.burst,
        window: bucket
            .interval
            .saturating_mul(bucket.burst)
            .div_ceil(1_000_000_000)
            .max(1),
    }
}
