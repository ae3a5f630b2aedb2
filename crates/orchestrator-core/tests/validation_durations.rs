//! Durations in workflow files: the units that exist, the forms refused with
//! their line, and any duration written back in a form that parses to it.
//!
//! Workflows are written with `yaml(...)` (see `common/workflow_text.rs`).

use orchestrator_core::spec::DurationSpec;

mod common;

use common::workflow_text::*;

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
            let err = DurationSpec::parse(&format!("{n}{unit}")).unwrap_err().to_string();
            prop_assert!(err.contains("unknown unit"), "{}", err);
        }
    }
}
