//! Kube mode (`run --source kube`): the same pass as directory mode (validate, keep last valid
//! forms, render, refuse what the filter would refuse), fed by the Kubernetes API. This module
//! is the only one that talks to Kubernetes, and it stays thin: it reads objects, writes the
//! outputs and statuses, and leaves every decision to the pure modules.
//!
//! What a pass writes, and only when it is the leader ([`crate::lease`]):
//! - minted tokens, in Secrets `apikey-<name>` owned by their ApiKey (deleted with it);
//! - the rendering (`cds.json`, `lds.json`, `layergate.json`) in one Secret the gateway
//!   mounts, server-side applied, and only when its data changed; or, for the Istio target
//!   ([`Cluster::with_target`]), the Istio resources in the Istio namespace, the credentials
//!   Secret there and the gateway Deployment's credential digest ([`Cluster::publish_istio`]);
//! - each object's `status`, server-side applied under one field manager, only when it changed;
//! - a Warning Event for each object whose `Ready` turned False for a reason the user must fix,
//!   and for each ApiKey that turned `ExpiringSoon`.
//!
//! Every one of those writes first checks the local "leader until" deadline the elector keeps
//! ([`Cluster::lead_until`]), so a replica whose renewal hangs stops writing mid-pass. One
//! object's broken Secret, unmintable name or refused write is that object's condition; the
//! others, revocations included, still publish.
//!
//! A replica that is not the leader runs the same pass without writing, so its control API
//! answers from the same view.
//!
//! A pass reads the namespace from watch-fed caches ([`crate::informer`]), never by a LIST or
//! a GET of its own once they are synced; what this replica writes is merged into them from
//! the API server's answers, so the next pass sees its own writes.

mod pass;
mod publish;
mod statuses;
mod tokens;
pub mod usage;

use crate::conditions::{reason, EXPIRING_SOON, READY};
use crate::crd::{ApiKey, ApiKeyPhase, Conditioned};
use crate::informer::{Cached, Caches};
use crate::istio;
use crate::keys;
use crate::keyservice;
use crate::manifests::Objects;
use crate::pass::Pass;
use crate::probe::{self, ProbeResult};
use crate::render::{Output, Rendering, Target};
use crate::settings::Settings;
use crate::state::{Source, State};
use crate::status;
use crate::validate::{self, Earlier};
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "layergate-operator";

/// Default name of the Secret holding the rendering (what the gateway Deployment mounts).
pub const DEFAULT_OUTPUT_SECRET: &str = "layergate-gateway-config";

/// Label on every object the operator creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "layergate");

/// Which step of a pass failed: each is backed off on its own, so a failing status write
/// does not delay minting or publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Reading the caches (their first sync) or the gateway credential.
    Read,
    /// Creating token Secrets.
    Mint,
    /// Validating and rendering (a configuration the filter would refuse).
    Render,
    /// Writing the rendering Secret.
    Publish,
    /// Writing statuses and Events.
    Status,
}

/// A failed step.
#[derive(Debug)]
pub struct StepError {
    /// Which step.
    pub step: Step,
    /// Why.
    pub error: anyhow::Error,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {:#}", self.step, self.error)
    }
}

impl std::error::Error for StepError {}

trait AtStep<T> {
    fn at(self, step: Step) -> Result<T, StepError>;
}

impl<T, E: Into<anyhow::Error>> AtStep<T> for Result<T, E> {
    fn at(self, step: Step) -> Result<T, StepError> {
        self.map_err(|e| StepError {
            step,
            error: e.into(),
        })
    }
}

