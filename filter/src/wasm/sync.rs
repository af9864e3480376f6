//! A root's key-service client (SPEC §6): the long poll, its back-off, and applying an answer
//! to the root's key table (in place when nothing else holds it).

use super::count;
use super::root::Root;
use crate::abi::{self, now, BufferType, LogLevel, MapType};
use crate::config::CONFIG_VERSION;
use crate::outcome::{SYNCED, SYNC_FAILED};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;

/// The key-service sync loop's state (SPEC §6): one long poll in flight at a time; after a
/// failure, retries back off from 1 s to 10 s and ask without waiting, so a key service that
/// comes back confirms the table at once (a held poll would only answer at the next change).
///
/// A long poll held open is the key service's promise to answer as soon as something changes,
/// within `pollSeconds`: while one is held (and the last call succeeded) the table counts as
/// confirmed, up to `pollSeconds` after it was sent. So the stale gauge reads 0 in steady state
/// and grows from the moment the key service stops answering, not from its last change.
#[derive(Default)]
pub(super) struct Sync {
    /// The call in flight and the revision it asked from.
    in_flight: Option<(u32, Option<Box<str>>)>,
    /// When the call in flight was sent (Unix seconds).
    sent_at: i64,
    /// Unix seconds before which no new call is made (after failures).
    not_before: i64,
    failures: u32,
    /// When the configuration was loaded (for the gauge before the first sync).
    pub(super) configured_at: i64,
}

impl Sync {
    /// A new loop for a configuration loaded at `now` (Unix seconds): nothing in flight, no
    /// back-off.
    pub(super) fn configured_at(now: i64) -> Sync {
        Sync {
            configured_at: now,
            ..Sync::default()
        }
    }
}

impl Root {
    /// Starts a sync when a key service is configured, none is in flight and no back-off holds.
    pub(super) fn sync_keys(&mut self) {
        let Some(policy) = self.policy.clone() else {
            return;
        };
        let Some(ks) = &policy.key_service else {
            return;
        };
        if self.sync.in_flight.is_some() || now() < self.sync.not_before {
            return;
        }
        let Ok(bearer) = ks.bearer.as_deref() else {
            self.sync_failed("the keyService credential's environment variable is not set");
            return;
        };
        let since = policy.keys.revision().map(Box::<str>::from);
        let mut path = String::with_capacity(ks.path.len() + 96);
        path.push_str(&ks.path);
        let wait = if self.sync.failures == 0 {
            ks.poll_seconds
        } else {
            0
        };
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
        let call = abi::dispatch_http_call(
            &ks.cluster,
            &[
                (":method", "GET"),
                (":path", &path),
                (":authority", &ks.authority),
                ("authorization", bearer),
            ],
            std::time::Duration::from_secs(ks.poll_seconds + 5),
        );
        match call {
            Some(token) => {
                self.sync.in_flight = Some((token, since));
                self.sync.sent_at = now();
            }
            None => self.sync_failed("dispatch_http_call to the key service's cluster failed"),
        }
    }

    /// A long poll held after a successful call confirms the table until `pollSeconds` after
    /// it was sent (see [`Sync`]).
    pub(super) fn hold_confirms(&self) {
        let Some(policy) = &self.policy else {
            return;
        };
        let (Some(ks), Some(f)) = (&policy.key_service, policy.keys.freshness()) else {
            return;
        };
        if self.sync.in_flight.is_some() && self.sync.failures == 0 {
            let until = self
                .sync
                .sent_at
                .saturating_add(i64::try_from(ks.poll_seconds).unwrap_or(i64::MAX));
            if f.stale_seconds(self.sync.sent_at).is_some() {
                f.synced(now().min(until));
            }
        }
    }

    fn sync_failed(&mut self, why: &str) {
        self.sync.failures = self.sync.failures.saturating_add(1);
        let backoff = 1i64 << self.sync.failures.min(4).saturating_sub(1);
        self.sync.not_before = now().saturating_add(backoff.min(10));
        count(SYNC_FAILED);
        if self.sync.failures == 1 || self.sync.failures.is_multiple_of(30) {
            abi::log(
                LogLevel::Warn,
                &format!(
                    "layergate: key service sync failed ({why}); {} failures in a row, the last table keeps serving until keyService.maxStalenessSeconds",
                    self.sync.failures
                ),
            );
        }
    }

    /// The answer to call `token`.
    pub(super) fn answered(&mut self, token: u32, body_size: usize) {
        let Some((expected, asked)) = self.sync.in_flight.take() else {
            return;
        };
        if expected != token {
            return;
        }
        let status = abi::get_header(MapType::HttpCallResponseHeaders, ":status");
        let result = match status.as_deref() {
            Some(b"200") => self.synced(asked.as_deref(), body_size),
            Some(other) => Err(format!(
                "the key service answered {}",
                String::from_utf8_lossy(other)
            )),
            None => Err("no answer (timeout or connection failure)".into()),
        };
        match result {
            Ok(()) => {
                self.sync.failures = 0;
                count(SYNCED);
            }
            Err(why) => self.sync_failed(&why),
        }
    }

    /// Applies a key-service answer of `body_size` bytes, read from the host in chunks as it
    /// is parsed ([`crate::keysync::read`]): a new table swapped in whole, or nothing.
    fn synced(&mut self, asked: Option<&str>, body_size: usize) -> Result<(), String> {
        let Some(policy) = self.policy.clone() else {
            return Ok(());
        };
        let answer = crate::keysync::read(&policy, asked, Chunks::of(body_size), body_size)?;
        drop(policy);
        let Some(current) = self.policy.as_mut() else {
            return Ok(());
        };
        // Nothing else holds the policy or its table (no request is buffering a body with
        // them): change the table where it is, in O(changes). Otherwise the requests that
        // hold them keep theirs and a changed copy is swapped in.
        if let Some(answer) = answer {
            match Rc::get_mut(current).and_then(|p| Arc::get_mut(&mut p.keys)) {
                Some(table) => table.apply_in_place(answer),
                None => {
                    let table = current.keys.apply(answer);
                    *current = Rc::new(current.with_keys(table));
                }
            }
        }
        if let Some(f) = current.keys.freshness() {
            f.synced(now());
        }
        Ok(())
    }
}

/// The key service's answer, read from the host 64 KiB at a time.
struct Chunks {
    size: usize,
    /// Bytes asked for so far.
    at: usize,
    chunk: Vec<u8>,
    pos: usize,
}

impl Chunks {
    const CHUNK: usize = 64 * 1024;

    fn of(size: usize) -> Chunks {
        Chunks {
            size,
            at: 0,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl std::io::Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.chunk.len() {
            if self.at >= self.size {
                return Ok(0);
            }
            let want = Chunks::CHUNK.min(self.size - self.at);
            self.chunk = abi::get_buffer(BufferType::HttpCallResponseBody, self.at, want)
                .unwrap_or_default();
            if self.chunk.is_empty() {
                return Err(std::io::Error::other("the answer ended early"));
            }
            self.at += self.chunk.len();
            self.pos = 0;
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
