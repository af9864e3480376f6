//! The filter's part of the data plane's audit line (issue 24): the fields only the filter
//! knows, written once per request as a JSON object fragment — the members of an object,
//! each preceded by a comma — that both host bindings publish with one host call (a
//! filter-state string: wasm `set_property`, native `set_filter_state_bytes`). Envoy's access
//! log splices it into a JSON template holding what Envoy knows (time, status, bytes,
//! duration, client address): see the operator's `render/envoy/listener.rs`.
//!
//! ```text
//! {"time":"…","status":403,…,"client":"…" ,"request_id":"…","principal":"apikey:demo",…}
//! └────── Envoy's template ─────────────┘ └──────────── this fragment ──────────────────┘
//! ```
//!
//! Every value is JSON-escaped here (quotes, backslashes, control characters; text is UTF-8)
//! and bounded: [`MAX_NAMESPACES`] namespaces of at most [`MAX_TEXT_BYTES`] bytes each, a
//! reason of at most [`MAX_REASON_BYTES`], so a line cannot grow without bound. Nothing
//! here ever sees a token or its lookup hash. Plain appends into a reused `String`: no
//! `core::fmt` (a thousand instructions more per request in the VM) and, once the buffer
//! has grown, no allocation.

use crate::decision::{Plan, Principal, Trace};
use crate::policy::{Grant, Policy};

/// Most namespaces listed in one line; `namespace_count` says how many there were.
pub const MAX_NAMESPACES: usize = 16;

/// Longest text value (a namespace, a request id) written, in bytes; longer text is cut at a
/// character boundary. Valid namespaces are at most 128 bytes; an invalid one is logged as
/// far as this.
pub const MAX_TEXT_BYTES: usize = 256;

/// Longest refusal reason written, in bytes.
pub const MAX_REASON_BYTES: usize = 512;

/// The namespaces a request touched, kept past the header callback while its body is read:
/// the path's, then each one its body names, as the filter reads them. At most
/// [`MAX_NAMESPACES`] distinct names are kept; `count` also counts the names beyond them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    names: Vec<Box<str>>,
    count: usize,
}

impl Touched {
    /// Notes a namespace (empty text is no namespace; a name already kept is not counted
    /// again).
    pub fn note(&mut self, ns: &str) {
        let ns = cut(ns, MAX_TEXT_BYTES);
        if ns.is_empty() || self.names.iter().any(|n| **n == *ns) {
            return;
        }
        self.count += 1;
        if self.names.len() < MAX_NAMESPACES {
            self.names.push(ns.into());
        }
    }

    /// The names kept, in the order they were read.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// How many namespaces were noted (kept or not).
    pub fn count(&self) -> usize {
        self.count
    }
}

/// What the audit line knows of a request besides its outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'r> {
    /// `x-request-id` as the filter read it.
    pub request_id: &'r str,
    /// What the decision learned (its `namespace` is the path's).
    pub trace: Trace<'r>,
    /// Namespaces read from a body (with the path's), when one was inspected.
    pub touched: Option<&'r Touched>,
}

/// What an inspected request's line needs past the header callback, owned: its request id
/// and the namespaces (the path's first, then the body's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    request_id: Box<str>,
    touched: Touched,
}

impl Held {
    /// Keeps what the header phase learned.
    pub fn of(facts: &Facts<'_>) -> Held {
        let mut touched = Touched::default();
        if let Some(ns) = facts.trace.namespace {
            touched.note(ns);
        }
        Held {
            request_id: cut(facts.request_id, MAX_TEXT_BYTES).into(),
            touched,
        }
    }

    /// Notes a namespace the body names.
    pub fn note(&mut self, ns: &str) {
        self.touched.note(ns);
    }

    /// The facts of the body phase, with the plan's principal, store, route and scope.
    pub fn facts<'r>(&'r self, plan: &Plan) -> Facts<'r> {
        Facts {
            request_id: &self.request_id,
            trace: Trace::of(plan),
            touched: Some(&self.touched),
        }
    }
}

