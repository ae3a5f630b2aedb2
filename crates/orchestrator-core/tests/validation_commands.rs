//! What a user sees when a workflow's commands, ids or environment are unsafe
//! or malformed: shell strings without `shell: true`, empty argv, a cwd
//! outside the project, bad ids and variable names, NUL bytes.
//!
//! Workflows are written with `yaml(...)` (see `common/workflow_text.rs`).

mod common;

use common::workflow_text::*;

// --------------------------------------------------------- exec safety

#[test]
fn a_shell_string_without_shell_true_is_refused_with_a_hint_to_use_argv() {
    let text = yaml(
        r#"
        name: sh
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [true]
                  - run: echo $HOME
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].steps[0].commands[1]");
    assert_mentions(
        &err,
        &["shell string", "`shell: true`", "use `argv: [...]`"],
    );
    assert_eq!(err.line, Some(line_of(&text, "run: echo")), "{err}");
}

#[test]
fn shell_true_allows_a_run_string() {
    let text = yaml(
        r#"
        name: sh
        stages:
          - id: a
            steps:
              - shell: true
                commands:
                  - run: echo $HOME | wc -c
        "#,
    );
    let wf = parses(&text);
    let step = &wf.stages[0].steps[0];
    assert!(step.shell);
    assert_eq!(step.commands[0].run.as_deref(), Some("echo $HOME | wc -c"));
    assert!(step.commands[0].argv.is_empty());
}

#[test]
fn shell_true_on_one_step_does_not_allow_run_in_another() {
    let text = yaml(
        r#"
        name: sh
        stages:
          - id: a
            steps:
              - shell: true
                commands:
                  - run: echo one
              - commands:
                  - run: echo two
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].steps[1].commands[0]");
    assert_eq!(err.line, Some(line_of(&text, "run: echo two")), "{err}");
}

#[test]
fn a_command_with_both_argv_and_run_is_refused() {
    let text = yaml(
        r#"
        name: both
        stages:
          - id: a
            steps:
              - shell: true
                commands:
                  - argv: [echo, hi]
                    run: echo hi
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].steps[0].commands[0]");
    assert_mentions(&err, &["both `argv` and `run`", "exactly one"]);
    assert_eq!(err.line, Some(line_of(&text, "run: echo hi")), "{err}");
}

#[test]
fn an_empty_argv_is_refused() {
    let text = yaml(
        r#"
        name: empty
        stages:
          - id: a
            steps:
              - commands:
                  - argv: []
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].steps[0].commands[0]");
    assert_mentions(&err, &["neither `argv` nor `run`", "non-empty argv"]);
    assert_eq!(err.line, Some(line_of(&text, "argv: []")), "{err}");
}

#[test]
fn an_empty_program_name_is_refused() {
    let text = yaml(
        r#"
        name: empty
        stages:
          - id: a
            steps:
              - commands:
                  - argv: ["", x]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].steps[0].commands[0]");
    assert_mentions(&err, &["argv[0] is empty"]);
    // The code does not locate this one inside the command; it falls back to the stage.
    assert_eq!(err.line, Some(line_of(&text, "- id: a")), "{err}");
}

#[test]
fn a_cwd_escaping_the_project_with_dotdot_is_refused() {
    let text = yaml(
        r#"
        name: escape
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [ls]
                    cwd: src/../../etc
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].steps[0].commands[0]");
    assert_mentions(
        &err,
        &["cwd \"src/../../etc\"", "outside the project directory"],
    );
    assert_eq!(err.line, Some(line_of(&text, "cwd:")), "{err}");
}

#[test]
fn a_cwd_that_goes_up_and_back_down_stays_inside_and_is_allowed() {
    let text = yaml(
        r#"
        name: inside
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [ls]
                    cwd: src/../docs/./x
        "#,
    );
    parses(&text);
}

#[test]
fn an_absolute_cwd_is_refused() {
    let text = yaml(
        r#"
        name: abs
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [ls]
                    cwd: /etc
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].steps[0].commands[0]");
    assert_mentions(
        &err,
        &["cwd \"/etc\"", "is absolute", "relative to the project"],
    );
    assert_eq!(err.line, Some(line_of(&text, "cwd: /etc")), "{err}");
}

// ------------------------------------------------------------ ids, env

#[test]
fn a_stage_id_with_a_slash_is_refused() {
    let text = yaml(
        r#"
        name: ids
        stages:
          - id: a/b
            steps:
              - commands:
                  - argv: [true]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].id");
    assert_mentions(&err, &["invalid stage id \"a/b\"", "letters, digits"]);
    assert_eq!((err.line, err.column), (Some(3), Some(5)), "{err}");
}

#[test]
fn a_workflow_name_with_spaces_is_refused() {
    let text = yaml(
        r#"
        name: my workflow
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [true]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "name");
    assert_mentions(&err, &["invalid name \"my workflow\""]);
    assert_eq!(err.line, Some(1), "{err}");
}

#[test]
fn an_environment_variable_name_starting_with_a_digit_is_refused() {
    let text = yaml(
        r#"
        name: env
        env:
          GOOD: "1"
        stages:
          - id: a
            env:
              1BAD: x
            steps:
              - commands:
                  - argv: [true]
                    env:
                      ALSO-BAD: y
        "#,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_mentions(
        error_at(&errs, "stages[0].env.1BAD"),
        &["invalid environment variable name \"1BAD\""],
    );
    let cmd = error_at(&errs, "stages[0].steps[0].commands[0].env.ALSO-BAD");
    assert_mentions(cmd, &["\"ALSO-BAD\""]);
    // Located at the stage.
    assert_eq!(cmd.line, Some(line_of(&text, "- id: a")), "{cmd}");
}

#[test]
fn a_nul_byte_in_an_argument_a_cwd_or_an_env_value_is_refused() {
    let text = yaml(
        r#"
        name: nul
        env:
          TOP: "a\0b"
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [echo, "x\0y"]
                  - argv: [ls]
                    cwd: "sub\0dir"
                  - argv: [env]
                    env:
                      INNER: "c\0d"
        "#,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert_mentions(error_at(&errs, "env.TOP"), &["NUL byte"]);
    assert_mentions(
        error_at(&errs, "stages[0].steps[0].commands[0]"),
        &["NUL byte"],
    );
    assert_mentions(
        error_at(&errs, "stages[0].steps[0].commands[1]"),
        &["NUL byte"],
    );
    assert_mentions(
        error_at(&errs, "stages[0].steps[0].commands[2].env.INNER"),
        &["\"INNER\" holds a NUL byte"],
    );
}
