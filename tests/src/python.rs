//! Runs the scripts in `tests/python/` with the venv's interpreter (the official clients).

use anyhow::{Context, Result};
use std::process::Command;

/// Runs `tests/python/<script> args…`; returns its exit code and the JSON it printed.
pub fn run_script(script: &str, args: &[&str]) -> Result<(i32, serde_json::Value)> {
    let python = crate::paths::python()?;
    let path = crate::paths::repo_root().join("tests/python").join(script);
    let out = Command::new(python)
        .arg(&path)
        .args(args)
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "{script} printed no JSON:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.code().unwrap_or(-1), json))
}
