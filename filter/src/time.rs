//! Time values that reach the filter, parsed without a date crate and without panicking on any
//! input: RFC 3339 timestamps (`2027-01-01T00:00:00Z`) to Unix seconds and back, and key
//! lifetimes (`365d`, `12h`, `30m`, `45s`, `never`). The operator uses these same functions,
//! so it refuses exactly what the filter refuses (SPEC §7).

/// The latest instant an expiry may name: `9999-12-31T23:59:59Z`. RFC 3339 has four-digit
/// years, so nothing later can be written down (or read back by [`parse_rfc3339`]).
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// The longest lifetime a key may be given: 100 years (36,500 days). Longer lifetimes would
/// push an expiry past [`MAX_TIMESTAMP`] for keys created late enough; `never` exists for that.
pub const MAX_LIFETIME_SECS: i64 = 36_500 * 86_400;

/// Why a lifetime was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expiresAfter {value:?} {reason}")]
pub struct DurationError {
    /// The value as given (truncated to 64 characters, for messages).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a key lifetime: a positive whole number of days, hours, minutes or seconds (`365d`,
/// `12h`, `30m`, `45s`), at most [`MAX_LIFETIME_SECS`]; `never` → `None`. ASCII only; never
/// panics or overflows, whatever the input.
pub fn parse_duration(s: &str) -> Result<Option<i64>, DurationError> {
    let err = |reason| DurationError {
        value: s.chars().take(64).collect(),
        reason,
    };
    if s == "never" {
        return Ok(None);
    }
    let b = s.as_bytes();
    let Some((&unit, digits)) = b.split_last() else {
        return Err(err(
            "is empty; use a duration like 365d, 12h, 30m, 45s, or never",
        ));
    };
    let mult: i64 = match unit {
        b'd' => 86_400,
        b'h' => 3_600,
        b'm' => 60,
        b's' => 1,
        _ => return Err(err("must end in d, h, m or s (like 365d), or be never")),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(err(
            "must be a whole number followed by d, h, m or s (like 365d), or never",
        ));
    }
    if digits.len() > 1 && digits[0] == b'0' {
        return Err(err("must not start with 0 (write 30d, not 030d)"));
    }
    // More than 12 digits is over the limit in any unit; checking first keeps the arithmetic small.
    let n = if digits.len() > 12 {
        None
    } else {
        digits.iter().try_fold(0i64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(i64::from(d - b'0'))
        })
    };
    match n.and_then(|n| n.checked_mul(mult)) {
        Some(0) => Err(err("must be positive")),
        Some(secs) if secs <= MAX_LIFETIME_SECS => Ok(Some(secs)),
        _ => Err(err(
            "is longer than 100 years (36500d); use never for a key that does not expire",
        )),
    }
}

/// A regular expression (anchored, RE2/ECMAScript/Python compatible) matching exactly the
/// lifetimes [`parse_duration`] accepts — `never`, or 1 up to 100 years in d, h, m or s — for
/// the CRD schema, so `kubectl apply` refuses what the operator would refuse.
pub fn duration_pattern() -> String {
    let units = [('d', 86_400u64), ('h', 3_600), ('m', 60), ('s', 1)];
    let alts: Vec<String> = units
        .iter()
        .map(|(u, mult)| format!("({}){u}", up_to(MAX_LIFETIME_SECS as u64 / mult)))
        .collect();
    format!("^(never|{})$", alts.join("|"))
}

