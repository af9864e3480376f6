//! The one module that talks proxy-wasm (compiled only for `wasm32`): the callbacks the
//! filter exports, over the host calls of [`crate::abi`].
//!
//! Envoy enters the VM only for what the filter needs: `proxy_on_context_create` and
//! `proxy_on_delete` (which root a stream belongs to: Envoy keeps one root context per
//! distinct configuration and reuses an old one when a configuration comes back, so "the
//! latest configuration" is not the stream's), `proxy_on_request_headers` (every request),
//! `proxy_on_request_body` / `proxy_on_request_trailers` (requests with a body), and the root's
//! configure, tick and http-call callbacks. No `proxy_on_done` or `proxy_on_log`. A header-only request makes exactly one read of
//! the whole header map, the targeted writes of [`Plan::header_edits`] (two for a store
//! route) and one `set_property` for the access log. Counters are kept in the VM and flushed
//! to Envoy stats once a second from the root's tick.
#![allow(unsafe_code)] // `#[no_mangle]` exports of the ABI.

use crate::abi::{self, Action, BufferType, LogLevel, MapType, MetricType};
use crate::config::{FilterConfig, SyncResponse, CONFIG_VERSION};
use crate::decision::{
    decide, must_strip, Decision, HeaderEdits, Inspection, Plan, INSPECT_HEADER,
};
use crate::denial::Denial;
use crate::fasthash::FastMap;
use crate::headers::{pairs, RequestHead};
use crate::policy::{ConfigError, Policy, StoreId};
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;

use abi::now;

/// Filter-state key read by access logs as `%FILTER_STATE(wasm.layergate:PLAIN)%`.
const LOG_PROPERTY: &[u8] = b"layergate";

/// Counters, indexed by position; flushed to Envoy stats on tick.
const COUNTERS: [&str; 11] = [
    "layergate.allowed",
    "layergate.denied_400",
    "layergate.denied_401",
    "layergate.denied_403",
    "layergate.denied_404",
    "layergate.denied_413",
    "layergate.denied_415",
    "layergate.denied_503",
    "layergate.inspected_bodies",
    "layergate.keys_syncs",
    "layergate.keys_sync_failures",
];
const INSPECTED: usize = 8;
const SYNCED: usize = 9;
const SYNC_FAILED: usize = 10;

/// Counter: configurations this filter refused (an unknown field from a newer operator, a
/// version it does not read, a value it would not accept). Envoy then keeps the previous
/// configuration, which goes on enforcing (its key-service sync included); this counter and
/// a critical log line make the refusal visible (issue 13).
const REJECTED: &str = "layergate.config_rejected";

/// Gauge: seconds since the key table was last confirmed by the key service (since the
/// configuration was loaded, before the first sync).
const STALE_GAUGE: &str = "layergate.keys_stale_seconds";

thread_local! {
    static COUNTS: [Cell<u64>; 11] = Default::default();
    static LOG_LINE: RefCell<String> = RefCell::new(String::with_capacity(160));
    /// Root contexts by id: one per configuration Envoy holds.
    static ROOTS: RefCell<FastMap<u32, Root>> = RefCell::new(FastMap::default());
    /// Stream context → its root context.
    static STREAMS: RefCell<FastMap<u32, u32>> = RefCell::new(FastMap::default());
    /// Requests whose body is being inspected, by context id (removed at the verdict or in
    /// `proxy_on_delete`).
    static INSPECTING: RefCell<FastMap<u32, Pending>> = RefCell::new(FastMap::default());
}

fn count(index: usize) {
    COUNTS.with(|p| p[index].set(p[index].get() + 1));
}

fn counter_for(label: &str) -> usize {
    COUNTERS
        .iter()
        .position(|c| c.strip_prefix("layergate.") == Some(label))
        .unwrap_or(0)
}

