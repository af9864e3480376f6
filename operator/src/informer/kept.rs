//! What a cache keeps of each kind ([`Cached`]): a custom resource without its
//! `managedFields`, a Secret only as what a pass reads of it ([`CachedSecret`]).

use super::{Cache, Caches};
use crate::crd::{ApiKey, Index, VectorStore};
use crate::keys;
use crate::manifests::SecretMarks;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a pass needs of a Secret, and the `resourceVersion` it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedSecret {
    /// Values that are UTF-8 text, by key (shared with the passes that read them).
    pub data: Arc<BTreeMap<String, String>>,
    /// The minted-at annotation, in Unix seconds.
    pub minted_at: Option<i64>,
    /// What may make it an ApiKey's token.
    pub marks: SecretMarks,
    /// What it records of its key's rotations.
    pub rotation: Option<keys::Rotation>,
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
        let rotation = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(keys::Rotation::of);
        CachedSecret {
            marks: SecretMarks::of(&secret.metadata),
            rotation,
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
    /// What besides a new generation asks for a pass: an ApiKey's `hevlayer.com/rotate`
    /// annotation (annotations do not move the generation).
    fn asks(_kept: &Self::Kept) -> Option<&str> {
        None
    }
    /// A status field that asks for a pass on every replica: an ApiKey's
    /// `status.quotaSpentUntil`, which the leader writes when the key spends a quota.
    fn marked(_kept: &Self::Kept) -> Option<&str> {
        None
    }
    /// This kind's cache.
    fn cache(caches: &Caches) -> &Cache<Self::Kept>;
}

macro_rules! cached_cr {
    ($t:ty, $kind:literal, $field:ident $(, $marked:path)?) => {
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
            fn asks(kept: &$t) -> Option<&str> {
                kept.metadata
                    .annotations
                    .as_ref()?
                    .get(keys::ROTATE_ANNOTATION)
                    .map(String::as_str)
            }
            fn cache(caches: &Caches) -> &Cache<$t> {
                &caches.$field
            }
            $(
                fn marked(kept: &$t) -> Option<&str> {
                    $marked(kept)
                }
            )?
        }
    };
}
cached_cr!(VectorStore, "VectorStore", stores);
cached_cr!(Index, "Index", indexes);
cached_cr!(ApiKey, "ApiKey", keys, quota_mark);

/// An ApiKey's `status.quotaSpentUntil`.
fn quota_mark(k: &ApiKey) -> Option<&str> {
    k.status.as_ref()?.observed.quota_spent_until.as_deref()
}

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
