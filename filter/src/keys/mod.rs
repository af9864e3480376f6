//! The minted-key table (SPEC §6): token digest → compiled key, built from the configuration's
//! static `apiKeys` or from the operator's key service, and swapped whole when a sync brings a
//! change, so a request sees one table from start to end.
//!
//! ```text
//!  answer bytes ──answer::read──► Incoming (every key compiled as it streams in)
//!  Incoming{snapshot} ──KeyTable::apply_in_place──►  the new table
//!  Incoming{deltas}   ──KeyTable::apply_in_place──►  the table, changed: O(changes)
//!                     ──KeyTable::apply───────────►  a copy, changed (the old one is
//!                                                     still held by a request)
//!  request: lookup(sha256(token)) ─► index ─► MintedKey (entitlements, expiry)
//! ```
//!
//! A delta costs what it changes, not what the table holds: keys are found by keyId through
//! a map, a removed key's slot is marked dead (its digest entry is dropped lazily), and the
//! table is rewritten without the dead slots only once they are half of it, so the rewrite is
//! amortized over the removals that caused it.
//!
//! A synced table is only trusted while it is fresh: until the first sync and after
//! `maxStalenessSeconds` without one, minted tokens get 503 (inbound keys and store
//! credentials keep working); [`Freshness`] is shared between the root context, which
//! records each successful sync, and every table it built.

mod arena;
use crate::config::ApiKeyConfig;
use crate::config::{token_hash, ConfigError, StoreId};
use crate::entitlement::{compile_key, KeyGrants};
use crate::fasthash::FastMap;
use arena::{Arena, Lens};
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
    /// `apikey:<name>`, then the owner: the arena's text at `start`, their lengths packed in
    /// [`Lens`].
    start: u32,
    len: Lens,
    /// Expiry in Unix seconds; `i64::MAX` for never.
    expires_at: i64,
    grants: Arc<KeyGrants>,
}

/// A key as a request sees it.
#[derive(Debug, Clone, Copy)]
pub struct KeyRef<'t> {
    /// `apikey:<name>`.
    pub principal: &'t str,
    /// Who the key is for (`spec.owner`), if set.
    pub owner: Option<&'t str>,
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
/// the keyId map (8 bytes of the keyId's SHA-256 → slot) and the principal text; grants are
/// shared by every key with the same entitlements.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    slots: Vec<Slot>,
    /// keyId digest → its live slot. 64 bits of SHA-256 over operator-made keyIds: a second
    /// keyId with the digest of a given one takes about 2^64 tries to find.
    by_id: FastMap<[u8; 8], u32>,
    /// Token digest → slot; an entry of a removed key stays until the next rewrite and is
    /// never answered (its slot is dead).
    by_hash: FastMap<[u8; 32], u32>,
    arena: Arena,
    /// Arena bytes no live slot refers to any more.
    garbage: usize,
    /// Slots of removed or replaced keys.
    dead: usize,
    interned: HashSet<Arc<KeyGrants>>,
    /// keyId digest → the slot of its previous token, for keys in a rotation's overlap: a
    /// slot of its own (same name and grants) whose expiry is the overlap's end, so the
    /// request's expiry check refuses it from then on, with or without a sync.
    previous: FastMap<[u8; 8], u32>,
    /// Slot → until when (Unix seconds) its key is refused for a spent quota: only keys that
    /// spent one cost anything.
    spent: FastMap<u32, i64>,
    /// `Some` for a table from the key service: judged for freshness.
    freshness: Option<Arc<Freshness>>,
    /// The key service's revision this table is at.
    revision: Option<Box<str>>,
}

/// A key-service answer, every key compiled: what [`KeyTable::apply_in_place`] applies.
#[derive(Debug)]
pub struct Incoming {
    /// The revision the answer brings the table to.
    pub revision: String,
    /// True when `keys` replaces the whole table.
    pub snapshot: bool,
    /// The keys added or replaced (the whole table for a snapshot), compiled.
    pub keys: KeyTable,
    /// `keyId`s removed (deltas only).
    pub removed: Vec<String>,
}

/// `Slot::start` of a removed key.
const DEAD: u32 = u32::MAX;

/// A key the filter cannot compile, named in the configuration error.
fn refused(k: &ApiKeyConfig, why: String) -> ConfigError {
    ConfigError::Invalid(format!("apiKeys {:?}: {why}", k.name))
}

