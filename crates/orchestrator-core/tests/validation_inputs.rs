//! What a user sees when a workflow's `inputs:` are wrong: names, types,
//! choices and defaults; each error names the file, the field path, the
//! line and what was expected.
//!
//! Workflows are written with `yaml(...)` (see `common/workflow_text.rs`).

use orchestrator_core::spec::InputType;
use serde_json::json;

mod common;

use common::workflow_text::*;

/// A one-stage workflow with `inputs` (already indented under `inputs:`).
fn with_inputs(inputs: &str) -> String {
    let mut text = String::from("name: w\ninputs:\n");
    for l in yaml(inputs).lines() {
        text.push_str("  ");
        text.push_str(l);
        text.push('\n');
    }
    text.push_str(
        "stages:\n  - id: a\n    steps:\n      - commands:\n          - argv: [\"true\"]\n",
    );
    text
}

#[test]
fn every_type_with_a_matching_default_parses() {
    let text = with_inputs(
        r#"
        version:
          type: string
          description: The release to build
          default: "1.2"
        count: {type: number, default: 3}
        ratio: {type: number, default: 0.5}
        fast: {type: boolean, default: false}
        target: {type: choice, choices: [linux, mac], default: linux}
        level: {type: choice, choices: [1, 2, true]}
        files: {type: list}
        tags: {type: list, default: [a, b]}
        note: {required: false}
        "#,
    );
    let wf = parses(&text);
    assert_eq!(wf.inputs.len(), 9);
    let v = &wf.inputs["version"];
    assert_eq!(v.kind, InputType::String);
    assert_eq!(v.default, Some(json!("1.2")));
    assert!(!v.is_required());
    assert_eq!(
        wf.inputs["note"].kind,
        InputType::String,
        "string by default"
    );
    assert!(!wf.inputs["note"].is_required());
    assert!(wf.inputs["files"].is_required());
    assert_eq!(wf.inputs["target"].choices, [json!("linux"), json!("mac")]);
    assert_eq!(wf.inputs["tags"].default, Some(json!(["a", "b"])));
}

#[test]
fn an_invalid_name_is_refused_at_its_line() {
    let text = with_inputs(
        r#"
        ok: {}
        a.b: {}
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "inputs.a.b");
    assert_mentions(
        &err,
        &["invalid input name \"a.b\"", "letters, digits, '_' or '-'"],
    );
    assert_eq!(err.line, Some(line_of(&text, "a.b:")), "{err}");
    assert_eq!(err.column, Some(3), "{err}");
}

#[test]
fn names_that_make_the_same_variable_are_refused() {
    let text = with_inputs(
        r#"
        dry-run: {type: boolean, default: false}
        dry_run: {type: boolean, default: true}
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "inputs.dry_run");
    assert_mentions(&err, &["\"dry-run\"", "\"dry_run\"", "ORCH_INPUT_DRY_RUN"]);
    assert_eq!(err.line, Some(line_of(&text, "dry_run:")), "{err}");
}

#[test]
fn more_than_64_inputs_are_refused_at_the_inputs_line() {
    let many: String = (0..65).map(|i| format!("i{i}: {{}}\n")).collect();
    let text = with_inputs(&many);
    let err = the_error(&text);
    assert_eq!(err.field, "inputs");
    assert_mentions(&err, &["65 inputs", "at most 64"]);
    assert_eq!(err.line, Some(line_of(&text, "inputs:")), "{err}");
    let ok: String = (0..64).map(|i| format!("i{i}: {{}}\n")).collect();
    assert_eq!(parses(&with_inputs(&ok)).inputs.len(), 64);
}

#[test]
fn a_default_of_another_type_names_the_type_and_the_default_line() {
    let text = with_inputs(
        r#"
        count:
          type: number
          default: abc
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "inputs.count.default");
    assert_mentions(
        &err,
        &["\"abc\" (a string)", "expected a number (type number)"],
    );
    assert_eq!(err.line, Some(line_of(&text, "default: abc")), "{err}");
    assert_eq!(err.column, Some(5), "{err}");
}

#[test]
fn a_default_in_a_flow_map_points_at_its_key() {
    let text = with_inputs(
        r#"
        fast: {type: boolean, default: "yes"}
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "inputs.fast.default");
    assert_mentions(&err, &["expected a boolean (true or false)"]);
    let line = line_of(&text, "fast:");
    assert_eq!(err.line, Some(line), "{err}");
    let col = text
        .lines()
        .nth(line - 1)
        .unwrap()
        .find("default:")
        .unwrap()
        + 1;
    assert_eq!(err.column, Some(col), "{err}");
}

