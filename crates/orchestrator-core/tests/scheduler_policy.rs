//! The authorities over scheduling: a run's suggestion, its project's policy
//! file and the daemon's system rules, and how they combine into a priority
//! and limits (how their files are read: `scheduler_policy_files.rs`).

use orchestrator_core::sched::policy::{Adjustment, Limit, PriorityRange, Quotas, PRIORITY_LIMIT};
use orchestrator_core::sched::{
    effective_priority, limits, quota_allows, Authority, Misfit, Needs, ProjectPolicy, Reserve,
    SystemRules, Usage,
};
use orchestrator_core::spec::SizeSpec;
use proptest::prelude::*;

mod common;

use common::range;

fn project(priority: Option<PriorityRange>, default_priority: Option<i32>) -> ProjectPolicy {
    ProjectPolicy {
        priority,
        default_priority,
        ..ProjectPolicy::default()
    }
}

fn system(min: i32, max: i32) -> SystemRules {
    SystemRules {
        priority: PriorityRange { min, max },
        ..SystemRules::default()
    }
}

fn step(by: Authority, rule: &str, from: i32, to: i32) -> Adjustment {
    Adjustment {
        by,
        rule: rule.into(),
        from,
        to,
    }
}

// ------------------------------------------------------------ priority

#[test]
fn the_effective_priority_follows_its_authorities_in_order() {
    use Authority::{Project as P, System as S};
    let none = ProjectPolicy::default();
    let wide = SystemRules::default();
    #[allow(clippy::type_complexity)]
    let table: Vec<(
        Option<i32>,
        Option<i32>,
        ProjectPolicy,
        SystemRules,
        i32,
        Vec<Adjustment>,
    )> = vec![
        // The run's own suggestion beats its workflow's and the default.
        (
            Some(5),
            Some(3),
            project(None, Some(7)),
            wide.clone(),
            5,
            vec![],
        ),
        (
            None,
            Some(3),
            project(None, Some(7)),
            wide.clone(),
            3,
            vec![],
        ),
        (
            None,
            None,
            project(None, Some(7)),
            wide.clone(),
            7,
            vec![step(P, "default_priority 7", 0, 7)],
        ),
        (None, None, none.clone(), wide.clone(), 0, vec![]),
        // The project clamps into its range.
        (
            Some(100),
            None,
            project(range(0, 50), None),
            wide.clone(),
            50,
            vec![step(P, "priority range [0, 50]", 100, 50)],
        ),
        (
            None,
            Some(-5),
            project(range(0, 50), None),
            wide.clone(),
            0,
            vec![step(P, "priority range [0, 50]", -5, 0)],
        ),
        (
            Some(20),
            None,
            project(range(0, 50), None),
            wide.clone(),
            20,
            vec![],
        ),
        // No suggestion and no default: 0, clamped like any other value.
        (
            None,
            None,
            project(range(10, 20), None),
            wide.clone(),
            10,
            vec![step(P, "priority range [10, 20]", 0, 10)],
        ),
        // A default and a range, both recorded.
        (
            None,
            None,
            project(range(10, 20), Some(7)),
            wide.clone(),
            10,
            vec![
                step(P, "default_priority 7", 0, 7),
                step(P, "priority range [10, 20]", 7, 10),
            ],
        ),
        // The system has the last word.
        (
            Some(2000),
            None,
            none,
            wide.clone(),
            PRIORITY_LIMIT,
            vec![step(S, "priority range [-1000, 1000]", 2000, 1000)],
        ),
        (
            Some(3000),
            None,
            project(range(0, 5000), None),
            wide.clone(),
            1000,
            vec![step(S, "priority range [-1000, 1000]", 3000, 1000)],
        ),
        (
            Some(40),
            None,
            project(range(0, 50), None),
            system(-10, 20),
            20,
            vec![step(S, "priority range [-10, 20]", 40, 20)],
        ),
        (
            Some(99),
            None,
            project(range(0, 50), None),
            system(-10, 20),
            20,
            vec![
                step(P, "priority range [0, 50]", 99, 50),
                step(S, "priority range [-10, 20]", 50, 20),
            ],
        ),
        // Ranges that do not meet: the system wins.
        (
            Some(150),
            None,
            project(range(100, 200), None),
            system(-10, 20),
            20,
            vec![step(S, "priority range [-10, 20]", 150, 20)],
        ),
        // A range written upside down is read the right way up.
        (
            Some(70),
            None,
            project(range(50, 0), None),
            wide,
            50,
            vec![step(P, "priority range [0, 50]", 70, 50)],
        ),
    ];
    for (i, (run, wf, p, s, value, steps)) in table.into_iter().enumerate() {
        let e = effective_priority(run, wf, &p, &s);
        assert_eq!(e.suggested, run.or(wf), "row {i}");
        assert_eq!(e.value, value, "row {i}: {e}");
        assert_eq!(e.steps, steps, "row {i}: {e}");
    }
}

