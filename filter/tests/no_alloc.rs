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
    /// Bytes allocated and not freed on this thread, and the most there were.
    static LIVE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        LIVE.with(|l| {
            let (now, peak) = l.get();
            let now = now + layout.size() as u64;
            l.set((now, peak.max(now)));
        });
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.with(|l| {
            let (now, peak) = l.get();
            l.set((now.saturating_sub(layout.size() as u64), peak));
        });
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// The most bytes `f` held at once beyond what was live before it.
fn peak_bytes_during(f: impl FnOnce()) -> u64 {
    let (before, _) = LIVE.with(Cell::get);
    LIVE.with(|l| l.set((before, before)));
    f();
    let (_, peak) = LIVE.with(Cell::get);
    peak - before
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

/// Helper report on issue 21: `copy_from_namespace` was an untagged enum, which buffers the
/// whole value before trying its forms — a 16 MiB padding field inside it (any caller, on any
/// inspected route) held hundreds of MiB. Read as it streams, it holds what it keeps.
#[test]
fn a_padded_copy_source_is_read_without_holding_the_padding() {
    use layergate_filter::body;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../envoy/demo/layergate.json"
    ))
    .unwrap();
    let policy = Policy::from_json(text.as_bytes(), |v: &str| Some(format!("{v}-value"))).unwrap();
    let pad = "0,".repeat(1 << 20);
    let body = format!(
        r#"{{"copy_from_namespace":{{"source_namespace":"shop-b","pad":[{pad}0]}},"upsert_rows":[]}}"#
    );
    let buf = serialize([
        (":method", "POST"),
        (":path", "/v2/namespaces/shop-a"),
        ("authorization", "Bearer demo-rw-token"),
    ]);
    let head = RequestHead::from_pairs(pairs(&buf));
    let Decision::Inspect(plan, inspection) = decide(&policy, &head, || 0) else {
        panic!("a write that may copy is inspected with several stores");
    };
    let mut verdict = None;
    let peak = peak_bytes_during(|| {
        verdict = Some(body::check(
            &policy,
            &plan,
            inspection,
            body.as_bytes(),
            || 0,
        ));
    });
    assert_eq!(verdict, Some(Ok(())));
    assert!(
        peak < 64 * 1024,
        "inspecting a {} byte body held {peak} bytes",
        body.len()
    );
}
