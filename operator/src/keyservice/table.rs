//! The key service's table: every usable key with its JSON serialized once, the revision
//! accumulated a change at a time, an Arc-shared base with a small overlay of recent changes,
//! and the history deltas are answered from.

use super::*;

/// One key of the table: its configuration, its JSON (serialized once) and that JSON's
/// SHA-512 (what the revision is accumulated from).
#[derive(Debug)]
struct Entry {
    key: ApiKeyConfig,
    json: Bytes,
    digest: [u8; 64],
}

impl Entry {
    fn of(key: ApiKeyConfig) -> Entry {
        let json = serde_json::to_vec(&key).unwrap_or_default();
        Entry {
            digest: Sha512::digest(&json).into(),
            json: Bytes::from(json),
            key,
        }
    }
}

/// The revision's accumulator: the sum, modulo 2^512, of every key's SHA-512 digest (read as
/// a little-endian number), with the number of keys. A sum does not depend on the order the
/// keys were added or removed in, so a table updated one change at a time names the same
/// revision as one built from scratch over the same keys (on any replica), and a change costs
/// one addition or subtraction. (Not XOR: a key set is a set of distinct `keyId`s, but XOR is
/// linear over GF(2), so colliding sets could be solved for by Gaussian elimination; a sum
/// modulo 2^512 has no such shortcut at these sizes.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sum {
    limbs: [u64; 8],
    count: u64,
}

impl Sum {
    fn limbs(digest: &[u8; 64]) -> [u64; 8] {
        let mut out = [0u64; 8];
        for (limb, bytes) in out.iter_mut().zip(digest.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            *limb = u64::from_le_bytes(b);
        }
        out
    }

    fn add(&mut self, digest: &[u8; 64]) {
        let mut carry = false;
        for (a, b) in self.limbs.iter_mut().zip(Sum::limbs(digest)) {
            let (s, c1) = a.overflowing_add(b);
            let (s, c2) = s.overflowing_add(u64::from(carry));
            *a = s;
            carry = c1 || c2;
        }
        self.count = self.count.wrapping_add(1);
    }

    fn sub(&mut self, digest: &[u8; 64]) {
        let mut borrow = false;
        for (a, b) in self.limbs.iter_mut().zip(Sum::limbs(digest)) {
            let (d, b1) = a.overflowing_sub(b);
            let (d, b2) = d.overflowing_sub(u64::from(borrow));
            *a = d;
            borrow = b1 || b2;
        }
        self.count = self.count.wrapping_sub(1);
    }

