//! A step that commits with git inside the default sandbox, and `orch
//! land`: its work onto the project's branches, squashed, merged or
//! rebased, and the refusals that change nothing.

mod common;

use common::{git, Harness};

/// A coding step: it edits and commits with git (as an agent would), then
/// leaves a report that the checkpoint takes as an artifact.
const CODING: &str = r#"
name: coding
stages:
  - id: implement
    steps:
      - name: edit
        commands:
          - argv: [sh, -c, 'git status --porcelain && echo "def add(a, b): return a + b" > calc.py && git add calc.py && git commit -qm "Add calc"']
      - name: report
        artifacts: [report.md]
        commands:
          - argv: [sh, -c, 'git log --format=%s -1 > report.md']
"#;

fn succeeded(h: &mut Harness, d: &common::Daemon, file: &std::path::Path) -> String {
    let run = h.submit(file);
    let detail = h.wait_run_end(d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    run
}

#[test]
fn a_steps_commits_are_the_runs_work_shown_by_diff_and_landed_squashed() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let file = h.write("coding.yaml", CODING);
    let run = succeeded(&mut h, &d, &file);
    let branch = format!("orch/run/{run}");

    // The run branch holds the work and the checkpoints, no records.
    let tree = git(&h.project, &["ls-tree", "-r", "--name-only", &branch]);
    assert_eq!(
        tree.lines().collect::<Vec<_>>(),
        ["README.md", "calc.py", "report.md"]
    );
    let log = git(
        &h.project,
        &["log", "--format=%s", &format!("main..{branch}")],
    );
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "orch: implement step 1 (report) checkpoint",
            "orch: implement step 0 (edit) checkpoint",
            "Add calc"
        ]
    );

    let diff = h.orch(&["diff", &run, "implement"]);
    diff.expect_code(0);
    assert!(diff.stdout.contains("+def add(a, b)"), "{diff}");
    // The next step's git starts at the checkpoint before it.
    assert!(
        diff.stdout
            .contains("+orch: implement step 0 (edit) checkpoint"),
        "{diff}"
    );
    let first = h.orch(&["diff", &run, "--checkpoint", "1", "--stat"]);
    assert!(
        first.stdout.contains("calc.py") && !first.stdout.contains("report.md"),
        "{first}"
    );

    let dry = h.orch(&["land", &run, "--dry-run"]);
    dry.expect_code(0);
    assert!(dry.stdout.contains("would land"), "{dry}");
    let before = git(&h.project, &["rev-parse", "main"]);
    assert_eq!(git(&h.project, &["rev-parse", "main"]), before);

    let landed = h.orch(&["land", &run]);
    landed.expect_code(0);
    assert!(landed.stdout.contains("on main"), "{landed}");
    assert!(landed.stdout.contains("2 files changed"), "{landed}");
    // One commit on main, its parent the old tip, the checkout's files
    // updated, a message that names the run.
    assert_eq!(git(&h.project, &["rev-parse", "main^"]), before);
    assert_eq!(
        std::fs::read_to_string(h.project.join("calc.py")).unwrap(),
        "def add(a, b): return a + b\n"
    );
    let msg = git(&h.project, &["log", "-1", "--format=%B"]);
    assert!(msg.starts_with("Add calc\n"), "{msg}");
    assert!(msg.contains(&format!("Orch-Run: {run}")), "{msg}");
    assert_eq!(git(&h.project, &["status", "--porcelain"]), "");

    // Landing it again would change nothing: refused, nothing made.
    let landed_at = git(&h.project, &["rev-parse", "main"]);
    let again = h.orch(&["land", &run]);
    assert_eq!(again.code, 2, "{again}");
    assert!(again.stderr.contains("already"), "{again}");
    assert_eq!(git(&h.project, &["rev-parse", "main"]), landed_at);
}

