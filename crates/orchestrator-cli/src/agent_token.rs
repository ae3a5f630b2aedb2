//! `orch agent-token create|list|revoke`: the admin issues each agent a
//! credential of its own, bound to the agent's name.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use orchestrator_core::api::check_agent_name;

use crate::client::{CliError, Client};
use crate::view::{self, Output};

#[derive(Subcommand)]
pub enum AgentTokenCmd {
    /// Issue agent NAME's token and print it, this once (the daemon keeps
    /// only its hash). From then on only this token may register as NAME.
    Create {
        /// The agent's name, as `orch agent --name` gives it.
        name: String,
    },
    /// List the names that have a token, and which are revoked.
    List {
        /// Output format: text for people, json for programs.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Revoke agent NAME's token: refused at once; the agent's leases then
    /// expire as its heartbeats stop. The name stays bound to the revoked
    /// token until a new one is created.
    Revoke {
        /// The agent's name.
        name: String,
    },
}

pub async fn run(cmd: AgentTokenCmd, client: &Client) -> Result<ExitCode> {
    match cmd {
        AgentTokenCmd::Create { name } => {
            check_agent_name(&name).map_err(|e| CliError::BadInput(e.to_string()))?;
            let made = client.create_agent_token(&name).await?;
            eprintln!(
                "token of agent {:?} (shown once; start it with `orch agent --name {} --agent-token TOKEN`):",
                made.name, made.name
            );
            println!("{}", made.token);
        }
        AgentTokenCmd::List { output } => {
            let list = client.agent_tokens().await?;
            match output {
                Output::Json => view::json(&list)?,
                Output::Text => {
                    println!("{:<32} {:<8} CREATED", "NAME", "STATE");
                    let now = orchestrator_host::now_ms();
                    for t in &list {
                        let state = if t.revoked_at_ms.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!(
                            "{:<32} {:<8} {} ago",
                            t.name,
                            state,
                            view::duration(now - t.created_at_ms)
                        );
                    }
                }
            }
        }
        AgentTokenCmd::Revoke { name } => {
            client.revoke_agent_token(&name).await?;
            println!("revoked the token of agent {name:?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
