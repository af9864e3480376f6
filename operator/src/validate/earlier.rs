//! What did not change since the last pass (kube mode): taken over, not judged again.

use super::*;

/// A pass's identities, for the pass after it to judge again only what changed (kube mode,
/// where an object that did not change is the same shared allocation in both passes).
///
/// An ApiKey is *unchanged* when the last pass judged the same key — this very object
/// ([`Arc::ptr_eq`]), or one that differs only in what a verdict does not read (its status,
/// labels, annotations: same uid, name, creation time, generation and spec) — and nothing
/// about its token Secret changed (data, minted-at, marks, read errors, duplicates). Its
/// verdict then depends only on the stores' names (compared once) and on time: an active key
/// with an expiry is judged again once the expiry is reached, or once it enters the
/// `ExpiringSoon` window, and a key without a creation time (whose lifetime counts from
/// now) always is.
///
/// Its status is *settled* when, besides, the object is the very one whose status the last
/// pass found as written, or wrote ([`crate::source::Pass::settled`]).
pub struct Earlier<'e> {
    pub(super) validation: &'e Validation,
    /// By ApiKey of this pass's objects: (index of the last pass's verdict, index of the
    /// object in the last pass's objects) when it is unchanged.
    unchanged: Vec<Option<(usize, usize)>>,
    /// By index in the last pass's objects: the object whose status is as that pass wanted.
    settled: &'e [Option<Arc<ApiKey>>],
}

impl<'e> Earlier<'e> {
    /// What `now` (this pass's objects) has in common with the last pass (`objects`, judged
    /// as `validation`, with `settled` statuses by object: see [`crate::source::Pass`]) in
    /// `namespace`: one walk of each, each key compared once, with no allocation per
    /// unchanged key.
    pub fn new(
        now: &Objects,
        objects: &'e Objects,
        validation: &'e Validation,
        settled: &'e [Option<Arc<ApiKey>>],
        namespace: &str,
    ) -> Earlier<'e> {
        let in_ns = |k: &Arc<ApiKey>| in_namespace(&k.metadata, namespace);
        let mut last = HashMap::with_capacity(validation.keys.len());
        // Verdicts are in the order of the namespace's keys; the first of a name wins.
        let mut i = 0;
        for (o, k) in objects.keys.iter().enumerate() {
            if !in_ns(k) {
                continue;
            }
            if let Some(name) = k.metadata.name.as_deref() {
                last.entry(name).or_insert((k, i, o));
            }
            i += 1;
        }
        let mut changed_secrets = HashSet::new();
        changed(
            &objects.secrets,
            &now.secrets,
            Arc::ptr_eq,
            &mut changed_secrets,
        );
        changed(
            &objects.minted_at,
            &now.minted_at,
            PartialEq::eq,
            &mut changed_secrets,
        );
        changed(
            &objects.rotations,
            &now.rotations,
            PartialEq::eq,
            &mut changed_secrets,
        );
        changed(
            &objects.secret_marks,
            &now.secret_marks,
            PartialEq::eq,
            &mut changed_secrets,
        );
        changed(
            &objects.secret_errors,
            &now.secret_errors,
            PartialEq::eq,
            &mut changed_secrets,
        );
        changed_secrets.extend(
            objects
                .duplicate_secrets
                .symmetric_difference(&now.duplicate_secrets)
                .cloned(),
        );
        let unchanged = now
            .keys
            .iter()
            .map(|k| {
                let (was, i, o) = last.get(k.metadata.name.as_deref()?)?;
                if !in_ns(k) || !same_key(was, k) {
                    return None;
                }
                let secret_changed = !changed_secrets.is_empty()
                    && changed_secrets.contains(&(namespace.to_owned(), token_source(k).name));
                (!secret_changed).then_some((*i, *o))
            })
            .collect();
        Earlier {
            validation,
            unchanged,
            settled,
        }
    }

    /// The last pass's phase of `k` (this pass's key number `o`) when `k` is unchanged since
    /// and that pass found its status as written (a leader's pass, which had also minted and
    /// adopted what `k` needed) on this very object.
    pub fn settled(&self, o: usize, k: &Arc<ApiKey>) -> Option<ApiKeyPhase> {
        let (i, was) = self.unchanged.get(o).copied().flatten()?;
        if !self
            .settled
            .get(was)?
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, k))
        {
            return None;
        }
        self.validation.phases.get(i).copied()
    }

    /// The last verdict on `k` (this pass's key number `o`) and its phase, when nothing it
    /// depends on can have changed (`expiring_soon`: the window, as [`super::validate_since`]).
    pub(super) fn verdict(
        &self,
        o: usize,
        k: &ApiKey,
        stores_same: bool,
        now: i64,
        expiring_soon: Option<i64>,
    ) -> Option<(&'e Arc<Verdict<ApiKeyConfig>>, ApiKeyPhase)> {
        if !stores_same || k.metadata.creation_timestamp.is_none() {
            return None;
        }
        let (i, _) = self.unchanged.get(o).copied().flatten()?;
        let v = &self.validation.keys[i];
        let expires_at = v
            .valid
            .as_ref()
            .and_then(|c| c.expires_at.as_deref())
            .map(layergate_filter::time::parse_rfc3339);
        let expired = expires_at.is_some_and(|at| at.is_none_or(|at| at <= now));
        // An Active key that entered the window since is judged again (it becomes
        // ExpiringSoon); one in it already stays as judged until it expires. A verdict without
        // the condition (a last valid form carried for an invalid key) has none to turn.
        let window_started = matches!(expires_at, Some(Some(at)) if in_window(at, now, expiring_soon))
            && says_expiring_soon(&v.conditions) == Some(false);
        // A rotation's overlap that ended is dropped by judging the key again.
        let overlap_ended = v
            .valid
            .as_ref()
            .and_then(|c| c.previous.as_ref())
            .is_some_and(|p| {
                layergate_filter::time::parse_rfc3339(&p.until).is_none_or(|at| at <= now)
            });
        if expired || overlap_ended || window_started {
            return None;
        }
        Some((v, *self.validation.phases.get(i)?))
    }
}

/// True when `a` and `b` are the same key as far as a verdict goes: one object, or objects
/// that differ only in what validation does not read (status, labels, annotations, version).
fn same_key(a: &Arc<ApiKey>, b: &Arc<ApiKey>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.metadata.uid == b.metadata.uid
            && a.metadata.name == b.metadata.name
            && a.metadata.namespace == b.metadata.namespace
            && a.metadata.creation_timestamp == b.metadata.creation_timestamp
            && a.metadata.generation == b.metadata.generation
            && a.metadata.deletion_timestamp == b.metadata.deletion_timestamp
            && a.spec == b.spec)
}

/// Adds to `out` every id whose entry differs between `a` and `b` (by `same`), in one walk
/// of both maps side by side.
fn changed<V>(
    a: &BTreeMap<(String, String), V>,
    b: &BTreeMap<(String, String), V>,
    same: impl Fn(&V, &V) -> bool,
    out: &mut HashSet<(String, String)>,
) {
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some((ka, _)), None) => {
                out.insert((*ka).clone());
                a.next();
            }
            (None, Some((kb, _))) => {
                out.insert((*kb).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.insert((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.insert((*kb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !same(va, vb) {
                        out.insert((*ka).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}
