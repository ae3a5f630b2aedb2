//! What of the agent's own environment reaches the commands it runs: only
//! the allowlisted variables (PATH, HOME, the locale...), never the
//! orchestrator's tokens, other secrets, nor a grant the agent itself was
//! given (an agent started by another agent's step). Alone in its own test
//! binary because it changes the process environment, which other tests
//! spawning processes would race with.

use std::collections::BTreeMap;

use orchestrator_agent::run_step;
use orchestrator_core::api::{ClaimedJob, JobSpec};
use orchestrator_core::spec::CommandSpec;
use tokio_util::sync::CancellationToken;

mod common;

#[tokio::test]
async fn orchestrator_tokens_are_not_inherited() {
    // A project is a git repository with a commit (made before any thread).
    let (project, head) = common::repo();
    // Set before any other thread of this binary exists.
    std::env::set_var("ORCH_AGENT_TOKEN", "agent-secret");
    std::env::set_var("ORCH_TOKEN", "admin-secret");
    std::env::set_var("ORCH_SECRETS_TEST_VISIBLE", "visible");
    std::env::set_var("SECRET_X", "1");
    std::env::set_var("LC_ORCH_TEST", "kept");
    std::env::set_var("CUDA_VISIBLE_DEVICES", "7");
    std::env::set_var("ORCH_GPUS", "7");
    std::env::set_var("ORCH_MEMORY_MB", "99");
    let mut env = BTreeMap::new();
    // A step may still set such a variable itself.
    env.insert("ORCH_TOKEN".to_owned(), "from-the-step".to_owned());
    let job = ClaimedJob {
        job_id: 1.into(),
        lease_id: 1.into(),
        lease_token: "t".into(),
        queued_at_ms: 0,
        lease_expires_at_ms: 0,
        grant: Default::default(),
        spec: JobSpec {
            run_id: "r".into(),
            stage_id: "s".into(),
            step: 0,
            steps_total: 1,
            attempt: 1,
            step_name: None,
            project_dir: project.path().to_string_lossy().into_owned(),
            shell: false,
            commands: vec![CommandSpec {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo \"${ORCH_AGENT_TOKEN:-unset}|$ORCH_TOKEN|${ORCH_SECRETS_TEST_VISIBLE:-unset}\""
                        .into(),
                ],
                run: None,
                cwd: None,
                env: BTreeMap::new(),
                timeout: None,
            }],
            env,
            base_commit: head,
            ..JobSpec::default()
        },
    };
    let out = run_step(&job, &"a".into(), CancellationToken::new()).await;
    assert!(out.success, "{out:?}");
    let log = project.path().join(&out.bundle).join("cmd-000.stdout.log");
    assert_eq!(
        std::fs::read_to_string(log).unwrap(),
        "unset|from-the-step|unset\n"
    );

    // On an agent without GPUs (`run_step`), a step granted nothing keeps
    // the agent's CUDA_VISIBLE_DEVICES but not the agent's own grant.
    let mut job = job;
    job.job_id = 2.into();
    job.spec.env.clear();
    job.spec.commands[0].argv[2] =
        r#"echo "$CUDA_VISIBLE_DEVICES|${ORCH_GPUS-unset}|${ORCH_MEMORY_MB-unset}""#.into();
    let out = run_step(&job, &"a".into(), CancellationToken::new()).await;
    assert!(out.success, "{out:?}");
    let log = project.path().join(&out.bundle).join("cmd-000.stdout.log");
    assert_eq!(std::fs::read_to_string(log).unwrap(), "7|unset|unset\n");

    // `env` is found through the inherited PATH; it shows the allowlisted
    // variables, the step's own and the orchestrator's, nothing else.
    job.job_id = 3.into();
    job.spec.env.insert("DECLARED".into(), "yes".into());
    job.spec.commands[0].argv = vec!["env".into()];
    let out = run_step(&job, &"a".into(), CancellationToken::new()).await;
    assert!(out.success, "{out:?}");
    let log = project.path().join(&out.bundle).join("cmd-000.stdout.log");
    let env = std::fs::read_to_string(log).unwrap();
    assert!(!env.contains("SECRET_X"), "{env}");
    assert!(!env.contains("agent-secret"), "{env}");
    assert!(!env.contains("ORCH_SECRETS_TEST_VISIBLE"), "{env}");
    for line in ["DECLARED=yes", "LC_ORCH_TEST=kept", "ORCH_RUN_ID=r"] {
        assert!(env.lines().any(|l| l == line), "{line} in {env}");
    }
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    for name in names {
        assert!(
            name.starts_with("ORCH_")
                || name.starts_with("LC_")
                || ["PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TERM", "TMPDIR", "SHELL"]
                    .contains(&name)
                || ["CUDA_VISIBLE_DEVICES", "DECLARED", "PWD", "SHLVL", "_"].contains(&name),
            "{name} leaked into the step: {env}"
        );
    }
}
