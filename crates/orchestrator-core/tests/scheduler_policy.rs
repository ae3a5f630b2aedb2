//! The authorities over scheduling: a run's suggestion, its project's policy
//! file and the daemon's system rules; how they combine into a priority and
//! limits, and how their files are read.

use orchestrator_core::sched::policy::{Adjustment, Limit, PriorityRange, Quotas, PRIORITY_LIMIT};
use orchestrator_core::sched::{
    effective_priority, limits, parse_project_policy, parse_system_rules, quota_allows, Authority,
    Misfit, Needs, ProjectPolicy, Reserve, SystemRules, Usage,
};
use orchestrator_core::spec::{DurationSpec, SizeSpec};
use proptest::prelude::*;

fn range(min: i32, max: i32) -> Option<PriorityRange> {
    Some(PriorityRange { min, max })
}

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
    let slots = quota_allows(&l, used(2, 0, 0), &n(0, 0)).unwrap_err();
    assert_eq!(
        slots,
        "project quota slots 2 reached: 2 in use, this step needs 1"
    );
    let memory = quota_allows(&l, used(0, 4096, 0), &n(4097, 0)).unwrap_err();
    assert!(memory.contains("memory (MiB) 8192"), "{memory}");
    let gpus = quota_allows(&l, used(0, 0, 1), &n(0, 1)).unwrap_err();
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

// ------------------------------------------------------------ the files

#[test]
fn a_project_policy_file_reads_every_field() {
    let p = parse_project_policy(
        "priority: {min: -10, max: 50}\n\
         default_priority: 5\n\
         max_parallel_runs: 2\n\
         max_parallel_stages: 8\n\
         quotas:\n  slots: 6\n  memory: 32G\n  gpus: 2\n",
        "policy.yaml",
    )
    .unwrap();
    assert_eq!(p.priority, range(-10, 50));
    assert_eq!(p.default_priority, Some(5));
    assert_eq!(p.max_parallel_runs, Some(2));
    assert_eq!(p.max_parallel_stages, Some(8));
    assert_eq!(p.quotas.slots, Some(6));
    assert_eq!(p.quotas.memory, Some(SizeSpec::from_mib(32 * 1024)));
    assert_eq!(p.quotas.gpus, Some(2));
}

#[test]
fn an_empty_policy_file_or_one_of_comments_means_the_defaults() {
    for text in ["", "  \n\n", "# no policy yet\n", "---\n# nothing\n"] {
        assert_eq!(
            parse_project_policy(text, "policy.yaml"),
            Ok(ProjectPolicy::default()),
            "{text:?}"
        );
        assert_eq!(
            parse_system_rules(text, "rules.yaml"),
            Ok(SystemRules::default()),
            "{text:?}"
        );
    }
    let d = SystemRules::default();
    assert_eq!(
        d.priority,
        PriorityRange {
            min: -1000,
            max: 1000
        }
    );
    assert_eq!(d.aging, DurationSpec::from_secs(60));
}

#[track_caller]
fn refused(
    result: Result<impl std::fmt::Debug, orchestrator_core::sched::PolicyError>,
    file: &str,
    says: &[&str],
) {
    let err = result.expect_err("should be refused");
    assert_eq!(err.file, file);
    let text = err.to_string();
    assert!(text.starts_with(&format!("{file}: ")), "{text}");
    for s in says {
        assert!(text.contains(s), "{text:?} should say {s:?}");
    }
}

#[test]
fn a_policy_file_refuses_unknown_keys_naming_them_and_the_file() {
    refused(
        parse_project_policy("max_parallel_run: 2\n", ".orchestrator/policy.yaml"),
        ".orchestrator/policy.yaml",
        &["max_parallel_run", "line 1"],
    );
    refused(
        parse_project_policy("quotas:\n  cpus: 4\n", "p.yaml"),
        "p.yaml",
        &["cpus", "line 2"],
    );
    refused(
        parse_system_rules(
            "reserve: {slots: 1, min_priority: 5, spare: 1}\n",
            "rules.yaml",
        ),
        "rules.yaml",
        &["spare"],
    );
    refused(
        parse_system_rules("agent_slots: 4\n", "rules.yaml"),
        "rules.yaml",
        &["agent_slots"],
    );
    refused(
        parse_project_policy("priority: [1, 2\n", "p.yaml"),
        "p.yaml",
        &["line"],
    );
}

