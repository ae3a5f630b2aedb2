//! What a user sees when a workflow's graph is wrong: duplicate stage ids,
//! needs that point nowhere, cycles, a stage needing itself; each error names
//! the file, the field path and the line.
//!
//! Workflows are written with `yaml(...)` (see `common/workflow_text.rs`).

use orchestrator_core::spec::Workflow;
use orchestrator_core::SpecError;

mod common;

use common::workflow_text::*;

// ------------------------------------------------------------- the graph

#[test]
fn a_duplicate_stage_id_names_both_positions_and_the_second_line() {
    let text = yaml(
        r#"
        name: dup
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [true]
          - id: a
            steps:
              - commands:
                  - argv: [true]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[1].id");
    assert_mentions(&err, &["duplicate stage id \"a\"", "stages[0]", "unique"]);
    assert_eq!(err.line, Some(nth_line_of(&text, "- id: a", 1)), "{err}");
}

#[test]
fn problems_of_a_duplicated_stage_point_into_that_stage_not_the_first() {
    let text = yaml(
        r#"
        name: dup
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [true]
          - id: a
            steps:
              - commands:
                  - run: echo second
        "#,
    );
    let errs = errors(&text);
    let run = error_at(&errs, "stages[1].steps[0].commands[0]");
    assert_eq!(run.line, Some(line_of(&text, "run: echo second")), "{run}");
}

#[test]
fn a_need_pointing_nowhere_names_the_missing_stage_and_its_line() {
    let text = yaml(
        r#"
        name: missing
        stages:
          - id: fetch
            steps:
              - commands:
                  - argv: [true]
          - id: build
            needs: [fetch, compile]
            steps:
              - commands:
                  - argv: [true]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[1].needs[1]");
    assert_mentions(
        &err,
        &[
            "\"build\" needs \"compile\"",
            "not a stage of this workflow",
            "build, fetch",
        ],
    );
    assert_eq!(err.line, Some(line_of(&text, "needs: [fetch, compile]")));
    // The column is that of the missing id inside the list.
    let line = text.lines().nth(err.line.unwrap() - 1).unwrap();
    assert_eq!(err.column, Some(line.find("compile").unwrap() + 1), "{err}");
}

#[test]
fn a_need_pointing_nowhere_in_a_block_list_is_located_at_its_item() {
    let text = yaml(
        r#"
        name: missing
        stages:
          - id: fetch
            steps:
              - commands:
                  - argv: [true]
          - id: build
            needs:
              - fetch
              - compile
            steps:
              - commands:
                  - argv: [true]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[1].needs[1]");
    assert_mentions(&err, &["\"compile\""]);
    assert_eq!(err.line, Some(line_of(&text, "- compile")), "{err}");
    assert_eq!(err.column, Some(9), "{err}");
}

#[test]
fn two_stages_needing_the_same_missing_stage_each_get_their_own_line() {
    let text = yaml(
        r#"
        name: missing
        stages:
          - id: a
            needs: [ghost]
            steps:
              - commands:
                  - argv: [true]
          - id: b
            needs: [ghost]
            steps:
              - commands:
                  - argv: [true]
        "#,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    let a = error_at(&errs, "stages[0].needs[0]");
    let b = error_at(&errs, "stages[1].needs[0]");
    assert_eq!(a.line, Some(nth_line_of(&text, "needs: [ghost]", 0)));
    assert_eq!(b.line, Some(nth_line_of(&text, "needs: [ghost]", 1)));
    assert_mentions(b, &["\"b\" needs \"ghost\""]);
}

/// The stages of a cycle message `... cycle: a -> b -> c -> a`.
fn cycle_path(err: &SpecError) -> Vec<String> {
    let (_, path) = err
        .message
        .split_once("cycle: ")
        .unwrap_or_else(|| panic!("not a cycle message: {err}"));
    path.split(" -> ").map(str::to_owned).collect()
}

#[track_caller]
fn assert_real_cycle(wf_text: &str, path: &[String]) {
    // Read the edges from an acyclic copy: parse with serde directly, no validation.
    let wf: Workflow = serde_yaml_ng::from_str(wf_text).unwrap();
    assert!(
        path.len() >= 2,
        "a cycle has at least two entries: {path:?}"
    );
    assert_eq!(path.first(), path.last(), "a cycle ends where it starts");
    for pair in path.windows(2) {
        let st = wf.stages.iter().find(|s| s.id == pair[0]).unwrap();
        assert!(
            st.needs.contains(&pair[1]),
            "{} does not need {} (path {path:?})",
            pair[0],
            pair[1]
        );
    }
}

#[test]
fn a_cycle_is_reported_with_its_path() {
    let text = yaml(
        r#"
        name: loop
        stages:
          - id: a
            needs: [b]
            steps:
              - commands:
                  - argv: [true]
          - id: b
            needs: [c]
            steps:
              - commands:
                  - argv: [true]
          - id: c
            needs: [a]
            steps:
              - commands:
                  - argv: [true]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages");
    assert_mentions(&err, &["form a cycle"]);
    let path = cycle_path(&err);
    // Read as "a needs b needs c needs a".
    assert_eq!(path, ["a", "b", "c", "a"]);
    assert_real_cycle(&text, &path);
    // Located at the first stage of the path.
    assert_eq!(err.line, Some(line_of(&text, "- id: a")), "{err}");
}

#[test]
fn a_cycle_reachable_from_an_innocent_stage_lists_only_the_loop() {
    let text = yaml(
        r#"
        name: loop
        stages:
          - id: start
            needs: [x]
            steps:
              - commands:
                  - argv: [true]
          - id: x
            needs: [y]
            steps:
              - commands:
                  - argv: [true]
          - id: y
            needs: [x]
            steps:
              - commands:
                  - argv: [true]
        "#,
    );
    let err = the_error(&text);
    let path = cycle_path(&err);
    assert!(!path.contains(&"start".to_owned()), "{path:?}");
    assert_eq!(path.len(), 3, "{path:?}");
    assert_real_cycle(&text, &path);
}

#[test]
fn a_cycle_is_still_reported_next_to_an_unrelated_problem() {
    let text = yaml(
        r#"
        name: loop
        stages:
          - id: a
            needs: [b, nowhere]
            steps:
              - commands:
                  - argv: [true]
          - id: b
            needs: [a]
            steps:
              - commands:
                  - argv: [true]
        "#,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_mentions(error_at(&errs, "stages[0].needs[1]"), &["\"nowhere\""]);
    let cycle = error_at(&errs, "stages");
    assert_real_cycle(&text, &cycle_path(cycle));
}

#[test]
fn a_stage_that_needs_itself_is_refused_at_its_needs_line() {
    let text = yaml(
        r#"
        name: selfish
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [true]
            needs: [a]
        "#,
    );
    // Reported once, as a self-need, not a second time as a cycle.
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].needs[0]");
    assert_mentions(&err, &["\"a\" needs itself"]);
    assert_eq!(err.line, Some(line_of(&text, "needs: [a]")), "{err}");
}

#[test]
fn a_need_listed_twice_is_refused() {
    let text = yaml(
        r#"
        name: twice
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [true]
          - id: b
            needs: [a, a]
            steps:
              - commands:
                  - argv: [true]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[1].needs[1]");
    assert_mentions(&err, &["lists \"a\" twice"]);
    assert_eq!(err.line, Some(line_of(&text, "needs: [a, a]")), "{err}");
}
