//! How the authorities over scheduling are read: a project's policy file and
//! the daemon's system rules, every field, the defaults, and the unknown keys
//! and senseless values each refuses, naming the file.

use orchestrator_core::sched::policy::PriorityRange;
use orchestrator_core::sched::{
    parse_project_policy, parse_system_rules, ProjectPolicy, Reserve, SystemRules,
};
use orchestrator_core::spec::{DurationSpec, SizeSpec};

mod common;

use common::range;

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
