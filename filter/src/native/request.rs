//! A stream in the native build: the decision for its headers, the inspected body's verdict,
//! and the answer written back to Envoy (header edits, a local reply), with the access-log
//! record and the counters — the same steps, in the same order, as the wasm build's
//! `wasm/request.rs`, over [`Host`] instead of proxy-wasm.
//!
//! The body of a request whose namespaces are read is awaited the way the wasm build awaits
//! it: the headers go on marked `x-layergate-inspect`, whose route enables Envoy's buffer
//! filter after this one (it raises the stream's buffer limit to the inspection limit and holds
//! the request back from the router); this filter keeps the chunks in Envoy's buffer
//! (`StopIterationAndBuffer`) and judges the whole body at its end. So both builds run under
//! one rendered route table with the same limits.

use super::host::{HeaderBuf, Host};
use super::{now, now_nanos, Config, Stream};
use crate::audit::{Facts, Held, MAX_TEXT_BYTES};
use crate::buckets::Buckets;
use crate::decision::{
    decide_traced, must_strip, Decision, HeaderEdits, Inspection, Plan, Trace, INSPECT_HEADER,
};
use crate::denial::Denial;
use crate::headers::RequestHead;
use crate::outcome::{counter_for, rate_check, ALLOWED, INSPECTED};
use crate::policy::Policy;
use std::cell::RefCell;
use std::sync::Arc;

use super::abi::{BodyStatus, HeadersStatus, TrailersStatus};

/// Filter-state key access logs read as `%FILTER_STATE(layergate:PLAIN)%`: the audit line's
/// fragment ([`crate::audit`]).
pub(super) const LOG_KEY: &str = "layergate";

thread_local! {
    /// The access-log record, built in place (one per worker thread).
    static LOG_LINE: RefCell<String> = RefCell::new(String::with_capacity(1024));
}

/// A body being buffered for inspection, with the policy the request started with, and the
/// refusal owed after it when the request has nowhere to go (a 404 or 503 must not come
/// before a 403 the body earns).
pub(super) struct Pending {
    policy: Arc<Policy>,
    plan: Plan,
    inspection: Inspection,
    after: Option<Denial>,
    /// The audit line's request id and namespaces.
    held: Held,
}

/// The request id and path namespace of the audit line, copied out of Envoy's header map
/// before any header is written (a write may move what the map's views point at): on the
/// stack, cut at [`MAX_TEXT_BYTES`], so the header path allocates nothing for them.
struct Copied {
    request_id: ([u8; MAX_TEXT_BYTES], usize),
    namespace: Option<([u8; MAX_TEXT_BYTES], usize)>,
    trace: Trace<'static>,
}

impl Default for Copied {
    fn default() -> Copied {
        Copied {
            request_id: ([0; MAX_TEXT_BYTES], 0),
            namespace: None,
            trace: Trace::default(),
        }
    }
}

/// `text` (at most [`MAX_TEXT_BYTES`], cut at a character boundary) copied into `to`.
fn copy(to: &mut ([u8; MAX_TEXT_BYTES], usize), text: &str) {
    let mut n = text.len().min(MAX_TEXT_BYTES);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    to.0[..n].copy_from_slice(&text.as_bytes()[..n]);
    to.1 = n;
}

/// The copied text (whole characters, so always UTF-8).
fn text(from: &([u8; MAX_TEXT_BYTES], usize)) -> &str {
    std::str::from_utf8(&from.0[..from.1]).unwrap_or_default()
}

impl Copied {
    fn keep(&mut self, request_id: &str, trace: Trace<'_>) {
        copy(&mut self.request_id, request_id);
        if let Some(ns) = trace.namespace {
            copy(self.namespace.insert(([0; MAX_TEXT_BYTES], 0)), ns);
        }
        self.trace = Trace {
            namespace: None,
            ..trace
        };
    }

    fn facts(&self) -> Facts<'_> {
        Facts {
            request_id: text(&self.request_id),
            trace: Trace {
                namespace: self.namespace.as_ref().map(text),
                ..self.trace
            },
            touched: None,
        }
    }
}

/// The client's `x-layergate-*` header names, copied out before any header is written.
type Names = Vec<Box<[u8]>>;

