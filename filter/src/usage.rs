//! Per-key usage (SPEC §6, issue 24): what a gateway counts for each minted key it judged —
//! requests allowed per scope, refused per status — and hands to the operator's key service,
//! which adds the reports of every VM and gateway up for `lastSeenAt`, usage answers and quotas.
//!
//! ```text
//!  request ─► Tally::record (in the VM, or the worker thread's tally natively)
//!  every tick ─► Reporter::due ─► Report (up to MAX_REPORT_KEYS keys, taken out of the tally)
//!            ─► POST keyService.usagePath ─► 200: done │ anything else: put back, back off
//! ```
//!
//! Bounded: a tally holds at most [`MAX_TALLY_KEYS`] keys (about 100 bytes each); a key first
//! seen when it is full is counted in `dropped` (reported, so the loss is visible) and the
//! report goes out at once. A report names at most [`MAX_REPORT_KEYS`] keys; the rest wait for
//! the next. Reports travel on a call of their own beside the sync, not with it: the sync is a
//! long poll held up to 30 s, and usage that waited for it would reach the operator (and a
//! spent quota every gateway) up to 30 s late.
//!
//! Plain Rust: no host calls. Keys are named by their ApiKey name (what the table holds; the
//! key service serves one key per name).

use crate::auth::Principal;
use crate::decision::Trace;
use crate::fasthash::FastMap;
use crate::policy::{Grant, KeyService, Policy};
use crate::scope::Scope;
use std::fmt::Write as _;

/// The statuses a refusal is counted under, in report order.
pub const REASONS: [u16; 8] = [400, 401, 403, 404, 413, 415, 429, 503];

/// Keys one tally holds before new ones are only counted as dropped.
pub const MAX_TALLY_KEYS: usize = 10_000;

/// Keys one report names; the rest stay for the next report.
pub const MAX_REPORT_KEYS: usize = 2_000;

/// How long a report may take before it counts as failed (and its counts go back).
pub const REPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One key's counts since its last report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Allowed requests by the scope their route required (`read`, `write`, `admin`).
    pub allowed: [u32; 3],
    /// Refused requests by status ([`REASONS`]).
    pub refused: [u32; REASONS.len()],
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        for (a, b) in self.allowed.iter_mut().zip(other.allowed) {
            *a = a.saturating_add(b);
        }
        for (a, b) in self.refused.iter_mut().zip(other.refused) {
            *a = a.saturating_add(b);
        }
    }

    /// Every request counted.
    pub fn total(&self) -> u64 {
        self.allowed
            .iter()
            .chain(&self.refused)
            .map(|&n| u64::from(n))
            .sum()
    }
}

fn scope_index(scope: Scope) -> usize {
    match scope {
        Scope::Read => 0,
        Scope::Write => 1,
        Scope::Admin => 2,
    }
}

/// The minted key a request is counted for: the one the decision authenticated, when there is
/// a key service to report to (without one, nothing is counted).
pub fn counted(policy: &Policy, trace: &Trace<'_>) -> Option<usize> {
    policy.key_service.as_ref()?;
    match trace.principal {
        Some(Principal::Token(Grant::Minted(k))) => Some(k),
        _ => None,
    }
}

/// The counts of one VM (wasm) or one worker thread (native) since they were last reported.
#[derive(Debug, Default)]
pub struct Tally {
    keys: FastMap<Box<str>, Counts>,
    /// Requests of keys first seen while the tally was full.
    dropped: u64,
}

impl Tally {
    /// Counts a request's outcome, `decision` being its access-log label (`allowed`,
    /// `denied_403`, …), when the decision knew its principal to be a minted key (a refusal
    /// after authentication counts; one before it has no key to count for). Allocates only for a key's first
    /// request since the last report.
    pub fn record(&mut self, policy: &Policy, trace: &Trace<'_>, decision: &str) {
        let Some(k) = counted(policy, trace) else {
            return;
        };
        let Some(key) = policy.keys.get(k) else {
            return;
        };
        let name = key.name();
        let full = self.keys.len() >= MAX_TALLY_KEYS;
        let counts = match self.keys.get_mut(name) {
            Some(c) => c,
            None if full => {
                self.dropped = self.dropped.saturating_add(1);
                return;
            }
            None => self.keys.entry(name.into()).or_default(),
        };
        let slot = match decision.strip_prefix("denied_") {
            None => &mut counts.allowed[trace.scope.map_or(0, scope_index)],
            Some(status) => {
                let at = status
                    .parse::<u16>()
                    .ok()
                    .and_then(|s| REASONS.iter().position(|&r| r == s));
                match at {
                    Some(i) => &mut counts.refused[i],
                    None => return,
                }
            }
        };
        *slot = slot.saturating_add(1);
    }

