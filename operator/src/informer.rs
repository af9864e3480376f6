//! Watch-fed caches of what a kube-mode pass reads (issue 12): the namespace's VectorStores,
//! Indexes, ApiKeys and Secrets, each kept by a kube-runtime [`watcher`] (a paged LIST, then
//! a WATCH from that list's resourceVersion; a 410 Gone or a broken watch lists again). A pass
//! reads these maps: no LIST and no GET per pass once they are synced. The same watch events
//! trigger passes ([`Trigger`]); there is no second set of watches.
//!
//! - Sync: a pass waits (bounded) for every cache's first full list before it reads.
//! - Relist: the objects of a new list replace the map as a whole when the list is done, so
//!   an object deleted while the watch was broken leaves the cache.
//! - Read-your-writes: what this replica writes (a minted Secret, a status, a revocation) is
//!   merged into its cache from the API server's answer, so the very next pass sees it even
//!   before the watch delivers it. A merge never brings back an object the watch saw deleted
//!   (its uid is remembered) and never replaces a newer version the watch already delivered.
//! - Order: the maps are by name, and passes still sort by name (what a real list gives).
//! - Memory: custom resources are kept without `managedFields`; Secrets only as what a pass
//!   needs ([`CachedSecret`]: text values, minted-at, token marks), not as objects.

use crate::crd::{ApiKey, Index, VectorStore};
use crate::keys;
use crate::manifests::SecretMarks;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Objects per LIST call of a (re)list: large collections are read a page at a time, as the
/// API server prefers, following its `continue` token.
pub const LIST_PAGE: u32 = 500;

/// How long a pass waits for the caches' first sync before it fails its read step (and is
/// retried with backoff). The controller itself runs its first pass only once they are
/// synced; this bounds passes started before that (the control API's, a test's).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(3);

/// Something that should cause a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A CR of this kind appeared, disappeared or moved to a new generation, or its cache
    /// listed again.
    Object(&'static str),
    /// A Secret changed.
    Secret(String),
}

/// What a pass needs of a Secret, and the `resourceVersion` it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedSecret {
    /// Values that are UTF-8 text, by key (shared with the passes that read them).
    pub data: Arc<BTreeMap<String, String>>,
    /// The minted-at annotation, in Unix seconds.
    pub minted_at: Option<i64>,
    /// What may make it an ApiKey's token.
    pub marks: SecretMarks,
    /// A key whose value is not UTF-8 (the Secret is then its referrers' condition).
    pub not_text: Option<String>,
}

impl CachedSecret {
    /// The parts of `secret` a pass reads.
    pub fn of(secret: Secret) -> CachedSecret {
        let mut data: BTreeMap<String, String> = BTreeMap::new();
        let mut not_text = None;
        for (k, v) in secret.data.unwrap_or_default() {
            match String::from_utf8(v.0) {
                Ok(text) => {
                    data.insert(k, text);
                }
                Err(_) => not_text = Some(k),
            }
        }
        // stringData is write-only on a real API server; stand-ins may keep it.
        data.extend(secret.string_data.unwrap_or_default());
        let minted_at = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(keys::MINTED_AT_ANNOTATION))
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|t| t.as_second());
        CachedSecret {
            marks: SecretMarks::of(&secret.metadata),
            data: Arc::new(data),
            minted_at,
            not_text,
        }
    }
}

/// An object as a cache keeps it.
pub trait Cached: Resource<DynamicType = ()> + Clone + Send + Sync + 'static {
    /// What is kept of it.
    type Kept: Clone + Send + Sync + 'static;
    /// Its kind, for triggers and logs.
    const KIND: &'static str;
    /// What is kept of `self`.
    fn keep(self) -> Self::Kept;
    /// The generation of a kept object (None: every change counts).
    fn generation(kept: &Self::Kept) -> Option<i64>;
    /// This kind's cache.
    fn cache(caches: &Caches) -> &Cache<Self::Kept>;
}

