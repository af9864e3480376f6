//! Directory mode (`run --source dir:PATH --out OUT`): the same validation and rendering as in a
//! cluster, fed by a directory of manifests that is polled for changes. Minted tokens are
//! written there as Secret files; status is logged; a change that cannot be rendered never
//! replaces the last good output, and the log says why.

use crate::keys;
use crate::manifests::{self, Objects};
use crate::output::{self, Settings};
use crate::validate::{self, Validation};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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

/// One pass: read, mint, validate (keeping last valid forms), render. Returns the validation
/// that was rendered, or the previous one when this pass could not render.
pub fn reconcile(
    dir: &Path,
    out: &Path,
    settings: &Settings,
    previous: Option<&Validation>,
) -> Result<Validation> {
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
    let mut v = validate::validate(&objects, &namespace, now());
    if let Some(prev) = previous {
        validate::keep_last_valid(&mut v, prev);
    }
    for (kind, name, conditions) in v
        .stores
        .iter()
        .map(|x| ("vectorstore", &x.name, &x.conditions))
        .chain(v.indexes.iter().map(|x| ("index", &x.name, &x.conditions)))
        .chain(v.keys.iter().map(|x| ("apikey", &x.name, &x.conditions)))
    {
        for c in conditions {
            eprintln!(
                "layergate-operator: {kind}/{name}: {}={} {}: {}",
                c.type_, c.status, c.reason, c.message
            );
        }
    }
    output::write(&v, out, settings).context("keeping the last good configuration")?;
    Ok(v)
}

/// Runs until the process is stopped: re-renders whenever the directory changes.
pub fn run(dir: &Path, out: &Path, settings: &Settings) -> Result<()> {
    let mut last: Option<Validation> = None;
    let mut seen = None;
    loop {
        let current = fingerprint(dir)?;
        if seen.as_ref() != Some(&current) {
            match reconcile(dir, out, settings, last.as_ref()) {
                Ok(v) => {
                    eprintln!(
                        "layergate-operator: rendered {} into {}",
                        dir.display(),
                        out.display()
                    );
                    last = Some(v);
                }
                Err(e) => eprintln!("layergate-operator: error: {e:#}"),
            }
            // Minting writes files: fingerprint after the pass so they do not trigger another.
            seen = Some(fingerprint(dir)?);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
