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
use sha2::{Digest, Sha256, Sha512};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
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
    pub answered: AtomicU64,
    /// Syncs refused: not the gateway credential.
    pub refused: AtomicU64,
    /// Long polls being held now.
    pub waiting: AtomicU64,
    /// Syncs from a gateway whose filter reads an older configuration version than this
    /// operator renders (`config=` in the query): that gateway refuses the rendering and
    /// keeps its previous one (issue 13, upgrades).
    pub outdated: AtomicU64,
    /// The last outdated configuration version a gateway reported, and when (Unix seconds).
    oldest_reader: Mutex<Option<(u32, i64)>>,
}

impl Default for KeyService {
    fn default() -> KeyService {
        KeyService {
            table: tokio::sync::watch::Sender::new(Arc::new(Table::default())),
            credential: Mutex::new(None),
            answered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            outdated: AtomicU64::new(0),
            oldest_reader: Mutex::new(None),
        }
    }
}

/// How long a gateway's reported configuration version counts (every gateway syncs at
/// least every [`MAX_WAIT`] plus its retry delay).
pub const OUTDATED_FOR: i64 = 120;

/// Counts a held long poll while it lives.
struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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

    fn accepts(&self, bearer: Option<&str>) -> bool {
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
        if self
            .outdated
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(100)
        {
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
            self.refused.fetch_add(1, Ordering::Relaxed);
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
            self.waiting.fetch_add(1, Ordering::Relaxed);
            let _held = Waiting(&self.waiting);
            if let Ok(Ok(())) = tokio::time::timeout(wait, rx.changed()).await {
                let now = rx.borrow_and_update().clone();
                self.answered.fetch_add(1, Ordering::Relaxed);
                return Sync::Answer(now.answer(since.as_deref()));
            }
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        Sync::Answer(table.answer(since.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use layergate_filter::config::SyncResponse;
    use std::collections::BTreeMap as Model;

    fn key(i: u64, version: u64) -> ApiKeyConfig {
        serde_json::from_value(serde_json::json!({
            "keyId": format!("key_{i:08}"),
            "name": format!("k{i}"),
            "lookupHash": format!("sha256:{:064x}", i + 1),
            "expiresAt": format!("2027-01-{:02}T00:00:00Z", 1 + version % 28),
            "entitlements": {"vectorstore.primary": {"scopes": ["read"], "namespaces": [format!("team-{version}-*")]}},
        }))
        .unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// A small deterministic generator (xorshift64*), so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// A gateway's view: applies what `answer(since)` says, as the filter does.
    fn sync(view: &mut Model<String, ApiKeyConfig>, at: &mut Option<String>, table: &Table) {
        let body = table.answer(at.as_deref());
        let r: SyncResponse = serde_json::from_slice(&body).unwrap_or_else(|e| unreachable!("{e}"));
        if r.snapshot {
            view.clear();
        }
        for id in r.removed {
            view.remove(&id);
        }
        for k in r.keys {
            view.insert(k.key_id.clone(), k);
        }
        *at = Some(r.revision);
    }

    /// The revision a table built in one go over `keys` (in the order given) names.
    fn from_scratch(keys: &[ApiKeyConfig]) -> String {
        let fresh = KeyService::default();
        fresh.publish(keys)
    }

    #[test]
    fn random_changes_name_the_revision_a_from_scratch_table_names_and_deltas_reach_the_same_set() {
        for seed in [1u64, 7, 2026] {
            let mut rng = Rng(seed);
            let ks = KeyService::default();
            let mut model: Model<String, ApiKeyConfig> = Model::new();
            let initial: Vec<ApiKeyConfig> = (0..600).map(|i| key(i, 0)).collect();
            for k in &initial {
                model.insert(k.key_id.clone(), k.clone());
            }
            ks.publish(&initial);
            let mut next_id = 600u64;
            // Two gateways: one syncs after every change, one every 40 (past HISTORY it gets
            // a snapshot).
            let (mut every, mut every_at) = (Model::new(), None);
            let (mut seldom, mut seldom_at) = (Model::new(), None);
            let mut folds = 0;
            for step in 0..400 {
                let mut change = Change::default();
                for _ in 0..1 + rng.below(3) {
                    match rng.below(4) {
                        0 => {
                            change.upsert.push(key(next_id, 0));
                            next_id += 1;
                        }
                        1 | 2 if !model.is_empty() => {
                            let pick = rng.below(model.len() as u64) as usize;
                            let id: u64 = model
                                .keys()
                                .nth(pick)
                                .and_then(|id| id["key_".len()..].parse().ok())
                                .unwrap_or_default();
                            if rng.below(2) == 0 {
                                change.upsert.push(key(id, rng.below(5)));
                            } else {
                                change.remove.push(format!("key_{id:08}"));
                            }
                        }
                        _ => change.remove.push(format!("key_{:08}", next_id + 5)),
                    }
                }
                let removed: BTreeSet<&String> = change.remove.iter().collect();
                for k in &change.upsert {
                    if !removed.contains(&k.key_id) {
                        model.insert(k.key_id.clone(), k.clone());
                    }
                }
                for id in &change.remove {
                    model.remove(id);
                }
                let before = ks.table();
                // Half the changes as a change, half as the whole set (in a shuffled order).
                let revision = if step % 2 == 0 {
                    ks.apply(change)
                } else {
                    let mut all: Vec<ApiKeyConfig> = model.values().cloned().collect();
                    for i in (1..all.len()).rev() {
                        all.swap(i, rng.below(i as u64 + 1) as usize);
                    }
                    ks.publish(&all)
                };
                let table = ks.table();
                folds += usize::from(!Arc::ptr_eq(&before.base, &table.base));
                assert!(table.overlay.len() <= FOLD_AT_LEAST.max(table.len / FOLD_FRACTION));
                assert_eq!(table.len(), model.len());
                if step % 8 == 0 || !Arc::ptr_eq(&before.base, &table.base) {
                    let mut reversed: Vec<ApiKeyConfig> = model.values().cloned().collect();
                    reversed.reverse();
                    assert_eq!(revision, from_scratch(&reversed), "seed {seed} step {step}");
                }
                sync(&mut every, &mut every_at, &table);
                assert_eq!(every, model, "seed {seed} step {step}");
                if step % 40 == 39 {
                    sync(&mut seldom, &mut seldom_at, &table);
                    assert_eq!(seldom, model, "seed {seed} step {step}");
                }
            }
            assert!(folds > 0, "the overlay was folded into a new base");
            // The snapshot lists every key once, sorted, exactly as a fresh table's.
            let fresh = KeyService::default();
            fresh.publish(&model.values().cloned().collect::<Vec<_>>());
            assert_eq!(ks.table().answer(None), fresh.table().answer(None));
        }
    }

    #[test]
    fn the_change_between_two_key_lists_turns_one_into_the_other() {
        let mut rng = Rng(42);
        for round in 0..300 {
            let n = 1 + rng.below(40);
            let old: Vec<ApiKeyConfig> = (0..n).map(|i| key(i, 0)).collect();
            let mut new = old.clone();
            for _ in 0..rng.below(4) {
                match rng.below(5) {
                    0 if !new.is_empty() => {
                        new.remove(rng.below(new.len() as u64) as usize);
                    }
                    1 => {
                        let at = rng.below(new.len() as u64 + 1) as usize;
                        new.insert(at, key(100 + rng.below(20), 0));
                    }
                    2 if !new.is_empty() => {
                        let at = rng.below(new.len() as u64) as usize;
                        new[at] = key(at as u64, 1 + rng.below(3));
                    }
                    3 if new.len() > 1 => {
                        let (a, b) = (
                            rng.below(new.len() as u64) as usize,
                            rng.below(new.len() as u64) as usize,
                        );
                        new.swap(a, b);
                    }
                    _ => new.reverse(),
                }
            }
            let mut ids = BTreeSet::new();
            new.retain(|k| ids.insert(k.key_id.clone()));
            let ks = KeyService::default();
            ks.publish(&old);
            let revision = ks.apply(Change::between(&old, &new));
            assert_eq!(
                revision,
                from_scratch(&new),
                "round {round}: {old:?} → {new:?}"
            );
        }
    }

    #[test]
    fn a_sum_undone_is_the_empty_sum_and_order_does_not_matter() {
        let digests: Vec<[u8; 64]> = (0..50u8)
            .map(|i| Sha512::digest([i]).into())
            .chain([[0xff; 64], [0xff; 64]])
            .collect();
        let (mut forward, mut backward) = (Sum::default(), Sum::default());
        for d in &digests {
            forward.add(d);
        }
        for d in digests.iter().rev() {
            backward.add(d);
        }
        assert_eq!(forward, backward);
        assert_ne!(forward.revision(), Sum::default().revision());
        for d in digests.iter().step_by(2) {
            forward.sub(d);
        }
        for d in digests.iter().skip(1).step_by(2) {
            forward.sub(d);
        }
        assert_eq!(forward, Sum::default());
    }

    #[test]
    fn nothing_new_keeps_the_table_and_an_emptied_set_has_its_own_revision() {
        let ks = KeyService::default();
        let empty = ks.publish(&[]);
        assert!(!empty.is_empty());
        let one = ks.publish(&[key(1, 0)]);
        assert_ne!(one, empty);
        let table = ks.table();
        assert_eq!(ks.publish(&[key(1, 0)]), one);
        assert_eq!(ks.apply(Change::default()), one);
        assert!(Arc::ptr_eq(&table, &ks.table()), "no new table");
        assert_eq!(
            ks.apply(Change {
                upsert: vec![],
                remove: vec![key(1, 0).key_id]
            }),
            empty
        );
    }
}
