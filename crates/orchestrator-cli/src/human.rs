//! The commands a human answers with: `inbox`, `approve`, `reject`,
//! `answer`; the ones a step asks with (`ask`); and the ones that read a
//! run's git history (`artifacts`, `checkout`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use orchestrator_core::api::{
    AnswerRequest, ApproveRequest, Ask, InboxItem, InboxKind, RejectRequest, RunDetail, RunSummary,
};

use crate::client::{CliError, Client};
use crate::view::{self, Output};

/// Who is acting: `--by`, else the login name.
fn by(given: Option<String>) -> Option<String> {
    given.or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
}

#[derive(clap::Args)]
pub struct InboxArgs {
    /// Output format: text for people, json for programs.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Output,
}

pub async fn inbox(a: InboxArgs, client: &Client) -> Result<ExitCode> {
    let items: Vec<InboxItem> = client.get("/v1/inbox").await?;
    match a.output {
        Output::Json => view::json(&items)?,
        Output::Text => {
            // What each approval would accept: its checkpoint's files.
            let mut stats = std::collections::HashMap::new();
            for item in items.iter().filter(|i| i.kind == InboxKind::Approval) {
                let Some(commit) = &item.commit else { continue };
                let d: RunDetail = client.get(&format!("/v1/runs/{}", item.run_id)).await?;
                if let Some(stat) = orchestrator_agent::git::checkpoint_stat(
                    std::path::Path::new(&d.run.project_dir),
                    commit,
                ) {
                    stats.insert(commit.clone(), stat);
                }
            }
            print_inbox(&items, &stats);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_inbox(items: &[InboxItem], stats: &std::collections::HashMap<String, String>) {
    if items.is_empty() {
        println!("nothing waits for you");
        return;
    }
    let now = orchestrator_store::now_ms();
    for item in items {
        let step = match &item.step_name {
            Some(n) => format!("step {} ({n})", item.step),
            None => format!("step {}", item.step),
        };
        let waited = view::duration(now - item.since_ms);
        match (item.kind, &item.question) {
            (InboxKind::Question, Some(q)) => {
                println!(
                    "question {} · run {} ({}) stage {} {step} · asked {waited} ago",
                    q.id, item.run_id, item.workflow, item.stage_id
                );
                println!("  {}", q.question);
                if !q.choices.is_empty() {
                    println!("  choices: {}", q.choices.join(" | "));
                }
            }
            (InboxKind::Decision, _) => {
                println!(
                    "failed · run {} ({}) stage {} {step} · waiting {waited} for a decision",
                    item.run_id, item.workflow, item.stage_id
                );
                if let Some(e) = &item.error {
                    println!("  {e}");
                }
            }
            _ => {
                println!(
                    "approval · run {} ({}) stage {} {step} · waiting {waited}",
                    item.run_id, item.workflow, item.stage_id
                );
                if let Some(c) = &item.commit {
                    println!("  checkpoint {}", c.get(..12).unwrap_or(c));
                    match stats.get(c) {
                        Some(stat) if !stat.is_empty() => {
                            for line in stat.lines() {
                                println!("  {line}");
                            }
                        }
                        Some(_) => println!("  (no files changed besides the manifest)"),
                        None => {}
                    }
                    println!("  $ orch diff {} {}", item.run_id, item.stage_id);
                }
            }
        }
        for cmd in &item.answer_with {
            println!("  $ {cmd}");
        }
        println!();
    }
}

#[derive(clap::Args)]
pub struct ApproveArgs {
    /// Run id (or an unambiguous prefix).
    run: String,
    /// The stage awaiting approval.
    stage: String,
    /// A comment kept with the approval.
    #[arg(long)]
    comment: Option<String>,
    /// A name noted beside the recorded actor, who is always the token's
    /// holder: `user:admin (said: NAME)` (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

pub async fn approve(a: ApproveArgs, client: &Client) -> Result<ExitCode> {
    let body = ApproveRequest {
        by: by(a.by),
        comment: a.comment,
    };
    let path = format!("/v1/runs/{}/stages/{}/approve", a.run, a.stage);
    let run: RunSummary = client.post(&path, &body).await?;
    println!(
        "approved stage {} of run {} (run {})",
        a.stage, run.id, run.state
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct RejectArgs {
    /// Run id (or an unambiguous prefix).
    run: String,
    /// The stage awaiting approval.
    stage: String,
    /// What the step must change; it runs again with this.
    #[arg(long)]
    feedback: String,
    /// A name noted beside the recorded actor, who is always the token's
    /// holder: `user:admin (said: NAME)` (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

pub async fn reject(a: RejectArgs, client: &Client) -> Result<ExitCode> {
    let body = RejectRequest {
        by: by(a.by),
        feedback: a.feedback,
    };
    let path = format!("/v1/runs/{}/stages/{}/reject", a.run, a.stage);
    let run: RunSummary = client.post(&path, &body).await?;
    println!(
        "rejected stage {} of run {}: the step runs again with your feedback",
        a.stage, run.id
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct AnswerArgs {
    /// Run id (or an unambiguous prefix).
    run: String,
    /// The question's id, as `orch inbox` shows it.
    question: i64,
    /// The answer; one of the offered choices when there are some.
    text: String,
    /// A name noted beside the recorded actor, who is always the token's
    /// holder: `user:admin (said: NAME)` (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

pub async fn answer(a: AnswerArgs, client: &Client) -> Result<ExitCode> {
    let body = AnswerRequest {
        by: by(a.by),
        text: a.text,
    };
    let path = format!("/v1/runs/{}/questions/{}/answer", a.run, a.question);
    let run: RunSummary = client.post(&path, &body).await?;
    println!("answered question {} of run {}", a.question, run.id);
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct AskArgs {
    /// The question for a human.
    question: String,
    /// An answer the human may give (repeat for each); without any, free text.
    #[arg(long = "choice")]
    choices: Vec<String>,
}

/// `orch ask`, run inside a step: the question goes to the step's agent,
/// which hands it to the daemon when the step ends. Through the agent's Unix
/// socket when the step has one (a sandboxed step has no way to the agent's
/// TCP port), else over loopback TCP.
pub async fn ask(a: AskArgs) -> Result<ExitCode> {
    let Ok(token) = std::env::var("ORCH_STEP_TOKEN") else {
        return Err(not_in_a_step());
    };
    let body = serde_json::to_vec(&Ask {
        question: a.question,
        choices: a.choices,
    })?;
    let (status, answer) = match (
        std::env::var_os("ORCH_AGENT_SOCKET"),
        std::env::var("ORCH_AGENT_URL"),
    ) {
        (Some(socket), _) => {
            let socket = std::path::PathBuf::from(socket);
            post_unix(&socket, "/v1/ask", &token, body)
                .await
                .with_context(|| format!("cannot reach the agent at {}", socket.display()))?
        }
        (None, Ok(url)) => {
            let resp = reqwest::Client::new()
                .post(format!("{}/v1/ask", url.trim_end_matches('/')))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .with_context(|| format!("cannot reach the agent at {url}"))?;
            let status = resp.status().as_u16();
            (status, resp.bytes().await.unwrap_or_default().to_vec())
        }
        (None, Err(_)) => return Err(not_in_a_step()),
    };
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    if !(200..300).contains(&status) {
        let msg = answer["error"].as_str().unwrap_or("refused").to_owned();
        return Err(CliError::BadInput(format!("orch ask: {msg}")).into());
    }
    eprintln!(
        "orch ask: {}",
        answer["note"].as_str().unwrap_or("question recorded")
    );
    Ok(ExitCode::SUCCESS)
}

fn not_in_a_step() -> anyhow::Error {
    CliError::BadInput(
        "orch ask works only inside a running step: ORCH_STEP_TOKEN and ORCH_AGENT_SOCKET or ORCH_AGENT_URL are not set".into(),
    )
    .into()
}

/// One JSON POST over HTTP/1.1 on a Unix socket: the status and the body.
async fn post_unix(
    socket: &std::path::Path,
    path: &str,
    token: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>)> {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header("host", "agent")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(hyper::body::Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes.to_vec()))
}

#[derive(clap::Args)]
pub struct ArtifactsArgs {
    /// Run id (or an unambiguous prefix).
    run: String,
    /// Output format: text for people, json for programs.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Output,
}

pub async fn artifacts(a: ArtifactsArgs, client: &Client) -> Result<ExitCode> {
    let d: RunDetail = client.get(&format!("/v1/runs/{}", a.run)).await?;
    match a.output {
        Output::Json => view::json(&d.checkpoints)?,
        Output::Text => {
            if d.checkpoints.is_empty() {
                println!("run {} has no checkpoints yet", d.run.id);
            }
            for c in &d.checkpoints {
                let name = c
                    .step_name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                println!(
                    "checkpoint {} · {} step {}{name} · commit {}",
                    c.seq,
                    c.stage_id,
                    c.step,
                    c.commit.get(..12).unwrap_or(&c.commit)
                );
                for f in &c.artifacts {
                    println!(
                        "  {:<48} {:>10}  sha256:{}",
                        f.path,
                        f.size,
                        f.sha256.get(..16).unwrap_or(&f.sha256)
                    );
                }
            }
            if let Some(branch) = &d.run.branch {
                println!("\nhistory: git -C {} log {branch}", d.run.project_dir);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct CheckoutArgs {
    /// Run id (or an unambiguous prefix).
    run: String,
    /// The checkpoint (as `orch artifacts` numbers them); default: the latest.
    #[arg(long)]
    checkpoint: Option<u32>,
    /// Where to make the worktree; default: under the project's .orchestrator/checkouts/.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn checkout(a: CheckoutArgs, client: &Client) -> Result<ExitCode> {
    let d: RunDetail = client.get(&format!("/v1/runs/{}", a.run)).await?;
    let cp = match a.checkpoint {
        Some(n) => d.checkpoints.iter().find(|c| c.seq == n).ok_or_else(|| {
            CliError::BadInput(format!(
                "run {} has no checkpoint {n}; it has {} (see `orch artifacts {}`)",
                d.run.id,
                d.checkpoints.len(),
                d.run.id
            ))
        })?,
        None => d.checkpoints.last().ok_or_else(|| {
            CliError::BadInput(format!("run {} has no checkpoints yet", d.run.id))
        })?,
    };
    let project = PathBuf::from(&d.run.project_dir);
    let dest = a.dir.unwrap_or_else(|| {
        project
            .join(".orchestrator/checkouts")
            .join(format!("{}-{}", d.run.id, cp.seq))
    });
    let (p, c, t) = (project.clone(), cp.commit.clone(), dest.clone());
    tokio::task::spawn_blocking(move || orchestrator_agent::git::add_detached_worktree(&p, &c, &t))
        .await?
        .map_err(|e| CliError::BadInput(e.to_string()))?;
    println!("{}", dest.display());
    eprintln!(
        "checkpoint {} of run {} ({} step {}, commit {}) checked out",
        cp.seq,
        d.run.id,
        cp.stage_id,
        cp.step,
        cp.commit.get(..12).unwrap_or(&cp.commit)
    );
    Ok(ExitCode::SUCCESS)
}
