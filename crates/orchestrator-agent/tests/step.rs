//! The executor with real processes: `run_step` on a temporary project
//! directory, no daemon.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orchestrator_agent::{run_step, run_step_with, CancelReason, StepContext};
use orchestrator_core::api::{ClaimedJob, JobSpec, Manifest, StepOutcome};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::sched::{GpuGrant, Grant};
use orchestrator_core::spec::{CommandSpec, DurationSpec};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

mod common;

use common::{argv, step};

fn sh(script: &str) -> CommandSpec {
    argv(&["sh", "-c", script])
}

fn run(script: &str) -> CommandSpec {
    CommandSpec {
        run: Some(script.to_owned()),
        ..argv(&[])
    }
}

/// A git repository with one commit, whose run `run-1` has its worktree.
struct Project {
    dir: TempDir,
    head: String,
}

impl Project {
    /// The repository with the run's worktree made, as an agent makes it.
    fn new() -> Self {
        let p = Project::repo();
        orchestrator_host::git::ensure_worktree(&p.root(), &"run-1".into(), &p.head).unwrap();
        p
    }

    /// The repository alone.
    fn repo() -> Self {
        let (dir, head) = common::repo();
        Project { dir, head }
    }

    /// The project directory: bundles go under it.
    fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    /// The run's worktree, where commands run.
    fn path(&self) -> PathBuf {
        self.root().join(".orchestrator/worktrees/run-1")
    }

    fn job(&self, commands: Vec<CommandSpec>) -> ClaimedJob {
        ClaimedJob {
            job_id: 42.into(),
            lease_id: 7.into(),
            lease_token: "secret".into(),
            queued_at_ms: 0,
            lease_expires_at_ms: 0,
            grant: Default::default(),
            spec: JobSpec {
                mounts: Vec::new(),
                cache: None,
                run_id: "run-1".into(),
                stage_id: "build".into(),
                step: 2,
                steps_total: 3,
                attempt: 1,
                step_name: Some("compile".into()),
                project_dir: self.dir.path().to_string_lossy().into_owned(),
                shell: false,
                commands,
                env: BTreeMap::new(),
                timeout_ms: None,
                base_commit: self.head.clone(),
                artifacts: Vec::new(),
                until: None,
                until_shell: false,
                until_output: None,
                iteration: 0,
                step_index: None,
                round: 1,
                round_reason: Default::default(),
                handoff: None,
                sandbox: Default::default(),
                secrets: Default::default(),
                api_key: None,
            },
        }
    }

    fn bundle(&self, job: &ClaimedJob) -> PathBuf {
        self.root().join(job.spec.bundle_dir(job.job_id))
    }

    fn log(&self, job: &ClaimedJob, name: &str) -> String {
        fs::read_to_string(self.bundle(job).join(name)).unwrap()
    }

