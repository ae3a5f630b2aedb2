//! What a user sees when a stage's `matrix:` is wrong: keys, values that
//! cannot go into a stage id, include and exclude entries, too many or no
//! combinations, ids too long, needs naming one combination; each error
//! names the file, the field path, the line and what was expected.
//!
//! Workflows are written with `yaml(...)` (see `common/workflow_text.rs`).

use orchestrator_core::validate::MAX_STAGES;

mod common;

use common::workflow_text::*;

/// A workflow whose stage `test` has `matrix` (indented under `matrix:`),
/// and a stage `report` that needs it.
fn with_matrix(matrix: &str) -> String {
    let mut text = String::from("name: w\nstages:\n  - id: test\n    matrix:\n");
    for l in yaml(matrix).lines() {
        text.push_str("      ");
        text.push_str(l);
        text.push('\n');
    }
    text.push_str(
        &yaml(
            r#"
          steps:
            - commands:
                - argv: ["true"]
        - id: report
          needs: [test]
          steps:
            - commands:
                - argv: ["true"]
        "#,
        )
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect::<String>(),
    );
    text
}

/// The column (1-based) of the `n`th (0-based) `needle` on `line` (1-based).
fn column_of(text: &str, line: usize, needle: &str, n: usize) -> usize {
    let l = text.lines().nth(line - 1).unwrap();
    l.match_indices(needle).nth(n).unwrap().0 + 1
}

#[test]
fn a_matrix_stage_expands_into_its_combinations_when_parsed() {
    let text = with_matrix(
        r#"
        py: ["3.11", "3.12"]
        os: [linux, mac]
        include: [{py: "3.13", os: linux}]
        exclude: [{py: "3.11", os: mac}]
        "#,
    );
    let wf = parses(&text);
    let ids: Vec<&str> = wf.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "test[py=3.11,os=linux]",
            "test[py=3.12,os=linux]",
            "test[py=3.12,os=mac]",
            "test[py=3.13,os=linux]",
            "report"
        ]
    );
    assert_eq!(wf.stages[4].needs, &ids[..4]);
    for st in &wf.stages[..4] {
        assert!(st.matrix.is_none(), "a concrete stage has no matrix");
        let inst = st.instance.as_ref().unwrap();
        assert_eq!(inst.of, "test");
        assert_eq!(inst.values.len(), 2);
    }
    assert!(wf.stages[4].instance.is_none());
}

