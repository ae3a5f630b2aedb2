//! Stage outputs through the real binaries: `examples/outputs.yaml`'s
//! stage writes outputs over two steps, and `orch show` lists them (long
//! values cut, with a note) while `-o json` has them whole; a step whose
//! output file is out of the format fails, naming the file and the line;
//! a dependent reads them with `${{ stages.ID.outputs.KEY }}`, each value
//! one literal argument that nothing runs.

mod common;

use common::Harness;

#[test]
fn outputs_are_shown_by_orch_show_and_in_its_json() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "out-agent", 1);
    let file = h.example("outputs.yaml");
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let build = &detail["stages"][0];
    assert_eq!(build["stage_id"], "build");
    assert_eq!(
        build["outputs"],
        serde_json::json!({
            "version": "1.4.2",
            "changelog": "- faster start\n- fewer crashes",
            "artifacts": "2",
        }),
        "{detail:#}"
    );
    assert!(detail["stages"][1].get("outputs").is_none(), "{detail:#}");
    let shown = h.orch(&["show", &run]);
    shown.expect_code(0);
    for want in [
        "OUTPUTS OF",
        "version=1.4.2",
        "changelog=- faster start⏎- fewer crashes",
        "artifacts=2",
    ] {
        assert!(shown.stdout.contains(want), "{want}: {shown}");
    }
    assert!(!shown.stdout.contains("values cut"), "{shown}");
    let logs = h.orch(&["logs", &run]);
    assert!(logs.stdout.contains("checked 1.4.2"), "{logs}");

    // A long value is cut for the terminal, whole in the JSON; a bad line
    // fails the step, naming the file and the line.
    let wf = h.write(
        "long.yaml",
        r#"name: long
on_failure: fail
stages:
  - id: long
    steps:
      - commands:
          - argv: [sh, -c, 'printf "blob=%0300d\n" 7 >> "$ORCH_OUTPUT"']
  - id: bad
    steps:
      - commands:
          - argv: [sh, -c, 'printf "ok=1\nnot an output\n" >> "$ORCH_OUTPUT"']
"#,
    );
    let run = h.submit(&wf);
    let detail = h.wait_run_end(&d, &run);
    let long = detail["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage_id"] == "long")
        .unwrap();
    assert_eq!(long["outputs"]["blob"].as_str().unwrap().len(), 300);
    let shown = h.orch(&["show", &run]);
    assert!(
        shown.stdout.contains("… (300 bytes)")
            && shown.stdout.contains("values cut at 80 characters"),
        "{shown}"
    );
    let bad = detail["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["stage_id"] == "bad")
        .unwrap();
    let err = bad["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("$ORCH_OUTPUT (") && err.contains("line 2: \"not an output\""),
        "{detail:#}"
    );
}

#[test]
fn a_dependent_gets_its_needs_outputs_as_literal_arguments() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "wire-agent", 1);
    let pwned = h.root().join("pwned");
    let evil = format!(
        "$(touch {0}) `touch {0}` \"it's\"; touch {0}",
        pwned.display()
    );
    let wf = h.write(
        "wire.yaml",
        &format!(
            r#"name: wire
stages:
  - id: build
    steps:
      - commands:
          - argv: [sh, -c, 'echo "version=1.2.3" >> "$ORCH_OUTPUT"']
          - argv: [sh, -c, 'printf "evil<<EOF\n%s\nsecond line\nEOF\n" "$1" >> "$ORCH_OUTPUT"', _, {evil}]
  - id: deploy
    needs: [build]
    steps:
      - commands:
          - argv: [sh, -c, 'echo "deploying $1"', _, '${{{{ stages.build.outputs.version }}}}']
          - argv: [sh, -c, 'printf "args=%s\n<%s>\n" "$#" "$1"', _, '${{{{ stages.build.outputs.evil }}}}']
          - argv: [sh, -c, 'echo "missing=[$1] result=$2"', _, '${{{{ stages.build.outputs.nope }}}}', '${{{{ stages.build.result }}}}']
"#,
            evil = serde_json::to_string(&evil).unwrap()
        ),
    );
    let run = h.submit(&wf);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let logs = h.orch(&["logs", &run]);
    logs.expect_code(0);
    for want in [
        "deploying 1.2.3".to_owned(),
        "args=1".to_owned(),
        format!("<{evil}\nsecond line>"),
        "missing=[] result=success".to_owned(),
    ] {
        assert!(logs.stdout.contains(&want), "{want}: {logs}");
    }
    assert!(!pwned.exists(), "a value was run");
}
