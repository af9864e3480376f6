//! An Active key's `ExpiringSoon` condition: when a key is in the window before its
//! `expiresAt`, and what the condition says. The one place this is decided: the key's verdict
//! carries the condition, and the incremental pass ([`super::Earlier`]) judges a key again
//! when it enters the window, as it does when its expiry comes.

use super::*;

/// The default window (`--expiring-soon`): an Active key is `ExpiringSoon` 7 days before it
/// expires.
pub const DEFAULT_EXPIRING_SOON: i64 = 7 * 86_400;

/// What turns the condition off (`--expiring-soon off`): no key carries it.
pub const EXPIRING_SOON_OFF: &str = "off";

/// The window as given on the command line: a duration in the filter's own syntax (`7d`,
/// `36h`, `90m`, `45s`), or `off`. `None`: off.
pub fn parse_window(text: &str) -> Result<Option<i64>, String> {
    if text == EXPIRING_SOON_OFF {
        return Ok(None);
    }
    match parse_duration(text) {
        Ok(Some(secs)) => Ok(Some(secs)),
        Ok(None) => Err(format!(
            "{text:?} is not a window; to turn ExpiringSoon off, say {EXPIRING_SOON_OFF}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// True when a key expiring at `expires_at` is in the window before it at `now` (and not
/// expired yet).
pub fn in_window(expires_at: i64, now: i64, window: Option<i64>) -> bool {
    window.is_some_and(|w| now < expires_at && expires_at.saturating_sub(w) <= now)
}

/// What `conditions` say of `ExpiringSoon`: `Some(true)` when the key is, `Some(false)` when
/// it is not, `None` when they carry no such condition (a key that is not Active, or the
/// window is off).
pub fn says_expiring_soon(conditions: &[Condition]) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == conditions::EXPIRING_SOON)
        .map(|c| c.status == "True")
}

/// The `ExpiringSoon` condition of an Active key expiring at `expires_at` (`None`: never), or
/// none when the window is off. Its message names `expiresAt` and the window, never the time
/// left: it does not change from pass to pass, so the key's status is written, and its Event
/// recorded, once when it turns True.
pub fn condition_of(
    expires_at: Option<i64>,
    now: i64,
    window: Option<i64>,
    generation: Option<i64>,
) -> Option<Condition> {
    let w = window?;
    let (ok, reason, message) = match expires_at {
        Some(at) if in_window(at, now, window) => (
            true,
            reason::EXPIRES_WITHIN,
            format!(
                "expires at {} (within {}): before then mint a new key (POST /v2/keys) and move \
                 its clients to it, or lengthen spec.expiresAfter (a rotation keeps the expiry)",
                rfc3339(at),
                format_window(w)
            ),
        ),
        Some(at) => (
            false,
            reason::EXPIRES_LATER,
            format!(
                "expires at {}, more than {} away",
                rfc3339(at),
                format_window(w)
            ),
        ),
        None => (false, reason::EXPIRES_LATER, "never expires".to_owned()),
    };
    Some(condition(
        conditions::EXPIRING_SOON,
        ok,
        reason,
        message,
        generation,
        now,
    ))
}

/// Seconds in the largest unit that divides them (`604800` → `7d`, `5400` → `90m`): how the
/// window is written on the command line.
pub fn format_window(secs: i64) -> String {
    for (unit, mult) in [('d', 86_400), ('h', 3_600), ('m', 60)] {
        if secs % mult == 0 {
            return format!("{}{unit}", secs / mult);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_window_parses_as_a_duration_or_off_and_says_what_is_wrong() {
        assert_eq!(parse_window("7d"), Ok(Some(DEFAULT_EXPIRING_SOON)));
        assert_eq!(parse_window("36h"), Ok(Some(36 * 3_600)));
        assert_eq!(parse_window("off"), Ok(None));
        let never = parse_window("never").unwrap_err();
        assert!(never.contains("off"), "{never}");
        for bad in ["", "0d", "7", "-1d", "7 d", "1y"] {
            assert!(parse_window(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_key_is_in_the_window_from_its_start_until_it_expires() {
        let at = 1_000_000;
        let w = Some(100);
        assert!(!in_window(at, at - 101, w));
        assert!(in_window(at, at - 100, w));
        assert!(in_window(at, at - 1, w));
        assert!(!in_window(at, at, w), "expired is not expiring");
        assert!(!in_window(at, at - 1, None), "off");
    }

    #[test]
    fn the_message_does_not_count_down() {
        let at = 1_800_000_000;
        let c = |now| condition_of(Some(at), now, Some(DEFAULT_EXPIRING_SOON), Some(1));
        let (a, b) = (c(at - 3 * 86_400).unwrap(), c(at - 86_400).unwrap());
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            ("True", "ExpiresWithin")
        );
        assert_eq!(a.message, b.message);
        assert!(
            a.message.contains(&rfc3339(at)) && a.message.contains("7d"),
            "{}",
            a.message
        );
        assert!(a.message.contains("POST /v2/keys"), "{}", a.message);
        let later = c(at - 8 * 86_400).unwrap();
        assert_eq!(
            (later.status.as_str(), later.reason.as_str()),
            ("False", "ExpiresLater")
        );
        assert!(condition_of(Some(at), at - 1, None, None).is_none());
        assert_eq!(format_window(5_400), "90m");
        assert_eq!(format_window(90), "90s");
        assert_eq!(format_window(36 * 3_600), "36h");
    }
}