    /// `sha256:<hex>` of a domain label, the count and the sum.
    fn revision(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"layergate key set v2\0");
        h.update(self.count.to_le_bytes());
        for limb in self.limbs {
            h.update(limb.to_le_bytes());
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

/// The keys of a table, sorted by `keyId`.
type Keys = BTreeMap<Arc<str>, Arc<Entry>>;

/// The keys changed since [`Table::base`]: an entry, or `None` when removed.
type Overlay = BTreeMap<Arc<str>, Option<Arc<Entry>>>;

/// The smallest overlay folded into a new base; larger tables fold theirs at
/// 1/[`FOLD_FRACTION`] of their size, so the copy a fold makes costs each change at most
/// [`FOLD_FRACTION`] entries, amortized.
const FOLD_AT_LEAST: usize = 256;

/// See [`FOLD_AT_LEAST`].
const FOLD_FRACTION: usize = 32;

/// One change handed to [`KeyService::apply`]: keys added or changed (by `keyId`) and the
/// `keyId`s removed.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Keys added, or replacing the key of the same `keyId`.
    pub upsert: Vec<ApiKeyConfig>,
    /// `keyId`s no longer served (unknown ones are ignored).
    pub remove: Vec<String>,
}

impl Change {
    /// What turns the key set `old` into `new` (each with unique `keyId`s, as a pass's
    /// usable keys are). Two passes list their keys in the same order, so the lists are
    /// walked side by side, comparing neighbours: a key added or removed shifts the walk by
    /// one; anything else (a reordering) is matched by `keyId` for the rest of the lists.
    pub fn between(old: &[ApiKeyConfig], new: &[ApiKeyConfig]) -> Change {
        let mut change = Change::default();
        let (mut i, mut j) = (0, 0);
        while i < old.len() && j < new.len() {
            let (o, n) = (&old[i], &new[j]);
            if o.key_id == n.key_id {
                if o != n {
                    change.upsert.push(n.clone());
                }
                i += 1;
                j += 1;
            } else if old.get(i + 1).is_some_and(|o| o.key_id == n.key_id) {
                change.remove.push(o.key_id.clone());
                i += 1;
            } else if new.get(j + 1).is_some_and(|n| n.key_id == o.key_id) {
                change.upsert.push(n.clone());
                j += 1;
            } else {
                break;
            }
        }
        let rest: std::collections::HashMap<&str, &ApiKeyConfig> =
            old[i..].iter().map(|k| (k.key_id.as_str(), k)).collect();
        let mut seen = std::collections::HashSet::new();
        for n in &new[j..] {
            seen.insert(n.key_id.as_str());
            if rest.get(n.key_id.as_str()) != Some(&n) {
                change.upsert.push(n.clone());
            }
        }
        change.remove.extend(
            old[i..]
                .iter()
                .filter(|o| !seen.contains(o.key_id.as_str()))
                .map(|o| o.key_id.clone()),
        );
        // A key the walk took for removed that turns up further on (a reordering) stays.
        let upserted: std::collections::HashSet<&str> =
            change.upsert.iter().map(|k| k.key_id.as_str()).collect();
        change.remove.retain(|id| !upserted.contains(id.as_str()));
        change
    }
}

/// The key set of one revision.
///
/// A table is a shared base map plus a small overlay of the changes since it, so the next
/// revision's table shares every unchanged entry with this one (readers holding this table
/// keep theirs) and costs what changed; the overlay is folded into a new base when it reaches
/// 1/[`FOLD_FRACTION`] of the keys.
#[derive(Debug, Default)]
pub struct Table {
    /// The revision: `sha256:<hex>` over the number of keys and the sum of their JSON's
    /// SHA-512s ([`Sum`]): the same key set names the same revision however it was reached.
    pub revision: String,
    sum: Sum,
    len: usize,
    base: Arc<Keys>,
    overlay: Arc<Overlay>,
    /// Past revisions, oldest first, each with the `keyId`s changed since it up to the next
    /// revision.
    history: VecDeque<(String, Arc<BTreeSet<Arc<str>>>)>,
    snapshot: Mutex<Option<Bytes>>,
}

impl Table {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get(&self, id: &str) -> Option<&Arc<Entry>> {
        match self.overlay.get(id) {
            Some(e) => e.as_ref(),
            None => self.base.get(id),
        }
    }

    /// Every key, sorted by `keyId`: the base merged with the overlay.
    fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        let mut base = self.base.iter().peekable();
        let mut overlay = self.overlay.iter().peekable();
        std::iter::from_fn(move || loop {
            let next_base = base.peek().map(|(id, _)| *id);
            let next_over = overlay.peek().map(|(id, _)| *id);
            match (next_base, next_over) {
                (None, None) => return None,
                (Some(b), Some(o)) if b < o => return base.next().map(|(_, e)| e),
                (Some(_), None) => return base.next().map(|(_, e)| e),
                (b, Some(o)) => {
                    if b == Some(o) {
                        base.next();
                    }
                    if let Some((_, Some(e))) = overlay.next() {
                        return Some(e);
                    }
                }
            }
        })
    }

    /// The table after `change` (a `keyId` both upserted and removed is removed; upserted
    /// twice: the last copy counts), or `None` when the key set stays the same. Costs what
    /// changed (plus, now and then, a fold).
    pub(super) fn apply(&self, change: Change) -> Option<Table> {
        let removed: BTreeSet<&str> = change.remove.iter().map(String::as_str).collect();
        let mut touched: BTreeMap<Arc<str>, Option<Arc<Entry>>> = BTreeMap::new();
        for k in change.upsert {
            if removed.contains(k.key_id.as_str()) {
                continue;
            }
            let id: Arc<str> = Arc::from(k.key_id.as_str());
            if self.get(&id).is_some_and(|e| e.key == k) {
                touched.remove(&id);
            } else {
                touched.insert(id, Some(Arc::new(Entry::of(k))));
            }
        }
        for id in removed {
            if self.get(id).is_some() {
                touched.insert(Arc::from(id), None);
            }
        }
        if touched.is_empty() && !self.revision.is_empty() {
            return None;
        }
        let (mut sum, mut len) = (self.sum, self.len);
        let mut overlay = (!touched.is_empty()).then(|| (*self.overlay).clone());
        let mut changed = BTreeSet::new();
        for (id, to) in touched {
            if let Some(was) = self.get(&id) {
                sum.sub(&was.digest);
                len -= 1;
            }
            if let Some(to) = &to {
                sum.add(&to.digest);
                len += 1;
            }
            changed.insert(id.clone());
            if let Some(o) = overlay.as_mut() {
                o.insert(id, to);
            }
        }
        let mut next = Table {
            revision: sum.revision(),
            sum,
            len,
            base: self.base.clone(),
            overlay: overlay.map_or_else(|| self.overlay.clone(), Arc::new),
            history: VecDeque::new(),
            snapshot: Mutex::new(None),
        };
        if next.revision == self.revision {
            return None;
        }
        if !self.revision.is_empty() {
            next.history.clone_from(&self.history);
            next.history
                .push_back((self.revision.clone(), Arc::new(changed)));
            while next.history.len() > HISTORY {
                next.history.pop_front();
            }
        }
        if next.overlay.len() > FOLD_AT_LEAST.max(next.len / FOLD_FRACTION) {
            next.fold();
        }
        Some(next)
    }

