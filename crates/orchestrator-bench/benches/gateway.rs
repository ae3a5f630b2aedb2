//! `cargo bench -p orchestrator-bench --bench gateway -- [OPTIONS]`: what
//! the model gateway adds to a completion (see `orchestrator_bench::gateway`).

use std::process::ExitCode;

use clap::Parser;
use orchestrator_bench::{cli, gateway};

/// What the daemon's model gateway adds to a short completion, against the
/// same llama.cpp server called directly.
#[derive(Parser)]
#[command(name = "gateway")]
struct Args {
    #[command(flatten)]
    opts: gateway::GatewayArgs,
    #[command(flatten)]
    common: cli::Common,
}

fn main() -> ExitCode {
    let a = Args::parse();
    cli::init_tracing();
    cli::exit(cli::block_on(async {
        let o = a.opts.opts()?;
        let root = a.common.root()?;
        let rows = gateway::run(&o, &root).await?;
        let _ = std::fs::remove_dir_all(&root);
        a.common.print(&rows[..], gateway::render)
    }))
}
