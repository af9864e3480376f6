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
use layergate_filter::config::LookupHash;
use layergate_filter::config::{ApiKeyConfig, FilterConfig};
use layergate_filter::keys::KeyTable;
use layergate_filter::policy::Policy;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

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
    /// The `ExpiringSoon` window the keys were judged with (seconds; `None`: off): the
    /// control API judges a key it mints with it too.
    pub expiring_soon: Option<i64>,
    /// The keys by name, key id and token hash ([`Pass::index`]).
    index: OnceLock<KeyIndex>,
}

/// A pass's keys found by name, key id and token hash, built once per pass — the first time a
/// status walk or a control API call needs it — so that finding one key is O(1) and walking
/// every key O(n), at 100,000 keys as at ten. Where two documents share a name the first wins,
/// as in the validation.
#[derive(Debug, Clone, Default)]
pub struct KeyIndex {
    /// Name → index in [`Pass::objects`]' keys.
    objects: HashMap<Box<str>, usize>,
    /// Key id → index in [`Pass::objects`]' keys: built on the first lookup by id (a pass's
    /// status walk never needs it).
    ids: OnceLock<HashMap<Box<str>, usize>>,
    /// Name → index in [`Pass::keys`] (the usable key of that name).
    usable: HashMap<Box<str>, usize>,
    /// Token lookup hash (a rotated key's previous one too) → index in [`Pass::keys`].
    hashes: HashMap<LookupHash, usize>,
    /// Name → index of its (first) verdict in the validation's keys.
    verdicts: HashMap<Box<str>, usize>,
}

impl KeyIndex {
    fn of(pass: &Pass) -> KeyIndex {
        let mut index = KeyIndex::default();
        for (i, k) in pass.objects.keys.iter().enumerate() {
            let name = k.metadata.name.as_deref().unwrap_or_default();
            index.objects.entry(name.into()).or_insert(i);
        }
        for (i, k) in pass.keys.iter().enumerate() {
            index.usable.entry(k.name.as_str().into()).or_insert(i);
            index.hashes.entry(k.lookup_hash).or_insert(i);
        }
        for (i, k) in pass.keys.iter().enumerate() {
            if let Some(p) = &k.previous {
                index.hashes.entry(p.lookup_hash).or_insert(i);
            }
        }
        for (i, v) in pass.validation.keys.iter().enumerate() {
            index.verdicts.entry(v.name.as_str().into()).or_insert(i);
        }
        index
    }

    /// The ApiKey object named `name`.
    pub fn named<'p>(&self, pass: &'p Pass, name: &str) -> Option<&'p ApiKey> {
        pass.objects
            .keys
            .get(*self.objects.get(name)?)
            .map(|k| &**k)
    }

    /// The ApiKey object whose key id is `id`.
    pub fn with_id<'p>(&self, pass: &'p Pass, id: &str) -> Option<&'p ApiKey> {
        let ids = self.ids.get_or_init(|| {
            let mut ids = HashMap::with_capacity(pass.objects.keys.len());
            for (i, k) in pass.objects.keys.iter().enumerate() {
                let id = validate::key_id_in(k, &pass.namespace, &pass.objects);
                ids.entry(id.into()).or_insert(i);
            }
            ids
        });
        pass.objects.keys.get(*ids.get(id)?).map(|k| &**k)
    }

    /// The usable key named `name`.
    pub fn usable<'p>(&self, pass: &'p Pass, name: &str) -> Option<&'p ApiKeyConfig> {
        pass.keys.get(*self.usable.get(name)?)
    }

    /// The usable key whose token has `hash` at `now`: its token, or its previous token
    /// while a rotation's overlap runs.
    pub fn by_hash<'p>(
        &self,
        pass: &'p Pass,
        hash: &LookupHash,
        now: i64,
    ) -> Option<&'p ApiKeyConfig> {
        let k = pass.keys.get(*self.hashes.get(hash)?)?;
        let previous_ended = k.previous.as_ref().is_some_and(|p| {
            p.lookup_hash == *hash
                && layergate_filter::time::parse_rfc3339(&p.until).is_none_or(|t| t <= now)
        });
        (k.lookup_hash == *hash || !previous_ended).then_some(k)
    }

    /// The index of the (first) verdict of the key named `name`.
    pub fn verdict(&self, name: &str) -> Option<usize> {
        self.verdicts.get(name).copied()
    }
}

impl Pass {
    /// The keys by name, key id and token hash (built on first use).
    pub fn index(&self) -> &KeyIndex {
        self.index.get_or_init(|| KeyIndex::of(self))
    }
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
            last.keys.apply(layergate_filter::keys::Incoming {
                revision: String::new(),
                snapshot: false,
                keys: KeyTable::from_keys(&change.upsert, &stores, policy.stores.len())?,
                removed: change.remove,
            })
        }
        _ => KeyTable::from_keys(keys, &stores, policy.stores.len())?,
    };
    Ok(policy.with_keys(table))
}

/// The `tracing` target of a pass's steps: each step is a `debug` span of this target, named
/// for the step, in both modes (`LAYERGATE_LOG_LEVEL=debug` logs each with its time).
pub const STEP: &str = "layergate_operator::step";

/// What a pass is judged in: the namespace, the gateway settings, the target, the gateway
/// credential (when the rendering carries a key service), the clock and the `ExpiringSoon`
/// window.
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
    /// How long before its expiry an Active key is `ExpiringSoon` (seconds; `None`: off).
    pub expiring_soon: Option<i64>,
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
/// API use. Each step is a [`STEP`] span.
pub fn run(objects: Objects, before: Before<'_>, ctx: &Context<'_>) -> Result<(Pass, Rendering)> {
    let mut validation = tracing::debug_span!(target: STEP, "validate").in_scope(|| {
        validate::validate_since(
            &objects,
            ctx.namespace,
            ctx.now,
            &ctx.settings.allow_endpoints,
            ctx.expiring_soon,
            before.earlier,
        )
    });
    if let Some(prev) = before.validation {
        tracing::debug_span!(target: STEP, "keep last valid forms")
            .in_scope(|| validate::keep_last_valid(&mut validation, prev));
    }
    let rendering = tracing::debug_span!(target: STEP, "render")
        .in_scope(|| render::render(&validation, ctx.settings, ctx.target, ctx.gateway))?;
    let policy_step = tracing::debug_span!(target: STEP, "usable keys, the control API's policy");
    let entered = policy_step.enter();
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
    drop(entered);
    let pass = Pass {
        objects,
        namespace: ctx.namespace.to_owned(),
        validation,
        config: rendering.config.clone(),
        policy,
        keys,
        gateway: ctx.gateway.map(GatewayCredential::of),
        settled: Vec::new(),
        expiring_soon: ctx.expiring_soon,
        index: OnceLock::new(),
    };
    Ok((pass, rendering))
}
