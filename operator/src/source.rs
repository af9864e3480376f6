//! Directory mode (`run --source dir:PATH --out OUT`): the same validation and rendering as in a
//! cluster, fed by a directory of manifests that is polled for changes. Minted tokens are
//! written there as Secret files; status is logged; a change that cannot be rendered never
//! replaces the last good output, and the log says why.

use crate::crd::ApiKey;
use crate::documents::{
    remove_secret_documents, rewrite_documents, rewrite_key_document, rotate_asked, KeyEdit,
};
use crate::files::{create_private, write_private};
use crate::keys;
use crate::keyservice;
use crate::manifests::{self, Objects};
use crate::output;
use crate::pass;
pub use crate::pass::{api_policy, Pass};
use crate::probe::{self, ProbeResult};
use crate::render::Target;
use crate::settings::Settings;
pub use crate::state::{
    jitter, Exists, Source, State, PROBE_INTERVAL, PROBE_JITTER, REVOKED_AT_ANNOTATION, STUCK_AFTER,
};
use crate::validate::{self, Validation};
use anyhow::{Context, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
            &keys::secret_manifest(
                ns,
                &name,
                &keys::mint_token()?,
                &minted_at,
                keys::rotate_value(k),
            )?,
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

/// One pass: read, mint, validate (keeping last valid forms), render. Nothing is written when
/// the pass fails. Keys are `ExpiringSoon` within the default window.
pub fn reconcile(
    dir: &Path,
    out: &Path,
    settings: &Settings,
    previous: Option<&Validation>,
) -> Result<Pass> {
    let window = Some(crate::validate::DEFAULT_EXPIRING_SOON);
    reconcile_with_window(dir, out, settings, window, previous)
}

/// [`reconcile`], with the `ExpiringSoon` window `expiring_soon` (seconds; `None`: off).
pub fn reconcile_with_window(
    dir: &Path,
    out: &Path,
    settings: &Settings,
    expiring_soon: Option<i64>,
    previous: Option<&Validation>,
) -> Result<Pass> {
    let mut objects = manifests::load_dir(dir)?;
    let namespace = output::namespace(&objects, None)?;
    let minted = mint_missing(dir, &objects, &namespace)?;
    let rotated = rotate_asked(&objects, &namespace)?;
    if minted + rotated > 0 {
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
    // With a control API the gateway syncs minted keys from its key service, with the
    // credential kept in the output directory (created once, reused across restarts).
    let gateway = match &settings.control {
        Some(_) => Some(keyservice::credential_in_dir(out)?),
        None => None,
    };
    let ctx = pass::Context {
        namespace: &namespace,
        settings,
        target: &Target::Envoy,
        gateway: gateway.as_deref(),
        now: now(),
        expiring_soon,
    };
    let before = pass::Before {
        validation: previous,
        ..pass::Before::default()
    };
    let (pass, rendering) =
        pass::run(objects, before, &ctx).context("keeping the last good configuration")?;
    log_changed_conditions(&pass.validation, previous);
    output::write(&rendering, out, settings).context("keeping the last good configuration")?;
    Ok(pass)
}

/// Logs each object's conditions that changed since `previous` (timestamps aside), as kube mode
/// writes a status.
fn log_changed_conditions(validation: &Validation, previous: Option<&Validation>) {
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
    /// How long before its expiry an Active key is `ExpiringSoon` (seconds; `None`: off).
    pub expiring_soon: Option<i64>,
}

impl DirSource {
    /// A source that has not rendered yet.
    pub fn new(dir: PathBuf, out: PathBuf, settings: Settings) -> DirSource {
        DirSource {
            dir,
            out,
            settings,
            state: State::default(),
            expiring_soon: Some(crate::validate::DEFAULT_EXPIRING_SOON),
        }
    }

    /// Runs one pass now (serialized with every other pass); the last good pass is kept when
    /// this one fails.
    pub fn refresh(&self) -> Result<()> {
        self.state.run_pass(|previous| {
            let window = self.expiring_soon;
            reconcile_with_window(&self.dir, &self.out, &self.settings, window, previous)
        })?;
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
        let started = Instant::now();
        let round = probe::probe_all(&stores, probe::DEFAULT_TIMEOUT);
        // On the operator's runtime when this thread has entered it (`run`), else on one of
        // its own (a caller without a runtime).
        let results = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime.block_on(round),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(round),
        };
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
        self.state.load_usage(&self.out)?;
        let mut seen = None;
        let mut next_probe = Instant::now();
        let mut next_save = Instant::now() + crate::usage::file::SAVE_EVERY;
        loop {
            if Instant::now() >= next_save {
                if let Err(e) = self.state.save_usage(&self.out) {
                    tracing::error!("usage: {e:#}");
                }
                next_save = Instant::now() + crate::usage::file::SAVE_EVERY;
            }
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
            &keys::secret_manifest(namespace, name, token, &minted_at, None)?,
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

    fn rotate_key(
        &self,
        pass: &Pass,
        name: &str,
        token: &str,
        rotation: &keys::Rotation,
    ) -> Result<()> {
        let secret = keys::secret_name(name);
        let file = pass
            .objects
            .secret_files
            .get(&(pass.namespace.clone(), secret.clone()))
            .with_context(|| format!("no manifest file holds the token Secret {secret}"))?;
        let edit = KeyEdit::Rotate {
            token: token.to_owned(),
            rotation: rotation.clone(),
        };
        rewrite_documents(Path::new(file), "Secret", &secret, edit)
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
