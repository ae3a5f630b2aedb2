//! The sandbox bench: every backend measured per step, or said unavailable.

use clap::Parser;
use orchestrator_bench::sandbox::{self, SandboxOpts};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    opts: SandboxOpts,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_measures_each_backend_per_step() {
    // The vm and container backends as the environment configures them.
    let a = Args::parse_from(["sandbox", "--steps", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let rows = sandbox::run(a.opts.steps, a.opts.config(dir.path()), dir.path())
        .await
        .unwrap();
    let text = sandbox::render(&rows);
    let rows = serde_json::to_value(&rows).unwrap();
    let rows = rows.as_array().unwrap();
    let backend = |k: &str| {
        rows.iter()
            .find(|r| r["workload"] == "sandbox" && r["sandbox"] == k)
            .unwrap_or_else(|| panic!("no row for {k} in {text}"))
    };
    for k in ["process", "namespace"] {
        assert_eq!(backend(k)["steps"], 3, "{text}");
        assert!(backend(k)["median_ms_per_step"].as_f64().unwrap() > 0.0);
        assert!(text.lines().any(|l| l.starts_with(k)), "{text}");
    }
    assert_eq!(backend("process")["overhead_ms_per_step"], 0.0);
    // Every kind has a row: figures, or why it cannot run here.
    for k in ["bubblewrap", "container", "vm"] {
        let r = backend(k);
        assert!(
            r["steps"].as_u64().unwrap() > 0 || r["unavailable"].is_string(),
            "{r}"
        );
    }
}
