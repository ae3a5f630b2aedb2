//! `on_failure` that sends the work back: both forms parse, the old words
//! keep working, and a rule that could not work is refused naming its field.

use orchestrator_core::parse_workflow;
use orchestrator_core::spec::{FeedbackKind, OnFailure, SendBack, StageOnFailure};

const CHAIN: &str = "name: loop
stages:
  - id: implement
    steps:
      - commands: [{argv: [\"true\"]}]
  - id: build
    needs: [implement]
    steps:
      - commands: [{argv: [\"true\"]}]
  - id: test
    needs: [build]
    on_failure: ON_FAILURE
    steps:
      - commands: [{argv: [\"true\"]}]
";

fn with(on_failure: &str) -> String {
    CHAIN.replace("ON_FAILURE", on_failure)
}

#[test]
fn the_words_and_the_map_both_parse_and_round_trip() {
    let wf = parse_workflow(&with("fail"), None).unwrap();
    assert_eq!(wf.stages[2].on_failure, Some(OnFailure::Fail.into()));
    assert!(!wf.stages[2].asks_on_failure(&wf));

    let wf = parse_workflow(
        &with("{retry_stage: implement, max_rounds: 2, then: fail}"),
        None,
    )
    .unwrap();
    let rule = wf.stages[2].send_back().unwrap();
    assert_eq!(
        rule,
        &SendBack {
            retry_stage: "implement".into(),
            feedback: FeedbackKind::LogTail,
            max_rounds: Some(2),
            then: Some(OnFailure::Fail),
        }
    );
    assert!(!wf.stages[2].asks_on_failure(&wf));
    // The stored spec is JSON: it reads back the same.
    let json = serde_json::to_string(&wf).unwrap();
    assert_eq!(
        serde_json::from_str::<orchestrator_core::Workflow>(&json).unwrap(),
        wf
    );

    let wf = parse_workflow(
        &with("\n      retry_stage: build\n      feedback: error"),
        None,
    )
    .unwrap();
    let rule = wf.stages[2].send_back().unwrap();
    assert_eq!(rule.feedback, FeedbackKind::Error);
    assert_eq!(rule.rounds(), 3, "three rounds when it does not say");
    assert!(wf.stages[2].asks_on_failure(&wf), "then: the usual ask");
}

#[test]
fn a_submitters_word_replaces_only_what_the_rule_does_last() {
    let rule = StageOnFailure::SendBack(SendBack {
        retry_stage: "implement".into(),
        feedback: FeedbackKind::LogTail,
        max_rounds: None,
        then: None,
    });
    let ruled = rule.with_then(OnFailure::Fail);
    assert_eq!(ruled.then(), Some(OnFailure::Fail));
    assert!(ruled.send_back().is_some());
}

#[test]
fn a_target_that_is_not_an_ancestor_is_refused_naming_the_field() {
    for target in ["test", "nowhere"] {
        let e = parse_workflow(
            &with(&format!("{{retry_stage: {target}}}")),
            Some("wf.yaml"),
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].field, "stages[2].on_failure.retry_stage");
        assert!(
            e.0[0].message.contains("not a stage it needs")
                && e.0[0].message.contains("expected one of: build, implement"),
            "{e}"
        );
    }
    // A stage that needs nothing cannot send anything back.
    let text = "name: w\nstages:\n  - id: a\n    on_failure: {retry_stage: a}\n    steps:\n      - commands: [{argv: [\"true\"]}]\n";
    let e = parse_workflow(text, None).unwrap_err();
    assert!(e.0[0].message.contains("this stage needs no stage"), "{e}");
}

#[test]
fn rounds_must_be_bounded() {
    for n in [0, 21, 1_000_000] {
        let e = parse_workflow(
            &with(&format!("{{retry_stage: implement, max_rounds: {n}}}")),
            None,
        )
        .unwrap_err();
        assert_eq!(e.0[0].field, "stages[2].on_failure.max_rounds", "{e}");
        assert!(e.0[0].message.contains("expected 1 to 20"), "{e}");
    }
}

#[test]
fn an_unknown_word_or_field_says_what_was_expected() {
    let e = parse_workflow(&with("sometimes"), None).unwrap_err();
    assert!(e.to_string().contains("unknown variant `sometimes`"), "{e}");
    let e = parse_workflow(&with("{retry_stage: implement, rounds: 2}"), None).unwrap_err();
    assert!(e.to_string().contains("unknown field `rounds`"), "{e}");
}
