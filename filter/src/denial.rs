//! The refusal vocabulary: why a request was refused, mapped to status, `WWW-Authenticate`
//! and turbopuffer's error shape `{"status":"error","error":"<message>"}` (SPEC §3).
//!
//! Every refusal the filter makes is built here, so the messages stay consistent: they say
//! what was wrong and what would fix it, and never echo a token.

use crate::scope::Scope;
use std::borrow::Cow;

/// Why a request was refused; maps to status, `WWW-Authenticate` and a turbopuffer-shaped body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// What kind of refusal.
    pub kind: DenialKind,
    /// What was wrong and what would fix it. Never contains a token.
    pub message: Cow<'static, str>,
}

/// Kinds of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// 400: malformed request.
    BadRequest,
    /// 401 without `error=`: no credential was sent.
    MissingToken,
    /// 401 `error="invalid_token"`: unknown, expired or not accepted here.
    InvalidToken,
    /// 403 `error="insufficient_scope"`: scope or namespace not granted.
    InsufficientScope(Scope),
    /// 404: a route this gateway has no upstream for.
    NotFound,
    /// 413: body over the inspection limit.
    PayloadTooLarge,
    /// 415: a content encoding the filter cannot inspect.
    UnsupportedMediaType,
    /// 429: the key is over its rate limit; `Retry-After` and the `RateLimit` headers say
    /// when to come back.
    TooManyRequests(crate::ratelimit::Limited),
    /// 503: store not configured or credential not loaded.
    Unavailable,
}

impl Denial {
    pub(crate) fn new(kind: DenialKind, message: impl Into<Cow<'static, str>>) -> Denial {
        Denial {
            kind,
            message: message.into(),
        }
    }

    /// A 400.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Denial {
        Denial::new(DenialKind::BadRequest, message)
    }

    /// HTTP status code.
    pub const fn status(&self) -> u32 {
        match self.kind {
            DenialKind::BadRequest => 400,
            DenialKind::MissingToken | DenialKind::InvalidToken => 401,
            DenialKind::InsufficientScope(_) => 403,
            DenialKind::NotFound => 404,
            DenialKind::PayloadTooLarge => 413,
            DenialKind::UnsupportedMediaType => 415,
            DenialKind::TooManyRequests(_) => 429,
            DenialKind::Unavailable => 503,
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750), for 401 and 403.
    pub const fn www_authenticate(&self) -> Option<&'static str> {
        match self.kind {
            DenialKind::MissingToken => Some(r#"Bearer realm="layergate""#),
            DenialKind::InvalidToken => Some(r#"Bearer realm="layergate", error="invalid_token""#),
            DenialKind::InsufficientScope(Scope::Read) => {
                Some(r#"Bearer realm="layergate", error="insufficient_scope", scope="read""#)
            }
            DenialKind::InsufficientScope(Scope::Write) => {
                Some(r#"Bearer realm="layergate", error="insufficient_scope", scope="write""#)
            }
            DenialKind::InsufficientScope(Scope::Admin) => {
                Some(r#"Bearer realm="layergate", error="insufficient_scope", scope="admin""#)
            }
            _ => None,
        }
    }

    /// `{"status":"error","error":"<message>"}`, turbopuffer's error shape.
    pub fn body(&self) -> String {
        serde_json::json!({"status": "error", "error": self.message}).to_string()
    }

    /// Short label for stats and access logs (`denied_401`).
    pub const fn label(&self) -> &'static str {
        match self.status() {
            400 => "denied_400",
            401 => "denied_401",
            403 => "denied_403",
            404 => "denied_404",
            413 => "denied_413",
            415 => "denied_415",
            429 => "denied_429",
            _ => "denied_503",
        }
    }
}

impl Denial {
    /// 401 without `error=`: the route needs a credential and none was sent.
    pub fn missing_token(message: impl Into<Cow<'static, str>>) -> Denial {
        Denial::new(DenialKind::MissingToken, message)
    }

    /// 401 `error="invalid_token"`.
    pub fn invalid_token(message: impl Into<Cow<'static, str>>) -> Denial {
        Denial::new(DenialKind::InvalidToken, message)
    }

    /// 403 `error="insufficient_scope"` naming the scope the route needed.
    pub fn insufficient(scope: Scope, message: impl Into<Cow<'static, str>>) -> Denial {
        Denial::new(DenialKind::InsufficientScope(scope), message)
    }

    /// 404: a route whose upstream this gateway does not have.
    pub fn no_upstream(what: &str) -> Denial {
        Denial::new(
            DenialKind::NotFound,
            format!("route served by {what}, which this gateway does not have"),
        )
    }

    /// 503: the gateway cannot serve this yet (no store, credential not loaded, no config).
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Denial {
        Denial::new(DenialKind::Unavailable, message)
    }

    /// 413 for a body over `limit` bytes (`limits.inspectBodyBytes`).
    pub fn too_large(limit: u64) -> Denial {
        Denial::new(
            DenialKind::PayloadTooLarge,
            format!(
                "the request body is over the inspection limit of {limit} bytes (limits.inspectBodyBytes) that applies to \
                 bodies the gateway reads for namespaces (namespace-restricted keys; writes that may copy, when several \
                 stores are configured); send a smaller body"
            ),
        )
    }

    /// 413 for a gzip body that inflates more than `ratio` times.
    pub fn too_large_inflation(ratio: u64) -> Denial {
        Denial::new(
            DenialKind::PayloadTooLarge,
            format!(
                "the gzip request body inflates more than {ratio} times its size; it is inspected for namespaces, \
                 so send it less compressed or uncompressed"
            ),
        )
    }

    /// 415 for a body encoding the filter cannot inspect.
    pub fn unsupported_encoding() -> Denial {
        Denial::new(
            DenialKind::UnsupportedMediaType,
            "this request body is inspected for namespaces and may only be sent plain or with Content-Encoding: gzip",
        )
    }

    /// 429 for `key` over its rate limit.
    pub fn rate_limited(
        key: &str,
        rate: crate::ratelimit::Rate,
        limited: crate::ratelimit::Limited,
    ) -> Denial {
        Denial::new(
            DenialKind::TooManyRequests(limited),
            format!(
                "{key} is over its rate limit of {} requests per second (burst {}); retry after {} s",
                rate.per_second, rate.burst, limited.retry_after
            ),
        )
    }

    /// 429 for a key that spent a quota (issue 25): refused until `until` (Unix seconds), the
    /// end of the quota's period; `now` is the filter's clock. `quota`: the key's smallest
    /// quota (`RateLimit-Policy`'s `q`).
    pub fn quota_spent(key: &str, quota: u64, until: i64, now: i64) -> Denial {
        let wait = u64::try_from(until.saturating_sub(now)).unwrap_or(0).max(1);
        let resets = crate::time::format_rfc3339(until).unwrap_or_else(|| until.to_string());
        Denial::new(
            DenialKind::TooManyRequests(crate::ratelimit::Limited {
                retry_after: wait,
                burst: quota,
                window: wait,
            }),
            format!(
                "{key} has spent its request quota; it resets at {resets} (retry after {wait} s)"
            ),
        )
    }

    /// 403 for a namespace outside a key's globs on `target` (`vectorstore.<name>`, `layer`).
    pub fn namespace(key: &str, ns: &str, scope: Scope, target: &dyn std::fmt::Display) -> Denial {
        Denial::insufficient(
            scope,
            format!("API key {key:?} may not access namespace {ns:?}: it is outside the key's {target} namespace globs"),
        )
    }
}
