//! The job's and the run's state machines checked exhaustively, every state
//! against every event, against tables of the allowed transitions written out
//! here (anything not in a table must be refused), and the effects each
//! transition has: a lease held exactly while leased, a run that ends says so.

use orchestrator_core::machine::{job_on, run_on, JobEvent, RunEvent};
use orchestrator_core::{JobState, RunState};
use proptest::prelude::*;

use JobState as J;
use RunState as R;

// ================================================================== job

fn job_events() -> Vec<JobEvent> {
    use JobEvent as E;
    let events = vec![E::Lease, E::Succeed, E::Fail, E::Expire, E::Cancel];
    for e in &events {
        match e {
            E::Lease | E::Succeed | E::Fail | E::Expire | E::Cancel => {}
        }
    }
    events
}

/// Every allowed job transition.
const JOB_TABLE: &[(JobState, JobEvent, JobState)] = &[
    (J::Queued, JobEvent::Lease, J::Leased),
    (J::Queued, JobEvent::Cancel, J::Cancelled),
    (J::Leased, JobEvent::Succeed, J::Succeeded),
    (J::Leased, JobEvent::Fail, J::Failed),
    (J::Leased, JobEvent::Expire, J::Expired),
    (J::Leased, JobEvent::Cancel, J::Cancelled),
];

#[test]
fn the_job_machine_allows_exactly_the_transitions_of_its_table() {
    for &s in JobState::ALL {
        for e in job_events() {
            let got = job_on(s, e).map(|(to, _)| to);
            match JOB_TABLE
                .iter()
                .find(|(from, ev, _)| *from == s && *ev == e)
            {
                Some((_, _, to)) => assert_eq!(got, Ok(*to), "{s} on {e:?}"),
                None => {
                    let err = got.expect_err(&format!("{s} on {e:?} should be refused"));
                    assert_eq!((err.entity, err.state.as_str()), ("job", s.as_str()));
                    assert_eq!(err.event, format!("{e:?}"));
                }
            }
        }
    }
}

#[test]
fn a_terminal_job_refuses_every_event() {
    let terminal: Vec<_> = JobState::ALL
        .iter()
        .copied()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(
        terminal,
        [J::Succeeded, J::Failed, J::Expired, J::Cancelled]
    );
    for s in terminal {
        for e in job_events() {
            assert!(job_on(s, e).is_err(), "{s} took {e:?}");
        }
    }
}

#[test]
fn a_job_completes_at_most_once() {
    let done = job_on(
        job_on(J::Queued, JobEvent::Lease).unwrap().0,
        JobEvent::Succeed,
    )
    .unwrap()
    .0;
    for e in job_events() {
        assert!(job_on(done, e).is_err(), "{e:?} after success");
    }
}

#[test]
fn a_queued_job_cannot_expire_or_complete_without_a_lease() {
    for e in [JobEvent::Succeed, JobEvent::Fail, JobEvent::Expire] {
        assert!(job_on(J::Queued, e).is_err(), "{e:?}");
    }
}

// ================================================================== run

fn run_events() -> Vec<RunEvent> {
    use RunEvent as E;
    let ended = |open, unsuccessful| E::StageEnded { open, unsuccessful };
    let events = vec![
        ended(3, 0),
        ended(1, 2),
        ended(0, 0),
        ended(0, 1),
        ended(0, 4),
        E::Cancel,
        E::Pause,
        E::Resume,
        E::Admit,
        E::Abort,
    ];
    for e in &events {
        match e {
            E::StageEnded { .. } | E::Cancel | E::Pause | E::Resume | E::Admit | E::Abort => {}
        }
    }
    events
}

/// Every allowed run transition.
fn run_table() -> Vec<(RunState, RunEvent, RunState)> {
    let ended = |open, unsuccessful| RunEvent::StageEnded { open, unsuccessful };
    let mut rows = Vec::new();
    // A paused run ends like a running one; while stages are open it keeps its state.
    for s in [R::Running, R::Paused] {
        rows.extend([
            (s, ended(3, 0), s),
            (s, ended(1, 2), s),
            (s, ended(0, 0), R::Succeeded),
            (s, ended(0, 1), R::Failed),
            (s, ended(0, 4), R::Failed),
            (s, RunEvent::Cancel, R::Cancelled),
            (s, RunEvent::Abort, R::Failed),
        ]);
    }
    rows.push((R::Running, RunEvent::Pause, R::Paused));
    rows.push((R::Paused, RunEvent::Resume, R::Running));
    // A queued run has no stage scheduled yet: it is admitted or cancelled.
    rows.push((R::Queued, RunEvent::Admit, R::Running));
    rows.push((R::Queued, RunEvent::Cancel, R::Cancelled));
    rows.push((R::Queued, RunEvent::Abort, R::Failed));
    rows
}