#[test]
fn a_project_policy_refuses_values_that_make_no_sense() {
    refused(
        parse_project_policy("priority: {min: 10, max: 5}\n", "p.yaml"),
        "p.yaml",
        &["min 10 is above max 5"],
    );
    for key in ["max_parallel_runs", "max_parallel_stages"] {
        refused(
            parse_project_policy(&format!("{key}: 0\n"), "p.yaml"),
            "p.yaml",
            &[key, "expected at least 1"],
        );
    }
    refused(
        parse_project_policy("quotas: {slots: 0}\n", "p.yaml"),
        "p.yaml",
        &["quotas.slots: 0"],
    );
    refused(
        parse_project_policy(
            "priority: {min: 0, max: 10}\ndefault_priority: 11\n",
            "p.yaml",
        ),
        "p.yaml",
        &["default_priority 11 is outside priority [0, 10]"],
    );
    // Every problem at once.
    refused(
        parse_project_policy("max_parallel_runs: 0\nmax_parallel_stages: 0\n", "p.yaml"),
        "p.yaml",
        &["max_parallel_runs: 0", "; max_parallel_stages: 0"],
    );
    // A default with no range of its own is fine: the system clamps it.
    assert!(parse_project_policy("default_priority: 5000\n", "p.yaml").is_ok());
}

#[test]
fn system_rules_read_every_field_and_refuse_values_that_make_no_sense() {
    let r = parse_system_rules(
        "priority: {min: 0, max: 100}\n\
         max_parallel_runs: 4\n\
         max_parallel_stages: 16\n\
         reserve: {slots: 1, min_priority: 50}\n\
         agent_max_slots: 8\n\
         aging: 30s\n",
        "rules.yaml",
    )
    .unwrap();
    assert_eq!(r.priority, PriorityRange { min: 0, max: 100 });
    assert_eq!(r.max_parallel_runs, Some(4));
    assert_eq!(r.max_parallel_stages, Some(16));
    assert_eq!(
        r.reserve,
        Some(Reserve {
            slots: 1,
            min_priority: 50
        })
    );
    assert_eq!(r.agent_max_slots, Some(8));
    assert_eq!(r.aging, DurationSpec::from_secs(30));
    // What is left out keeps its default.
    let partial = parse_system_rules("max_parallel_runs: 3\n", "rules.yaml").unwrap();
    assert_eq!(partial.aging, SystemRules::default().aging);
    assert_eq!(partial.priority, SystemRules::default().priority);

    refused(
        parse_system_rules("priority: {min: 1, max: 0}\n", "rules.yaml"),
        "rules.yaml",
        &["min 1 is above max 0"],
    );
    for aging in ["0", "0s", "0ms"] {
        refused(
            parse_system_rules(&format!("aging: {aging}\n"), "rules.yaml"),
            "rules.yaml",
            &["aging: 0s", "at least 1ms"],
        );
    }
    for key in [
        "max_parallel_runs",
        "max_parallel_stages",
        "agent_max_slots",
    ] {
        refused(
            parse_system_rules(&format!("{key}: 0\n"), "rules.yaml"),
            "rules.yaml",
            &[key, "expected at least 1"],
        );
    }
    assert!(parse_system_rules("aging: 1ms\n", "rules.yaml").is_ok());
}

#[test]
fn a_stage_may_lower_the_systems_retry_attempts_but_never_raise_them() {
    use orchestrator_core::error::Backoff;
    use orchestrator_core::spec::Retry;
    let rules = orchestrator_core::sched::parse_system_rules(
        "retry: {attempts: 3, initial: 2s}\n",
        "rules.yaml",
    )
    .unwrap();
    let (n, b) = rules.retry_of(None);
    assert_eq!(n, 3);
    assert_eq!(
        b,
        Backoff {
            initial_ms: 2000,
            ..Backoff::default()
        }
    );
    let lower = Retry {
        attempts: Some(2),
        factor: Some(5),
        ..Default::default()
    };
    assert_eq!(rules.retry_of(Some(&lower)).0, 2);
    assert_eq!(rules.retry_of(Some(&lower)).1.factor, 5);
    let higher = Retry {
        attempts: Some(5),
        ..Default::default()
    };
    assert_eq!(rules.retry_of(Some(&higher)).0, 3, "the system's 3 holds");
    assert_eq!(
        orchestrator_core::sched::SystemRules::default()
            .retry_of(None)
            .0,
        5
    );
}
