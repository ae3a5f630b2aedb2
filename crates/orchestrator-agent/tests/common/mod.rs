//! What the agent's tests share: real git repositories in temporary
//! directories, commands in a line, and a step run without a daemon.
// Each test binary uses a part of this.
#![allow(dead_code)]

use std::collections::BTreeMap;

use orchestrator_agent::run_step;
use orchestrator_core::api::{ClaimedJob, StepOutcome};
use orchestrator_core::spec::CommandSpec;
use tokio_util::sync::CancellationToken;

/// Repositories to run in, shared with the host crate's tests.
#[path = "../../../orchestrator-host/tests/common/mod.rs"]
mod repos;
// Each test binary uses a part of these.
#[allow(unused_imports)]
pub use repos::{empty_repo, git, repo};

pub mod sandboxed;

/// A command of these arguments, with nothing else set.
pub fn argv(args: &[&str]) -> CommandSpec {
    CommandSpec {
        argv: args.iter().map(|s| s.to_string()).collect(),
        run: None,
        cwd: None,
        env: BTreeMap::new(),
        timeout: None,
    }
}

/// Runs `job` as agent `agent-1` would, with nothing cancelling it.
pub async fn step(job: &ClaimedJob) -> StepOutcome {
    run_step(job, &"agent-1".into(), CancellationToken::new()).await
}
