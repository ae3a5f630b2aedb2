//! Where `orch` keeps its data, and the tokens in it. `orch up` creates them
//! (mode 0600) so a local user never has to handle a token by hand.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The data directory: `--data-dir`, `$ORCH_DATA_DIR`, or `~/.local/share/orch`.
pub fn data_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("orch");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/orch"),
        None => PathBuf::from(".orch"),
    }
}

/// Reads a token file, creating it with a fresh secret (mode 0600) when missing.
pub fn ensure_token(dir: &Path, name: &str) -> Result<String> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let token = orchestrator_host::new_secret();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok(token)
}

/// Writes `text` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {} into place", tmp.display()))
}

/// The file where a running daemon writes its address.
pub fn endpoint_file(dir: &Path) -> PathBuf {
    dir.join("endpoint")
}

/// Registers `dirs` as the orchestrator's private directories on this
/// machine: every sandbox of every agent here hides them (see
/// `orchestrator_agent::sandbox::private`). A failure is logged, not fatal:
/// the agent still hides its own data directory.
pub fn register_private(dirs: &[PathBuf]) {
    let dirs: Vec<PathBuf> = dirs
        .iter()
        .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone()))
        .collect();
    if let Err(e) = orchestrator_agent::sandbox::private::register(&dirs) {
        tracing::warn!(error = %e, dirs = ?dirs, "cannot register the private directories; steps of other agents on this machine may see them");
    }
}