    fn manifest(&self, job: &ClaimedJob) -> Manifest {
        let text = fs::read_to_string(self.bundle(job).join("manifest.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

fn assert_task_failure(out: &StepOutcome, needle: &str) {
    assert!(!out.success, "{out:?}");
    assert_eq!(out.error_class, Some(ErrorClass::Task), "{out:?}");
    let error = out.error.as_deref().unwrap_or("");
    assert!(error.contains(needle), "error {error:?} lacks {needle:?}");
}

/// Live (non-zombie) processes in group `pgid`, from /proc. `kill -0 -PGID`
/// would also count zombies, which init may be slow to reap in containers.
fn live_in_group(pgid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(2).and_then(|p| p.parse::<i32>().ok()) == Some(pgid) && fields[0] != "Z" {
            out.push(stat[..=close].to_owned());
        }
    }
    out
}

async fn wait_for_file(path: &Path) -> String {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(Instant::now() < until, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read_pgid(path: &Path) -> i32 {
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn two_commands_succeed_with_logs_and_manifest() {
    let p = Project::new();
    let job = p.job(vec![sh("echo one; echo oops >&2"), argv(&["echo", "two"])]);
    let out = step(&job).await;
    assert!(out.success, "{out:?}");
    assert_eq!(out.exit_codes, vec![Some(0), Some(0)]);
    assert_eq!(out.error, None);
    assert_eq!(out.error_class, None);
    assert_eq!(
        out.bundle,
        ".orchestrator/runs/run-1/build/step-002-round-1-job-42"
    );
    assert_eq!(p.log(&job, "cmd-000.stdout.log"), "one\n");
    assert_eq!(p.log(&job, "cmd-000.stderr.log"), "oops\n");
    assert_eq!(p.log(&job, "cmd-001.stdout.log"), "two\n");
    assert_eq!(p.log(&job, "cmd-001.stderr.log"), "");

    let m = p.manifest(&job);
    assert!(m.success);
    assert_eq!(
        (
            m.run_id.as_str(),
            m.stage_id.as_str(),
            m.step,
            m.attempt,
            m.job_id.get()
        ),
        ("run-1", "build", 2, 1, 42)
    );
    assert_eq!(m.step_name.as_deref(), Some("compile"));
    assert_eq!(m.agent_id, "agent-1");
    assert!(m.ended_at_ms >= m.started_at_ms);
    assert_eq!(m.commands.len(), 2);
    assert_eq!(m.commands[1].argv, ["echo", "two"]);
    assert_eq!(m.commands[1].cwd, ".");
    assert_eq!(m.commands[1].exit_code, Some(0));
    assert_eq!(m.commands[1].stdout, "cmd-001.stdout.log");
    assert_eq!(m.commands[1].stderr, "cmd-001.stderr.log");
    assert!(!m.commands[0].timed_out);
    assert!(!p.bundle(&job).join("manifest.json.tmp").exists());
}

#[tokio::test]
async fn a_failing_command_ends_the_step() {
    let p = Project::new();
    let job = p.job(vec![
        sh("echo before; exit 3"),
        argv(&["touch", "should-not-exist"]),
    ]);
    let out = step(&job).await;
    assert_task_failure(
        &out,
        "command 0 (sh -c \"echo before; exit 3\") exited with code 3",
    );
    assert_eq!(out.exit_codes, vec![Some(3)]);
    assert!(!p.path().join("should-not-exist").exists());
    assert!(!p.bundle(&job).join("cmd-001.stdout.log").exists());
    assert_eq!(p.log(&job, "cmd-000.stdout.log"), "before\n");
    let m = p.manifest(&job);
    assert!(!m.success);
    assert_eq!(m.error_class, Some(ErrorClass::Task));
    assert_eq!(m.commands.len(), 1);
    assert_eq!(m.commands[0].exit_code, Some(3));
}

#[tokio::test]
async fn a_command_killed_by_a_signal_fails_the_step() {
    let p = Project::new();
    let job = p.job(vec![sh("kill -USR1 $$")]);
    let out = step(&job).await;
    assert_task_failure(&out, "killed by signal 10 (SIGUSR1)");
    assert_eq!(out.exit_codes, vec![None]);
    assert_eq!(p.manifest(&job).commands[0].signal, Some(10));
}

#[tokio::test]
async fn a_command_killed_from_outside_by_sigkill_is_an_infrastructure_failure() {
    // What the kernel's out-of-memory killer does to a step.
    let p = Project::new();
    let job = p.job(vec![sh("kill -9 $$")]);
    let out = step(&job).await;
    assert!(!out.success);
    assert_eq!(out.error_class, Some(ErrorClass::Infra), "{out:?}");
    let error = out.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("killed by signal 9 (SIGKILL) from outside the step")
            && error.contains("out-of-memory"),
        "{error}"
    );
    assert_eq!(out.exit_codes, vec![None]);
    assert_eq!(p.manifest(&job).commands[0].signal, Some(9));
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let p = Project::new();
    let mut cmd = sh("echo $$ > pgid; sleep 30 & sleep 30");
    cmd.timeout = Some(DurationSpec(300));
    let job = p.job(vec![cmd, argv(&["touch", "should-not-exist"])]);
    let started = Instant::now();
    let out = step(&job).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_task_failure(
        &out,
        "command 0 (sh -c \"echo $$ > pgid; sleep 30 & sleep 30\") timed out after 300ms",
    );
    assert!(!p.path().join("should-not-exist").exists());
    let m = p.manifest(&job);
    assert!(m.commands[0].timed_out);
    assert_eq!(m.commands[0].exit_code, None);
    assert_eq!(m.commands[0].signal, Some(15));
    let pgid = read_pgid(&p.path().join("pgid"));
    assert_eq!(live_in_group(pgid), Vec::<String>::new());
}

#[tokio::test]
async fn the_step_timeout_is_a_budget_for_all_commands() {
    let p = Project::new();
    let mut job = p.job(vec![argv(&["sleep", "0.2"]), argv(&["sleep", "30"])]);
    job.spec.timeout_ms = Some(500);
    let out = step(&job).await;
    assert_task_failure(
        &out,
        "command 1 (sleep 30) timed out: the step's timeout of 500ms ran out",
    );
    assert_eq!(out.exit_codes, vec![Some(0), None]);
    assert!(out.duration_ms < 5_000, "{out:?}");
}

#[tokio::test]
async fn cancelling_kills_the_group_and_reports_the_reason() {
    let p = Project::new();
    let job = p.job(vec![sh("echo $$ > pgid; sleep 30 & sleep 30")]);
    let cancel = CancellationToken::new();
    let reason = CancelReason::new();
    let ctx = StepContext {
        agent_id: "agent-1".into(),
        hostname: Some("box".into()),
        cancel_reason: reason.clone(),
        asks: None,
        has_gpus: false,
        sandbox: Default::default(),
        daemon_url: None,
    };
    let task = {
        let (job, cancel) = (job.clone(), cancel.clone());
        tokio::spawn(async move { run_step_with(&job, &ctx, cancel).await })
    };
    let pgid: i32 = wait_for_file(&p.path().join("pgid"))
        .await
        .trim()
        .parse()
        .unwrap();
    reason.set("agent shutting down");
    cancel.cancel();
    let out = task.await.unwrap();
    assert!(!out.success);
    assert_eq!(out.error_class, Some(ErrorClass::Infra));
    assert!(
        out.error
            .as_deref()
            .unwrap()
            .starts_with("agent shutting down [run "),
        "{:?}",
        out.error
    );
    assert_eq!(live_in_group(pgid), Vec::<String>::new());
    let m = p.manifest(&job);
    assert_eq!(m.hostname.as_deref(), Some("box"));
    assert_eq!(m.error.as_deref(), Some("agent shutting down"));
}

#[tokio::test]
async fn a_cancelled_token_runs_nothing() {
    let p = Project::new();
    let job = p.job(vec![argv(&["touch", "should-not-exist"])]);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let out = run_step(&job, &"agent-1".into(), cancel).await;
    assert_eq!(out.error_class, Some(ErrorClass::Infra));
    assert!(
        out.error
            .as_deref()
            .unwrap()
            .starts_with("step cancelled [run "),
        "{:?}",
        out.error
    );
    assert!(!p.path().join("should-not-exist").exists());
}

#[tokio::test]
async fn a_shell_string_without_shell_true_is_refused_before_anything_runs() {
    let p = Project::new();
    let job = p.job(vec![argv(&["touch", "should-not-exist"]), run("echo hi")]);
    let out = step(&job).await;
    assert_task_failure(&out, "command 1 is refused");
    assert_task_failure(&out, "shell: true");
    assert!(out.exit_codes.is_empty());
    assert!(!p.path().join("should-not-exist").exists());
    // The refusal is recorded in the bundle.
    let m = p.manifest(&job);
    assert!(!m.success);
    assert!(m.commands.is_empty());
}

#[tokio::test]
async fn a_shell_string_runs_under_sh_when_allowed() {
    let p = Project::new();
    let mut job = p.job(vec![run("echo $((1 + 2))")]);
    job.spec.shell = true;
    let out = step(&job).await;
    assert!(out.success, "{out:?}");
    assert_eq!(p.log(&job, "cmd-000.stdout.log"), "3\n");
    assert_eq!(
        p.manifest(&job).commands[0].argv,
        ["/bin/sh", "-c", "echo $((1 + 2))"]
    );
}

#[tokio::test]
async fn a_cwd_leading_out_of_the_project_is_refused() {
    let p = Project::new();
    let mut cmd = argv(&["touch", "should-not-exist"]);
    cmd.cwd = Some("../..".into());
    let job = p.job(vec![argv(&["true"]), cmd]);
    let out = step(&job).await;
    assert_task_failure(&out, "command 1 is refused: cwd \"../..\" leads outside");
    assert!(out.exit_codes.is_empty());
}

#[tokio::test]
async fn a_symlink_out_of_the_project_is_refused_as_cwd() {
    let p = Project::new();
    std::os::unix::fs::symlink("/", p.path().join("root")).unwrap();
    let mut cmd = argv(&["touch", "should-not-exist"]);
    cmd.cwd = Some("root/tmp".into());
    let job = p.job(vec![cmd]);
    let out = step(&job).await;
    assert_task_failure(
        &out,
        "command 0 is refused: cwd \"root/tmp\" resolves to /tmp, outside the run's worktree",
    );
    assert!(out.exit_codes.is_empty());
}

#[tokio::test]
async fn a_missing_cwd_is_refused_and_a_subdirectory_works() {
    let p = Project::new();
    fs::create_dir(p.path().join("sub")).unwrap();
    let mut missing = argv(&["true"]);
    missing.cwd = Some("nope".into());
    let out = step(&p.job(vec![missing])).await;
    assert_task_failure(&out, "cwd \"nope\" does not exist");

    let mut inside = argv(&["pwd"]);
    inside.cwd = Some("sub/".into());
    let job = p.job(vec![inside]);
    let out = step(&job).await;
    assert!(out.success, "{out:?}");
    assert_eq!(
        p.log(&job, "cmd-000.stdout.log").trim(),
        p.path().join("sub").to_str().unwrap()
    );
    assert_eq!(p.manifest(&job).commands[0].cwd, "sub/");
}

#[tokio::test]
async fn environment_reaches_the_command() {
    let p = Project::new();
    let mut cmd = sh("printf '%s|' \"$FROM_STEP\" \"$FROM_CMD\" \"$BOTH\" \"$ORCH_RUN_ID\" \"$ORCH_STAGE_ID\" \"$ORCH_STEP\" \"$ORCH_ATTEMPT\" \"$ORCH_JOB_ID\" \"$ORCH_BUNDLE_DIR\" \"${PATH:+has-path}\"");
    cmd.env.insert("FROM_CMD".into(), "c".into());
    cmd.env.insert("BOTH".into(), "cmd wins".into());
    let mut job = p.job(vec![cmd]);
    job.spec.env.insert("FROM_STEP".into(), "s".into());
    job.spec.env.insert("BOTH".into(), "step".into());
    let out = step(&job).await;
    assert!(out.success, "{out:?}");
    let bundle = p.bundle(&job);
    assert_eq!(
        p.log(&job, "cmd-000.stdout.log"),
        format!(
            "s|c|cmd wins|run-1|build|2|1|42|{}|has-path|",
            bundle.display()
        )
    );
    assert_eq!(
        p.manifest(&job).commands[0].env_keys,
        ["BOTH", "FROM_CMD", "FROM_STEP"]
    );
}

#[tokio::test]
async fn a_job_key_reaches_the_command_as_the_openai_variables_and_never_the_logs() {
    let p = Project::new();
    let cmd = sh("test \"$OPENAI_API_KEY\" = orch-job-42-abc && printf '%s|%s' \"$OPENAI_API_KEY\" \"$OPENAI_BASE_URL\"");
    let mut job = p.job(vec![cmd]);
    job.spec.api_key = Some(orchestrator_core::api::ApiKey("orch-job-42-abc".into()));
    let ctx = StepContext {
        agent_id: "agent-1".into(),
        daemon_url: Some("http://daemon:7437/".into()),
        ..StepContext::default()
    };
    let out = run_step_with(&job, &ctx, CancellationToken::new()).await;
    assert!(out.success, "{out:?}");
    assert_eq!(
        p.log(&job, "cmd-000.stdout.log"),
        "***|http://daemon:7437/v1"
    );
}

#[tokio::test]
async fn a_missing_program_is_the_workflow_s_fault() {
    let p = Project::new();
    let job = p.job(vec![argv(&["no-such-program-xyz", "arg"])]);
    let out = step(&job).await;
    assert_task_failure(&out, "program \"no-such-program-xyz\" not found");
    assert!(out.exit_codes.is_empty());
    assert!(p.manifest(&job).commands.is_empty());
}

#[tokio::test]
async fn the_project_directory_must_exist_and_be_absolute() {
    let p = Project::new();
    let mut job = p.job(vec![argv(&["true"])]);
    job.spec.project_dir = p.root().join("gone").to_string_lossy().into_owned();
    assert_task_failure(&step(&job).await, "is not usable on this machine");
    job.spec.project_dir = "relative/dir".into();
    assert_task_failure(&step(&job).await, "is not an absolute path");
}

#[tokio::test]
async fn a_bundle_directory_that_cannot_be_made_is_an_infra_failure() {
    let p = Project::repo();
    // A file where the bundle tree should go.
    fs::write(p.root().join(".orchestrator"), "").unwrap();
    let out = step(&p.job(vec![argv(&["true"])])).await;
    assert!(!out.success);
    assert_eq!(out.error_class, Some(ErrorClass::Infra), "{out:?}");
    assert!(out.exit_codes.is_empty());
}

/// Writes what the command was told about its grant to `grant`.
const SHOW_GRANT: &str = r#"printf '%s|' "${CUDA_VISIBLE_DEVICES-unset}" "${ORCH_GPUS-unset}" "${ORCH_MEMORY_MB-unset}" "${CUDA_DEVICE_ORDER-unset}" > grant"#;

#[tokio::test]
async fn granted_gpus_and_memory_reach_the_commands() {
    let p = Project::new();
    let mut job = p.job(vec![sh(SHOW_GRANT)]);
    job.grant = Grant {
        memory_mb: 8192,
        gpus: [1, 3]
            .map(|index| GpuGrant {
                index,
                memory_mb: 24_576,
            })
            .to_vec(),
    };
    // A workflow cannot widen its grant.
    job.spec
        .env
        .insert("CUDA_VISIBLE_DEVICES".into(), "0,1,2,3".into());
    let out = step(&job).await;
    assert!(out.success, "{out:?}");
    assert_eq!(
        fs::read_to_string(p.path().join("grant")).unwrap(),
        "1,3|1,3|8192|PCI_BUS_ID|"
    );
}

#[tokio::test]
async fn a_step_granted_no_gpu_sees_none_of_the_agent_s() {
    let p = Project::new();
    let job = p.job(vec![sh(
        r#"printf '%s|' "${CUDA_VISIBLE_DEVICES-unset}" "${ORCH_GPUS-unset}" "${ORCH_MEMORY_MB-unset}" > grant"#,
    )]);
    let ctx = StepContext {
        agent_id: "agent-1".into(),
        has_gpus: true,
        ..StepContext::default()
    };
    let out = run_step_with(&job, &ctx, CancellationToken::new()).await;
    assert!(out.success, "{out:?}");
    assert_eq!(
        fs::read_to_string(p.path().join("grant")).unwrap(),
        "|unset|unset|"
    );
}