/// The policy a stream starts with: its root's configuration and current key table.
fn policy_of(ctx: u32) -> Option<Rc<Policy>> {
    let root = STREAMS.with(|s| s.try_borrow().ok().and_then(|s| s.get(&ctx).copied()))?;
    with_root(root, |r| r.policy.clone()).flatten()
}

/// Runs `f` on root context `root`, if it exists and is not busy.
fn with_root<T>(root: u32, f: impl FnOnce(&mut Root) -> T) -> Option<T> {
    ROOTS.with(|roots| {
        let mut roots = roots.try_borrow_mut().ok()?;
        roots.get_mut(&root).map(f)
    })
}

// ---- exports ----------------------------------------------------------------------------

/// The ABI this module speaks.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// VM start: a panic is logged at critical (then the VM aborts; `FAIL_RELOAD` reloads it).
#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _vm_config_size: usize) -> u32 {
    std::panic::set_hook(Box::new(|info| {
        abi::log(LogLevel::Critical, &format!("layergate: panic: {info}"));
    }));
    1
}

/// A context: a root (`parent` 0, one per configuration) or a stream of root `parent`.
#[no_mangle]
pub extern "C" fn proxy_on_context_create(ctx: u32, parent: u32) {
    if parent == 0 {
        ROOTS.with(|r| {
            if let Ok(mut r) = r.try_borrow_mut() {
                r.entry(ctx).or_default();
            }
        });
    } else {
        STREAMS.with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                s.insert(ctx, parent);
            }
        });
    }
}

/// A new plugin configuration for root `root`; 0 refuses it (Envoy keeps the previous
/// listener).
#[no_mangle]
pub extern "C" fn proxy_on_configure(root: u32, _size: usize) -> u32 {
    let accepted = ROOTS.with(|r| {
        r.try_borrow_mut()
            .is_ok_and(|mut r| r.entry(root).or_default().configure())
    });
    if accepted {
        with_root(root, Root::sync_keys);
    }
    u32::from(accepted)
}

/// Once a second: counters and the stale gauge to Envoy; a key sync if one is due.
#[no_mangle]
pub extern "C" fn proxy_on_tick(root: u32) {
    with_root(root, |r| {
        r.hold_confirms();
        r.flush();
        r.sync_keys();
    });
}

/// The key service's answer.
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    root: u32,
    token: u32,
    _num_headers: usize,
    body_size: usize,
    _num_trailers: usize,
) {
    with_root(root, |r| {
        r.answered(token, body_size);
        r.sync_keys();
    });
}

/// Request headers: the decision.
#[no_mangle]
pub extern "C" fn proxy_on_request_headers(ctx: u32, _num_headers: usize, end: u32) -> u32 {
    on_request_headers(ctx, end != 0) as u32
}

/// A chunk of request body (buffered by Envoy while the filter pauses).
#[no_mangle]
pub extern "C" fn proxy_on_request_body(ctx: u32, body_size: usize, end: u32) -> u32 {
    on_request_body(ctx, body_size, end != 0) as u32
}

/// Request trailers: an inspected body that ends with them is refused.
#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(ctx: u32, _num_trailers: usize) -> u32 {
    let Some(pending) = INSPECTING.with(|m| m.borrow_mut().remove(&ctx)) else {
        return Action::Continue as u32;
    };
    let d = Denial::bad_request(
        "this request body is inspected for namespaces and may not end with trailers; send it without trailers",
    );
    deny(Some(&pending.policy), Some(&pending.plan), &d) as u32
}

/// A context is gone: a stream (completed or reset: forget its root and inspection) or a
/// root (its configuration is no longer used).
#[no_mangle]
pub extern "C" fn proxy_on_delete(ctx: u32) {
    let stream = STREAMS.with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.remove(&ctx)));
    if stream.is_some() {
        INSPECTING.with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                m.remove(&ctx);
            }
        });
    } else {
        ROOTS.with(|r| {
            if let Ok(mut r) = r.try_borrow_mut() {
                r.remove(&ctx);
            }
        });
    }
}

