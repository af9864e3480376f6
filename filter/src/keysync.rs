//! The key-service client as a plain state machine (SPEC §6): which call to make and when, the
//! back-off after a failure, how a held long poll confirms the table, and what an answer does
//! to the table. No host calls: a host binding sends [`Call`]s and reports what came back.
//! Both builds drive it: the native build (`native/sync.rs`) and the wasm build
//! (`wasm/sync.rs`).
//!
//! ```text
//!  due(policy, now) ─► Call ─(host sends it)─► sent(token)
//!  answer for token ─► answered(token) ─► apply(policy, asked, body) ─► new KeyTable | nothing
//!                                          └─ succeeded() │ failed(now)
//!  every second ─► hold_confirms(policy, now); stale_seconds(policy, now) for the gauge
//! ```
//!
//! One call in flight at a time. After a failure, retries back off (1, 2, 4, then 8 s) and ask
//! without waiting (`wait=0`), so a key service that comes back confirms the table at once (a
//! held poll would only answer at the next change). A long poll held open is the key service's
//! promise to answer as soon as something changes, within `pollSeconds`: while one is held
//! (and the last call succeeded) the table counts as confirmed, up to `pollSeconds` after it
//! was sent — so the stale gauge reads 0 in steady state and grows from the moment the key
//! service stops answering.

use crate::config::CONFIG_VERSION;
use crate::keys::{Incoming, KeyTable};
use crate::policy::Policy;
use std::fmt::Write as _;
use std::time::Duration;

/// The client's state.
#[derive(Debug, Default)]
pub struct KeySync {
    /// The call in flight and the revision it asked from.
    in_flight: Option<(u64, Option<Box<str>>)>,
    /// When the call in flight was sent (Unix seconds).
    sent_at: i64,
    /// Unix seconds before which no new call is made (after failures).
    not_before: i64,
    failures: u32,
    /// When the configuration was loaded (for the gauge before the first sync).
    configured_at: i64,
}

/// A call to the key service: `GET` over the `keyService` cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'p> {
    /// Envoy cluster.
    pub cluster: &'p str,
    /// `:path`, with `wait`, `config` and `since`.
    pub path: String,
    /// `:authority`.
    pub authority: &'p str,
    /// `authorization` (`Bearer <gateway credential>`).
    pub authorization: &'p str,
    /// How long to wait for the answer: the poll's hold and 5 s more.
    pub timeout: Duration,
    /// The revision asked from (the table's).
    since: Option<Box<str>>,
}

impl Call<'_> {
    /// The call's request headers, as either host binding sends them.
    pub fn headers(&self) -> [(&str, &str); 4] {
        [
            (":method", "GET"),
            (":path", self.path.as_str()),
            (":authority", self.authority),
            ("authorization", self.authorization),
        ]
    }
}

impl KeySync {
    /// A new client for a configuration loaded at `now` (Unix seconds).
    pub fn configured_at(now: i64) -> KeySync {
        KeySync {
            configured_at: now,
            ..KeySync::default()
        }
    }

