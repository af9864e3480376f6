//! The minted-key table (SPEC §6): token digest → compiled key, built from the configuration's
//! static `apiKeys` or from the operator's key service, and swapped whole when a sync brings a
//! change, so a request sees one table from start to end.
//!
//! ```text
//!  SyncResponse{snapshot}  ──KeyTable::from_keys──►  new table
//!  SyncResponse{deltas}    ──KeyTable::apply──────►  copy of the old one, changed
//!  request: lookup(sha256(token)) ─► index ─► MintedKey (entitlements, expiry)
//! ```
//!
//! A synced table is only trusted while it is fresh: until the first sync and after
//! `maxStalenessSeconds` without one, minted tokens get 503 (inbound keys and store
//! credentials keep working); [`Freshness`] is shared between the root context, which
//! records each successful sync, and every table it built.

use crate::config::{ApiKeyConfig, SyncResponse};
use crate::fasthash::FastMap;
use crate::policy::{compile_key, token_hash, ConfigError, KeyGrants, MintedKey, StoreId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// When the table was last confirmed by the key service (Unix seconds), shared by the root
/// context and the tables it swaps in.
#[derive(Debug)]
pub struct Freshness {
    synced_at: AtomicI64,
    /// Longest a table keeps serving minted tokens without a successful sync.
    pub max_staleness: i64,
}

/// `synced_at` before the first successful sync.
const NEVER: i64 = i64::MIN;

impl Freshness {
    /// Not synced yet.
    pub fn new(max_staleness_seconds: u64) -> Freshness {
        Freshness {
            synced_at: AtomicI64::new(NEVER),
            max_staleness: i64::try_from(max_staleness_seconds).unwrap_or(i64::MAX),
        }
    }

    /// Records a successful sync at `now`.
    pub fn synced(&self, now: i64) {
        self.synced_at.store(now, Ordering::Relaxed);
    }

    /// Seconds since the last successful sync; `None` before the first.
    pub fn stale_seconds(&self, now: i64) -> Option<i64> {
        match self.synced_at.load(Ordering::Relaxed) {
            NEVER => None,
            at => Some(now.saturating_sub(at).max(0)),
        }
    }
}

/// Why minted tokens cannot be judged right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// The key service has not answered yet.
    NotLoaded,
    /// No successful sync for longer than `maxStalenessSeconds`.
    Stale,
}

/// One key, compactly: its principal text lives in the table's arena, its grants are
/// interned.
#[derive(Debug, Clone)]
struct Slot {
    /// `apikey:<name>` as `arena[start..start + len]`.
    start: u32,
    len: u32,
    /// Expiry in Unix seconds; `i64::MAX` for never.
    expires_at: i64,
    grants: Arc<KeyGrants>,
}

/// A key as a request sees it.
#[derive(Debug, Clone, Copy)]
pub struct KeyRef<'t> {
    /// `apikey:<name>`.
    pub principal: &'t str,
    /// Expiry in Unix seconds, if any.
    pub expires_at: Option<i64>,
    /// What it grants.
    pub grants: &'t KeyGrants,
}

impl<'t> KeyRef<'t> {
    /// The ApiKey's name.
    pub fn name(&self) -> &'t str {
        self.principal
            .strip_prefix("apikey:")
            .unwrap_or(self.principal)
    }
}

impl std::ops::Deref for KeyRef<'_> {
    type Target = KeyGrants;

    fn deref(&self) -> &KeyGrants {
        self.grants
    }
}

/// The minted keys, by token digest. About 100 bytes a key: the digest map, a 24-byte slot,
/// a 16-byte keyId digest and the principal text; grants are shared by every key with the
/// same entitlements. Removals and replacements by keyId scan the slots (they are rare: a
/// revocation or re-mint), so no second map is kept.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    slots: Vec<Slot>,
    /// Per slot: SHA-256 of its keyId, first 16 bytes.
    ids: Vec<[u8; 16]>,
    by_hash: FastMap<[u8; 32], u32>,
    arena: String,
    /// Arena bytes no slot refers to any more.
    garbage: usize,
    interned: HashSet<Arc<KeyGrants>>,
    /// `Some` for a table from the key service: judged for freshness.
    freshness: Option<Arc<Freshness>>,
    /// The key service's revision this table is at.
    revision: Option<Box<str>>,
}

