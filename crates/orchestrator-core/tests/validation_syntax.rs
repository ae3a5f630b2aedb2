//! What a user sees when a workflow file is wrong as a whole: its syntax,
//! unknown or missing fields, empty parts, an oversized file, and every
//! problem of a file reported at once. Every error names the file, the field
//! path, what is wrong, and the line (and column) where it is known.
//!
//! Workflows are written with `yaml(...)` (see `common/workflow_text.rs`).

use orchestrator_core::parse_workflow;
use orchestrator_core::validate::MAX_WORKFLOW_BYTES;

mod common;

use common::workflow_text::*;

// ---------------------------------------------------------------- syntax

#[test]
fn malformed_yaml_reports_line_column_and_the_file_name() {
    let text = yaml(
        r#"
        name: broken
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [echo, hi
          - id: b
        "#,
    );
    // The flow list opened on line 6 is never closed: the parser notices on
    // line 7, at the `:` of `id: b`, which cannot appear inside it.
    let err = the_error(&text);
    assert_eq!(err.line, Some(7), "{err}");
    assert_eq!(err.column, Some(7), "{err}");
    assert_mentions(&err, &["expected ',' or ']'"]);
    let shown = err.to_string();
    assert!(
        shown.starts_with("wf.yaml:7:7: "),
        "Display leads with file:line:column, got {shown:?}"
    );
}

#[test]
fn a_tab_used_for_indentation_is_reported_where_it_is() {
    let text = "name: tabs\nstages:\n\t- id: a\n";
    let err = the_error(text);
    assert_eq!((err.line, err.column), (Some(3), Some(1)), "{err}");
    assert_mentions(&err, &["cannot start any token"]);
}

#[test]
fn an_unclosed_quote_is_a_syntax_error_with_a_line() {
    let text = yaml(
        r#"
        name: quote
        stages:
          - id: a
            steps:
              - commands:
                  - argv: ["echo", "hi]
        "#,
    );
    let err = the_error(&text);
    assert!(err.line.is_some() && err.column.is_some(), "{err}");
    assert!(err.line.unwrap() >= 6, "{err}");
    assert!(err.to_string().starts_with("wf.yaml:"), "{err}");
}

#[test]
fn without_a_file_name_the_error_starts_at_the_line() {
    let err = parse_workflow("name: x\nstages: [\n", None)
        .unwrap_err()
        .0
        .remove(0);
    assert_eq!(err.file, None);
    let shown = err.to_string();
    let line = err.line.expect("a syntax error has a line");
    assert!(
        shown.starts_with(&format!("{line}:")),
        "Display without a file starts with the line, got {shown:?}"
    );
}

#[test]
fn an_empty_file_says_which_field_is_missing() {
    let err = the_error("");
    assert_mentions(&err, &["missing field `name`"]);
}

// ---------------------------------------------------------- unknown fields

#[test]
fn a_misspelt_command_field_names_the_field_its_command_and_its_line() {
    let text = yaml(
        r#"
        name: typo
        stages:
          - id: build
            steps:
              - commands:
                  - comand: [make]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].steps[0].commands[0]");
    assert_mentions(&err, &["unknown field `comand`", "`argv`"]);
    assert_eq!(err.line, Some(line_of(&text, "comand:")), "{err}");
    assert_eq!(err.column, Some(13), "{err}");
}

#[test]
fn a_misspelt_needs_in_a_stage_names_the_field_and_its_line() {
    let text = yaml(
        r#"
        name: typo
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [true]
          - id: b
            need: [a]
            steps:
              - commands:
                  - argv: [true]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[1]");
    assert_mentions(&err, &["unknown field `need`", "`needs`"]);
    assert_eq!(err.line, Some(line_of(&text, "need: [a]")), "{err}");
    assert_eq!(err.column, Some(5), "{err}");
    assert!(err
        .to_string()
        .starts_with("wf.yaml:8:5: stages[1]: unknown field `need`"));
}

#[test]
fn an_unknown_top_level_field_is_refused_with_its_line() {
    let text = yaml(
        r#"
        name: top
        stagez: []
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.line, Some(2), "{err}");
    assert_mentions(&err, &["unknown field `stagez`", "`stages`"]);
}

#[test]
fn a_top_level_field_of_the_wrong_type_names_that_field() {
    let text = yaml(
        r#"
        name: [not, a, string]
        stages: []
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "name");
    assert_mentions(&err, &["invalid type", "expected a string"]);
    assert_eq!(err.line, Some(1), "{err}");
}

#[test]
fn a_missing_steps_list_names_the_stage() {
    let text = yaml(
        r#"
        name: nosteps
        stages:
          - id: a
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0]");
    assert_mentions(&err, &["missing field `steps`"]);
    assert_eq!(err.line, Some(3), "{err}");
}

// --------------------------------------------------------- empty things

#[test]
fn a_workflow_with_no_stages_is_refused() {
    let err = the_error("name: nothing\nstages: []\n");
    assert_eq!(err.field, "stages");
    assert_mentions(&err, &["at least one stage"]);
    // The code does not claim a line for this one.
    assert_eq!(err.line, None);
    assert_eq!(
        err.to_string(),
        "wf.yaml: stages: a workflow needs at least one stage"
    );
}

#[test]
fn a_workflow_without_a_stages_field_is_refused() {
    let err = the_error("name: nothing\n");
    assert_mentions(&err, &["missing field `stages`"]);
    assert_eq!(err.line, Some(1));
}

#[test]
fn a_stage_with_no_steps_and_a_step_with_no_commands_are_refused() {
    let text = yaml(
        r#"
        name: hollow
        stages:
          - id: a
            steps: []
          - id: b
            steps:
              - commands: []
        "#,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    let a = error_at(&errs, "stages[0].steps");
    assert_mentions(a, &["\"a\" has no steps"]);
    assert_eq!(a.line, Some(line_of(&text, "- id: a")));
    let b = error_at(&errs, "stages[1].steps[0].commands");
    assert_mentions(b, &["step 0 of stage \"b\" has no commands"]);
    assert_eq!(b.line, Some(line_of(&text, "- id: b")));
}

#[test]
fn an_oversized_workflow_is_refused_before_parsing() {
    let text = format!("name: big\n#{}\n", "x".repeat(MAX_WORKFLOW_BYTES));
    let err = the_error(&text);
    assert_eq!(err.line, None);
    assert_mentions(&err, &["bytes", "at most"]);
}

// ------------------------------------------------------- many problems

#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let text = yaml(
        r#"
        name: many
        stages:
          - id: a/b
            steps:
              - commands:
                  - run: rm -rf /
          - id: c
            needs: [d]
            steps:
              - commands:
                  - argv: [ls]
                    cwd: /
        "#,
    );
    let errs = errors(&text);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "stages[0].id",
        "stages[0].steps[0].commands[0]",
        "stages[1].steps[0].commands[0]",
        "stages[1].needs[0]",
    ] {
        assert!(fields.contains(&f), "missing {f} in {fields:?}");
    }
    assert_eq!(errs.len(), 4, "{errs:#?}");
    for e in &errs {
        assert!(e.line.is_some(), "each of these has a line: {e}");
    }
    // The Display of all of them is one line per error.
    let all = parse_workflow(&text, Some("wf.yaml"))
        .unwrap_err()
        .to_string();
    assert_eq!(all.lines().count(), 4, "{all}");
    assert!(all.lines().all(|l| l.starts_with("wf.yaml:")), "{all}");
}
