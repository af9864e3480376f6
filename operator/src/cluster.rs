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
//! - a Warning Event for each object whose `Ready` turned False for a reason the user must fix.
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

use crate::conditions::{reason, READY};
use crate::crd::{ApiKey, ApiKeyPhase, Conditioned};
use crate::informer::{Cached, Caches};
use crate::istio;
use crate::keys;
use crate::keyservice;
use crate::manifests::Objects;
use crate::pass::lap;
use crate::pass::Pass;
use crate::probe::{self, ProbeResult};
use crate::render::{Output, Rendering, Target};
use crate::settings::Settings;
use crate::state::{Source, State};
use crate::status;
use crate::validate::{self, Earlier};
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use k8s_openapi::ByteString;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
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
    /// The operator's own work, step by step (name, time), in the order done: where a pass's
    /// time goes beside its reads.
    pub steps: Vec<(&'static str, Duration)>,
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
}

/// Objects per LIST call of a cache's (re)list: large collections are read a page at a
/// time, as the API server prefers, following its `continue` token.
pub const LIST_PAGE: u32 = crate::informer::LIST_PAGE;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn time(secs: i64) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(secs)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
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

/// True when a Ready condition asks the user to act (worth an Event).
fn needs_attention(c: &Condition) -> bool {
    c.type_ == READY
        && c.status == "False"
        && ![reason::NOT_MINTED, reason::REVOKED, reason::EXPIRED].contains(&c.reason.as_str())
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
            client,
            namespace: namespace.to_owned(),
            settings,
            output_secret: output_secret.to_owned(),
            target: Target::Envoy,
            state: State::default(),
            pass_lock: tokio::sync::Mutex::new(()),
            leader_until: std::sync::Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            caches: std::sync::OnceLock::new(),
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
            marks.push((id.clone(), c.marks.clone()));
            secrets.push((id, Arc::clone(&c.data)));
        });
        objects.secret_errors.extend(errors);
        objects.minted_at = minted.into_iter().collect();
        objects.secret_marks = marks.into_iter().collect();
        objects.secrets = secrets.into_iter().collect();
    }

    /// Mints a token for every ApiKey without one (not revoked, no pre-provisioned Secret,
    /// a name its Secret can carry). A Secret another replica created first is left as it is.
    /// A Secret the API server refuses (a quota, an admission policy) is recorded in
    /// `failed` for that key's condition; the others are still minted.
    pub async fn mint_missing(
        &self,
        objects: &Objects,
        with_token: &[bool],
        failed: &mut BTreeMap<(String, String), String>,
    ) -> Result<usize> {
        let secrets = self.api::<Secret>();
        let mut minted = 0;
        for (o, k) in objects.keys.iter().enumerate() {
            if with_token.get(o) == Some(&true) {
                continue;
            }
            let name = k.name_any();
            let secret = keys::secret_name(&name);
            let id = (self.namespace.clone(), secret.clone());
            if k.spec.revoked == Some(true)
                || k.spec.token_secret_ref.is_some()
                || !keys::valid_object_name(&name)
            {
                continue;
            }
            // A Secret of this name owned by another ApiKey was left by a deleted key of the
            // same name: remove it (never adopt it), and mint anew.
            let stale = objects.secret_marks.get(&id).is_some_and(|m| {
                !m.apikey_owners.is_empty()
                    && k.metadata
                        .uid
                        .as_ref()
                        .is_some_and(|u| !m.apikey_owners.contains(u))
            });
            if stale {
                self.ensure_leader()?;
                match secrets.delete(&secret, &Default::default()).await {
                    Ok(_) => self.caches().secrets.forget(&secret),
                    Err(kube::Error::Api(e)) if e.is_not_found() => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("deleting the stale Secret {secret}"))
                    }
                }
                tracing::info!(apikey = %name, secret = %secret, "removed a token Secret left by a deleted key");
            } else if objects.secrets.contains_key(&id) {
                continue;
            }
            let token = keys::mint_token()?;
            let mut s = keys::token_secret(
                &self.namespace,
                &name,
                &token,
                &validate::rfc3339(now()),
                owner(k),
            );
            // Deliver the token in `data`: what an API server stores either way.
            s.data = s.string_data.take().map(|d| {
                d.into_iter()
                    .map(|(k, v)| (k, ByteString(v.into_bytes())))
                    .collect()
            });
            self.ensure_leader()?;
            match secrets
                .create(
                    &PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..PostParams::default()
                    },
                    &s,
                )
                .await
            {
                Ok(created) => {
                    tracing::info!(apikey = %name, secret = %secret, "minted a token");
                    // Read-your-writes: the pass that follows sees the token before the watch
                    // brings it.
                    self.caches().merge(created);
                    minted += 1;
                }
                Err(kube::Error::Api(e)) if e.is_already_exists() => {}
                Err(kube::Error::Api(e)) => {
                    tracing::warn!(apikey = %name, secret = %secret, "minting: {e}");
                    failed.insert(id, format!("could not be created: {e}"));
                }
                Err(e) => return Err(e).with_context(|| format!("creating Secret {secret}")),
            }
        }
        Ok(minted)
    }

    /// Makes each pre-provisioned token Secret (labelled for exactly one ApiKey, not owned)
    /// owned by that ApiKey, so that deleting the key — with kubectl as through the API —
    /// deletes its token too, and a new key of the same name never finds the old token.
    /// Returns how many Secrets it adopted.
    pub async fn adopt_token_secrets(
        &self,
        objects: &Objects,
        with_token: &[bool],
    ) -> Result<usize> {
        let mut adopted = 0;
        for (o, k) in objects.keys.iter().enumerate() {
            if with_token.get(o) == Some(&true) {
                continue;
            }
            let name = k.name_any();
            let source = validate::token_source(k);
            let unowned_and_ours = objects
                .secret_marks
                .get(&(self.namespace.clone(), source.name.clone()))
                .is_some_and(|m| {
                    m.apikey_owners.is_empty() && m.token_label.as_deref() == Some(name.as_str())
                });
            let Some(reference) = owner(k).filter(|_| unowned_and_ours) else {
                continue;
            };
            // Not a controller: the user created it; the key only takes it along when deleted.
            let reference = OwnerReference {
                controller: None,
                ..reference
            };
            let patch = serde_json::json!({"metadata": {"ownerReferences": [reference]}});
            self.ensure_leader()?;
            let patched = self
                .api::<Secret>()
                .patch(&source.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| {
                    format!("making ApiKey {name} the owner of Secret {}", source.name)
                })?;
            self.caches().merge(patched);
            tracing::info!(apikey = %name, secret = %source.name, "token Secret now owned by its ApiKey");
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Writes the rendering into the output Secret when its data differs from what the cache
    /// holds; true if written.
    pub async fn publish(&self, files: &[(&'static str, String)]) -> Result<bool> {
        let secrets = self.api::<Secret>();
        let caches = self.caches();
        let current = caches.secrets.get(&self.output_secret);
        let same = current.as_ref().is_some_and(|c| {
            c.not_text.is_none()
                && c.data.len() == files.len()
                && files.iter().all(|(k, v)| c.data.get(*k) == Some(v))
        });
        if same {
            return Ok(false);
        }
        let data: BTreeMap<String, ByteString> = files
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.clone().into_bytes())))
            .collect();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.output_secret.clone()),
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
        };
        self.ensure_leader()?;
        let written = secrets
            .patch(
                &self.output_secret,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .context("writing the output Secret")?;
        caches.merge(written);
        Ok(true)
    }

    /// Istio target: brings the Istio namespace to the rendering. The credentials Secret
    /// ([`istio::CREDENTIALS_SECRET`]) when its data changed; the resources [`istio::plan`]
    /// finds absent or changed (server-side apply, forced) and the managed ones no longer
    /// rendered (deleted); the gateway Deployment's credential environment and digest
    /// annotation when the digest changed (a Deployment that does not exist yet is left
    /// alone: the pass after it appears fills it). Returns (applied, deleted, anything
    /// written).
    pub async fn publish_istio(
        &self,
        s: &istio::IstioSettings,
        resources: &[serde_json::Value],
        data: &BTreeMap<String, String>,
    ) -> Result<(usize, usize, bool)> {
        use kube::api::{DeleteParams, DynamicObject};
        let ns = s.namespace.as_str();
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        let mut wrote = false;
        // What the proxy's environment reads, before the resources that name it.
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let bytes: BTreeMap<String, ByteString> = data
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
            .collect();
        let current = secrets
            .get_opt(istio::CREDENTIALS_SECRET)
            .await
            .context("reading the Istio credentials Secret")?;
        if current.as_ref().and_then(|c| c.data.as_ref()) != Some(&bytes) {
            // The whole Secret is the operator's: replaced as a whole (a removed store's key
            // goes with it), against the version read, or created.
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(istio::CREDENTIALS_SECRET.into()),
                    namespace: Some(ns.to_owned()),
                    labels: Some(BTreeMap::from([(
                        MANAGED_BY.0.to_owned(),
                        MANAGED_BY.1.to_owned(),
                    )])),
                    resource_version: current.as_ref().and_then(|c| c.resource_version()),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".into()),
                data: Some(bytes),
                ..Secret::default()
            };
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            self.ensure_leader()?;
            match current {
                Some(_) => secrets
                    .replace(istio::CREDENTIALS_SECRET, &params, &secret)
                    .await
                    .map(|_| ()),
                None => secrets.create(&params, &secret).await.map(|_| ()),
            }
            .context("writing the Istio credentials Secret")?;
            wrote = true;
        }
        let api = |kind: &str| -> Result<Api<DynamicObject>> {
            let ar = istio::api_resource(kind)
                .with_context(|| format!("{kind} is not an Istio kind layergate renders"))?;
            Ok(Api::namespaced_with(self.client.clone(), ns, &ar))
        };
        let managed = ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        let mut present = Vec::new();
        for (_, _, kind, _) in istio::KINDS {
            for o in api(kind)?
                .list(&managed)
                .await
                .with_context(|| format!("listing {kind}s in {ns}"))?
            {
                present.push(serde_json::json!({
                    "kind": kind, "metadata": o.metadata, "spec": o.data["spec"],
                }));
            }
        }
        let plan = istio::plan(resources, &present);
        for r in &plan.apply {
            let (kind, name) = (
                r["kind"].as_str().unwrap_or_default(),
                r["metadata"]["name"].as_str().unwrap_or_default(),
            );
            self.ensure_leader()?;
            let api = api(kind)?;
            let applied = api
                .patch(name, &apply, &Patch::Apply(r))
                .await
                .with_context(|| format!("applying {kind} {ns}/{name}"))?;
            // Apply removes the fields this manager no longer sets, but keeps those another
            // writer added to the spec (a namespace mapping someone slipped into the
            // WasmPlugin); a server that merges apply patches keeps removed map keys too.
            // The spec must be exactly the rendering: replaced when it is not.
            if applied.data["spec"] != r["spec"] {
                let mut exact: DynamicObject =
                    serde_json::from_value(r.clone()).with_context(|| format!("{kind} {name}"))?;
                exact.metadata.resource_version = applied.metadata.resource_version.clone();
                self.ensure_leader()?;
                api.replace(
                    name,
                    &PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..PostParams::default()
                    },
                    &exact,
                )
                .await
                .with_context(|| format!("replacing {kind} {ns}/{name}"))?;
            }
            tracing::info!(%kind, %name, namespace = %ns, "applied");
        }
        for (kind, name) in &plan.delete {
            self.ensure_leader()?;
            match api(kind)?.delete(name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(%kind, %name, namespace = %ns, "deleted"),
                Err(kube::Error::Api(e)) if e.is_not_found() => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {kind} {ns}/{name}")),
            }
        }
        wrote |= !plan.is_empty();
        wrote |= self.roll_gateway(s, data).await?;
        Ok((plan.apply.len(), plan.delete.len(), wrote))
    }

    /// Server-side applies [`istio::gateway_apply`] to the gateway Deployment when its pod
    /// template's digest annotation differs (which rolls its pods); true if written.
    async fn roll_gateway(
        &self,
        s: &istio::IstioSettings,
        data: &BTreeMap<String, String>,
    ) -> Result<bool> {
        use k8s_openapi::api::apps::v1::Deployment;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &s.namespace);
        let name = s.gateway_deployment.as_str();
        let Some(current) = deployments
            .get_opt(name)
            .await
            .with_context(|| format!("reading the gateway Deployment {name}"))?
        else {
            tracing::warn!(deployment = %name, namespace = %s.namespace, "the gateway Deployment does not exist (yet): its proxies have no credentials");
            return Ok(false);
        };
        let hash = istio::credentials_hash(data);
        let annotated = current
            .spec
            .as_ref()
            .and_then(|d| d.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(istio::CREDENTIALS_HASH_ANNOTATION));
        if annotated == Some(&hash) {
            return Ok(false);
        }
        self.ensure_leader()?;
        deployments
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&istio::gateway_apply(s, data, &hash)),
            )
            .await
            .with_context(|| format!("applying the gateway Deployment {name}"))?;
        tracing::info!(deployment = %name, namespace = %s.namespace, "the gateway's credentials changed: rolling its pods");
        Ok(true)
    }

    /// Writes `new` as `obj`'s status unless `old` is it already: `None` when nothing was
    /// written, else what the cache holds after the write (`Some(None)` when the watch saw
    /// the object deleted meanwhile).
    async fn apply_status<K, S>(
        &self,
        obj: &K,
        new: &S,
        old: Option<&S>,
    ) -> Result<Option<Option<Arc<K::Kept>>>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Cached
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: Serialize + PartialEq,
    {
        if old == Some(new) {
            return Ok(None);
        }
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": new,
        });
        let name = obj.name_any();
        self.ensure_leader()?;
        let written = self
            .api::<K>()
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .with_context(|| format!("writing the status of {} {name}", K::kind(&())))?;
        // The next pass compares with this status, not the one before it.
        let cached = self.caches().merge(written);
        self.state.status_writes.fetch_add(1, Ordering::Relaxed);
        Ok(Some(cached))
    }

    /// Writes every status that changed; records an Event when an object's `Ready` turns to a
    /// reason the user must fix. Returns (statuses written, events recorded, the pass's
    /// `settled`). An ApiKey that is unchanged since the last pass, whose verdict was taken
    /// over and whose status that pass found as written, is not looked at. One object's
    /// refused write (an admission policy, a conflict) does not stop the others'; the first
    /// error is returned after all were tried, so the step is retried.
    pub async fn write_statuses(
        &self,
        pass: &Pass,
        earlier: Option<&Earlier<'_>>,
        probes: &BTreeMap<String, ProbeResult>,
    ) -> Result<(usize, usize, Vec<Option<Arc<ApiKey>>>)> {
        let at = now();
        let (mut written, mut events) = (0, 0);
        let mut first_error: Option<anyhow::Error> = None;
        // Counts a write; what the cache holds after it, if it was made.
        let mut tally = |r: Result<(usize, usize, _)>| match r {
            Ok((w, e, cached)) => {
                written += w;
                events += e;
                cached
            }
            Err(e) => {
                first_error.get_or_insert(e);
                None
            }
        };
        for o in &pass.objects.stores {
            let new = status::store(pass, probes.get(&o.name_any()), o, at);
            let r = self.status_and_event(&**o, &new, o.status.as_ref()).await;
            tally(r.map(|(w, e, _)| (w, e, None)));
        }
        for o in &pass.objects.indexes {
            let new = status::index(pass, o);
            let r = self.status_and_event(&**o, &new, o.status.as_ref()).await;
            tally(r.map(|(w, e, _)| (w, e, None)));
        }
        let lookup = status::KeyLookup::of(pass);
        let mut settled = vec![None; pass.objects.keys.len()];
        // Verdicts are by key of the namespace (every cached key is).
        let mut verdict = 0;
        for (i, o) in pass.objects.keys.iter().enumerate() {
            if !validate::in_namespace(&o.metadata, &self.namespace) {
                continue;
            }
            let taken_over = pass.validation.taken_over.get(verdict) == Some(&true);
            verdict += 1;
            if taken_over && earlier.is_some_and(|e| e.settled(i, o).is_some()) {
                settled[i] = Some(Arc::clone(o));
                continue;
            }
            let new = status::key_in(&lookup, pass, o, at);
            settled[i] = if o.status.as_ref() == Some(&new) {
                Some(Arc::clone(o))
            } else {
                tally(self.status_and_event(&**o, &new, o.status.as_ref()).await)
            };
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok((written, events, settled)),
        }
    }

    /// One object's status (when changed) and its Event (when new): (written, recorded, the
    /// object whose status is now `new`: what the cache holds after a write).
    async fn status_and_event<K, S>(
        &self,
        obj: &K,
        new: &S,
        old: Option<&S>,
    ) -> Result<(usize, usize, Option<Arc<K::Kept>>)>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: Serialize + PartialEq + Conditioned,
        K: Cached,
    {
        let Some(cached) = self.apply_status(obj, new, old).await? else {
            return Ok((0, 0, None));
        };
        let events = self
            .event_if_new(obj, new.conditions(), old.map(Conditioned::conditions))
            .await?;
        Ok((1, events, cached))
    }

    /// Records a Warning Event for a `Ready` condition that needs attention and is new (a
    /// different reason or message than before).
    async fn event_if_new<K>(
        &self,
        obj: &K,
        new: &[Condition],
        old: Option<&[Condition]>,
    ) -> Result<usize>
    where
        K: Resource<DynamicType = ()>,
    {
        let Some(c) = new.iter().find(|c| needs_attention(c)) else {
            return Ok(0);
        };
        let seen = old
            .unwrap_or_default()
            .iter()
            .any(|o| o.type_ == c.type_ && o.reason == c.reason && o.message == c.message);
        if seen {
            return Ok(0);
        }
        let at = now();
        let name = obj.meta().name.clone().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}{:04x}", at, crate::state::random_u16())),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                uid: obj.meta().uid.clone(),
                ..ObjectReference::default()
            },
            reason: Some(c.reason.clone()),
            message: Some(c.message.clone()),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some(FIELD_MANAGER.into()),
                host: None,
            }),
            reporting_component: Some(FIELD_MANAGER.into()),
            first_timestamp: Some(time(at)),
            last_timestamp: Some(time(at)),
            count: Some(1),
            ..Event::default()
        };
        self.ensure_leader()?;
        Api::<Event>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &event)
            .await
            .context("recording an Event")?;
        Ok(1)
    }

    /// One pass: read, mint (leader), validate keeping last valid forms, render, publish
    /// (leader), write statuses (leader). Nothing is published when the rendering fails, and
    /// the last good pass stays in [`State`].
    pub async fn pass(&self) -> Result<Writes, StepError> {
        let _serial = self.pass_lock.lock().await;
        let started = Instant::now();
        match self.pass_inner().await {
            Ok((pass, mut writes)) => {
                let mut step = Instant::now();
                self.state.finish(Ok(pass), started).at(Step::Read)?;
                writes
                    .steps
                    .push(("serve the keys, keep the pass", lap(&mut step)));
                Ok(writes)
            }
            Err(e) => {
                if e.step != Step::Render {
                    self.state.api_errors.fetch_add(1, Ordering::Relaxed);
                }
                let _ = self.state.finish(Err(anyhow::anyhow!("{e}")), started);
                Err(e)
            }
        }
    }

    async fn pass_inner(&self) -> Result<(Pass, Writes), StepError> {
        let leader = self.is_leader();
        let mut writes = Writes::default();
        // The last good pass: what did not change since is taken over from it, not judged
        // again (validate::Earlier).
        let previous = self.state.last();
        let earlier = |objects: &Objects| {
            previous.as_deref().map(|p| {
                Earlier::new(
                    objects,
                    &p.objects,
                    &p.validation,
                    &p.settled,
                    &self.namespace,
                )
            })
        };
        let reading = Instant::now();
        let mut objects = self.read().await.at(Step::Read)?;
        writes.read_time = reading.elapsed();
        let mut step = Instant::now();
        let mut since = earlier(&objects);
        writes
            .steps
            .push(("what changed since the last pass", lap(&mut step)));
        if leader {
            let minting = Instant::now();
            let mut failed = BTreeMap::new();
            let done = with_token(&objects, since.as_ref());
            writes.minted = self
                .mint_missing(&objects, &done, &mut failed)
                .await
                .at(Step::Mint)?;
            self.adopt_token_secrets(&objects, &done)
                .await
                .at(Step::Mint)?;
            if writes.minted > 0 {
                let reading = Instant::now();
                objects = self.read().await.at(Step::Read)?;
                writes.read_time += reading.elapsed();
            }
            // What changed is found again only when minting changed the objects.
            if writes.minted > 0 || !failed.is_empty() {
                objects.secret_errors.extend(failed);
                since = earlier(&objects);
            }
            writes
                .steps
                .push(("mint, adopt token Secrets", minting.elapsed()));
        }
        let mut step = Instant::now();
        let gateway = self.gateway_credential().await.at(Step::Read)?;
        writes
            .steps
            .push(("read the gateway credential", lap(&mut step)));
        let (mut pass, rendering) = self
            .render(
                objects,
                previous.as_deref(),
                since.as_ref(),
                &gateway,
                &mut writes.steps,
            )
            .at(Step::Render)?;
        let mut step = Instant::now();
        if leader {
            match (&self.target, &rendering.output) {
                (Target::Istio(s), Output::Istio { resources, .. }) => {
                    let data = istio::credentials(&pass.validation, &gateway);
                    (writes.applied, writes.deleted, writes.published) = self
                        .publish_istio(s, resources, &data)
                        .await
                        .at(Step::Publish)?;
                }
                (_, Output::Envoy(files)) => {
                    writes.published = self.publish(files).await.at(Step::Publish)?;
                    if writes.published {
                        tracing::info!(secret = %self.output_secret, keys = pass.keys.len(), "published the rendering");
                    }
                }
                (Target::Envoy, Output::Istio { .. }) => {
                    return Err(anyhow::anyhow!("the Envoy target rendered Istio resources"))
                        .at(Step::Render);
                }
            }
            writes.steps.push(("publish the rendering", lap(&mut step)));
            let (s, e, settled) = self
                .write_statuses(&pass, since.as_ref(), &self.state.probes())
                .await
                .at(Step::Status)?;
            (writes.statuses, writes.events, pass.settled) = (s, e, settled);
            writes.steps.push(("statuses", lap(&mut step)));
        }
        drop(since);
        Ok((pass, writes))
    }

    /// The gateway credential the key service accepts, from the Secret
    /// [`keyservice::CREDENTIAL_SECRET`] as the cache holds it; created (OS CSPRNG) by the
    /// leader when absent (if two leaders' terms overlap at a hand-over, the API server keeps
    /// the first create and the other waits for it to reach its cache). A follower only reads it; until it exists the follower uses a
    /// value nobody holds, so its key service answers no gateway.
    pub async fn gateway_credential(&self) -> Result<String> {
        let secrets = self.api::<Secret>();
        let name = keyservice::CREDENTIAL_SECRET;
        // Read from the cache, used exactly as stored: a value that is not UTF-8, or has a
        // newline or spaces around it, is an error naming the Secret, never trimmed or
        // decoded lossily.
        let caches = self.caches();
        if let Some(c) = caches.secrets.get(name) {
            let key = keyservice::CREDENTIAL_KEY;
            if c.not_text.as_deref() == Some(key) {
                anyhow::bail!("Secret {name} key {key:?} is not UTF-8 text");
            }
            let v = c.data.get(key).cloned().unwrap_or_default();
            if v.is_empty() {
                anyhow::bail!("Secret {name} has no {key:?} value");
            }
            if let Some(p) = validate::credential_problem(&v) {
                anyhow::bail!("Secret {name} key {key:?}: {p}");
            }
            return Ok(v);
        }
        let credential = keyservice::new_credential()?;
        if !self.is_leader() {
            // Only the leader writes. Until its Secret exists, a follower renders in memory
            // with a credential nobody holds: its key service accepts no gateway yet.
            return Ok(credential);
        }
        let secret = Secret {
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
            data: Some(BTreeMap::from([(
                keyservice::CREDENTIAL_KEY.to_owned(),
                ByteString(credential.clone().into_bytes()),
            )])),
            ..Secret::default()
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match secrets.create(&params, &secret).await {
            Ok(created) => {
                tracing::info!(secret = %name, "created the gateway credential");
                caches.merge(created);
                Ok(credential)
            }
            // Another leader's create won (terms overlapping at a hand-over): its Secret
            // comes through the watch.
            Err(kube::Error::Api(e)) if e.is_already_exists() => {
                let deadline = Instant::now() + crate::informer::SYNC_TIMEOUT;
                while Instant::now() < deadline {
                    if caches.secrets.get(name).is_some() {
                        return Box::pin(self.gateway_credential()).await;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                anyhow::bail!("Secret {name} was created by another replica and has not reached the cache yet")
            }
            Err(e) => Err(e).with_context(|| format!("creating Secret {name}")),
        }
    }

    /// Validates `objects` (taking over from `earlier` what did not change), keeps last valid
    /// forms and renders.
    fn render(
        &self,
        objects: Objects,
        last_pass: Option<&Pass>,
        earlier: Option<&Earlier<'_>>,
        gateway: &str,
        steps: &mut Vec<(&'static str, Duration)>,
    ) -> Result<(Pass, Rendering)> {
        let ctx = crate::pass::Context {
            namespace: &self.namespace,
            settings: &self.settings,
            target: &self.target,
            gateway: Some(gateway),
            now: now(),
        };
        let before = crate::pass::Before {
            validation: last_pass.map(|p| &p.validation),
            earlier,
            // The last pass's table, when its rendering had no inline keys either.
            table: last_pass
                .filter(|p| p.config.api_keys.is_empty())
                .map(|p| (&*p.policy, p.keys.as_slice())),
        };
        crate::pass::run(objects, before, &ctx, steps)
    }

    /// Probes every valid store of the last pass, then runs a pass so that statuses (and
    /// Events) are judged against the objects as they are now, not the last pass's copies,
    /// whose statuses that pass may already have rewritten.
    pub async fn probe(&self) -> Result<(), StepError> {
        let stores = self.state.stores();
        let started = Instant::now();
        let results = probe::probe_all(&stores, probe::DEFAULT_TIMEOUT).await;
        for (name, result) in &results {
            tracing::debug!(vectorstore = %name, probe = ?result, "probed");
        }
        self.state.set_probes(results, started.elapsed());
        self.pass().await.map(|_| ())
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        tokio::task::block_in_place(|| self.runtime.block_on(f))
    }
}

/// The control API's changes, as Kubernetes writes (called from the API's worker threads).
impl Source for Cluster {
    fn state(&self) -> &State {
        &self.state
    }

    fn refresh(&self) -> Result<()> {
        self.block_on(self.pass())
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// A pass cut off at `bound` is dropped (its writes are idempotent); the watch on the
    /// object just written starts the controller's own pass, which publishes the change.
    fn refresh_within(&self, bound: Duration) -> Result<bool> {
        match self.block_on(tokio::time::timeout(bound, self.pass())) {
            Ok(r) => r.map(|_| true).map_err(|e| anyhow::anyhow!("{e}")),
            Err(_) => Ok(false),
        }
    }

    fn writable(&self) -> bool {
        self.is_leader()
    }

    fn create_key(
        &self,
        namespace: &str,
        name: &str,
        manifest: &serde_json::Value,
        token: &str,
    ) -> Result<ApiKey> {
        self.block_on(async {
            let key: ApiKey = serde_json::from_value(manifest.clone()).context("the ApiKey")?;
            self.ensure_leader()?;
            let created = self
                .api::<ApiKey>()
                .create(
                    &PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..PostParams::default()
                    },
                    &key,
                )
                .await
                .map_err(|e| match e {
                    kube::Error::Api(a) if a.is_already_exists() => {
                        anyhow::Error::from(crate::state::Exists(format!(
                            "an ApiKey named {name} exists; revoke or delete it, or pick another name"
                        )))
                    }
                    e => anyhow::Error::from(e).context("creating the ApiKey"),
                })?;
            self.caches().merge(created.clone());
            let mut s = keys::token_secret(
                namespace,
                name,
                token,
                &validate::rfc3339(now()),
                owner(&created),
            );
            self.ensure_leader()?;
            s.data = s.string_data.take().map(|d| {
                d.into_iter()
                    .map(|(k, v)| (k, ByteString(v.into_bytes())))
                    .collect()
            });
            let secrets = self.api::<Secret>();
            match secrets.create(&PostParams::default(), &s).await {
                Ok(made) => {
                    self.caches().merge(made);
                }
                // A Secret of that name left by a deleted key of this name (owned by it, not
                // yet collected): never adopt it — replace it, so the new key has the new token
                // only. Any other Secret of that name is not the mint's to touch: the mint is
                // undone and refused.
                Err(kube::Error::Api(e)) if e.is_already_exists() => {
                    let name = keys::secret_name(name);
                    // (From the cache: the Role has no `get` on Secrets.)
                    let key_name = created.metadata.name.clone().unwrap_or_default();
                    let left_by_a_deleted_key = self.caches().secrets.get(&name).is_some_and(|s| {
                        let m = &s.marks;
                        m.token_label.as_deref() == Some(key_name.as_str())
                            && !m.apikey_owners.is_empty()
                            && m.apikey_owners.iter().all(|uid| Some(uid) != created.metadata.uid.as_ref())
                    });
                    if !left_by_a_deleted_key {
                        self.api::<ApiKey>()
                            .delete(&key_name, &Default::default())
                            .await
                            .with_context(|| format!("undoing the mint of {key_name}"))?;
                        self.caches().keys.forget(&key_name);
                        return Err(crate::state::Exists(format!(
                            "a Secret named {name} exists and is not a deleted key's token; delete it or pick another key name"
                        ))
                        .into());
                    }
                    secrets
                        .delete(&name, &Default::default())
                        .await
                        .with_context(|| format!("replacing the stale Secret {name}"))?;
                    self.caches().secrets.forget(&name);
                    let made = secrets
                        .create(&PostParams::default(), &s)
                        .await
                        .context("creating the token Secret")?;
                    self.caches().merge(made);
                }
                Err(e) => return Err(e).context("creating the token Secret"),
            }
            Ok(created)
        })
    }

    fn revoke_key(&self, _pass: &Pass, name: &str) -> Result<()> {
        self.block_on(async {
            self.ensure_leader()?;
            let patch = serde_json::json!({
                "metadata": {"annotations": {crate::state::REVOKED_AT_ANNOTATION: validate::rfc3339(now())}},
                "spec": {"revoked": true},
            });
            let revoked = self
                .api::<ApiKey>()
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("revoking ApiKey {name}"))?;
            self.caches().merge(revoked);
            Ok(())
        })
    }

    fn delete_key(&self, pass: &Pass, name: &str) -> Result<()> {
        // A minted token Secret is owned by the key: Kubernetes deletes it too. A
        // pre-provisioned one (labelled for this key, not owned) is deleted here.
        let labelled = pass
            .objects
            .keys
            .iter()
            .find(|k| k.metadata.name.as_deref() == Some(name))
            .map(|k| validate::token_source(k))
            .filter(|s| {
                pass.objects
                    .secret_marks
                    .get(&(self.namespace.clone(), s.name.clone()))
                    .is_some_and(|m| {
                        m.apikey_owners.is_empty() && m.token_label.as_deref() == Some(name)
                    })
            });
        self.block_on(async {
            self.ensure_leader()?;
            match self.api::<ApiKey>().delete(name, &Default::default()).await {
                Ok(_) => self.caches().keys.forget(name),
                Err(kube::Error::Api(e)) if e.is_not_found() => self.caches().keys.forget(name),
                Err(e) => return Err(e).with_context(|| format!("deleting ApiKey {name}")),
            }
            if let Some(s) = labelled {
                match self
                    .api::<Secret>()
                    .delete(&s.name, &Default::default())
                    .await
                {
                    Ok(_) => self.caches().secrets.forget(&s.name),
                    Err(kube::Error::Api(e)) if e.is_not_found() => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("deleting the token Secret {}", s.name))
                    }
                }
            }
            Ok(())
        })
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
