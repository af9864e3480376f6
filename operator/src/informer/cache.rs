//! One kind's objects by name, as the watch last told them ([`Cache`]): a relist replaces the
//! map whole, a watch event changes one entry, and this replica's own writes are merged in
//! without bringing back what the watch saw deleted or replacing a newer version.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};

/// One object as a cache holds it: which object (uid), at which resourceVersion.
#[derive(Clone)]
pub(super) struct Entry<T> {
    pub(super) uid: String,
    pub(super) version: String,
    /// Shared with the passes that read it: a pass takes objects without copying them, and
    /// an object that did not change is the same allocation in two passes.
    pub(super) value: Arc<T>,
}

impl<T> Entry<T> {
    /// True when this is the object `uid` at `version` (an empty version is never known).
    fn is_version(&self, uid: &str, version: &str) -> bool {
        self.uid == uid && self.version == version && !version.is_empty()
    }
}

/// One kind's objects by name, as the watch last told them.
pub struct Cache<T> {
    state: RwLock<State<T>>,
    synced: tokio::sync::watch::Sender<bool>,
}

struct State<T> {
    items: BTreeMap<String, Entry<T>>,
    /// uids the watch saw deleted: a late merge of this replica's own write must not bring
    /// one back.
    deleted: HashSet<String>,
}

/// Whether version `a` is older than `b`. resourceVersions are opaque to clients, but every
/// API server gives etcd revisions (integers); anything else is never called older, so the
/// watch's copy wins.
fn older(a: &str, b: &str) -> bool {
    matches!((a.parse::<u64>(), b.parse::<u64>()), (Ok(a), Ok(b)) if a < b)
}

impl<T: Clone> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            state: RwLock::new(State {
                items: BTreeMap::new(),
                deleted: HashSet::new(),
            }),
            synced: tokio::sync::watch::channel(false).0,
        }
    }
}

impl<T: Clone> Cache<T> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State<T>> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State<T>> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every object, by name (shared, not copied).
    pub fn values(&self) -> Vec<Arc<T>> {
        self.read()
            .items
            .values()
            .map(|e| e.value.clone())
            .collect()
    }

    /// The object `name`.
    pub fn get(&self, name: &str) -> Option<Arc<T>> {
        self.read().items.get(name).map(|e| e.value.clone())
    }

    /// Applies `f` to each object whose name is in `names`.
    pub fn each_of<'a>(
        &self,
        names: impl IntoIterator<Item = &'a String>,
        mut f: impl FnMut(&str, &Arc<T>),
    ) {
        let s = self.read();
        for n in names {
            if let Some(e) = s.items.get(n) {
                f(n, &e.value);
            }
        }
    }

    /// Name → resourceVersion of every object.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.read()
            .items
            .iter()
            .map(|(k, e)| (k.clone(), e.version.clone()))
            .collect()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.read().items.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the first full list is in.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub(super) async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The watch's object; returns the one it replaces. The version already cached (this
    /// replica's own write, merged from the API server's answer, coming back through the
    /// watch) is kept as it is: the same object, so passes see it unchanged.
    pub(super) fn apply(
        &self,
        name: String,
        uid: String,
        version: String,
        value: Arc<T>,
    ) -> Option<Arc<T>> {
        let mut s = self.write();
        if let Some(e) = s.items.get(&name) {
            if e.is_version(&uid, &version) {
                return Some(Arc::clone(&e.value));
            }
        }
        s.items
            .insert(
                name,
                Entry {
                    uid,
                    version,
                    value,
                },
            )
            .map(|e| e.value)
    }

    /// The watch's deletion; true if it was cached.
    pub(super) fn remove(&self, name: &str, uid: String) -> bool {
        let mut s = self.write();
        s.deleted.insert(uid);
        s.items.remove(name).is_some()
    }

    /// A full list: replaces everything. An object listed at the version already cached
    /// stays the same object, so passes see it unchanged.
    pub(super) fn replace(&self, mut items: BTreeMap<String, Entry<T>>) {
        let mut s = self.write();
        for (name, e) in &mut items {
            if let Some(old) = s.items.get(name) {
                if old.is_version(&e.uid, &e.version) {
                    e.value = Arc::clone(&old.value);
                }
            }
        }
        s.items = items;
        s.deleted.clear();
        drop(s);
        self.synced.send_replace(true);
    }

    /// This replica's own write, as the API server answered it (read-your-writes); returns
    /// the object the cache holds for it now. Skipped when the watch already saw this object
    /// deleted (None) or delivered this or a newer version (that one is returned).
    pub fn merge(&self, name: &str, uid: &str, version: &str, value: T) -> Option<Arc<T>> {
        let mut s = self.write();
        if s.deleted.contains(uid) {
            return None;
        }
        if let Some(e) = s.items.get(name) {
            if e.uid == uid && !older(&e.version, version) {
                return Some(Arc::clone(&e.value));
            }
        }
        let value = Arc::new(value);
        s.items.insert(
            name.to_owned(),
            Entry {
                uid: uid.to_owned(),
                version: version.to_owned(),
                value: Arc::clone(&value),
            },
        );
        Some(value)
    }

    /// This replica deleted `name`: it leaves the cache now (and does not come back by a
    /// late merge).
    pub fn forget(&self, name: &str) {
        let mut s = self.write();
        if let Some(e) = s.items.remove(name) {
            s.deleted.insert(e.uid);
        }
    }
}
