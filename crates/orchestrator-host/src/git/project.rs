//! A fresh project: a git repository with a first commit, for the demo and
//! the benchmarks, which make their own (a run works on a branch of its
//! project's history, so it needs one commit to start from).

use std::path::Path;

use super::GitError;

/// `git` in `dir` with an identity of its own (the machine may have none),
/// through [`super::git_command`]; its trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    let failed = |detail: String| GitError::Command {
        command: format!("git {}", args.join(" ")),
        project: dir.to_path_buf(),
        detail,
    };
    let out = super::git_command()
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=orch", "-c", "user.email=orch@localhost"])
        .args(args)
        .output()
        .map_err(|e| {
            failed(format!(
                "cannot run git ({e}); a project is a git repository, so orch needs git installed"
            ))
        })?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Makes `dir` (created if missing) a git repository holding `files`
/// (relative name, content), committed; returns the commit.
pub fn new_project(dir: &Path, files: &[(&str, &str)]) -> Result<String, GitError> {
    std::fs::create_dir_all(dir).map_err(GitError::io("create", dir))?;
    git(dir, &["init", "-q"])?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(GitError::io("write", &path))?;
        git(dir, &["add", "--", name])?;
    }
    git(
        dir,
        &["commit", "-q", "--allow-empty", "-m", "first commit"],
    )?;
    git(dir, &["rev-parse", "HEAD"])
}

/// `git log --oneline` of `branch` in `dir`, for showing a run's history.
pub fn log_oneline(dir: &Path, branch: &str) -> Result<String, GitError> {
    git(dir, &["log", "--oneline", "--end-of-options", branch])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_project_holds_its_files_in_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p");
        let head = new_project(&p, &[("README.md", "hi\n"), ("a.txt", "a\n")]).unwrap();
        assert_eq!(head.len(), 40, "{head}");
        assert_eq!(git(&p, &["show", "HEAD:a.txt"]).unwrap(), "a");
        let log = log_oneline(&p, "HEAD").unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.ends_with("first commit"), "{log}");
    }

    #[test]
    fn a_file_that_cannot_be_written_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = new_project(dir.path(), &[("missing/dir/f", "x")]).unwrap_err();
        assert!(err.to_string().contains("missing/dir/f"), "{err}");
    }
}
