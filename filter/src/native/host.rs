//! Safe calls into Envoy for one stream ([`Host`]) and for the process ([`log`]), over the
//! callbacks of [`super::abi`]. The only place the native build turns Envoy's pointers into
//! Rust slices, and it ties their lifetimes to what the ABI promises: a header view borrows the
//! [`Host`], and every write takes it mutably, so no view survives a write (the ABI lets a
//! setter invalidate what an earlier read returned).
#![allow(unsafe_code)] // Calls across the FFI boundary; each says why it is sound.

use super::abi::{
    self, ConfigEnvoyPtr, ConfigSchedulerPtr, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr,
    LogLevel, ModuleBuffer,
};
use std::time::Duration;

/// Logs `message` through Envoy's `dynamic_modules` logger.
pub(super) fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer points at a live `&str` for the duration of the call.
    unsafe { abi::envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}

/// True under `envoy --mode validate` (main thread only).
pub(super) fn validation_mode() -> bool {
    // SAFETY: no arguments; called from `config_new`, on the main thread.
    unsafe { abi::envoy_dynamic_module_callback_is_validation_mode() }
}

/// Envoy's object for one filter configuration, for calls outside any stream. Only used on the
/// main thread (`config_new`, `config_scheduled`, `config_http_callout_done`), though it is
/// carried in the module's shared configuration.
#[derive(Clone, Copy)]
pub(super) struct ConfigHost(ConfigEnvoyPtr);

// SAFETY: Envoy's configuration object outlives the module's (Envoy calls `config_destroy`
// from its destructor), and every call through it is made on the main thread; other threads
// only carry the pointer.
unsafe impl Send for ConfigHost {}
// SAFETY: as for `Send`: shared, but only used on the main thread.
unsafe impl Sync for ConfigHost {}

impl ConfigHost {
    /// The configuration object of the running configuration hook.
    ///
    /// # Safety
    ///
    /// `config` is the pointer Envoy passed to `config_new` (or a later configuration hook)
    /// for this configuration, and calls through it are made on the main thread only.
    pub(super) unsafe fn new(config: ConfigEnvoyPtr) -> ConfigHost {
        ConfigHost(config)
    }

    /// Defines counter `name` (only inside `config_new`); its id, or `None` when refused.
    pub(super) fn define_counter(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: a configuration pointer during `config_new`; the name buffer and the out
        // pointer are live for the call; no labels (null, 0).
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == abi::METRICS_SUCCESS).then_some(id)
    }

    /// Defines gauge `name` (only inside `config_new`); its id, or `None` when refused.
    pub(super) fn define_gauge(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: as in `define_counter`.
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_define_gauge(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == abi::METRICS_SUCCESS).then_some(id)
    }

    /// Sets gauge `id` to `value`.
    pub(super) fn set_gauge(&self, id: usize, value: u64) {
        // SAFETY: a configuration pointer, on the main thread; no labels (null, 0).
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.0,
                id,
                std::ptr::null_mut(),
                0,
                value,
            );
        }
    }

    /// Adds one to counter `id`.
    pub(super) fn increment(&self, id: usize) {
        // SAFETY: a configuration pointer, on the main thread; no labels (null, 0).
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.0,
                id,
                std::ptr::null_mut(),
                0,
                1,
            );
        }
    }

    /// A scheduler posting events to this configuration's `config_scheduled` hook.
    pub(super) fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: a configuration pointer, on the main thread.
        let s =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!s.is_null()).then_some(Scheduler(s))
    }

    /// Sends `GET`-style `headers` over `cluster`; the callout id, or `None` when Envoy could
    /// not start it (unknown cluster, no host).
    pub(super) fn http_callout(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Option<u64> {
        let mut list: Vec<abi::ModuleHttpHeader> = headers
            .iter()
            .map(|(name, value)| abi::ModuleHttpHeader {
                key_ptr: name.as_ptr().cast(),
                key_length: name.len(),
                value_ptr: value.as_ptr().cast(),
                value_length: value.len(),
            })
            .collect();
        let mut id = 0u64;
        // SAFETY: a configuration pointer, on the main thread; the header list and buffers
        // are live for the call (Envoy copies them); the out pointer is valid.
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                list.as_mut_ptr(),
                list.len(),
                if body.is_empty() {
                    ModuleBuffer::NULL
                } else {
                    ModuleBuffer::of(body)
                },
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            )
        };
        (result == abi::CALLOUT_INIT_SUCCESS).then_some(id)
    }
}

