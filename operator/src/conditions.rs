//! Condition vocabulary: types and reasons as constants, one constructor.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition type: the object is valid (and, for stores, answered the probe).
pub const READY: &str = "Ready";
/// Condition type on ApiKeys: an entitlement names a store that does not exist.
pub const ENTITLEMENT_TARGET_MISSING: &str = "EntitlementTargetMissing";
/// Condition type on Active ApiKeys (unless `--expiring-soon off`): True while the key's
/// `expiresAt` is within the window (`--expiring-soon`, default 7 days).
pub const EXPIRING_SOON: &str = "ExpiringSoon";
/// Condition type on VectorStores: an inbound key is left out (its `limits` are not valid);
/// the store and its other keys still publish.
pub const INBOUND_KEY_REFUSED: &str = "InboundKeyRefused";

/// Reasons.
pub mod reason {
    /// Everything checked out.
    pub const VALID: &str = "Valid";
    /// A referenced Secret does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A referenced Secret's value is not UTF-8 text or, for a minted token, the Secret could
    /// not be created (a quota, an admission policy). Kube mode reads Secrets from its
    /// watch-fed cache, so no single Secret's read fails on its own.
    pub const SECRET_UNREADABLE: &str = "SecretUnreadable";
    /// The Secret exists but lacks the key, or its value is empty.
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// The Secret's value is not usable as sent: surrounding whitespace (a trailing newline
    /// from `echo`), a control character, or (kube mode) bytes that are not UTF-8 text. It
    /// is refused, never trimmed or decoded lossily into another credential.
    pub const SECRET_VALUE_INVALID: &str = "SecretValueInvalid";
    /// `spec.kind` is not supported (pinecone).
    pub const UNSUPPORTED_KIND: &str = "UnsupportedKind";
    /// `spec.endpoint` is not a usable URL or region.
    pub const INVALID_ENDPOINT: &str = "InvalidEndpoint";
    /// More than one store says `default: true`.
    pub const MULTIPLE_DEFAULTS: &str = "MultipleDefaults";
    /// `spec.inboundAuth` is inconsistent (duplicate names, bad scopes, keys without mode keys).
    pub const INVALID_INBOUND_AUTH: &str = "InvalidInboundAuth";
    /// A key's `limits` are out of bounds (negative, zero, over 1,000,000/s) or malformed.
    pub const INVALID_LIMITS: &str = "InvalidLimits";
    /// Another Index owns the same upstream namespace.
    pub const CONFLICT: &str = "Conflict";
    /// The Index names a store that does not exist or is not valid.
    pub const STORE_NOT_FOUND: &str = "StoreNotFound";
    /// The upstream namespace name is not valid for turbopuffer.
    pub const INVALID_NAMESPACE: &str = "InvalidNamespace";
    /// An ApiKey's name, entitlements or lifetime are malformed (or a VectorStore's name).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The ApiKey's token Secret may not serve as its token (not marked as this key's, left by
    /// a deleted key of the same name) or holds a token weaker than hev layer's format.
    pub const INVALID_TOKEN: &str = "InvalidTokenSecret";
    /// The ApiKey has no token yet.
    pub const NOT_MINTED: &str = "NotMinted";
    /// The ApiKey was revoked.
    pub const REVOKED: &str = "Revoked";
    /// The ApiKey is past its expiry.
    pub const EXPIRED: &str = "Expired";
    /// The key expires within the `--expiring-soon` window: mint a new one (a rotation keeps
    /// the expiry) or lengthen its `expiresAfter`.
    pub const EXPIRES_WITHIN: &str = "ExpiresWithin";
    /// The key expires later than the window, or never.
    pub const EXPIRES_LATER: &str = "ExpiresLater";
    /// An entitlement names a missing store (the entitlement grants nothing).
    pub const TARGET_MISSING: &str = "TargetMissing";
    /// The store answered the probe with 401/403.
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// The store did not answer the probe.
    pub const UNREACHABLE: &str = "Unreachable";
    /// The store answered the probe with an error other than 401/403.
    pub const UNHEALTHY: &str = "Unhealthy";
}

/// Builds a condition; `now` is Unix seconds (a fixed clock in tests).
pub fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: i64,
) -> Condition {
    Condition {
        type_: kind.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(
            k8s_openapi::jiff::Timestamp::from_second(now)
                .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        ),
    }
}
