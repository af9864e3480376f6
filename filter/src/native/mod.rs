//! The filter as an Envoy dynamic module (compiled only with the `native` feature, off wasm;
//! the shared object is `filter/native`'s `liblayergate_native.so`): the hooks Envoy calls,
//! over the decision core the wasm build runs.
//!
//! ```text
//!  config_new (main thread):  JSON ──Policy::from_json──► Config { RwLock<Arc<Policy>>, ids, sync }
//!  config_scheduled / config_http_callout_done (main thread): the key-service sync (`sync`)
//!  new (per stream):          Box<Stream> { &Config, pending inspection, replied }
//!  request_headers ─► request::on_request_headers ─► decide ─► edits + route again | local reply
//!  request_body    ─► request::on_request_body    ─► body::check at the end of the body
//!  request_trailers ─► an inspected body may not end with trailers
//! ```
//!
//! Native code runs inside Envoy's process, so no panic may cross into Envoy: every hook runs
//! under [`std::panic::catch_unwind`]; a request whose hook panicked gets a 503 (fail closed,
//! never forwarded) and the panic is logged and counted (`layergate.panics`). Nothing here
//! blocks: the policy is immutable and shared by reference; a stream's state is its own.
//!
//! Minted keys come from the configuration (`apiKeys`) or from the key service: `sync` keeps
//! one table per configuration — one per process —, synced on Envoy's main thread, driven by
//! a ticker thread of the module's own, and swapped atomically for the workers.
//!
//! The rooms: this file (the hooks with work to do, the panic guard, configuration and stream
//! objects), `passive` (the hooks Envoy requires that have nothing to do), `abi` (the pinned
//! declarations), `host` (safe calls into Envoy), `request` (a stream's decision written back)
//! and `sync` (the key-service client). Only `host` calls into [`abi`]'s callbacks.
#![allow(unsafe_code)] // `#[no_mangle]` exports of the ABI, and Envoy's pointers to the module's own objects.

mod abi;
mod host;
mod passive;
mod request;
mod sync;

use self::abi::{
    BodyStatus, ConfigEnvoyPtr, ConfigModulePtr, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr,
    FilterModulePtr, HeadersStatus, LogLevel, TrailersStatus,
};
use self::host::{log, ConfigHost, Host};
use self::request::Pending;
use crate::config::CONFIG_VERSION;
use crate::denial::Denial;
use crate::outcome::COUNTERS;
use crate::policy::Policy;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, PoisonError, RwLock};

/// Counter: hooks that panicked (each answered fail-closed).
const PANICS: &str = "layergate.panics";

/// Gauge: seconds since the key table was last confirmed by the key service (since the
/// configuration was loaded, before the first sync).
const STALE_GAUGE: &str = "layergate.keys_stale_seconds";

/// The clock in Unix seconds (`i64::MAX` when unreadable: every expiry has passed).
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(i64::MAX)
}

/// The clock in nanoseconds since the Unix epoch, for rate buckets (0 when unreadable).
pub(crate) fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// One filter configuration (Envoy's `DynamicModuleFilter`): shared by every stream of it,
/// on every worker.
pub(crate) struct Config {
    /// The compiled configuration and its key table; swapped whole by a key-service sync.
    policy: RwLock<Arc<Policy>>,
    /// Envoy counter ids by [`COUNTERS`] index (`None`: Envoy did not define it).
    counters: [Option<usize>; COUNTERS.len()],
    panics: Option<usize>,
    /// The key-service sync, with a `keyService` (and not under `--mode validate`).
    sync: Option<sync::Sync>,
}

impl Config {
    /// The current policy (a request keeps the one it started with).
    fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Swaps in a new policy (a new key table); requests under way keep theirs.
    fn swap(&self, policy: Arc<Policy>) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = policy;
    }
}

// Streams on every worker read one `Config`.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Config>();
};

