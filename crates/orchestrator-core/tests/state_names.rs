//! The names of states, entities and error classes: each round-trips through
//! its parser, its Display and serde, and a transition row serializes with the
//! store's names.

use orchestrator_core::error::ErrorClass;
use orchestrator_core::{Entity, JobState, RunState, StageState, Transition};

use StageState as S;

// ============================================================ names

macro_rules! assert_names_round_trip {
    ($ty:ty) => {{
        let all = <$ty>::ALL;
        let mut names: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        for &s in all {
            assert_eq!(<$ty>::parse(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
            // The serde name is the same as the store's name.
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().to_owned())
            );
            assert_eq!(
                serde_json::from_value::<$ty>(serde_json::json!(s.as_str())).unwrap(),
                s
            );
            assert_eq!(<$ty>::parse(&s.as_str().to_uppercase()), None);
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "names are unique");
        assert_eq!(<$ty>::parse(""), None);
        assert_eq!(<$ty>::parse("nonsense"), None);
    }};
}

#[test]
fn every_stage_state_name_round_trips() {
    assert_names_round_trip!(StageState);
    assert_eq!(StageState::ALL.len(), 16);
}

#[test]
fn every_job_state_name_round_trips() {
    assert_names_round_trip!(JobState);
    assert_eq!(JobState::ALL.len(), 6);
}

#[test]
fn every_run_state_name_round_trips() {
    assert_names_round_trip!(RunState);
    assert_eq!(RunState::ALL.len(), 6);
}

#[test]
fn every_entity_name_round_trips() {
    let all = [
        Entity::Run,
        Entity::Stage,
        Entity::Job,
        Entity::Lease,
        Entity::Agent,
        Entity::Question,
        Entity::Checkpoint,
    ];
    // Fails to compile when a variant is added and not listed above.
    for e in all {
        match e {
            Entity::Run
            | Entity::Stage
            | Entity::Job
            | Entity::Lease
            | Entity::Agent
            | Entity::Question
            | Entity::Checkpoint => {}
        }
    }
    let mut names: Vec<&str> = all.iter().map(|e| e.as_str()).collect();
    for e in all {
        assert_eq!(Entity::parse(e.as_str()), Some(e));
        assert_eq!(
            serde_json::to_value(e).unwrap(),
            serde_json::Value::String(e.as_str().to_owned())
        );
    }
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all.len());
    assert_eq!(Entity::parse("Run"), None);
    assert_eq!(Entity::parse("runs"), None);
}

#[test]
fn every_error_class_name_round_trips() {
    for c in [ErrorClass::Infra, ErrorClass::Task] {
        assert_eq!(ErrorClass::parse(c.as_str()), Some(c));
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            serde_json::Value::String(c.as_str().to_owned())
        );
    }
    assert_eq!(ErrorClass::parse("other"), None);
}

#[test]
fn a_transition_row_serializes_with_store_names() {
    let t = Transition {
        seq: 7,
        entity: Entity::Stage,
        entity_id: "r1/build".into(),
        run_id: Some("r1".into()),
        from: Some(S::Running.into()),
        to: S::Succeeded.into(),
        reason: "last step succeeded".into(),
        actor: orchestrator_core::Actor::agent("a1"),
        at_ms: 1_700_000_000_000,
    };
    let v = serde_json::to_value(&t).unwrap();
    assert_eq!(v["entity"], "stage");
    assert_eq!(v["from"], "running");
    assert_eq!(v["to"], "succeeded");
    assert_eq!(serde_json::from_value::<Transition>(v).unwrap(), t);
}
