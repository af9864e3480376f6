//! Proves the success path of a header-only request allocates nothing: header parsing,
//! classification, token lookup, authorization and the header-edit plan.
#![allow(unsafe_code, clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_filter::decision::{decide, Decision};
use layergate_filter::headers::{pairs, serialize, RequestHead};
use layergate_filter::policy::Policy;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn header_only_decisions_allocate_nothing() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../envoy/demo/layergate.json"
    ))
    .unwrap();
    let env = |v: &str| Some(format!("{v}-value"));
    let policy = Policy::from_json(text.as_bytes(), env).unwrap();
    let requests = [
        (
            "POST",
            "/v2/namespaces/shop-a/query?stainless_overload=1",
            "Bearer demo-read-token",
        ),
        (
            "GET",
            "/v1/namespaces/logs-2026/metadata",
            "Bearer tpuf-archive-dev-key",
        ),
        (
            "POST",
            "/v2/namespaces/shop-books/query",
            "Bearer hvl_demoShopReader0123456789abcdefABCDEF",
        ),
        // (A write that may copy is inspected when several stores are configured.)
        ("DELETE", "/v2/namespaces/shop-a", "Bearer demo-rw-token"),
    ];
    for (method, path, auth) in requests {
        let buf = serialize([
            (":method", method),
            (":path", path),
            (":authority", "gw"),
            ("authorization", auth),
            ("user-agent", "t"),
        ]);
        let n = allocations_during(|| {
            let head = RequestHead::from_pairs(pairs(&buf));
            match decide(&policy, &head, || 0) {
                Decision::Forward(plan) => {
                    let edits = plan.header_edits(&policy).unwrap();
                    assert_eq!(edits.as_slice().len(), 2);
                }
                other => panic!("{method} {path}: {other:?}"),
            }
        });
        assert_eq!(n, 0, "{method} {path} allocated {n} times");
    }
}