    /// The call to make now: `Ok(None)` when none is due (no key service, one in flight, or
    /// backing off); `Err` when one is due but cannot be made (record it with
    /// [`KeySync::failed`]).
    pub fn due<'p>(&self, policy: &'p Policy, now: i64) -> Result<Option<Call<'p>>, &'static str> {
        let Some(ks) = &policy.key_service else {
            return Ok(None);
        };
        if self.in_flight.is_some() || now < self.not_before {
            return Ok(None);
        }
        let Ok(bearer) = ks.bearer.as_deref() else {
            return Err("the keyService credential's environment variable is not set");
        };
        let since = policy.keys.revision().map(Box::<str>::from);
        let wait = if self.failures == 0 {
            ks.poll_seconds
        } else {
            0
        };
        let mut path = String::with_capacity(ks.path.len() + 96);
        path.push_str(&ks.path);
        // `config`: the configuration version this filter reads, so the operator can see a
        // gateway whose filter is older than its rendering (issue 13).
        let _ = write!(path, "?wait={wait}&config={CONFIG_VERSION}");
        if let Some(rev) = &since {
            path.push_str("&since=");
            for b in rev.bytes() {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    path.push(char::from(b));
                } else {
                    let _ = write!(path, "%{b:02X}");
                }
            }
        }
        Ok(Some(Call {
            cluster: &ks.cluster,
            path,
            authority: &ks.authority,
            authorization: bearer,
            timeout: Duration::from_secs(ks.poll_seconds + 5),
            since,
        }))
    }

    /// `call` was sent at `now` as `token`.
    pub fn sent(&mut self, token: u64, call: Call<'_>, now: i64) {
        self.in_flight = Some((token, call.since));
        self.sent_at = now;
    }

    /// The answer to `token` arrived: the revision its call asked from, or `None` when it is
    /// not the call in flight (ignore it).
    pub fn answered(&mut self, token: u64) -> Option<Option<Box<str>>> {
        match self.in_flight.take() {
            Some((t, since)) if t == token => Some(since),
            other => {
                self.in_flight = other;
                None
            }
        }
    }

    /// The last call succeeded.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// A call failed (or could not be made) at `now`: back off. Returns the number of failures
    /// in a row, and whether this one should be logged (the first, then every 30th).
    pub fn failed(&mut self, now: i64) -> (u32, bool) {
        self.failures = self.failures.saturating_add(1);
        let backoff = 1i64 << self.failures.min(4).saturating_sub(1);
        self.not_before = now.saturating_add(backoff.min(10));
        (
            self.failures,
            self.failures == 1 || self.failures.is_multiple_of(30),
        )
    }

    /// A long poll held after a successful call confirms the table until `pollSeconds` after
    /// it was sent (call every second).
    pub fn hold_confirms(&self, policy: &Policy, now: i64) {
        let (Some(ks), Some(f)) = (&policy.key_service, policy.keys.freshness()) else {
            return;
        };
        if self.in_flight.is_some() && self.failures == 0 {
            let until = self
                .sent_at
                .saturating_add(i64::try_from(ks.poll_seconds).unwrap_or(i64::MAX));
            if f.stale_seconds(self.sent_at).is_some() {
                f.synced(now.min(until));
            }
        }
    }

    /// Seconds since the key table was last confirmed (since the configuration was loaded,
    /// before the first sync); `None` without a key service.
    pub fn stale_seconds(&self, policy: &Policy, now: i64) -> Option<u64> {
        let f = policy.keys.freshness()?;
        let stale = f
            .stale_seconds(now)
            .unwrap_or_else(|| now.saturating_sub(self.configured_at));
        Some(u64::try_from(stale).unwrap_or(0))
    }
}

/// Why an answer with `status` (`None`: none came) is not one to read; `None` for a 200.
pub fn refused_status(status: Option<&[u8]>) -> Option<String> {
    match status {
        Some(b"200") => None,
        Some(other) => Some(format!(
            "the key service answered {}",
            String::from_utf8_lossy(other)
        )),
        None => Some("no answer (timeout or connection failure)".into()),
    }
}

/// What a key-service answer (status 200) to a call that asked from `asked` brings to
/// `policy`'s table: the answer, every key compiled as it was read from `body` (`size` bytes,
/// see [`crate::answer::read`]), or `None` when it changes nothing. `Err` says why it was
/// refused. Both builds read answers here; each applies it its own way (the wasm build in
/// place where nothing else holds the table).
pub fn read(
    policy: &Policy,
    asked: Option<&str>,
    body: impl std::io::Read,
    size: usize,
) -> Result<Option<Incoming>, String> {
    let answer = crate::answer::read(
        body,
        &policy.store_ids(),
        policy.stores.len(),
        crate::answer::keys_hint(size),
    )?;
    // A delta only applies to the revision it was asked from (the table may have been
    // replaced meanwhile by a new configuration).
    if !answer.snapshot && policy.keys.revision() != asked {
        return Err("a delta for a revision this table is not at".into());
    }
    let changes = answer.snapshot || !answer.keys.is_empty() || !answer.removed.is_empty();
    Ok(changes.then_some(answer))
}