#[test]
fn the_effective_priority_reads_as_the_story_of_its_rules() {
    let e = effective_priority(
        Some(99),
        None,
        &project(range(0, 50), None),
        &system(-10, 20),
    );
    assert_eq!(
        e.to_string(),
        "20 (suggested 99; project policy priority range [0, 50]: 99 -> 50; \
         system rules priority range [-10, 20]: 50 -> 20)"
    );
    let plain = effective_priority(
        None,
        None,
        &ProjectPolicy::default(),
        &SystemRules::default(),
    );
    assert_eq!(plain.to_string(), "0 (none suggested)");
}

fn arb_range() -> impl Strategy<Value = PriorityRange> {
    (-2000i32..2000, 0i32..2000).prop_map(|(min, width)| PriorityRange {
        min,
        max: min + width,
    })
}

proptest! {
    #[test]
    fn the_system_range_always_holds_and_the_projects_when_they_meet(
        run in prop::option::of(any::<i32>()),
        wf in prop::option::of(-5000i32..5000),
        p_range in prop::option::of(arb_range()),
        default in prop::option::of(-5000i32..5000),
        s_range in arb_range(),
    ) {
        let p = ProjectPolicy { priority: p_range, default_priority: default, ..ProjectPolicy::default() };
        let s = SystemRules { priority: s_range, ..SystemRules::default() };
        let e = effective_priority(run, wf, &p, &s);
        prop_assert!(s_range.min <= e.value && e.value <= s_range.max, "{}", e);
        if let Some(r) = p_range {
            if r.min <= s_range.max && s_range.min <= r.max {
                prop_assert!(r.min <= e.value && e.value <= r.max, "{}", e);
            }
        }
        // The steps tell the whole story: they chain from the starting
        // value to the result, the project's before the system's.
        let mut at = run.or(wf).unwrap_or(0);
        for a in &e.steps {
            prop_assert_eq!(a.from, at, "{}", e);
            at = a.to;
        }
        prop_assert_eq!(at, e.value);
        prop_assert!(e.steps.windows(2).all(|w| !(w[0].by == Authority::System && w[1].by == Authority::Project)));
        prop_assert!(e.steps.iter().all(|a| a.by != Authority::Run));
        prop_assert!(e.steps.iter().filter(|a| a.by == Authority::System).count() <= 1);
    }
}

// ------------------------------------------------------------ limits and quotas

#[test]
fn the_tighter_limit_holds_and_says_who_set_it() {
    let lim = |value, by| Some(Limit { value, by });
    let table = [
        (Some(4), Some(2), lim(2, Authority::System)),
        (Some(2), Some(4), lim(2, Authority::Project)),
        (Some(3), Some(3), lim(3, Authority::Project)),
        (None, Some(5), lim(5, Authority::System)),
        (Some(5), None, lim(5, Authority::Project)),
        (None, None, None),
    ];
    for (p, s, expected) in table {
        let policy = ProjectPolicy {
            max_parallel_runs: p,
            max_parallel_stages: p,
            ..ProjectPolicy::default()
        };
        let rules = SystemRules {
            max_parallel_runs: s,
            max_parallel_stages: s,
            ..SystemRules::default()
        };
        let l = limits(&policy, &rules);
        assert_eq!(l.max_parallel_runs, expected, "{p:?} {s:?}");
        assert_eq!(l.max_parallel_stages, expected, "{p:?} {s:?}");
    }
    // Quotas belong to the project alone; memory counts in MiB.
    let policy = ProjectPolicy {
        quotas: Quotas {
            slots: Some(8),
            memory: Some(SizeSpec::from_mib(16 * 1024)),
            gpus: Some(2),
        },
        ..ProjectPolicy::default()
    };
    let l = limits(&policy, &SystemRules::default());
    assert_eq!(l.quota_slots, lim(8, Authority::Project));
    assert_eq!(l.quota_memory_mb, lim(16 * 1024, Authority::Project));
    assert_eq!(l.quota_gpus, lim(2, Authority::Project));
    assert_eq!(l.max_parallel_runs, None);
    assert_eq!(
        lim(2, Authority::System).unwrap().to_string(),
        "2 (system rules)"
    );
}

