//! `cargo bench -p orchestrator-bench --bench sched -- [OPTIONS]`: the
//! store's dispatch path alone (see `orchestrator_bench::sched`).

use std::process::ExitCode;

use clap::Parser;
use orchestrator_bench::{cli, sched};

/// The store's dispatch path alone, in process: simulated agents claim and
/// complete queued one-step jobs as fast as the store answers.
#[derive(Parser)]
#[command(name = "sched")]
struct Args {
    #[command(flatten)]
    opts: sched::SchedOpts,
    #[command(flatten)]
    common: cli::Common,
}

fn main() -> ExitCode {
    let a = Args::parse();
    cli::init_tracing();
    cli::exit(cli::block_on(async {
        let root = a.common.root()?;
        let row = sched::run(&a.opts, &root).await?;
        let _ = std::fs::remove_dir_all(&root);
        // A list of one, as every bench prints its rows.
        a.common.print(&[row], |r| sched::render(&r[0]))
    }))
}
