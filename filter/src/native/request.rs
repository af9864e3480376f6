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
use crate::buckets::Buckets;
use crate::decision::{
    decide, must_strip, Decision, HeaderEdits, Inspection, Plan, INSPECT_HEADER,
};
use crate::denial::Denial;
use crate::headers::RequestHead;
use crate::outcome::{counter_for, log_line, rate_check, ALLOWED, INSPECTED};
use crate::policy::Policy;
use std::cell::RefCell;
use std::sync::Arc;

use super::abi::{BodyStatus, HeadersStatus, TrailersStatus};

/// Filter-state key access logs read as `%FILTER_STATE(layergate:PLAIN)%`.
pub(super) const LOG_KEY: &str = "layergate";

thread_local! {
    /// The access-log record, built in place (one per worker thread).
    static LOG_LINE: RefCell<String> = RefCell::new(String::with_capacity(160));
}

/// A body being buffered for inspection, with the policy the request started with, and the
/// refusal owed after it when the request has nowhere to go (a 404 or 503 must not come
/// before a 403 the body earns).
pub(super) struct Pending {
    policy: Arc<Policy>,
    plan: Plan,
    inspection: Inspection,
    after: Option<Denial>,
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
        let decision = policy
            .serves_host(head.authority)
            .then(|| decide(policy, &head, now));
        (decision, names)
    };
    let names = names.as_deref();
    let Some(decision) = decision else {
        strip(host, names, &HeaderEdits::default());
        return HeadersStatus::Continue;
    };
    if let Some(plan) = decision.plan() {
        let take = |name: &str, bucket, now| Buckets::process().take(name, bucket, now);
        if let Err(d) = rate_check(policy, plan, now_nanos, take) {
            return deny(host, stream, config, Some(policy), Some(plan), &d);
        }
    }
    match decision {
        Decision::Forward(plan) => forward(host, stream, config, policy, &plan, names, None),
        Decision::ForwardWithPath(plan, path) => {
            forward(host, stream, config, policy, &plan, names, Some(&path))
        }
        Decision::Deny(d) => deny(host, stream, config, Some(policy), None, &d),
        Decision::Inspect(plan, inspection) => {
            if end_of_stream {
                return match crate::body::check(policy, &plan, inspection, &[], now) {
                    Ok(()) => forward(host, stream, config, policy, &plan, names, None),
                    Err(d) => deny(host, stream, config, Some(policy), Some(&plan), &d),
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
    }) = stream.pending.take()
    else {
        return BodyStatus::Continue;
    };
    let refuse = |host: &mut Host, stream: &mut Stream, d: &Denial| {
        deny(host, stream, config, Some(&policy), Some(&plan), d);
        BodyStatus::StopIterationNoBuffer
    };
    if over {
        return refuse(host, stream, &Denial::too_large(policy.inspect_body_bytes));
    }
    count(host, config, INSPECTED);
    let body = host.request_body();
    match crate::body::check(&policy, &plan, inspection, &body, now) {
        Ok(()) => match &after {
            Some(d) => refuse(host, stream, d),
            None => {
                record(host, Some(&policy), Some(&plan), "allowed");
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
    deny(
        host,
        stream,
        config,
        Some(&pending.policy),
        Some(&pending.plan),
        &d,
    );
    TrailersStatus::StopIteration
}

/// A local reply for `denial`: JSON body, `content-type` and `www-authenticate`, the
/// access-log record and the counter.
pub(super) fn deny(
    host: &mut Host,
    stream: &mut Stream,
    config: &Config,
    policy: Option<&Policy>,
    plan: Option<&Plan>,
    denial: &Denial,
) -> HeadersStatus {
    let body = denial.body();
    let headers = crate::outcome::reply_headers(denial);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    record(host, policy, plan, denial.label());
    count(host, config, counter_for(denial.label()));
    stream.replied = true;
    host.send_response(denial.status(), &headers, body.as_bytes(), denial.label());
    HeadersStatus::StopIteration
}

/// Forwards: header writes, optional `:path`, access-log record and counter.
fn forward(
    host: &mut Host,
    stream: &mut Stream,
    config: &Config,
    policy: &Policy,
    plan: &Plan,
    names: Option<&[Box<[u8]>]>,
    path: Option<&str>,
) -> HeadersStatus {
    if let Err(d) = apply_edits(host, policy, plan, names) {
        return deny(host, stream, config, Some(policy), Some(plan), &d);
    }
    if let Some(p) = path {
        host.set_header(b":path", Some(p));
    }
    record(host, Some(policy), Some(plan), "allowed");
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

/// The filter-state string `principal=… scope=… store=… decision=…` for access logs.
fn record(host: &mut Host, policy: Option<&Policy>, plan: Option<&Plan>, decision: &str) {
    LOG_LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        log_line(&mut line, policy, plan, decision);
        host.set_filter_state(LOG_KEY, &line);
    });
    if let Some(policy) = policy {
        super::sync::record_usage(policy, plan, decision);
    }
}

/// Adds one to counter `index` of [`crate::outcome::COUNTERS`].
fn count(host: &Host, config: &Config, index: usize) {
    if let Some(Some(id)) = config.counters.get(index) {
        host.increment(*id);
    }
}
