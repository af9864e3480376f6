//! The key service (SPEC §6): `GET /v2/keys/sync?since=<revision>&wait=<seconds>` on the
//! control port, what every gateway's filter syncs its table of minted keys from, so that the
//! rendering no longer carries them.
//!
//! - **Who may call**: only the gateway credential ([`GatewayCredential`]), compared as SHA-256
//!   digests in constant time. Admin keys, store credentials and minted keys get 401.
//! - **What**: the usable keys of the last pass (validated, not revoked; expired keys stay until
//!   the pass drops them, the filter judges expiry by its clock) as the filter's own
//!   [`ApiKeyConfig`]: `lookupHash`, never a token.
//! - **Revisions** are derived from the content: SHA-256 over the number of keys and the sum
//!   (modulo 2^512) of the SHA-512s of the keys' canonical JSON, kept up to date a change at a
//!   time. Two replicas over the same objects name the same revision whatever order the
//!   changes came in, so a gateway can move between them; a `since` this process does not know (another content, an
//!   old revision, a restart) is answered with a snapshot.
//! - **Deltas**: the last [`HISTORY`] revisions are remembered with the `keyId`s each change
//!   touched; `since` one of them answers `snapshot:false` with the keys added or changed and
//!   the `keyId`s removed (deleted, revoked, or invalid now).
//! - **Long poll**: `since` = the current revision holds the call up to `min(wait, 30)` s and
//!   answers as soon as a pass changes the key set (a `tokio::sync::watch` fed by the pass);
//!   nothing new: the same revision with both lists empty.
//!
//! Every key's JSON is serialized once, when it first appears or changes, and kept: a snapshot
//! of 100,000 keys is a concatenation, not a serialization.

mod table;

use bytes::Bytes;
use layergate_filter::config::ApiKeyConfig;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use sha2::{Digest, Sha256, Sha512};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
pub use table::{Change, Table};

/// How many past revisions deltas can be answered from.
pub const HISTORY: usize = 64;

/// Longest a sync is held open when nothing changed.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The path of the key service.
pub const SYNC_PATH: &str = layergate_filter::config::DEFAULT_KEY_SYNC_PATH;

/// Name of the Secret holding the gateway credential in kube mode (and of the file in the
/// output directory in directory mode: [`CREDENTIAL_FILE`]).
pub const CREDENTIAL_SECRET: &str = "layergate-gateway-credential";

/// The key of the credential in [`CREDENTIAL_SECRET`].
pub const CREDENTIAL_KEY: &str = "credential";

/// Directory mode: the file in the output directory holding the gateway credential (0600).
pub const CREDENTIAL_FILE: &str = "gateway-credential";

/// Istio target: the proxy environment variable carrying the gateway credential.
pub const CREDENTIAL_ENV: &str = "LAYERGATE_GATEWAY_CREDENTIAL";

/// Prefix of a gateway credential (not `hvl_`: it is not an API key and no API key route
/// accepts it).
pub const CREDENTIAL_PREFIX: &str = "lgw_";

/// A new gateway credential: [`CREDENTIAL_PREFIX`] + 32 base62 characters from the OS CSPRNG
/// (≥ 190 random bits, the strength of a minted token).
pub fn new_credential() -> anyhow::Result<String> {
    let token = crate::keys::mint_token()?;
    Ok(format!(
        "{CREDENTIAL_PREFIX}{}",
        &token[crate::keys::TOKEN_PREFIX.len()..]
    ))
}

/// The gateway credential as the key service checks it: its SHA-256 only.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayCredential([u8; 32]);

impl std::fmt::Debug for GatewayCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayCredential(…)")
    }
}

impl GatewayCredential {
    /// The digest of `credential`.
    pub fn of(credential: &str) -> GatewayCredential {
        GatewayCredential(Sha256::digest(credential.as_bytes()).into())
    }

