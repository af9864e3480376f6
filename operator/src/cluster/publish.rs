//! Kube mode's publishing: the rendering into the output Secret (Envoy target), or the Istio
//! resources applied (and those of removed stores deleted) and the gateway rolled when its
//! credentials change.

use super::*;

impl Cluster {
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
        let secret = self.managed_secret(&self.output_secret, data);
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
}
