//! `orch explain RUN [STAGE]`: why each stage runs where it does, or why it
//! waits: which rule, which resource, which higher-priority work.

use orchestrator_core::RunId;
use std::process::ExitCode;

use anyhow::Result;
use orchestrator_core::api::Explanation;

use crate::client::Client;
use crate::{view, Output};

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// Run id (or an unambiguous prefix).
    pub run: RunId,
    /// Only this stage.
    pub stage: Option<String>,
    /// Output format: text for people, json for programs.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
}

pub async fn explain(a: ExplainArgs, client: &Client) -> Result<ExitCode> {
    let e = client.explain(&a.run, a.stage.as_deref()).await?;
    match a.output {
        Output::Json => view::json(&e)?,
        Output::Text => print(&e),
    }
    Ok(ExitCode::SUCCESS)
}

fn print(e: &Explanation) {
    println!("run {} ({})", e.run_id, e.state);
    for l in &e.lines {
        println!("  {l}");
    }
    let lim = &e.limits;
    let mut limits = Vec::new();
    for (name, l) in [
        ("max_parallel_runs", lim.max_parallel_runs),
        ("max_parallel_stages", lim.max_parallel_stages),
        ("quota slots", lim.quota_slots),
        ("quota memory MiB", lim.quota_memory_mb),
        ("quota gpus", lim.quota_gpus),
    ] {
        if let Some(l) = l {
            limits.push(format!("{name} {l}"));
        }
    }
    if !limits.is_empty() {
        println!("  limits: {}", limits.join(", "));
    }
    for s in &e.stages {
        println!();
        println!("stage {} ({}), needs {}", s.stage_id, s.state, s.needs);
        for l in &s.lines {
            println!("  {l}");
        }
    }
}
