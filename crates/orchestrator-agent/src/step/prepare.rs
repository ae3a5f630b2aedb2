//! Checking a step's exec spec again before anything runs (defense in
//! depth) and resolving each command's working directory inside the run's
//! worktree.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use orchestrator_core::api::JobSpec;
use orchestrator_core::spec::CommandSpec;
use orchestrator_core::validate::{check_command, CommandError};

/// Longest command description quoted in an error message, in characters.
const DESCRIBE_MAX: usize = 80;

/// One command, checked and resolved, ready to spawn.
#[derive(Debug)]
pub(super) struct Prepared<'a> {
    pub spec: &'a CommandSpec,
    pub argv: Vec<String>,
    /// The cwd as written (`.` when none), for the manifest.
    pub cwd_rel: String,
    /// The canonical working directory.
    pub cwd_abs: PathBuf,
    /// Names of the variables the step sets for this command.
    pub env_keys: Vec<String>,
    /// For messages: `command N (argv0 args...)`.
    pub label: String,
}

/// Why a step has no project directory to write its bundle in.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProjectError {
    /// `what` is `run id` or `stage id`.
    #[error("{what} {id:?} is not usable in a path; expected letters, digits, '_', '-' or '.', starting with a letter or digit (and for a matrix stage, its values in brackets)")]
    BadId { what: &'static str, id: String },
    #[error("project directory {dir:?} is not an absolute path; expected one")]
    NotAbsolute { dir: String },
    #[error("project directory {dir:?} is not a directory")]
    NotADirectory { dir: String },
    #[error("project directory {dir:?} is not usable on this machine: {source}")]
    Unusable {
        dir: String,
        #[source]
        source: io::Error,
    },
    #[error("project directory {dir:?} cannot be resolved: {source}")]
    Unresolved {
        dir: String,
        #[source]
        source: io::Error,
    },
}

/// Why one command is refused before anything runs.
#[derive(Debug, thiserror::Error)]
pub(super) enum CommandRefused {
    #[error(transparent)]
    Rules(#[from] CommandError),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Cwd(#[from] CwdError),
}

/// A variable the OS cannot carry (or that would mean something else).
#[derive(Debug, thiserror::Error)]
pub(super) enum EnvError {
    #[error("invalid environment variable name {name:?}: expected letters, digits and '_'")]
    BadName { name: String },
    #[error("environment variable {name:?} holds a NUL byte; values must be plain strings")]
    Nul { name: String },
}

/// Why a command's working directory is not one inside the worktree.
#[derive(Debug, thiserror::Error)]
pub(super) enum CwdError {
    #[error("cwd {cwd:?} does not exist in the run's worktree")]
    Missing { cwd: String },
    #[error("cwd {cwd:?} cannot be resolved: {source}")]
    Unresolved {
        cwd: String,
        #[source]
        source: io::Error,
    },
    /// A symlink on the way leads out of the worktree.
    #[error("cwd {cwd:?} resolves to {}, outside the run's worktree {}; symlinks must not lead out of it", .resolved.display(), .worktree.display())]
    Outside {
        cwd: String,
        resolved: PathBuf,
        worktree: PathBuf,
    },
    #[error("cwd {cwd:?} is not a directory")]
    NotADirectory { cwd: String },
}

/// One reason a step is refused before anything runs.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("the step has no commands; expected at least one")]
    NoCommands,
    #[error("the step's env: {0}")]
    Env(#[source] EnvError),
    #[error("command {i} is refused: {source}")]
    Command {
        i: usize,
        #[source]
        source: CommandRefused,
    },
}

/// Every reason a step is refused, in the order of its spec.
#[derive(Debug)]
pub(super) struct StepRefused(pub Vec<Refusal>);

impl std::fmt::Display for StepRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, r) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StepRefused {}

/// The project directory must be an existing absolute directory; returns it
/// canonicalized.
pub(super) fn check_project_dir(dir: &str) -> Result<PathBuf, ProjectError> {
    let path = Path::new(dir);
    let dir = || dir.to_owned();
    if !path.is_absolute() {
        return Err(ProjectError::NotAbsolute { dir: dir() });
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(ProjectError::NotADirectory { dir: dir() }),
        Err(source) => return Err(ProjectError::Unusable { dir: dir(), source }),
    }
    path.canonicalize()
        .map_err(|source| ProjectError::Unresolved { dir: dir(), source })
}

/// Run and stage ids become path components of the bundle directory.
pub(super) fn check_ids(spec: &JobSpec) -> Result<(), ProjectError> {
    use orchestrator_core::validate::{is_valid_id, is_valid_stage_id};
    // A matrix stage's id (`test[py=3.12,os=linux]`) adds `[`, `]`, `=`,
    // `,` and `+`: still one plain path component, never `/` or `..`.
    for (what, id, ok) in [
        (
            "run id",
            spec.run_id.as_str(),
            is_valid_id(spec.run_id.as_str()),
        ),
        (
            "stage id",
            spec.stage_id.as_str(),
            is_valid_stage_id(&spec.stage_id),
        ),
    ] {
        if !ok {
            return Err(ProjectError::BadId {
                what,
                id: id.to_owned(),
            });
        }
    }
    Ok(())
}

