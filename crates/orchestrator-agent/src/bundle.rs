//! The bundle of one attempt, on disk: its directory inside the project, the
//! per-command log files and the `manifest.json` that records what ran.
//!
//! It exists so that the layout of a bundle (names, atomic manifest writes, the
//! rule that a bundle stays inside the project directory) lives in one place,
//! apart from the running of commands. Log files are opened here and handed to
//! the child processes as their stdout and stderr, so output goes straight to
//! disk without passing through the agent.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use orchestrator_core::api::Manifest;

/// Name of the manifest inside a bundle directory.
pub const MANIFEST: &str = "manifest.json";

/// Name of command `index`'s stdout log inside a bundle directory.
pub fn stdout_name(index: usize) -> String {
    format!("cmd-{index:03}.stdout.log")
}

/// Name of command `index`'s stderr log inside a bundle directory.
pub fn stderr_name(index: usize) -> String {
    format!("cmd-{index:03}.stderr.log")
}

/// Why a bundle could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The directory or a file in it could not be created or written.
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The bundle path leads outside the project directory (a symlink inside
    /// the project, such as `.orchestrator -> /`): the project's fault.
    #[error("bundle directory {} resolves to {}, outside the project directory {}; symlinks must not lead out of the project", rel, resolved.display(), project.display())]
    Escapes {
        rel: String,
        resolved: PathBuf,
        project: PathBuf,
    },
}

/// The bundle directory of one attempt, created and checked.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute path of the directory (under the canonical project directory).
    dir: PathBuf,
    /// The same directory relative to the project directory, as reported.
    rel: String,
}

impl Bundle {
    /// Creates `project/rel` (and its parents) and checks that it resolves to a
    /// directory inside `project`, which must already be canonical.
    pub fn create(project: &Path, rel: &str) -> Result<Self, BundleError> {
        let dir = project.join(rel);
        // Check the part that already exists before creating anything, so that
        // a symlink out of the project never gets directories made through it.
        let mut existing = dir.clone();
        while !existing.exists() && existing.pop() {}
        check_inside(project, rel, &existing)?;
        fs::create_dir_all(&dir).map_err(|source| BundleError::Io {
            what: "create the bundle directory",
            path: dir.clone(),
            source,
        })?;
        let resolved = check_inside(project, rel, &dir)?;
        Ok(Bundle {
            dir: resolved,
            rel: rel.to_owned(),
        })
    }

    /// Absolute path of the bundle directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bundle directory relative to the project directory.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// Creates (or truncates) command `index`'s stdout and stderr logs.
    pub fn open_logs(&self, index: usize) -> Result<(File, File), BundleError> {
        let open = |name: String| {
            let path = self.dir.join(name);
            File::create(&path).map_err(|source| BundleError::Io {
                what: "create the log file",
                path,
                source,
            })
        };
        Ok((open(stdout_name(index))?, open(stderr_name(index))?))
    }

    /// Writes `manifest.json` atomically (temporary file, fsync, rename), on
    /// tokio's blocking pool so that the fsync does not stall other jobs.
    /// Writes `manifest.json` and returns the bytes written.
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<Vec<u8>, BundleError> {
        let dir = self.dir.clone();
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| BundleError::Io {
            what: "serialize the manifest for",
            path: dir.join(MANIFEST),
            source: io::Error::other(e),
        })?;
        let bytes = json.clone();
        match tokio::task::spawn_blocking(move || write_atomically(&dir, MANIFEST, &json)).await {
            Ok(result) => result.map(|()| bytes),
            Err(join) => Err(BundleError::Io {
                what: "write the manifest in",
                path: self.dir.clone(),
                source: io::Error::other(join),
            }),
        }
    }
}

/// Resolves `path` and checks that it lies inside `project` (canonical).
fn check_inside(project: &Path, rel: &str, path: &Path) -> Result<PathBuf, BundleError> {
    let resolved = path.canonicalize().map_err(|source| BundleError::Io {
        what: "resolve the bundle directory",
        path: path.to_owned(),
        source,
    })?;
    if !resolved.starts_with(project) {
        return Err(BundleError::Escapes {
            rel: rel.to_owned(),
            resolved,
            project: project.to_owned(),
        });
    }
    Ok(resolved)
}

/// Writes `dir/name` by way of `dir/name.tmp`: readers see the old file or
/// the whole new one, never a part.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dest = dir.join(name);
    let io_err = |what, path: &Path| {
        let path = path.to_owned();
        move |source| BundleError::Io { what, path, source }
    };
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.write_all(b"\n").map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, &dest).map_err(io_err("rename the manifest into", &dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_zero_padded() {
        assert_eq!(stdout_name(0), "cmd-000.stdout.log");
        assert_eq!(stderr_name(12), "cmd-012.stderr.log");
    }

    #[test]
    fn a_symlink_out_of_the_project_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path().canonicalize().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), project.join(".orchestrator")).unwrap();
        let err = Bundle::create(&project, ".orchestrator/runs/r/s/x").unwrap_err();
        assert!(matches!(err, BundleError::Escapes { .. }), "{err}");
        // Nothing was created through the link.
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn manifest_write_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_atomically(tmp.path(), MANIFEST, b"{}").unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join(MANIFEST)).unwrap(),
            "{}\n"
        );
        assert!(!tmp.path().join("manifest.json.tmp").exists());
    }
}