/// One stream. Envoy runs all of a stream's hooks on its worker, one at a time.
pub(crate) struct Stream {
    /// The stream's configuration; Envoy keeps it alive while any of its streams is.
    config: *const Config,
    /// The body being inspected, if any.
    pending: Option<Pending>,
    /// True once a local reply was sent.
    replied: bool,
}

// ---- the panic guard ---------------------------------------------------------------------------

/// Runs `f`; a panic (logged by the panic hook) becomes `fallback`.
fn shielded<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Runs a request hook over the stream's objects; when it panics, the request is answered 503
/// (unless it was already answered) and `stopped` is returned, so nothing is forwarded.
///
/// # Safety
///
/// `filter` and `module` are the pointers Envoy passed to the running hook.
unsafe fn request_hook<T: Copy>(
    filter: FilterEnvoyPtr,
    module: FilterModulePtr,
    stopped: T,
    f: impl FnOnce(&mut Host, &mut Stream, &Config) -> T,
) -> T {
    let stream = module.cast_mut().cast::<Stream>();
    let run = || {
        // SAFETY: `module` is the `Stream` `new` made for this stream, used by one hook at a
        // time; its `Config` outlives it; `filter` is this hook's stream handle.
        let (stream, mut host) = unsafe { (&mut *stream, Host::new(filter)) };
        // SAFETY: as above.
        let config = unsafe { &*stream.config };
        let answer = f(&mut host, stream, config);
        if !stream.replied {
            host.route_again_if_edited();
        }
        answer
    };
    if stream.is_null() {
        // `new` failed; Envoy closes such a stream, but never forward it.
        shielded((), || {
            // SAFETY: this hook's stream handle.
            let mut host = unsafe { Host::new(filter) };
            fail_closed(&mut host, None);
        });
        return stopped;
    }
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(answer) => answer,
        Err(_) => {
            shielded((), || {
                // SAFETY: as in `run`, which has unwound and holds nothing any more.
                let (stream, mut host) = unsafe { (&mut *stream, Host::new(filter)) };
                fail_closed(&mut host, Some(stream));
            });
            stopped
        }
    }
}

/// After a panic: counts it and answers 503 unless the request was already answered.
fn fail_closed(host: &mut Host, stream: Option<&mut Stream>) {
    let denial = Denial::unavailable(
        "layergate failed on this request (an internal error, logged by the gateway); nothing was forwarded",
    );
    match stream {
        Some(stream) => {
            // SAFETY: the stream's configuration outlives it.
            let config = unsafe { &*stream.config };
            if let Some(id) = config.panics {
                host.increment(id);
            }
            stream.pending = None;
            if !stream.replied {
                stream.replied = true;
                host.send_response(
                    503,
                    &[("content-type", "application/json")],
                    denial.body().as_bytes(),
                    "layergate_panic",
                );
            }
        }
        None => host.send_response(
            503,
            &[("content-type", "application/json")],
            denial.body().as_bytes(),
            "layergate_panic",
        ),
    }
}

// ---- exports ------------------------------------------------------------------------------------

/// Module load (main thread): the panic hook, and the ABI this module was built for.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    shielded((), || {
        std::panic::set_hook(Box::new(|info| {
            log(LogLevel::Critical, &format!("layergate: panic: {info}"));
        }));
    });
    abi::ABI_VERSION.as_ptr()
}

/// A filter configuration (main thread): compiled once, or refused (null), which makes Envoy
/// refuse the configuration that carries it.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigModulePtr {
    shielded(std::ptr::null(), || {
        let bytes: &[u8] = if config.ptr.is_null() {
            &[]
        } else {
            // SAFETY: Envoy passes `length` readable bytes, alive during this hook.
            unsafe { std::slice::from_raw_parts(config.ptr.cast(), config.length) }
        };
        // SAFETY: Envoy's configuration object for this configuration, used on the main thread.
        let host = unsafe { ConfigHost::new(config_envoy) };
        match configure(host, bytes) {
            Some(c) => Box::into_raw(Box::new(c)).cast_const().cast(),
            None => std::ptr::null(),
        }
    })
}

