//! The bundle of one attempt, on disk: its directory inside the project, the
//! per-command log files and the `manifest.json` that records what ran.
//!
//! It exists so that the layout of a bundle (names, atomic manifest writes, the
//! rule that a bundle stays inside the project directory) lives in one place,
//! apart from the running of commands. Log files are opened here and handed to
//! the child processes as their stdout and stderr, so output goes straight to
//! disk without passing through the agent.
//!
//! The step can write its bundle directory (it may keep files there), so the
//! agent reaches it only through a [`ConfinedDir`]: every file it makes there
//! replaces whatever a step planted at the name and never follows a link.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use orchestrator_core::api::Manifest;

use orchestrator_host::confined::{ConfinedDir, ConfinedError};

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
    /// A component of the bundle path is a symlink or not a directory (a
    /// symlink inside the project, such as `.orchestrator -> /`): the
    /// project's fault.
    #[error("bundle directory {rel} under {}: {source}; symlinks must not lead out of the project", project.display())]
    Escapes {
        rel: String,
        project: PathBuf,
        #[source]
        source: ConfinedError,
    },
    /// A file of the bundle could not be made or replaced.
    #[error(transparent)]
    Confined(#[from] ConfinedError),
}

/// The bundle directory of one attempt, created and checked.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The directory, opened without following links.
    dir: ConfinedDir,
    /// The same directory relative to the project directory, as reported.
    rel: String,
}

impl Bundle {
    /// Creates `project/rel` (and its parents), walking it without following
    /// links; `project` must already be canonical.
    pub fn create(project: &Path, rel: &str) -> Result<Self, BundleError> {
        let dir =
            ConfinedDir::open(project, Path::new(rel), true).map_err(|source| match source {
                ConfinedError::NotADirectory { link: true, .. } | ConfinedError::BadName { .. } => {
                    BundleError::Escapes {
                        rel: rel.to_owned(),
                        project: project.to_owned(),
                        source,
                    }
                }
                ConfinedError::Io { what, path, source } => BundleError::Io { what, path, source },
                ConfinedError::NotADirectory { path, found, .. } => BundleError::Io {
                    what: "create the bundle directory",
                    source: io::Error::new(io::ErrorKind::NotADirectory, found),
                    path,
                },
                other => BundleError::Confined(other),
            })?;
        Ok(Bundle {
            dir,
            rel: rel.to_owned(),
        })
    }

    /// Absolute path of the bundle directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The bundle directory itself, for files made or read in it.
    pub fn confined(&self) -> &ConfinedDir {
        &self.dir
    }

    /// The bundle directory relative to the project directory.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// Creates command `index`'s stdout and stderr logs afresh, replacing
    /// whatever the step left at their names; open for reading and writing,
    /// so that the agent can read back what the command wrote through its
    /// own descriptor.
    pub fn open_logs(&self, index: usize) -> Result<(File, File), BundleError> {
        Ok((
            self.dir.create(&stdout_name(index))?,
            self.dir.create(&stderr_name(index))?,
        ))
    }

    /// Writes `manifest.json` atomically (temporary file, fsync, rename), on
    /// tokio's blocking pool so that the fsync does not stall other jobs,
    /// and returns the bytes written.
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<Vec<u8>, BundleError> {
        let dir = self.dir.clone();
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| BundleError::Io {
            what: "serialize the manifest for",
            path: self.dir().join(MANIFEST),
            source: io::Error::other(e),
        })?;
        let bytes = json.clone();
        match tokio::task::spawn_blocking(move || write_atomically(&dir, MANIFEST, &json)).await {
            Ok(result) => result.map(|()| bytes),
            Err(join) => Err(BundleError::Io {
                what: "write the manifest in",
                path: self.dir().to_owned(),
                source: io::Error::other(join),
            }),
        }
    }
}

/// Writes `dir/name` by way of `dir/name.tmp`: readers see the old file or
/// the whole new one, never a part.
fn write_atomically(dir: &ConfinedDir, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
    let tmp = format!("{name}.tmp");
    let io_err = |what, name: &str| {
        let path = dir.path().join(name);
        move |source| BundleError::Io { what, path, source }
    };
    let mut f = dir.create(&tmp)?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.write_all(b"\n").map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(f);
    Ok(dir.rename(&tmp, name)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
        let dir = ConfinedDir::open(tmp.path(), Path::new(""), false).unwrap();
        write_atomically(&dir, MANIFEST, b"{}").unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join(MANIFEST)).unwrap(),
            "{}\n"
        );
        assert!(!tmp.path().join("manifest.json.tmp").exists());
    }
}
