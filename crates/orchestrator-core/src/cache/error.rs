//! Why a cache path, a key template or a `hashFiles` pattern is refused, or
//! why a key cannot be computed. The messages are fragments of the sentence
//! the caller starts (`cache[0] path "..." <message>`), except where they
//! name the key themselves.

use super::{TreeKind, MAX_KEY_LEN, MAX_PATH_LEN};

/// Why a `hashFiles` pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("is empty; expected a file of the repository")]
    Empty,
    #[error("is absolute; expected a path from the repository's top")]
    Absolute,
    #[error("holds a control character, a bracket, a brace or a backslash; expected names with `*`, `?` or `**`")]
    Special,
    #[error("has an empty name (`//` or a trailing `/`)")]
    EmptyName,
    /// `.` or `..`.
    #[error("has {0:?}; expected plain names")]
    DotName(String),
    /// A name holding `**` beside other characters.
    #[error("has {0:?}; `**` must be a whole name")]
    PartialDoubleStar(String),
}

/// Why a key (or restore prefix) template is refused; each names the
/// template as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{text:?}: `${{{{` is not closed by `}}}}`")]
    Unclosed { text: String },
    #[error("{text:?}: {found:?} is not allowed in a key; expected letters, digits, `.`, `_`, `-`, `+`, `=` and `${{{{ hashFiles('FILE') }}}}`")]
    BadChar { text: String, found: char },
    #[error("is empty; expected a key such as `deps-v1`")]
    Empty,
    #[error("{text:?} starts with {found:?}; expected a letter or digit first")]
    BadStart { text: String, found: char },
    /// Longer than [`MAX_KEY_LEN`] once each expression is a digest of
    /// [`super::DIGEST_LEN`] hex digits.
    #[error("{text:?} is {len} bytes once computed; expected at most {MAX_KEY_LEN}")]
    TooLong { text: String, len: usize },
    /// An expression `${{ EXPR }}` that is no `hashFiles(...)` call.
    #[error("{text:?}: `${{{{{expr}}}}}` {fault}; expected `${{{{ hashFiles('FILE', ...) }}}}`")]
    Expr {
        text: String,
        expr: String,
        fault: ExprFault,
    },
    #[error("{text:?}: pattern {pattern:?} {source}")]
    Pattern {
        text: String,
        pattern: String,
        #[source]
        source: GlobError,
    },
}

/// What is wrong with an expression between `${{` and `}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExprFault {
    #[error("is not a function this syntax knows")]
    UnknownFunction,
    #[error("lacks its parentheses")]
    NoParentheses,
    #[error("has an argument that is not a quoted string")]
    Unquoted,
    #[error("has a string that is not closed")]
    UnclosedString,
    #[error("has something other than `,` between its strings")]
    BadSeparator,
}

/// Why a cache path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("is absolute; expected a path relative to the worktree (`.venv`) or under the stage's home (`~/.cache/pip`)")]
    Absolute,
    /// `~` not followed by `/`.
    #[error("expected `~/` followed by a directory under the stage's home")]
    BadHome,
    #[error("is {len} bytes; expected at most {MAX_PATH_LEN}")]
    TooLong { len: usize },
    #[error("names the whole home; expected a directory under it")]
    WholeHome,
    #[error("has an empty name (`//` or a trailing `/`); expected plain names joined by `/`")]
    EmptyName,
    /// `.` or `..`.
    #[error("has {0:?}; expected plain names, never `.` or `..`")]
    DotName(String),
    #[error("lies in a `.git` directory, which only git writes")]
    InGit,
    /// A name with characters other than letters, digits, `.`, `_`, `-`.
    #[error("has {0:?}; expected names of letters, digits, `.`, `_` and `-`")]
    BadName(String),
    /// Under `.orchestrator` or `.orch` in the worktree.
    #[error("lies in `{0}`, the orchestrator's directory; expected a directory of the step's own")]
    Orchestrator(String),
    #[error("is the home's git identity, which the agent writes; expected a directory")]
    GitIdentity,
}

/// Why `hashFiles(...)` cannot be computed over a commit's files; `call`
/// is the expression as `hashFiles('a', 'b')`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashFilesError {
    /// It matches a symlink or a submodule.
    #[error("{call} matches {path:?}, which is {} in the base commit; expected regular files", not_a_file(*.kind))]
    NotAFile {
        call: String,
        path: String,
        kind: TreeKind,
    },
    #[error("{call} matches no file of the run's base commit; expected at least one committed file (the key cannot be computed)")]
    NoMatch { call: String },
}

/// Why a key template cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComputeError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    HashFiles(#[from] HashFilesError),
}

fn not_a_file(kind: TreeKind) -> &'static str {
    if kind == TreeKind::Symlink {
        "a symlink"
    } else {
        "not a file (a submodule?)"
    }
}