/// A configuration's scheduler: [`Scheduler::commit`] from any thread runs the configuration's
/// `config_scheduled` hook on the main thread. Deleted on drop.
pub(super) struct Scheduler(ConfigSchedulerPtr);

// SAFETY: Envoy documents `commit` as callable from any thread; `delete` runs once, on drop.
unsafe impl Send for Scheduler {}
// SAFETY: as for `Send`.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    /// Posts `event` to the main thread.
    pub(super) fn commit(&self, event: u64) {
        // SAFETY: a live scheduler (deleted only on drop).
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event)
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: made by `scheduler_new`, deleted once.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// A callout's answer as Envoy hands it to `config_http_callout_done`: its `:status` and its
/// body, copied out.
///
/// # Safety
///
/// The pointers and counts are the hook's own, valid until it returns (null with 0 allowed).
pub(super) unsafe fn callout_answer(
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> (Option<Vec<u8>>, Vec<u8>) {
    let headers: &[EnvoyHttpHeader] = if headers.is_null() {
        &[]
    } else {
        // SAFETY: `headers_size` entries Envoy handed to the running hook.
        unsafe { std::slice::from_raw_parts(headers, headers_size) }
    };
    let status = headers.iter().find_map(|h| {
        // SAFETY: entries of the running hook.
        let (k, v) = unsafe {
            (
                bytes(h.key_ptr, h.key_length),
                bytes(h.value_ptr, h.value_length),
            )
        };
        (k == b":status").then(|| v.to_vec())
    });
    let chunks: &[EnvoyBuffer] = if chunks.is_null() {
        &[]
    } else {
        // SAFETY: `chunks_size` entries Envoy handed to the running hook.
        unsafe { std::slice::from_raw_parts(chunks, chunks_size) }
    };
    let mut body = Vec::with_capacity(chunks.iter().map(|c| c.length).sum());
    for c in chunks {
        // SAFETY: chunks of the running hook.
        body.extend_from_slice(unsafe { bytes(c.ptr, c.length) });
    }
    (status, body)
}

/// Room for a request's header entries: most requests fit inline, larger ones spill to the heap.
pub(super) struct HeaderBuf {
    inline: [EnvoyHttpHeader; 48],
    heap: Vec<EnvoyHttpHeader>,
}

impl Default for HeaderBuf {
    fn default() -> HeaderBuf {
        HeaderBuf {
            inline: [EnvoyHttpHeader::EMPTY; 48],
            heap: Vec::new(),
        }
    }
}

/// Envoy bytes as a slice. Safety: `ptr`/`len` come from Envoy for the current hook and the
/// caller bounds the slice's lifetime by it (see [`Host::request_headers`]).
unsafe fn bytes<'a>(ptr: *const std::ffi::c_char, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: Envoy hands out `len` readable bytes at `ptr`, alive for the caller's lifetime.
        unsafe { std::slice::from_raw_parts(ptr.cast(), len) }
    }
}

/// One stream's handle, for the duration of one hook.
pub(super) struct Host {
    filter: FilterEnvoyPtr,
    /// True once a request header was written in this hook (the route must be picked again).
    edited: bool,
}

impl Host {
    /// The host of the hook running now.
    ///
    /// # Safety
    ///
    /// `filter` is the stream pointer Envoy passed to the running hook, and the [`Host`] does
    /// not outlive that hook.
    pub(super) unsafe fn new(filter: FilterEnvoyPtr) -> Host {
        Host {
            filter,
            edited: false,
        }
    }

