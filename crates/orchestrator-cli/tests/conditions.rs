//! Stages with `if:` from end to end, through the real daemon, agent and
//! CLI: the conditions example's failing test, its `if: failure()` notify
//! stage that runs, and its `deploy` stage bypassed by a false condition,
//! which `orch show` explains; `orch plan` shows each condition.

mod common;

use common::*;

#[test]
fn the_conditions_example_does_what_its_comment_says() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "w", 1);
    let file = h.example("conditions.yaml");
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "failed", "{detail:#}");
    assert_eq!(stage(&detail, "build")["state"], "succeeded");
    assert_eq!(stage(&detail, "test")["state"], "failed");
    assert_eq!(stage(&detail, "notify")["state"], "succeeded");
    let deploy = stage(&detail, "deploy");
    assert_eq!(deploy["state"], "bypassed", "{detail:#}");
    assert_eq!(deploy["condition"], "inputs.deploy == true");
    let why = deploy["bypassed"].as_str().unwrap_or_default();
    assert!(
        why.contains("inputs.deploy == true") && why.contains("false"),
        "{why}"
    );
    assert!(jobs_of(&detail, "deploy").is_empty(), "{detail:#}");

    let log = h.orch(&["logs", &run]);
    log.expect_code(0);
    assert!(
        log.stdout.contains("tests failed: conditions needs a look"),
        "{log}"
    );

    let show = h.orch(&["show", &run]);
    show.expect_code(0);
    assert!(show.stdout.contains("bypassed"), "{show}");
    assert!(
        show.stdout
            .contains("notify                   if: failure()"),
        "{show}"
    );
    assert!(
        show.stdout
            .contains("bypassed: its condition `inputs.deploy == true` is false"),
        "{show}"
    );

    let plan = h.orch(&["plan", file.to_str().unwrap()]);
    plan.expect_code(0);
    assert!(
        plan.stdout
            .contains("condition: deploy runs only if: inputs.deploy == true"),
        "{plan}"
    );
    let plan = h
        .orch(&["plan", file.to_str().unwrap(), "-o", "json"])
        .json();
    assert_eq!(plan["conditions"]["notify"], "failure()");
}

#[test]
fn asked_to_deploy_the_deploy_stage_runs() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "w", 1);
    let file = h.example("conditions.yaml");
    let project = h.project.to_str().unwrap().to_owned();
    let out = h.orch(&[
        "run",
        file.to_str().unwrap(),
        "--project",
        &project,
        "-p",
        "deploy=true",
    ]);
    out.expect_code(0);
    let run = out.stdout.trim().to_owned();
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(stage(&detail, "deploy")["state"], "succeeded", "{detail:#}");
    assert_eq!(stage(&detail, "notify")["state"], "succeeded");
}
