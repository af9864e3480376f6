//! Per-key limits (issue 25) as the CRDs declare them, and their one conversion into the
//! filter's [`RateLimits`], checked by the filter's own [`RateLimits::check`] (the operator
//! refuses exactly what the filter refuses).
//!
//! `spec.limits` of an ApiKey, `limits` of an inbound key and a store's
//! `inboundAuth.defaultKeyLimits` share the shape. Numbers are read as `int64`, so a negative
//! or huge value reaches validation (a condition on that key) instead of failing to parse.

use layergate_filter::ratelimit::{Period, Quota, RateLimits, MAX_QUOTA, MAX_RATE};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Per-key limits, a layergate extension (hev layer's own CRDs do not carry it, and manifests
/// written for hev layer apply unchanged). The gateway enforces the rate (429 with
/// `Retry-After`), split across `--gateway-replicas` gateways; quotas are declared here and
/// counted by the operator from the gateways' usage reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Sustained requests per second across all gateways, 1 to 1,000,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rate_number")]
    pub requests_per_second: Option<i64>,
    /// Requests that may arrive at once after a quiet spell, 1 to 1,000,000; default
    /// requestsPerSecond. Needs requestsPerSecond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rate_number")]
    pub burst: Option<i64>,
    /// Requests per hour, day or month; one quota per period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaSpec>,
}

/// A request quota per period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpec {
    /// Requests allowed per period, 1 to 10^12.
    #[schemars(schema_with = "quota_number")]
    pub requests: i64,
    /// hour, day or month.
    #[schemars(schema_with = "quota_period")]
    pub per: String,
}

fn rate_number(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "integer", "format": "int64", "nullable": true,
        "minimum": 1, "maximum": layergate_filter::ratelimit::MAX_RATE})
}

fn quota_number(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "integer", "format": "int64",
        "minimum": 1, "maximum": layergate_filter::ratelimit::MAX_QUOTA})
}

fn quota_period(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["hour", "day", "month"]})
}

/// The filter's form of `spec` (`what` names the field in messages), or what is wrong with it.
pub fn rate_limits(spec: &LimitsSpec, what: &str) -> Result<RateLimits, String> {
    let rate = |field: &str, v: Option<i64>| -> Result<Option<u32>, String> {
        match v {
            None => Ok(None),
            Some(n) if (1..=i64::from(MAX_RATE)).contains(&n) => Ok(u32::try_from(n).ok()),
            Some(n) => Err(format!(
                "{what}.{field} is {n}; it must be between 1 and {MAX_RATE}"
            )),
        }
    };
    let mut quotas = Vec::with_capacity(spec.quotas.len());
    for (i, q) in spec.quotas.iter().enumerate() {
        let per = match q.per.as_str() {
            "hour" => Period::Hour,
            "day" => Period::Day,
            "month" => Period::Month,
            other => {
                return Err(format!(
                    "{what}.quotas[{i}].per is {other:?}; it must be hour, day or month"
                ))
            }
        };
        let requests = u64::try_from(q.requests)
            .ok()
            .filter(|n| (1..=MAX_QUOTA).contains(n))
            .ok_or_else(|| {
                format!(
                    "{what}.quotas[{i}].requests is {}; it must be between 1 and {MAX_QUOTA}",
                    q.requests
                )
            })?;
        quotas.push(Quota { requests, per });
    }
    let limits = RateLimits {
        requests_per_second: rate("requestsPerSecond", spec.requests_per_second)?,
        burst: rate("burst", spec.burst)?,
        quotas,
    };
    limits.check().map_err(|m| m.replacen("limits", what, 1))?;
    Ok(limits)
}

/// The CRD form of the filter's limits (what a mint writes into the spec).
pub fn limits_spec(l: &RateLimits) -> LimitsSpec {
    LimitsSpec {
        requests_per_second: l.requests_per_second.map(i64::from),
        burst: l.burst.map(i64::from),
        quotas: l
            .quotas
            .iter()
            .map(|q| QuotaSpec {
                requests: i64::try_from(q.requests).unwrap_or(i64::MAX),
                per: q.per.as_str().to_owned(),
            })
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(r: Option<i64>, b: Option<i64>) -> LimitsSpec {
        LimitsSpec {
            requests_per_second: r,
            burst: b,
            quotas: vec![],
        }
    }

    #[test]
    fn negative_zero_and_absurd_limits_are_refused_with_the_bound() {
        for (bad, says) in [
            (
                spec(Some(-5), None),
                "spec.limits.requestsPerSecond is -5; it must be between 1 and 1000000",
            ),
            (spec(Some(0), None), "spec.limits.requestsPerSecond is 0"),
            (
                spec(Some(5_000_000_000), None),
                "is 5000000000; it must be between 1 and 1000000",
            ),
            (spec(Some(10), Some(-1)), "spec.limits.burst is -1"),
            (spec(None, Some(3)), "spec.limits.burst needs"),
        ] {
            let m = rate_limits(&bad, "spec.limits").unwrap_err();
            assert!(m.contains(says), "{m}");
        }
        let mut q = spec(Some(1), None);
        q.quotas = vec![QuotaSpec {
            requests: 10,
            per: "week".into(),
        }];
        assert!(rate_limits(&q, "limits")
            .unwrap_err()
            .contains("hour, day or month"));
        q.quotas = vec![QuotaSpec {
            requests: -10,
            per: "day".into(),
        }];
        assert!(rate_limits(&q, "limits")
            .unwrap_err()
            .contains("requests is -10"));
    }

    #[test]
    fn good_limits_convert_both_ways() {
        let mut s = spec(Some(20), Some(40));
        s.quotas = vec![QuotaSpec {
            requests: 1_000,
            per: "day".into(),
        }];
        let l = rate_limits(&s, "spec.limits").unwrap();
        assert_eq!(l.rate().map(|r| (r.per_second, r.burst)), Some((20, 40)));
        assert_eq!(limits_spec(&l), s);
    }
}
