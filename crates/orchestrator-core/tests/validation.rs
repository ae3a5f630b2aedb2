//! What a user sees when a workflow file is wrong: every error names the file,
//! the field path, what is wrong, and the line (and column) where it is known.
//!
//! Workflows are written with `yaml(...)`, which strips the indentation of the
//! Rust source, so the line numbers asserted here are the lines of the YAML as
//! a user would see it in their editor (line 1 is the `name:` line).

use orchestrator_core::spec::{DurationSpec, Workflow};
use orchestrator_core::validate::MAX_WORKFLOW_BYTES;
use orchestrator_core::{parse_workflow, SpecError};

/// Removes the leading newline and the common indentation of a YAML literal.
fn yaml(src: &str) -> String {
    let src = src.strip_prefix('\n').unwrap_or(src);
    let indent = src
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for l in src.lines() {
        out.push_str(l.get(indent..).unwrap_or(""));
        out.push('\n');
    }
    out
}

fn parses(text: &str) -> Workflow {
    match parse_workflow(text, Some("wf.yaml")) {
        Ok(wf) => wf,
        Err(e) => panic!("expected the workflow to parse, got:\n{e}\n--- text ---\n{text}"),
    }
}

fn errors(text: &str) -> Vec<SpecError> {
    match parse_workflow(text, Some("wf.yaml")) {
        Ok(wf) => panic!("expected errors, got a workflow: {wf:?}\n--- text ---\n{text}"),
        Err(e) => {
            assert!(!e.0.is_empty(), "an Err must hold at least one error");
            for err in &e.0 {
                assert_eq!(err.file.as_deref(), Some("wf.yaml"), "{err}");
            }
            e.0
        }
    }
}

/// The only error of `text`.
fn the_error(text: &str) -> SpecError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected exactly one error, got: {errs:#?}");
    errs.into_iter().next().unwrap()
}

/// The error about `field` among `errs`.
fn error_at<'a>(errs: &'a [SpecError], field: &str) -> &'a SpecError {
    errs.iter()
        .find(|e| e.field == field)
        .unwrap_or_else(|| panic!("no error about {field:?} in {errs:#?}"))
}

#[track_caller]
fn assert_mentions(err: &SpecError, parts: &[&str]) {
    for p in parts {
        assert!(
            err.message.contains(p),
            "message {:?} should mention {p:?}",
            err.message
        );
    }
}

/// The 1-based number of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
        + 1
}

/// Like `line_of`, for the `n`th (0-based) line containing `needle`.
fn nth_line_of(text: &str, needle: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)
        .unwrap_or_else(|| panic!("{needle:?} not {} times in text", n + 1))
        .0
        + 1
}

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

// ------------------------------------------------------------ durations

#[test]
fn a_duration_in_days_is_refused_with_the_units_that_exist() {
    let text = yaml(
        r#"
        name: slow
        stages:
          - id: a
            timeout: 5 days
            steps:
              - commands:
                  - argv: [true]
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].timeout");
    assert_mentions(
        &err,
        &["invalid duration \"5 days\"", "\"days\"", "ms, s, m or h"],
    );
    assert_eq!((err.line, err.column), (Some(4), Some(14)), "{err}");
}

#[test]
fn a_negative_or_fractional_duration_is_refused() {
    for (value, expect) in [("-3", "must not be negative"), ("1.5", "floating point")] {
        let text = yaml(&format!(
            r#"
            name: odd
            stages:
              - id: a
                estimate: {value}
                steps:
                  - commands:
                      - argv: [true]
            "#
        ));
        let err = the_error(&text);
        assert_eq!(err.field, "stages[0].estimate");
        assert_mentions(&err, &[expect]);
        assert_eq!(err.line, Some(4), "{err}");
    }
}

#[test]
fn a_command_timeout_without_a_number_is_refused() {
    let text = yaml(
        r#"
        name: odd
        stages:
          - id: a
            steps:
              - commands:
                  - argv: [true]
                    timeout: soon
        "#,
    );
    let err = the_error(&text);
    assert_eq!(err.field, "stages[0].steps[0].commands[0].timeout");
    assert_mentions(&err, &["invalid duration \"soon\""]);
    assert_eq!(err.line, Some(line_of(&text, "timeout: soon")), "{err}");
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

mod durations {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_duration_is_written_in_a_form_that_parses_back_to_it(ms in 0u64..=u64::MAX / 4) {
            let d = DurationSpec(ms);
            let shown = d.to_string();
            prop_assert_eq!(DurationSpec::parse(&shown), Ok(d), "{}", shown);
            // And as it appears in a workflow file.
            let text = format!(
                "name: d\nstages:\n  - id: a\n    estimate: {shown}\n    steps: [{{commands: [{{argv: [true]}}]}}]\n"
            );
            prop_assert_eq!(parses(&text).stages[0].estimate, Some(d));
        }

        #[test]
        fn a_duration_with_an_unknown_unit_is_refused(n in 0u64..1000, unit in "[a-z]{1,4}") {
            prop_assume!(!matches!(unit.as_str(), "ms" | "s" | "m" | "h"));
            let err = DurationSpec::parse(&format!("{n}{unit}")).unwrap_err();
            prop_assert!(err.contains("unknown unit"), "{}", err);
        }
    }
}

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