/// Compiles a configuration, defines its counters and gauge, and starts its key-service sync;
/// `None` (logged) refuses it.
fn configure(host: ConfigHost, bytes: &[u8]) -> Option<Config> {
    let policy = match Policy::from_json(bytes, |var| std::env::var(var).ok()) {
        Ok(policy) => policy,
        Err(e) => {
            log(
                LogLevel::Critical,
                &format!(
                    "layergate: configuration refused: {e}; this filter reads configuration version {CONFIG_VERSION} (filter {}); Envoy refuses the filter configuration — upgrade the gateway's filter to the operator's",
                    env!("CARGO_PKG_VERSION")
                ),
            );
            return None;
        }
    };
    for s in &policy.stores {
        if let Err(var) = &s.bearer {
            log(
                LogLevel::Error,
                &format!("layergate: store {:?}: environment variable {var} is not set in Envoy's environment; its requests get 503", s.name),
            );
        }
    }
    log(LogLevel::Info, &crate::outcome::configured(&policy));
    let counters = COUNTERS.map(|name| host.define_counter(name));
    let panics = host.define_counter(PANICS);
    let stale_gauge = host.define_gauge(STALE_GAUGE);
    let sync = match &policy.key_service {
        Some(_) => {
            let sync = sync::Sync::start(host, stale_gauge);
            if sync.is_none() && !host::validation_mode() {
                log(
                    LogLevel::Critical,
                    "layergate: the key-service sync could not start; minted tokens get 503",
                );
            }
            sync
        }
        None => None,
    };
    Some(Config {
        policy: RwLock::new(Arc::new(policy)),
        counters,
        panics,
        sync,
    })
}

/// The ticker's event, on the main thread: the key-service sync's second.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    event: u64,
) {
    shielded((), || {
        // SAFETY: made by `config_new`; Envoy calls this only while the configuration lives.
        let Some(config) = (unsafe { config.cast::<Config>().as_ref() }) else {
            return;
        };
        if let (Some(sync), sync::TICK) = (&config.sync, event) {
            sync.tick(config);
        }
    });
}

/// The key service's answer, on the main thread.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    callout_id: u64,
    result: abi::CEnum,
    headers: *mut EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *mut EnvoyBuffer,
    body_chunks_size: usize,
) {
    shielded((), || {
        // SAFETY: made by `config_new`; Envoy calls this only while the configuration lives.
        let Some(config) = (unsafe { config.cast::<Config>().as_ref() }) else {
            return;
        };
        let Some(sync) = &config.sync else {
            return;
        };
        // SAFETY: the hook's own arrays, valid until it returns.
        let (status, body) =
            unsafe { host::callout_answer(headers, headers_size, body_chunks, body_chunks_size) };
        let status = (result == abi::CALLOUT_SUCCESS).then_some(status).flatten();
        sync.answered(config, callout_id, status.as_deref(), &body);
    });
}

/// A configuration Envoy no longer uses (after its last stream).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config: ConfigModulePtr,
) {
    shielded((), || {
        if !config.is_null() {
            // SAFETY: made by `Box::into_raw` in `config_new`; Envoy destroys it once.
            drop(unsafe { Box::from_raw(config.cast_mut().cast::<Config>()) });
        }
    });
}

/// A stream (its worker): its state, owned until `destroy`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModulePtr,
    _filter: FilterEnvoyPtr,
) -> FilterModulePtr {
    shielded(std::ptr::null(), || {
        if config.is_null() {
            return std::ptr::null();
        }
        let stream = Box::new(Stream {
            config: config.cast(),
            pending: None,
            replied: false,
        });
        Box::into_raw(stream).cast_const().cast()
    })
}

