//! The commands a human answers with: `inbox`, `approve`, `reject`,
//! `answer`; the ones a step asks with (`ask`); and the ones that read a
//! run's git history (`artifacts`, `checkout`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use orchestrator_core::api::{
    AnswerRequest, ApproveRequest, InboxItem, InboxKind, QuestionState, RejectRequest, RunDetail,
    RunSummary, StepAskRequest, WaitPoll, WaitStatus,
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
                if let Some(stat) = orchestrator_host::git::checkpoint_stat(
                    std::path::Path::new(&d.run.project_dir),
                    commit,
                    d.run.base_commit.as_deref(),
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
    let now = orchestrator_host::now_ms();
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
                if q.waiting {
                    println!("  (its step waits for the answer while it runs, holding its slot)");
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
    /// Wait for the answer inside this step and print it on stdout, instead
    /// of handing the question over when the step ends (the step then runs
    /// again with the answer). The step keeps running, and its slot, meanwhile.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long (250ms, 30s, 10m, 2h): the
    /// question is withdrawn and `orch ask` exits 1. Default: wait until
    /// answered, or until the step's own timeout ends it.
    #[arg(long, requires = "wait", value_parser = parse_timeout)]
    timeout: Option<orchestrator_core::spec::DurationSpec>,
}

fn parse_timeout(text: &str) -> Result<orchestrator_core::spec::DurationSpec, String> {
    orchestrator_core::spec::DurationSpec::parse(text)
}

/// How `orch ask` reaches its step's agent.
enum Endpoint {
    Socket(std::path::PathBuf),
    Url(String),
}

impl Endpoint {
    /// The step's token and its agent's endpoint, from the variables every
    /// step gets; an error naming what is missing outside a step.
    fn from_env() -> Result<(String, Endpoint)> {
        let token = std::env::var("ORCH_STEP_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let endpoint = match (
            std::env::var_os("ORCH_AGENT_SOCKET").filter(|s| !s.is_empty()),
            std::env::var("ORCH_AGENT_URL")
                .ok()
                .filter(|u| !u.is_empty()),
        ) {
            (Some(socket), _) => Some(Endpoint::Socket(socket.into())),
            (None, Some(url)) => Some(Endpoint::Url(url)),
            (None, None) => None,
        };
        match (token, endpoint) {
            (Some(t), Some(e)) => Ok((t, e)),
            (token, endpoint) => {
                let mut missing = Vec::new();
                if token.is_none() {
                    missing.push("ORCH_STEP_TOKEN is not set");
                }
                if endpoint.is_none() {
                    missing.push("neither ORCH_AGENT_SOCKET nor ORCH_AGENT_URL is set");
                }
                Err(CliError::BadInput(format!(
                    "orch ask works only inside a running step, whose agent sets its variables: {}",
                    missing.join(", and ")
                ))
                .into())
            }
        }
    }

    /// POSTs `body` with the step's token: the status and the JSON answer.
    async fn post(
        &self,
        path: &str,
        token: &str,
        body: Vec<u8>,
    ) -> Result<(u16, serde_json::Value)> {
        let (status, bytes) = match self {
            Endpoint::Socket(socket) => post_unix(socket, path, token, body)
                .await
                .with_context(|| format!("cannot reach the agent at {}", socket.display()))?,
            Endpoint::Url(url) => {
                let resp = reqwest::Client::new()
                    .post(format!("{}{path}", url.trim_end_matches('/')))
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .with_context(|| format!("cannot reach the agent at {url}"))?;
                let status = resp.status().as_u16();
                (status, resp.bytes().await.unwrap_or_default().to_vec())
            }
        };
        Ok((status, serde_json::from_slice(&bytes).unwrap_or_default()))
    }
}

/// An answer from the agent that is not a success, as the step's error.
fn refused(what: &str, status: u16, answer: &serde_json::Value) -> anyhow::Error {
    let msg = answer["error"].as_str().unwrap_or("refused");
    if (400..500).contains(&status) {
        CliError::BadInput(format!("orch ask: {what}: {msg}")).into()
    } else {
        anyhow::anyhow!("orch ask: {what}: {msg}")
    }
}

/// `orch ask`, run inside a step: the question goes to the step's agent,
/// which hands it to the daemon when the step ends; with `--wait`, at once,
/// and the answer is printed here. Through the agent's Unix socket when the
/// step has one (a sandboxed step has no way to the agent's TCP port), else
/// over loopback TCP.
pub async fn ask(a: AskArgs) -> Result<ExitCode> {
    let (token, endpoint) = Endpoint::from_env()?;
    let body = serde_json::to_vec(&StepAskRequest {
        question: a.question,
        choices: a.choices,
        wait: a.wait,
    })?;
    let (status, answer) = endpoint.post("/v1/ask", &token, body).await?;
    if !(200..300).contains(&status) {
        return Err(refused("the question was refused", status, &answer));
    }
    if !a.wait {
        eprintln!(
            "orch ask: {}",
            answer["note"].as_str().unwrap_or("question recorded")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let asked: WaitStatus =
        serde_json::from_value(answer).context("orch ask: the agent's answer does not parse")?;
    wait_for(&endpoint, &token, asked.question_id, a.timeout).await
}

/// Polls the agent until the question is answered (the answer goes to
/// stdout as the human wrote it: data for the step, never run here),
/// closed, or the timeout passes (then it is withdrawn).
async fn wait_for(
    endpoint: &Endpoint,
    token: &str,
    question_id: i64,
    timeout: Option<orchestrator_core::spec::DurationSpec>,
) -> Result<ExitCode> {
    /// The longest one poll asks the agent to wait.
    const POLL_MS: u64 = 20_000;
    eprintln!(
        "orch ask: question {question_id} asked; waiting for the answer (orch inbox shows it)"
    );
    let deadline = timeout
        .map(|t| std::time::Instant::now() + std::time::Duration::from_millis(t.as_millis()));
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let (path, wait_ms) = match left {
            Some(l) if l.is_zero() => ("/v1/ask/withdraw", 0),
            Some(l) => ("/v1/ask/wait", (l.as_millis() as u64).min(POLL_MS)),
            None => ("/v1/ask/wait", POLL_MS),
        };
        let body = serde_json::to_vec(&WaitPoll {
            question_id,
            wait_ms,
            ..WaitPoll::default()
        })?;
        let (status, answer) = endpoint.post(path, token, body).await?;
        if !(200..300).contains(&status) {
            return Err(refused("waiting for the answer", status, &answer));
        }
        let now: WaitStatus = serde_json::from_value(answer)
            .context("orch ask: the agent's answer does not parse")?;
        match now.state {
            QuestionState::Answered => {
                use std::io::Write;
                let text = now.answer.unwrap_or_default();
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.write_all(b"\n")?;
                out.flush()?;
                return Ok(ExitCode::SUCCESS);
            }
            QuestionState::Closed => {
                let why = if path == "/v1/ask/withdraw" {
                    format!(
                        "no answer within {}; question {question_id} was withdrawn",
                        timeout.map(|t| t.to_string()).unwrap_or_default()
                    )
                } else {
                    format!("question {question_id} was closed without an answer (its stage or run ended)")
                };
                eprintln!("orch ask: {why}");
                return Ok(ExitCode::from(1));
            }
            QuestionState::Open => {}
        }
    }
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
    tokio::task::spawn_blocking(move || orchestrator_host::git::add_detached_worktree(&p, &c, &t))
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