/// Checks every command and resolves its working directory. All problems are
/// reported together; nothing runs if there is one.
pub(super) fn prepare<'a>(
    spec: &'a JobSpec,
    workdir: &Path,
) -> Result<Vec<Prepared<'a>>, StepRefused> {
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(spec.commands.len());
    if spec.commands.is_empty() {
        problems.push(Refusal::NoCommands);
    }
    if let Err(e) = check_env(&spec.env) {
        problems.push(Refusal::Env(e));
    }
    for (i, cmd) in spec.commands.iter().enumerate() {
        let label = format!("command {i} ({})", describe(cmd));
        match prepare_one(cmd, spec.shell, &spec.env, workdir, label) {
            Ok(p) => out.push(p),
            Err(source) => problems.push(Refusal::Command { i, source }),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(StepRefused(problems))
    }
}

/// Checks one command and resolves its working directory.
pub(super) fn prepare_one<'a>(
    cmd: &'a CommandSpec,
    shell: bool,
    env: &BTreeMap<String, String>,
    workdir: &Path,
    label: String,
) -> Result<Prepared<'a>, CommandRefused> {
    check_command(cmd, shell)?;
    check_env(&cmd.env)?;
    let cwd_abs = resolve_cwd(workdir, cmd.cwd.as_deref())?;
    let argv = match &cmd.run {
        Some(run) => vec!["/bin/sh".to_owned(), "-c".to_owned(), run.clone()],
        None => cmd.argv.clone(),
    };
    let env_keys: BTreeSet<&String> = env.keys().chain(cmd.env.keys()).collect();
    Ok(Prepared {
        spec: cmd,
        argv,
        cwd_rel: cmd.cwd.clone().unwrap_or_else(|| ".".to_owned()),
        cwd_abs,
        env_keys: env_keys.into_iter().cloned().collect(),
        label,
    })
}

/// Names and values the OS cannot carry (or that would mean something else).
fn check_env(env: &BTreeMap<String, String>) -> Result<(), EnvError> {
    for (k, v) in env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(EnvError::BadName { name: k.clone() });
        }
        if v.contains('\0') {
            return Err(EnvError::Nul { name: k.clone() });
        }
    }
    Ok(())
}

/// The working directory, which must resolve (symlinks followed) to a
/// directory inside the canonical working tree.
fn resolve_cwd(project: &Path, cwd: Option<&str>) -> Result<PathBuf, CwdError> {
    let Some(cwd) = cwd else {
        return Ok(project.to_owned());
    };
    let resolved = project.join(cwd).canonicalize().map_err(|source| {
        let cwd = cwd.to_owned();
        if source.kind() == io::ErrorKind::NotFound {
            CwdError::Missing { cwd }
        } else {
            CwdError::Unresolved { cwd, source }
        }
    })?;
    if !resolved.starts_with(project) {
        return Err(CwdError::Outside {
            cwd: cwd.to_owned(),
            resolved,
            worktree: project.to_owned(),
        });
    }
    if !resolved.is_dir() {
        return Err(CwdError::NotADirectory {
            cwd: cwd.to_owned(),
        });
    }
    Ok(resolved)
}

/// A short human form of a command for messages: `sleep 10`, `sh -c "..."`.
pub(super) fn describe(cmd: &CommandSpec) -> String {
    let text = match &cmd.run {
        Some(run) => run.clone(),
        None => cmd
            .argv
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains(char::is_whitespace) || a.contains(['"', '\'']) {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    };
    if text.chars().count() > DESCRIBE_MAX {
        let cut: String = text.chars().take(DESCRIBE_MAX - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_quote_and_truncate() {
        let cmd = CommandSpec {
            argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
            run: None,
            cwd: None,
            env: BTreeMap::new(),
            timeout: None,
        };
        assert_eq!(describe(&cmd), r#"sh -c "exit 3""#);
        let long = CommandSpec {
            argv: vec!["x".repeat(200)],
            ..cmd
        };
        assert_eq!(describe(&long).chars().count(), DESCRIBE_MAX);
    }

    #[test]
    fn ids_that_would_leave_the_bundle_tree_are_refused() {
        let spec = |run_id: &str| JobSpec {
            run_id: run_id.into(),
            stage_id: "s".into(),
            step: 0,
            steps_total: 1,
            attempt: 1,
            step_name: None,
            project_dir: "/".into(),
            shell: false,
            commands: vec![],
            ..JobSpec::default()
        };
        assert!(check_ids(&spec("01HX-run")).is_ok());
        assert!(check_ids(&spec("..")).is_err());
        assert!(check_ids(&spec("a/b")).is_err());
        assert!(check_ids(&spec("")).is_err());
    }
}
