//! `orch bench`: the full path (daemon and agent over loopback HTTP, durable
//! SQLite store) through three workloads, beside a baseline that spawns the
//! same commands directly in the same run. Prints medians of tasks/s and
//! ms/task, and the ratio to the baseline.
//!
//! - W1: N independent `/bin/true` stages, parallelism = slots (default 1000, 2).
//! - W2: a chain of N stages, each needing the previous one (default 200).
//! - W3: L layers of W stages, every stage needing every stage of the layer
//!   before (default 20 × 50).
//!
//! What one part costs alone (the store's dispatch path, a sandbox backend,
//! the model gateway) is measured by the `orchestrator-bench` crate's
//! benches instead, which are not part of this binary.

use std::fmt::Write as _;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use orchestrator_core::api::Submitted;
use orchestrator_core::RunState;
use serde::Serialize;

use crate::agent_opts::AgentOpts;
use crate::view::{self, Output};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Workloads to run (w1, w2, w3). The store's dispatch path, the
    /// sandbox backends and the model gateway alone are measured by
    /// `cargo bench -p orchestrator-bench --bench sched|sandbox|gateway`.
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3")]
    pub workloads: Vec<String>,
    /// Times each workload runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Agent slots (the parallelism).
    #[arg(long, default_value_t = 2)]
    pub slots: u32,
    /// Stages of W1.
    #[arg(long, default_value_t = 1000)]
    pub w1: usize,
    /// Length of the W2 chain.
    #[arg(long, default_value_t = 200)]
    pub w2: usize,
    /// Layers and width of W3, as LxW.
    #[arg(long, default_value = "20x50")]
    pub w3: String,
    /// Where the store and the project (whose bundles the agent writes) live.
    /// Default: a fresh directory under $TMPDIR.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Put the project (the bundles) here instead, e.g. on another
    /// filesystem, to tell the store's costs from the bundles'.
    #[arg(long)]
    pub project_dir: Option<std::path::PathBuf>,
    /// The sandbox W1–W3's steps run in. Default: process, as the baseline
    /// spawns its commands without isolation.
    #[arg(long, value_name = "KIND", value_parser = orchestrator_core::spec::SandboxKind::parse, default_value = "process")]
    pub sandbox: orchestrator_core::spec::SandboxKind,
    /// The store to measure: a PostgreSQL URL (`postgres://USER@HOST/DB`);
    /// each workload gets a schema of its own there, dropped afterwards.
    /// Default: a SQLite file in the bench's directory.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Output format: text for people, json for programs.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Serialize)]
struct Row {
    workload: String,
    tasks: usize,
    baseline_tasks_per_s: f64,
    bundle_floor_tasks_per_s: f64,
    orch_tasks_per_s: f64,
    orch_ms_per_task: f64,
    ratio_to_baseline: f64,
    samples_orch_s: Vec<f64>,
    samples_baseline_s: Vec<f64>,
    samples_bundle_floor_s: Vec<f64>,
    /// Store transactions per task over all repeats.
    commits_per_task: f64,
    /// Store commands per transaction (the group-commit factor).
    commands_per_commit: f64,
    /// Mean time of one COMMIT, fsync included, in milliseconds.
    commit_ms: f64,
}

/// The store's counters, read from `/metrics`.
async fn store_counters(client: &crate::client::Client) -> Result<(f64, f64, f64)> {
    let text = client.metrics().await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    Ok((
        value("orch_store_batches_total"),
        value("orch_store_commands_total"),
        value("orch_store_commit_seconds_total"),
    ))
}

struct Workload {
    name: &'static str,
    yaml: String,
    tasks: usize,
    /// Stage layers for the baseline: each layer runs with `slots` workers.
    layers: Vec<usize>,
}

fn stage(out: &mut String, id: &str, needs: &[String]) {
    let _ = writeln!(out, "  - id: {id}");
    if !needs.is_empty() {
        let _ = writeln!(out, "    needs: [{}]", needs.join(", "));
    }
    out.push_str("    steps:\n      - commands:\n          - argv: [/bin/true]\n");
}