fn id_digest(key_id: &str) -> [u8; 8] {
    let full = token_hash(key_id.as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&full[..8]);
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
        let mut table = KeyTable::with_capacity(keys.len());
        for k in keys {
            table.insert_new(k, stores, store_count)?;
        }
        Ok(table)
    }

    /// An empty table with room for `keys` keys.
    pub fn with_capacity(keys: usize) -> KeyTable {
        let mut table = KeyTable::default();
        table.slots.reserve_exact(keys);
        table.by_id.reserve(keys);
        table.by_hash.reserve(keys);
        table
    }

    /// Compiles and adds a key whose keyId this table does not hold yet (a table being built:
    /// `apiKeys`, or an answer as it is read). Refuses a key the filter cannot compile, or a
    /// keyId seen before.
    pub fn insert_new(
        &mut self,
        k: &ApiKeyConfig,
        stores: &HashMap<&str, StoreId>,
        store_count: usize,
    ) -> Result<(), ConfigError> {
        let id = id_digest(&k.key_id);
        if self.by_id.contains_key(&id) {
            return Err(ConfigError::Invalid(format!(
                "apiKeys: keyId {:?} is used twice",
                k.key_id
            )));
        }
        let key = compile_key(k, stores, store_count).map_err(|e| refused(k, e))?;
        let previous = key.previous;
        let spent = key.spent_until;
        let owner = k.owner.as_deref().unwrap_or_default();
        let len = Lens::new("apikey:".len() + k.name.len(), owner.len());
        let text = ["apikey:", &k.name, owner];
        self.push(
            (id, k.lookup_hash.0, len),
            &text,
            key.expires_at,
            key.grants,
        );
        if let Some(until) = spent {
            self.spent.insert(self.slots.len() as u32 - 1, until);
        }
        if let Some((hash, until)) = previous {
            self.push_previous(id, hash, until);
        }
        Ok(())
    }

    /// An empty table for a key service that has not answered yet.
    pub fn awaiting_sync(freshness: Arc<Freshness>) -> KeyTable {
        KeyTable {
            freshness: Some(freshness),
            ..KeyTable::default()
        }
    }

    /// The table after a key-service answer, as a new table: the snapshot, or a copy of this
    /// one with the deltas applied (O(table): for when a request still holds this one; else
    /// use [`KeyTable::apply_in_place`]). A key the filter cannot compile fails the answer.
    pub fn apply(&self, answer: Incoming) -> KeyTable {
        let mut next = if answer.snapshot {
            KeyTable {
                freshness: self.freshness.clone(),
                ..KeyTable::default()
            }
        } else {
            self.clone()
        };
        next.apply_in_place(answer);
        next
    }

    /// Applies a key-service answer, already compiled whole ([`Incoming`]: a key the filter
    /// cannot compile failed it before anything changed): a snapshot replaces this table,
    /// deltas change it in O(changes). The caller swaps the table as one (the wasm VM runs
    /// nothing else meanwhile).
    pub fn apply_in_place(&mut self, answer: Incoming) {
        if answer.snapshot {
            let freshness = self.freshness.take();
            *self = answer.keys;
            self.freshness = freshness;
        } else {
            for id in &answer.removed {
                self.remove(&id_digest(id));
            }
            self.merge(answer.keys);
            self.compact();
        }
        self.revision = Some(answer.revision.into());
    }

    /// Adds every key of `other` (replacing those of the same keyId).
    fn merge(&mut self, other: KeyTable) {
        let hashes: HashMap<u32, [u8; 32]> = other.by_hash.iter().map(|(h, i)| (*i, *h)).collect();
        for (id, i) in &other.by_id {
            let s = &other.slots[*i as usize];
            let (Some(hash), true) = (hashes.get(i), s.start != DEAD) else {
                continue;
            };
            let text = other.arena.get(s.start, s.len.total());
            let expires_at = (s.expires_at != i64::MAX).then_some(s.expires_at);
            let key = (*id, *hash, s.len);
            self.push(key, &[text], expires_at, KeyGrants::clone(&s.grants));
            if let Some(&until) = other.spent.get(i) {
                self.spent.insert(self.slots.len() as u32 - 1, until);
            }
            let previous = other.previous.get(id).map(|j| &other.slots[*j as usize]);
            if let (Some(p), Some(hash)) = (
                previous.filter(|p| p.start != DEAD),
                other.previous.get(id).and_then(|j| hashes.get(j)),
            ) {
                self.push_previous(*id, *hash, p.expires_at);
            }
        }
    }

    /// Adds the previous token of the key just pushed with keyId digest `id`: a slot sharing
    /// its name, owner and grants that expires at `until`.
    fn push_previous(&mut self, id: [u8; 8], hash: [u8; 32], until: i64) {
        let Some(&main) = self.by_id.get(&id) else {
            return;
        };
        let mut slot = self.slots[main as usize].clone();
        // Its own copy of the text, so removing either slot frees exactly what it held.
        let text = self.arena.get(slot.start, slot.len.total()).to_owned();
        (slot.start, _) = self.arena.push(&[&text]);
        slot.expires_at = until;
        let i = self.slots.len() as u32;
        self.slots.push(slot);
        if let Some(&until) = self.spent.get(&main) {
            self.spent.insert(i, until);
        }
        if let Some(old) = self.previous.insert(id, i) {
            self.kill(old as usize);
        }
        self.by_hash.insert(hash, i);
    }

    /// Adds a key (keyId digest, token digest, the lengths of its texts; the texts, in order);
    /// one with the same keyId is replaced.
    fn push(
        &mut self,
        (id, hash, len): ([u8; 8], [u8; 32], Lens),
        text: &[&str],
        expires_at: Option<i64>,
        grants: KeyGrants,
    ) {
        let grants = match self.interned.get(&grants) {
            Some(g) => Arc::clone(g),
            None => {
                let g = Arc::new(grants);
                self.interned.insert(Arc::clone(&g));
                g
            }
        };
        let (start, _) = self.arena.push(text);
        let i = self.slots.len() as u32;
        self.slots.push(Slot {
            start,
            len,
            expires_at: expires_at.unwrap_or(i64::MAX),
            grants,
        });
        if let Some(old) = self.by_id.insert(id, i) {
            self.kill(old as usize);
        }
        // A key replaced without a previous token ends any overlap it had.
        if let Some(old) = self.previous.remove(&id) {
            self.kill(old as usize);
        }
        self.by_hash.insert(hash, i);
    }

    /// Removes the key with this keyId digest, if any: O(1).
    fn remove(&mut self, id: &[u8; 8]) {
        if let Some(slot) = self.by_id.remove(id) {
            self.kill(slot as usize);
        }
        if let Some(slot) = self.previous.remove(id) {
            self.kill(slot as usize);
        }
    }

    /// Marks a slot dead: its token digest no longer answers (see [`KeyTable::lookup`]).
    fn kill(&mut self, slot: usize) {
        self.spent.remove(&(slot as u32));
        let s = &mut self.slots[slot];
        if s.start != DEAD {
            self.garbage += s.len.total();
            s.start = DEAD;
            s.len = Lens(0);
            self.dead += 1;
        }
    }

    /// Rewrites the table without its dead slots once they are half of it (so the O(n)
    /// rewrite is paid for by the n/2 removals before it), and forgets grants no key uses.
    fn compact(&mut self) {
        if self.dead * 2 <= self.slots.len() && self.garbage * 2 <= self.arena.len {
            return;
        }
        let live = self.slots.len() - self.dead;
        let mut remap = vec![DEAD; self.slots.len()];
        let mut slots = Vec::with_capacity(live);
        let mut arena = Arena::default();
        for (i, mut s) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            if s.start == DEAD {
                continue;
            }
            (s.start, _) = arena.push(&[self.arena.get(s.start, s.len.total())]);
            remap[i] = slots.len() as u32;
            slots.push(s);
        }
        let moved = |j: &mut u32| {
            let to = remap[*j as usize];
            *j = to;
            to != DEAD
        };
        self.by_hash.retain(|_, j| moved(j));
        self.by_id.retain(|_, j| moved(j));
        self.previous.retain(|_, j| moved(j));
        self.spent = std::mem::take(&mut self.spent)
            .into_iter()
            .filter_map(|(mut j, until)| moved(&mut j).then_some((j, until)))
            .collect();
        self.by_hash.shrink_to_fit();
        self.by_id.shrink_to_fit();
        self.slots = slots;
        self.arena = arena;
        self.garbage = 0;
        self.dead = 0;
        self.interned.retain(|g| Arc::strong_count(g) > 1);
    }

    /// The key a token digest belongs to (never a removed one).
    pub fn lookup(&self, hash: &[u8; 32]) -> Option<usize> {
        let i = *self.by_hash.get(hash)? as usize;
        (self.slots[i].start != DEAD).then_some(i)
    }

    /// The key in slot `k` (from [`KeyTable::lookup`]). Panics on an index this table never
    /// gave out.
    pub fn key(&self, k: usize) -> KeyRef<'_> {
        let s = &self.slots[k];
        let text = self.arena.get(s.start, s.len.total());
        let (principal, owner) = text.split_at(s.len.principal());
        KeyRef {
            principal,
            owner: (!owner.is_empty()).then_some(owner),
            expires_at: (s.expires_at != i64::MAX).then_some(s.expires_at),
            grants: &s.grants,
        }
    }

    /// The key in slot `k`, if any (none for a removed key's slot).
    pub fn get(&self, k: usize) -> Option<KeyRef<'_>> {
        (k < self.slots.len() && self.slots[k].start != DEAD).then(|| self.key(k))
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

    /// Until when (Unix seconds) key `k` is refused for a spent quota, if it spent one.
    pub fn spent_until(&self, k: usize) -> Option<i64> {
        if self.spent.is_empty() {
            return None;
        }
        u32::try_from(k)
            .ok()
            .and_then(|k| self.spent.get(&k).copied())
    }

    /// Number of keys (a rotated key's previous token is not one more).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