/// What one pass wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Writes {
    /// Token Secrets created.
    pub minted: usize,
    /// True when the rendering changed: the rendering Secret (Envoy target), or any Istio
    /// resource, the credentials Secret or the gateway Deployment (Istio target).
    pub published: bool,
    /// Istio target: resources server-side applied (absent or changed).
    pub applied: usize,
    /// Istio target: managed resources deleted (no longer rendered).
    pub deleted: usize,
    /// Statuses written.
    pub statuses: usize,
    /// Events recorded.
    pub events: usize,
    /// Time spent reading objects and Secrets in this pass: copying them out of the
    /// watch-fed caches (and waiting for their first sync); the rest of the pass is the
    /// operator's own work (validation, rendering, status comparison) and its writes.
    pub read_time: Duration,
}

/// One watched namespace in a cluster.
pub struct Cluster {
    /// The API client.
    pub client: Client,
    /// The namespace watched and rendered.
    pub namespace: String,
    /// Gateway settings (listener, wasm path, control API address).
    pub settings: Settings,
    /// The Secret the rendering goes to (Envoy target).
    pub output_secret: String,
    /// The target rendered and written (Envoy: the output Secret; Istio: resources in the
    /// Istio namespace).
    pub target: Target,
    /// Last pass, probes, counters.
    pub state: State,
    /// Serializes passes (the controller loop and the control API both start them).
    pass_lock: tokio::sync::Mutex<()>,
    /// Until when this replica may write (the lease's local "leader until"; [`crate::lease`]).
    leader_until: std::sync::Mutex<Option<Instant>>,
    /// The runtime the client lives on, for the control API's blocking calls.
    runtime: tokio::runtime::Handle,
    /// The watch-fed caches a pass reads; started by the controller with its watch client
    /// ([`Cluster::start_caches`]) or, on the first pass, with the call client.
    caches: std::sync::OnceLock<Arc<Caches>>,
    /// Records the Warning Events (events.k8s.io/v1), reporting as [`FIELD_MANAGER`] and this
    /// replica's identity ([`Cluster::with_identity`]).
    recorder: Recorder,
    /// Usage status writes a second, at most ([`usage::DEFAULT_USAGE_WRITES_PER_SECOND`]).
    pub usage_writes: usize,
    /// How long before its expiry an Active key is `ExpiringSoon` (seconds; `None`: off;
    /// [`crate::validate::DEFAULT_EXPIRING_SOON`]).
    pub expiring_soon: Option<i64>,
}

/// Objects per LIST call of a cache's (re)list: large collections are read a page at a
/// time, as the API server prefers, following its `continue` token.
pub const LIST_PAGE: u32 = crate::informer::LIST_PAGE;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The Secrets a namespace's objects reference: store credentials, inbound keys and ApiKey
/// tokens (minted or pre-provisioned). Only these are read.
pub fn referenced_secrets(objects: &Objects) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for s in &objects.stores {
        names.insert(s.spec.credential.secret_ref.name.clone());
        for k in s.spec.inbound_auth.iter().flat_map(|a| &a.keys) {
            names.insert(k.secret_ref.name.clone());
        }
    }
    for k in &objects.keys {
        names.insert(
            k.spec
                .token_secret_ref
                .as_ref()
                .map_or_else(|| keys::secret_name(&k.name_any()), |r| r.name.clone()),
        );
    }
    names
}

/// The owner reference that makes Kubernetes delete a token Secret with its ApiKey.
pub fn owner(key: &ApiKey) -> Option<OwnerReference> {
    let mut o = key.controller_owner_ref(&())?;
    o.block_owner_deletion = Some(true);
    Some(o)
}

/// The Event recorder of a cluster: controller [`FIELD_MANAGER`], instance `identity`.
fn recorder(client: &Client, identity: Option<String>) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: identity,
        },
    )
}

/// True when a condition asks the user to act (worth an Event): `Ready` False for a reason
/// the user must fix, or `ExpiringSoon` True (renew the key before it expires).
fn needs_attention(c: &Condition) -> bool {
    let ready_refused = c.type_ == READY
        && c.status == "False"
        && ![reason::NOT_MINTED, reason::REVOKED, reason::EXPIRED].contains(&c.reason.as_str());
    ready_refused || (c.type_ == EXPIRING_SOON && c.status == "True")
}

