//! Directory mode (`run --source dir:PATH --out OUT`): the same validation and rendering as in a
//! cluster, fed by a directory of manifests that is polled for changes. Minted tokens are
//! written there as Secret files; status is logged; a change that cannot be rendered never
//! replaces the last good output, and the log says why.

use crate::crd::ApiKey;
use crate::keys;
use crate::keyservice::{self, GatewayCredential, KeyService};
use crate::manifests::{self, Objects};
use crate::output::{self, Settings};
use crate::probe::{self, ProbeResult};
use crate::render::{self, Target};
use crate::validate::{self, Validation};
use anyhow::{Context, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use layergate_filter::config::{ApiKeyConfig, FilterConfig};
use layergate_filter::keys::KeyTable;
use layergate_filter::policy::Policy;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often the directory is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// Name, size and modification time of every manifest file: a change to any of them triggers
/// a new rendering.
fn fingerprint(dir: &Path) -> Result<Vec<(PathBuf, u64, SystemTime)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            let meta = std::fs::metadata(&path)?;
            files.push((path, meta.len(), meta.modified()?));
        }
    }
    files.sort();
    Ok(files)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Mints a token for every ApiKey that has none yet (not revoked, no Secret); returns how many.
pub fn mint_missing(dir: &Path, objects: &Objects, namespace: &str) -> Result<usize> {
    let mut minted = 0;
    for k in &objects.keys {
        let ns = k
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(manifests::DEFAULT_NAMESPACE);
        let name = k.metadata.name.clone().unwrap_or_default();
        let source = k
            .spec
            .token_secret_ref
            .as_ref()
            .map_or_else(|| keys::secret_name(&name), |r| r.name.clone());
        if ns != namespace
            || k.spec.revoked == Some(true)
            || objects.secrets.contains_key(&(ns.to_owned(), source))
        {
            continue;
        }
        if k.spec.token_secret_ref.is_some() {
            continue; // A pre-provisioned Secret is the user's to create.
        }
        let file = dir.join(format!("{}.yaml", keys::secret_name(&name)));
        let minted_at = validate::rfc3339(now());
        if !create_private(
            &file,
            &keys::secret_manifest(ns, &name, &keys::mint_token()?, &minted_at)?,
        )? {
            // Never overwrite a file the operator did not make: the key stays without a
            // token (its condition says so) until the file is moved away.
            tracing::warn!(apikey = %format!("{ns}/{name}"), file = %file.display(), "not minting: the token's file exists and holds no Secret of that name");
            continue;
        }
        tracing::info!(apikey = %format!("{ns}/{name}"), file = %file.display(), "minted a token");
        minted += 1;
    }
    Ok(minted)
}

/// Directory mode's record, in the output directory, of when it first saw each token Secret
/// that carries no start of its own (a hand-written token: no `minted-at` annotation, and an
/// ApiKey without `creationTimestamp`), as `{"<namespace>/<secret>": unix seconds}`.
pub const KEY_STARTS_FILE: &str = "key-starts.json";

/// Gives every such token a start that stays put: the one recorded in [`KEY_STARTS_FILE`],
/// else now (recorded). Without it a key's lifetime counted from each pass's "now" and it never
/// expired. Entries of tokens no longer present are dropped. A record that cannot be read is
/// an error (the pass fails and the last good configuration stays), never a fresh start.
pub fn fill_key_starts(out: &Path, objects: &mut Objects, namespace: &str) -> Result<()> {
    let file = out.join(KEY_STARTS_FILE);
    let recorded: BTreeMap<String, i64> = match std::fs::read_to_string(&file) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON object of Unix seconds", file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let mut starts = BTreeMap::new();
    for k in &objects.keys {
        if k.metadata.creation_timestamp.is_some() {
            continue;
        }
        let ns = k
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(manifests::DEFAULT_NAMESPACE);
        let secret = k.spec.token_secret_ref.as_ref().map_or_else(
            || keys::secret_name(k.metadata.name.as_deref().unwrap_or_default()),
            |r| r.name.clone(),
        );
        let id = (ns.to_owned(), secret);
        if ns != namespace
            || objects.minted_at.contains_key(&id)
            || !objects.secrets.contains_key(&id)
        {
            continue;
        }
        let name = format!("{}/{}", id.0, id.1);
        let at = recorded.get(&name).copied().unwrap_or_else(now);
        objects.minted_at.insert(id, at);
        starts.insert(name, at);
    }
    if starts != recorded {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        write_private(&file, &serde_json::to_string(&starts)?)?;
    }
    Ok(())
}

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

