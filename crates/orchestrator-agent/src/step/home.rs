//! What a step brings in from the host, and the home it writes to.
//!
//! A sandbox hides the agent's home, `/tmp` and the orchestrator's own
//! directories, so a step does not find the user's tools (a venv, `~/.cargo`,
//! an agent's configuration). A stage names the host paths it needs in
//! `mounts:`; the agent binds each read-only at its own path when it lies
//! under a path the agent allows (`orch agent --allow-mount`) and holds no
//! directory of the orchestrator's. Each stage of a run also gets a home of
//! its own, writable and kept between its steps
//! (`.orchestrator/homes/<run>/<stage>`, hidden from every other step), with
//! a git identity, and a link in it for each `~/...` mount, so that tools
//! that look in `$HOME` find what was mounted.

use orchestrator_core::RunId;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use orchestrator_host::confined::{ConfinedDir, ConfinedError};

/// Why mount `j` of a stage (`mount` as written) is refused; the step
/// fails, naming the field and what to do.
#[derive(Debug, thiserror::Error)]
pub(super) enum MountError {
    #[error("mounts[{j}] {mount:?}: this agent has no HOME to find it in")]
    NoHome { j: usize, mount: String },
    #[error("mounts[{j}] {mount:?}: {} cannot be mounted on this agent: {source}", .path.display())]
    Unreadable {
        j: usize,
        mount: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounts[{j}] {mount:?}: {} is not a directory; expected a directory to bind read-only", .real.display())]
    NotADirectory {
        j: usize,
        mount: String,
        real: PathBuf,
    },
    /// Under no `--allow-mount` path (those are `allowed`).
    #[error("mounts[{j}] {mount:?}: {} is not under a path this agent allows to be mounted; its operator allows it with `orch agent --allow-mount {}`{}", .real.display(), .real.display(), allows(.allowed))]
    NotAllowed {
        j: usize,
        mount: String,
        real: PathBuf,
        allowed: Vec<PathBuf>,
    },
    /// It holds or lies in a directory of the orchestrator's (`private`).
    #[error("mounts[{j}] {mount:?}: {} holds or lies in {}, a directory of the orchestrator's own, which no step may see", .real.display(), .private.display())]
    Private {
        j: usize,
        mount: String,
        real: PathBuf,
        private: PathBuf,
    },
}

/// ` (this agent allows A, B)`, or that it allows none.
fn allows(allowed: &[PathBuf]) -> String {
    if allowed.is_empty() {
        " (this agent allows none)".to_owned()
    } else {
        format!(
            " (this agent allows {})",
            allowed
                .iter()
                .map(|a| a.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Why the stage's home cannot be made ready.
#[derive(Debug, thiserror::Error)]
pub(super) enum HomeError {
    #[error("making the step's home: {0}")]
    Make(#[source] ConfinedError),
    #[error("writing the step's git identity: {0}")]
    CreateIdentity(#[source] ConfinedError),
    #[error("writing the step's git identity: {0}")]
    WriteIdentity(#[source] io::Error),
    /// A `~/...` mount whose path is not UTF-8.
    #[error("~/{}: not UTF-8", .rel.display())]
    NotUtf8 { rel: PathBuf },
    #[error("linking ~/{} into the step's home: {source}", .rel.display())]
    Link {
        rel: PathBuf,
        #[source]
        source: ConfinedError,
    },
}

/// A stage's mounts resolved on this agent: the host paths to bind, and
/// the `~/...` ones by their place in the home.
#[derive(Debug, Default)]
pub(super) struct Mounts {
    pub paths: Vec<PathBuf>,
    /// (path under the home, host path) for each `~/...` mount.
    pub in_home: Vec<(PathBuf, PathBuf)>,
}

/// Resolves and checks `mounts` (from the job) against `allowed` and the
/// orchestrator's `private` directories; an error names the field and what
/// to do.
pub(super) fn resolve(
    mounts: &[String],
    allowed: &[PathBuf],
    private: &[PathBuf],
) -> Result<Mounts, MountError> {
    let mut out = Mounts::default();
    if mounts.is_empty() {
        return Ok(out);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let allowed: Vec<PathBuf> = allowed
        .iter()
        .map(|a| match (a.strip_prefix("~"), &home) {
            (Ok(rest), Some(h)) => h.join(rest),
            _ => a.clone(),
        })
        .filter_map(|a| std::fs::canonicalize(a).ok())
        .collect();
    let private: Vec<PathBuf> = private
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .chain([PathBuf::from("/run/orch")])
        .collect();
    for (j, m) in mounts.iter().enumerate() {
        let mount = || m.clone();
        let (path, in_home) = match m.strip_prefix("~/") {
            Some(rest) => match &home {
                Some(h) => (h.join(rest), Some(PathBuf::from(rest))),
                None => return Err(MountError::NoHome { j, mount: mount() }),
            },
            None => (PathBuf::from(m), None),
        };
        let real = match std::fs::canonicalize(&path) {
            Ok(real) => real,
            Err(source) => {
                return Err(MountError::Unreadable {
                    j,
                    mount: mount(),
                    path,
                    source,
                })
            }
        };
        if !real.is_dir() {
            return Err(MountError::NotADirectory {
                j,
                mount: mount(),
                real,
            });
        }
        if !allowed.iter().any(|a| real.starts_with(a)) {
            return Err(MountError::NotAllowed {
                j,
                mount: mount(),
                real,
                allowed,
            });
        }
        if let Some(p) = private
            .iter()
            .find(|p| real.starts_with(p) || p.starts_with(&real))
        {
            return Err(MountError::Private {
                j,
                mount: mount(),
                real,
                private: p.clone(),
            });
        }
        if let Some(rel) = in_home {
            out.in_home.push((rel, real.clone()));
        }
        out.paths.push(real);
    }
    out.paths.sort();
    out.paths.dedup();
    Ok(out)
}

/// Makes (or opens) the stage's home under `project`, writes its git
/// identity when missing, and links each `~/...` mount into it.
pub(super) fn prepare(
    project: &Path,
    run_id: &RunId,
    stage_id: &str,
    mounts: &Mounts,
) -> Result<PathBuf, HomeError> {
    let rel = Path::new(".orchestrator/homes")
        .join(run_id.as_str())
        .join(stage_id);
    let home = ConfinedDir::open(project, &rel, true).map_err(HomeError::Make)?;
    // The step writes its home: the agent makes its files afresh, through
    // the directory, never following what the step left.
    if !home.holds_name(".gitconfig") {
        let mut f = home
            .create(".gitconfig")
            .map_err(HomeError::CreateIdentity)?;
        let text = "[user]\n\tname = orch step\n\temail = step@orch.invalid\n[init]\n\tdefaultBranch = main\n";
        f.write_all(text.as_bytes())
            .map_err(HomeError::WriteIdentity)?;
    }
    for (rel, host) in &mounts.in_home {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name().and_then(|n| n.to_str()))
        else {
            continue;
        };
        let mut dir = home.clone();
        for part in parent.iter() {
            let part = part
                .to_str()
                .ok_or_else(|| HomeError::NotUtf8 { rel: rel.clone() })?;
            dir = dir.subdir(part, true).map_err(|source| HomeError::Link {
                rel: rel.clone(),
                source,
            })?;
        }
        dir.link(name, host).map_err(|source| HomeError::Link {
            rel: rel.clone(),
            source,
        })?;
    }
    Ok(home.path().to_owned())
}
