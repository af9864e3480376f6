//! The bucket arithmetic and the checks of declared limits.
#![allow(clippy::unwrap_used)]

use super::*;

const S: u64 = NANOS;

fn bucket(per_second: u32, burst: u32) -> Bucket {
    Bucket::of(Rate { per_second, burst }, 1)
}

/// Requests admitted out of `n` sent evenly over `secs` seconds from `start`.
fn admitted(b: &Bucket, tat: &mut u64, start: u64, n: u64, secs: u64) -> u64 {
    (0..n)
        .filter(|i| {
            let now = start + i * secs * S / n;
            match b.take(*tat, now) {
                Ok(a) => {
                    *tat = a.tat;
                    true
                }
                Err(_) => false,
            }
        })
        .count() as u64
}

#[test]
fn a_new_bucket_admits_one_burst_then_refuses() {
    let b = bucket(10, 5);
    let (mut tat, now) = (0, 1_000 * S);
    for left in (0..5).rev() {
        let a = b.take(tat, now).unwrap();
        assert_eq!(a.remaining, left);
        tat = a.tat;
    }
    let refused = b.take(tat, now).unwrap_err();
    assert_eq!(refused.retry_after, 1, "100 ms rounds up to a second");
    assert_eq!((refused.burst, refused.window), (5, 1));
}

#[test]
fn the_sustained_rate_is_the_declared_rate() {
    let b = bucket(100, 10);
    let mut tat = 0;
    // 2× the rate for 10 s: one burst plus 100/s.
    let n = admitted(&b, &mut tat, 5_000 * S, 2_000, 10);
    assert!((1_000..=1_011).contains(&n), "{n}");
}

#[test]
fn an_empty_bucket_refills_at_the_rate() {
    let b = bucket(2, 2);
    let now = 10 * S;
    let mut tat = b.take(0, now).unwrap().tat;
    tat = b.take(tat, now).unwrap().tat;
    let limited = b.take(tat, now).unwrap_err();
    assert_eq!(limited.retry_after, 1);
    assert!(b.take(tat, now + S / 2 - 1).is_err());
    assert!(
        b.take(tat, now + S / 2).is_ok(),
        "one token back after 500 ms"
    );
    assert_eq!(
        b.take(tat, now + S).unwrap().remaining,
        1,
        "full again after 1 s"
    );
}

#[test]
fn retry_after_is_whole_seconds_rounded_up() {
    let b = bucket(1, 1);
    let tat = b.take(0, 100 * S).unwrap().tat;
    assert_eq!(b.take(tat, 100 * S).unwrap_err().retry_after, 1);
    let slow = Bucket {
        interval: 30 * S / 10,
        burst: 1,
    };
    let tat = slow.take(0, 100 * S).unwrap().tat;
    assert_eq!(slow.take(tat, 100 * S + 1).unwrap_err().retry_after, 3);
}

#[test]
fn a_clock_going_back_never_waits_more_than_an_empty_bucket() {
    let b = bucket(10, 5);
    let mut tat = 0;
    for _ in 0..5 {
        tat = b.take(tat, 10_000 * S).unwrap().tat;
    }
    assert!(b.take(tat, 10_000 * S).is_err());
    // The clock steps back an hour: one request, then an empty bucket refilling at the
    // rate, not a bucket empty for an hour.
    let back = 10_000 * S - 3_600 * S;
    let one = b.take(tat, back).unwrap();
    assert_eq!(one.remaining, 0);
    let refused = b.take(one.tat, back).unwrap_err();
    assert_eq!(refused.retry_after, 1);
    assert!(b.take(one.tat, back + S / 10).is_ok());
    // And a clock at 0 with any TAT does not underflow.
    assert!(b.take(u64::MAX, 0).is_ok());
}

#[test]
fn the_rate_is_split_across_replicas() {
    let b = Bucket::of(
        Rate {
            per_second: 100,
            burst: 10,
        },
        4,
    );
    assert_eq!(b.interval, 40_000_000, "25/s per gateway");
    assert_eq!(b.burst, 3, "10 over 4, rounded up");
    let one = Bucket::of(
        Rate {
            per_second: 3,
            burst: 1,
        },
        4,
    );
    assert_eq!(one.burst, 1, "never below one request");
}

