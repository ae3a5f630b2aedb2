//! Valid workflow files: YAML with durations in several forms, JSON (and its
//! errors' lines and columns), and a parsed workflow written back to text
//! that parses to the same workflow.
//!
//! Workflows are written with `yaml(...)` (see `common/workflow_text.rs`).

use orchestrator_core::spec::DurationSpec;

mod common;

use common::workflow_text::*;

// ------------------------------------------------------------- valid

#[test]
fn a_valid_workflow_with_durations_in_several_forms_parses() {
    let text = yaml(
        r#"
        # A comment before everything.
        name: forms.v2
        description: durations written every way the spec allows
        env:
          CI: "1"
        stages:
          - id: quick
            estimate: 250ms
            timeout: 30s
            labels: [linux]
            steps:
              - name: say
                commands:
                  - argv: [echo, hi]
                    timeout: 45
          - id: medium
            needs: [quick]
            estimate: 10m
            timeout: "2h"
            env:
              LEVEL: medium
            steps:
              - commands:
                  - argv: [sh, -c, "exit 0"]
                    cwd: ./sub/dir
                    env: {X_1: y}
          - id: slow_one-2
            needs:
              - quick
              - medium
            estimate: 0
            steps:
              - shell: true
                commands:
                  - run: |
                      echo multi
                      echo line
        "#,
    );
    let wf = parses(&text);
    assert_eq!(wf.name, "forms.v2");
    assert_eq!(wf.stages.len(), 3);
    let [quick, medium, slow] = &wf.stages[..] else {
        unreachable!()
    };
    assert_eq!(quick.estimate, Some(DurationSpec(250)));
    assert_eq!(quick.timeout, Some(DurationSpec::from_secs(30)));
    assert_eq!(
        quick.steps[0].commands[0].timeout,
        Some(DurationSpec(45_000))
    );
    assert_eq!(medium.estimate.map(DurationSpec::as_millis), Some(600_000));
    assert_eq!(medium.timeout.map(DurationSpec::as_millis), Some(7_200_000));
    assert_eq!(slow.estimate, Some(DurationSpec(0)));
    assert_eq!(slow.needs, ["quick", "medium"]);
    assert_eq!(
        slow.steps[0].commands[0].run.as_deref(),
        Some("echo multi\necho line\n")
    );
    assert_eq!(medium.env["LEVEL"], "medium");
    assert_eq!(wf.env["CI"], "1");
}

#[test]
fn a_json_workflow_parses_too() {
    let text = r#"{
  "name": "json",
  "stages": [
    {"id": "a", "estimate": "2s", "steps": [{"commands": [{"argv": ["echo", "a"]}]}]},
    {"id": "b", "needs": ["a"], "timeout": 30,
     "steps": [{"shell": true, "commands": [{"run": "echo b"}]}]}
  ]
}"#;
    let wf = parses(text);
    assert_eq!(wf.stages[1].needs, ["a"]);
    assert_eq!(wf.stages[0].estimate, Some(DurationSpec(2000)));
    assert_eq!(wf.stages[1].timeout, Some(DurationSpec(30_000)));
}

#[test]
fn a_json_workflow_with_a_misspelt_field_reports_line_and_column() {
    let text = "{\"name\": \"json\",\n \"stages\": [{\"id\": \"a\", \"stepz\": []}]}";
    let err = the_error(text);
    assert_eq!(err.field, "stages[0]");
    assert_mentions(&err, &["unknown field `stepz`"]);
    assert_eq!(err.line, Some(2), "{err}");
    assert!(err.column.is_some());
}

#[test]
fn a_parsed_workflow_serializes_back_to_text_that_parses_to_the_same_workflow() {
    let text = yaml(
        r#"
        name: round
        stages:
          - id: a
            estimate: 90s
            steps:
              - commands:
                  - argv: [echo, a]
          - id: b
            needs: [a]
            timeout: 1500ms
            steps:
              - shell: true
                commands:
                  - run: echo b
        "#,
    );
    let wf = parses(&text);
    let again = serde_yaml_ng::to_string(&wf).unwrap();
    assert_eq!(parses(&again), wf);
    let json = serde_json::to_string(&wf).unwrap();
    assert_eq!(parses(&json), wf);
}
