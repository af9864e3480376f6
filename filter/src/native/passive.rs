//! The hooks Envoy 1.39 requires of an HTTP-filter module that have nothing to do here: the
//! response passes untouched, the filter makes no per-stream callouts or streams, schedules no
//! per-stream events and is not a terminal filter. Each answers at once (nothing in them can
//! panic).
#![allow(unsafe_code)] // `#[no_mangle]` exports of the ABI.

use super::abi::{
    self, BodyStatus, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr, FilterModulePtr, HeadersStatus,
    TrailersStatus,
};

/// Response headers pass.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _end_of_stream: bool,
) -> HeadersStatus {
    HeadersStatus::Continue
}

/// Response body passes.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _end_of_stream: bool,
) -> BodyStatus {
    BodyStatus::Continue
}

/// Response trailers pass.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
) -> TrailersStatus {
    TrailersStatus::Continue
}

/// Stream complete (before access logs): nothing to do.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
) {
}

/// Callout answers: the filter makes no per-stream callouts.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _callout_id: u64,
    _result: abi::CEnum,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

/// Streamed callouts: none.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _stream_id: u64,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

/// Streamed callouts: none.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

/// Streamed callouts: none.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _stream_id: u64,
    _trailers: *mut EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

/// Streamed callouts: none.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _stream_id: u64,
) {
}

/// Streamed callouts: none.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _stream_id: u64,
    _reason: abi::CEnum,
) {
}

/// Scheduled events: the filter schedules none.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _event_id: u64,
) {
}

/// Downstream write-buffer pressure (terminal filters only): nothing to do.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
) {
}

/// Downstream write-buffer pressure (terminal filters only): nothing to do.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter: FilterEnvoyPtr,
    _module: FilterModulePtr,
) {
}