pub(super) fn on_request_headers(
    host: &mut Host,
    stream: &mut Stream,
    config: &Config,
    end_of_stream: bool,
) -> HeadersStatus {
    // The policy the request starts with, kept by an inspection: a sync may swap the table
    // meanwhile.
    let policy_arc = config.policy();
    let policy = &*policy_arc;
    let mut buf = HeaderBuf::default();
    let mut copied = Copied::default();
    let (decision, names) = {
        let headers = host.request_headers(&mut buf);
        let head = RequestHead::from_pairs(headers.clone());
        let names: Option<Names> = head.has_layergate_headers.then(|| {
            headers
                .filter(|(name, _)| must_strip(name, &HeaderEdits::default()))
                .map(|(name, _)| Box::from(name))
                .collect()
        });
        // Another team's host on a shared gateway: no authentication, no credential, no
        // routing header — only client `x-layergate-*` headers are removed, since the routing
        // header is ours wherever it appears.
        let mut trace = Trace::default();
        let decision = policy
            .serves_host(head.authority)
            .then(|| decide_traced(policy, &head, now, &mut trace));
        copied.keep(head.request_id, trace);
        (decision, names)
    };
    let facts = copied.facts();
    let names = names.as_deref();
    let Some(decision) = decision else {
        strip(host, names, &HeaderEdits::default());
        return HeadersStatus::Continue;
    };
    if let Some(plan) = decision.plan() {
        let take = |name: &str, bucket, now| Buckets::process().take(name, bucket, now);
        if let Err(d) = rate_check(policy, plan, now_nanos, take) {
            return deny(host, stream, config, Some(policy), &facts, &d);
        }
    }
    let ctx = (config, policy);
    match decision {
        Decision::Forward(plan) => forward(host, stream, ctx, &plan, &facts, names, None),
        Decision::ForwardWithPath(plan, path) => {
            forward(host, stream, ctx, &plan, &facts, names, Some(&path))
        }
        Decision::Deny(d) => deny(host, stream, config, Some(policy), &facts, &d),
        Decision::Inspect(plan, inspection) => {
            let mut held = Held::of(&facts);
            if end_of_stream {
                let checked =
                    crate::body::check_noting(policy, &plan, inspection, &[], now, &mut |ns| {
                        held.note(ns)
                    });
                let facts = held.facts(&plan);
                return match checked {
                    Ok(()) => forward(host, stream, ctx, &plan, &facts, names, None),
                    Err(d) => deny(host, stream, config, Some(policy), &facts, &d),
                };
            }
            // A request with no upstream still has its body judged first: its 404/503 comes
            // after.
            let after = apply_edits(host, policy, &plan, names).err();
            host.set_header(INSPECT_HEADER.as_bytes(), Some("1"));
            stream.pending = Some(Pending {
                policy: Arc::clone(&policy_arc),
                plan,
                inspection,
                after,
                held,
            });
            HeadersStatus::Continue
        }
    }
}

pub(super) fn on_request_body(
    host: &mut Host,
    stream: &mut Stream,
    config: &Config,
    end_of_stream: bool,
) -> BodyStatus {
    let Some(pending) = &stream.pending else {
        return BodyStatus::Continue; // Not inspected: the body streams.
    };
    let over = host.request_body_len() > pending.policy.inspect_body_bytes;
    if !over && !end_of_stream {
        // Envoy buffers until the end of the body. If the body ends with trailers instead,
        // the trailer hook refuses it: nothing buffered here moves on before a verdict.
        return BodyStatus::StopIterationAndBuffer;
    }
    let Some(Pending {
        policy,
        plan,
        inspection,
        after,
        mut held,
    }) = stream.pending.take()
    else {
        return BodyStatus::Continue;
    };
    if over {
        let facts = held.facts(&plan);
        let d = Denial::too_large(policy.inspect_body_bytes);
        deny(host, stream, config, Some(&policy), &facts, &d);
        return BodyStatus::StopIterationNoBuffer;
    }
    count(host, config, INSPECTED);
    let body = host.request_body();
    let checked = crate::body::check_noting(&policy, &plan, inspection, &body, now, &mut |ns| {
        held.note(ns)
    });
    let facts = held.facts(&plan);
    let refuse = |host: &mut Host, stream: &mut Stream, d: &Denial| {
        deny(host, stream, config, Some(&policy), &facts, d);
        BodyStatus::StopIterationNoBuffer
    };
    match checked {
        Ok(()) => match &after {
            Some(d) => refuse(host, stream, d),
            None => {
                record(host, Some(&policy), &facts, "allowed", None);
                count(host, config, ALLOWED);
                BodyStatus::Continue
            }
        },
        Err(d) => refuse(host, stream, &d),
    }
}

