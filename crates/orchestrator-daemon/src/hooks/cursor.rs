//! Where each hook target's cursor survives a restart: `hooks.json` in the
//! data directory, rewritten whole and atomically (temporary file, fsync,
//! rename) after every event a target handles.
//!
//! Why a file and not a store table: a cursor is the hub's own bookkeeping,
//! not the state of a run, stage or job, so it needs no transition row and
//! no place in the state machines; keeping it out of the store keeps the
//! store's tables and migrations (on both databases) free of it. The price is that the cursor is not written in the same transaction as
//! anything, which at-least-once delivery does not need: a crash between a
//! delivery and its cursor write means that one event is sent again, with the
//! same `seq` so the receiver can tell.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::HooksError;

/// What is kept per target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The target's token-free URL, for a human reading the file.
    pub url: String,
    /// Every transition up to this seq has been handled.
    pub cursor: i64,
    pub delivered: u64,
    pub failed: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    /// By target key (`kind:hash of the URL`).
    targets: BTreeMap<String, Saved>,
}

/// The cursors of every target, and the file they live in (none: kept in
/// memory only, so a restart starts each target afresh at the log's end).
#[derive(Clone)]
pub struct Cursors {
    inner: Arc<Mutex<File>>,
    path: Option<PathBuf>,
}

impl Cursors {
    /// Reads the file; a missing file is an empty one. A file that cannot be
    /// read is an error rather than a fresh start, which would skip events.
    pub fn load(path: Option<PathBuf>) -> Result<Cursors, HooksError> {
        let file = match &path {
            None => File::default(),
            Some(p) => match std::fs::read(p) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| HooksError::State {
                    path: p.clone(),
                    error: format!(
                        "{e}; fix it or remove it (each hook then starts at the log's end)"
                    ),
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
                Err(e) => {
                    return Err(HooksError::State {
                        path: p.clone(),
                        error: e.to_string(),
                    })
                }
            },
        };
        Ok(Cursors {
            inner: Arc::new(Mutex::new(file)),
            path,
        })
    }

    /// The saved state of one target.
    pub fn get(&self, key: &str) -> Option<Saved> {
        self.lock().targets.get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, File> {
        // A panic while holding the lock leaves a map that is still whole
        // (every update is one insert), so a poisoned lock is safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one target's state and rewrites the file. Blocking file work
    /// runs off the async threads.
    pub async fn save(&self, key: &str, saved: Saved) -> Result<(), HooksError> {
        let this = self.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut file = this.lock();
            file.targets.insert(key, saved);
            match &this.path {
                // Written under the lock, so two targets never interleave writes.
                Some(p) => write_atomic(p, &file).map_err(|e| HooksError::State {
                    path: p.clone(),
                    error: e.to_string(),
                }),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| HooksError::State {
            path: self.path.clone().unwrap_or_default(),
            error: format!("cursor writer failed: {e}"),
        })?
    }
}

fn write_atomic(path: &Path, file: &File) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cursors_survive_a_reload_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hooks.json");
        let c = Cursors::load(Some(path.clone())).unwrap();
        assert_eq!(c.get("webhook:1"), None);
        let saved = Saved {
            url: "http://x/".into(),
            cursor: 17,
            delivered: 3,
            failed: 1,
        };
        c.save("webhook:1", saved.clone()).await.unwrap();
        let again = Cursors::load(Some(path.clone())).unwrap();
        assert_eq!(again.get("webhook:1"), Some(saved));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"{not json").unwrap();
        let err = Cursors::load(Some(path)).err().unwrap().to_string();
        assert!(err.contains("hooks.json"), "{err}");
    }
}
