//! A proxy-wasm HTTP filter with hand-written exports (no SDK; `sha2` is its one dependency) that makes, on
//! every request, exactly the host calls its configuration names — so `make bench` can price
//! each part of the wasm filter's per-request work on its own, against the same module doing
//! nothing.
//!
//! It exports only what Envoy needs to run an HTTP filter: `memory`,
//! `proxy_abi_version_0_2_1`, `proxy_on_memory_allocate`, `proxy_on_vm_start`,
//! `proxy_on_configure` and `proxy_on_request_headers` (layergate exports a few more for its
//! root context, key sync and bodies; see `filter/src/wasm/`).
//!
//! The configuration is a comma-separated list of steps, run in order in
//! `proxy_on_request_headers` (an empty one enters the VM and returns):
//! - `map`: read the whole request header map (`proxy_get_header_map_pairs`, as layergate
//!   reads it: one call, one allocation re-entry);
//! - `get:NAME`: read one header (`proxy_get_header_map_value`);
//! - `set:NAME`: replace header NAME with `1` (`proxy_replace_header_map_value`);
//! - `remove:NAME`: remove header NAME (`proxy_remove_header_map_value`);
//! - `property`: set a filter-state property (`proxy_set_property`, as layergate does for the
//!   access log);
//! - `sha256`: no host call — SHA-256 of a 36-byte token inside the VM, as layergate digests
//!   every bearer before the key lookup.
//!
//! A step may end with `*N` to be made N times in a row (`get:authorization*16`): one call
//! costs a microsecond or two, below this shared machine's run-to-run noise, so the bench
//! prices a call as (N calls − none) ÷ N. N writes of request headers still cause one route
//! re-pick (a write clears Envoy's route cache; the router picks again once), so comparing one
//! write with N writes separates the write from the re-pick.
//!
//! A read that finds nothing answers the request with 500 instead of passing it on, so a probe
//! that does not measure what it names shows up as errors, not as a cheap figure. An unknown
//! step refuses the configuration.
#![allow(unsafe_code)] // The exports and host calls of the ABI: raw pointers by definition.

use std::cell::RefCell;

const OK: u32 = 0;
const REQUEST_HEADERS: u32 = 0;
const PLUGIN_CONFIGURATION: u32 = 7;
const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;
/// What `sha256` digests: a minted token's length.
const TOKEN: &[u8] = b"hvl_bench000000000000000000000000042";

#[link(wasm_import_module = "env")]
extern "C" {
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
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
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
}

/// One kind of host call to make per request.
enum Call {
    Map,
    Get(Box<str>),
    Set(Box<str>),
    Remove(Box<str>),
    Property,
    Sha256,
}

/// A call and how many times in a row to make it.
struct Step {
    call: Call,
    times: u32,
}

impl Step {
    fn parse(word: &str) -> Option<Step> {
        let (word, times) = match word.rsplit_once('*') {
            Some((w, n)) => (w, n.parse().ok().filter(|n| *n > 0)?),
            None => (word, 1),
        };
        Some(Step {
            call: Call::parse(word)?,
            times,
        })
    }
}

impl Call {
    fn parse(word: &str) -> Option<Call> {
        let named = |prefix: &str| {
            word.strip_prefix(prefix)
                .filter(|n| !n.is_empty())
                .map(Box::from)
        };
        match word {
            "map" => Some(Call::Map),
            "property" => Some(Call::Property),
            "sha256" => Some(Call::Sha256),
            _ => named("get:")
                .map(Call::Get)
                .or_else(|| named("set:").map(Call::Set))
                .or_else(|| named("remove:").map(Call::Remove)),
        }
    }
}

thread_local! {
    static STEPS: RefCell<Vec<Step>> = const { RefCell::new(Vec::new()) };
}

/// The ABI this module speaks.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory the host fills for a call that returns data; the caller of that call frees it.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(size);
    let ptr = v.as_mut_ptr();
    std::mem::forget(v);
    ptr
}

/// Takes back (and so frees when dropped) what the host filled.
fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host wrote `size` bytes into a buffer `proxy_on_memory_allocate` made with
    // capacity `size` and handed it to us.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// VM start: nothing to do.
#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
    1
}

/// The configuration: the steps; 0 (refused) for an unknown one.
#[no_mangle]
pub extern "C" fn proxy_on_configure(_root: u32, size: usize) -> u32 {
    let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
    // SAFETY: valid out pointers; the host allocates through `proxy_on_memory_allocate`.
    let status =
        unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &mut data, &mut len) };
    let config = if status == OK && size > 0 {
        take(data, len)
    } else {
        Vec::new()
    };
    let text = String::from_utf8_lossy(&config);
    let steps: Option<Vec<Step>> = text
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(Step::parse)
        .collect();
    match steps {
        Some(steps) => {
            STEPS.with(|s| *s.borrow_mut() = steps);
            1
        }
        None => 0,
    }
}

/// Request headers: the configured steps, then continue (or 500 when a read found nothing).
#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_ctx: u32, _headers: usize, _end: u32) -> u32 {
    STEPS.with(|steps| {
        for step in steps.borrow().iter() {
            for _ in 0..step.times {
                if let Err(what) = run(&step.call) {
                    fail(what);
                    return PAUSE;
                }
            }
        }
        CONTINUE
    })
}

fn run(call: &Call) -> Result<(), &str> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    match call {
        Call::Map => {
            // SAFETY: valid out pointers; the host allocates through `proxy_on_memory_allocate`.
            let status =
                unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) };
            if status != OK || take(data, size).len() <= 4 {
                return Err("map");
            }
        }
        Call::Get(name) => {
            // SAFETY: pointer and length of a live `str`; valid out pointers.
            let status = unsafe {
                proxy_get_header_map_value(
                    REQUEST_HEADERS,
                    name.as_ptr(),
                    name.len(),
                    &mut data,
                    &mut size,
                )
            };
            if status != OK || take(data, size).is_empty() {
                return Err(name);
            }
        }
        // SAFETY (both writes): pointers and lengths of live `str`s.
        Call::Set(name) => unsafe {
            proxy_replace_header_map_value(
                REQUEST_HEADERS,
                name.as_ptr(),
                name.len(),
                b"1".as_ptr(),
                1,
            );
        },
        Call::Remove(name) => unsafe {
            proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len());
        },
        Call::Sha256 => {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(std::hint::black_box(TOKEN));
            std::hint::black_box(digest);
        }
        Call::Property => {
            let (path, value) = (
                b"probe",
                b"principal=probe scope=read store=primary decision=allowed",
            );
            // SAFETY: pointers and lengths of live byte strings.
            unsafe {
                proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len());
            }
        }
    }
    Ok(())
}

/// Answers 500 naming the read that found nothing.
fn fail(what: &str) {
    let body = format!("probe: the read {what:?} found nothing");
    // An empty header list: a count of zero pairs.
    let headers = 0u32.to_le_bytes();
    // SAFETY: pointers and lengths of live buffers.
    unsafe {
        proxy_send_local_response(
            500,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        );
    }
}