    /// The request headers as `(name, value)` pairs, read in one call. The slices point into
    /// Envoy's header map: valid while `self` is borrowed, which keeps every write out.
    pub(super) fn request_headers<'h>(
        &'h self,
        buf: &'h mut HeaderBuf,
    ) -> impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone + 'h {
        // SAFETY: a stream handle valid for this hook.
        let n = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers_size(
                self.filter,
                abi::REQUEST_HEADER,
            )
        };
        let out: &mut [EnvoyHttpHeader] = if n <= buf.inline.len() {
            &mut buf.inline[..n]
        } else {
            buf.heap.resize(n, EnvoyHttpHeader::EMPTY);
            &mut buf.heap[..]
        };
        // SAFETY: `out` holds exactly `get_headers_size` entries, as the callback requires.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                self.filter,
                abi::REQUEST_HEADER,
                out.as_mut_ptr(),
            )
        };
        let filled: &'h [EnvoyHttpHeader] = if ok { out } else { &[] };
        filled.iter().map(|h| {
            // SAFETY: entries Envoy filled for this hook; `'h` borrows `self`, so no write
            // (which could move them) happens while the slices live.
            unsafe {
                (
                    bytes(h.key_ptr, h.key_length),
                    bytes(h.value_ptr, h.value_length),
                )
            }
        })
    }

    /// Sets request header `name` to `value` (every earlier value replaced); `None` removes it.
    pub(super) fn set_header(&mut self, name: &[u8], value: Option<&str>) {
        let value = value.map_or(ModuleBuffer::NULL, |v| ModuleBuffer::of(v.as_bytes()));
        // SAFETY: a stream handle valid for this hook; both buffers are live for the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.filter,
                abi::REQUEST_HEADER,
                ModuleBuffer::of(name),
                value,
            );
        }
        self.edited = true;
    }

    /// Makes Envoy pick the route again when this hook wrote a request header: the route (and
    /// the cluster named by `x-layergate-cluster`) was chosen before the filter ran.
    pub(super) fn route_again_if_edited(&mut self) {
        if std::mem::take(&mut self.edited) {
            // SAFETY: a stream handle valid for this hook.
            unsafe { abi::envoy_dynamic_module_callback_http_clear_route_cache(self.filter) }
        }
    }

    /// Sends a local reply; `details` is what `%RESPONSE_CODE_DETAILS%` reads (no spaces).
    pub(super) fn send_response(
        &mut self,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
        details: &str,
    ) {
        let mut list = [abi::ModuleHttpHeader {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        }; 4];
        let n = headers.len().min(list.len());
        for (slot, (name, value)) in list.iter_mut().zip(headers) {
            *slot = abi::ModuleHttpHeader {
                key_ptr: name.as_ptr().cast(),
                key_length: name.len(),
                value_ptr: value.as_ptr().cast(),
                value_length: value.len(),
            };
        }
        // SAFETY: a stream handle valid for this hook; `list[..n]` and the buffers point at
        // live data for the call (Envoy copies them).
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.filter,
                status,
                list.as_mut_ptr(),
                n,
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
    }

    /// The chunks of the request body so far: what Envoy buffered for this filter, then the
    /// chunk of the running `request_body` hook (once, should Envoy hand its buffer as the
    /// chunk).
    fn request_body_chunks(&self) -> Vec<EnvoyBuffer> {
        let mut chunks = Vec::new();
        for kind in [abi::BUFFERED_REQUEST_BODY, abi::RECEIVED_REQUEST_BODY] {
            // SAFETY: a stream handle valid for this hook.
            let n = unsafe {
                abi::envoy_dynamic_module_callback_http_get_body_chunks_size(self.filter, kind)
            };
            if n == 0 {
                continue;
            }
            let start = chunks.len();
            chunks.resize(
                start + n,
                EnvoyBuffer {
                    ptr: std::ptr::null(),
                    length: 0,
                },
            );
            // SAFETY: room for exactly `get_body_chunks_size` entries at `start`.
            let ok = unsafe {
                abi::envoy_dynamic_module_callback_http_get_body_chunks(
                    self.filter,
                    kind,
                    chunks[start..].as_mut_ptr(),
                )
            };
            let same_buffer = start > 0 && chunks[0].ptr == chunks[start].ptr;
            if !ok || same_buffer {
                chunks.truncate(start);
            }
        }
        chunks
    }

    /// Bytes of request body so far (buffered and the current chunk).
    pub(super) fn request_body_len(&self) -> u64 {
        self.request_body_chunks()
            .iter()
            .map(|c| c.length as u64)
            .sum()
    }

    /// The request body so far, copied out of Envoy's chunks.
    pub(super) fn request_body(&self) -> Vec<u8> {
        let chunks = self.request_body_chunks();
        let mut body = Vec::with_capacity(chunks.iter().map(|c| c.length).sum());
        for c in &chunks {
            // SAFETY: chunks Envoy handed out for this hook; no write happens while reading.
            body.extend_from_slice(unsafe { bytes(c.ptr, c.length) });
        }
        body
    }

    /// Sets filter-state string `key` (for `%FILTER_STATE(key:PLAIN)%` in access logs).
    pub(super) fn set_filter_state(&mut self, key: &str, value: &str) {
        // SAFETY: a stream handle valid for this hook; both buffers live for the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.filter,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }

    /// Adds one to counter `id` (defined by this stream's configuration).
    pub(super) fn increment(&self, id: usize) {
        // SAFETY: a stream handle valid for this hook; no labels (null, 0).
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                self.filter,
                id,
                std::ptr::null_mut(),
                0,
                1,
            );
        }
    }
}
