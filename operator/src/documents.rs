//! Edits of manifest files in directory mode, one document at a time: the control API's
//! revoke, delete and rotate, written back into the file each object was read from (other
//! documents stay; comments in the file are lost).

use crate::files::write_private;
use crate::manifests;
use crate::pass::Pass;
use crate::state::REVOKED_AT_ANNOTATION;
use crate::validate;
use anyhow::Result;
use std::path::Path;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Rotates every token whose ApiKey asks for it with the `hevlayer.com/rotate` annotation
/// ([`validate::rotations_due`]): the new token and the record go into the Secret's document,
/// in the file it was read from. Returns how many were rotated.
pub fn rotate_asked(objects: &manifests::Objects, namespace: &str) -> Result<usize> {
    let mut rotated = 0;
    for (name, rotation) in validate::rotations_due(objects, namespace, now()) {
        let secret = crate::keys::secret_name(&name);
        let Some(file) = objects
            .secret_files
            .get(&(namespace.to_owned(), secret.clone()))
        else {
            continue;
        };
        let token = crate::keys::mint_token()?;
        rewrite_documents(
            Path::new(file),
            "Secret",
            &secret,
            KeyEdit::Rotate { token, rotation },
        )?;
        tracing::info!(apikey = %format!("{namespace}/{name}"), "rotated the token, as its hevlayer.com/rotate annotation asks");
        rotated += 1;
    }
    Ok(rotated)
}

/// Removes every Secret document named `secret` in the pass's namespace from the file it was
/// read from (a file left empty is removed).
pub fn remove_secret_documents(pass: &Pass, secret: &str) -> Result<()> {
    let id = (pass.namespace.clone(), secret.to_owned());
    if let Some(file) = pass.objects.secret_files.get(&id) {
        let file = Path::new(file);
        if file.exists() {
            rewrite_documents(file, "Secret", secret, KeyEdit::Delete)?;
        }
    }
    Ok(())
}

/// One edit of a document.
pub enum KeyEdit {
    /// Sets `spec.revoked` and the revoked-at annotation (an ApiKey).
    Revoke,
    /// Removes the document.
    Delete,
    /// Puts a new token in a token Secret (`stringData`, replacing `data`'s) and the
    /// rotation's annotations (an unset one removed); the minted-at annotation stays, so the
    /// key's lifetime does not start again.
    Rotate {
        /// The new token.
        token: String,
        /// What the Secret records of the rotation.
        rotation: crate::keys::Rotation,
    },
}

/// Revokes or removes one ApiKey document in a manifest file (other documents stay; comments
/// in the file are lost).
pub fn rewrite_key_document(file: &Path, name: &str, edit: KeyEdit) -> Result<()> {
    rewrite_documents(file, "ApiKey", name, edit)
}

/// Revokes (ApiKeys) or removes one `kind`/`name` document in a manifest file, split into
/// documents exactly as the loader reads it ([`manifests::split_documents`]). A file that holds
/// no such document is an error: the write would change nothing.
pub fn rewrite_documents(file: &Path, kind: &str, name: &str, edit: KeyEdit) -> Result<()> {
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
            (true, KeyEdit::Rotate { token, rotation }, Some(mut v)) => {
                if let Some(serde_yaml::Value::Mapping(data)) = v.get_mut("data") {
                    data.remove(crate::keys::TOKEN_KEY);
                }
                if !v["stringData"].is_mapping() {
                    v["stringData"] = serde_yaml::Value::Mapping(Default::default());
                }
                v["stringData"][crate::keys::TOKEN_KEY] = serde_yaml::Value::String(token.clone());
                if let serde_yaml::Value::Mapping(meta) = &mut v["metadata"] {
                    let annotations = meta
                        .entry("annotations".into())
                        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
                    if let serde_yaml::Value::Mapping(a) = annotations {
                        for (k, value) in rotation.annotations() {
                            match value {
                                Some(x) => a.insert(k.into(), x.into()),
                                None => a.remove(k.as_str()),
                            };
                        }
                    }
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
