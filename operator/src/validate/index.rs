//! Index verdicts: the upstream namespace each routes, its store, and conflicts (the older wins).

use super::*;

pub(super) fn validate_indexes(
    indexes: &[&Index],
    stores: &[Verdict<ValidStore>],
    now: i64,
) -> Vec<Verdict<(String, String)>> {
    let default = stores
        .iter()
        .filter_map(|s| s.valid.as_ref())
        .find(|s| s.default)
        .map(|s| s.name.clone());
    // The older Index (creationTimestamp, then name) wins a contested namespace.
    let mut order: Vec<&Index> = indexes.to_vec();
    order.sort_by_key(|i| (created_at(&i.metadata, now), i.metadata.name.clone()));
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    order
        .into_iter()
        .map(|i| {
            let name = i.metadata.name.clone().unwrap_or_default();
            let generation = i.metadata.generation;
            let verdict = |ok, r: &str, m: String, valid| Verdict {
                name: name.clone(),
                conditions: vec![condition(conditions::READY, ok, r, m, generation, now)],
                valid,
            };
            let upstream = i.spec.backend.namespace.clone().unwrap_or_else(|| name.clone());
            if !valid_namespace(&upstream) {
                return verdict(false, reason::INVALID_NAMESPACE, format!("upstream namespace {upstream:?} must be 1-128 characters of A-Z a-z 0-9 _ - ."), None);
            }
            let store = match &i.spec.backend.store_ref {
                Some(s) if stores.iter().any(|v| v.name == *s && v.valid.is_some()) => s.clone(),
                Some(s) => return verdict(false, reason::STORE_NOT_FOUND, format!("backend.storeRef {s:?} is not a valid VectorStore in this namespace"), None),
                None => match &default {
                    Some(d) => d.clone(),
                    None => return verdict(false, reason::STORE_NOT_FOUND, "no backend.storeRef and no default VectorStore".into(), None),
                },
            };
            if let Some(winner) = owners.get(&upstream) {
                return verdict(false, reason::CONFLICT, format!("Index {winner:?} already routes namespace {upstream:?}; it is older, so it wins"), None);
            }
            owners.insert(upstream.clone(), name.clone());
            verdict(true, reason::VALID, format!("namespace {upstream:?} is served by store {store:?}"), Some((upstream, store)))
        })
        .collect()
}
