//! The exec-safety rules of what a step runs and names: a command is argv
//! or an allowed shell string, its paths stay inside the worktree, a mount
//! names one host path plainly. The agent checks commands again before
//! running anything.

use super::{CommandError, RelativePathError};
use crate::spec::CommandSpec;

/// Checks one command against the exec-safety rules. The agent calls this again
/// before running anything (defense in depth).
pub fn check_command(cmd: &CommandSpec, shell_allowed: bool) -> Result<(), CommandError> {
    match (&cmd.run, cmd.argv.is_empty()) {
        (Some(_), false) => return Err(CommandError::BothArgvAndRun),
        (None, true) => return Err(CommandError::Neither),
        (Some(r), true) => {
            if !shell_allowed {
                return Err(CommandError::ShellNotAllowed { run: r.clone() });
            }
            if r.trim().is_empty() {
                return Err(CommandError::EmptyRun);
            }
        }
        (None, false) => {
            if cmd.argv[0].is_empty() {
                return Err(CommandError::EmptyProgram);
            }
        }
    }
    if cmd
        .argv
        .iter()
        .chain(cmd.run.iter())
        .chain(cmd.cwd.iter())
        .any(|a| a.contains('\0'))
    {
        return Err(CommandError::Nul);
    }
    if let Some(cwd) = &cmd.cwd {
        check_relative_path(cwd).map_err(|source| CommandError::Cwd {
            cwd: cwd.clone(),
            source,
        })?;
    }
    Ok(())
}

/// A path a step names must be relative and stay inside the project directory.
pub fn check_relative_path(p: &str) -> Result<(), RelativePathError> {
    if p.starts_with('/') {
        return Err(RelativePathError::Absolute);
    }
    let mut depth: i64 = 0;
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return Err(RelativePathError::Escapes);
        }
    }
    Ok(())
}

/// A mount must name one host path plainly: absolute (not `/` itself) or
/// `~/...`, without `..`, and no control characters.
pub(super) fn check_mount(m: &str) -> Result<(), &'static str> {
    let rest = if let Some(r) = m.strip_prefix("~/") {
        r
    } else if let Some(r) = m.strip_prefix('/') {
        r
    } else {
        return Err("expected an absolute path or one in the agent's home (~/...)");
    };
    if rest.trim_matches('/').is_empty() {
        return Err("expected a directory or file below /, not the whole file system or home");
    }
    if m.chars().any(char::is_control) {
        return Err("expected a path without control characters");
    }
    if rest.split('/').any(|c| c == "..") {
        return Err("expected a path without `..`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_must_stay_inside() {
        assert!(check_relative_path("a/b").is_ok());
        assert!(check_relative_path("a/../b").is_ok());
        assert!(check_relative_path("../b").is_err());
        assert!(check_relative_path("a/../../b").is_err());
        assert!(check_relative_path("/etc").is_err());
    }
}