#[test]
fn quotas_allow_a_step_only_while_what_it_adds_stays_within_them() {
    let policy = ProjectPolicy {
        quotas: Quotas {
            slots: Some(2),
            memory: Some(SizeSpec::from_mib(8192)),
            gpus: Some(1),
        },
        ..ProjectPolicy::default()
    };
    let l = limits(&policy, &SystemRules::default());
    let used = |slots, memory_mb, gpus| Usage {
        slots,
        memory_mb,
        gpus,
    };
    let n = |memory_mb, gpus| Needs {
        memory_mb,
        gpus,
        ..Needs::default()
    };
    assert_eq!(quota_allows(&l, used(1, 4096, 0), &n(4096, 1)), Ok(()));
    let slots = quota_allows(&l, used(2, 0, 0), &n(0, 0))
        .unwrap_err()
        .to_string();
    assert_eq!(
        slots,
        "project quota slots 2 reached: 2 in use, this step needs 1"
    );
    let memory = quota_allows(&l, used(0, 4096, 0), &n(4097, 0))
        .unwrap_err()
        .to_string();
    assert!(memory.contains("memory (MiB) 8192"), "{memory}");
    let gpus = quota_allows(&l, used(0, 0, 1), &n(0, 1))
        .unwrap_err()
        .to_string();
    assert!(gpus.contains("gpus 1"), "{gpus}");
    // A step that adds none of a resource is not held back by its quota,
    // even when the project is over it (the quota shrank meanwhile).
    assert_eq!(quota_allows(&l, used(1, 9000, 3), &n(0, 0)), Ok(()));
    // No quota, no limit.
    let free = limits(&ProjectPolicy::default(), &SystemRules::default());
    assert_eq!(
        quota_allows(&free, used(u64::MAX, u64::MAX, u64::MAX), &n(u64::MAX, 64)),
        Ok(())
    );
}

#[test]
fn the_reserve_keeps_an_agents_last_slots_for_high_priority_work() {
    let rules = SystemRules {
        reserve: Some(Reserve {
            slots: 1,
            min_priority: 10,
        }),
        ..SystemRules::default()
    };
    let reserved = Err(Misfit::Reserved {
        slots: 1,
        min_priority: 10,
    });
    // (priority, free slots, total slots)
    for (priority, free_slots, total, expected) in [
        (5, 1, 4, reserved.clone()),
        (5, 0, 4, reserved.clone()),
        (5, 2, 4, Ok(())),
        (10, 1, 4, Ok(())),
        (11, 0, 4, Ok(())),
        // An agent with no more slots than the reserve keeps none back.
        (5, 1, 1, Ok(())),
        (-1000, 1, 2, reserved),
    ] {
        assert_eq!(
            rules.reserve_allows(priority, free_slots, total),
            expected,
            "priority {priority}, {free_slots}/{total} free"
        );
    }
    assert!(rules.is_high(10));
    assert!(!rules.is_high(9));
    let none = SystemRules::default();
    assert_eq!(none.reserve_allows(-1000, 1, 4), Ok(()));
    assert!(
        !none.is_high(PRIORITY_LIMIT),
        "without a reserve nothing is high"
    );
}

#[test]
fn the_system_caps_the_slots_an_agent_declares() {
    assert_eq!(SystemRules::default().agent_slots(16), 16);
    let capped = SystemRules {
        agent_max_slots: Some(4),
        ..SystemRules::default()
    };
    assert_eq!(capped.agent_slots(16), 4);
    assert_eq!(capped.agent_slots(2), 2);
}