/// One pass: read, mint, validate (keeping last valid forms), render. Nothing is written when
/// the pass fails.
pub fn reconcile(
    dir: &Path,
    out: &Path,
    settings: &Settings,
    previous: Option<&Validation>,
) -> Result<Pass> {
    let mut objects = manifests::load_dir(dir)?;
    let namespace = output::namespace(&objects, None)?;
    if mint_missing(dir, &objects, &namespace)? > 0 {
        objects = manifests::load_dir(dir)?;
    }
    fill_key_starts(out, &mut objects, &namespace)?;
    // A manifest that cannot be read might be a Store or Index in mid-edit: rendering without
    // it could send its traffic elsewhere, so nothing is rendered until it reads again.
    if !objects.problems.is_empty() {
        anyhow::bail!(
            "keeping the last good configuration: {}",
            objects.problems.join("; ")
        );
    }
    let mut validation =
        validate::validate_in(&objects, &namespace, now(), &settings.allow_endpoints);
    if let Some(prev) = previous {
        validate::keep_last_valid(&mut validation, prev);
    }
    // Status is logged when it changes (timestamps aside), like a status write.
    let same = |a: &Condition, b: &Condition| {
        (&a.type_, &a.status, &a.reason, &a.message) == (&b.type_, &b.status, &b.reason, &b.message)
    };
    for (kind, name, conditions) in validation.conditions() {
        let before = previous.and_then(|p| {
            p.conditions()
                .find(|(k, n, _)| *k == kind && *n == name)
                .map(|(_, _, c)| c)
        });
        if before.is_some_and(|b| {
            b.len() == conditions.len() && b.iter().zip(conditions).all(|(x, y)| same(x, y))
        }) {
            continue;
        }
        for c in conditions {
            tracing::info!(
                object = %format!("{kind}/{name}"),
                condition = %c.type_,
                status = %c.status,
                reason = %c.reason,
                "{}",
                c.message
            );
        }
    }
    // With a control API the gateway syncs minted keys from its key service, with the
    // credential kept in the output directory (created once, reused across restarts).
    let gateway = match &settings.control {
        Some(_) => Some(keyservice::credential_in_dir(out)?),
        None => None,
    };
    let rendering = render::render(&validation, settings, &Target::Envoy, gateway.as_deref())
        .and_then(|r| output::write(&r, out, settings).map(|_| r))
        .context("keeping the last good configuration")?;
    let config = rendering.config;
    let keys = render::usable_keys(&validation);
    let policy = Arc::new(api_policy(&config, &keys, &BTreeMap::new(), None)?);
    Ok(Pass {
        objects,
        namespace,
        validation,
        config,
        policy,
        keys,
        gateway: gateway.as_deref().map(GatewayCredential::of),
        settled: Vec::new(),
    })
}

/// What every source keeps while it runs, for the control API and `/metrics`: the last good
/// pass, the latest probe results and counters.
#[derive(Default)]
pub struct State {
    last: Mutex<Option<Arc<Pass>>>,
    probes: Mutex<BTreeMap<String, ProbeResult>>,
    /// Successful passes.
    pub renders: AtomicU64,
    /// Failed passes (the last good rendering stayed).
    pub render_errors: AtomicU64,
    /// Time spent in successful passes, microseconds.
    pub render_micros: AtomicU64,
    /// Probe rounds made (every valid store, at most 4 at once).
    pub probe_rounds: AtomicU64,
    /// Time the probe rounds took, microseconds.
    pub probe_micros: AtomicU64,
    /// Status writes made (kube mode).
    pub status_writes: AtomicU64,
    /// Calls to the Kubernetes API that failed (kube mode).
    pub api_errors: AtomicU64,
    /// The key service, fed by every successful pass.
    pub keys: KeyService,
    /// The revision the last pass's keys were served at: while the key service is still
    /// there, the next pass hands over only what changed since that pass.
    served: Mutex<Option<String>>,
    /// When the controller loop last turned (kube mode; `None`: no loop to watch).
    heartbeat: Mutex<Option<Instant>>,
    /// How long the loop may not turn before `/healthz` fails (`None`: [`STUCK_AFTER`]).
    stuck_after: Mutex<Option<Duration>>,
}