// ---- the stale gauge: the worst VM of the process ----------------------------------------

thread_local! {
    /// This VM's id among the process's VMs (random; see [`crate::staleness`]).
    static VM_ID: String = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        format!("{:016x}", h.finish())
    };
}

/// Publishes this VM's staleness `own` and returns the worst of every live VM's (SPEC §6: the
/// gauge must not read 0 while a worker's table is stale). Falls back to `own` when the host
/// has no shared data.
fn worst_stale(now: i64, own: u64) -> u64 {
    use crate::staleness::{self, ENTRY_PREFIX, REGISTRY_KEY};
    VM_ID.with(|id| {
        let key = format!("{ENTRY_PREFIX}{id}");
        if !abi::set_shared_data(&key, staleness::entry(now, own).as_bytes(), 0) {
            return own;
        }
        let (registry, cas) = abi::get_shared_data(REGISTRY_KEY).unwrap_or_default();
        // Every other VM's entry, read once for both uses below.
        let entries: Vec<(&str, Option<(i64, u64)>)> = staleness::ids(&registry)
            .filter(|vm| vm != id)
            .map(|vm| {
                let entry = abi::get_shared_data(&format!("{ENTRY_PREFIX}{vm}"))
                    .and_then(|(v, _)| staleness::parse_entry(&v));
                (vm, entry)
            })
            .collect();
        // Put this VM in the registry (and forget dead ones); a lost race is retried next tick.
        let heartbeat = |vm: &str| {
            entries
                .iter()
                .find(|(other, _)| *other == vm)
                .and_then(|(_, e)| e.map(|(hb, _)| hb))
        };
        if let Some(updated) = staleness::registry_with(&registry, id, now, heartbeat) {
            abi::set_shared_data(REGISTRY_KEY, updated.as_bytes(), cas);
        }
        staleness::worst(now, own, entries.iter().filter_map(|(_, e)| *e))
    })
}

// ---- root: configuration, counters, key sync --------------------------------------------

#[derive(Default)]
struct Root {
    policy: Option<Rc<Policy>>,
    metric_ids: Vec<u32>,
    stale_gauge: Option<u32>,
    sync: Sync,
}

/// The key-service sync loop's state (SPEC §6): one long poll in flight at a time; after a
/// failure, retries back off from 1 s to 10 s and ask without waiting, so a key service that
/// comes back confirms the table at once (a held poll would only answer at the next change).
///
/// A long poll held open is the key service's promise to answer as soon as something changes,
/// within `pollSeconds`: while one is held (and the last call succeeded) the table counts as
/// confirmed, up to `pollSeconds` after it was sent. So the stale gauge reads 0 in steady state
/// and grows from the moment the key service stops answering, not from its last change.
#[derive(Default)]
struct Sync {
    /// The call in flight and the revision it asked from.
    in_flight: Option<(u32, Option<Box<str>>)>,
    /// When the call in flight was sent (Unix seconds).
    sent_at: i64,
    /// Unix seconds before which no new call is made (after failures).
    not_before: i64,
    failures: u32,
    /// When the configuration was loaded (for the gauge before the first sync).
    configured_at: i64,
}