    /// True when `bearer` is the credential: digests compared in constant time.
    pub fn accepts(&self, bearer: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        let diff = d
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |a, (x, y)| a | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

/// Reads the gateway credential from `dir/`[`CREDENTIAL_FILE`], or creates it (0600) when
/// absent: generated once, reused across restarts.
pub fn credential_in_dir(dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let file = dir.join(CREDENTIAL_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let credential = new_credential()?;
    crate::files::write_private(&file, &format!("{credential}\n"))?;
    tracing::info!(file = %file.display(), "created the gateway credential");
    Ok(credential)
}

/// The key service's state in a running operator: the current table (a `watch`, so long
/// polls wake on a change) and the gateway credential.
pub struct KeyService {
    table: tokio::sync::watch::Sender<Arc<Table>>,
    credential: Mutex<Option<GatewayCredential>>,
    /// Syncs answered (snapshots and deltas).
    pub answered: Counter,
    /// Syncs refused: not the gateway credential.
    pub refused: Counter,
    /// Long polls being held now.
    pub waiting: Gauge,
    /// Syncs from a gateway whose filter reads an older configuration version than this
    /// operator renders (`config=` in the query): that gateway refuses the rendering and
    /// keeps its previous one (issue 13, upgrades).
    pub outdated: Counter,
    /// The last outdated configuration version a gateway reported, and when (Unix seconds).
    oldest_reader: Mutex<Option<(u32, i64)>>,
}

impl Default for KeyService {
    fn default() -> KeyService {
        KeyService {
            table: tokio::sync::watch::Sender::new(Arc::new(Table::default())),
            credential: Mutex::new(None),
            answered: Counter::default(),
            refused: Counter::default(),
            waiting: Gauge::default(),
            outdated: Counter::default(),
            oldest_reader: Mutex::new(None),
        }
    }
}

/// How long a gateway's reported configuration version counts (every gateway syncs at
/// least every [`MAX_WAIT`] plus its retry delay).
pub const OUTDATED_FOR: i64 = 120;

/// Counts a held long poll while it lives.
struct Waiting<'a>(&'a Gauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The outcome of a sync call.
#[derive(Debug)]
pub enum Sync {
    /// 200 with this JSON body.
    Answer(Bytes),
    /// 401: not the gateway credential.
    Unauthorized,
    /// 503: no pass has published keys yet.
    NotReady,
}

impl KeyService {
    /// Publishes the usable keys of a pass (the whole set); long polls wake when the revision
    /// changes. Returns the current revision. Costs a lookup and a comparison per key; a caller
    /// that knows what changed hands over just that with [`KeyService::apply`].
    pub fn publish(&self, keys: &[ApiKeyConfig]) -> String {
        let current = self.table.borrow().clone();
        let change = current.diff(keys);
        self.replace(&current, change)
    }

    /// Applies a change to the key set: costs what changed. Returns the current revision,
    /// the same as [`KeyService::publish`] of the resulting set would name.
    pub fn apply(&self, change: Change) -> String {
        let current = self.table.borrow().clone();
        self.replace(&current, change)
    }

    fn replace(&self, current: &Table, change: Change) -> String {
        if let Some(next) = current.apply(change) {
            let revision = next.revision.clone();
            self.table.send_replace(Arc::new(next));
            revision
        } else {
            current.revision.clone()
        }
    }

    /// The current table.
    pub fn table(&self) -> Arc<Table> {
        self.table.borrow().clone()
    }

    /// Sets the gateway credential the service accepts.
    pub fn set_credential(&self, credential: GatewayCredential) {
        *self
            .credential
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(credential);
    }

    /// True when `bearer` is the gateway credential.
    pub fn accepts(&self, bearer: Option<&str>) -> bool {
        let credential = self
            .credential
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        matches!((credential, bearer), (Some(c), Some(b)) if c.accepts(b))
    }

    /// Notes a gateway filter that reads configuration version `reads`; one older than
    /// [`layergate_filter::config::CONFIG_VERSION`] (what this operator renders) is counted and
    /// logged: its gateway refuses the rendering and keeps enforcing its previous one.
    fn saw_reader(&self, reads: u32) {
        if reads >= layergate_filter::config::CONFIG_VERSION {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        *self
            .oldest_reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((reads, now));
        if self.outdated.inc().is_multiple_of(100) {
            tracing::warn!(
                gateway_reads = reads,
                operator_renders = layergate_filter::config::CONFIG_VERSION,
                "a gateway's filter is older than this operator's rendering: it refuses it and keeps its previous configuration; roll the gateway to the operator's filter"
            );
        }
    }

    /// The configuration version of the last outdated gateway filter seen in the last
    /// [`OUTDATED_FOR`] seconds, if one was.
    pub fn outdated_reader(&self, now: i64) -> Option<u32> {
        self.oldest_reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .filter(|(_, at)| now - at < OUTDATED_FOR)
            .map(|(v, _)| v)
    }

    /// Answers `GET /v2/keys/sync?<query>` for a caller presenting `bearer`.
    pub async fn sync(&self, query: &str, bearer: Option<&str>) -> Sync {
        if !self.accepts(bearer) {
            self.refused.inc();
            return Sync::Unauthorized;
        }
        let (mut since, mut wait) = (None, 0u64);
        for kv in query.split('&') {
            match kv.split_once('=') {
                Some(("since", v)) if !v.is_empty() => {
                    since = Some(v.replace("%3A", ":").replace("%3a", ":"));
                }
                Some(("wait", v)) => wait = v.parse().unwrap_or(0),
                Some(("config", v)) => {
                    if let Ok(reads) = v.parse::<u32>() {
                        self.saw_reader(reads);
                    }
                }
                _ => {}
            }
        }
        let mut rx = self.table.subscribe();
        let table = rx.borrow_and_update().clone();
        if table.revision.is_empty() {
            return Sync::NotReady;
        }
        if wait > 0 && since.as_deref() == Some(table.revision.as_str()) {
            let wait = Duration::from_secs(wait).min(MAX_WAIT);
            self.waiting.inc();
            let _held = Waiting(&self.waiting);
            if let Ok(Ok(())) = tokio::time::timeout(wait, rx.changed()).await {
                let now = rx.borrow_and_update().clone();
                self.answered.inc();
                return Sync::Answer(now.answer(since.as_deref()));
            }
        }
        self.answered.inc();
        Sync::Answer(table.answer(since.as_deref()))
    }
}
