//! Kube mode's statuses and Events: each object's status written only when it changed, and a
//! Warning Event once per reason and message for what needs the user.

use super::*;

impl Cluster {
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
        self.state.metrics.status_writes.inc();
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
            let new = status::key(pass, o, at);
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
}