/// The kind of principal: `minted_key`, `inbound_key`, `store_credential` (a store's own
/// credential, the bootstrap admin bearer included), `open` (a store in `open` mode),
/// `anonymous` (a route that needs no credential).
pub fn principal_kind(p: Principal) -> &'static str {
    match p {
        Principal::Anonymous => "anonymous",
        Principal::Open => "open",
        Principal::Token(Grant::StoreCredential(_)) => "store_credential",
        Principal::Token(Grant::InboundKey { .. }) => "inbound_key",
        Principal::Token(Grant::Minted(_)) => "minted_key",
    }
}

/// The key behind a principal: (name, owner) of a minted key, the name of an inbound key
/// (`inboundAuth.keys[].name`).
fn key_of(policy: &Policy, p: Principal) -> (Option<&str>, Option<&str>) {
    match p {
        Principal::Token(Grant::Minted(k)) => match policy.keys.get(k) {
            Some(key) => (Some(key.name()), key.owner),
            None => (None, None),
        },
        Principal::Token(Grant::InboundKey { store, key, .. }) => {
            // `key:<store>/<name>`; store names have no '/'.
            let principal = &*policy.stores[store].key_principals[key];
            (principal.split_once('/').map(|(_, n)| n), None)
        }
        _ => (None, None),
    }
}

/// Writes the fragment into `line` (cleared first): `facts`, then `decision` (`allowed`, or a
/// refusal's label such as `denied_403`) and a refusal's `reason`. `policy` is `None` when the
/// filter has no configuration; then only the request id, decision and reason are known.
pub fn write(
    line: &mut String,
    policy: Option<&Policy>,
    e: &Facts<'_>,
    decision: &str,
    reason: Option<&str>,
) {
    line.clear();
    let t = &e.trace;
    let principal = t.principal.filter(|_| policy.is_some());
    let (key_name, owner) = match (policy, principal) {
        (Some(policy), Some(p)) => key_of(policy, p),
        _ => (None, None),
    };
    let store = policy.zip(t.store).map(|(p, s)| &*p.stores[s].name);
    text(
        line,
        ",\"request_id\":",
        Some(e.request_id).filter(|r| !r.is_empty()),
    );
    text(
        line,
        ",\"principal\":",
        policy.zip(principal).map(|(po, p)| p.name(po)),
    );
    text(line, ",\"principal_kind\":", principal.map(principal_kind));
    text(line, ",\"key_name\":", key_name);
    text(line, ",\"key_owner\":", owner);
    text(line, ",\"store\":", store);
    line.push_str(",\"namespaces\":[");
    let count = match e.touched {
        Some(touched) => {
            for (i, ns) in touched.names().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                string(line, ns, MAX_TEXT_BYTES);
            }
            touched.count()
        }
        None => match t.namespace {
            Some(ns) => {
                string(line, ns, MAX_TEXT_BYTES);
                1
            }
            None => 0,
        },
    };
    line.push_str("],\"namespace_count\":");
    number(line, count);
    text(line, ",\"route\":", t.target.map(|t| t.as_str()));
    text(line, ",\"scope\":", t.scope.map(|s| s.as_str()));
    text(line, ",\"decision\":", Some(decision));
    line.push_str(",\"reason\":");
    match reason {
        Some(r) => string(line, r, MAX_REASON_BYTES),
        None => line.push_str("null"),
    }
}

/// `name` then a JSON string of `value`, or `null`.
fn text(line: &mut String, name: &str, value: Option<&str>) {
    line.push_str(name);
    match value {
        Some(v) => string(line, v, MAX_TEXT_BYTES),
        None => line.push_str("null"),
    }
}

/// `s`, at most `max` bytes of it, as a JSON string: `"` and `\` escaped, control
/// characters as `\n`, `\t`, … or `\u00XX`; everything else as is (a `&str` is UTF-8).
fn string(line: &mut String, s: &str, max: usize) {
    let s = cut(s, max);
    line.push('"');
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        line.push_str(&s[from..i]);
        from = i + 1;
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            line.push_str("\\u00");
            line.push(HEX[usize::from(b >> 4)] as char);
            line.push(HEX[usize::from(b & 0xf)] as char);
        } else {
            line.push_str(escaped);
        }
    }
    line.push_str(&s[from..]);
    line.push('"');
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A decimal number.
fn number(line: &mut String, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        line.push(d as char);
    }
}

#[cfg(test)]
mod tests;