#[test]
fn the_run_machine_allows_exactly_the_transitions_of_its_table() {
    let table = run_table();
    let mut allowed = 0;
    for &s in RunState::ALL {
        for e in run_events() {
            let got = run_on(s, e).map(|(to, _)| to);
            match table.iter().find(|(from, ev, _)| *from == s && *ev == e) {
                Some((_, _, to)) => {
                    allowed += 1;
                    assert_eq!(got, Ok(*to), "{s} on {e:?}");
                }
                None => {
                    let err = got.expect_err(&format!("{s} on {e:?} should be refused"));
                    assert_eq!((err.entity, err.state.as_str()), ("run", s.as_str()));
                }
            }
        }
    }
    assert_eq!(allowed, table.len(), "every row was exercised once");
}

#[test]
fn admitting_a_queued_run_schedules_it_and_cancelling_it_ends_it() {
    use orchestrator_core::machine::RunEffect;
    assert_eq!(
        run_on(R::Queued, RunEvent::Admit),
        Ok((R::Running, vec![RunEffect::Schedule]))
    );
    assert_eq!(
        run_on(R::Queued, RunEvent::Cancel),
        Ok((
            R::Cancelled,
            vec![RunEffect::CancelStages, RunEffect::Ended]
        ))
    );
    // Admitted once is enough: a running or paused run refuses it.
    for s in [R::Running, R::Paused] {
        assert!(run_on(s, RunEvent::Admit).is_err(), "{s}");
    }
    // Nothing of a queued run has started, so nothing of it can end or pause.
    for e in [
        RunEvent::Pause,
        RunEvent::Resume,
        RunEvent::StageEnded {
            open: 0,
            unsuccessful: 0,
        },
    ] {
        assert!(run_on(R::Queued, e).is_err(), "{e:?}");
    }
}

#[test]
fn a_terminal_run_refuses_every_event() {
    let terminal: Vec<_> = RunState::ALL
        .iter()
        .copied()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(terminal, [R::Succeeded, R::Failed, R::Cancelled]);
    for s in terminal {
        for e in run_events() {
            assert!(run_on(s, e).is_err(), "{s} took {e:?}");
        }
    }
}

proptest! {
    #[test]
    fn a_run_ends_only_when_no_stage_is_open_and_fails_if_any_stage_did(
        open in prop_oneof![Just(0usize), 0usize..100, any::<usize>()],
        unsuccessful in prop_oneof![Just(0usize), 0usize..100, any::<usize>()],
    ) {
        let got = run_on(R::Running, RunEvent::StageEnded { open, unsuccessful }).unwrap().0;
        let expected = match (open, unsuccessful) {
            (o, _) if o > 0 => R::Running,
            (_, 0) => R::Succeeded,
            _ => R::Failed,
        };
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn a_job_holds_a_lease_exactly_while_it_is_leased() {
    use orchestrator_core::machine::{JobEffect, LeaseEnd};
    for &s in JobState::ALL {
        for e in job_events() {
            let Ok((to, effects)) = job_on(s, e) else {
                continue;
            };
            let expected: Vec<JobEffect> = match (s, to) {
                (J::Queued, J::Leased) => vec![JobEffect::GrantLease],
                (J::Leased, J::Expired) => vec![JobEffect::EndLease(LeaseEnd::Expired)],
                (J::Leased, J::Cancelled) => vec![JobEffect::EndLease(LeaseEnd::Revoked)],
                (J::Leased, _) => vec![JobEffect::EndLease(LeaseEnd::Released)],
                _ => vec![],
            };
            assert_eq!(effects, expected, "{s} on {e:?}");
        }
    }
}

#[test]
fn a_run_that_ends_says_so_and_a_cancelled_one_cancels_its_stages() {
    use orchestrator_core::machine::RunEffect;
    let mut seen = 0;
    for &s in RunState::ALL {
        for e in run_events() {
            let Ok((to, effects)) = run_on(s, e) else {
                continue;
            };
            seen += 1;
            assert_eq!(
                effects.contains(&RunEffect::Ended),
                to.is_terminal(),
                "{s} on {e:?}"
            );
            assert_eq!(
                effects.contains(&RunEffect::CancelStages),
                matches!(e, RunEvent::Cancel | RunEvent::Abort),
                "{s} on {e:?}"
            );
            // An abort fails what awaits a decision before it cancels the rest.
            if e == RunEvent::Abort {
                assert_eq!(
                    effects,
                    [
                        RunEffect::AbortStages,
                        RunEffect::CancelStages,
                        RunEffect::Ended
                    ]
                );
            }
            assert_eq!(
                effects.contains(&RunEffect::Schedule),
                e == RunEvent::Admit,
                "{s} on {e:?}"
            );
        }
    }
    assert_eq!(seen, run_table().len());
}
