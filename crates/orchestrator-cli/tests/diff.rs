//! `orch diff`: the change a run made, by run, stage and checkpoint, and
//! never the orchestrator's own manifests.

mod common;

use common::Harness;

const TWO_STAGES: &str = r#"
name: two
stages:
  - id: a
    steps:
      - artifacts: [a.txt]
        commands:
          - argv: [sh, -c, 'echo from-a > a.txt']
  - id: b
    needs: [a]
    steps:
      - artifacts: [b.txt]
        commands:
          - argv: [sh, -c, 'echo from-b > b.txt']
"#;

#[test]
fn a_runs_diff_shows_its_work_by_run_stage_and_checkpoint_without_manifests() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let file = h.write("two.yaml", TWO_STAGES);
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");

    let all = h.orch(&["diff", &run]);
    all.expect_code(0);
    for want in ["+from-a", "+from-b", "a.txt", "b.txt"] {
        assert!(all.stdout.contains(want), "{want}: {all}");
    }
    assert!(!all.stdout.contains(".orch/"), "manifests shown: {all}");

    let only_b = h.orch(&["diff", &run, "b"]);
    only_b.expect_code(0);
    assert!(only_b.stdout.contains("+from-b"), "{only_b}");
    assert!(!only_b.stdout.contains("from-a"), "{only_b}");

    let stat = h.orch(&["diff", &run, "--stat", "--checkpoint", "1"]);
    stat.expect_code(0);
    assert!(
        stat.stdout.contains("a.txt") && stat.stdout.contains("1 file changed"),
        "{stat}"
    );

    let bad = h.orch(&["diff", &run, "nope"]);
    assert_eq!(bad.code, 2, "{bad}");
    assert!(
        bad.stderr.contains("no stage \"nope\"") && bad.stderr.contains("a, b"),
        "{bad}"
    );
    let bad = h.orch(&["diff", &run, "--checkpoint", "9"]);
    assert_eq!(bad.code, 2, "{bad}");
    assert!(bad.stderr.contains("no checkpoint 9"), "{bad}");
}

#[test]
fn an_approval_in_the_inbox_shows_what_it_would_accept() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let file = h.write(
        "gated.yaml",
        "name: gated\nstages:\n  - id: draft\n    steps:\n      - approve: true\n        artifacts: [draft.md]\n        commands:\n          - argv: [sh, -c, 'printf \"one\\ntwo\\n\" > draft.md']\n",
    );
    let run = h.submit(&file);
    common::wait_for("the approval to wait", common::LONG, || {
        (common::stage(&h.show(&run), "draft")["state"] == "awaiting_approval").then_some(())
    });
    let inbox = h.orch(&["inbox"]);
    inbox.expect_code(0);
    assert!(inbox.stdout.contains("draft.md | 2 ++"), "{inbox}");
    assert!(
        inbox.stdout.contains("1 file changed, 2 insertions(+)"),
        "{inbox}"
    );
    assert!(!inbox.stdout.contains(".orch/"), "{inbox}");
    assert!(
        inbox.stdout.contains(&format!("$ orch diff {run} draft")),
        "{inbox}"
    );
    let shown = h.orch(&["diff", &run, "draft"]);
    assert!(
        shown.stdout.contains("+one") && shown.stdout.contains("+two"),
        "{shown}"
    );
}

#[test]
fn a_first_steps_change_starts_at_the_runs_base_not_at_the_projects_first_commit() {
    let mut h = Harness::new();
    // History before the run: the step's diff must not reach into it.
    std::fs::write(h.project.join("notes.md"), "old\n").unwrap();
    common::git(&h.project, &["add", "notes.md"]);
    common::git(&h.project, &["commit", "-q", "-m", "notes"]);
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let file = h.write(
        "gated.yaml",
        "name: gated\nstages:\n  - id: edit\n    steps:\n      - approve: true\n        commands:\n          - argv: [sh, -c, 'echo new >> notes.md && git commit -qam more']\n",
    );
    let run = h.submit(&file);
    common::wait_for("the approval to wait", common::LONG, || {
        (common::stage(&h.show(&run), "edit")["state"] == "awaiting_approval").then_some(())
    });
    let inbox = h.orch(&["inbox"]);
    inbox.expect_code(0);
    assert!(inbox.stdout.contains("notes.md | 1 +\n"), "{inbox}");
    assert!(inbox.stdout.contains("1 insertion(+)"), "{inbox}");
    let shown = h.orch(&["diff", &run, "edit"]);
    shown.expect_code(0);
    assert!(shown.stdout.contains("\n old\n+new\n"), "{shown}");
    assert!(!shown.stdout.contains("new file"), "{shown}");
    assert!(!shown.stdout.contains("README.md"), "{shown}");
}

#[test]
fn the_diff_api_lists_each_file_and_names_only_the_runs_checkpoints() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let file = h.write("two.yaml", TWO_STAGES);
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let get = |q: &str| {
        common::http(
            &d,
            "GET",
            &format!("/v1/runs/{run}/diff{q}"),
            Some(&d.admin_token),
            None,
        )
    };
    let all = get("");
    assert_eq!(all.status, 200, "{}", all.text());
    let all = all.json();
    let paths: Vec<&str> = all["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["a.txt", "b.txt"], "{all:#}");
    assert_eq!(all["files"][0]["status"], "added");
    assert_eq!(all["files"][0]["insertions"], 1);
    assert!(
        all["files"][0]["patch"]
            .as_str()
            .unwrap()
            .starts_with("@@ -0,0 +1 @@\n+from-a"),
        "{all:#}"
    );

    let b = detail["checkpoints"][1]["commit"].as_str().unwrap();
    let one = get(&format!("?commit={}", &b[..10]));
    assert_eq!(one.status, 200, "{}", one.text());
    let one = one.json();
    assert_eq!(one["to"], b);
    assert_eq!(one["files"].as_array().unwrap().len(), 1, "{one:#}");
    assert_eq!(one["files"][0]["path"], "b.txt");

    // Only the run's checkpoints: not its base, not any object by name.
    let base = detail["run"]["base_commit"].as_str().unwrap();
    for q in [
        format!("?commit={base}"),
        "?commit=HEAD".into(),
        "?commit=abc".into(),
    ] {
        let r = get(&q);
        assert_eq!(r.status, 404, "{q}: {}", r.text());
        assert!(r.text().contains("has no checkpoint"), "{q}: {}", r.text());
    }
}
