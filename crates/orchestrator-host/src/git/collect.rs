//! Which files of the worktree a checkpoint takes: the regular files its
//! artifact globs match, reached without following a link out of the
//! worktree, and never the orchestrator's own `.orch/` or git's `.git`.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use glob::{MatchOptions, Pattern};

use super::{GitError, RECORDS_DIR};

/// How globs match: `*` stays within one path component, dot files are not
/// special (a step's `dist/.map` is as much an output as `dist/app.js`).
const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// A regular file found by a glob.
pub(super) struct Found {
    pub(super) abs: PathBuf,
    pub(super) executable: bool,
}

/// Adds the regular files matching `glob` under `root` to `out`.
pub(super) fn collect(
    root: &Path,
    glob: &str,
    out: &mut BTreeMap<String, Found>,
) -> Result<(), GitError> {
    let invalid = |reason: String| GitError::InvalidGlob {
        glob: glob.to_owned(),
        reason,
    };
    if glob.starts_with('/') || Path::new(glob).is_absolute() {
        return Err(invalid(
            "is absolute; artifact globs are relative to the worktree root".into(),
        ));
    }
    // `dist/` and `./dist` mean `dist`.
    let comps: Vec<&str> = glob
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.contains(&"..") {
        return Err(invalid(
            "contains '..'; artifact globs must stay inside the worktree".into(),
        ));
    }
    if comps.is_empty() {
        return Err(invalid(
            "names no path; use '**' for every file of the worktree".into(),
        ));
    }
    let pattern =
        Pattern::new(&comps.join("/")).map_err(|e| invalid(format!("is not a valid glob: {e}")))?;
    let literal = comps
        .iter()
        .take_while(|c| !c.contains(['*', '?', '[']))
        .count();
    let max_depth = if comps.iter().any(|c| c.contains("**")) {
        usize::MAX
    } else {
        comps.len()
    };

    // Follow the literal prefix one component at a time, never through a
    // symlink, then walk from there.
    let inside = root
        .canonicalize()
        .map_err(GitError::io("resolve the worktree", root))?;
    let mut abs = root.to_path_buf();
    for (i, comp) in comps[..literal].iter().enumerate() {
        if *comp == ".git" || (i == 0 && *comp == RECORDS_DIR) {
            return Ok(());
        }
        abs.push(comp);
        let meta = match fs::symlink_metadata(&abs) {
            Ok(meta) => meta,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return Ok(())
            }
            Err(e) => return Err(GitError::io("read", &abs)(e)),
        };
        if meta.file_type().is_symlink() {
            return check_symlink(&inside, &abs, &comps[..=i].join("/"));
        }
        if meta.is_file() && i + 1 == comps.len() {
            out.insert(comps.join("/"), found(abs, &meta));
            return Ok(());
        }
        if !meta.is_dir() {
            return Ok(());
        }
    }
    let rel = comps[..literal].join("/");
    let matcher = (literal < comps.len()).then_some(&pattern);
    let walk_ = Walk {
        inside: &inside,
        max_depth,
    };
    walk_.walk(&abs, &rel, literal, matcher, out)
}

/// A symlink the globs reach: skipped when it resolves inside the worktree
/// `inside` (canonical) or nowhere, refused when it leads out.
fn check_symlink(inside: &Path, link: &Path, rel: &str) -> Result<(), GitError> {
    match fs::canonicalize(link) {
        Ok(target) if !target.starts_with(inside) => Err(GitError::SymlinkEscapes {
            path: rel.to_owned(),
            target,
            worktree: inside.to_owned(),
        }),
        // Inside, or dangling: nothing outside can be read through it.
        _ => Ok(()),
    }
}

/// What every level of a glob's walk shares.
struct Walk<'a> {
    /// The canonical worktree.
    inside: &'a Path,
    /// How deep the glob can match.
    max_depth: usize,
}

/// Adds the regular files under `dir` (whose tree path is `rel`, `depth`
/// components deep) that `matcher` matches, or all of them when it is `None`.
/// A matched directory brings every file under it.
impl Walk<'_> {
    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        depth: usize,
        matcher: Option<&Pattern>,
        out: &mut BTreeMap<String, Found>,
    ) -> Result<(), GitError> {
        let max_depth = self.max_depth;
        let entries = fs::read_dir(dir).map_err(GitError::io("list", dir))?;
        for entry in entries {
            let entry = entry.map_err(GitError::io("list", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if name == ".git" || (rel.is_empty() && name == RECORDS_DIR) {
                continue;
            }
            let child = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            // `DirEntry::metadata` does not follow symlinks.
            let meta = entry
                .metadata()
                .map_err(GitError::io("read", &entry.path()))?;
            let matched = matcher.is_none_or(|p| p.matches_with(&child, MATCH));
            if meta.file_type().is_symlink() && (matched || depth + 1 < max_depth) {
                // Matched, or a directory the walk would go into if followed.
                check_symlink(self.inside, &entry.path(), &child)?;
            } else if meta.is_file() && matched {
                out.insert(child, found(entry.path(), &meta));
            } else if meta.is_dir() && matched {
                self.walk(&entry.path(), &child, depth + 1, None, out)?;
            } else if meta.is_dir() && depth + 1 < max_depth {
                self.walk(&entry.path(), &child, depth + 1, matcher, out)?;
            }
        }
        Ok(())
    }
}

fn found(abs: PathBuf, meta: &fs::Metadata) -> Found {
    Found {
        abs,
        executable: meta.permissions().mode() & 0o111 != 0,
    }
}
