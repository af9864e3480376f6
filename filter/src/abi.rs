//! The proxy-wasm ABI 0.2.1 host calls the filter makes, declared by hand (compiled only for
//! `wasm32`).
//!
//! Why not the Rust SDK: its dispatcher exports every `proxy_on_*` callback, so Envoy enters
//! the VM about seven times per request whatever the filter does, and each host call that
//! returns data re-enters the VM to allocate a `String`. The filter exports only the callbacks
//! it needs (see `wasm/`) and reads host memory through [`proxy_on_memory_allocate`].
#![allow(unsafe_code)] // The ABI is raw pointers by definition; each call says why it is sound.

use std::time::Duration;

/// `proxy_log` levels.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    /// Informational.
    Info = 2,
    /// Something to look at.
    Warn = 3,
    /// An error.
    Error = 4,
    /// The filter cannot work.
    Critical = 5,
}

/// Header maps.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum MapType {
    /// The request's headers.
    HttpRequestHeaders = 0,
    /// The answer to a `dispatch_http_call`.
    HttpCallResponseHeaders = 6,
}

/// Buffers.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum BufferType {
    /// The request body (what Envoy buffered so far).
    HttpRequestBody = 0,
    /// The body of a `dispatch_http_call` answer.
    HttpCallResponseBody = 4,
    /// The plugin configuration.
    PluginConfiguration = 7,
}

/// Metric kinds.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum MetricType {
    /// Monotonic.
    Counter = 0,
    /// Set to a value.
    Gauge = 1,
}

/// What a stream callback answers Envoy.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    /// Go on with the next filter.
    Continue = 0,
    /// Stop (headers: stop iteration; body: buffer).
    Pause = 1,
}

const OK: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
}

/// Memory the host fills for a host call that returns data: a `Vec` of exactly `size` bytes
/// whose ownership passes to the caller of the host call (see [`take`]).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(size);
    let ptr = v.as_mut_ptr();
    std::mem::forget(v);
    ptr
}

/// Takes ownership of host-filled memory from [`proxy_on_memory_allocate`].
fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host wrote `size` bytes into a buffer `proxy_on_memory_allocate` made
    // with capacity `size`, and handed it over to us.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Logs a message.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: pointer and length of a live `&str`.
    unsafe {
        proxy_log(level as u32, message.as_ptr(), message.len());
    }
}

/// The host clock in Unix seconds (`i64::MAX` when unreadable: every expiry has passed).
pub fn now() -> i64 {
    let mut nanos = 0u64;
    // SAFETY: `nanos` is a valid out pointer for the call.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    if status == OK {
        i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX)
    } else {
        i64::MAX
    }
}

/// The host clock in nanoseconds since the Unix epoch, for rate buckets (0 when unreadable).
pub fn now_nanos() -> u64 {
    let mut nanos = 0u64;
    // SAFETY: `nanos` is a valid out pointer for the call.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    if status == OK {
        nanos
    } else {
        0
    }
}

/// Calls the root context's tick every `period`.
pub fn set_tick_period(period: Duration) {
    // SAFETY: plain integer argument.
    unsafe {
        proxy_set_tick_period_milliseconds(u32::try_from(period.as_millis()).unwrap_or(u32::MAX));
    }
}

/// Up to `max` bytes of a buffer; `None` when there is none.
pub fn get_buffer(kind: BufferType, start: usize, max: usize) -> Option<Vec<u8>> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: valid out pointers; the host allocates through `proxy_on_memory_allocate`.
    let status = unsafe { proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) };
    (status == OK).then(|| take(data, size))
}

/// The whole header map, serialized (one host call; see `headers::pairs`).
pub fn header_map(map: MapType) -> Vec<u8> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: valid out pointers; the host allocates through `proxy_on_memory_allocate`.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    if status == OK {
        take(data, size)
    } else {
        Vec::new()
    }
}

/// One header's value.
pub fn get_header(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: pointer and length of a live `&str`; valid out pointers.
    let status = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    (status == OK).then(|| take(data, size))
}

/// Sets (`Some`) or removes (`None`) a request header.
pub fn set_header(name: &str, value: Option<&str>) {
    let map = MapType::HttpRequestHeaders as u32;
    // SAFETY: pointers and lengths of live `&str`s.
    unsafe {
        match value {
            Some(v) => {
                proxy_replace_header_map_value(map, name.as_ptr(), name.len(), v.as_ptr(), v.len())
            }
            None => proxy_remove_header_map_value(map, name.as_ptr(), name.len()),
        };
    }
}

/// Answers the request locally.
pub fn send_local_response(status: u32, headers: &[(&str, &str)], body: &[u8]) {
    let serialized = crate::headers::serialize(headers.iter().copied());
    // SAFETY: pointers and lengths of live buffers.
    unsafe {
        proxy_send_local_response(
            status,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            serialized.as_ptr(),
            serialized.len(),
            -1,
        );
    }
}

/// Sets a filter-state property (`path` is one segment here).
pub fn set_property(path: &[u8], value: &str) {
    // SAFETY: pointers and lengths of live buffers.
    unsafe {
        proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len());
    }
}

/// A shared-data value (shared by every VM of the plugin's VM id in the process) and its CAS
/// token; `None` when the key has no value.
pub fn get_shared_data(key: &str) -> Option<(Vec<u8>, u32)> {
    let (mut data, mut size, mut cas) = (std::ptr::null_mut(), 0usize, 0u32);
    // SAFETY: pointer and length of a live `&str`; valid out pointers.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    (status == OK).then(|| (take(data, size), cas))
}

/// Sets a shared-data value if its CAS token is still `cas` (0: whatever it is); false when
/// another VM changed it meanwhile (or the host refused).
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> bool {
    // SAFETY: pointers and lengths of live buffers.
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    status == OK
}

/// Defines a metric; its id.
pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    let mut id = 0u32;
    // SAFETY: pointer and length of a live `&str`; valid out pointer.
    let status = unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
    (status == OK).then_some(id)
}

/// Adds to a counter.
pub fn increment_metric(id: u32, by: i64) {
    // SAFETY: plain integer arguments.
    unsafe {
        proxy_increment_metric(id, by);
    }
}

/// Sets a gauge.
pub fn record_metric(id: u32, value: u64) {
    // SAFETY: plain integer arguments.
    unsafe {
        proxy_record_metric(id, value);
    }
}

/// Sends an HTTP request to `cluster` from the root context; the token of the call, whose
/// answer arrives in `proxy_on_http_call_response`.
pub fn dispatch_http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Option<u32> {
    let serialized = crate::headers::serialize(headers.iter().copied());
    let empty = crate::headers::serialize(std::iter::empty::<(&str, &str)>());
    let mut token = 0u32;
    // SAFETY: pointers and lengths of live buffers; valid out pointer.
    let status = unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            serialized.as_ptr(),
            serialized.len(),
            body.as_ptr(),
            body.len(),
            empty.as_ptr(),
            empty.len(),
            u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            &mut token,
        )
    };
    (status == OK).then_some(token)
}
