//! What a user sees when a stage's own fields are wrong: approvals,
//! artifacts, input steps and loops, resources and sizes, retries, secrets,
//! container images and mounts.
//!
//! Workflows are written with `yaml(...)` (see `common/workflow_text.rs`).

mod common;

use common::workflow_text::*;

// ======================================================= humans and loops

#[test]
fn approval_artifacts_input_steps_and_loops_parse() {
    let wf = parses(&yaml(
        r#"
        name: full
        stages:
          - id: a
            repeat:
              max: 3
              until: {argv: [test, -f, done]}
            steps:
              - approve: true
                artifacts: [dist/**, report.md]
                commands:
                  - argv: ['true']
          - id: b
            steps:
              - input: {question: "Ship it?", choices: [yes, no]}
              - commands:
                  - argv: ['true']
        "#,
    ));
    let a = &wf.stages[0];
    assert!(a.steps[0].approve);
    assert_eq!(a.steps[0].artifacts, ["dist/**", "report.md"]);
    assert_eq!(a.repeat.as_ref().unwrap().max, 3);
    assert!(wf.stages[1].steps[0].is_input());
}

#[test]
fn an_artifact_glob_must_stay_inside_the_worktree() {
    let errs = errors(&yaml(
        r#"
        name: w
        stages:
          - id: a
            steps:
              - artifacts: [../secrets, /etc/passwd, ""]
                commands:
                  - argv: ['true']
        "#,
    ));
    let up = error_at(&errs, "stages[0].steps[0].artifacts[0]");
    assert!(up.message.contains("contains `..`"), "{up}");
    let abs = error_at(&errs, "stages[0].steps[0].artifacts[1]");
    assert!(abs.message.contains("is absolute"), "{abs}");
    let empty = error_at(&errs, "stages[0].steps[0].artifacts[2]");
    assert!(empty.message.contains("empty artifact glob"), "{empty}");
}

#[test]
fn a_step_runs_commands_or_asks_never_both_nor_neither() {
    let errs = errors(&yaml(
        r#"
        name: w
        stages:
          - id: a
            steps:
              - input: {question: "q"}
                commands:
                  - argv: ['true']
              - name: empty
              - input: {question: " ", choices: [x, x, ""]}
                approve: true
        "#,
    ));
    assert!(error_at(&errs, "stages[0].steps[0].input")
        .message
        .contains("both `commands` and `input`"));
    assert!(error_at(&errs, "stages[0].steps[1].commands")
        .message
        .contains("or an `input` question"));
    assert!(error_at(&errs, "stages[0].steps[2].input.question")
        .message
        .contains("empty question"));
    assert!(error_at(&errs, "stages[0].steps[2].input.choices[1]")
        .message
        .contains("listed twice"));
    assert!(error_at(&errs, "stages[0].steps[2].input.choices[2]")
        .message
        .contains("empty choice"));
    assert!(error_at(&errs, "stages[0].steps[2].approve")
        .message
        .contains("not to an input step"));
}

#[test]
fn a_loop_needs_a_sane_bound_and_a_safe_check() {
    let errs = errors(&yaml(
        r#"
        name: w
        stages:
          - id: a
            repeat:
              max: 0
              until: {run: "test -f done"}
            steps:
              - commands:
                  - argv: ['true']
          - id: b
            repeat: {max: 2, until: {argv: ['true']}}
            steps:
              - input: {question: "again?"}
        "#,
    ));
    let max = error_at(&errs, "stages[0].repeat.max");
    assert!(max.message.contains("expected 1 to 10000"), "{max}");
    assert_eq!(max.line, Some(3), "{max}");
    let until = error_at(&errs, "stages[0].repeat.until");
    assert!(until.message.contains("`repeat.shell: true`"), "{until}");
    let last = error_at(&errs, "stages[1].repeat.until");
    assert!(
        last.message.contains("put a step with commands last"),
        "{last}"
    );
}

#[test]
fn stage_resources_must_ask_for_something_an_agent_could_give() {
    let errs = errors(&yaml(
        r#"
        name: w
        stages:
          - id: a
            resources: {gpus: 65}
            steps: [{commands: [{argv: ['true']}]}]
          - id: b
            resources: {gpu_memory: 0}
            steps: [{commands: [{argv: ['true']}]}]
          - id: c
            resources: {gpus: 0, gpu_memory: 8G}
            steps: [{commands: [{argv: ['true']}]}]
        "#,
    ));
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert_mentions(
        error_at(&errs, "stages[0].resources.gpus"),
        &["65 GPUs", "at most 64"],
    );
    assert_mentions(
        error_at(&errs, "stages[1].resources.gpu_memory"),
        &["0 MiB", "leave it out"],
    );
    assert_mentions(
        error_at(&errs, "stages[2].resources.gpu_memory"),
        &["gpus: 0"],
    );
    let wf = parses(&yaml(
        r#"
        name: w
        stages:
          - id: a
            resources: {memory: 16GiB, gpus: 64, gpu_memory: 512}
            steps: [{commands: [{argv: ['true']}]}]
        "#,
    ));
    let r = wf.stages[0].resources.clone().unwrap();
    assert_eq!(r.memory.map(|m| m.as_mib()), Some(16 * 1024));
    assert_eq!(r.gpu_memory.map(|m| m.as_mib()), Some(512));
}

#[test]
fn a_size_in_bytes_or_below_zero_is_refused_naming_the_field() {
    for (size, says) in [
        ("512B", "unknown unit \"B\""),
        ("-1", "must not be negative"),
    ] {
        let text = yaml(&format!(
            r#"
            name: w
            stages:
              - id: a
                resources: {{memory: {size}}}
                steps: [{{commands: [{{argv: ['true']}}]}}]
            "#
        ));
        let err = the_error(&text);
        assert!(err.field.contains("memory"), "{err}");
        assert_mentions(&err, &[says]);
        assert_eq!(err.line, Some(line_of(&text, "resources")), "{err}");
    }
}

#[test]
fn retry_may_lower_the_system_attempts_never_raise_them() {
    let ok = "name: w\nstages:\n  - id: a\n    retry: {attempts: 3, initial: 2s, factor: 3, max: 1m}\n    steps: [{commands: [{argv: [x]}]}]\n";
    let wf = parses(ok);
    let r = wf.stages[0].retry.clone().unwrap();
    assert_eq!(r.attempts, Some(3));
    let bad = "name: w\nstages:\n  - id: a\n    retry: {attempts: 9, factor: 0, initial: 2m, max: 1m}\n    steps: [{commands: [{argv: [x]}]}]\n";
    let errs = orchestrator_core::parse_workflow(bad, Some("wf.yaml")).unwrap_err();
    let text = errs.to_string();
    assert!(
        text.contains("stages[0].retry.attempts: 9: expected 1 to 5"),
        "{text}"
    );
    assert!(
        text.contains("stages[0].retry.factor: 0: expected 1 to 100"),
        "{text}"
    );
    assert!(
        text.contains("stages[0].retry.initial: 2m is longer than max 1m"),
        "{text}"
    );
}

#[test]
fn secret_names_must_be_variable_names_each_once_and_not_the_agents() {
    let errs = errors(
        "name: s\nstages:\n  - id: a\n    secrets: [API_KEY, 1BAD, API_KEY, ORCH_RUN_ID]\n    steps: [{commands: [{argv: ['true']}]}]\n",
    );
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_mentions(
        error_at(&errs, "stages[0].secrets[1]"),
        &["invalid secret name \"1BAD\""],
    );
    assert_mentions(
        error_at(&errs, "stages[0].secrets[2]"),
        &["secret \"API_KEY\" is named twice"],
    );
    assert_mentions(
        error_at(&errs, "stages[0].secrets[3]"),
        &["not starting with ORCH_"],
    );
    let ok = parses(
        "name: s\nstages:\n  - id: a\n    secrets: [API_KEY]\n    steps: [{commands: [{argv: ['true']}]}]\n",
    );
    assert_eq!(ok.stages[0].secrets, ["API_KEY"]);
}

#[test]
fn an_image_needs_the_container_sandbox() {
    let text = yaml(
        r#"
        name: img
        stages:
          - id: build
            sandbox: namespace
            image: images/rootfs.tar.gz
            steps:
              - commands:
                  - argv: [make]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].image", "{err}");
    assert_mentions(&err, &["\"build\"", "namespace", "sandbox: container"]);
    for ok in ["sandbox: container\n    ", ""] {
        parses(&text.replace("sandbox: namespace\n    ", ok));
    }
}

#[test]
fn a_mount_names_one_host_path_plainly() {
    let wf = |mount: &str| {
        yaml(&format!(
            r#"
        name: m
        stages:
          - id: build
            mounts: ["{mount}"]
            steps:
              - commands:
                  - argv: [make]
        "#
        ))
    };
    for (bad, says) in [
        (
            "relative/dir",
            "an absolute path or one in the agent's home",
        ),
        ("/", "not the whole file system"),
        ("~/", "not the whole file system"),
        ("/opt/../etc", "without `..`"),
        ("~/../../etc", "without `..`"),
    ] {
        let err = the_error(&wf(bad));
        assert_eq!(err.field, "stages[0].mounts[0]", "{bad}: {err}");
        assert_mentions(&err, &["\"build\"", says]);
    }
    for ok in ["/opt/venvs/app", "~/.cargo", "/usr/local/lib/node_modules/"] {
        parses(&wf(ok));
    }
}

#[test]
fn a_loop_may_end_on_a_marker_its_step_prints() {
    let ok = r#"
name: w
stages:
  - id: a
    repeat: {max: 5, until: {output_contains: "DONE"}}
    steps:
      - commands:
          - argv: [echo, DONE]
"#;
    let wf = orchestrator_core::parse_workflow(ok, Some("wf.yaml")).unwrap();
    let repeat = wf.stages[0].repeat.as_ref().unwrap();
    assert_eq!(repeat.until_output(), Some("DONE"));
    assert!(repeat.until_command().is_none());
    let long = "x".repeat(1025);
    let errs = errors(&yaml(&format!(
        r#"
        name: w
        stages:
          - id: a
            repeat:
              max: 3
              until: {{output_contains: ""}}
            steps:
              - commands:
                  - argv: ['true']
          - id: b
            repeat:
              max: 3
              until: {{output_contains: "{long}"}}
            steps:
              - commands:
                  - argv: ['true']
          - id: c
            repeat:
              max: 3
              until: {{output_contains: "${{{{ inputs.x }}}}"}}
            steps:
              - commands:
                  - argv: ['true']
        "#
    )));
    let empty = error_at(&errs, "stages[0].repeat.until.output_contains");
    assert!(
        empty.message.contains("0 bytes; expected 1 to 1024 bytes"),
        "{empty}"
    );
    assert_eq!(empty.line, Some(6), "{empty}");
    assert!(empty.column.is_some(), "{empty}");
    let too_long = error_at(&errs, "stages[1].repeat.until.output_contains");
    assert!(too_long.message.contains("1025 bytes"), "{too_long}");
    assert_eq!(too_long.line, Some(13), "{too_long}");
    let expr = error_at(&errs, "stages[2].repeat.until.output_contains");
    assert!(expr.message.contains("is not substituted here"), "{expr}");
}
