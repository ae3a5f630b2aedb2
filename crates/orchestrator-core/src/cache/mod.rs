//! Caches: the rules of a cache entry's path and key, and the key's
//! computation from the files of a run's base commit.
//!
//! A key is a template: literal text (letters, digits, `.`, `_`, `-`, `+`,
//! `=`) and expressions `${{ hashFiles('PATTERN', ...) }}`. Each expression
//! stands for the first 16 hex digits of a SHA-256 over the files of the
//! base commit that match any of its patterns, in path order (each file's
//! path and git blob id, so the digest changes with the content). A pattern
//! is a path relative to the repository's top, where `*` matches within one
//! name, `?` one character and a whole `**` any number of directories. An
//! expression that matches no file, or a symlink or submodule, cannot be
//! computed: the run is refused naming the field.
//!
//! The daemon lists the commit's files; [`resolve`] does the rest, purely,
//! so the same workflow and tree always give the same keys.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::spec::{Cache, Workflow};
use crate::validate::{SpecError, SpecErrors};

mod error;
mod glob;

pub use error::{ComputeError, ExprFault, GlobError, HashFilesError, KeyError, PathError};
pub use glob::{check_pattern, matches};

/// Most cache entries a stage has, its own and the workflow's together.
pub const MAX_CACHES: usize = 8;
/// Most `restore_keys` of one entry.
pub const MAX_RESTORE_KEYS: usize = 8;
/// Longest computed key or restore prefix, in bytes (a directory name).
pub const MAX_KEY_LEN: usize = 200;
/// Longest cache path, in bytes.
pub const MAX_PATH_LEN: usize = 200;
/// Hex digits of a `hashFiles` digest.
pub const DIGEST_LEN: usize = 16;

/// One piece of a key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text taken as it is.
    Literal(String),
    /// `${{ hashFiles(...) }}` with its patterns.
    HashFiles(Vec<String>),
}

/// Parses a key (or restore prefix) template; the error says what was
/// expected where.
pub fn parse_key(text: &str) -> Result<Vec<Part>, KeyError> {
    let mut parts = Vec::new();
    let mut rest = text;
    let mut literal = String::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("${{") {
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            let end = after.find("}}").ok_or_else(|| KeyError::Unclosed {
                text: text.to_owned(),
            })?;
            parts.push(parse_expr(text, &after[..end])?);
            rest = &after[end + 2..];
            continue;
        }
        let c = rest.chars().next().unwrap_or_default();
        if !is_key_char(c) {
            return Err(KeyError::BadChar {
                text: text.to_owned(),
                found: c,
            });
        }
        literal.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    match parts.first() {
        None => return Err(KeyError::Empty),
        Some(Part::Literal(l)) if !l.starts_with(|c: char| c.is_ascii_alphanumeric()) => {
            return Err(KeyError::BadStart {
                text: text.to_owned(),
                found: l.chars().next().unwrap_or_default(),
            })
        }
        _ => {}
    }
    let len: usize = parts
        .iter()
        .map(|p| match p {
            Part::Literal(l) => l.len(),
            Part::HashFiles(_) => DIGEST_LEN,
        })
        .sum();
    if len > MAX_KEY_LEN {
        return Err(KeyError::TooLong {
            text: text.to_owned(),
            len,
        });
    }
    Ok(parts)
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '=')
}

/// `hashFiles('a', "b")` between `${{` and `}}`.
fn parse_expr(text: &str, expr: &str) -> Result<Part, KeyError> {
    let bad = |fault: ExprFault| KeyError::Expr {
        text: text.to_owned(),
        expr: expr.to_owned(),
        fault,
    };
    let inner = expr
        .trim()
        .strip_prefix("hashFiles")
        .ok_or_else(|| bad(ExprFault::UnknownFunction))?
        .trim_start()
        .strip_prefix('(')
        .and_then(|r| r.trim_end().strip_suffix(')'))
        .ok_or_else(|| bad(ExprFault::NoParentheses))?;
    let mut patterns = Vec::new();
    let mut rest = inner.trim();
    loop {
        let quote = rest
            .chars()
            .next()
            .filter(|c| matches!(c, '\'' | '"'))
            .ok_or_else(|| bad(ExprFault::Unquoted))?;
        let body = &rest[1..];
        let end = body
            .find(quote)
            .ok_or_else(|| bad(ExprFault::UnclosedString))?;
        let pattern = &body[..end];
        check_pattern(pattern).map_err(|source| KeyError::Pattern {
            text: text.to_owned(),
            pattern: pattern.to_owned(),
            source,
        })?;
        patterns.push(pattern.to_owned());
        rest = body[end + 1..].trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if rest.is_empty() => break,
            None => return Err(bad(ExprFault::BadSeparator)),
        }
    }
    Ok(Part::HashFiles(patterns))
}

/// Where a cache entry lives in the step's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// The run's worktree.
    Worktree,
    /// The stage's home (`~/`).
    Home,
}

