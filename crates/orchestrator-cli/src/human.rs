//! The commands a human answers with: `inbox`, `approve`, `reject`,
//! `answer`; the ones a step asks with (`ask`); and the ones that read a
//! run's git history (`artifacts`, `checkout`).

use orchestrator_core::RunId;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use orchestrator_client::ClientError;
use orchestrator_core::api::{
    AnswerRequest, ApproveRequest, InboxItem, InboxKind, QuestionState, RejectRequest, WaitPoll,
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
    let items = client.inbox().await?;
    match a.output {
        Output::Json => view::json(&items)?,
        Output::Text => {
            // What each approval would accept: its checkpoint's files.
            let mut stats = std::collections::HashMap::new();
            for item in items.iter().filter(|i| i.kind == InboxKind::Approval) {
                let Some(commit) = &item.commit else { continue };
                let d = client.run(&item.run_id).await?;
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
    run: RunId,
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
    let run = client.approve(&a.run, &a.stage, &body).await?;
    println!(
        "approved stage {} of run {} (run {})",
        a.stage, run.id, run.state
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct RejectArgs {
    /// Run id (or an unambiguous prefix).
    run: RunId,
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
    let run = client.reject(&a.run, &a.stage, &body).await?;
    println!(
        "rejected stage {} of run {}: the step runs again with your feedback",
        a.stage, run.id
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct AnswerArgs {
    /// Run id (or an unambiguous prefix).
    run: RunId,
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
    let run = client.answer(&a.run, a.question, &body).await?;
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
    #[arg(long, requires = "wait", value_parser = orchestrator_core::spec::DurationSpec::parse)]
    timeout: Option<orchestrator_core::spec::DurationSpec>,
}

/// The step's client of its agent's endpoint, from the variables every
/// step gets (its token; the agent's Unix socket, else its loopback URL),
/// and where that is, for messages; an error naming what is missing
/// outside a step.
fn step_client() -> Result<(Client, String)> {
    let token = std::env::var("ORCH_STEP_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let socket = std::env::var_os("ORCH_AGENT_SOCKET").filter(|s| !s.is_empty());
    let url = std::env::var("ORCH_AGENT_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let (token, builder, at) = match (token, socket, url) {
        (Some(t), Some(socket), _) => {
            let at = std::path::Path::new(&socket).display().to_string();
            // The host only names the agent: the socket is the way there.
            (t, Client::builder("http://agent").unix_socket(socket), at)
        }
        (Some(t), None, Some(url)) => (t, Client::builder(url.as_str()), url),
        (token, socket, url) => {
            let mut missing = Vec::new();
            if token.is_none() {
                missing.push("ORCH_STEP_TOKEN is not set");
            }
            if socket.is_none() && url.is_none() {
                missing.push("neither ORCH_AGENT_SOCKET nor ORCH_AGENT_URL is set");
            }
            return Err(CliError::BadInput(format!(
                "orch ask works only inside a running step, whose agent sets its variables: {}",
                missing.join(", and ")
            ))
            .into());
        }
    };
    match builder.token(token).build() {
        Ok(client) => Ok((client, at)),
        Err(e) => Err(anyhow::anyhow!("cannot reach the agent at {at}: {e}")),
    }
}

/// A request to the agent that failed, as the step's error: a refusal in
/// the agent's words (exit 2 for a 4xx), else why there was no answer.
fn failed(what: &str, at: &str, e: ClientError) -> anyhow::Error {
    if let Some(r) = e.refusal() {
        let msg = r.error.as_ref().map_or("refused", |a| a.error.as_str());
        return if r.status.is_client_error() {
            CliError::BadInput(format!("orch ask: {what}: {msg}")).into()
        } else {
            anyhow::anyhow!("orch ask: {what}: {msg}")
        };
    }
    match e {
        ClientError::Unreachable { source, .. } => {
            anyhow::Error::new(source).context(format!("cannot reach the agent at {at}"))
        }
        e => anyhow::anyhow!("orch ask: the agent's answer does not parse: {e}"),
    }
}

/// `orch ask`, run inside a step: the question goes to the step's agent,
/// which hands it to the daemon when the step ends; with `--wait`, at once,
/// and the answer is printed here. Through the agent's Unix socket when the
/// step has one (a sandboxed step has no way to the agent's TCP port), else
/// over loopback TCP.
pub async fn ask(a: AskArgs) -> Result<ExitCode> {
    let (client, at) = step_client()?;
    let refused = |e| failed("the question was refused", &at, e);
    if !a.wait {
        let asked = client
            .step_ask(a.question, a.choices)
            .await
            .map_err(refused)?;
        eprintln!("orch ask: {}", asked.note);
        return Ok(ExitCode::SUCCESS);
    }
    let asked = client
        .step_ask_wait(a.question, a.choices)
        .await
        .map_err(refused)?;
    wait_for(&client, &at, asked.question_id, a.timeout).await
}

/// Polls the agent until the question is answered (the answer goes to
/// stdout as the human wrote it: data for the step, never run here),
/// closed, or the timeout passes (then it is withdrawn).
async fn wait_for(
    client: &Client,
    at: &str,
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
        let (withdraw, wait_ms) = match left {
            Some(l) if l.is_zero() => (true, 0),
            Some(l) => (false, (l.as_millis() as u64).min(POLL_MS)),
            None => (false, POLL_MS),
        };
        let poll = WaitPoll {
            question_id,
            wait_ms,
            ..WaitPoll::default()
        };
        let now = if withdraw {
            client.step_withdraw(&poll).await
        } else {
            client.step_wait(&poll).await
        }
        .map_err(|e| failed("waiting for the answer", at, e))?;
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
                let why = if withdraw {
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

#[derive(clap::Args)]
pub struct ArtifactsArgs {
    /// Run id (or an unambiguous prefix).
    run: RunId,
    /// Output format: text for people, json for programs.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Output,
}

pub async fn artifacts(a: ArtifactsArgs, client: &Client) -> Result<ExitCode> {
    let d = client.run(&a.run).await?;
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
    run: RunId,
    /// The checkpoint (as `orch artifacts` numbers them); default: the latest.
    #[arg(long)]
    checkpoint: Option<u32>,
    /// Where to make the worktree; default: under the project's .orchestrator/checkouts/.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn checkout(a: CheckoutArgs, client: &Client) -> Result<ExitCode> {
    let d = client.run(&a.run).await?;
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
