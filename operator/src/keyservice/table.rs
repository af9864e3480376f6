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
