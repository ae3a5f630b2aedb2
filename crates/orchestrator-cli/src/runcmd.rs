//! `orch run FILE` or `orch run NAME` (a workflow of the project's catalog,
//! which the daemon watches): submit a run, and with `--wait` follow it live (stages
//! done of total, what runs now, elapsed) until it ends; the exit code tells
//! the outcome.

use orchestrator_core::RunId;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orchestrator_core::api::{SubmitRun, Submitted};
use orchestrator_core::spec::OnFailure;
use orchestrator_core::{Entity, RunState, StageState, State};

use crate::client::Client;
use crate::view::{self, Output};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The workflow file (YAML or JSON), or the name of a workflow in the
    /// project's catalog (`orch workflows`): the daemon then runs the
    /// definition it loaded last from `.orchestrator/workflows/`.
    pub file: PathBuf,
    /// The project directory the run works in. Default: the current directory.
    #[arg(long)]
    pub project: Option<PathBuf>,
    /// The git ref the run's branch starts from (default: the project's HEAD).
    #[arg(long = "ref")]
    pub git_ref: Option<String>,
    /// Suggested priority; higher runs first. Default: the workflow's
    /// `priority:`, else the project's default. The project's policy and the
    /// daemon's rules clamp it; `orch explain` says how.
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Follow the run until it ends; exit 0 if it succeeded, 1 if not.
    #[arg(long)]
    pub wait: bool,
    /// What a failed stage does, over what the workflow says: `ask` waits
    /// for `orch retry`, `orch skip` or `orch abort`; `fail` ends it failed
    /// at once (for unattended runs such as CI).
    #[arg(long, value_enum)]
    pub on_failure: Option<FailureMode>,
    #[command(flatten)]
    pub inputs: crate::params::InputArgs,
    /// Output format: text for people, json for programs.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
}

/// `--on-failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailureMode {
    Ask,
    Fail,
}

impl From<FailureMode> for OnFailure {
    fn from(m: FailureMode) -> Self {
        match m {
            FailureMode::Ask => OnFailure::Ask,
            FailureMode::Fail => OnFailure::Fail,
        }
    }
}

