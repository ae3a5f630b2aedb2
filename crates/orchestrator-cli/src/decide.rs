//! The commands that decide about a failed stage: `retry`, `skip`, `abort`;
//! and `retry --feedback`, which sends a run's work back to a stage.

use orchestrator_core::RunId;
use std::process::ExitCode;

use anyhow::Result;
use orchestrator_client::Decision;
use orchestrator_core::api::DecideRequest;

use crate::client::Client;

#[derive(clap::Args)]
pub struct StageDecision {
    /// Run id (or an unambiguous prefix).
    run: RunId,
    /// The failed stage awaiting a decision.
    stage: String,
    /// Why, kept with the decision.
    #[arg(long)]
    comment: Option<String>,
    /// A name noted beside the recorded actor, who is always the token's
    /// holder: `user:admin (said: NAME)` (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

#[derive(clap::Args)]
pub struct RetryArgs {
    #[command(flatten)]
    decision: StageDecision,
    /// Send the work back to STAGE with this feedback: the stage (one that
    /// succeeded, or awaits a decision) runs its last step again with the
    /// feedback (`ORCH_FEEDBACK`, `ORCH_FEEDBACK_FILE`), and every stage
    /// after it that ran or waits runs again after it.
    #[arg(long)]
    feedback: Option<String>,
}

#[derive(clap::Args)]
pub struct AbortArgs {
    /// Run id (or an unambiguous prefix).
    run: RunId,
    /// Only this failed stage ends failed (its dependents are blocked) and
    /// the rest of the run goes on; without it, the whole run ends failed.
    stage: Option<String>,
    /// Why, kept with the decision.
    #[arg(long)]
    comment: Option<String>,
    /// A name noted beside the recorded actor, who is always the token's
    /// holder: `user:admin (said: NAME)` (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

fn body(comment: Option<String>, by: Option<String>) -> DecideRequest {
    DecideRequest {
        by: by.or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty())),
        comment,
        feedback: None,
    }
}

/// `orch retry RUN STAGE [--feedback TEXT]`.
pub async fn retry(a: RetryArgs, client: &Client) -> Result<ExitCode> {
    let RetryArgs {
        decision: a,
        feedback,
    } = a;
    let sent_back = feedback.is_some();
    let req = DecideRequest {
        feedback,
        ..body(a.comment, a.by)
    };
    let run = client
        .decide(&a.run, &a.stage, Decision::Retry, &req)
        .await?;
    if sent_back {
        println!(
            "sent the work of run {} back to stage {} with your feedback; the stages after it run again after it (run {})",
            run.id, a.stage, run.state
        );
    } else {
        println!(
            "retrying stage {} of run {} from where it failed (run {})",
            a.stage, run.id, run.state
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `orch skip RUN STAGE`.
pub async fn skip(a: StageDecision, client: &Client) -> Result<ExitCode> {
    let run = client
        .decide(&a.run, &a.stage, Decision::Skip, &body(a.comment, a.by))
        .await?;
    println!(
        "skipped stage {} of run {}; its dependents go on (run {})",
        a.stage, run.id, run.state
    );
    Ok(ExitCode::SUCCESS)
}

/// `orch abort RUN [STAGE]`.
pub async fn abort(a: AbortArgs, client: &Client) -> Result<ExitCode> {
    let req = body(a.comment, a.by);
    let run = match &a.stage {
        Some(stage) => client.decide(&a.run, stage, Decision::Abort, &req).await?,
        None => client.abort_run(&a.run, &req).await?,
    };
    match &a.stage {
        Some(stage) => println!(
            "aborted stage {stage} of run {} (run {})",
            run.id, run.state
        ),
        None => println!("aborted run {} ({})", run.id, run.state),
    }
    Ok(ExitCode::SUCCESS)
}