    /// True when nothing was counted since the last report.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.dropped == 0
    }

    /// True when new keys are no longer tallied (report now).
    pub fn is_full(&self) -> bool {
        self.keys.len() >= MAX_TALLY_KEYS
    }

    /// Moves everything `other` counted into this tally (a worker's into the reporter's, or a
    /// report that failed back into its tally).
    pub fn absorb(&mut self, other: &mut Tally) {
        for (name, c) in other.keys.drain() {
            let full = self.keys.len() >= MAX_TALLY_KEYS;
            match self.keys.get_mut(&name) {
                Some(mine) => mine.add(&c),
                None if full => {
                    self.dropped = self.dropped.saturating_add(c.total());
                }
                None => {
                    self.keys.insert(name, c);
                }
            }
        }
        self.dropped = self
            .dropped
            .saturating_add(std::mem::take(&mut other.dropped));
    }

    /// Takes up to [`MAX_REPORT_KEYS`] keys out as a report; `None` when nothing was counted.
    pub fn take_report(&mut self) -> Option<Report> {
        if self.is_empty() {
            return None;
        }
        let names: Vec<Box<str>> = self.keys.keys().take(MAX_REPORT_KEYS).cloned().collect();
        let mut taken = Tally {
            keys: FastMap::default(),
            dropped: std::mem::take(&mut self.dropped),
        };
        for name in names {
            if let Some(c) = self.keys.remove(&name) {
                taken.keys.insert(name, c);
            }
        }
        Some(Report { tally: taken })
    }
}

/// Counts taken out of a tally to send: put them back with [`Tally::absorb`] if the report
/// does not reach the key service.
#[derive(Debug)]
pub struct Report {
    /// What the report carries.
    pub tally: Tally,
}

impl Report {
    /// The body: `{"keys":{"<name>":{"read":3,"403":1}},"dropped":0}` — only counts that are
    /// not zero, under the scope's name or the refusal's status.
    pub fn body(&self) -> String {
        let mut out = String::with_capacity(32 + self.tally.keys.len() * 40);
        out.push_str("{\"keys\":{");
        for (i, (name, c)) in self.tally.keys.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(&mut out, name);
            out.push_str(":{");
            let mut first = true;
            let scopes = [Scope::Read, Scope::Write, Scope::Admin];
            let named = scopes
                .iter()
                .map(|s| s.as_str().to_owned())
                .zip(c.allowed)
                .chain(REASONS.iter().map(|r| r.to_string()).zip(c.refused));
            for (what, n) in named.filter(|(_, n)| *n > 0) {
                if !first {
                    out.push(',');
                }
                first = false;
                let _ = write!(out, "\"{what}\":{n}");
            }
            out.push('}');
        }
        let _ = write!(out, "}},\"dropped\":{}}}", self.tally.dropped);
        out
    }
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// When a VM (or the native process) sends its report: the call in flight, the back-off after
/// a failure, the report interval.
#[derive(Debug, Default)]
pub struct Reporter {
    in_flight: Option<(u64, Report)>,
    last_sent: i64,
    not_before: i64,
    failures: u32,
}

impl Reporter {
    /// Whether a report should go out at `now` for `tally`, `every` seconds apart (at once
    /// when the tally is full).
    pub fn due(&self, tally: &Tally, every: u64, now: i64) -> bool {
        let every = i64::try_from(every).unwrap_or(i64::MAX);
        self.in_flight.is_none()
            && now >= self.not_before
            && !tally.is_empty()
            && (tally.is_full() || now.saturating_sub(self.last_sent) >= every)
    }

    /// Sends `tally`'s report when one is due at `now`, to `ks`'s usage path with the gateway
    /// credential: `send(cluster, headers, body, timeout)` is the binding's call (its id, or
    /// `None` when it could not be made). A report that cannot be sent goes back into the
    /// tally, and the next one waits.
    pub fn send_due(
        &mut self,
        tally: &mut Tally,
        ks: &KeyService,
        now: i64,
        send: impl FnOnce(&str, &[(&str, &str)], &[u8], std::time::Duration) -> Option<u64>,
    ) {
        if !self.due(tally, ks.report_seconds, now) {
            return;
        }
        let Some(mut report) = tally.take_report() else {
            return;
        };
        let body = report.body();
        let length = body.len().to_string();
        let id = ks.bearer.as_deref().ok().and_then(|bearer| {
            let headers = [
                (":method", "POST"),
                (":path", &*ks.usage_path),
                (":authority", &*ks.authority),
                ("authorization", bearer),
                ("content-type", "application/json"),
                ("content-length", length.as_str()),
            ];
            send(&ks.cluster, &headers, body.as_bytes(), REPORT_TIMEOUT)
        });
        match id {
            Some(id) => self.sent(id, report, now),
            None => {
                tally.absorb(&mut report.tally);
                self.failed(now);
            }
        }
    }