/// Request trailers: an inspected body that ends with them is refused.
pub(super) fn on_request_trailers(
    host: &mut Host,
    stream: &mut Stream,
    config: &Config,
) -> TrailersStatus {
    let Some(pending) = stream.pending.take() else {
        return TrailersStatus::Continue;
    };
    let d = Denial::bad_request(
        "this request body is inspected for namespaces and may not end with trailers; send it without trailers",
    );
    let facts = pending.held.facts(&pending.plan);
    deny(host, stream, config, Some(&pending.policy), &facts, &d);
    TrailersStatus::StopIteration
}

/// A local reply for `denial`: JSON body, `content-type` and `www-authenticate`, the
/// access-log record and the counter.
pub(super) fn deny(
    host: &mut Host,
    stream: &mut Stream,
    config: &Config,
    policy: Option<&Policy>,
    facts: &Facts<'_>,
    denial: &Denial,
) -> HeadersStatus {
    let body = denial.body();
    let headers = crate::outcome::reply_headers(denial);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    record(host, policy, facts, denial.label(), Some(&denial.message));
    count(host, config, counter_for(denial.label()));
    stream.replied = true;
    host.send_response(denial.status(), &headers, body.as_bytes(), denial.label());
    HeadersStatus::StopIteration
}

/// Forwards: header writes, optional `:path`, access-log record and counter.
fn forward(
    host: &mut Host,
    stream: &mut Stream,
    (config, policy): (&Config, &Policy),
    plan: &Plan,
    facts: &Facts<'_>,
    names: Option<&[Box<[u8]>]>,
    path: Option<&str>,
) -> HeadersStatus {
    if let Err(d) = apply_edits(host, policy, plan, names) {
        return deny(host, stream, config, Some(policy), facts, &d);
    }
    if let Some(p) = path {
        host.set_header(b":path", Some(p));
    }
    record(host, Some(policy), facts, "allowed", None);
    count(host, config, ALLOWED);
    HeadersStatus::Continue
}

/// Writes the plan's headers and strips the client's `x-layergate-*` headers it does not
/// overwrite.
fn apply_edits(
    host: &mut Host,
    policy: &Policy,
    plan: &Plan,
    names: Option<&[Box<[u8]>]>,
) -> Result<(), Denial> {
    let edits = plan.header_edits(policy)?;
    strip(host, names, &edits);
    for &(name, value) in edits.as_slice() {
        host.set_header(name.as_bytes(), value);
    }
    Ok(())
}

/// Removes the client's `x-layergate-*` headers (`names`) that `edits` does not overwrite.
fn strip(host: &mut Host, names: Option<&[Box<[u8]>]>, edits: &HeaderEdits<'_>) {
    for name in names.unwrap_or_default() {
        if must_strip(name, edits) {
            host.set_header(name, None);
        }
    }
}

/// The filter-state string for access logs: the audit line's fragment ([`crate::audit`]); and
/// the request counted for its key's usage.
fn record(
    host: &mut Host,
    policy: Option<&Policy>,
    facts: &Facts<'_>,
    decision: &str,
    reason: Option<&str>,
) {
    LOG_LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        crate::audit::write(&mut line, policy, facts, decision, reason);
        host.set_filter_state(LOG_KEY, &line);
    });
    if let Some(policy) = policy {
        super::sync::record_usage(policy, &facts.trace, decision);
    }
}

/// Adds one to counter `index` of [`crate::outcome::COUNTERS`].
fn count(host: &Host, config: &Config, index: usize) {
    if let Some(Some(id)) = config.counters.get(index) {
        host.increment(*id);
    }
}
