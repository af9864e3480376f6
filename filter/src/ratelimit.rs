//! Per-key rate limits (issue 25): what a key declares (`limits`, the same shape on an ApiKey,
//! an inbound key and the filter configuration), the checks both the filter and the operator
//! run on it, and the bucket arithmetic both builds share.
//!
//! The bucket is GCRA (the generic cell rate algorithm, a token bucket written as one number):
//! a key's state is its **theoretical arrival time** (TAT), in nanoseconds of the host clock.
//! A request is admitted when, after it, the TAT is at most one bucket depth (`burst`
//! intervals) ahead of now; admitting moves the TAT one interval on. So a bucket is one `u64`,
//! read and written with one compare-and-swap: the native build keeps a process-wide table of
//! them (`native/buckets.rs`), the wasm build keeps each in the host's shared data, which every
//! VM (one per worker) of the process reads (`wasm/buckets.rs`).
//!
//! ```text
//!  limits {requestsPerSecond R, burst B}, limits.gatewayReplicas N
//!     ──Bucket::of──► interval = N·10⁹/R ns, depth = ⌈B/N⌉ intervals (one gateway's share)
//!  request: tat ──Bucket::take(tat, now)──► Ok(new tat, remaining) │ Err(Limited: retry after)
//! ```
//!
//! A TAT at or before now is a full bucket, so a missing entry (a gateway that just started, a
//! key never seen) starts full: one burst. A TAT more than one depth ahead of now (the clock
//! went back) counts as a bucket holding one request, never as a longer wait. A changed limit applies to the
//! next request of that key against the TAT it has: nothing is reset.
//!
//! Quotas (requests per hour, day or month) are declared and checked here, and carried to the
//! key service; they are counted from the gateways' usage reports, not in the gateway.

use serde::{Deserialize, Serialize};

/// The highest `requestsPerSecond` and `burst` a key may declare.
pub const MAX_RATE: u32 = 1_000_000;

/// The highest `requests` a quota may declare (10¹²).
pub const MAX_QUOTA: u64 = 1_000_000_000_000;

/// The highest `limits.gatewayReplicas`.
pub const MAX_REPLICAS: u32 = 10_000;

const NANOS: u64 = 1_000_000_000;

/// A key's declared limits (`spec.limits` of an ApiKey, `limits` of an inbound key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimits {
    /// Sustained requests per second across all gateways; absent: no rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// Requests that may arrive at once after a quiet spell; default `requestsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Requests per period (counted by the operator from the gateways' usage reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<Quota>,
}

/// A request quota per calendar period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Requests allowed per period.
    pub requests: u64,
    /// The period.
    pub per: Period,
}

/// A quota's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// An hour.
    Hour,
    /// A day.
    Day,
    /// A month.
    Month,
}

impl Period {
    /// The name used in configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The calendar period (UTC) holding `now` (Unix seconds): its first second, and the
    /// first second of the next.
    pub fn bounds(self, now: i64) -> (i64, i64) {
        match self {
            Period::Hour => {
                let start = now - now.rem_euclid(3600);
                (start, start + 3600)
            }
            Period::Day => {
                let start = now - now.rem_euclid(86_400);
                (start, start + 86_400)
            }
            Period::Month => {
                let (y, m, _) = crate::time::civil_from_days(now.div_euclid(86_400));
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    crate::time::days_from_civil(y, m, 1) * 86_400,
                    crate::time::days_from_civil(ny, nm, 1) * 86_400,
                )
            }
        }
    }
}

/// A key's rate as the gateway enforces it: requests per second and burst across all
/// gateways (before [`Bucket::of`] takes one gateway's share).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests per second (1..=[`MAX_RATE`]).
    pub per_second: u32,
    /// Burst (1..=[`MAX_RATE`]).
    pub burst: u32,
}