/// A regular expression for the decimal numbers 1..=n without leading zeros.
fn up_to(n: u64) -> String {
    let digits: Vec<u8> = n.to_string().bytes().map(|b| b - b'0').collect();
    let len = digits.len();
    let mut alts = Vec::new();
    // Fewer digits than n: any such number.
    match len {
        0 | 1 => {}
        2 => alts.push("[1-9]".to_owned()),
        _ => alts.push(format!("[1-9][0-9]{{0,{}}}", len - 2)),
    }
    // As many digits as n: the same prefix, then a smaller digit, then anything.
    for i in 0..len {
        let low = u8::from(i == 0);
        if digits[i] > low {
            let prefix: String = digits[..i].iter().map(|d| char::from(b'0' + d)).collect();
            let rest = len - i - 1;
            let tail = if rest == 0 {
                String::new()
            } else {
                format!("[0-9]{{{rest}}}")
            };
            alts.push(format!("{prefix}[{low}-{}]{tail}", digits[i] - 1));
        }
    }
    alts.push(n.to_string());
    alts.join("|")
}

/// The expiry of a key created at `created` (Unix seconds) with `lifetime` (from
/// [`parse_duration`]); an error when it cannot be written as an RFC 3339 timestamp.
pub fn expiry(created: i64, lifetime: Option<i64>) -> Result<Option<i64>, &'static str> {
    match lifetime {
        None => Ok(None),
        Some(l) => match created.checked_add(l) {
            Some(at) if (0..=MAX_TIMESTAMP).contains(&at) => Ok(Some(at)),
            _ => Err("the expiry would fall outside 1970-01-01..9999-12-31"),
        },
    }
}

