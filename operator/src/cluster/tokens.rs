//! Kube mode's tokens and key writes: minting missing tokens into Secrets owned by their ApiKey,
//! adopting pre-provisioned ones, and the control API's mint, revoke and delete as Kubernetes
//! writes.

use super::*;

impl Cluster {
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
                keys::rotate_value(k),
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

    /// Rotates every token whose ApiKey asks for it with the `hevlayer.com/rotate` annotation
    /// ([`validate::rotations_due`]). Returns how many were rotated.
    pub async fn rotate_asked(&self, objects: &Objects) -> Result<usize> {
        let due = validate::rotations_due(objects, &self.namespace, now());
        for (name, rotation) in &due {
            self.write_rotation(name, &keys::mint_token()?, rotation)
                .await?;
            tracing::info!(apikey = %name, "rotated the token, as its hevlayer.com/rotate annotation asks");
        }
        Ok(due.len())
    }

    /// Puts a new token and the rotation's record into an ApiKey's token Secret (a merge
    /// patch: the owner, labels and minted-at stay).
    async fn write_rotation(
        &self,
        name: &str,
        token: &str,
        rotation: &keys::Rotation,
    ) -> Result<()> {
        let secret = keys::secret_name(name);
        let patch = serde_json::json!({
            "metadata": {"annotations": rotation.annotations()},
            "data": {keys::TOKEN_KEY: ByteString(token.as_bytes().to_vec())},
        });
        self.ensure_leader()?;
        let patched = self
            .api::<Secret>()
            .patch(&secret, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("writing the new token into Secret {secret}"))?;
        self.caches().merge(patched);
        Ok(())
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
                None,
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

    fn mark_quota_spent(&self, name: &str, until: i64) -> Result<()> {
        self.block_on(self.write_quota_mark(name, until))
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

    fn rotate_key(
        &self,
        _pass: &Pass,
        name: &str,
        token: &str,
        rotation: &keys::Rotation,
    ) -> Result<()> {
        self.block_on(self.write_rotation(name, token, rotation))
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