macro_rules! cached_cr {
    ($t:ty, $kind:literal, $field:ident) => {
        impl Cached for $t {
            type Kept = $t;
            const KIND: &'static str = $kind;
            fn keep(mut self) -> $t {
                self.metadata.managed_fields = None;
                self
            }
            fn generation(kept: &$t) -> Option<i64> {
                kept.metadata.generation
            }
            fn cache(caches: &Caches) -> &Cache<$t> {
                &caches.$field
            }
        }
    };
}
cached_cr!(VectorStore, "VectorStore", stores);
cached_cr!(Index, "Index", indexes);
cached_cr!(ApiKey, "ApiKey", keys);

impl Cached for Secret {
    type Kept = CachedSecret;
    const KIND: &'static str = "Secret";
    fn keep(self) -> CachedSecret {
        CachedSecret::of(self)
    }
    fn generation(_: &CachedSecret) -> Option<i64> {
        None
    }
    fn cache(caches: &Caches) -> &Cache<CachedSecret> {
        &caches.secrets
    }
}

#[derive(Clone)]
struct Entry<T> {
    uid: String,
    version: String,
    /// Shared with the passes that read it: a pass takes objects without copying them, and
    /// an object that did not change is the same allocation in two passes.
    value: Arc<T>,
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

    async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The watch's object; returns the one it replaces. The version already cached (this
    /// replica's own write, merged from the API server's answer, coming back through the
    /// watch) is kept as it is: the same object, so passes see it unchanged.
    fn apply(&self, name: String, uid: String, version: String, value: Arc<T>) -> Option<Arc<T>> {
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
    fn remove(&self, name: &str, uid: String) -> bool {
        let mut s = self.write();
        s.deleted.insert(uid);
        s.items.remove(name).is_some()
    }

    /// A full list: replaces everything. An object listed at the version already cached
    /// stays the same object, so passes see it unchanged.
    fn replace(&self, mut items: BTreeMap<String, Entry<T>>) {
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

/// The four caches of one namespace, and the triggers their watches send.
pub struct Caches {
    /// VectorStores.
    pub stores: Cache<VectorStore>,
    /// Indexes.
    pub indexes: Cache<Index>,
    /// ApiKeys.
    pub keys: Cache<ApiKey>,
    /// Secrets, as a pass needs them.
    pub secrets: Cache<CachedSecret>,
    triggers: Mutex<Option<mpsc::Receiver<Trigger>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Caches {
    /// Starts the four watches of `namespace` with `client` (one without a read timeout:
    /// [`crate::kubeclient::for_watches`]). Call from inside a Tokio runtime.
    pub fn start(client: Client, namespace: &str) -> Arc<Caches> {
        let (tx, rx) = mpsc::channel(256);
        let caches = Arc::new(Caches {
            stores: Cache::default(),
            indexes: Cache::default(),
            keys: Cache::default(),
            secrets: Cache::default(),
            triggers: Mutex::new(Some(rx)),
            tasks: Mutex::new(Vec::new()),
        });
        let tasks = vec![
            spawn::<VectorStore>(
                Api::namespaced(client.clone(), namespace),
                &caches,
                tx.clone(),
            ),
            spawn::<Index>(
                Api::namespaced(client.clone(), namespace),
                &caches,
                tx.clone(),
            ),
            spawn::<ApiKey>(
                Api::namespaced(client.clone(), namespace),
                &caches,
                tx.clone(),
            ),
            spawn::<Secret>(Api::namespaced(client, namespace), &caches, tx),
        ];
        *caches.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        caches
    }

    /// The watches' triggers (once: the controller takes them).
    pub fn take_triggers(&self) -> Option<mpsc::Receiver<Trigger>> {
        self.triggers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// True once every cache holds its first full list.
    pub fn is_synced(&self) -> bool {
        self.stores.is_synced()
            && self.indexes.is_synced()
            && self.keys.is_synced()
            && self.secrets.is_synced()
    }

    /// Waits until every cache holds its first full list.
    pub async fn synced(&self) {
        self.stores.wait_synced().await;
        self.indexes.wait_synced().await;
        self.keys.wait_synced().await;
        self.secrets.wait_synced().await;
    }

    /// Waits until every cache holds its first full list, at most `bound`; false if it did
    /// not happen in time.
    pub async fn synced_within(&self, bound: Duration) -> bool {
        tokio::time::timeout(bound, self.synced()).await.is_ok()
    }

    /// Merges this replica's own write of `obj` (the API server's answer) into its cache;
    /// returns what the cache holds for it now ([`Cache::merge`]).
    pub fn merge<K: Cached>(&self, obj: K) -> Option<Arc<K::Kept>> {
        let (Some(name), Some(uid), Some(version)) = (
            obj.meta().name.clone(),
            obj.meta().uid.clone(),
            obj.meta().resource_version.clone(),
        ) else {
            return None;
        };
        K::cache(self).merge(&name, &uid, &version, obj.keep())
    }

    /// Name → resourceVersion of every cached object, by kind (health and tests: how far
    /// each cache has come).
    pub fn versions(&self) -> BTreeMap<&'static str, BTreeMap<String, String>> {
        BTreeMap::from([
            (VectorStore::KIND, self.stores.versions()),
            (Index::KIND, self.indexes.versions()),
            (ApiKey::KIND, self.keys.versions()),
            (Secret::KIND, self.secrets.versions()),
        ])
    }
}

impl Drop for Caches {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

fn spawn<K>(
    api: Api<K>,
    caches: &Arc<Caches>,
    tx: mpsc::Sender<Trigger>,
) -> tokio::task::JoinHandle<()>
where
    K: Cached + serde::de::DeserializeOwned + std::fmt::Debug,
{
    // The task holds the caches weakly: dropping the last Cluster ends its watches.
    let weak = Arc::downgrade(caches);
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default().page_size(LIST_PAGE))
            .default_backoff()
            .boxed();
        let mut listing: Option<BTreeMap<String, Entry<K::Kept>>> = None;
        while let Some(event) = stream.next().await {
            let Some(caches) = weak.upgrade() else {
                return;
            };
            let cache = K::cache(&caches);
            let fire = match event {
                Ok(Event::Init) => {
                    listing = Some(BTreeMap::new());
                    None
                }
                Ok(Event::InitApply(o)) => {
                    if let (Some(list), Some((name, entry))) = (listing.as_mut(), entry_of(o)) {
                        list.insert(name, entry);
                    }
                    None
                }
                Ok(Event::InitDone) => {
                    cache.replace(listing.take().unwrap_or_default());
                    tracing::debug!(kind = K::KIND, objects = cache.len(), "cache listed");
                    Some(Trigger::Object(K::KIND))
                }
                Ok(Event::Apply(o)) => entry_of(o).and_then(|(name, e)| {
                    let generation = K::generation(&e.value);
                    let old = cache.apply(name.clone(), e.uid, e.version, e.value);
                    if K::KIND == Secret::KIND {
                        Some(Trigger::Secret(name))
                    } else {
                        // The operator's own status writes do not move the generation.
                        let moved = old.is_none_or(|o| K::generation(&o) != generation);
                        moved.then_some(Trigger::Object(K::KIND))
                    }
                }),
                Ok(Event::Delete(o)) => {
                    let name = o.name_any();
                    let uid = o.meta().uid.clone().unwrap_or_default();
                    cache.remove(&name, uid);
                    Some(if K::KIND == Secret::KIND {
                        Trigger::Secret(name)
                    } else {
                        Trigger::Object(K::KIND)
                    })
                }
                Err(e) => {
                    tracing::warn!(kind = K::KIND, "watch: {e}");
                    None
                }
            };
            drop(caches);
            // A full queue already holds a trigger: the pass it causes reads everything.
            if let Some(t) = fire {
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(t) {
                    // Nobody takes triggers (a Cluster without a controller): keep caching.
                }
            }
        }
    })
}

fn entry_of<K: Cached>(o: K) -> Option<(String, Entry<K::Kept>)> {
    let name = o.meta().name.clone()?;
    let uid = o.meta().uid.clone().unwrap_or_default();
    let version = o.meta().resource_version.clone().unwrap_or_default();
    Some((
        name,
        Entry {
            uid,
            version,
            value: Arc::new(o.keep()),
        },
    ))
}
