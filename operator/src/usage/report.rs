//! A gateway's usage report (`POST /v2/keys/usage`, the filter's `usage::Report`), read with
//! bounds: nothing in it is trusted to change a key's state, and a count no gateway could have
//! served in one report interval is clamped (and logged by the caller).

use super::Counts;
use layergate_filter::usage::REASONS;
use serde_json::Value;

/// Keys one report may name (the filter sends at most `MAX_REPORT_KEYS`, 2,000).
pub const MAX_KEYS: usize = 10_000;

/// The most one count of one report may say: 10,000,000 (a gateway process serving 100,000
/// requests a second for 60 s, the longest report interval, would count 6,000,000).
pub const MAX_COUNT: u64 = 10_000_000;

/// A report as read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Counts by key name.
    pub keys: Vec<(String, Counts)>,
    /// Requests of keys the gateway could not tally (its tally was full).
    pub dropped: u64,
    /// Counts that were over [`MAX_COUNT`] and were cut to it.
    pub clamped: usize,
}

/// Reads a report body: `{"keys":{"<name>":{"read":3,"403":1}},"dropped":0}`. `Err` says
/// what is wrong with it (a 400).
pub fn read(body: &[u8]) -> Result<Report, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the report is not JSON: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(Value::as_object)
        .ok_or("the report has no \"keys\" object")?;
    if keys.len() > MAX_KEYS {
        return Err(format!(
            "the report names {} keys; at most {MAX_KEYS} per report",
            keys.len()
        ));
    }
    let mut report = Report {
        keys: Vec::with_capacity(keys.len()),
        dropped: 0,
        clamped: 0,
    };
    let mut clamp = |n: &Value, what: &str| -> Result<u64, String> {
        let n = n
            .as_u64()
            .ok_or_else(|| format!("{what}: a count must be a whole number ≥ 0"))?;
        if n > MAX_COUNT {
            report.clamped += 1;
        }
        Ok(n.min(MAX_COUNT))
    };
    let mut read_keys = Vec::with_capacity(keys.len());
    for (name, counts) in keys {
        let counts = counts
            .as_object()
            .ok_or_else(|| format!("key {name:?}: counts must be an object"))?;
        let mut c = Counts::default();
        for (what, n) in counts {
            let n = clamp(n, &format!("key {name:?} {what:?}"))?;
            let slot = match what.as_str() {
                "read" => &mut c.allowed[0],
                "write" => &mut c.allowed[1],
                "admin" => &mut c.allowed[2],
                status => {
                    let at = status
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| REASONS.iter().position(|&r| r == s))
                        .ok_or_else(|| {
                            format!(
                                "key {name:?}: {what:?} is neither a scope nor a refusal status"
                            )
                        })?;
                    &mut c.refused[at]
                }
            };
            *slot = slot.saturating_add(n);
        }
        read_keys.push((name.clone(), c));
    }
    report.dropped = match v.get("dropped") {
        None => 0,
        Some(n) => clamp(n, "dropped")?,
    };
    report.keys = read_keys;
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_read_and_absurd_counts_are_clamped() {
        let r = read(
            br#"{"keys":{"shop":{"read":3,"403":1},"big":{"write":99999999999}},"dropped":2}"#,
        )
        .expect("a report");
        assert_eq!(r.dropped, 2);
        assert_eq!(r.clamped, 1);
        let shop = &r.keys.iter().find(|(n, _)| n == "shop").expect("shop").1;
        assert_eq!((shop.allowed[0], shop.refused[2]), (3, 1));
        let big = &r.keys.iter().find(|(n, _)| n == "big").expect("big").1;
        assert_eq!(big.allowed[1], MAX_COUNT);
    }

    #[test]
    fn a_malformed_report_says_what_is_wrong() {
        for (body, says) in [
            (&b"nope"[..], "not JSON"),
            (br#"{}"#, "no \"keys\""),
            (br#"{"keys":{"a":{"read":-1}}}"#, "whole number"),
            (br#"{"keys":{"a":{"read":1.5}}}"#, "whole number"),
            (br#"{"keys":{"a":{"delete":1}}}"#, "neither a scope"),
            (br#"{"keys":{"a":{"418":1}}}"#, "neither a scope"),
            (br#"{"keys":{"a":[1]}}"#, "must be an object"),
        ] {
            let e = read(body).expect_err("refused");
            assert!(e.contains(says), "{e}");
        }
        let many: serde_json::Map<String, Value> = (0..=MAX_KEYS)
            .map(|i| (format!("k{i}"), serde_json::json!({"read": 1})))
            .collect();
        let body = serde_json::json!({ "keys": many }).to_string();
        assert!(read(body.as_bytes())
            .expect_err("too many")
            .contains("at most"));
    }
}