    /// Folds the overlay into a new base.
    fn fold(&mut self) {
        let mut base = (*self.base).clone();
        for (id, e) in self.overlay.iter() {
            match e {
                Some(e) => base.insert(id.clone(), e.clone()),
                None => base.remove(id),
            };
        }
        self.base = Arc::new(base);
        self.overlay = Arc::default();
    }

    /// The change that turns this table's key set into `keys` (the whole set; a repeated
    /// `keyId`: the last copy counts): what was added or changed, and what is gone.
    pub(super) fn diff(&self, keys: &[ApiKeyConfig]) -> Change {
        let mut wanted: std::collections::HashMap<&str, &ApiKeyConfig> =
            std::collections::HashMap::with_capacity(keys.len());
        for k in keys {
            wanted.insert(k.key_id.as_str(), k);
        }
        let mut change = Change::default();
        let mut kept = 0usize;
        for (id, k) in &wanted {
            match self.get(id) {
                Some(e) if e.key == **k => kept += 1,
                Some(_) => {
                    kept += 1;
                    change.upsert.push((*k).clone());
                }
                None => change.upsert.push((*k).clone()),
            }
        }
        // Every key `keys` still has was counted once: some are gone only when fewer were.
        if kept < self.len {
            change.remove = self
                .entries()
                .filter(|e| !wanted.contains_key(e.key.key_id.as_str()))
                .map(|e| e.key.key_id.clone())
                .collect();
        }
        change
    }

    /// What a caller at `since` gets: a snapshot (no or unknown `since`) or the changes.
    pub fn answer(&self, since: Option<&str>) -> Bytes {
        let Some(since) = since else {
            return self.snapshot();
        };
        if since == self.revision {
            return self.delta(&BTreeSet::new());
        }
        let Some(at) = self.history.iter().position(|(r, _)| r == since) else {
            return self.snapshot();
        };
        let mut touched = BTreeSet::new();
        for (_, ids) in self.history.iter().skip(at) {
            touched.extend(ids.iter().map(|id| &**id));
        }
        self.delta(&touched)
    }

    fn snapshot(&self) -> Bytes {
        let mut cached = self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = cached.as_ref() {
            return b.clone();
        }
        let size: usize = self.entries().map(|e| e.json.len() + 1).sum();
        let mut out = Vec::with_capacity(size + 160);
        out.extend_from_slice(b"{\"revision\":\"");
        out.extend_from_slice(self.revision.as_bytes());
        out.extend_from_slice(b"\",\"snapshot\":true,\"keys\":[");
        for (i, e) in self.entries().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&e.json);
        }
        out.extend_from_slice(b"],\"removed\":[]}");
        let b = Bytes::from(out);
        *cached = Some(b.clone());
        b
    }

    fn delta(&self, touched: &BTreeSet<&str>) -> Bytes {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"revision\":\"");
        out.extend_from_slice(self.revision.as_bytes());
        out.extend_from_slice(b"\",\"snapshot\":false,\"keys\":[");
        let mut removed = Vec::new();
        let mut first = true;
        for id in touched {
            match self.get(id) {
                Some(e) => {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(&e.json);
                }
                None => removed.push(*id),
            }
        }
        out.extend_from_slice(b"],\"removed\":");
        out.extend_from_slice(&serde_json::to_vec(&removed).unwrap_or_else(|_| b"[]".to_vec()));
        out.push(b'}');
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests;
