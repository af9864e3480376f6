//! The one pass (SPEC §7 "Reconcile"), pure: objects in, and out what both sources publish —
//! judged objects (with last valid forms carried), the rendering, the usable minted keys and the
//! control API's policy. Directory mode ([`crate::source`]) and kube mode ([`crate::cluster`])
//! only read objects in and write these results out (files, Secrets, statuses); neither judges
//! or renders on its own.
//!
//! ```text
//!  Objects ─► validate (taking over what did not change, `Earlier`) ─► keep last valid forms
//!          ─► render (filter config + target output) ─► usable keys ─► the control API's policy
//! ```

use crate::crd::ApiKey;
use crate::keyservice::{self, GatewayCredential};
use crate::manifests::Objects;
use crate::render::{self, Rendering, Target};
use crate::settings::Settings;
use crate::validate::{self, Earlier, Validation};
use anyhow::Result;
use layergate_filter::config::{ApiKeyConfig, FilterConfig};
use layergate_filter::keys::KeyTable;
use layergate_filter::policy::Policy;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one successful pass produced.
#[derive(Debug, Clone)]
pub struct Pass {
    /// The objects read.
    pub objects: Objects,
    /// The namespace rendered.
    pub namespace: String,
    /// Verdicts (with last valid forms carried forward).
    pub validation: Validation,
    /// The filter configuration written.
    pub config: FilterConfig,
    /// That configuration compiled with the usable keys, for the control API's checks of its
    /// callers.
    pub policy: Arc<Policy>,
    /// The usable minted keys (valid, not revoked): what the key service serves, whether or
    /// not the rendering carries them.
    pub keys: Vec<ApiKeyConfig>,
    /// The gateway credential the key service accepts (its digest), when it is rendered.
    pub gateway: Option<GatewayCredential>,
    /// Kube mode, a leader's pass: by ApiKey in `objects.keys`, the object whose status is
    /// as this pass wanted it — that very object when its status was found as written, the
    /// API server's answer when this pass wrote it; `None` where it is not known (a refused
    /// write). The next pass skips minting, adopting and the status of a key that is still
    /// that object ([`crate::validate::Earlier`]). Empty when no statuses were compared (a
    /// follower's pass, directory mode).
    pub settled: Vec<Option<Arc<ApiKey>>>,
}

/// The policy the control API checks callers with: the rendered configuration with the usable
/// minted keys inline, as the gateway sees them once synced, and credentials rendered as
/// `{env: NAME}` (the Istio target) resolved from `env`, as the proxy's environment has them.
///
/// With `earlier` (the last pass's policy and usable keys), a rendering without inline keys
/// takes the last pass's key table with the change between the two key sets applied (as a
/// gateway applies a key-service delta): what changed is compiled, not every key. The table is
/// built from scratch when the stores differ (keys' grants refer to stores by position).
pub fn api_policy(
    config: &FilterConfig,
    keys: &[ApiKeyConfig],
    env: &BTreeMap<String, String>,
    earlier: Option<(&Policy, &[ApiKeyConfig])>,
) -> Result<Policy> {
    let mut full = config.clone();
    full.key_service = None;
    let policy = Policy::compile(&full, |var| env.get(var).cloned())?;
    if !full.api_keys.is_empty() {
        return Ok(policy);
    }
    let stores = policy.store_ids();
    let table = match earlier {
        Some((last, last_keys))
            if last.stores.len() == policy.stores.len()
                && last
                    .stores
                    .iter()
                    .zip(&policy.stores)
                    .all(|(a, b)| a.name == b.name) =>
        {
            let change = keyservice::Change::between(last_keys, keys);
            last.keys.apply(
                &layergate_filter::config::SyncResponse {
                    revision: String::new(),
                    snapshot: false,
                    keys: change.upsert,
                    removed: change.remove,
                },
                &stores,
                policy.stores.len(),
            )?
        }
        _ => KeyTable::from_keys(keys, &stores, policy.stores.len())?,
    };
    Ok(policy.with_keys(table))
}

/// The time since `*since`, which moves to now (a pass's step timings).
pub fn lap(since: &mut Instant) -> Duration {
    let now = Instant::now();
    let took = now - *since;
    *since = now;
    took
}

/// What a pass is judged in: the namespace, the gateway settings, the target, the gateway
/// credential (when the rendering carries a key service) and the clock.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The namespace rendered.
    pub namespace: &'a str,
    /// Gateway settings.
    pub settings: &'a Settings,
    /// What is rendered.
    pub target: &'a Target,
    /// The gateway credential the key service accepts, when there is one.
    pub gateway: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
}

/// What the last pass left that this one builds on.
#[derive(Clone, Copy, Default)]
pub struct Before<'a> {
    /// The last pass's verdicts: an object that became invalid keeps its last valid form.
    pub validation: Option<&'a Validation>,
    /// What did not change since the last pass (kube mode): taken over, not judged again.
    pub earlier: Option<&'a Earlier<'a>>,
    /// The last pass's policy and usable keys, when its rendering had no inline keys: the
    /// control API's key table is that one with the change applied.
    pub table: Option<(&'a Policy, &'a [ApiKeyConfig])>,
}

/// The pass: judges `objects`, renders them and derives what the key service and the control
/// API use. `steps` gets each step's time.
pub fn run(
    objects: Objects,
    before: Before<'_>,
    ctx: &Context<'_>,
    steps: &mut Vec<(&'static str, Duration)>,
) -> Result<(Pass, Rendering)> {
    let mut at = Instant::now();
    let mut validation = validate::validate_since(
        &objects,
        ctx.namespace,
        ctx.now,
        &ctx.settings.allow_endpoints,
        before.earlier,
    );
    steps.push(("validate", lap(&mut at)));
    if let Some(prev) = before.validation {
        validate::keep_last_valid(&mut validation, prev);
    }
    steps.push(("keep last valid forms", lap(&mut at)));
    let rendering = render::render(&validation, ctx.settings, ctx.target, ctx.gateway)?;
    steps.push(("render", lap(&mut at)));
    let keys = render::usable_keys(&validation);
    // The Istio target's credentials are variables; the control API resolves them as the
    // proxy's environment does.
    let env = match ctx.target {
        Target::Envoy => BTreeMap::new(),
        Target::Istio(_) => {
            crate::render::istio::credentials(&validation, ctx.gateway.unwrap_or_default())
        }
    };
    let policy = Arc::new(api_policy(&rendering.config, &keys, &env, before.table)?);
    steps.push(("usable keys, the control API's policy", lap(&mut at)));
    let pass = Pass {
        objects,
        namespace: ctx.namespace.to_owned(),
        validation,
        config: rendering.config.clone(),
        policy,
        keys,
        gateway: ctx.gateway.map(GatewayCredential::of),
        settled: Vec::new(),
    };
    Ok((pass, rendering))
}