/// By ApiKey of `objects`: true when the last pass, a leader's, found it active with its
/// status as written, and neither the key nor its token Secret changed since — there is
/// nothing to mint or adopt for it.
fn with_token(objects: &Objects, earlier: Option<&Earlier<'_>>) -> Vec<bool> {
    let Some(e) = earlier else {
        return vec![false; objects.keys.len()];
    };
    objects
        .keys
        .iter()
        .enumerate()
        .map(|(o, k)| e.settled(o, k) == Some(ApiKeyPhase::Active))
        .collect()
}

impl Cluster {
    /// A cluster source for one namespace; call from inside the runtime the client uses.
    pub fn new(
        client: Client,
        namespace: &str,
        settings: Settings,
        output_secret: &str,
    ) -> Cluster {
        Cluster {
            namespace: namespace.to_owned(),
            settings,
            output_secret: output_secret.to_owned(),
            target: Target::Envoy,
            state: State::default(),
            pass_lock: tokio::sync::Mutex::new(()),
            leader_until: std::sync::Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            caches: std::sync::OnceLock::new(),
            recorder: recorder(&client, None),
            client,
            usage_writes: usage::DEFAULT_USAGE_WRITES_PER_SECOND,
            expiring_soon: Some(validate::DEFAULT_EXPIRING_SOON),
        }
    }

    /// Starts the watch-fed caches with `watches` (a client without a read timeout) unless
    /// they run already; returns them. Followers keep them too, so a hand-over needs no
    /// relist.
    pub fn start_caches(&self, watches: Client) -> Arc<Caches> {
        self.caches
            .get_or_init(|| Caches::start(watches, &self.namespace))
            .clone()
    }

    /// The caches (started with the call client if nothing started them yet).
    pub fn caches(&self) -> Arc<Caches> {
        self.start_caches(self.client.clone())
    }

    /// Reports this replica's Events as `identity` (the pod name; the Lease's holder
    /// identity): their `reportingInstance`, which is otherwise [`FIELD_MANAGER`]. The API
    /// server takes at most 128 bytes of it; a longer identity is cut.
    pub fn with_identity(mut self, identity: &str) -> Cluster {
        let instance = statuses::cut(identity, 128).to_owned();
        self.recorder = recorder(&self.client, Some(instance));
        self
    }

    /// Renders and writes `target` instead of the Envoy target. For the Istio target the
    /// control API is the operator's (`settings.control`), through which gateways sync keys.
    pub fn with_target(mut self, target: Target) -> Cluster {
        self.target = match target {
            Target::Istio(mut s) => {
                s.control = self.settings.control.clone();
                Target::Istio(s)
            }
            t => t,
        };
        self
    }

