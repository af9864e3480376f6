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
//!
//! The rooms: this file (the exports and the VM's per-thread state), `root` (a configuration:
//! compile it, flush counters and the stale gauge), `sync` (the key-service client of a root)
//! and `request` (a stream: the decision's verdict written back to the host). Only this
//! module calls into [`crate::abi`]; the rest of the crate never sees it.

mod buckets;
mod request;
mod root;
mod sync;

use self::request::{deny, on_request_body, on_request_headers, Pending};
use self::root::Root;
use crate::abi::{self, Action, LogLevel};
use crate::denial::Denial;
use crate::fasthash::FastMap;
use crate::outcome::COUNTERS;
use crate::policy::Policy;
use crate::usage::{Reporter, Tally};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Filter-state key read by access logs as `%FILTER_STATE(wasm.layergate:PLAIN)%`: the audit
/// line's fragment ([`crate::audit`]).
const LOG_PROPERTY: &[u8] = b"layergate";

/// Counter: configurations this filter refused (an unknown field from a newer operator, a
/// version it does not read, a value it would not accept). Envoy then keeps the previous
/// configuration, which goes on enforcing (its key-service sync included); this counter and
/// a critical log line make the refusal visible (issue 13).
const REJECTED: &str = "layergate.config_rejected";

/// Gauge: seconds since the key table was last confirmed by the key service (since the
/// configuration was loaded, before the first sync).
const STALE_GAUGE: &str = "layergate.keys_stale_seconds";

thread_local! {
    /// [`COUNTERS`] of this VM, flushed to Envoy stats on the root's tick.
    static COUNTS: [Cell<u64>; COUNTERS.len()] = Default::default();
    static LOG_LINE: RefCell<String> = RefCell::new(String::with_capacity(1024));
    /// This VM's per-key counts and their reporting (one per VM, whichever root reports).
    static USAGE: RefCell<(Tally, Reporter)> = RefCell::new(Default::default());
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

/// Once a second: counters and the stale gauge to Envoy; a key sync and a usage report if due.
#[no_mangle]
pub extern "C" fn proxy_on_tick(root: u32) {
    with_root(root, |r| {
        r.hold_confirms();
        r.flush();
        r.sync_keys();
        r.report_usage();
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
    let facts = pending.held.facts(&pending.plan);
    deny(Some(&pending.policy), &facts, &d) as u32
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
