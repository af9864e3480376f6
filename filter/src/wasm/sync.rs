//! A root's key-service client (SPEC §6), under [`crate::keysync`]'s rules (the call, its
//! back-off, a held poll confirming the table, what an answer means): this file only sends the
//! calls through the proxy-wasm host, reads the answers from it, and applies them to the
//! root's key table (in place when nothing else holds it).

use super::root::Root;
use super::{count, USAGE};
use crate::abi::{self, now, BufferType, LogLevel, MapType};
use crate::outcome::{SYNCED, SYNC_FAILED};
use std::rc::Rc;
use std::sync::Arc;

impl Root {
    /// Starts the call that is due, if any.
    pub(super) fn sync_keys(&mut self) {
        let Some(policy) = self.policy.clone() else {
            return;
        };
        let now = now();
        match self.sync.due(&policy, now) {
            Ok(None) => {}
            Ok(Some(call)) => {
                let headers = call.headers();
                match abi::dispatch_http_call(call.cluster, &headers, &[], call.timeout) {
                    Some(token) => self.sync.sent(u64::from(token), call, now),
                    None => {
                        self.sync_failed("dispatch_http_call to the key service's cluster failed")
                    }
                }
            }
            Err(why) => self.sync_failed(why),
        }
    }

    /// Sends the VM's usage report when one is due (every tick; at most one in flight). A
    /// report that cannot be sent goes back into the tally.
    pub(super) fn report_usage(&mut self) {
        let Some(ks) = self.policy.as_ref().and_then(|p| p.key_service.as_ref()) else {
            return;
        };
        let now = now();
        USAGE.with(|u| {
            let Ok(mut u) = u.try_borrow_mut() else {
                return;
            };
            let (tally, reporter) = &mut *u;
            reporter.send_due(tally, ks, now, |cluster, headers, body, timeout| {
                abi::dispatch_http_call(cluster, headers, body, timeout).map(u64::from)
            });
        });
    }

    /// A long poll held after a successful call confirms the table (every tick).
    pub(super) fn hold_confirms(&self) {
        if let Some(policy) = &self.policy {
            self.sync.hold_confirms(policy, now());
        }
    }

    fn sync_failed(&mut self, why: &str) {
        let (failures, loud) = self.sync.failed(now());
        count(SYNC_FAILED);
        if loud {
            abi::log(
                LogLevel::Warn,
                &format!(
                    "layergate: key service sync failed ({why}); {failures} failures in a row, the last table keeps serving until keyService.maxStalenessSeconds"
                ),
            );
        }
    }

    /// The answer to call `token` (a sync or a usage report).
    pub(super) fn answered(&mut self, token: u32, body_size: usize) {
        let reported = USAGE.with(|u| {
            let mut u = u.try_borrow_mut().ok()?;
            let (tally, reporter) = &mut *u;
            reporter.owns(u64::from(token)).then(|| {
                let status = abi::get_header(MapType::HttpCallResponseHeaders, ":status");
                reporter.answered(tally, status.as_deref() == Some(b"200"), now());
            })
        });
        if reported.is_some() {
            return;
        }
        let Some(asked) = self.sync.answered(u64::from(token)) else {
            return;
        };
        let status = abi::get_header(MapType::HttpCallResponseHeaders, ":status");
        let result = match crate::keysync::refused_status(status.as_deref()) {
            None => self.synced(asked.as_deref(), body_size),
            Some(why) => Err(why),
        };
        match result {
            Ok(()) => {
                self.sync.succeeded();
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
