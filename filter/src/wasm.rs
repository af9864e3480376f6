//! The one module that talks proxy-wasm (compiled only for `wasm32`).
//!
//! Host calls cost about 1 µs each, so a header-only request makes exactly: one read of the
//! whole request header map, the targeted writes of [`Plan::header_edits`] (two for a store
//! route), one `set_property` for the access log. Counters are kept in the VM and flushed to
//! Envoy stats once a second from the root context's tick.
#![allow(unsafe_code)] // Raw ABI calls: the SDK's wrappers allocate a String per header.

use crate::config::{FilterConfig, SyncResponse};
use crate::decision::{
    decide, must_strip, Decision, HeaderEdits, Inspection, Plan, INSPECT_HEADER,
};
use crate::denial::Denial;
use crate::headers::{pairs, RequestHead};
use crate::policy::{ConfigError, Policy};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("layergate: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
}

/// Reads the whole request header map in one host call, into a buffer the host filled through
/// `proxy_on_memory_allocate`.
fn request_header_buffer() -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated with the SDK's
    // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes), or null.
    unsafe {
        if proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size) != 0
            || data.is_null()
        {
            return Vec::new();
        }
        Vec::from_raw_parts(data, size, size)
    }
}

/// Filter-state key read by access logs as `%FILTER_STATE(wasm.layergate:PLAIN)%`.
const LOG_PROPERTY: &[u8] = b"layergate";

fn set_log_property(value: &str) {
    // SAFETY: both pointers are valid for their lengths for the duration of the call.
    unsafe {
        proxy_set_property(
            LOG_PROPERTY.as_ptr(),
            LOG_PROPERTY.len(),
            value.as_ptr(),
            value.len(),
        );
    }
}

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
const SYNCED: usize = 9;
const SYNC_FAILED: usize = 10;

/// Gauge: seconds since the key table was last confirmed by the key service (since the
/// configuration was loaded, before the first sync).
const STALE_GAUGE: &str = "layergate.keys_stale_seconds";

thread_local! {
    static PENDING: [Cell<u64>; 11] = Default::default();
    static LOG_LINE: RefCell<String> = RefCell::new(String::with_capacity(160));
}

fn count(index: usize) {
    PENDING.with(|p| p[index].set(p[index].get() + 1));
}

fn counter_for(label: &str) -> usize {
    COUNTERS
        .iter()
        .position(|c| c.strip_prefix("layergate.") == Some(label))
        .unwrap_or(0)
}

#[derive(Default)]
struct Root {
    policy: Option<Rc<Policy>>,
    metric_ids: Vec<u32>,
    stale_gauge: Option<u32>,
    sync: Sync,
}

/// The key-service sync loop's state (SPEC §6): one long poll in flight at a time; after a
/// failure, retries back off from 1 s to 10 s.
#[derive(Default)]
struct Sync {
    /// The call in flight and the revision it asked from.
    in_flight: Option<(u32, Option<Box<str>>)>,
    /// Unix seconds before which no new call is made (after failures).
    not_before: i64,
    failures: u32,
    /// When the configuration was loaded (for the gauge before the first sync).
    configured_at: i64,
}

