//! Kube mode's pass: read from the caches, mint (leader), the one pure pass
//! ([`crate::pass::run`]), publish and write statuses (leader); the gateway credential; probes.

use super::*;
use crate::pass::STEP;
use tracing::Instrument;

impl Cluster {
    /// One pass: read, mint (leader), validate keeping last valid forms, render, publish
    /// (leader), write statuses (leader). Nothing is published when the rendering fails, and
    /// the last good pass stays in [`State`].
    pub async fn pass(&self) -> Result<Writes, StepError> {
        let _serial = self.pass_lock.lock().await;
        let started = Instant::now();
        match self.pass_inner().await {
            Ok((pass, writes)) => {
                tracing::debug_span!(target: STEP, "serve the keys, keep the pass")
                    .in_scope(|| self.state.finish(Ok(pass), started))
                    .at(Step::Read)?;
                Ok(writes)
            }
            Err(e) => {
                if e.step != Step::Render {
                    self.state.metrics.kube_api_errors.inc();
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
        let mut since = tracing::debug_span!(target: STEP, "what changed since the last pass")
            .in_scope(|| earlier(&objects));
        if leader {
            let minting = tracing::debug_span!(target: STEP, "mint, adopt token Secrets");
            let mut failed = BTreeMap::new();
            let done = with_token(&objects, since.as_ref());
            writes.minted = self
                .mint_missing(&objects, &done, &mut failed)
                .instrument(minting.clone())
                .await
                .at(Step::Mint)?;
            self.adopt_token_secrets(&objects, &done)
                .instrument(minting.clone())
                .await
                .at(Step::Mint)?;
            writes.minted += self
                .rotate_asked(&objects)
                .instrument(minting)
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
        }
        let gateway = self
            .gateway_credential()
            .instrument(tracing::debug_span!(target: STEP, "read the gateway credential"))
            .await
            .at(Step::Read)?;
        let (mut pass, rendering) = self
            .render(objects, previous.as_deref(), since.as_ref(), &gateway)
            .at(Step::Render)?;
        if leader {
            let publishing = tracing::debug_span!(target: STEP, "publish the rendering");
            match &rendering.output {
                Output::Istio {
                    resources,
                    settings,
                    ..
                } => {
                    let data = istio::credentials(&pass.validation, &gateway);
                    (writes.applied, writes.deleted, writes.published) = self
                        .publish_istio(settings, resources, &data)
                        .instrument(publishing)
                        .await
                        .at(Step::Publish)?;
                }
                Output::Envoy(files) => {
                    writes.published = self
                        .publish(files)
                        .instrument(publishing)
                        .await
                        .at(Step::Publish)?;
                    if writes.published {
                        tracing::info!(secret = %self.output_secret, keys = pass.keys.len(), "published the rendering");
                    }
                }
            }
            let (s, e, settled) = self
                .write_statuses(&pass, since.as_ref(), &self.state.probes())
                .instrument(tracing::debug_span!(target: STEP, "statuses"))
                .await
                .at(Step::Status)?;
            (writes.statuses, writes.events, pass.settled) = (s, e, settled);
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
        let secret = self.managed_secret(
            name,
            BTreeMap::from([(
                keyservice::CREDENTIAL_KEY.to_owned(),
                ByteString(credential.clone().into_bytes()),
            )]),
        );
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
    ) -> Result<(Pass, Rendering)> {
        let ctx = crate::pass::Context {
            namespace: &self.namespace,
            settings: &self.settings,
            target: &self.target,
            gateway: Some(gateway),
            now: now(),
            expiring_soon: self.expiring_soon,
        };
        let before = crate::pass::Before {
            validation: last_pass.map(|p| &p.validation),
            earlier,
            // The last pass's table, when its rendering had no inline keys either.
            table: last_pass
                .filter(|p| p.config.api_keys.is_empty())
                .map(|p| (&*p.policy, p.keys.as_slice())),
        };
        crate::pass::run(objects, before, &ctx)
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
}
