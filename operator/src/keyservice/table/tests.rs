//! The table against a model: revisions from scratch, deltas, changes between key lists,
//! and the revision sum's arithmetic.

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