/// Whether `orch run ARG` names a catalog workflow rather than a file: no
/// such file, no directory part and no workflow extension.
pub fn is_name(arg: &std::path::Path) -> bool {
    let s = arg.to_string_lossy();
    !arg.exists()
        && !s.contains('/')
        && !s.is_empty()
        && !matches!(
            arg.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

fn project_dir(project: Option<PathBuf>) -> Result<PathBuf> {
    let project = match project {
        Some(p) => p,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    Ok(std::fs::canonicalize(&project).map_err(|e| {
        crate::CliError::BadInput(format!("project directory {}: {e}", project.display()))
    })?)
}

pub async fn submit(
    client: &Client,
    file: &std::path::Path,
    project: Option<PathBuf>,
    priority: Option<i32>,
    git_ref: Option<String>,
    on_failure: Option<OnFailure>,
    inputs: &crate::params::InputArgs,
) -> Result<Submitted> {
    let (text, _) = crate::load_workflow(file)?;
    let project = project_dir(project)?;
    let file_values = inputs.file_values()?;
    Ok(client
        .submit(&SubmitRun {
            workflow: text,
            workflow_name: None,
            file: Some(file.display().to_string()),
            project_dir: project.display().to_string(),
            priority,
            git_ref,
            on_failure,
            inputs: file_values,
            params: inputs.params.clone(),
        })
        .await?)
}

/// Submits the catalog's workflow `name` of the project.
async fn submit_name(client: &Client, name: &str, a: &RunArgs) -> Result<Submitted> {
    let project = project_dir(a.project.clone())?;
    let file_values = a.inputs.file_values()?;
    Ok(client
        .submit(&SubmitRun {
            workflow: String::new(),
            workflow_name: Some(name.to_owned()),
            file: None,
            project_dir: project.display().to_string(),
            priority: a.priority,
            git_ref: a.git_ref.clone(),
            on_failure: a.on_failure.map(OnFailure::from),
            inputs: file_values,
            params: a.inputs.params.clone(),
        })
        .await?)
}

pub async fn run(a: RunArgs, client: &Client) -> Result<ExitCode> {
    let submitted = if is_name(&a.file) {
        submit_name(client, &a.file.to_string_lossy(), &a).await?
    } else {
        submit(
            client,
            &a.file,
            a.project.clone(),
            a.priority,
            a.git_ref.clone(),
            a.on_failure.map(OnFailure::from),
            &a.inputs,
        )
        .await?
    };
    if a.output == Output::Text {
        // Warnings go to stderr so `RUN=$(orch run ...)` still gets the id alone.
        for w in &submitted.warnings {
            eprintln!("warning: {w}");
        }
    }
    if !a.wait {
        match a.output {
            Output::Json => view::json(&submitted)?,
            Output::Text => println!("{}", submitted.run_id),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let show_progress = a.output == Output::Text;
    if show_progress {
        eprintln!("run {} submitted", submitted.run_id);
    }
    let state = wait(client, &submitted.run_id, show_progress).await?;
    let detail = client.run(&submitted.run_id).await?;
    match a.output {
        Output::Json => view::json(&detail)?,
        Output::Text => view::run(&detail),
    }
    Ok(exit_code(state))
}

pub fn exit_code(state: RunState) -> ExitCode {
    if state == RunState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Follows a run's events until it ends; returns its final state.
pub async fn wait(client: &Client, run_id: &RunId, progress: bool) -> Result<RunState> {
    let detail = client.run(run_id).await?;
    if detail.run.state.is_terminal() {
        return Ok(detail.run.state);
    }
    let total = detail.run.stages_total as u64;
    let bar = if progress {
        let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} stages  {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut ended = 0u64;
    let mut outcome = RunState::Running;
    // Replay the run's log from the start so nothing is counted twice or missed.
    crate::client::follow_run(
        client,
        run_id,
        if progress { "run,stage" } else { "run" },
        0,
        |t| {
            match t.entity {
                Entity::Stage => {
                    let stage = t.stage().map_or("", |k| k.stage_id).to_owned();
                    let to = match t.to {
                        State::Stage(s) => Some(s),
                        _ => None,
                    };
                    if to == Some(StageState::Running) {
                        running.insert(stage.clone());
                    } else {
                        running.remove(&stage);
                    }
                    if to.is_some_and(StageState::is_terminal) {
                        ended += 1;
                    }
                    // The run cannot end until someone decides: say so, and how.
                    if to == Some(StageState::AwaitingDecision) {
                        let cmds = orchestrator_core::api::answer_commands(
                            orchestrator_core::api::InboxKind::Decision,
                            run_id,
                            &stage,
                            None,
                        );
                        let line = format!(
                            "stage {stage} failed: {}\n  it waits for your decision:\n    {}",
                            t.reason,
                            cmds.join("\n    ")
                        );
                        // A bar drawn on no terminal prints nothing, lines included.
                        if bar.is_hidden() {
                            eprintln!("{line}");
                        } else {
                            bar.println(line);
                        }
                    }
                    bar.set_position(ended.min(total));
                    let now: Vec<&str> = running.iter().take(4).map(String::as_str).collect();
                    let more = running.len().saturating_sub(now.len());
                    let suffix = if more > 0 {
                        format!(" +{more}")
                    } else {
                        String::new()
                    };
                    bar.set_message(if now.is_empty() {
                        String::new()
                    } else {
                        format!("running: {}{suffix}", now.join(", "))
                    });
                }
                Entity::Run => {
                    if let State::Run(
                        s @ (RunState::Succeeded | RunState::Failed | RunState::Cancelled),
                    ) = t.to
                    {
                        outcome = s;
                        return false;
                    }
                }
                _ => {}
            }
            true
        },
    )
    .await?;
    bar.finish_and_clear();
    if progress {
        eprintln!(
            "run {run_id} {outcome} after {}",
            view::duration(started.elapsed().as_millis() as i64)
        );
    }
    Ok(outcome)
}