/// `/healthz` fails when the controller loop has not turned for this long (it turns at least
/// every [`crate::controller::HEARTBEAT`]; a pass that takes longer is stuck on something),
/// so the kubelet restarts the process.
pub const STUCK_AFTER: Duration = Duration::from_secs(300);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// The controller loop turned now.
    pub fn beat(&self) {
        *lock(&self.heartbeat) = Some(Instant::now());
    }

    /// How long the controller loop may not turn before `/healthz` fails (default
    /// [`STUCK_AFTER`]).
    pub fn set_stuck_after(&self, after: Duration) {
        *lock(&self.stuck_after) = Some(after);
    }

    /// How long the controller loop has not turned, when that is longer than
    /// [`STUCK_AFTER`] (or what [`State::set_stuck_after`] said): the process is alive but
    /// stuck, and should be restarted.
    pub fn stuck_for(&self) -> Option<Duration> {
        let after = lock(&self.stuck_after).unwrap_or(STUCK_AFTER);
        lock(&self.heartbeat)
            .map(|t| t.elapsed())
            .filter(|d| *d > after)
    }

    /// The last good pass, if any: shared, so a control-API call or a probe round costs no
    /// copy of the pass (at 100,000 ApiKeys a deep clone per `/readyz` was megabytes).
    pub fn last(&self) -> Option<Arc<Pass>> {
        lock(&self.last).clone()
    }

    /// Runs `pass` with the previous validation, serialized with every other pass; keeps the
    /// result when it succeeds and counts it either way.
    pub fn run_pass(&self, pass: impl FnOnce(Option<&Validation>) -> Result<Pass>) -> Result<()> {
        let mut last = lock(&self.last);
        let started = Instant::now();
        let result = pass(last.as_ref().map(|p| &p.validation));
        self.count(result.as_ref().map(|_| ()), started);
        let pass = result?;
        self.serve_keys(&pass, last.as_deref());
        *last = Some(Arc::new(pass));
        Ok(())
    }

    /// Hands a pass's keys (and gateway credential) to the key service: what changed since
    /// `previous` (the pass whose keys the key service serves now, when it does), else the
    /// whole set.
    fn serve_keys(&self, pass: &Pass, previous: Option<&Pass>) {
        if let Some(g) = &pass.gateway {
            self.keys.set_credential(g.clone());
        }
        let mut served = lock(&self.served);
        let revision = match previous {
            Some(p) if served.as_deref() == Some(self.keys.table().revision.as_str()) => self
                .keys
                .apply(keyservice::Change::between(&p.keys, &pass.keys)),
            _ => self.keys.publish(&pass.keys),
        };
        *served = Some(revision);
    }

    /// Keeps a pass made elsewhere (kube mode serializes its own passes) and counts it; a
    /// failed pass leaves the last good one in place.
    pub fn finish(&self, result: Result<Pass>, started: Instant) -> Result<()> {
        self.count(result.as_ref().map(|_| ()), started);
        let pass = result?;
        let mut last = lock(&self.last);
        self.serve_keys(&pass, last.as_deref());
        let replaced = last.replace(Arc::new(pass));
        drop(last);
        // Freeing a pass of 100,000 keys takes a good part of a pass's budget; nothing waits
        // for it, so it is done beside the next one.
        // (A thread that cannot be started drops its closure, and the pass, right here.)
        if let Some(old) = replaced {
            let _ = std::thread::Builder::new()
                .name("free-pass".into())
                .spawn(move || drop(old));
        }
        Ok(())
    }

    fn count(&self, result: Result<(), &anyhow::Error>, started: Instant) {
        if result.is_ok() {
            self.renders.fetch_add(1, Ordering::Relaxed);
            self.render_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        } else {
            self.render_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The latest probe result per store.
    pub fn probes(&self) -> BTreeMap<String, ProbeResult> {
        lock(&self.probes).clone()
    }

    /// Replaces the probe results.
    pub fn set_probes(&self, results: Vec<(String, ProbeResult)>, took: Duration) {
        self.probe_rounds.fetch_add(1, Ordering::Relaxed);
        self.probe_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let mut probes = lock(&self.probes);
        probes.clear();
        probes.extend(results);
    }

    /// Stores to probe: the valid ones of the last pass.
    pub fn stores(&self) -> Vec<validate::ValidStore> {
        self.last()
            .map(|p| {
                p.validation
                    .stores
                    .iter()
                    .filter_map(|s| s.valid.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What the control API needs from a running operator, whichever source feeds it: the state,
/// a way to run a pass now, and the three changes the API makes to ApiKeys. Directory mode
/// edits manifest files; kube mode writes objects.
pub trait Source: Send + Sync {
    /// The shared state.
    fn state(&self) -> &State;
    /// Runs one pass now.
    fn refresh(&self) -> Result<()>;
    /// Runs one pass, waiting for it at most `bound`: true when it finished in time. A pass
    /// that takes longer goes on (or is started again) in the background; the control API
    /// answers a mint without waiting for it (issue 13).
    fn refresh_within(&self, bound: Duration) -> Result<bool> {
        let _ = bound;
        self.refresh().map(|()| true)
    }
    /// Whether the control API may write now: false on a replica that does not hold the
    /// Lease (kube mode), which answers writes with 503 and `Retry-After`.
    fn writable(&self) -> bool {
        true
    }
    /// Writes a new ApiKey (`manifest`, a complete object) and the Secret with its token;
    /// returns the ApiKey as stored (in a cluster, with its uid and creation time).
    fn create_key(
        &self,
        namespace: &str,
        name: &str,
        manifest: &serde_json::Value,
        token: &str,
    ) -> Result<ApiKey>;
    /// Sets `spec.revoked` (and the revoked-at annotation) on an ApiKey.
    fn revoke_key(&self, pass: &Pass, name: &str) -> Result<()>;
    /// Deletes an ApiKey and its token Secret.
    fn delete_key(&self, pass: &Pass, name: &str) -> Result<()>;
}

/// A directory of manifests rendered into an output directory, with the last good pass kept
/// for the control API.
pub struct DirSource {
    /// The manifests.
    pub dir: PathBuf,
    /// Where the rendering goes.
    pub out: PathBuf,
    /// Gateway settings.
    pub settings: Settings,
    /// Last pass, probes, counters.
    pub state: State,
}

/// How often stores are probed (plus up to [`PROBE_JITTER`], so replicas and stores spread out).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// Random extra delay per probe round.
pub const PROBE_JITTER: Duration = Duration::from_secs(5);

/// 16 random bits from the OS (0 if it has none to give).
pub fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).map_or(0, |()| u16::from_le_bytes(b))
}

/// A random delay up to [`PROBE_JITTER`], so replicas and stores spread their probes out.
pub fn jitter() -> Duration {
    Duration::from_millis(u64::from(random_u16()) % (PROBE_JITTER.as_millis() as u64 + 1))
}

impl DirSource {
    /// A source that has not rendered yet.
    pub fn new(dir: PathBuf, out: PathBuf, settings: Settings) -> DirSource {
        DirSource {
            dir,
            out,
            settings,
            state: State::default(),
        }
    }

    /// Runs one pass now (serialized with every other pass); the last good pass is kept when
    /// this one fails.
    pub fn refresh(&self) -> Result<()> {
        self.state
            .run_pass(|previous| reconcile(&self.dir, &self.out, &self.settings, previous))?;
        tracing::info!(dir = %self.dir.display(), out = %self.out.display(), "rendered");
        Ok(())
    }

    /// The last good pass, if any.
    pub fn last(&self) -> Option<Arc<Pass>> {
        self.state.last()
    }

    /// Probes every rendered store now (status only: a store that does not answer stays in
    /// the rendering, so the gateway recovers by itself when the store does).
    pub fn probe_now(&self) -> Result<()> {
        let stores = self.state.stores();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let started = Instant::now();
        let results = runtime.block_on(probe::probe_all(&stores, probe::DEFAULT_TIMEOUT));
        for (name, result) in &results {
            tracing::info!(vectorstore = %name, probe = ?result, "probed");
        }
        self.state.set_probes(results, started.elapsed());
        Ok(())
    }

    /// The latest probe result per store.
    pub fn probes(&self) -> BTreeMap<String, ProbeResult> {
        self.state.probes()
    }

    fn key_file(pass: &Pass, name: &str) -> Option<PathBuf> {
        pass.objects
            .key_files
            .get(&(pass.namespace.clone(), name.to_owned()))
            .map(PathBuf::from)
    }

    /// Polls the directory until the process stops, refreshing on every change and probing
    /// the stores after each change and every [`PROBE_INTERVAL`] (with jitter).
    pub fn watch(&self) -> Result<()> {
        let mut seen = None;
        let mut next_probe = Instant::now();
        loop {
            let current = fingerprint(&self.dir)?;
            if seen.as_ref() != Some(&current) {
                if let Err(e) = self.refresh() {
                    tracing::error!("{e:#}");
                }
                // Minting writes files: fingerprint after the pass so they do not trigger another.
                seen = Some(fingerprint(&self.dir)?);
                next_probe = Instant::now();
            }
            if Instant::now() >= next_probe {
                if let Err(e) = self.probe_now() {
                    tracing::error!("probe: {e:#}");
                }
                next_probe = Instant::now() + PROBE_INTERVAL + jitter();
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Source for DirSource {
    fn state(&self) -> &State {
        &self.state
    }

    fn refresh(&self) -> Result<()> {
        DirSource::refresh(self)
    }

    fn create_key(
        &self,
        namespace: &str,
        name: &str,
        manifest: &serde_json::Value,
        token: &str,
    ) -> Result<ApiKey> {
        // Never overwrite: a Secret of the token's name anywhere in the directory (a
        // hand-written one, or one another key reads) or a file of either name that exists is
        // refused — the new key gets a new token and touches nothing it did not make.
        let secret = keys::secret_name(name);
        if let Some(file) = self.state.last().and_then(|p| {
            p.objects
                .secret_files
                .get(&(namespace.to_owned(), secret.clone()))
                .cloned()
        }) {
            return Err(Exists(format!(
                "a Secret named {secret} is already in {file}; delete it or pick another key name"
            ))
            .into());
        }
        let minted_at = validate::rfc3339(now());
        let secret_file = self.dir.join(format!("{secret}.yaml"));
        if !create_private(
            &secret_file,
            &keys::secret_manifest(namespace, name, token, &minted_at)?,
        )? {
            return Err(Exists(format!(
                "the file {} exists; the mint would overwrite it (delete it or pick another key name)",
                secret_file.display()
            ))
            .into());
        }
        let key_file = self.dir.join(format!("{name}.apikey.yaml"));
        if !create_private(&key_file, &serde_yaml::to_string(manifest)?)? {
            let _ = std::fs::remove_file(&secret_file);
            return Err(Exists(format!(
                "the file {} exists; the mint would overwrite it (delete it or pick another key name)",
                key_file.display()
            ))
            .into());
        }
        serde_json::from_value(manifest.clone()).context("the ApiKey")
    }

    fn revoke_key(&self, pass: &Pass, name: &str) -> Result<()> {
        let file = Self::key_file(pass, name)
            .with_context(|| format!("no manifest file for API key {name:?}"))?;
        rewrite_key_document(&file, name, KeyEdit::Revoke)
    }

    fn delete_key(&self, pass: &Pass, name: &str) -> Result<()> {
        let file = Self::key_file(pass, name)
            .unwrap_or_else(|| self.dir.join(format!("{name}.apikey.yaml")));
        // The token dies with its key: the Secret it was read from goes too, in whichever
        // file it is (a minted `apikey-<name>.yaml`, or a pre-provisioned one in another file),
        // when it is this key's (see validate::token_secret_refusal).
        let key = pass
            .objects
            .keys
            .iter()
            .find(|k| k.metadata.name.as_deref() == Some(name));
        // Only Secrets labelled as this key's token: one labelled for another key (or a store
        // credential that happens to be named `apikey-<name>`) is not this delete's to touch.
        let this_keys = |secret: &str| {
            pass.objects
                .secret_marks
                .get(&(pass.namespace.clone(), secret.to_owned()))
                .is_some_and(|m| m.token_label.as_deref() == Some(name))
        };
        let minted = keys::secret_name(name);
        if let Some(k) = key {
            let source = validate::token_source(k);
            if source.name != minted && this_keys(&source.name) {
                remove_secret_documents(pass, &source.name)?;
            }
        }
        if this_keys(&minted) {
            remove_secret_documents(pass, &minted)?;
        }
        if file.exists() {
            rewrite_key_document(&file, name, KeyEdit::Delete)?;
        }
        Ok(())
    }
}

/// Removes every Secret document named `secret` in the pass's namespace from the file it was
/// read from (a file left empty is removed).
fn remove_secret_documents(pass: &Pass, secret: &str) -> Result<()> {
    let id = (pass.namespace.clone(), secret.to_owned());
    if let Some(file) = pass.objects.secret_files.get(&id) {
        let file = Path::new(file);
        if file.exists() {
            rewrite_documents(file, "Secret", secret, KeyEdit::Delete)?;
        }
    }
    Ok(())
}

/// Writes a file only its owner can read (tokens), replacing it atomically.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    let tmp = private_temp(path, text)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Creates a file only its owner can read, atomically and only if no file of that name exists:
/// `Ok(false)` (and nothing written) when one does. A mint never overwrites a file it did not
/// make, which may hold other keys.
pub fn create_private(path: &Path, text: &str) -> Result<bool> {
    let tmp = private_temp(path, text)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// `text` in a new 0600 file beside `path`, named for this writer alone (parallel writers
/// never share a temporary file).
fn private_temp(path: &Path, text: &str) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}-{:04x}{:04x}.tmp",
        std::process::id(),
        random_u16(),
        random_u16()
    ));
    let tmp = path.with_file_name(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(tmp)
}

/// A write refused because its object (or file) exists: the control API answers 409.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Exists(pub String);

/// Annotation recording when a key was revoked through the API.
pub const REVOKED_AT_ANNOTATION: &str = "hevlayer.com/revoked-at";

enum KeyEdit {
    Revoke,
    Delete,
}

/// Revokes or removes one ApiKey document in a manifest file (other documents stay; comments
/// in the file are lost).
fn rewrite_key_document(file: &Path, name: &str, edit: KeyEdit) -> Result<()> {
    rewrite_documents(file, "ApiKey", name, edit)
}

/// Revokes (ApiKeys) or removes one `kind`/`name` document in a manifest file, split into
/// documents exactly as the loader reads it ([`manifests::split_documents`]). A file that holds
/// no such document is an error: the write would change nothing.
fn rewrite_documents(file: &Path, kind: &str, name: &str, edit: KeyEdit) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    let mut docs: Vec<String> = Vec::new();
    let mut found = 0;
    for doc in manifests::split_documents(&text) {
        let parsed: Option<serde_yaml::Value> = serde_yaml::from_str(&doc).ok();
        let is_it = parsed.as_ref().is_some_and(|v| {
            v["kind"].as_str() == Some(kind) && v["metadata"]["name"].as_str() == Some(name)
        });
        found += usize::from(is_it);
        match (is_it, &edit, parsed) {
            (true, KeyEdit::Delete, _) => {}
            (true, KeyEdit::Revoke, Some(mut v)) => {
                v["spec"]["revoked"] = serde_yaml::Value::Bool(true);
                if let serde_yaml::Value::Mapping(meta) = &mut v["metadata"] {
                    let annotations = meta
                        .entry("annotations".into())
                        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
                    annotations[REVOKED_AT_ANNOTATION] =
                        serde_yaml::Value::String(validate::rfc3339(now()));
                }
                docs.push(serde_yaml::to_string(&v)?);
            }
            _ => docs.push(doc),
        }
    }
    if found == 0 {
        anyhow::bail!(
            "{} holds no {kind} document named {name:?}; nothing was changed",
            file.display()
        );
    }
    let kept: Vec<&String> = docs.iter().filter(|d| !d.trim().is_empty()).collect();
    if kept.is_empty() {
        std::fs::remove_file(file)?;
    } else {
        write_private(
            file,
            &(kept
                .iter()
                .map(|d| d.trim_end().to_owned())
                .collect::<Vec<_>>()
                .join("\n---\n")
                + "\n"),
        )?;
    }
    Ok(())
}
