//! Files only their owner can read (tokens, credentials, renderings that hold them), written
//! atomically: the one writer every directory output uses.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

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
        crate::random::random_u16(),
        crate::random::random_u16()
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
