//! `orch`: the one binary of the orchestrator. It starts the daemon and
//! agents (`up`, `daemon`, `agent`), lists the workflows the daemon watches
//! (`workflows`), submits and watches runs (`run`, `ps`, `show`, `logs`),
//! checks workflows without running them (`validate`, `plan`, `schema`),
//! and measures the whole path (`bench`).

mod agent_models;
mod agent_opts;
mod agent_token;
mod bench;
mod cachecmd;
mod client;
mod config;
mod daemon_opts;
mod decide;
mod demo;
mod diff;
mod explain;
mod human;
mod land;
mod logs;
mod migrate;
mod params;
mod paths;
mod runcmd;
mod secrets;
mod up;
mod view;
mod workflows;

use orchestrator_core::RunId;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orchestrator_client::RunVerb;

use crate::client::{CliError, Client};
use crate::view::Output;

#[derive(Parser)]
#[command(
    name = "orch",
    version,
    about = "A local-first orchestrator for agent and developer workflows"
)]
struct Cli {
    /// Data directory (store, tokens, daemon address). Default: ~/.local/share/orch.
    #[arg(long, global = true, env = "ORCH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Daemon URL; default: the address `orch up` wrote in the data directory.
    #[arg(long, global = true, env = "ORCH_SERVER")]
    server: Option<String>,
    /// Admin token; default: the one in the data directory.
    #[arg(long, global = true, env = "ORCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "ORCH_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Start the daemon and one local agent on the embedded store.
    Up(up::UpArgs),
    /// Start the daemon alone.
    Daemon(daemon_opts::DaemonArgs),
    /// Start an agent that works for a daemon.
    Agent(up::AgentArgs),
    /// Run the demo workflow on a fresh embedded store, then exit.
    Demo(demo::DemoArgs),
    /// Submit a workflow run.
    Run(runcmd::RunArgs),
    /// List the workflows of the projects the daemon watches, with the
    /// definition each runs and why its last reload failed, if it did.
    Workflows(workflows::WorkflowsArgs),
    /// List runs.
    Ps {
        /// Output format: text for people, json for programs.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
        /// Most runs to list.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a run: stages, states, durations, critical path.
    Show {
        /// Run id (or an unambiguous prefix).
        run: RunId,
        /// Output format: text for people, json for programs.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Cancel a run: its running commands are killed, nothing more starts.
    Cancel(RunCommand),
    /// Pause a run: each stage stops at its next checkpoint (running steps finish).
    Pause(RunCommand),
    /// Resume a paused run from where its stages stopped.
    Resume(RunCommand),
    /// Print the output of a run's commands.
    Logs(logs::LogsArgs),
    /// List everything waiting for a human: approvals, questions and failed
    /// stages to decide about, oldest first.
    Inbox(human::InboxArgs),
    /// Approve a stage awaiting approval; it goes on.
    Approve(human::ApproveArgs),
    /// Reject a stage awaiting approval; its step runs again with your feedback.
    Reject(human::RejectArgs),
    /// Answer a question; the stage goes on with the answer.
    Answer(human::AnswerArgs),
    /// Run a failed stage again from where it failed, as a new attempt; with
    /// --feedback, send the work back to a stage with your feedback.
    Retry(decide::RetryArgs),
    /// Go on without a failed stage: its dependents run as if it succeeded.
    Skip(decide::StageDecision),
    /// End a run failed (what awaits a decision fails, the rest is
    /// cancelled); with a stage, only that failed stage.
    Abort(decide::AbortArgs),
    /// Inside a running step: ask a human a question (the stage waits for the
    /// answer; with --wait, the step waits and prints it).
    Ask(human::AskArgs),
    /// List a run's checkpoints and the artifacts each committed.
    Artifacts(human::ArtifactsArgs),
    /// Make a git worktree of a run at one of its checkpoints.
    Checkout(human::CheckoutArgs),
    /// Show the change a run (or one stage, or one checkpoint) made, without
    /// the orchestrator's own records.
    Diff(diff::DiffArgs),
    /// Land a run's work on one of the project's branches: squashed (the
    /// default), merged or rebased, with a message that summarises the run.
    Land(land::LandArgs),
    /// Say why a run's stages run where they do, or why they wait.
    Explain(explain::ExplainArgs),
    /// List agents with their resources and what they have free.
    Agents {
        /// Output format: text for people, json for programs.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show a workflow's layers and critical path without running it.
    Plan {
        file: PathBuf,
        /// Output format: text for people, json for programs.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Check a workflow file and report every problem.
    Validate {
        file: PathBuf,
        /// Output format: text for people, json for programs.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print a link that opens the web dashboard logged in (it works once,
    /// for 10 minutes); the dashboard itself is at /ui/ on the daemon.
    Dashboard {
        /// Instead: end every dashboard session and every login link not
        /// yet used (browsers log in again with a new link).
        #[arg(long)]
        revoke: bool,
        /// Output format: text for people, json for programs.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Copy a single-machine store into an empty PostgreSQL one, whole
    /// (runs, stages, jobs, leases, agents, the transitions log), in one
    /// transaction. Stop the daemon first: a store in use is refused.
    Migrate {
        /// The SQLite store: `sqlite:PATH` or a path (a daemon's DATA_DIR/orch.db).
        #[arg(long)]
        from: String,
        /// The PostgreSQL store: `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`.
        #[arg(long)]
        to: String,
        /// Output format: text for people, json for programs.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Agents' own credentials: create, list and revoke them.
    AgentToken {
        #[command(subcommand)]
        cmd: agent_token::AgentTokenCmd,
    },
    /// The caches a project's stages keep on this machine: list, remove.
    Cache {
        #[command(subcommand)]
        cmd: cachecmd::CacheCmd,
    },
    /// Webhook and OpenClaw delivery.
    Webhooks {
        #[command(subcommand)]
        cmd: WebhooksCmd,
    },
    /// Configuration files of `orch daemon`, `orch agent` and `orch up`.
    Config {
        #[command(subcommand)]
        cmd: config::ConfigCmd,
    },
    /// Print the JSON Schema of workflow files.
    Schema,
    /// Measure the full path (daemon, agent, HTTP, durable store) against spawning directly.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum WebhooksCmd {
    /// Each target's deliveries, failures, backlog and last error.
    Status {
        /// Output format: text for people, json for programs.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// A command to one run: `cancel`, `pause`, `resume`.
#[derive(clap::Args)]
struct RunCommand {
    /// Run id (or an unambiguous prefix).
    run: RunId,
    /// Output format: text for people, json for programs.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Output,
}

impl RunCommand {
    async fn send(self, client: &Client, verb: RunVerb) -> anyhow::Result<ExitCode> {
        // The API takes full ids; the CLI lets a prefix stand for one.
        let d = client.run(&self.run).await?;
        let summary = client.run_command(&d.run.id, verb).await?;
        match self.output {
            Output::Json => view::json(&summary)?,
            Output::Text => println!("run {} {}", summary.id, summary.state),
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only on a terminal: logs sent to a file or a journal stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// Reads a definition file an operator named: a regular file (a link to
/// one is fine) of at most a MiB, refused before reading otherwise.
pub(crate) fn read_definition(file: &std::path::Path) -> Result<String, CliError> {
    use orchestrator_host::confined::{read_definition, Links, MAX_DEFINITION_BYTES};
    match read_definition(file, MAX_DEFINITION_BYTES, Links::Follow) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(CliError::BadInput(format!(
            "{}: cannot read: no such file",
            file.display()
        ))),
        Err(e) => Err(CliError::BadInput(e.to_string())),
    }
}

/// Reads and validates a workflow file locally.
fn load_workflow(file: &std::path::Path) -> anyhow::Result<(String, orchestrator_core::Workflow)> {
    let text = read_definition(file)?;
    let name = file.display().to_string();
    let wf = orchestrator_core::parse_workflow(&text, Some(&name))
        .map_err(|e| CliError::BadInput(e.to_string()))?;
    Ok((text, wf))
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = paths::data_dir(cli.data_dir.as_deref());
    let client = || client::resolve(cli.server.clone(), cli.token.clone(), &data_dir);
    match cli.cmd {
        Cmd::Up(a) => up::up(a, &data_dir).await,
        Cmd::Daemon(a) => up::daemon(a, &data_dir).await,
        Cmd::Agent(a) => up::agent(a, cli.server.clone(), &data_dir).await,
        Cmd::Demo(a) => demo::demo(a).await,
        Cmd::Run(a) => runcmd::run(a, &client()?).await,
        Cmd::Workflows(a) => workflows::list(a, &client()?).await,
        Cmd::Ps { output, limit } => {
            let list = client()?.runs(limit).await?;
            match output {
                Output::Json => view::json(&list)?,
                Output::Text => view::runs(&list),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Show { run, output } => {
            let d = client()?.run(&run).await?;
            match output {
                Output::Json => view::json(&d)?,
                Output::Text => view::run(&d),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cancel(c) => c.send(&client()?, RunVerb::Cancel).await,
        Cmd::Pause(c) => c.send(&client()?, RunVerb::Pause).await,
        Cmd::Resume(c) => c.send(&client()?, RunVerb::Resume).await,
        Cmd::Logs(a) => logs::logs(a, &client()?).await,
        Cmd::Inbox(a) => human::inbox(a, &client()?).await,
        Cmd::AgentToken { cmd } => agent_token::run(cmd, &client()?).await,
        Cmd::Approve(a) => human::approve(a, &client()?).await,
        Cmd::Reject(a) => human::reject(a, &client()?).await,
        Cmd::Retry(a) => decide::retry(a, &client()?).await,
        Cmd::Skip(a) => decide::skip(a, &client()?).await,
        Cmd::Abort(a) => decide::abort(a, &client()?).await,
        Cmd::Answer(a) => human::answer(a, &client()?).await,
        Cmd::Ask(a) => human::ask(a).await,
        Cmd::Artifacts(a) => human::artifacts(a, &client()?).await,
        Cmd::Checkout(a) => human::checkout(a, &client()?).await,
        Cmd::Diff(a) => diff::diff(a, &client()?).await,
        Cmd::Land(a) => land::land(a, &client()?).await,
        Cmd::Explain(a) => explain::explain(a, &client()?).await,
        Cmd::Agents { output } => {
            let list = client()?.agents().await?;
            match output {
                Output::Json => view::json(&list)?,
                Output::Text => view::agents(&list),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Plan { file, output } => {
            let (_, wf) = load_workflow(&file)?;
            let plan = orchestrator_core::plan(&wf)
                .map_err(|c| CliError::BadInput(format!("cycle: {}", c.join(" -> "))))?;
            match output {
                Output::Json => view::json(&plan)?,
                Output::Text => view::plan(&plan),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Validate { file, output } => {
            let text = read_definition(&file)?;
            let name = file.display().to_string();
            match orchestrator_core::parse_workflow(&text, Some(&name)) {
                Ok(wf) => {
                    match output {
                        Output::Json => {
                            view::json(&serde_json::json!({"valid": true, "errors": []}))?
                        }
                        Output::Text => println!(
                            "{name}: valid workflow {} with {} stages",
                            wf.name,
                            wf.stages.len()
                        ),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errs) => {
                    match output {
                        Output::Json => {
                            view::json(&serde_json::json!({"valid": false, "errors": errs.0}))?
                        }
                        Output::Text => eprintln!("{errs}"),
                    }
                    Ok(ExitCode::from(2))
                }
            }
        }
        Cmd::Dashboard {
            revoke: true,
            output,
        } => {
            let r: orchestrator_daemon::dashboard::Revoked = client()?
                .post_json("/v1/dashboard/revoke", &serde_json::json!({}))
                .await?;
            match output {
                Output::Json => view::json(&r)?,
                Output::Text => println!(
                    "every dashboard session and unused login link is revoked; `orch dashboard` makes a new link"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dashboard { output, .. } => {
            let link: orchestrator_daemon::dashboard::Link = client()?
                .post_json("/v1/dashboard/links", &serde_json::json!({}))
                .await?;
            match output {
                Output::Json => view::json(&link)?,
                Output::Text => println!("{}", link.url),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Migrate { from, to, output } => migrate::run(&from, &to, output).await,
        Cmd::Webhooks {
            cmd: WebhooksCmd::Status { output },
        } => {
            let list: Vec<orchestrator_daemon::hooks::HookStatus> =
                client()?.get_json("/v1/webhooks").await?;
            match output {
                Output::Json => view::json(&list)?,
                Output::Text => view::webhooks(&list),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config { cmd } => config::run(cmd),
        Cmd::Cache { cmd } => cachecmd::run(cmd),
        Cmd::Schema => {
            view::json(&orchestrator_core::spec::workflow_schema())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(a) => bench::bench(a).await,
    }
}

/// The command line with the settings of `--config FILE` (of `up`,
/// `daemon` and `agent`) under its flags and environment variables.
///
/// The file's settings whose variables are unset are given to clap as those
/// variables for a second parse, and removed again after it, so that no
/// process this one starts inherits them. This runs before the async
/// runtime starts, while the process has one thread: setting and removing
/// variables races with no other reader.
fn parse_with_config() -> Result<Cli, CliError> {
    let cli = Cli::parse();
    let (kind, file) = match &cli.cmd {
        Cmd::Up(a) => (config::Kind::Up, &a.daemon.config),
        Cmd::Daemon(a) => (config::Kind::Daemon, &a.config),
        Cmd::Agent(a) => (config::Kind::Agent, &a.config),
        _ => return Ok(cli),
    };
    let Some(file) = file else {
        return Ok(cli);
    };
    let vars = config::variables(&config::load(file, kind)?);
    if vars.is_empty() {
        return Ok(cli);
    }
    for (name, value) in &vars {
        std::env::set_var(name, value);
    }
    let cli = Cli::parse();
    for (name, _) in &vars {
        std::env::remove_var(name);
    }
    Ok(cli)
}

fn main() -> ExitCode {
    let cli = match parse_with_config() {
        Ok(cli) => cli,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("error: {line}");
            }
            return ExitCode::from(2);
        }
    };
    init_tracing(cli.log_json);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            let (message, code) = client::report(&e);
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}
