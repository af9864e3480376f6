//! What a request's outcome is called, for both host bindings (`wasm`, `native`): the counters
//! they publish as Envoy stats, a refusal's reply headers and the configured line; the
//! access-log line is [`crate::audit`]'s. One vocabulary, so the two builds report the same
//! names and fields (SPEC §10); how each publishes them is the binding's.
//!
//! Plain Rust over [`Policy`] and [`Plan`]; it calls no host.

use crate::auth::Principal;
use crate::decision::Plan;
use crate::denial::Denial;
use crate::policy::{Grant, Policy};
use crate::ratelimit::{Admitted, Bucket, Limited};

/// Counters, indexed by position.
pub const COUNTERS: [&str; 12] = [
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
    "layergate.denied_429",
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

/// The headers of a refusal's local reply: JSON, the challenge of a 401/403, and for a 429
/// `Retry-After` with the `RateLimit-Policy` / `RateLimit` fields.
pub fn reply_headers(denial: &Denial) -> Vec<(&'static str, String)> {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(w) = denial.www_authenticate() {
        headers.push(("www-authenticate", w.to_owned()));
    }
    if let crate::denial::DenialKind::TooManyRequests(limited) = denial.kind {
        let [retry, policy, now] = limited.header_values();
        headers.push(("retry-after", retry));
        headers.push(("ratelimit-policy", policy));
        headers.push(("ratelimit", now));
    }
    headers
}

/// The rate check of an authorized request (issue 25), before it is forwarded or its body
/// awaited: nothing for a principal without a rate limit (no bucket, no host call); else one
/// `take` from the bucket the binding keeps for it, shared by every worker of the process
/// (`take` gets the principal's name, its gateway's share of the rate, and `now_ns`).
pub fn rate_check(
    policy: &Policy,
    plan: &Plan,
    now_ns: impl FnOnce() -> u64,
    take: impl FnOnce(&str, Bucket, u64) -> Result<Admitted, Limited>,
) -> Result<(), Denial> {
    let spent = match plan.principal {
        Principal::Token(Grant::Minted(k)) => policy.keys.spent_until(k).map(|until| {
            let quota = policy.keys.get(k).and_then(|key| {
                let quotas = &key.limits.as_ref()?.quotas;
                quotas.iter().map(|q| q.requests).min()
            });
            (until, quota.unwrap_or(0))
        }),
        _ => None,
    };
    let rate = plan.principal.rate(policy);
    if spent.is_none() && rate.is_none() {
        return Ok(());
    }
    let name = plan.principal.name(policy);
    let now = now_ns();
    if let Some((until, quota)) = spent {
        let now_s = i64::try_from(now / 1_000_000_000).unwrap_or(i64::MAX);
        if now_s < until {
            return Err(Denial::quota_spent(name, quota, until, now_s));
        }
    }
    let Some(rate) = rate else {
        return Ok(());
    };
    take(name, Bucket::of(rate, policy.replicas), now)
        .map(drop)
        .map_err(|l| Denial::rate_limited(name, rate, l))
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
        for status in [400, 401, 403, 404, 413, 415, 429, 503] {
            let label = format!("denied_{status}");
            assert_eq!(COUNTERS[counter_for(&label)], format!("layergate.{label}"));
        }
        assert_eq!(counter_for("allowed"), ALLOWED);
    }
}
