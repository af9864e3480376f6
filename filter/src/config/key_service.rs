//! The key service's part of the configuration (SPEC §6): where the filter syncs minted keys
//! from and reports their usage to, and what the service answers.

use super::{ApiKeyConfig, Credential};
use serde::{Deserialize, Serialize};

/// The operator's key service (SPEC §6), polled by the filter's root context with
/// `dispatch_http_call`:
///
/// ```text
///  GET {path}?wait=<pollSeconds>&config=<CONFIG_VERSION>&since=<revision>
///                                  (no `since` on the first call; `config`: the
///                                   configuration version this filter reads)
///  :authority: {authority}   authorization: Bearer <credential>
///  → 200 application/json  SyncResponse
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyServiceConfig {
    /// The Envoy cluster of the operator's control port.
    pub cluster: String,
    /// `:authority` sent; default: the cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// The sync path; default [`DEFAULT_KEY_SYNC_PATH`].
    #[serde(default = "default_key_sync_path")]
    pub path: String,
    /// The gateway credential the key service accepts (a bearer token).
    pub credential: Credential,
    /// How long the last table keeps serving minted tokens when syncs fail; after that they
    /// get 503 until a sync succeeds. Default 300 s.
    #[serde(default = "default_max_staleness")]
    pub max_staleness_seconds: u64,
    /// How long the key service may hold a sync open when nothing changed (long poll); the
    /// filter's call times out 5 s after it. Default 30 s, at most 30.
    #[serde(default = "default_poll_seconds")]
    pub poll_seconds: u64,
    /// Where per-key usage is reported (`POST`); default [`DEFAULT_USAGE_PATH`].
    #[serde(
        default = "default_usage_path",
        skip_serializing_if = "is_default_usage_path"
    )]
    pub usage_path: String,
    /// Seconds between two usage reports of one VM (sooner when its tally is full); 1 to 60,
    /// default 5.
    #[serde(
        default = "default_report_seconds",
        skip_serializing_if = "is_default_report_seconds"
    )]
    pub report_seconds: u64,
}

/// Default path usage is reported to.
pub const DEFAULT_USAGE_PATH: &str = "/v2/keys/usage";

fn default_usage_path() -> String {
    DEFAULT_USAGE_PATH.to_owned()
}

fn is_default_usage_path(p: &str) -> bool {
    p == DEFAULT_USAGE_PATH
}

/// Default seconds between usage reports.
pub const DEFAULT_REPORT_SECONDS: u64 = 5;

fn default_report_seconds() -> u64 {
    DEFAULT_REPORT_SECONDS
}

fn is_default_report_seconds(s: &u64) -> bool {
    *s == DEFAULT_REPORT_SECONDS
}

/// Default path of the key service.
pub const DEFAULT_KEY_SYNC_PATH: &str = "/v2/keys/sync";

fn default_key_sync_path() -> String {
    DEFAULT_KEY_SYNC_PATH.to_owned()
}

fn default_max_staleness() -> u64 {
    300
}

fn default_poll_seconds() -> u64 {
    30
}

/// What the key service answers (`GET /v2/keys/sync`).
///
/// - `snapshot: true`: `keys` is the whole table of usable keys (Active: not revoked; expired
///   keys may be listed, the filter judges expiry by its clock), `removed` is empty. Sent on a
///   first call, and whenever the service does not know `since` (another replica's or an old
///   revision).
/// - `snapshot: false`: the changes since `since`: `keys` are added or replaced (by `keyId`),
///   `removed` are the `keyId`s to drop (deleted or revoked keys). Nothing new within the wait:
///   the same `revision` and both lists empty.
///
/// `revision` is derived from the content (the same on every operator replica), never a
/// per-process counter. Tokens are never sent, only `lookupHash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncResponse {
    /// The revision this answer brings the caller to.
    pub revision: String,
    /// True when `keys` replaces the whole table.
    pub snapshot: bool,
    /// Keys added or replaced (the whole table for a snapshot).
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
    /// `keyId`s removed (deltas only).
    #[serde(default)]
    pub removed: Vec<String>,
}
