//! A stream: the decision for its headers, the inspected body's verdict, and the answer
//! written back to the host (header edits, a local reply), with the access-log record and the
//! counters.

use super::{count, policy_of, INSPECTING, LOG_LINE, LOG_PROPERTY, USAGE};
use crate::abi::{self, now, Action, BufferType, MapType};
use crate::audit::{Facts, Held};
use crate::decision::{
    decide_traced, must_strip, Decision, HeaderEdits, Inspection, Plan, Trace, INSPECT_HEADER,
};
use crate::denial::Denial;
use crate::headers::{pairs, RequestHead};
use crate::outcome::{counter_for, rate_check, ALLOWED, INSPECTED};
use crate::policy::Policy;
use std::rc::Rc;

/// A body being buffered for inspection, with the policy the request started with, and the
/// refusal owed after it when the request has nowhere to go (a 404 or 503 must not come
/// before a 403 the body earns).
pub(super) struct Pending {
    pub(super) policy: Rc<Policy>,
    pub(super) plan: Plan,
    inspection: Inspection,
    after: Option<Denial>,
    /// The audit line's request id and namespaces.
    pub(super) held: Held,
}

pub(super) fn deny(policy: Option<&Policy>, facts: &Facts<'_>, denial: &Denial) -> Action {
    let body = denial.body();
    let headers = crate::outcome::reply_headers(denial);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    record(policy, facts, denial.label(), Some(&denial.message));
    count(counter_for(denial.label()));
    abi::send_local_response(denial.status(), &headers, body.as_bytes());
    Action::Pause
}

/// Forwards: header writes, optional `:path`, access-log record and counter.
fn forward(
    policy: &Policy,
    plan: &Plan,
    facts: &Facts<'_>,
    header_buf: Option<&[u8]>,
    path: Option<&str>,
) -> Action {
    if let Err(d) = apply_edits(policy, plan, header_buf) {
        return deny(Some(policy), facts, &d);
    }
    if let Some(p) = path {
        abi::set_header(":path", Some(p));
    }
    record(Some(policy), facts, "allowed", None);
    count(ALLOWED);
    Action::Continue
}

/// Writes the plan's headers and strips client `x-layergate-*` headers it does not overwrite.
/// `header_buf` is the serialized request map, passed only when such headers were seen.
fn apply_edits(policy: &Policy, plan: &Plan, header_buf: Option<&[u8]>) -> Result<(), Denial> {
    let edits = plan.header_edits(policy)?;
    if let Some(buf) = header_buf {
        strip_layergate_headers(buf, &edits);
    }
    for &(name, value) in edits.as_slice() {
        abi::set_header(name, value);
    }
    Ok(())
}

/// Removes the client's `x-layergate-*` headers that `edits` does not overwrite; `buf` is the
/// serialized request map.
fn strip_layergate_headers(buf: &[u8], edits: &HeaderEdits<'_>) {
    for (name, _) in pairs(buf) {
        if must_strip(name, edits) {
            if let Ok(name) = std::str::from_utf8(name) {
                abi::set_header(name, None);
            }
        }
    }
}

/// One `set_property` with the audit line's fragment ([`crate::audit`]) for access logs, and
/// the request counted for its key's usage.
fn record(policy: Option<&Policy>, facts: &Facts<'_>, decision: &str, reason: Option<&str>) {
    LOG_LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        crate::audit::write(&mut line, policy, facts, decision, reason);
        abi::set_property(LOG_PROPERTY, &line);
    });
    if let Some(policy) = policy {
        USAGE.with(|u| {
            if let Ok(mut u) = u.try_borrow_mut() {
                u.0.record(policy, &facts.trace, decision);
            }
        });
    }
}