    /// `report` went out at `now` as call `token`.
    pub fn sent(&mut self, token: u64, report: Report, now: i64) {
        self.in_flight = Some((token, report));
        self.last_sent = now;
    }

    /// True when `token` is the report in flight.
    pub fn owns(&self, token: u64) -> bool {
        self.in_flight.as_ref().is_some_and(|(t, _)| *t == token)
    }

    /// The answer to the report in flight: `accepted` (a 200) forgets it; otherwise its counts
    /// go back into `tally` and the next report waits (1, 2, 4, then 8 s).
    pub fn answered(&mut self, tally: &mut Tally, accepted: bool, now: i64) {
        let Some((_, mut report)) = self.in_flight.take() else {
            return;
        };
        if accepted {
            self.failures = 0;
            return;
        }
        tally.absorb(&mut report.tally);
        self.failed(now);
    }

    /// A report could not be sent (or was refused) at `now`: back off.
    pub fn failed(&mut self, now: i64) {
        self.failures = self.failures.saturating_add(1);
        let backoff = 1i64 << self.failures.min(4).saturating_sub(1);
        self.not_before = now.saturating_add(backoff);
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn counts(read: u32, refused_403: u32) -> Counts {
        let mut c = Counts::default();
        c.allowed[0] = read;
        c.refused[2] = refused_403;
        c
    }

    #[test]
    fn a_report_names_only_counts_that_are_not_zero_and_escapes_names() {
        let mut t = Tally::default();
        t.keys.insert("shop".into(), counts(3, 1));
        t.keys.insert("we\"ird\\".into(), counts(0, 0));
        let r = t.take_report().expect("a report");
        let body: serde_json::Value = serde_json::from_str(&r.body()).expect("JSON");
        assert_eq!(
            body["keys"]["shop"],
            serde_json::json!({"read": 3, "403": 1})
        );
        assert_eq!(body["keys"]["we\"ird\\"], serde_json::json!({}));
        assert_eq!(body["dropped"], 0);
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_tally_drops_new_keys_visibly_and_reports_in_bounded_parts() {
        let mut t = Tally::default();
        for i in 0..MAX_TALLY_KEYS {
            t.keys.insert(format!("k{i}").into(), counts(1, 0));
        }
        let mut late = Tally::default();
        late.keys.insert("late".into(), counts(5, 0));
        t.absorb(&mut late);
        assert!(t.is_full());
        assert_eq!(t.dropped, 5, "a key that did not fit is counted as dropped");
        let r = Reporter::default();
        assert!(r.due(&t, 3600, 0), "a full tally reports at once");
        let first = t.take_report().expect("a report");
        assert_eq!(first.tally.keys.len(), MAX_REPORT_KEYS);
        assert_eq!(first.tally.dropped, 5);
        assert_eq!(t.keys.len(), MAX_TALLY_KEYS - MAX_REPORT_KEYS);
    }

    #[test]
    fn a_failed_report_is_put_back_and_the_next_waits() {
        let mut t = Tally::default();
        t.keys.insert("shop".into(), counts(2, 0));
        let mut r = Reporter::default();
        assert!(r.due(&t, 5, 10));
        let report = t.take_report().expect("a report");
        r.sent(7, report, 10);
        t.keys.insert("shop".into(), counts(1, 0));
        assert!(!r.due(&t, 5, 20), "one report in flight");
        assert!(r.owns(7) && !r.owns(8));
        r.answered(&mut t, false, 20);
        assert_eq!(t.keys.get("shop"), Some(&counts(3, 0)), "nothing lost");
        assert!(!r.due(&t, 5, 20), "backing off");
        assert!(r.due(&t, 5, 21));
        let report = t.take_report().expect("a report");
        r.sent(8, report, 21);
        r.answered(&mut t, true, 22);
        assert!(t.is_empty());
        t.keys.insert("shop".into(), counts(1, 0));
        assert!(!r.due(&t, 5, 22), "the interval since the last report");
        assert!(r.due(&t, 5, 26));
    }
}