#[test]
fn a_need_naming_one_combination_is_refused_saying_to_need_the_matrix_stage() {
    let text = yaml(
        r#"
        name: w
        stages:
          - id: test
            matrix: {py: ["3.12"], os: [mac]}
            steps:
              - commands:
                  - argv: ["true"]
          - id: deploy
            needs: ["test[py=3.12,os=mac]"]
            steps:
              - commands:
                  - argv: ["true"]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[1].needs[0]");
    assert_mentions(
        &err,
        &[
            "\"test[py=3.12,os=mac]\"",
            "one combination of the matrix stage \"test\"",
            "needs: [test]",
        ],
    );
    let line = line_of(&text, "needs: [\"test");
    assert_eq!(err.line, Some(line), "{err}");
    assert_eq!(
        err.column,
        Some(column_of(&text, line, "\"test", 0)),
        "{err}"
    );
}

#[test]
fn a_value_that_cannot_go_into_an_id_is_named_at_its_place() {
    let text = with_matrix(
        r#"
        os: [linux, "mac os", win]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].matrix.os[1]");
    assert_mentions(
        &err,
        &[
            "\"mac os\"",
            "' '",
            "letters, digits, '_', '.', '+' and '-'",
        ],
    );
    let line = line_of(&text, "os: [");
    assert_eq!(err.line, Some(line), "{err}");
    assert_eq!(
        err.column,
        Some(column_of(&text, line, "\"mac", 0)),
        "{err}"
    );
    for bad in ["\"a/b\"", "\"\"", "\"a,b\"", "\"x=y\"", "\"é\""] {
        let err = the_error(&with_matrix(&format!("k: [{bad}]\n")));
        assert_eq!(err.field, "stages[0].matrix.k[0]", "{bad}");
        assert_mentions(&err, &["into a stage id"]);
    }
    for ok in ["\"3.12+cu121\"", "-1", "1.5", "true", "a_b-c"] {
        parses(&with_matrix(&format!("k: [{ok}]\n")));
    }
}

#[test]
fn keys_must_be_names_with_values() {
    let text = with_matrix(
        r#"
        py: []
        os.name: [linux]
        "#,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    let py = error_at(&errs, "stages[0].matrix.py");
    assert_mentions(py, &["matrix key \"py\" has no values"]);
    assert_eq!(py.line, Some(line_of(&text, "py: []")), "{py}");
    let os = error_at(&errs, "stages[0].matrix.os.name");
    assert_mentions(os, &["invalid matrix key \"os.name\""]);
    assert_eq!(os.line, Some(line_of(&text, "os.name:")), "{os}");
}

#[test]
fn values_must_be_scalars_listed_once() {
    let text = with_matrix(
        r#"
        py:
          - "3.12"
          - [nested]
          - "3.12"
        flag: [null]
        "#,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    let nested = error_at(&errs, "stages[0].matrix.py[1]");
    assert_mentions(nested, &["not a string, number or boolean"]);
    let twice = error_at(&errs, "stages[0].matrix.py[2]");
    assert_mentions(twice, &["\"3.12\"", "listed twice"]);
    assert_eq!(twice.line, Some(line_of(&text, "- \"3.12\"")), "{twice}");
    let null = error_at(&errs, "stages[0].matrix.flag[0]");
    assert_mentions(null, &["not a string, number or boolean"]);
}

#[test]
fn a_key_that_is_not_a_list_or_is_written_twice_is_refused_where_written() {
    let text = with_matrix("py: \"3.12\"\n");
    let err = the_error(&text);
    assert_mentions(&err, &["matrix key \"py\": expected a list of values"]);
    assert!(err.line.is_some(), "{err}");
    let text = with_matrix("py: [a]\nos: [b]\npy: [c]\n");
    let err = the_error(&text);
    assert_mentions(&err, &["matrix key \"py\" is written twice"]);
    let text = with_matrix("py: [a]\nbogus: {x: 1}\n");
    assert_mentions(&the_error(&text), &["\"bogus\": expected a list of values"]);
}

#[test]
fn exclude_entries_must_name_keys_of_the_matrix_and_match_something() {
    let text = with_matrix(
        r#"
        py: ["3.10", "3.11"]
        os: [linux, mac]
        exclude:
          - {arch: arm}
          - py: 3.10
            os: mac
          - {}
        "#,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    let arch = error_at(&errs, "stages[0].matrix.exclude[0].arch");
    assert_mentions(arch, &["\"arch\"", "not a key of the matrix", "py, os"]);
    assert_eq!(arch.line, Some(line_of(&text, "exclude:")), "{arch}");
    let none = error_at(&errs, "stages[0].matrix.exclude[1]");
    assert_mentions(
        none,
        &[
            "py=3.1, os=\"mac\"",
            "matches no combination",
            "3.1 is not \"3.10\"",
        ],
    );
    let empty = error_at(&errs, "stages[0].matrix.exclude[2]");
    assert_mentions(empty, &["exclude[2] is empty"]);
}

#[test]
fn include_entries_need_keys_and_id_safe_values() {
    let text = with_matrix(
        r#"
        py: ["3.12"]
        include:
          - {}
          - py: "3 13"
        "#,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    let empty = error_at(&errs, "stages[0].matrix.include[0]");
    assert_mentions(empty, &["include[0] is empty"]);
    let bad = error_at(&errs, "stages[0].matrix.include[1].py");
    assert_mentions(bad, &["\"3 13\"", "into a stage id"]);
    assert_eq!(bad.line, Some(line_of(&text, "- py: \"3 13\"")), "{bad}");
}

#[test]
fn more_than_256_combinations_name_the_count_and_the_cap_at_the_matrix_line() {
    let a: Vec<String> = (0..16).map(|i| i.to_string()).collect();
    let b: Vec<String> = (0..17).map(|i| i.to_string()).collect();
    let text = with_matrix(&format!("a: [{}]\nb: [{}]\n", a.join(", "), b.join(", ")));
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].matrix");
    assert_mentions(&err, &["makes 272 combinations", "at most 256"]);
    assert_eq!(err.line, Some(line_of(&text, "matrix:")), "{err}");
    // Exactly 256 is fine, and excludes count before the cap.
    let b16 = &b[..16];
    parses(&with_matrix(&format!(
        "a: [{}]\nb: [{}]\n",
        a.join(", "),
        b16.join(", ")
    )));
    parses(&with_matrix(&format!(
        "a: [{}]\nb: [{}]\nexclude: [{{b: 16}}]\n",
        a.join(", "),
        b.join(", ")
    )));
}

#[test]
fn a_matrix_without_combinations_is_refused() {
    for m in ["{}", "{a: [1], exclude: [{a: 1}]}"] {
        // `matrix: {...}` on one line.
        let text = with_matrix(&format!("{m}\n")).replace("    matrix:\n      ", "    matrix: ");
        let err = the_error(&text);
        assert_eq!(err.field, "stages[0].matrix", "{m}");
        assert_mentions(&err, &["without combinations", "expected at least one"]);
        assert_eq!(err.line, Some(line_of(&text, "matrix:")), "{err}");
    }
}

#[test]
fn an_expanded_id_over_64_characters_is_refused() {
    // `test[version=...]` is 14 characters around the value.
    parses(&with_matrix(&format!("version: [{}]\n", "v".repeat(50))));
    let long = "v".repeat(51);
    let text = with_matrix(&format!("version: [short, {long}]\n"));
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].matrix");
    assert_mentions(
        &err,
        &[
            &format!("\"test[version={long}]\""),
            "65 characters",
            "at most 64",
        ],
    );
}

#[test]
fn values_that_differ_only_in_type_would_make_the_same_id() {
    let text = with_matrix("n: [1]\ninclude: [{n: \"1\"}]\n");
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].matrix");
    assert_mentions(&err, &["the same stage id \"test[n=1]\""]);
}

#[test]
fn a_send_back_to_a_matrix_stage_is_refused() {
    let text = yaml(
        r#"
        name: w
        stages:
          - id: build
            matrix: {os: [linux, mac]}
            steps:
              - commands:
                  - argv: ["true"]
          - id: test
            needs: [build]
            on_failure: {retry_stage: build}
            steps:
              - commands:
                  - argv: ["true"]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[1].on_failure.retry_stage");
    assert_mentions(&err, &["\"build\"", "a matrix stage", "without a matrix"]);
    let line = line_of(&text, "retry_stage");
    assert_eq!(err.line, Some(line), "{err}");
    assert_eq!(
        err.column,
        Some(column_of(&text, line, "retry_stage", 0)),
        "{err}"
    );
}

#[test]
fn a_flow_matrix_points_at_its_key_on_the_matrix_line() {
    let text = yaml(
        r#"
        name: w
        stages:
          - id: test
            matrix: {py: [], os: [a]}
            steps:
              - commands:
                  - argv: ["true"]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].matrix.py");
    let line = line_of(&text, "matrix:");
    assert_eq!(err.line, Some(line), "{err}");
    assert_eq!(err.column, Some(column_of(&text, line, "py:", 0)), "{err}");
}

#[test]
fn problems_of_several_matrices_and_stages_are_reported_together() {
    let text = yaml(
        r#"
        name: w
        stages:
          - id: a
            matrix: {k: ["x y"]}
            steps:
              - commands:
                  - argv: ["true"]
          - id: b
            matrix: {k: []}
            needs: ["a[k=x]"]
            steps: []
        "#,
    );
    let errs = errors(&text);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "stages[0].matrix.k[0]",
        "stages[1].matrix.k",
        "stages[1].needs[0]",
        "stages[1].steps",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }
    let k = error_at(&errs, "stages[1].matrix.k");
    assert_eq!(k.line, Some(nth_line_of(&text, "matrix:", 1)), "{k}");
}

#[test]
fn matrices_that_expand_the_workflow_past_the_stage_cap_are_refused() {
    let values: Vec<String> = (0..256).map(|i| i.to_string()).collect();
    let stages = MAX_STAGES / 256 + 1;
    let mut text = String::from("name: w\nstages:\n");
    for i in 0..stages {
        text.push_str(&format!(
            "  - id: s{i}\n    matrix: {{n: [{}]}}\n    steps: [{{commands: [{{argv: [\"true\"]}}]}}]\n",
            values.join(",")
        ));
    }
    let err = the_error(&text);
    assert_eq!(err.field, "stages");
    assert_mentions(
        &err,
        &[
            &format!("to {} stages", stages * 256),
            &format!("at most {MAX_STAGES}"),
        ],
    );
    assert_eq!(err.line, Some(2), "{err}");
}