pub(super) fn on_request_headers(ctx: u32, end_of_stream: bool) -> Action {
    let Some(policy) = policy_of(ctx) else {
        return deny(
            None,
            &Facts::default(),
            &Denial::unavailable("layergate has no configuration"),
        );
    };
    let buf = abi::header_map(MapType::HttpRequestHeaders);
    let head = RequestHead::from_pairs(pairs(&buf));
    let head_strip = head.has_layergate_headers.then_some(buf.as_slice());
    if !policy.serves_host(head.authority) {
        // Another team's host on a shared gateway: no authentication, no credential, no
        // routing header — only client `x-layergate-*` headers are removed, since the
        // routing header is ours wherever it appears.
        if let Some(buf) = head_strip {
            strip_layergate_headers(buf, &HeaderEdits::default());
        }
        return Action::Continue;
    }
    let mut trace = Trace::default();
    let d = decide_traced(&policy, &head, now, &mut trace);
    let facts = Facts {
        request_id: head.request_id,
        trace,
        touched: None,
    };
    if let Some(plan) = d.plan() {
        if let Err(d) = rate_check(&policy, plan, abi::now_nanos, super::buckets::take) {
            return deny(Some(&policy), &facts, &d);
        }
    }
    match d {
        Decision::Forward(plan) => forward(&policy, &plan, &facts, head_strip, None),
        Decision::ForwardWithPath(plan, path) => {
            forward(&policy, &plan, &facts, head_strip, Some(&path))
        }
        Decision::Deny(d) => deny(Some(&policy), &facts, &d),
        Decision::Inspect(plan, inspection) => {
            let mut held = Held::of(&facts);
            if end_of_stream {
                let checked =
                    crate::body::check_noting(&policy, &plan, inspection, &[], now, &mut |ns| {
                        held.note(ns)
                    });
                let facts = held.facts(&plan);
                return match checked {
                    Ok(()) => forward(&policy, &plan, &facts, head_strip, None),
                    Err(d) => deny(Some(&policy), &facts, &d),
                };
            }
            // Envoy turns a paused header callback into "stop all iteration", which would
            // also withhold the body from this filter. So the headers continue, marked with
            // `x-layergate-inspect`: the route it selects enables Envoy's buffer filter
            // (after this one), which holds the request back from the router until this
            // filter lets the complete body through or replaces it with a denial. A request
            // with no upstream still has its body judged first: its 404/503 comes after.
            let after = apply_edits(&policy, &plan, head_strip).err();
            abi::set_header(INSPECT_HEADER, Some("1"));
            INSPECTING.with(|m| {
                m.borrow_mut().insert(
                    ctx,
                    Pending {
                        policy: Rc::clone(&policy),
                        plan,
                        inspection,
                        after,
                        held,
                    },
                )
            });
            Action::Continue
        }
    }
}

pub(super) fn on_request_body(ctx: u32, body_size: usize, end_of_stream: bool) -> Action {
    let over = INSPECTING.with(|m| {
        m.borrow()
            .get(&ctx)
            .map(|p| body_size as u64 > p.policy.inspect_body_bytes)
    });
    match over {
        None => return Action::Continue, // Not inspected: the body streams.
        Some(false) if !end_of_stream => {
            // Envoy buffers until the end of the body. If the body ends with trailers instead,
            // the trailer callback refuses it: nothing buffered here moves on before a verdict.
            return Action::Pause;
        }
        _ => {}
    }
    let Some(Pending {
        policy,
        plan,
        inspection,
        after,
        mut held,
    }) = INSPECTING.with(|m| m.borrow_mut().remove(&ctx))
    else {
        return Action::Continue;
    };
    if over == Some(true) {
        return deny(
            Some(&policy),
            &held.facts(&plan),
            &Denial::too_large(policy.inspect_body_bytes),
        );
    }
    count(INSPECTED);
    let body = abi::get_buffer(BufferType::HttpRequestBody, 0, body_size).unwrap_or_default();
    let checked = crate::body::check_noting(&policy, &plan, inspection, &body, now, &mut |ns| {
        held.note(ns)
    });
    let facts = held.facts(&plan);
    match checked {
        Ok(()) => match after {
            Some(d) => deny(Some(&policy), &facts, &d),
            None => {
                record(Some(&policy), &facts, "allowed", None);
                count(ALLOWED);
                Action::Continue
            }
        },
        Err(d) => deny(Some(&policy), &facts, &d),
    }
}
