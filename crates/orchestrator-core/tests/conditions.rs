//! A stage's `if:`: what the end of a need does to a dependent (over every
//! state), the status its functions read, the implied `success() &&`, and
//! what validation says about a condition (file, line and column).

use orchestrator_core::expr::{Context, ErrorKind};
use orchestrator_core::machine::{
    condition_holds, need_ended, need_result, needs_status, parse_stage_condition, NeedEnded,
};
use orchestrator_core::StageState;
use serde_json::json;

mod common;

use common::workflow_text::*;

use StageState as S;

#[test]
fn the_end_of_a_need_counts_blocks_or_bypasses_by_state_and_condition() {
    for &s in StageState::ALL {
        for uses_status in [false, true] {
            let want = match s {
                S::Succeeded | S::Skipped => Some(NeedEnded::Count),
                S::Failed | S::Blocked | S::Bypassed if uses_status => Some(NeedEnded::Count),
                S::Failed | S::Blocked => Some(NeedEnded::Block),
                S::Bypassed => Some(NeedEnded::Bypass),
                _ => None,
            };
            assert_eq!(
                need_ended(s, uses_status),
                want,
                "{s}, status {uses_status}"
            );
            // Only an ended need decides anything.
            if want.is_some() {
                assert!(s.is_terminal(), "{s}");
            }
        }
    }
}

#[test]
fn every_ended_need_has_a_result_and_no_live_one_does() {
    for &s in StageState::ALL {
        assert_eq!(need_result(s).is_some(), s.is_terminal(), "{s}");
    }
    assert_eq!(need_result(S::Succeeded), Some("success"));
    assert_eq!(need_result(S::Blocked), Some("failure"));
    assert_eq!(need_result(S::Bypassed), Some("skipped"));
}

#[test]
fn success_is_false_after_a_bypassed_need_and_failure_after_a_blocked_one() {
    let st = needs_status(&[S::Succeeded, S::Skipped], false);
    assert!(st.all_succeeded && !st.any_failed);
    let st = needs_status(&[S::Succeeded, S::Bypassed], false);
    assert!(!st.all_succeeded && !st.any_failed);
    let st = needs_status(&[S::Blocked], false);
    assert!(!st.all_succeeded && st.any_failed);
    assert!(needs_status(&[], false).all_succeeded);
}

fn holds(cond: &str, needs: &[StageState], inputs: serde_json::Value) -> Result<bool, ErrorKind> {
    let ctx = Context::new()
        .with("inputs", inputs)
        .with_status(needs_status(needs, false));
    let expr = parse_stage_condition(cond).map_err(|e| e.kind)?;
    condition_holds(&expr, &ctx).map_err(|e| e.kind)
}

#[test]
fn a_condition_without_a_status_function_needs_every_need_to_succeed() {
    let deploy = json!({"deploy": true});
    assert_eq!(
        holds("inputs.deploy", &[S::Succeeded], deploy.clone()),
        Ok(true)
    );
    assert_eq!(
        holds("${{ inputs.deploy }}", &[S::Failed], deploy.clone()),
        Ok(false)
    );
    assert_eq!(
        holds("inputs.deploy", &[S::Bypassed], deploy.clone()),
        Ok(false)
    );
    assert_eq!(
        holds("inputs.deploy", &[S::Succeeded], json!({"deploy": false})),
        Ok(false)
    );
    // Not evaluated at all when a need did not succeed: no type error.
    assert_eq!(
        holds("inputs.deploy < 1", &[S::Failed], deploy.clone()),
        Ok(false)
    );
    assert_eq!(
        holds("inputs.deploy < 1", &[S::Succeeded], deploy),
        Err(ErrorKind::Type)
    );
}

#[test]
fn a_status_function_decides_for_itself() {
    let none = json!({});
    assert_eq!(
        holds("failure()", &[S::Failed, S::Succeeded], none.clone()),
        Ok(true)
    );
    assert_eq!(holds("failure()", &[S::Succeeded], none.clone()), Ok(false));
    assert_eq!(holds("always()", &[S::Bypassed], none.clone()), Ok(true));
    assert_eq!(holds("success()", &[S::Bypassed], none), Ok(false));
    assert_eq!(
        holds(
            "always() && inputs.x == 'y'",
            &[S::Failed],
            json!({"x": "y"})
        ),
        Ok(true)
    );
}

fn workflow(cond: &str, b_needs: &str) -> String {
    format!(
        "name: w\ninputs:\n  deploy: {{type: boolean, default: false}}\nstages:\n  - id: a\n    steps:\n      - commands:\n          - argv: [\"true\"]\n  - id: b\n    needs: {b_needs}\n    if: {cond}\n    steps:\n      - commands:\n          - argv: [\"true\"]\n"
    )
}

#[test]
fn a_valid_condition_is_kept_on_its_stage() {
    let wf = parses(&workflow(
        "\"failure() || stages.a.result == 'success'\"",
        "[a]",
    ));
    let b = wf.stages.iter().find(|s| s.id == "b").unwrap();
    assert_eq!(
        b.condition.as_deref(),
        Some("failure() || stages.a.result == 'success'")
    );
    parses(&workflow("\"${{ inputs.deploy }}\"", "[a]"));
}

#[test]
fn a_condition_that_does_not_parse_names_its_line_and_column() {
    let text = workflow("\"inputs.deploy = true\"", "[a]");
    let e = the_error(&text);
    assert_eq!(e.field, "stages[1].if");
    assert_eq!(e.line, Some(line_of(&text, "if:")));
    assert!(e.column.is_some());
    assert_mentions(&e, &["column 15", "'=='"]);
}

#[test]
fn a_condition_reads_only_what_its_stage_may() {
    let e = the_error(&workflow("inputs.deplyo", "[a]"));
    assert_eq!(e.field, "stages[1].if");
    assert_mentions(&e, &["unknown input 'deplyo'", "declared: deploy"]);
    let e = the_error(&workflow("stages.a.result == 'success'", "[]"));
    assert_mentions(&e, &["does not need directly"]);
    let e = the_error(&workflow("matrix.os", "[a]"));
    assert_mentions(&e, &["`matrix` is only in a stage with a `matrix:`"]);
}

#[test]
fn status_functions_are_refused_outside_a_condition() {
    let text = "name: w\nstages:\n  - id: a\n    steps:\n      - commands:\n          - argv: [\"echo\", \"${{ failure() }}\"]\n";
    let e = the_error(text);
    assert_eq!(e.field, "stages[0].steps[0].commands[0].argv[1]");
    assert_eq!(e.line, Some(line_of(text, "failure()")));
    assert_mentions(&e, &["only in a stage's `if:`"]);
}