/// The stream is gone.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: FilterModulePtr) {
    shielded((), || {
        if !filter.is_null() {
            // SAFETY: made by `Box::into_raw` in `new`; Envoy destroys it once.
            drop(unsafe { Box::from_raw(filter.cast_mut().cast::<Stream>()) });
        }
    });
}

/// Request headers: the decision.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: FilterEnvoyPtr,
    module: FilterModulePtr,
    end_of_stream: bool,
) -> HeadersStatus {
    // SAFETY: Envoy's pointers for this hook.
    unsafe {
        request_hook(
            filter,
            module,
            HeadersStatus::StopIteration,
            |host, stream, config| request::on_request_headers(host, stream, config, end_of_stream),
        )
    }
}

/// A chunk of request body: buffered while inspected, judged at its end.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter: FilterEnvoyPtr,
    module: FilterModulePtr,
    end_of_stream: bool,
) -> BodyStatus {
    // SAFETY: Envoy's pointers for this hook.
    unsafe {
        request_hook(
            filter,
            module,
            BodyStatus::StopIterationNoBuffer,
            |host, stream, config| request::on_request_body(host, stream, config, end_of_stream),
        )
    }
}

/// Request trailers: an inspected body that ends with them is refused.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter: FilterEnvoyPtr,
    module: FilterModulePtr,
) -> TrailersStatus {
    // SAFETY: Envoy's pointers for this hook.
    unsafe {
        request_hook(
            filter,
            module,
            TrailersStatus::StopIteration,
            request::on_request_trailers,
        )
    }
}

// Every export has the pinned signature of its hook.
const _: abi::OnProgramInit = envoy_dynamic_module_on_program_init;
const _: abi::OnConfigNew = envoy_dynamic_module_on_http_filter_config_new;
const _: abi::OnConfigDestroy = envoy_dynamic_module_on_http_filter_config_destroy;
const _: abi::OnConfigScheduled = envoy_dynamic_module_on_http_filter_config_scheduled;
const _: abi::OnConfigHttpCalloutDone =
    envoy_dynamic_module_on_http_filter_config_http_callout_done;
const _: abi::OnFilterNew = envoy_dynamic_module_on_http_filter_new;
const _: abi::OnFilterDestroy = envoy_dynamic_module_on_http_filter_destroy;
const _: abi::OnHeaders = envoy_dynamic_module_on_http_filter_request_headers;
const _: abi::OnBody = envoy_dynamic_module_on_http_filter_request_body;
const _: abi::OnTrailers = envoy_dynamic_module_on_http_filter_request_trailers;
const _: abi::OnHeaders = passive::envoy_dynamic_module_on_http_filter_response_headers;
const _: abi::OnBody = passive::envoy_dynamic_module_on_http_filter_response_body;
const _: abi::OnTrailers = passive::envoy_dynamic_module_on_http_filter_response_trailers;
const _: abi::OnStreamEvent = passive::envoy_dynamic_module_on_http_filter_stream_complete;
const _: abi::OnHttpCalloutDone = passive::envoy_dynamic_module_on_http_filter_http_callout_done;
const _: abi::OnHttpStreamHeaders =
    passive::envoy_dynamic_module_on_http_filter_http_stream_headers;
const _: abi::OnHttpStreamData = passive::envoy_dynamic_module_on_http_filter_http_stream_data;
const _: abi::OnHttpStreamTrailers =
    passive::envoy_dynamic_module_on_http_filter_http_stream_trailers;
const _: abi::OnStreamId = passive::envoy_dynamic_module_on_http_filter_http_stream_complete;
const _: abi::OnHttpStreamReset = passive::envoy_dynamic_module_on_http_filter_http_stream_reset;
const _: abi::OnStreamId = passive::envoy_dynamic_module_on_http_filter_scheduled;
const _: abi::OnStreamEvent =
    passive::envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark;
const _: abi::OnStreamEvent =
    passive::envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark;
