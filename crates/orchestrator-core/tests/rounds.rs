//! Rounds: how a step's runs are numbered and why each ran.

use orchestrator_core::machine::{After, StageEvent};
use orchestrator_core::rounds::{next_round, round_cause, EarlierJob, RoundReason};
use proptest::prelude::*;

fn ran(index: u32, round: u32, reason: RoundReason) -> EarlierJob {
    EarlierJob {
        index,
        started: true,
        round,
        reason,
    }
}

#[test]
fn a_step_that_never_ran_is_in_its_first_round_whatever_the_cause() {
    for cause in [None, Some(RoundReason::Feedback), Some(RoundReason::Loop)] {
        assert_eq!(next_round(&[], 0, cause), (1, RoundReason::First));
        assert_eq!(
            next_round(&[ran(0, 1, RoundReason::First)], 1, cause),
            (1, RoundReason::First)
        );
    }
}

#[test]
fn each_run_again_is_the_next_round_with_its_reason() {
    let asked = [ran(0, 1, RoundReason::First)];
    assert_eq!(
        next_round(&asked, 0, Some(RoundReason::Answer)),
        (2, RoundReason::Answer)
    );
    // After feedback, the step after it inherits the reason of the round
    // that led to it.
    let jobs = [
        ran(0, 1, RoundReason::First),
        ran(1, 1, RoundReason::First),
        ran(0, 2, RoundReason::Feedback),
    ];
    assert_eq!(next_round(&jobs, 1, None), (2, RoundReason::Feedback));
    // Nothing says why, and nothing before it does either: the stage started over.
    assert_eq!(
        next_round(&[ran(0, 1, RoundReason::First)], 0, None),
        (2, RoundReason::Retry)
    );
}

#[test]
fn a_job_withdrawn_before_it_ran_is_taken_over_by_the_next() {
    let jobs = [
        ran(0, 1, RoundReason::First),
        EarlierJob {
            index: 0,
            started: false,
            round: 2,
            reason: RoundReason::Loop,
        },
    ];
    assert_eq!(
        next_round(&jobs, 0, Some(RoundReason::Retry)),
        (2, RoundReason::Loop)
    );
}

#[test]
fn the_events_that_run_a_step_again_say_why() {
    use StageEvent as E;
    let next = After::Step(0);
    assert_eq!(round_cause(&E::Answer { next }), Some(RoundReason::Answer));
    assert_eq!(
        round_cause(&E::Reject { step: 0 }),
        Some(RoundReason::Feedback)
    );
    assert_eq!(
        round_cause(&E::SendBack { next }),
        Some(RoundReason::Feedback)
    );
    assert_eq!(round_cause(&E::NeedsMet), Some(RoundReason::Feedback));
    assert_eq!(round_cause(&E::Retry { next }), Some(RoundReason::Retry));
    assert_eq!(round_cause(&E::RetryDue { next }), Some(RoundReason::Retry));
    assert_eq!(round_cause(&E::Approve { next }), None);
    assert_eq!(round_cause(&E::Resume { next }), None);
}

#[test]
fn every_round_reason_name_round_trips() {
    for r in RoundReason::ALL {
        assert_eq!(RoundReason::parse(r.as_str()), Some(r));
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
}

proptest! {
    /// Replaying any sequence of runs: each step's rounds count 1, 2, 3...
    /// in the order its jobs started, and only a first round says `first`.
    #[test]
    fn rounds_count_each_steps_runs_from_one(
        runs in prop::collection::vec((0u32..4, any::<bool>(), 0usize..5), 0..40),
    ) {
        let mut jobs: Vec<EarlierJob> = Vec::new();
        let mut started = [0u32; 4];
        for (index, starts, cause) in runs {
            let cause = [None, Some(RoundReason::Answer), Some(RoundReason::Feedback), Some(RoundReason::Retry), Some(RoundReason::Loop)][cause];
            let (round, reason) = next_round(&jobs, index, cause);
            prop_assert_eq!(round, started[index as usize] + 1);
            prop_assert_eq!(round == 1, reason == RoundReason::First);
            if starts {
                started[index as usize] += 1;
            }
            jobs.push(EarlierJob { index, started: starts, round, reason });
        }
    }
}
