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
