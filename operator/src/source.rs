//! Directory mode (`run --source dir:PATH --out OUT`): the same validation and rendering as in a
//! cluster, fed by a directory of manifests that is polled for changes. Minted tokens are
//! written there as Secret files; status is logged; a change that cannot be rendered never
//! replaces the last good output, and the log says why.

use crate::keys;
use crate::manifests::{self, Objects};
use crate::output::{self, Settings};
use crate::probe::{self, ProbeResult};
use crate::validate::{self, Validation};
use anyhow::{Context, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use layergate_filter::config::FilterConfig;
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
        std::fs::write(
            &file,
            keys::secret_manifest(ns, &name, &keys::mint_token()?, &minted_at)?,
        )
        .with_context(|| format!("writing {}", file.display()))?;
        eprintln!(
            "layergate-operator: minted a token for ApiKey {ns}/{name} into {}",
            file.display()
        );
        minted += 1;
    }
    Ok(minted)
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
    /// That configuration compiled, for the control API's checks of its callers.
    pub policy: Arc<Policy>,
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
    // A manifest that cannot be read might be a Store or Index in mid-edit: rendering without
    // it could send its traffic elsewhere, so nothing is rendered until it reads again.
    if !objects.problems.is_empty() {
        anyhow::bail!(
            "keeping the last good configuration: {}",
            objects.problems.join("; ")
        );
    }
    let mut validation = validate::validate(&objects, &namespace, now());
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
            eprintln!(
                "layergate-operator: {kind}/{name}: {}={} {}: {}",
                c.type_, c.status, c.reason, c.message
            );
        }
    }
    let config =
        output::write(&validation, out, settings).context("keeping the last good configuration")?;
    let policy = Arc::new(Policy::compile(&config, |_| None)?);
    Ok(Pass {
        objects,
        namespace,
        validation,
        config,
        policy,
    })
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
    last: Mutex<Option<Pass>>,
    /// Successful passes.
    pub renders: AtomicU64,
    /// Failed passes.
    pub render_errors: AtomicU64,
    probes: Mutex<BTreeMap<String, ProbeResult>>,
}

/// How often stores are probed (plus up to [`PROBE_JITTER`], so replicas and stores spread out).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// Random extra delay per probe round.
pub const PROBE_JITTER: Duration = Duration::from_secs(5);

fn jitter() -> Duration {
    let mut b = [0u8; 2];
    let n = getrandom::fill(&mut b).map_or(0, |()| u64::from(u16::from_le_bytes(b)));
    Duration::from_millis(n % (PROBE_JITTER.as_millis() as u64 + 1))
}

impl DirSource {
    /// A source that has not rendered yet.
    pub fn new(dir: PathBuf, out: PathBuf, settings: Settings) -> DirSource {
        DirSource {
            dir,
            out,
            settings,
            last: Mutex::new(None),
            renders: AtomicU64::new(0),
            render_errors: AtomicU64::new(0),
            probes: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs one pass now (serialized with every other pass); the last good pass is kept when
    /// this one fails.
    pub fn refresh(&self) -> Result<()> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = last.as_ref().map(|p| &p.validation);
        match reconcile(&self.dir, &self.out, &self.settings, previous) {
            Ok(pass) => {
                *last = Some(pass);
                self.renders.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "layergate-operator: rendered {} into {}",
                    self.dir.display(),
                    self.out.display()
                );
                Ok(())
            }
            Err(e) => {
                self.render_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// The last good pass, if any.
    pub fn last(&self) -> Option<Pass> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Probes every rendered store now (status only: a store that does not answer stays in
    /// the rendering, so the gateway recovers by itself when the store does).
    pub fn probe_now(&self) -> Result<()> {
        let stores: Vec<_> = self
            .last()
            .map(|p| {
                p.validation
                    .stores
                    .iter()
                    .filter_map(|s| s.valid.clone())
                    .collect()
            })
            .unwrap_or_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let results = runtime.block_on(probe::probe_all(&stores, probe::DEFAULT_TIMEOUT));
        let mut probes = self
            .probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        probes.clear();
        for (name, result) in results {
            eprintln!("layergate-operator: vectorstore/{name}: probe: {result:?}");
            probes.insert(name, result);
        }
        Ok(())
    }

    /// The latest probe result per store.
    pub fn probes(&self) -> BTreeMap<String, ProbeResult> {
        self.probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
                    eprintln!("layergate-operator: error: {e:#}");
                }
                // Minting writes files: fingerprint after the pass so they do not trigger another.
                seen = Some(fingerprint(&self.dir)?);
                next_probe = Instant::now();
            }
            if Instant::now() >= next_probe {
                if let Err(e) = self.probe_now() {
                    eprintln!("layergate-operator: probe error: {e:#}");
                }
                next_probe = Instant::now() + PROBE_INTERVAL + jitter();
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}
