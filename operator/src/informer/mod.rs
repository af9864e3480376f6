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
//!
//! The rooms: this file (the four caches of a namespace, their watch tasks and triggers),
//! `cache` (one kind's map and its merge rules), `kept` (what is kept of each kind).

mod cache;
mod kept;

pub use self::cache::Cache;
pub use self::kept::{Cached, CachedSecret};

use self::cache::Entry;
use crate::crd::{ApiKey, Index, VectorStore};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
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
                    let asks = K::asks(&e.value).map(str::to_owned);
                    let marked = K::marked(&e.value).map(str::to_owned);
                    let old = cache.apply(name.clone(), e.uid, e.version, e.value);
                    if K::KIND == Secret::KIND {
                        Some(Trigger::Secret(name))
                    } else {
                        // The operator's own status writes do not move the generation.
                        let moved = old.is_none_or(|o| {
                            K::generation(&o) != generation
                                || K::asks(&o) != asks.as_deref()
                                || K::marked(&o) != marked.as_deref()
                        });
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