fn id_digest(key_id: &str) -> [u8; 16] {
    let full = token_hash(key_id.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

impl KeyTable {
    /// A table of `keys` (static `apiKeys`, or a snapshot). Refuses a duplicate keyId or a key
    /// the filter cannot compile (the operator leaves such keys out, SPEC §7).
    pub fn from_keys(
        keys: &[ApiKeyConfig],
        stores: &HashMap<&str, StoreId>,
        store_count: usize,
    ) -> Result<KeyTable, ConfigError> {
        let mut table = KeyTable::default();
        table.slots.reserve(keys.len());
        table.ids.reserve(keys.len());
        table.by_hash.reserve(keys.len());
        let mut seen = HashSet::with_capacity(keys.len());
        for k in keys {
            if !seen.insert(k.key_id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "apiKeys: keyId {:?} is used twice",
                    k.key_id
                )));
            }
            let key = compile_key(k, stores, store_count)?;
            table.push(k, key);
        }
        Ok(table)
    }

    /// An empty table for a key service that has not answered yet.
    pub fn awaiting_sync(freshness: Arc<Freshness>) -> KeyTable {
        KeyTable {
            freshness: Some(freshness),
            ..KeyTable::default()
        }
    }

    /// The table after a key-service answer: the snapshot, or this table with the deltas
    /// applied. The answer is compiled whole before anything changes; a key the filter
    /// cannot compile fails the answer (the table in use stays).
    pub fn apply(
        &self,
        answer: &SyncResponse,
        stores: &HashMap<&str, StoreId>,
        store_count: usize,
    ) -> Result<KeyTable, ConfigError> {
        let mut next = if answer.snapshot {
            KeyTable::from_keys(&answer.keys, stores, store_count)?
        } else {
            let compiled = answer
                .keys
                .iter()
                .map(|k| compile_key(k, stores, store_count).map(|c| (k, c)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut next = self.clone();
            for id in &answer.removed {
                next.remove(&id_digest(id));
            }
            for (k, c) in compiled {
                next.remove(&id_digest(&k.key_id));
                next.push(k, c);
            }
            next.compact();
            next
        };
        next.freshness.clone_from(&self.freshness);
        next.revision = Some(answer.revision.as_str().into());
        Ok(next)
    }

    fn push(&mut self, k: &ApiKeyConfig, key: MintedKey) {
        let grants = match self.interned.get(&key.grants) {
            Some(g) => Arc::clone(g),
            None => {
                let g = Arc::new(key.grants);
                self.interned.insert(Arc::clone(&g));
                g
            }
        };
        let start = self.arena.len() as u32;
        self.arena.push_str("apikey:");
        self.arena.push_str(&k.name);
        let i = self.slots.len() as u32;
        self.slots.push(Slot {
            start,
            len: self.arena.len() as u32 - start,
            expires_at: key.expires_at.unwrap_or(i64::MAX),
            grants,
        });
        self.ids.push(id_digest(&k.key_id));
        self.by_hash.insert(k.lookup_hash.0, i);
    }

    fn remove(&mut self, id: &[u8; 16]) {
        let Some(slot) = self.ids.iter().position(|x| x == id) else {
            return;
        };
        let last = self.slots.len() - 1;
        let gone = self.slots.swap_remove(slot);
        self.ids.swap_remove(slot);
        self.garbage += gone.len as usize;
        // Drop its digest and point the moved key's digest at its new slot.
        self.by_hash.retain(|_, j| *j as usize != slot);
        if slot < last {
            for j in self.by_hash.values_mut() {
                if *j as usize == last {
                    *j = slot as u32;
                }
            }
        }
    }

    /// Rewrites the arena once most of it is garbage, and forgets grants no key uses.
    fn compact(&mut self) {
        if self.garbage * 2 > self.arena.len() {
            let mut arena = String::with_capacity(self.arena.len() - self.garbage);
            for s in &mut self.slots {
                let text = &self.arena[s.start as usize..(s.start + s.len) as usize];
                s.start = arena.len() as u32;
                arena.push_str(text);
            }
            self.arena = arena;
            self.garbage = 0;
            self.interned.retain(|g| Arc::strong_count(g) > 1);
        }
    }

    /// The key a token digest belongs to.
    pub fn lookup(&self, hash: &[u8; 32]) -> Option<usize> {
        self.by_hash.get(hash).map(|&i| i as usize)
    }

    /// The key in slot `k` (from [`KeyTable::lookup`]). Panics on an index this table never
    /// gave out.
    pub fn key(&self, k: usize) -> KeyRef<'_> {
        let s = &self.slots[k];
        KeyRef {
            principal: &self.arena[s.start as usize..(s.start + s.len) as usize],
            expires_at: (s.expires_at != i64::MAX).then_some(s.expires_at),
            grants: &s.grants,
        }
    }

    /// The key in slot `k`, if any.
    pub fn get(&self, k: usize) -> Option<KeyRef<'_>> {
        (k < self.slots.len()).then(|| self.key(k))
    }

    /// Whether minted tokens can be judged at `now` (Unix seconds).
    pub fn usable(&self, now: i64) -> Result<(), Unusable> {
        let Some(f) = &self.freshness else {
            return Ok(());
        };
        match f.stale_seconds(now) {
            None => Err(Unusable::NotLoaded),
            Some(s) if s > f.max_staleness => Err(Unusable::Stale),
            Some(_) => Ok(()),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The key service's revision this table is at (`None` for static keys or before the
    /// first sync).
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }

    /// The freshness a key-service table is judged by (`None` for static keys).
    pub fn freshness(&self) -> Option<&Arc<Freshness>> {
        self.freshness.as_ref()
    }
}