impl Root {
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
        let _ = write!(path, "?wait={}", ks.poll_seconds);
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
        let call = self.dispatch_http_call(
            &ks.cluster,
            vec![
                (":method", "GET"),
                (":path", &path),
                (":authority", &ks.authority),
                ("authorization", bearer),
            ],
            None,
            vec![],
            std::time::Duration::from_secs(ks.poll_seconds + 5),
        );
        match call {
            Ok(token) => self.sync.in_flight = Some((token, since)),
            Err(_) => self.sync_failed("dispatch_http_call to the key service's cluster failed"),
        }
    }

    fn sync_failed(&mut self, why: &str) {
        self.sync.failures = self.sync.failures.saturating_add(1);
        let backoff = 1i64 << self.sync.failures.min(4).saturating_sub(1);
        self.sync.not_before = now().saturating_add(backoff.min(10));
        count(SYNC_FAILED);
        if self.sync.failures == 1 || self.sync.failures.is_multiple_of(30) {
            let _ = hostcalls::log(
                LogLevel::Warn,
                &format!(
                    "layergate: key service sync failed ({why}); {} failures in a row, the last table keeps serving until keyService.maxStalenessSeconds",
                    self.sync.failures
                ),
            );
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
            let table = policy
                .keys
                .apply(&answer, &policy.store_ids(), policy.stores.len())
                .map_err(|e| format!("the answer was refused: {e}"))?;
            self.policy = Some(Rc::new(policy.with_keys(table)));
        }
        if let Some(f) = policy.keys.freshness() {
            f.synced(now());
        }
        Ok(())
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some((expected, asked)) = self.sync.in_flight.take() else {
            return;
        };
        if expected != token {
            return;
        }
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        let result = match status.as_deref() {
            Some("200") => {
                let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                self.synced(asked.as_deref(), &body)
            }
            Some(other) => Err(format!("the key service answered {other}")),
            None => Err("no answer (timeout or connection failure)".into()),
        };
        match result {
            Ok(()) => {
                self.sync.failures = 0;
                count(SYNCED);
            }
            Err(why) => self.sync_failed(&why),
        }
        self.sync_keys();
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
            _ => {
                let _ = hostcalls::log(
                    LogLevel::Critical,
                    "layergate: no plugin configuration; refusing to start",
                );
                return false;
            }
        };
        // Parse, then free the document before compiling: linear memory never shrinks, so
        // the peak (document + parsed + compiled) is what every copy of the VM keeps.
        let parsed = FilterConfig::from_json(&bytes).map_err(ConfigError::from);
        drop(bytes);
        match parsed.and_then(|cfg| Policy::compile(&cfg, |var| std::env::var(var).ok())) {
            Ok(policy) => {
                for s in &policy.stores {
                    if let Err(var) = &s.bearer {
                        let _ = hostcalls::log(
                            LogLevel::Error,
                            &format!("layergate: store {:?}: environment variable {var} is not set; its requests get 503", s.name),
                        );
                    }
                }
                let _ = hostcalls::log(
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
                        .filter_map(|name| hostcalls::define_metric(MetricType::Counter, name).ok())
                        .collect();
                    self.stale_gauge =
                        hostcalls::define_metric(MetricType::Gauge, STALE_GAUGE).ok();
                }
                let _ = hostcalls::set_tick_period(std::time::Duration::from_secs(1));
                self.sync = Sync {
                    configured_at: now(),
                    ..Sync::default()
                };
                self.sync_keys();
                true
            }
            Err(e) => {
                let _ = hostcalls::log(
                    LogLevel::Critical,
                    &format!("layergate: {e}; configuration refused"),
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let (Some(policy), Some(gauge)) = (&self.policy, self.stale_gauge) {
            if let Some(f) = policy.keys.freshness() {
                let now = now();
                let stale = f
                    .stale_seconds(now)
                    .unwrap_or_else(|| now.saturating_sub(self.sync.configured_at));
                let _ = hostcalls::record_metric(gauge, u64::try_from(stale).unwrap_or(0));
            }
        }
        self.sync_keys();
        PENDING.with(|p| {
            for (cell, id) in p.iter().zip(&self.metric_ids) {
                let n = cell.replace(0);
                if n > 0 {
                    let _ = hostcalls::increment_metric(*id, n as i64);
                }
            }
        });
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            policy: self.policy.clone(),
            pending: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    policy: Option<Rc<Policy>>,
    /// A body being buffered for inspection, and the refusal owed after it when the request
    /// has nowhere to go (a 404 or 503 must not come before a 403 the body earns).
    pending: Option<Pending>,
}

struct Pending {
    plan: Plan,
    inspection: Inspection,
    after: Option<Denial>,
}

/// The host clock in Unix seconds (`i64::MAX` when unreadable: every expiry has passed).
fn now() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(i64::MAX, |d| d.as_secs() as i64)
}

impl Context for Request {}

impl Request {
    fn deny(&self, policy: Option<&Policy>, plan: Option<&Plan>, denial: &Denial) -> Action {
        let body = denial.body();
        let mut headers = vec![("content-type", "application/json")];
        if let Some(w) = denial.www_authenticate() {
            headers.push(("www-authenticate", w));
        }
        record(policy, plan, denial.label());
        count(counter_for(denial.label()));
        let _ = hostcalls::send_http_response(denial.status(), headers, Some(body.as_bytes()));
        Action::Pause
    }

    /// Forwards: header writes, optional `:path`, access-log record and counter.
    fn forward(
        &self,
        policy: &Policy,
        plan: &Plan,
        header_buf: Option<&[u8]>,
        path: Option<&str>,
    ) -> Action {
        if let Err(d) = apply_edits(policy, plan, header_buf) {
            return self.deny(Some(policy), Some(plan), &d);
        }
        if let Some(p) = path {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, ":path", Some(p));
        }
        record(Some(policy), Some(plan), "allowed");
        count(0);
        Action::Continue
    }
}

