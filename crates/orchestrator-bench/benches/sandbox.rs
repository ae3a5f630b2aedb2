//! `cargo bench -p orchestrator-bench --bench sandbox -- [OPTIONS]`: what
//! each sandbox backend adds to a step (see `orchestrator_bench::sandbox`).

use std::process::ExitCode;

use clap::Parser;
use orchestrator_bench::{cli, sandbox};

/// What each sandbox backend adds to a step: the agent's step runner runs
/// `/bin/true` under every backend in turn, rounds interleaved.
#[derive(Parser)]
#[command(name = "sandbox")]
struct Args {
    #[command(flatten)]
    opts: sandbox::SandboxOpts,
    #[command(flatten)]
    common: cli::Common,
}

fn main() -> ExitCode {
    let a = Args::parse();
    cli::init_tracing();
    cli::exit(cli::block_on(async {
        let root = a.common.root()?;
        let rows = sandbox::run(a.opts.steps, a.opts.config(&root), &root).await?;
        let _ = std::fs::remove_dir_all(&root);
        a.common.print(&rows[..], sandbox::render)
    }))
}