/// Checks a cache path; returns where it is and the path below that root.
pub fn check_path(path: &str) -> Result<(Root, &str), PathError> {
    let (root, rel) = match path.strip_prefix("~/") {
        Some(rel) => (Root::Home, rel),
        None if path.starts_with('/') => return Err(PathError::Absolute),
        None if path.starts_with('~') => return Err(PathError::BadHome),
        None => (Root::Worktree, path),
    };
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { len: path.len() });
    }
    if rel.is_empty() {
        return Err(PathError::WholeHome);
    }
    for part in rel.split('/') {
        match part {
            "" => return Err(PathError::EmptyName),
            "." | ".." => return Err(PathError::DotName(part.to_owned())),
            ".git" => return Err(PathError::InGit),
            _ if !part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) =>
            {
                return Err(PathError::BadName(part.to_owned()))
            }
            _ => {}
        }
    }
    let first = rel.split('/').next().unwrap_or_default();
    match (root, first) {
        (Root::Worktree, ".orchestrator" | ".orch") => {
            Err(PathError::Orchestrator(first.to_owned()))
        }
        (Root::Home, ".gitconfig") if rel == ".gitconfig" => Err(PathError::GitIdentity),
        _ => Ok((root, rel)),
    }
}

/// Whether one of two checked cache paths lies inside the other (or they are the same).
pub fn overlaps(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| x == y || x.strip_prefix(y).is_some_and(|r| r.starts_with('/'));
    inside(a, b) || inside(b, a)
}

/// The entries a stage uses: the workflow's, except those whose path the
/// stage declares itself, then the stage's own.
pub fn effective(workflow: &[Cache], stage: &[Cache]) -> Vec<Cache> {
    workflow
        .iter()
        .filter(|w| !stage.iter().any(|s| s.path == w.path))
        .chain(stage)
        .cloned()
        .collect()
}

/// Whether any key or restore prefix of `wf` hashes files: then the daemon
/// lists the base commit's files for [`resolve`].
pub fn hashes_files(wf: &Workflow) -> bool {
    wf.cache
        .iter()
        .chain(wf.stages.iter().flat_map(|s| &s.cache))
        .flat_map(|c| std::iter::once(&c.key).chain(&c.restore_keys))
        .any(|k| k.contains("${{"))
}

/// What a file of the base commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TreeKind {
    File,
    Symlink,
    /// A submodule, or anything else that is not a file.
    Other,
}

/// One file of the base commit: its path from the repository's top and
/// its git object id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeFile {
    pub path: String,
    pub id: String,
    pub kind: TreeKind,
}

/// Computes every key and restore prefix of `wf` over `tree` (the base
/// commit's files) and moves the workflow's entries into each stage, so
/// the stored spec says what each stage restores and saves. Errors name
/// the field (`stages[1].cache[0].key`, `cache[0].restore_keys[1]`).
pub fn resolve(wf: &mut Workflow, tree: &[TreeFile], file: Option<&str>) -> Result<(), SpecErrors> {
    let mut errors = Vec::new();
    let mut resolve_list = |list: &mut [Cache], field: &str| {
        for (j, c) in list.iter_mut().enumerate() {
            match compute(&c.key, tree) {
                Ok(k) => c.key = k,
                Err(why) => errors.push(error(file, format!("{field}[{j}].key"), why.to_string())),
            }
            for (r, prefix) in c.restore_keys.iter_mut().enumerate() {
                match compute(prefix, tree) {
                    Ok(k) => *prefix = k,
                    Err(why) => errors.push(error(
                        file,
                        format!("{field}[{j}].restore_keys[{r}]"),
                        why.to_string(),
                    )),
                }
            }
        }
    };
    resolve_list(&mut wf.cache, "cache");
    for (i, st) in wf.stages.iter_mut().enumerate() {
        resolve_list(&mut st.cache, &format!("stages[{i}].cache"));
    }
    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }
    let shared = std::mem::take(&mut wf.cache);
    for st in &mut wf.stages {
        st.cache = effective(&shared, &st.cache);
    }
    Ok(())
}

fn error(file: Option<&str>, field: String, message: String) -> SpecError {
    SpecError {
        file: file.map(str::to_owned),
        line: None,
        column: None,
        field,
        message,
    }
}

/// One template computed over `tree`.
pub fn compute(template: &str, tree: &[TreeFile]) -> Result<String, ComputeError> {
    let mut out = String::new();
    for part in parse_key(template)? {
        match part {
            Part::Literal(l) => out.push_str(&l),
            Part::HashFiles(patterns) => out.push_str(&hash_files(&patterns, tree)?),
        }
    }
    Ok(out)
}

/// The digest of the files of `tree` that match any of `patterns`.
pub fn hash_files(patterns: &[String], tree: &[TreeFile]) -> Result<String, HashFilesError> {
    let call = format!(
        "hashFiles({})",
        patterns
            .iter()
            .map(|p| format!("'{p}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut seen = BTreeSet::new();
    let mut hasher = Sha256::new();
    let mut sorted: Vec<&TreeFile> = tree
        .iter()
        .filter(|f| patterns.iter().any(|p| matches(p, &f.path)))
        .collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for f in sorted {
        if !seen.insert(&f.path) {
            continue;
        }
        if f.kind != TreeKind::File {
            return Err(HashFilesError::NotAFile {
                call,
                path: f.path.clone(),
                kind: f.kind,
            });
        }
        hasher.update(f.path.as_bytes());
        hasher.update([0]);
        hasher.update(f.id.as_bytes());
        hasher.update(b"\n");
    }
    if seen.is_empty() {
        return Err(HashFilesError::NoMatch { call });
    }
    let digest = hasher.finalize();
    Ok(digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..DIGEST_LEN]
        .to_owned())
}

/// The directory name of an entry's path in the agent's cache store:
/// `wt+` or `home+` for the root, then the path with each `/` a `+`, which
/// no checked path holds, so two paths never share one.
pub fn slot(path: &str) -> String {
    match path.strip_prefix("~/") {
        Some(rel) => format!("home+{}", rel.replace('/', "+")),
        None => format!("wt+{}", path.replace('/', "+")),
    }
}