impl Root {
    fn configure(&mut self) -> bool {
        let Some(bytes) = abi::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) else {
            abi::log(
                LogLevel::Critical,
                "layergate: no plugin configuration; refusing to start",
            );
            return false;
        };
        // Parse, then free the document before compiling: linear memory never shrinks, so
        // the peak (document + parsed + compiled) is what every copy of the VM keeps.
        let parsed = FilterConfig::from_json(&bytes).map_err(ConfigError::from);
        drop(bytes);
        let policy = match parsed
            .and_then(|cfg| Policy::compile(&cfg, |var| std::env::var(var).ok()))
        {
            Ok(policy) => policy,
            Err(e) => {
                abi::log(
                        LogLevel::Critical,
                        &format!(
                            "layergate: configuration refused: {e}; this filter reads configuration version {CONFIG_VERSION} (filter {}); the previous configuration stays in force — upgrade the gateway's filter to the operator's",
                            env!("CARGO_PKG_VERSION")
                        ),
                    );
                if let Some(id) = abi::define_metric(MetricType::Counter, REJECTED) {
                    abi::increment_metric(id, 1);
                }
                return false;
            }
        };
        for s in &policy.stores {
            if let Err(var) = &s.bearer {
                abi::log(
                    LogLevel::Error,
                    &format!("layergate: store {:?}: environment variable {var} is not set; its requests get 503", s.name),
                );
            }
        }
        abi::log(
            LogLevel::Info,
            &format!(
                "layergate: configured {} stores, {} namespaces, {} api keys",
                policy.stores.len(),
                policy.namespaces.len(),
                policy.keys.len()
            ),
        );
        self.policy = Some(Rc::new(policy));
        if self.metric_ids.is_empty() {
            self.metric_ids = COUNTERS
                .iter()
                .filter_map(|name| abi::define_metric(MetricType::Counter, name))
                .collect();
            self.stale_gauge = abi::define_metric(MetricType::Gauge, STALE_GAUGE);
        }
        abi::set_tick_period(std::time::Duration::from_secs(1));
        self.sync = Sync {
            configured_at: now(),
            ..Sync::default()
        };
        true
    }

    fn flush(&self) {
        if let (Some(policy), Some(gauge)) = (&self.policy, self.stale_gauge) {
            if let Some(f) = policy.keys.freshness() {
                let now = now();
                let stale = f
                    .stale_seconds(now)
                    .unwrap_or_else(|| now.saturating_sub(self.sync.configured_at));
                let own = u64::try_from(stale).unwrap_or(0);
                abi::record_metric(gauge, worst_stale(now, own));
            }
        }
        COUNTS.with(|p| {
            for (cell, id) in p.iter().zip(&self.metric_ids) {
                let n = cell.replace(0);
                if n > 0 {
                    abi::increment_metric(*id, i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        });
    }

    /// Starts a sync when a key service is configured, none is in flight and no back-off holds.
    fn sync_keys(&mut self) {
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
    fn hold_confirms(&self) {
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
    fn answered(&mut self, token: u32, body_size: usize) {
        let Some((expected, asked)) = self.sync.in_flight.take() else {
            return;
        };
        if expected != token {
            return;
        }
        let status = abi::get_header(MapType::HttpCallResponseHeaders, ":status");
        let result = match status.as_deref() {
            Some(b"200") => {
                let body = abi::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                    .unwrap_or_default();
                self.synced(asked.as_deref(), &body)
            }
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

    /// Applies a key-service answer: a new table swapped in whole, or nothing.
    fn synced(&mut self, asked: Option<&str>, body: &[u8]) -> Result<(), String> {
        let Some(policy) = self.policy.clone() else {
            return Ok(());
        };
        let answer: SyncResponse = serde_json::from_slice(body)
            .map_err(|e| format!("the answer is not a SyncResponse: {e}"))?;
        // A delta only applies to the revision it was asked from (the table may have been
        // replaced meanwhile by a new configuration).
        if !answer.snapshot && policy.keys.revision() != asked {
            return Err("a delta for a revision this table is not at".into());
        }
        if answer.snapshot || !answer.keys.is_empty() || !answer.removed.is_empty() {
            let refused = |e: ConfigError| format!("the answer was refused: {e}");
            drop(policy);
            let Some(current) = self.policy.as_mut() else {
                return Ok(());
            };
            // Nothing else holds the policy or its table (no request is buffering a body
            // with them): change the table where it is, in O(changes). Otherwise the
            // requests that hold them keep theirs and a changed copy is swapped in.
            match Rc::get_mut(current).and_then(|p| {
                let stores: std::collections::HashMap<&str, StoreId> = p
                    .stores
                    .iter()
                    .enumerate()
                    .map(|(id, s)| (&*s.name, id))
                    .collect();
                let count = p.stores.len();
                Arc::get_mut(&mut p.keys).map(|t| (t, stores, count))
            }) {
                Some((table, stores, count)) => table
                    .apply_in_place(&answer, &stores, count)
                    .map_err(refused)?,
                None => {
                    let table = current
                        .keys
                        .apply(&answer, &current.store_ids(), current.stores.len())
                        .map_err(refused)?;
                    *current = Rc::new(current.with_keys(table));
                }
            }
        }
        let Some(policy) = self.policy.clone() else {
            return Ok(());
        };
        if let Some(f) = policy.keys.freshness() {
            f.synced(now());
        }
        Ok(())
    }
}

// ---- requests ---------------------------------------------------------------------------

/// A body being buffered for inspection, with the policy the request started with, and the
/// refusal owed after it when the request has nowhere to go (a 404 or 503 must not come
/// before a 403 the body earns).
struct Pending {
    policy: Rc<Policy>,
    plan: Plan,
    inspection: Inspection,
    after: Option<Denial>,
}

fn deny(policy: Option<&Policy>, plan: Option<&Plan>, denial: &Denial) -> Action {
    let body = denial.body();
    let mut headers = [("content-type", "application/json"), ("", "")];
    let n = match denial.www_authenticate() {
        Some(w) => {
            headers[1] = ("www-authenticate", w);
            2
        }
        None => 1,
    };
    record(policy, plan, denial.label());
    count(counter_for(denial.label()));
    abi::send_local_response(denial.status(), &headers[..n], body.as_bytes());
    Action::Pause
}

/// Forwards: header writes, optional `:path`, access-log record and counter.
fn forward(policy: &Policy, plan: &Plan, header_buf: Option<&[u8]>, path: Option<&str>) -> Action {
    if let Err(d) = apply_edits(policy, plan, header_buf) {
        return deny(Some(policy), Some(plan), &d);
    }
    if let Some(p) = path {
        abi::set_header(":path", Some(p));
    }
    record(Some(policy), Some(plan), "allowed");
    count(0);
    Action::Continue
}

/// Writes the plan's headers and strips client `x-layergate-*` headers it does not overwrite.
/// `header_buf` is the serialized request map, passed only when such headers were seen.
fn apply_edits(policy: &Policy, plan: &Plan, header_buf: Option<&[u8]>) -> Result<(), Denial> {
    let edits = plan.header_edits(policy)?;
    if let Some(buf) = header_buf {
        strip_layergate_headers(buf, &edits);
    }
    for &(name, value) in edits.as_slice() {
        abi::set_header(name, value);
    }
    Ok(())
}

/// Removes the client's `x-layergate-*` headers that `edits` does not overwrite; `buf` is the
/// serialized request map.
fn strip_layergate_headers(buf: &[u8], edits: &HeaderEdits<'_>) {
    for (name, _) in pairs(buf) {
        if must_strip(name, edits) {
            if let Ok(name) = std::str::from_utf8(name) {
                abi::set_header(name, None);
            }
        }
    }
}

/// One `set_property` with `principal=… scope=… store=… decision=…` for access logs.
fn record(policy: Option<&Policy>, plan: Option<&Plan>, decision: &str) {
    LOG_LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        line.clear();
        let (principal, scope, store) = match (policy, plan) {
            (Some(policy), Some(plan)) => (
                plan.principal.name(policy),
                plan.scope.map_or("none", |s| s.as_str()),
                &*policy.stores[plan.store].name,
            ),
            _ => ("-", "-", "-"),
        };
        // Plain appends: `write!` runs core::fmt's machinery, about a thousand instructions
        // more per request in the VM (measured by `tests/tests/wasm_fuel.rs`).
        for part in [
            "principal=",
            principal,
            " scope=",
            scope,
            " store=",
            store,
            " decision=",
            decision,
        ] {
            line.push_str(part);
        }
        abi::set_property(LOG_PROPERTY, &line);
    });
}

fn on_request_headers(ctx: u32, end_of_stream: bool) -> Action {
    let Some(policy) = policy_of(ctx) else {
        return deny(
            None,
            None,
            &Denial::unavailable("layergate has no configuration"),
        );
    };
    let buf = abi::header_map(MapType::HttpRequestHeaders);
    let head = RequestHead::from_pairs(pairs(&buf));
    let head_strip = head.has_layergate_headers.then_some(buf.as_slice());
    if !policy.serves_host(head.authority) {
        // Another team's host on a shared gateway: no authentication, no credential, no
        // routing header — only client `x-layergate-*` headers are removed, since the
        // routing header is ours wherever it appears.
        if let Some(buf) = head_strip {
            strip_layergate_headers(buf, &HeaderEdits::default());
        }
        return Action::Continue;
    }
    let d = decide(&policy, &head, now);
    match d {
        Decision::Forward(plan) => forward(&policy, &plan, head_strip, None),
        Decision::ForwardWithPath(plan, path) => forward(&policy, &plan, head_strip, Some(&path)),
        Decision::Deny(d) => deny(Some(&policy), None, &d),
        Decision::Inspect(plan, inspection) => {
            if end_of_stream {
                return match crate::body::check(&policy, &plan, inspection, &[], now) {
                    Ok(()) => forward(&policy, &plan, head_strip, None),
                    Err(d) => deny(Some(&policy), Some(&plan), &d),
                };
            }
            // Envoy turns a paused header callback into "stop all iteration", which would
            // also withhold the body from this filter. So the headers continue, marked with
            // `x-layergate-inspect`: the route it selects enables Envoy's buffer filter
            // (after this one), which holds the request back from the router until this
            // filter lets the complete body through or replaces it with a denial. A request
            // with no upstream still has its body judged first: its 404/503 comes after.
            let after = apply_edits(&policy, &plan, head_strip).err();
            abi::set_header(INSPECT_HEADER, Some("1"));
            INSPECTING.with(|m| {
                m.borrow_mut().insert(
                    ctx,
                    Pending {
                        policy: Rc::clone(&policy),
                        plan,
                        inspection,
                        after,
                    },
                )
            });
            Action::Continue
        }
    }
}

fn on_request_body(ctx: u32, body_size: usize, end_of_stream: bool) -> Action {
    let over = INSPECTING.with(|m| {
        m.borrow()
            .get(&ctx)
            .map(|p| body_size as u64 > p.policy.inspect_body_bytes)
    });
    match over {
        None => return Action::Continue, // Not inspected: the body streams.
        Some(false) if !end_of_stream => {
            // Envoy buffers until the end of the body. If the body ends with trailers instead,
            // the trailer callback refuses it: nothing buffered here moves on before a verdict.
            return Action::Pause;
        }
        _ => {}
    }
    let Some(Pending {
        policy,
        plan,
        inspection,
        after,
    }) = INSPECTING.with(|m| m.borrow_mut().remove(&ctx))
    else {
        return Action::Continue;
    };
    if over == Some(true) {
        return deny(
            Some(&policy),
            Some(&plan),
            &Denial::too_large(policy.inspect_body_bytes),
        );
    }
    count(INSPECTED);
    let body = abi::get_buffer(BufferType::HttpRequestBody, 0, body_size).unwrap_or_default();
    match crate::body::check(&policy, &plan, inspection, &body, now) {
        Ok(()) => match after {
            Some(d) => deny(Some(&policy), Some(&plan), &d),
            None => {
                record(Some(&policy), Some(&plan), "allowed");
                count(0);
                Action::Continue
            }
        },
        Err(d) => deny(Some(&policy), Some(&plan), &d),
    }
}