fn workloads(a: &BenchArgs) -> Result<Vec<Workload>> {
    let (l, w) = a
        .w3
        .split_once('x')
        .and_then(|(l, w)| Some((l.parse::<usize>().ok()?, w.parse::<usize>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--w3 {:?}: expected LAYERSxWIDTH such as 20x50", a.w3))?;
    let mut out = Vec::new();
    for name in &a.workloads {
        let mut y = format!("name: bench-{name}\nstages:\n");
        let wl = match name.as_str() {
            "w1" => {
                for i in 0..a.w1 {
                    stage(&mut y, &format!("s{i}"), &[]);
                }
                Workload {
                    name: "W1 independent",
                    yaml: y,
                    tasks: a.w1,
                    layers: vec![a.w1],
                }
            }
            "w2" => {
                for i in 0..a.w2 {
                    let needs = if i == 0 {
                        vec![]
                    } else {
                        vec![format!("s{}", i - 1)]
                    };
                    stage(&mut y, &format!("s{i}"), &needs);
                }
                Workload {
                    name: "W2 chain",
                    yaml: y,
                    tasks: a.w2,
                    layers: vec![1; a.w2],
                }
            }
            "w3" => {
                for li in 0..l {
                    let needs: Vec<String> = if li == 0 {
                        vec![]
                    } else {
                        (0..w).map(|j| format!("l{}s{j}", li - 1)).collect()
                    };
                    for j in 0..w {
                        stage(&mut y, &format!("l{li}s{j}"), &needs);
                    }
                }
                Workload {
                    name: "W3 layered",
                    yaml: y,
                    tasks: l * w,
                    layers: vec![w; l],
                }
            }
            moved @ ("sched" | "sandbox" | "gateway") => {
                return Err(crate::client::CliError::BadInput(format!(
                    "the {moved} workload is not part of orch: in a checkout of its source, run \
                     `cargo bench -p orchestrator-bench --bench {moved}` (docs/benchmarks.md)"
                ))
                .into())
            }
            other => bail!("unknown workload {other:?}: expected w1, w2 or w3"),
        };
        out.push(wl);
    }
    Ok(out)
}

/// Spawns `/bin/true` for every task directly, `slots` at a time, layer by
/// layer. With `bundles`, each task also writes what an agent writes: a
/// directory, its stdout and stderr files and an fsynced manifest, which
/// shows what the filesystem alone costs.
fn baseline(layers: &[usize], slots: u32, bundles: Option<&std::path::Path>) -> Result<f64> {
    let start = Instant::now();
    let seq = Arc::new(AtomicUsize::new(0));
    for &n in layers {
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..slots.max(1))
            .map(|_| {
                let (next, seq) = (next.clone(), seq.clone());
                let bundles = bundles.map(std::path::Path::to_path_buf);
                std::thread::spawn(move || -> std::io::Result<()> {
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let mut cmd = Command::new("/bin/true");
                        cmd.stdin(Stdio::null()).stdout(Stdio::null());
                        let dir = match &bundles {
                            Some(root) => {
                                let i = seq.fetch_add(1, Ordering::Relaxed);
                                let d = root.join(format!("s{i}/step-000"));
                                std::fs::create_dir_all(&d)?;
                                cmd.stdout(std::fs::File::create(d.join("cmd-000.stdout.log"))?);
                                cmd.stderr(std::fs::File::create(d.join("cmd-000.stderr.log"))?);
                                Some(d)
                            }
                            None => None,
                        };
                        if !cmd.status()?.success() {
                            return Err(std::io::Error::other("/bin/true failed"));
                        }
                        if let Some(d) = dir {
                            let tmp = d.join("manifest.json.tmp");
                            let mut f = std::fs::File::create(&tmp)?;
                            std::io::Write::write_all(&mut f, b"{}\n")?;
                            f.sync_all()?;
                            std::fs::rename(&tmp, d.join("manifest.json"))?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("baseline worker panicked"))??;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        0.0
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    }
}

pub async fn bench(a: BenchArgs) -> Result<ExitCode> {
    let wls = workloads(&a)?;
    let root = match &a.dir {
        Some(d) => {
            let d = d.join(format!("orch-bench-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            d
        }
        None => tempfile_dir()?,
    };
    let rows = full_path(&a, &wls, &root).await?;
    let _ = std::fs::remove_dir_all(&root);
    match a.output {
        Output::Json => view::json(&rows)?,
        Output::Text => print_rows(&a, &rows),
    }
    Ok(ExitCode::SUCCESS)
}

/// W1–W3 through the daemon and an agent over loopback HTTP.
async fn full_path(a: &BenchArgs, wls: &[Workload], root: &std::path::Path) -> Result<Vec<Row>> {
    let data = root.join("data");
    let project = match &a.project_dir {
        Some(p) => p.join(format!("orch-bench-project-{}", std::process::id())),
        None => root.join("project"),
    };
    orchestrator_host::git::new_project(&project, &[("README.md", "the bench's project\n")])?;
    let agent = AgentOpts {
        name: Some("bench".into()),
        sandbox: Some(a.sandbox),
        ..AgentOpts::with_slots(a.slots)
    };
    let scratch = a
        .store
        .as_deref()
        .map(|url| orchestrator_store::ScratchSchema::new(url, "orch_bench_w"));
    let embedded = crate::demo::Embedded::start(
        &data,
        agent,
        false,
        scratch
            .as_ref()
            .map(orchestrator_store::ScratchSchema::store),
    )
    .await?;
    let client = &embedded.client;
    let mut rows = Vec::new();
    for wl in wls {
        let file = project.join(format!("{}.yaml", wl.name.split(' ').next().unwrap_or("w")));
        std::fs::write(&file, &wl.yaml)?;
        let (mut o, mut b, mut f) = (Vec::new(), Vec::new(), Vec::new());
        let before = store_counters(client).await?;
        for i in 0..a.repeat.max(1) {
            let (layers, slots) = (wl.layers.clone(), a.slots);
            b.push(tokio::task::spawn_blocking(move || baseline(&layers, slots, None)).await??);
            let (layers, floor) = (
                wl.layers.clone(),
                project.join(format!("floor-{}-{i}", wl.tasks)),
            );
            f.push(
                tokio::task::spawn_blocking(move || baseline(&layers, slots, Some(&floor)))
                    .await??,
            );
            let t = Instant::now();
            let s: Submitted = crate::runcmd::submit(
                client,
                &file,
                Some(project.clone()),
                None,
                None,
                None,
                &Default::default(),
            )
            .await?;
            let state = crate::runcmd::wait(client, &s.run_id, false).await?;
            let secs = t.elapsed().as_secs_f64();
            if state != RunState::Succeeded {
                bail!("bench run {} of {} ended {state}", s.run_id, wl.name);
            }
            o.push(secs);
        }
        let (mo, mb, mf) = (median(&o), median(&b), median(&f));
        let after = store_counters(client).await?;
        let (commits, commands, commit_s) =
            (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        let all_tasks = (wl.tasks * o.len()) as f64;
        rows.push(Row {
            commits_per_task: commits / all_tasks,
            commands_per_commit: commands / commits.max(1.0),
            commit_ms: commit_s * 1000.0 / commits.max(1.0),
            workload: wl.name.into(),
            tasks: wl.tasks,
            baseline_tasks_per_s: wl.tasks as f64 / mb,
            bundle_floor_tasks_per_s: wl.tasks as f64 / mf,
            orch_tasks_per_s: wl.tasks as f64 / mo,
            orch_ms_per_task: mo * 1000.0 / wl.tasks as f64,
            ratio_to_baseline: mb / mo,
            samples_orch_s: o,
            samples_baseline_s: b,
            samples_bundle_floor_s: f,
        });
    }
    embedded.stop().await?;
    let _ = std::fs::remove_dir_all(&project);
    Ok(rows)
}

/// The store a bench measures, as its tables' headers say it.
fn store_name(store: Option<&str>) -> &'static str {
    if store.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    }
}

fn print_rows(a: &BenchArgs, rows: &[Row]) {
    println!(
        "{} cores, {} slots, {} repeats (medians), steps in sandbox: {}, store: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.slots,
        a.repeat,
        a.sandbox,
        store_name(a.store.as_deref())
    );
    println!(
        "{:<16} {:>6} {:>11} {:>13} {:>10} {:>8} {:>7}",
        "WORKLOAD", "TASKS", "SPAWN t/s", "+BUNDLE t/s", "ORCH t/s", "ms/task", "RATIO"
    );
    for r in rows {
        println!(
            "{:<16} {:>6} {:>11.0} {:>13.0} {:>10.0} {:>8.2} {:>6.0}%",
            r.workload,
            r.tasks,
            r.baseline_tasks_per_s,
            r.bundle_floor_tasks_per_s,
            r.orch_tasks_per_s,
            r.orch_ms_per_task,
            r.ratio_to_baseline * 100.0
        );
    }
    println!("SPAWN: /bin/true spawned directly; +BUNDLE: the same, each writing a bundle's files; RATIO: ORCH / SPAWN");
    println!();
    println!(
        "{:<16} {:>14} {:>17} {:>11}",
        "STORE", "commits/task", "commands/commit", "commit ms"
    );
    for r in rows {
        println!(
            "{:<16} {:>14.2} {:>17.2} {:>11.3}",
            r.workload, r.commits_per_task, r.commands_per_commit, r.commit_ms
        );
    }
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "orch-bench-{}-{}",
        std::process::id(),
        orchestrator_host::now_ms()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
