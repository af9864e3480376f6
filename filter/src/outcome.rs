//! What a request's outcome is called, for both host bindings (`wasm`, `native`): the counters
//! they publish as Envoy stats, a refusal's reply headers and the configured line; the
//! access-log line is [`crate::audit`]'s. One vocabulary, so the two builds report the same
//! names and fields (SPEC §10); how each publishes them is the binding's.
//!
//! Plain Rust over [`Policy`] and [`Plan`]; it calls no host.

use crate::denial::Denial;
use crate::policy::Policy;

/// Counters, indexed by position.
pub const COUNTERS: [&str; 11] = [
    "layergate.allowed",
    "layergate.denied_400",
    "layergate.denied_401",
    "layergate.denied_403",
    "layergate.denied_404",
    "layergate.denied_413",
    "layergate.denied_415",
    "layergate.denied_503",
    "layergate.inspected_bodies",
    "layergate.keys_syncs",
    "layergate.keys_sync_failures",
];
/// [`COUNTERS`] index: a request let through.
pub const ALLOWED: usize = 0;
/// [`COUNTERS`] index: a body read and judged.
pub const INSPECTED: usize = 8;
/// [`COUNTERS`] index: a key-service answer applied.
pub const SYNCED: usize = 9;
/// [`COUNTERS`] index: a key-service call that failed.
pub const SYNC_FAILED: usize = 10;

/// The counter of a decision label (`allowed`, `denied_403`, …; [`ALLOWED`] for an unknown one).
pub fn counter_for(label: &str) -> usize {
    COUNTERS
        .iter()
        .position(|c| c.strip_prefix("layergate.") == Some(label))
        .unwrap_or(ALLOWED)
}

/// The headers of a refusal's local reply, and how many of them there are: JSON, and the
/// challenge of a 401.
pub fn reply_headers(denial: &Denial) -> ([(&'static str, &'static str); 2], usize) {
    let mut headers = [("content-type", "application/json"), ("", "")];
    match denial.www_authenticate() {
        Some(w) => {
            headers[1] = ("www-authenticate", w);
            (headers, 2)
        }
        None => (headers, 1),
    }
}

/// The line a configuration's load is logged with.
pub fn configured(policy: &Policy) -> String {
    format!(
        "layergate: configured {} stores, {} namespaces, {} api keys",
        policy.stores.len(),
        policy.namespaces.len(),
        policy.keys.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_label_has_its_own_counter() {
        for status in [400, 401, 403, 404, 413, 415, 503] {
            let label = format!("denied_{status}");
            assert_eq!(COUNTERS[counter_for(&label)], format!("layergate.{label}"));
        }
        assert_eq!(counter_for("allowed"), ALLOWED);
    }
}