/// Writes the plan's headers and strips client `x-layergate-*` headers it does not overwrite.
/// `header_buf` is the serialized request map, passed only when such headers were seen.
fn apply_edits(policy: &Policy, plan: &Plan, header_buf: Option<&[u8]>) -> Result<(), Denial> {
    let edits = plan.header_edits(policy)?;
    if let Some(buf) = header_buf {
        strip_layergate_headers(buf, &edits);
    }
    for &(name, value) in edits.as_slice() {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
    }
    Ok(())
}

/// Removes the client's `x-layergate-*` headers that `edits` does not overwrite; `buf` is the
/// serialized request map.
fn strip_layergate_headers(buf: &[u8], edits: &HeaderEdits<'_>) {
    for (name, _) in pairs(buf) {
        if must_strip(name, edits) {
            if let Ok(name) = std::str::from_utf8(name) {
                let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
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
        let _ = write!(
            line,
            "principal={principal} scope={scope} store={store} decision={decision}"
        );
        set_log_property(&line);
    });
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(policy) = self.policy.clone() else {
            let d = Denial::unavailable("layergate has no configuration");
            return self.deny(None, None, &d);
        };
        let buf = request_header_buffer();
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
        match decide(&policy, &head, now) {
            Decision::Forward(plan) => self.forward(&policy, &plan, head_strip, None),
            Decision::ForwardWithPath(plan, path) => {
                self.forward(&policy, &plan, head_strip, Some(&path))
            }
            Decision::Deny(d) => self.deny(Some(&policy), None, &d),
            Decision::Inspect(plan, inspection) => {
                if end_of_stream {
                    return match crate::body::check(&policy, &plan, inspection, &[], now) {
                        Ok(()) => self.forward(&policy, &plan, head_strip, None),
                        Err(d) => self.deny(Some(&policy), Some(&plan), &d),
                    };
                }
                // Envoy turns a paused header callback into "stop all iteration", which would
                // also withhold the body from this filter. So the headers continue, marked with
                // `x-layergate-inspect`: the route it selects enables Envoy's buffer filter
                // (after this one), which holds the request back from the router until this
                // filter lets the complete body through or replaces it with a denial. A request
                // with no upstream still has its body judged first: its 404/503 comes after.
                let after = apply_edits(&policy, &plan, head_strip).err();
                let _ = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    INSPECT_HEADER,
                    Some("1"),
                );
                self.pending = Some(Pending {
                    plan,
                    inspection,
                    after,
                });
                Action::Continue
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(policy), Some(pending)) = (self.policy.clone(), self.pending.as_ref()) else {
            return Action::Continue;
        };
        if body_size as u64 > policy.inspect_body_bytes {
            let plan = pending.plan;
            self.pending = None;
            return self.deny(
                Some(&policy),
                Some(&plan),
                &Denial::too_large(policy.inspect_body_bytes),
            );
        }
        if !end_of_stream {
            // Envoy buffers until the end of the body. If the body ends with trailers instead,
            // the trailer callback refuses it: nothing buffered here moves on before a verdict.
            return Action::Pause;
        }
        let Some(Pending {
            plan,
            inspection,
            after,
        }) = self.pending.take()
        else {
            return Action::Continue;
        };
        count(8);
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match crate::body::check(&policy, &plan, inspection, &body, now) {
            Ok(()) => match after {
                Some(d) => self.deny(Some(&policy), Some(&plan), &d),
                None => {
                    record(Some(&policy), Some(&plan), "allowed");
                    count(0);
                    Action::Continue
                }
            },
            Err(d) => self.deny(Some(&policy), Some(&plan), &d),
        }
    }

    /// A body under inspection that ends with trailers (HTTP/2, or HTTP/1.1 chunked where the
    /// codec keeps trailers) is refused: Envoy would release the buffered body with the
    /// trailers, unjudged, and no turbopuffer client sends request trailers (SPEC §5).
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let (Some(policy), Some(pending)) = (self.policy.clone(), self.pending.take()) else {
            return Action::Continue;
        };
        let d = Denial::bad_request(
            "this request body is inspected for namespaces and may not end with trailers; send it without trailers",
        );
        self.deny(Some(&policy), Some(&pending.plan), &d)
    }
}