#[test]
fn defaults_of_each_type_must_match_it() {
    for (decl, expected) in [
        ("{type: string, default: 3}", "expected a string"),
        ("{type: string, default: [a]}", "expected a string"),
        ("{type: number, default: \"3\"}", "expected a number"),
        ("{type: number, default: true}", "expected a number"),
        ("{type: boolean, default: 1}", "expected a boolean"),
        ("{type: boolean, default: \"true\"}", "expected a boolean"),
        ("{type: list, default: a}", "expected a list of strings"),
        (
            "{type: list, default: [1, 2]}",
            "expected a list of strings",
        ),
        (
            "{type: choice, choices: [a, b], default: c}",
            "expected one of a, b",
        ),
        (
            "{type: choice, choices: [1, 2], default: \"1\"}",
            "expected one of 1, 2",
        ),
    ] {
        let text = with_inputs(&format!("x: {decl}\n"));
        let err = the_error(&text);
        assert_eq!(err.field, "inputs.x.default", "{decl}");
        assert_mentions(&err, &[expected]);
    }
    for ok in [
        "{type: number, default: -2.5}",
        "{type: list, default: []}",
        "{type: choice, choices: [1, 2], default: 2.0}",
        "{type: choice, choices: [on, off], default: off}",
    ] {
        parses(&with_inputs(&format!("x: {ok}\n")));
    }
}

#[test]
fn choices_belong_to_a_choice_and_a_choice_needs_distinct_scalar_ones() {
    let text = with_inputs(
        r#"
        a: {type: string, choices: [x]}
        b: {type: choice}
        c:
          type: choice
          choices: [x, y, x]
        d:
          type: choice
          choices: [x, [y]]
        "#,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    let a = error_at(&errs, "inputs.a.choices");
    assert_mentions(
        a,
        &["has choices but is of type string", "only for type: choice"],
    );
    assert_eq!(a.line, Some(line_of(&text, "a:")), "{a}");
    let b = error_at(&errs, "inputs.b.choices");
    assert_mentions(b, &["a choice without choices", "choices: [a, b]"]);
    let c = error_at(&errs, "inputs.c.choices[2]");
    assert_mentions(c, &["\"x\"", "listed twice"]);
    assert_eq!(c.line, Some(line_of(&text, "choices: [x, y, x]")), "{c}");
    // As with a need listed twice, the value's first place in the list.
    assert_eq!(c.column, Some(15), "{c}");
    let d = error_at(&errs, "inputs.d.choices[1]");
    assert_mentions(d, &["[\"y\"]", "not a string, number or boolean"]);
}

#[test]
fn required_with_a_default_is_a_contradiction() {
    let text = with_inputs(
        r#"
        v:
          default: "1"
          required: true
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "inputs.v.required");
    assert_mentions(&err, &["required but has a default"]);
    assert_eq!(err.line, Some(line_of(&text, "required: true")), "{err}");
}

#[test]
fn a_default_over_64_kib_is_refused() {
    let text = with_inputs(&format!("big: {{default: \"{}\"}}\n", "x".repeat(70_000)));
    let err = the_error(&text);
    assert_eq!(err.field, "inputs.big.default");
    assert_mentions(&err, &["70002 bytes", "at most 65536"]);
}

#[test]
fn unknown_fields_types_and_twice_declared_names_are_refused_where_written() {
    let text = with_inputs("v: {type: strng}\n");
    let err = the_error(&text);
    assert_mentions(
        &err,
        &["unknown variant `strng`", "`string`", "`choice`", "`list`"],
    );
    assert_eq!(err.line, Some(line_of(&text, "strng")), "{err}");

    let text = with_inputs("v:\n  typ: string\n");
    let err = the_error(&text);
    assert_mentions(&err, &["unknown field `typ`"]);
    assert_eq!(err.line, Some(line_of(&text, "typ:")), "{err}");

    let text = with_inputs("v: {}\nw: {}\nv: {default: x}\n");
    let err = the_error(&text);
    assert_mentions(&err, &["input \"v\" is declared twice"]);
    assert!(err.line.is_some(), "{err}");

    let text = "name: w\ninputs: [a, b]\nstages: []\n";
    let err = the_error(text);
    assert_eq!(err.field, "inputs", "{err}");
    assert_eq!(err.line, Some(2), "{err}");
}

#[test]
fn every_problem_of_every_input_is_reported_together() {
    let text = with_inputs(
        r#"
        "bad name": {}
        count: {type: number, default: x}
        target: {type: choice, choices: [a], default: b}
        tags: {type: string, choices: [a]}
        "#,
    );
    let errs = errors(&text);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "inputs.bad name",
            "inputs.count.default",
            "inputs.tags.choices",
            "inputs.target.default"
        ]
    );
    // A quoted name is not found as written: the error points at `inputs:`.
    assert_eq!(errs[0].line, Some(line_of(&text, "inputs:")), "{}", errs[0]);
    for e in &errs[1..] {
        assert!(e.line.is_some() && e.column.is_some(), "{e}");
    }
}
