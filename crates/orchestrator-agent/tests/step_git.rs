//! Git inside steps, run for real in each sandbox: a step commits as a
//! coding agent would, and its commits land on the run branch under its
//! checkpoint. How the step's git directory is made and its commits taken
//! in is tested on its own in the host crate
//! (`orchestrator-host/tests/step_git.rs`).

use common::git;
use common::sandboxed::{assert_ok, bash, spec, Project};
use orchestrator_core::spec::SandboxKind;

mod common;

/// A step in `kind` that uses git as a coding agent would, and what it
/// leaves on the run branch.
async fn agent_commits_in(kind: SandboxKind) {
    let p = Project::new();
    let root = p.root();
    let marker = p.outside().join("fsmonitor-ran");
    let script = format!(
        r#"set -e
git status --porcelain
echo 'def add(a, b): return a + b' > calc.py
git add calc.py
git commit -qm 'Add calc'
git log --format=%s -2
# What a hostile step would try: the project's repository is read-only,
# and configuration it writes in its own git never runs outside.
if git --git-dir={root}/.git update-ref refs/heads/evil HEAD 2>/dev/null; then echo ESCAPED; fi
if echo x | git --git-dir={root}/.git hash-object -w --stdin 2>/dev/null; then echo ESCAPED; fi
git config core.fsmonitor 'touch {marker}; false'
git config core.hooksPath /nowhere
"#,
        root = root.display(),
        marker = marker.display(),
    );
    let (job, out) = p.run(spec(kind), bash(&script)).await;
    assert_ok(&p, &job, &out);
    let stdout = p.stdout(&job);
    assert!(!stdout.contains("ESCAPED"), "{stdout}");
    assert!(stdout.contains("Add calc"), "{stdout}");
    let made = out.checkpoint.expect("a checkpoint").commit;
    assert_eq!(git(&root, &["rev-parse", "orch/run/run-1"]), made);
    assert_eq!(
        git(
            &root,
            &["log", "-1", "--format=%s %ae", &format!("{made}^")]
        ),
        "Add calc step@orch.invalid"
    );
    assert_eq!(
        git(&root, &["show", &format!("{made}:calc.py")]),
        "def add(a, b): return a + b"
    );
    assert!(git(&root, &["branch", "--list", "evil"]).is_empty());
    // Git run on the worktree afterwards (the agent's, a user's) uses the
    // project's entry, not the step's configuration.
    git(&p.worktree(), &["status"]);
    assert!(!marker.exists(), "the step's fsmonitor ran outside it");
}

#[tokio::test]
async fn a_namespace_step_commits_and_its_commits_land_on_the_run_branch() {
    agent_commits_in(SandboxKind::Namespace).await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap: run scripts/test"
)]
async fn a_bubblewrap_step_commits_and_its_commits_land_on_the_run_branch() {
    common::sandboxed::require("bwrap", "bubblewrap");
    agent_commits_in(SandboxKind::Bubblewrap).await;
}