/// What a key-service answer (status 200, `body`) to a call that asked from `asked` does to
/// `policy`'s table: a new table to swap in, or nothing to change; either way the table is
/// then confirmed (its freshness is shared). `Err` says why the answer was refused.
pub fn apply(
    policy: &Policy,
    asked: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<Option<KeyTable>, String> {
    let table = read(policy, asked, body, body.len())?.map(|answer| policy.keys.apply(answer));
    if let Some(f) = policy.keys.freshness() {
        f.synced(now);
    }
    Ok(table)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: i64 = 1_795_528_719;

    fn policy() -> Policy {
        let cfg = json!({
            "version": 1,
            "stores": [{"name": "primary", "cluster": "store_primary",
                        "credential": {"inline": "k"}, "inboundAuth": {"mode": "deriveFromStore"}}],
            "defaultStore": "primary",
            "keyService": {"cluster": "layergate_control", "credential": {"inline": "gw"},
                           "maxStalenessSeconds": 60, "pollSeconds": 20},
        });
        Policy::from_json(cfg.to_string().as_bytes(), |_| None).expect("a valid configuration")
    }

    fn key() -> serde_json::Value {
        json!({"keyId": "key_1", "name": "shop", "lookupHash": format!("sha256:{}", "ab".repeat(32)),
               "entitlements": {"vectorstore.primary": {"scopes": ["read"]}}})
    }

    #[test]
    fn the_first_call_long_polls_and_the_next_asks_from_the_revision_it_got() {
        let p = policy();
        let mut s = KeySync::configured_at(T0);
        let call = s.due(&p, T0).expect("due").expect("a call");
        assert_eq!(call.path, "/v2/keys/sync?wait=20&config=1");
        assert_eq!(
            (call.cluster, call.authorization, call.timeout),
            ("layergate_control", "Bearer gw", Duration::from_secs(25))
        );
        assert_eq!(
            call.headers(),
            [
                (":method", "GET"),
                (":path", "/v2/keys/sync?wait=20&config=1"),
                (":authority", "layergate_control"),
                ("authorization", "Bearer gw"),
            ]
        );
        s.sent(7, call, T0);
        assert_eq!(s.due(&p, T0), Ok(None), "one call in flight");
        assert_eq!(s.answered(8), None, "not the call in flight");
        let asked = s.answered(7).expect("the call in flight");
        let body = json!({"revision": "r 1", "snapshot": true, "keys": [key()]}).to_string();
        let table = apply(&p, asked.as_deref(), body.as_bytes(), T0 + 1)
            .expect("applied")
            .expect("a new table");
        s.succeeded();
        let p = p.with_keys(table);
        assert_eq!(s.stale_seconds(&p, T0 + 1), Some(0));
        let call = s.due(&p, T0 + 1).expect("due").expect("a call");
        assert_eq!(call.path, "/v2/keys/sync?wait=20&config=1&since=r%201");
    }

    #[test]
    fn failures_back_off_and_ask_without_waiting_and_staleness_grows() {
        let p = policy();
        let mut s = KeySync::configured_at(T0);
        let call = s.due(&p, T0).expect("due").expect("a call");
        s.sent(1, call, T0);
        assert!(s.answered(1).is_some());
        assert_eq!(s.failed(T0), (1, true));
        assert_eq!(s.due(&p, T0), Ok(None), "backing off for 1 s");
        let call = s.due(&p, T0 + 1).expect("due").expect("a call");
        assert_eq!(call.path, "/v2/keys/sync?wait=0&config=1");
        for n in 2..=4 {
            s.failed(T0);
            assert_eq!(s.not_before, T0 + (1 << (n - 1)).min(10));
        }
        s.failed(T0);
        assert_eq!(s.not_before, T0 + 8, "capped at 2^3 = 8 s, under 10 s");
        assert_eq!(s.stale_seconds(&p, T0 + 30), Some(30), "since configured");
    }

    #[test]
    fn a_delta_for_another_revision_is_refused_and_an_empty_one_only_confirms() {
        let p = policy();
        let delta = json!({"revision": "r2", "snapshot": false, "keys": [key()]}).to_string();
        assert!(apply(&p, Some("r1"), delta.as_bytes(), T0).is_err());
        let snapshot = json!({"revision": "r1", "snapshot": true, "keys": [key()]}).to_string();
        let table = apply(&p, None, snapshot.as_bytes(), T0)
            .expect("applied")
            .expect("a table");
        let p = p.with_keys(table);
        let same = json!({"revision": "r1", "snapshot": false}).to_string();
        assert!(matches!(
            apply(&p, Some("r1"), same.as_bytes(), T0 + 50),
            Ok(None)
        ));
        let s = KeySync::configured_at(T0);
        assert_eq!(s.stale_seconds(&p, T0 + 55), Some(5));
        assert!(apply(&p, Some("r1"), b"{", T0).is_err());
    }
}