#[test]
fn a_lower_limit_applies_to_the_tat_a_key_has() {
    let fast = bucket(100, 100);
    let mut tat = 0;
    let now = 50 * S;
    for _ in 0..10 {
        tat = fast.take(tat, now).unwrap().tat;
    }
    // Cut to 1/s burst 1: the 100 ms already spent leave the bucket empty.
    let slow = bucket(1, 1);
    assert!(slow.take(tat, now).is_err());
    assert!(slow.take(tat, now + S).is_ok());
}

#[test]
fn headers_follow_the_draft() {
    let l = Limited {
        retry_after: 2,
        burst: 5,
        window: 1,
    };
    assert_eq!(
        l.header_values(),
        ["2", "\"default\";q=5;w=1", "\"default\";r=0;t=2"]
    );
}

#[test]
fn declared_limits_are_checked() {
    let l = |r: Option<u32>, b: Option<u32>| RateLimits {
        requests_per_second: r,
        burst: b,
        quotas: vec![],
    };
    assert!(l(Some(10), Some(20)).check().is_ok());
    assert!(l(None, None).check().is_ok());
    for (bad, says) in [
        (l(Some(0), None), "requestsPerSecond is 0"),
        (l(Some(MAX_RATE + 1), None), "between 1 and 1000000"),
        (l(Some(5), Some(0)), "burst is 0"),
        (l(None, Some(5)), "needs limits.requestsPerSecond"),
    ] {
        let m = bad.check().unwrap_err();
        assert!(m.contains(says), "{m}");
    }
    let q = |requests, per| Quota { requests, per };
    let mut quotas = l(Some(1), None);
    quotas.quotas = vec![q(10, Period::Day), q(0, Period::Hour)];
    assert!(quotas
        .check()
        .unwrap_err()
        .contains("quotas[1].requests is 0"));
    quotas.quotas = vec![q(10, Period::Day), q(20, Period::Day)];
    assert!(quotas
        .check()
        .unwrap_err()
        .contains("more than one quota per day"));
    assert_eq!(
        l(Some(7), None).rate().unwrap().burst,
        7,
        "burst defaults to the rate"
    );
}

#[test]
fn negative_numbers_do_not_parse() {
    let e = serde_json::from_str::<RateLimits>(r#"{"requestsPerSecond": -1}"#).unwrap_err();
    assert!(e.to_string().contains("-1"), "{e}");
}

#[test]
fn looser_limits_are_named() {
    let mine = RateLimits {
        requests_per_second: Some(10),
        burst: Some(20),
        quotas: vec![Quota {
            requests: 1_000,
            per: Period::Day,
        }],
    };
    let asked = |r, b, q| RateLimits {
        requests_per_second: r,
        burst: b,
        quotas: q,
    };
    let day = |n| {
        vec![Quota {
            requests: n,
            per: Period::Day,
        }]
    };
    assert_eq!(mine.looser(&asked(Some(10), Some(20), day(1_000))), None);
    assert_eq!(mine.looser(&asked(Some(5), None, day(10))), None);
    for (a, says) in [
        (asked(None, None, day(1)), "no requestsPerSecond"),
        (asked(Some(11), None, day(1)), "requestsPerSecond 11"),
        (asked(Some(10), Some(21), day(1)), "burst 21"),
        (asked(Some(1), None, vec![]), "no quota per day"),
        (asked(Some(1), None, day(1_001)), "1001 per day"),
    ] {
        let m = mine.looser(&a).unwrap();
        assert!(m.contains(says), "{m}");
    }
    assert_eq!(
        RateLimits::default().looser(&asked(None, None, vec![])),
        None
    );
}

#[test]
fn quota_periods_are_utc_calendar_periods() {
    let t = crate::time::parse_rfc3339("2026-12-31T23:59:59Z").unwrap();
    let at = |s: &str| crate::time::parse_rfc3339(s).unwrap();
    assert_eq!(
        Period::Hour.bounds(t),
        (at("2026-12-31T23:00:00Z"), at("2027-01-01T00:00:00Z"))
    );
    assert_eq!(
        Period::Day.bounds(t),
        (at("2026-12-31T00:00:00Z"), at("2027-01-01T00:00:00Z"))
    );
    assert_eq!(
        Period::Month.bounds(t),
        (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
    );
    assert_eq!(
        Period::Month.bounds(at("2028-02-29T12:00:00Z")),
        (at("2028-02-01T00:00:00Z"), at("2028-03-01T00:00:00Z"))
    );
}