/// Formats Unix seconds as RFC 3339 UTC (`2027-01-01T00:00:00Z`), exactly what
/// [`parse_rfc3339`] reads back; `None` outside 1970-01-01T00:00:00Z..=[`MAX_TIMESTAMP`].
pub fn format_rfc3339(secs: i64) -> Option<String> {
    if !(0..=MAX_TIMESTAMP).contains(&secs) {
        return None;
    }
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into Unix seconds. Byte-wise: any input,
/// multibyte characters included, gives `Some` or `None`, never a panic.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        part.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || min > 59
        || sec > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (h, m) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'-' {
                -(h * 3600 + m * 60)
            } else {
                h * 3600 + m * 60
            }
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_offsets_and_fractions() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00Z"), Some(1_798_761_600));
        assert_eq!(
            parse_rfc3339("2027-01-01T01:00:00+01:00"),
            Some(1_798_761_600)
        );
        assert_eq!(
            parse_rfc3339("2026-11-24T13:58:39.123Z"),
            Some(1_795_528_719)
        );
    }

    #[test]
    fn rejects_malformed_timestamps() {
        for s in [
            "",
            "2027-01-01",
            "2027-13-01T00:00:00Z",
            "2027-01-01T00:00:00",
            "2027-01-01T00:00:00+0100",
            "20x7-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s}");
        }
    }

    #[test]
    fn a_timestamp_with_a_multibyte_offset_is_refused_not_a_panic() {
        // Byte 3 of the offset sits inside 'é': slicing the string there used to panic.
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00+é:0"), None);
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00+0é00"), None);
        assert_eq!(parse_rfc3339("2027-01-01T00:00:0日Z"), None);
        assert_eq!(
            parse_rfc3339("2027-02-30T00:00:00Z"),
            None,
            "no 30 February"
        );
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00+24:00"), None);
    }

    #[test]
    fn durations_in_every_unit_and_never() {
        assert_eq!(parse_duration("365d"), Ok(Some(365 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Some(12 * 3600)));
        assert_eq!(parse_duration("30m"), Ok(Some(1800)));
        assert_eq!(parse_duration("45s"), Ok(Some(45)));
        assert_eq!(parse_duration("36500d"), Ok(Some(MAX_LIFETIME_SECS)));
        assert_eq!(parse_duration("never"), Ok(None));
    }

    #[test]
    fn malformed_huge_and_multibyte_durations_are_refused_not_a_panic() {
        for s in [
            "",
            "d",
            "5",
            "5日",
            "日",
            "5d日",
            "0d",
            "-5d",
            "+5d",
            " 5d",
            "5 d",
            "5D",
            "5w",
            "1.5d",
            "36501d",
            "030d",
            "00d",
            "3000000d",
            "999999999999999999d",
            "99999999999999999999999999999999s",
            "Never",
        ] {
            let e = parse_duration(s);
            assert!(e.is_err(), "{s:?} gave {e:?}");
        }
        let e = parse_duration("3000000d")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("100 years") && e.contains("never"), "{e}");
    }

    #[test]
    fn the_schema_pattern_bounds_each_unit_at_100_years() {
        let p = duration_pattern();
        assert!(p.starts_with("^(never|(") && p.ends_with(")s)$"), "{p}");
        assert!(p.contains("|36500)d"), "{p}");
        assert!(p.contains("|876000)h"), "{p}");
        assert_eq!(up_to(9), "[1-8]|9");
        assert_eq!(up_to(10), "[1-9]|10");
        assert_eq!(
            up_to(36500),
            "[1-9][0-9]{0,3}|[1-2][0-9]{4}|3[0-5][0-9]{3}|36[0-4][0-9]{2}|36500"
        );
    }

    #[test]
    fn an_expiry_past_year_9999_is_refused() {
        assert_eq!(expiry(0, Some(86_400)), Ok(Some(86_400)));
        assert_eq!(expiry(0, None), Ok(None));
        assert!(expiry(MAX_TIMESTAMP, Some(1)).is_err());
        assert!(expiry(i64::MAX, Some(MAX_LIFETIME_SECS)).is_err());
    }

    #[test]
    fn formatting_reads_back_and_stays_in_range() {
        assert_eq!(format_rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            format_rfc3339(MAX_TIMESTAMP).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(format_rfc3339(MAX_TIMESTAMP + 1), None);
        assert_eq!(format_rfc3339(-1), None);
        assert_eq!(
            format_rfc3339(1_798_761_600).as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
    }

    /// A small deterministic generator (xorshift64*), so the property tests need no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Replaces, inserts or deletes a few characters, drawing from ASCII, digits, the
    /// duration/timestamp punctuation and multibyte characters.
    fn mutate(rng: &mut Rng, s: &str) -> String {
        const POOL: &[char] = &[
            '0',
            '9',
            'd',
            'h',
            'm',
            's',
            'T',
            'Z',
            ':',
            '-',
            '+',
            '.',
            ' ',
            'é',
            '日',
            '\u{1F600}',
            '\0',
            'x',
        ];
        let mut chars: Vec<char> = s.chars().collect();
        for _ in 0..=rng.below(3) {
            let c = POOL[rng.below(POOL.len())];
            let at = rng.below(chars.len() + 1);
            match rng.below(3) {
                0 if at < chars.len() => chars[at] = c,
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ => chars.insert(at, c),
            }
        }
        chars.into_iter().collect()
    }

    #[test]
    fn property_parsers_never_panic_and_round_trip() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut executions = 0u32;
        let runs: u32 = std::env::var("LAYERGATE_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        for _ in 0..runs {
            let secs = (rng.next() % (MAX_TIMESTAMP as u64 + 1)) as i64;
            let text = format_rfc3339(secs).unwrap_or_default();
            assert_eq!(parse_rfc3339(&text), Some(secs), "{text}");
            let mutated = mutate(&mut rng, &text);
            if let Some(t) = parse_rfc3339(&mutated) {
                // Whatever parses lies in years 0000..=9999 (an offset may move it a day).
                assert!(
                    (-62_167_219_200 - 86_400..=MAX_TIMESTAMP + 86_400).contains(&t),
                    "{mutated} → {t}"
                );
            }
            let d = format!(
                "{}{}",
                rng.next() % 100_000,
                ["d", "h", "m", "s"][rng.below(4)]
            );
            if let Ok(Some(l)) = parse_duration(&d) {
                assert!(l > 0 && l <= MAX_LIFETIME_SECS);
            }
            let _ = parse_duration(&mutate(&mut rng, &d));
            executions += 4;
        }
        eprintln!("time parsers: {executions} executions");
    }
}