impl RateLimits {
    /// The one check of declared limits (the filter refuses such a key, the operator gives it
    /// a condition): every number within its bound, `burst` only with a rate, one quota per
    /// period.
    pub fn check(&self) -> Result<(), String> {
        let bound = |what: &str, v: u32| {
            if (1..=MAX_RATE).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "limits.{what} is {v}; it must be between 1 and {MAX_RATE}"
                ))
            }
        };
        if let Some(r) = self.requests_per_second {
            bound("requestsPerSecond", r)?;
        }
        match (self.burst, self.requests_per_second) {
            (Some(_), None) => {
                return Err("limits.burst needs limits.requestsPerSecond".into());
            }
            (Some(b), Some(_)) => bound("burst", b)?,
            _ => {}
        }
        for (i, q) in self.quotas.iter().enumerate() {
            if !(1..=MAX_QUOTA).contains(&q.requests) {
                return Err(format!(
                    "limits.quotas[{i}].requests is {}; it must be between 1 and {MAX_QUOTA}",
                    q.requests
                ));
            }
            if self.quotas[..i].iter().any(|o| o.per == q.per) {
                return Err(format!(
                    "limits.quotas: more than one quota per {}; keep one",
                    q.per.as_str()
                ));
            }
        }
        Ok(())
    }

    /// The rate the gateway enforces, if any (after [`RateLimits::check`]).
    pub fn rate(&self) -> Option<Rate> {
        let per_second = self.requests_per_second?;
        Some(Rate {
            per_second,
            burst: self.burst.unwrap_or(per_second),
        })
    }

    /// True when nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.requests_per_second.is_none() && self.burst.is_none() && self.quotas.is_empty()
    }

    /// Where `asked` is looser than these limits (the maker's): a higher rate or burst, no
    /// rate where these have one, a larger or missing quota for a period these limit.
    pub fn looser(&self, asked: &RateLimits) -> Option<String> {
        if let Some(mine) = self.rate() {
            match asked.rate() {
                None => {
                    return Some(format!(
                        "no requestsPerSecond, and yours is {}",
                        mine.per_second
                    ))
                }
                Some(a) if a.per_second > mine.per_second => {
                    return Some(format!(
                        "requestsPerSecond {} is over yours ({})",
                        a.per_second, mine.per_second
                    ))
                }
                Some(a) if a.burst > mine.burst => {
                    return Some(format!("burst {} is over yours ({})", a.burst, mine.burst))
                }
                Some(_) => {}
            }
        }
        for q in &self.quotas {
            match asked.quotas.iter().find(|a| a.per == q.per) {
                None => {
                    return Some(format!(
                        "no quota per {}, and yours is {}",
                        q.per.as_str(),
                        q.requests
                    ))
                }
                Some(a) if a.requests > q.requests => {
                    return Some(format!(
                        "a quota of {} per {} is over yours ({})",
                        a.requests,
                        q.per.as_str(),
                        q.requests
                    ))
                }
                Some(_) => {}
            }
        }
        None
    }
}

/// One gateway process's share of a [`Rate`], in the bucket's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Nanoseconds between two admitted requests at the sustained rate.
    pub interval: u64,
    /// Requests the bucket holds when full.
    pub burst: u64,
}

/// Why a request was refused, and what the client is told (`Retry-After`, `RateLimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until a request would be admitted (rounded up, at least 1).
    pub retry_after: u64,
    /// The bucket's depth (`RateLimit-Policy` `q`).
    pub burst: u64,
    /// Seconds a full bucket takes to refill (`RateLimit-Policy` `w`, at least 1).
    pub window: u64,
}

/// An admitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The bucket's new TAT, to store.
    pub tat: u64,
    /// Requests left in the bucket after this one.
    pub remaining: u64,
}

impl Bucket {
    /// One gateway's share of `rate` when `replicas` gateways serve the key: the rate divided
    /// by them, the burst too (rounded up, at least 1).
    pub fn of(rate: Rate, replicas: u32) -> Bucket {
        let replicas = u64::from(replicas.max(1));
        Bucket {
            interval: (replicas * NANOS).div_ceil(u64::from(rate.per_second.max(1))),
            burst: u64::from(rate.burst).div_ceil(replicas).max(1),
        }
    }

    /// The bucket's depth in nanoseconds.
    fn depth(&self) -> u64 {
        self.interval.saturating_mul(self.burst)
    }

    /// Judges a request at `now` (ns) against the stored `tat` (0 for a bucket never used).
    pub fn take(&self, tat: u64, now: u64) -> Result<Admitted, Limited> {
        let depth = self.depth();
        // Admitting never leaves the TAT more than one depth ahead, so a TAT beyond it means
        // the clock went back: the bucket counts as holding one request, then refills at the
        // rate from the clock as it now reads (never a wait as long as the step back).
        let tat = if tat > now.saturating_add(depth) {
            now.saturating_add(depth - self.interval)
        } else {
            tat.max(now)
        };
        let next = tat.saturating_add(self.interval);
        let ahead = next - now;
        if ahead > depth {
            let wait = ahead - depth;
            return Err(Limited {
                retry_after: wait.div_ceil(NANOS).max(1),
                burst: self.burst,
                window: depth.div_ceil(NANOS).max(1),
            });
        }
        Ok(Admitted {
            tat: next,
            remaining: (depth - ahead) / self.interval,
        })
    }
}

impl Limited {
    /// `Retry-After`, `RateLimit-Policy` and `RateLimit` values (draft-ietf-httpapi-ratelimit-
    /// headers-09: `"default";q=<burst>;w=<seconds>` and `"default";r=<remaining>;t=<seconds>`).
    pub fn header_values(&self) -> [String; 3] {
        [
            self.retry_after.to_string(),
            format!("\"default\";q={};w={}", self.burst, self.window),
            format!("\"default\";r=0;t={}", self.retry_after),
        ]
    }
}

#[cfg(test)]
mod tests;
