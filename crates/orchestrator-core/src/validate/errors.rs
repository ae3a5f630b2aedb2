//! Why a command, a path or an artifact glob breaks the exec-safety rules.
//! A command's messages are fragments: the caller names the command first
//! (`stages[0].steps[1].commands[2]: <message>`).

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("has both `argv` and `run`; expected exactly one")]
    BothArgvAndRun,
    #[error("has neither `argv` nor `run`; expected a non-empty argv list")]
    Neither,
    /// `run:` where no `shell: true` allows it.
    #[error("`run: {run:?}` is a shell string, allowed only in a step with `shell: true`; use `argv: [...]` instead")]
    ShellNotAllowed { run: String },
    #[error("`run` is empty; expected a shell command")]
    EmptyRun,
    #[error("argv[0] is empty; expected a program name or path")]
    EmptyProgram,
    #[error("contains a NUL byte; arguments must be plain strings")]
    Nul,
    #[error("cwd {cwd:?} {source}")]
    Cwd {
        cwd: String,
        #[source]
        source: RelativePathError,
    },
}

/// Why a path a step names does not stay inside the project directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelativePathError {
    #[error("is absolute; expected a path relative to the project directory")]
    Absolute,
    /// More `..` than names before them.
    #[error("leads outside the project directory; expected a path inside it")]
    Escapes,
}

/// Why an artifact glob is refused; each names the glob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactGlobError {
    #[error("empty artifact glob; expected a pattern such as `dist/**` or `report.md`")]
    Empty,
    #[error("artifact glob {0:?} holds a NUL byte")]
    Nul(String),
    #[error("artifact glob {0:?} is absolute; expected a pattern relative to the run's worktree")]
    Absolute(String),
    #[error("artifact glob {0:?} contains `..`; artifacts must stay inside the run's worktree")]
    Escapes(String),
}
