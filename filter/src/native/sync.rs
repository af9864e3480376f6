//! The native build's key-service sync (SPEC §6): one minted-key table per configuration —
//! so one per process, where the wasm build keeps one per VM — synced off the workers and
//! swapped atomically, under [`crate::keysync`]'s rules (long poll, revisions, deltas, back-off,
//! staleness fail-closed).
//!
//! ```text
//!  ticker thread (the module's own) ──each second──► scheduler.commit(TICK)
//!  main thread: config_scheduled ─► Sync::tick: confirm a held poll, the stale gauge, call if due
//!               config_http_callout ─► the key service (keyService.cluster) ─► config_http_callout_done
//!               ─► Sync::answered: keysync::apply ─► Config::swap(new policy) ─► the next long poll
//!  workers: Config::policy() ─► an Arc of the current policy (read lock held for a clone)
//! ```
//!
//! Nothing here runs on a worker: the calls go out and come back on Envoy's main thread, and
//! the worker-side read lock is only ever contended by a pointer swap.

use super::host::{log, ConfigHost, Scheduler};
use super::{now, Config};
use crate::decision::Trace;
use crate::keysync::{self, KeySync};
use crate::outcome::{SYNCED, SYNC_FAILED};
use crate::policy::Policy;
use crate::usage::{Reporter, Tally};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::abi::LogLevel;

/// The ticker's event.
pub(super) const TICK: u64 = 1;

/// Every worker thread's usage tally, drained by the reports (main thread).
static TALLIES: Mutex<Vec<Arc<Mutex<Tally>>>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's tally, registered in [`TALLIES`] on its first request.
    static MINE: Arc<Mutex<Tally>> = {
        let mine = Arc::new(Mutex::new(Tally::default()));
        TALLIES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&mine));
        mine
    };
}

/// Counts a request for its key's usage in this worker's tally (a lock only the report,
/// once a second, ever contends).
pub(super) fn record_usage(policy: &Policy, trace: &Trace<'_>, decision: &str) {
    // Most requests count for no key: no lock for them.
    if crate::usage::counted(policy, trace).is_none() {
        return;
    }
    MINE.with(|t| {
        t.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(policy, trace, decision)
    });
}

/// A configuration's sync: the client state (main thread), the stale gauge, and the ticker.
pub(super) struct Sync {
    host: ConfigHost,
    state: Mutex<KeySync>,
    /// The process's counts not yet reported, and the report in flight.
    usage: Mutex<(Tally, Reporter)>,
    stale_gauge: Option<usize>,
    _ticker: Ticker,
}

impl Sync {
    /// Starts syncing (not under `envoy --mode validate`): the ticker's first event comes at
    /// once, so the first call goes out as soon as `config_new` has returned.
    pub(super) fn start(host: ConfigHost, stale_gauge: Option<usize>) -> Option<Sync> {
        if super::host::validation_mode() {
            return None;
        }
        let ticker = Ticker::start(host.scheduler()?)?;
        Some(Sync {
            host,
            state: Mutex::new(KeySync::configured_at(now())),
            usage: Mutex::new(Default::default()),
            stale_gauge,
            _ticker: ticker,
        })
    }

    /// Once a second, on the main thread: a held poll confirms the table, the stale gauge, and
    /// a call when one is due.
    pub(super) fn tick(&self, config: &Config) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let policy = config.policy();
        let now = now();
        state.hold_confirms(&policy, now);
        if let (Some(gauge), Some(stale)) = (self.stale_gauge, state.stale_seconds(&policy, now)) {
            self.host.set_gauge(gauge, stale);
        }
        self.call(config, &mut state);
        drop(state);
        self.report(&policy, now);
    }

    /// Gathers the workers' counts and sends the process's usage report when one is due. A
    /// report that cannot be sent goes back into the tally.
    fn report(&self, policy: &Policy, now: i64) {
        let Some(ks) = &policy.key_service else {
            return;
        };
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let (tally, reporter) = &mut *usage;
        let workers: Vec<_> = TALLIES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for worker in workers {
            tally.absorb(&mut worker.lock().unwrap_or_else(PoisonError::into_inner));
        }
        reporter.send_due(tally, ks, now, |cluster, headers, body, timeout| {
            self.host.http_callout(cluster, headers, body, timeout)
        });
    }

    /// The answer to callout `id` (main thread): `status` and `body` when it came.
    pub(super) fn answered(&self, config: &Config, id: u64, status: Option<&[u8]>, body: &[u8]) {
        {
            let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
            let (tally, reporter) = &mut *usage;
            if reporter.owns(id) {
                reporter.answered(tally, status == Some(b"200"), now());
                return;
            }
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(asked) = state.answered(id) else {
            return;
        };
        let result = match keysync::refused_status(status) {
            None => {
                let policy = config.policy();
                keysync::apply(&policy, asked.as_deref(), body, now()).map(|table| {
                    if let Some(table) = table {
                        config.swap(Arc::new(policy.with_keys(table)));
                    }
                })
            }
            Some(why) => Err(why),
        };
        match result {
            Ok(()) => {
                state.succeeded();
                self.count(config, SYNCED);
            }
            Err(why) => self.failed(config, &mut state, &why),
        }
        self.call(config, &mut state);
    }

    /// Sends the call that is due, if any.
    fn call(&self, config: &Config, state: &mut KeySync) {
        let policy = config.policy();
        let now = now();
        match state.due(&policy, now) {
            Ok(None) => {}
            Ok(Some(call)) => {
                let headers = call.headers();
                match self.host.http_callout(call.cluster, &headers, &[], call.timeout) {
                    Some(id) => state.sent(id, call, now),
                    None => self.failed(
                        config,
                        state,
                        "Envoy could not start the call over the key service's cluster (unknown cluster or no host)",
                    ),
                }
            }
            Err(why) => self.failed(config, state, why),
        }
    }

    fn failed(&self, config: &Config, state: &mut KeySync, why: &str) {
        let (failures, loud) = state.failed(now());
        self.count(config, SYNC_FAILED);
        if loud {
            log(
                LogLevel::Warn,
                &format!(
                    "layergate: key service sync failed ({why}); {failures} failures in a row, the last table keeps serving until keyService.maxStalenessSeconds"
                ),
            );
        }
    }

    fn count(&self, config: &Config, index: usize) {
        if let Some(Some(id)) = config.counters.get(index) {
            self.host.increment(*id);
        }
    }
}

/// The module's own thread: posts [`TICK`] to the main thread once a second until dropped.
struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Deleted after the thread has stopped, on the thread that drops the ticker (main).
    _scheduler: Arc<Scheduler>,
}

impl Ticker {
    fn start(scheduler: Scheduler) -> Option<Ticker> {
        let scheduler = Arc::new(scheduler);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (their_stop, their_scheduler) = (Arc::clone(&stop), Arc::clone(&scheduler));
        let thread = std::thread::Builder::new()
            .name("layergate-keys".into())
            .spawn(move || {
                let (lock, wake) = &*their_stop;
                let mut stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
                while !*stopped {
                    their_scheduler.commit(TICK);
                    stopped = wake
                        .wait_timeout(stopped, Duration::from_secs(1))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            })
            .ok()?;
        Some(Ticker {
            stop,
            thread: Some(thread),
            _scheduler: scheduler,
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