    /// Whether passes write: `true` leads with no deadline (tests, a single replica),
    /// `false` stops at once. The controller uses [`Cluster::lead_until`].
    pub fn set_leader(&self, leader: bool) {
        self.lead_until(leader.then(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400)));
    }

    /// Leads until `deadline` (None: follows). Writes check it, so a replica whose renewal
    /// hangs stops writing at the deadline even while a pass is under way.
    pub fn lead_until(&self, deadline: Option<Instant>) {
        *self.leader_until.lock().unwrap_or_else(|p| p.into_inner()) = deadline;
    }

    /// True while this replica leads (its deadline is in the future).
    pub fn is_leader(&self) -> bool {
        self.leader_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| Instant::now() < t)
    }

    /// Checked before every write: an error once leadership has lapsed.
    fn ensure_leader(&self) -> Result<()> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "not writing: this replica no longer holds the lease"
            ))
        }
    }

    fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope>>(&self) -> Api<K>
    where
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Reads the namespace from the caches: every VectorStore, Index and ApiKey, and the
    /// Secrets they name. Waits for the caches' first sync (at most
    /// [`crate::informer::SYNC_TIMEOUT`]).
    pub async fn read(&self) -> Result<Objects> {
        let caches = self.caches();
        if !caches.synced_within(crate::informer::SYNC_TIMEOUT).await {
            anyhow::bail!(
                "the caches did not finish their first list within {:?}",
                crate::informer::SYNC_TIMEOUT
            );
        }
        let mut objects = Objects {
            stores: caches.stores.values(),
            indexes: caches.indexes.values(),
            keys: caches.keys.values(),
            ..Objects::default()
        };
        // A rendering must not depend on the order objects come in (the Istio target compares
        // it with what is applied): by name, as a real API server lists. The caches are
        // ordered by name already; this keeps it so whatever they become.
        // (Compared in place: a key function that returns the name allocates per comparison,
        // and on the caches' already sorted lists the sort is one linear check.)
        objects
            .stores
            .sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        objects
            .indexes
            .sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        objects
            .keys
            .sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        self.read_secrets(&caches, &mut objects);
        Ok(objects)
    }

    /// Puts the referenced Secrets, as the cache holds them, into `objects`. Their data is
    /// shared with the cache, not copied; the maps are built from name-ordered lists (the
    /// referenced set is ordered), which a BTreeMap takes in bulk.
    fn read_secrets(&self, caches: &Caches, objects: &mut Objects) {
        let referenced = referenced_secrets(objects);
        let (mut secrets, mut marks, mut minted) = (Vec::new(), Vec::new(), Vec::new());
        let mut rotations = Vec::new();
        let mut errors = Vec::new();
        caches.secrets.each_of(&referenced, |name, c| {
            // An empty name is the referring object's condition (validation).
            if name.is_empty() {
                return;
            }
            let id = (self.namespace.clone(), name.to_owned());
            // Values are text exactly as stored: bytes that are not UTF-8 make the Secret its
            // referrers' condition (as a directory-mode document), never a lossy decode.
            if let Some(k) = &c.not_text {
                errors.push((
                    id,
                    format!("data.{k} is not UTF-8 text; a credential or token is text"),
                ));
                return;
            }
            if let Some(t) = c.minted_at {
                minted.push((id.clone(), t));
            }
            if let Some(r) = &c.rotation {
                rotations.push((id.clone(), r.clone()));
            }
            marks.push((id.clone(), c.marks.clone()));
            secrets.push((id, Arc::clone(&c.data)));
        });
        objects.secret_errors.extend(errors);
        objects.minted_at = minted.into_iter().collect();
        objects.rotations = rotations.into_iter().collect();
        objects.secret_marks = marks.into_iter().collect();
        objects.secrets = secrets.into_iter().collect();
    }

    /// An Opaque Secret of this namespace that the operator manages (labelled so), holding
    /// `data`: the gateway credential and the rendering are written as these.
    fn managed_secret(&self, name: &str, data: BTreeMap<String, ByteString>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.0.to_owned(),
                    MANAGED_BY.1.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        }
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        tokio::task::block_in_place(|| self.runtime.block_on(f))
    }
}

/// Exponential backoff, per [`Step`]: 1 s doubling to 60 s, reset by a success.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: BTreeMap<Step, u32>,
}

impl Backoff {
    /// Shortest delay: the first retry.
    pub const MIN: Duration = Duration::from_secs(1);
    /// Longest delay.
    pub const MAX: Duration = Duration::from_secs(60);

    /// Records a failure of `step`; returns how long to wait before the next try.
    pub fn failed(&mut self, step: Step) -> Duration {
        let n = self.failures.entry(step).or_insert(0);
        *n = n.saturating_add(1);
        Self::MIN
            .saturating_mul(1 << (*n - 1).min(6))
            .min(Self::MAX)
    }

    /// Records a success: every step's backoff resets.
    pub fn succeeded(&mut self) {
        self.failures.clear();
    }

    /// Consecutive failures of `step`.
    pub fn failures(&self, step: Step) -> u32 {
        self.failures.get(&step).copied().unwrap_or(0)
    }
}
