//! Checking a step's exec spec again before anything runs (defense in
//! depth) and resolving each command's working directory inside the run's
//! worktree.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use orchestrator_core::api::JobSpec;
use orchestrator_core::spec::CommandSpec;
use orchestrator_core::validate::check_command;

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

/// The project directory must be an existing absolute directory; returns it
/// canonicalized.
pub(super) fn check_project_dir(dir: &str) -> Result<PathBuf, String> {
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err(format!(
            "project directory {dir:?} is not an absolute path; expected one"
        ));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("project directory {dir:?} is not a directory")),
        Err(e) => {
            return Err(format!(
                "project directory {dir:?} is not usable on this machine: {e}"
            ))
        }
    }
    path.canonicalize()
        .map_err(|e| format!("project directory {dir:?} cannot be resolved: {e}"))
}

/// Run and stage ids become path components of the bundle directory.
pub(super) fn check_ids(spec: &JobSpec) -> Result<(), String> {
    for (what, id) in [("run id", &spec.run_id), ("stage id", &spec.stage_id)] {
        let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(format!(
                "{what} {id:?} is not usable in a path; expected letters, digits, '_', '-' or '.', starting with a letter or digit"
            ));
        }
    }
    Ok(())
}

/// Checks every command and resolves its working directory. All problems are
/// reported together; nothing runs if there is one.
pub(super) fn prepare<'a>(spec: &'a JobSpec, workdir: &Path) -> Result<Vec<Prepared<'a>>, String> {
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(spec.commands.len());
    if spec.commands.is_empty() {
        problems.push("the step has no commands; expected at least one".to_owned());
    }
    if let Err(msg) = check_env(&spec.env) {
        problems.push(format!("the step's env: {msg}"));
    }
    for (i, cmd) in spec.commands.iter().enumerate() {
        let label = format!("command {i} ({})", describe(cmd));
        match prepare_one(cmd, spec.shell, &spec.env, workdir, label) {
            Ok(p) => out.push(p),
            Err(msg) => problems.push(format!("command {i} is refused: {msg}")),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("; "))
    }
}

/// Checks one command and resolves its working directory.
pub(super) fn prepare_one<'a>(
    cmd: &'a CommandSpec,
    shell: bool,
    env: &BTreeMap<String, String>,
    workdir: &Path,
    label: String,
) -> Result<Prepared<'a>, String> {
    check_command(cmd, shell).map_err(|e| e.to_string())?;
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
fn check_env(env: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(format!(
                "invalid environment variable name {k:?}: expected letters, digits and '_'"
            ));
        }
        if v.contains('\0') {
            return Err(format!(
                "environment variable {k:?} holds a NUL byte; values must be plain strings"
            ));
        }
    }
    Ok(())
}

/// The working directory, which must resolve (symlinks followed) to a
/// directory inside the canonical working tree.
fn resolve_cwd(project: &Path, cwd: Option<&str>) -> Result<PathBuf, String> {
    let Some(cwd) = cwd else {
        return Ok(project.to_owned());
    };
    let resolved = project.join(cwd).canonicalize().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!("cwd {cwd:?} does not exist in the run's worktree")
        } else {
            format!("cwd {cwd:?} cannot be resolved: {e}")
        }
    })?;
    if !resolved.starts_with(project) {
        return Err(format!(
            "cwd {cwd:?} resolves to {}, outside the run's worktree {}; symlinks must not lead out of it",
            resolved.display(),
            project.display()
        ));
    }
    if !resolved.is_dir() {
        return Err(format!("cwd {cwd:?} is not a directory"));
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