#[test]
fn a_branch_that_moved_elsewhere_gets_the_runs_work_merged_in() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let file = h.write("coding.yaml", CODING);
    let run = succeeded(&mut h, &d, &file);
    std::fs::write(h.project.join("other.txt"), "by hand\n").unwrap();
    git(&h.project, &["add", "other.txt"]);
    git(&h.project, &["commit", "-qm", "other work"]);
    let moved = git(&h.project, &["rev-parse", "main"]);
    for mode in ["--squash", "--rebase"] {
        let branch = format!("b{}", &mode[2..]);
        git(&h.project, &["branch", &branch, "main"]);
        let landed = h.orch(&["land", &run, "--onto", &branch, mode]);
        landed.expect_code(0);
        let tree = git(&h.project, &["ls-tree", "--name-only", &branch]);
        assert_eq!(
            tree.lines().collect::<Vec<_>>(),
            ["README.md", "calc.py", "other.txt", "report.md"],
            "{mode}"
        );
        assert!(
            git(
                &h.project,
                &["merge-base", "--is-ancestor", &moved, &branch]
            )
            .is_empty(),
            "{mode}"
        );
    }
}

#[test]
fn land_merges_or_rebases_onto_a_branch_and_refuses_what_would_lose_work() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let file = h.write("coding.yaml", CODING);
    let run = succeeded(&mut h, &d, &file);
    git(&h.project, &["branch", "feature", "main"]);
    git(&h.project, &["branch", "linear", "main"]);

    let merged = h.orch(&["land", &run, "--onto", "feature", "--merge"]);
    merged.expect_code(0);
    let parents = git(&h.project, &["log", "-1", "--format=%P", "feature"]);
    assert_eq!(parents.split(' ').count(), 2, "{parents}");
    let rebased = h.orch(&["land", &run, "--onto", "linear", "--rebase"]);
    rebased.expect_code(0);
    // The step's commit and the checkpoint with an artifact; the
    // checkpoint that committed nothing is left out.
    let log = git(&h.project, &["log", "--format=%s", "main..linear"]);
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["orch: implement step 1 (report) checkpoint", "Add calc"]
    );

    // Nothing changed by any refusal: main stays where it is.
    let main = git(&h.project, &["rev-parse", "main"]);
    let nope = h.orch(&["land", &run, "--onto", "nope"]);
    assert_eq!(nope.code, 2, "{nope}");
    assert!(
        nope.stderr.contains("branch 'nope' does not exist"),
        "{nope}"
    );

    std::fs::write(h.project.join("README.md"), "edited by hand\n").unwrap();
    let dirty = h.orch(&["land", &run]);
    assert_eq!(dirty.code, 2, "{dirty}");
    assert!(
        dirty.stderr.contains("uncommitted changes") && dirty.stderr.contains("README.md"),
        "{dirty}"
    );
    assert_eq!(
        std::fs::read_to_string(h.project.join("README.md")).unwrap(),
        "edited by hand\n"
    );
    git(&h.project, &["checkout", "-q", "--", "README.md"]);

    // main gains a calc.py of its own: the run's conflicts with it.
    std::fs::write(h.project.join("calc.py"), "def add(a, b): return b + a\n").unwrap();
    git(&h.project, &["add", "calc.py"]);
    git(&h.project, &["commit", "-qm", "calc by hand"]);
    let main = {
        let _ = main;
        git(&h.project, &["rev-parse", "main"])
    };
    let conflict = h.orch(&["land", &run]);
    assert_eq!(conflict.code, 2, "{conflict}");
    assert!(
        conflict.stderr.contains("conflicts") && conflict.stderr.contains("calc.py"),
        "{conflict}"
    );
    assert_eq!(git(&h.project, &["rev-parse", "main"]), main);
    assert_eq!(git(&h.project, &["status", "--porcelain"]), "");

    // A run that did not succeed lands only when asked to.
    let failing = h.write(
        "failing.yaml",
        "name: failing\non_failure: fail\nstages:\n  - id: s\n    steps:\n      - commands:\n          - argv: [sh, -c, 'exit 3']\n",
    );
    let failed = h.submit(&failing);
    let detail = h.wait_run_end(&d, &failed);
    assert_eq!(detail["run"]["state"], "failed", "{detail:#}");
    let refused = h.orch(&["land", &failed]);
    assert_eq!(refused.code, 2, "{refused}");
    assert!(refused.stderr.contains("not succeeded"), "{refused}");
    let nothing = h.orch(&["land", &failed, "--force"]);
    assert_eq!(nothing.code, 2, "{nothing}");
    assert!(nothing.stderr.contains("nothing to land"), "{nothing}");
}
