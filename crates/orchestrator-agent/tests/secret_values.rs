//! A step's secrets (`JobSpec::secrets`) reach its commands as variables,
//! and their values never appear in what the agent writes: command logs,
//! manifest and error messages show `***`. Real processes, real git.

use std::collections::BTreeMap;
use std::fs;

use orchestrator_agent::run_step;
use orchestrator_core::api::{ClaimedJob, JobSpec};
use orchestrator_core::spec::CommandSpec;
use tokio_util::sync::CancellationToken;

mod common;

const VALUE: &str = "s3cr3t-v4lue";

fn job(project: &std::path::Path, head: &str, job_id: i64, argv: &[&str]) -> ClaimedJob {
    ClaimedJob {
        job_id: job_id.into(),
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
            project_dir: project.to_string_lossy().into_owned(),
            commands: vec![CommandSpec {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                run: None,
                cwd: None,
                env: BTreeMap::new(),
                timeout: None,
            }],
            base_commit: head.to_owned(),
            secrets: BTreeMap::from([("API_KEY".to_owned(), VALUE.to_owned())]).into(),
            ..JobSpec::default()
        },
    }
}

#[tokio::test]
async fn secrets_reach_the_commands_and_are_masked_in_logs_manifest_and_errors() {
    let (project, head) = common::repo();
    let script = r#"echo "key=$API_KEY"; echo "err $API_KEY" >&2; test "${#API_KEY}" -eq 12"#;
    let j = job(project.path(), &head, 1, &["sh", "-c", script]);
    let out = run_step(&j, &"a".into(), CancellationToken::new()).await;
    assert!(out.success, "{out:?}");
    let bundle = project.path().join(&out.bundle);
    assert_eq!(
        fs::read_to_string(bundle.join("cmd-000.stdout.log")).unwrap(),
        "key=***\n"
    );
    assert_eq!(
        fs::read_to_string(bundle.join("cmd-000.stderr.log")).unwrap(),
        "err ***\n"
    );

    // A failure whose message would quote the value.
    let j = job(project.path(), &head, 2, &[VALUE]);
    let out = run_step(&j, &"a".into(), CancellationToken::new()).await;
    assert!(!out.success, "{out:?}");
    let error = out.error.unwrap();
    assert!(error.contains("program \"***\" not found"), "{error}");
    assert!(!error.contains(VALUE), "{error}");
    let manifest =
        fs::read_to_string(project.path().join(&out.bundle).join("manifest.json")).unwrap();
    assert!(!manifest.contains(VALUE), "{manifest}");
    assert!(manifest.contains("***"), "{manifest}");
}
