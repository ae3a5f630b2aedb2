//! `cargo bench --bench gateway`: what the daemon's model gateway adds to
//! a short completion, against calling the same llama.cpp server directly.
//!
//! One llama.cpp server is started through the daemon's own launcher
//! (`orchestrator_host::model_server`), and an in-process daemon on a fresh SQLite store serves
//! it as an `external` model, so both paths reach the very same server and
//! the difference is the gateway alone: the job key's check (a store read),
//! the JSON and model check, the model's slot, and the pass-through. The key
//! is a real one: a run is submitted and its job claimed by an agent over
//! HTTP, as a step would get it.
//!
//! Requests go one at a time, after a warm-up, direct and through the
//! gateway alternating (which goes first alternates too), so that the
//! machine's noise falls on both alike: `POST /v1/completions`, a fixed
//! short prompt, `max_tokens: 1`, temperature 0; once whole, once streamed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use orchestrator_daemon::{Daemon, DaemonConfig, Tokens};
use orchestrator_store::{NewRun, SqlStore, StoreOptions};
use serde::Serialize;
use serde_json::{json, Value};

/// The name both the server and the daemon give the model.
const MODEL: &str = "bench";
/// Requests each way before any is measured: the server's prompt cache, the
/// connections and the store's pages are warm after these.
const WARMUP: usize = 10;

/// The gateway bench's options, as given.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// The GGUF model file the llama.cpp server loads
    /// (`scripts/model-assets.sh` fetches a small one).
    #[arg(
        long,
        alias = "gateway-model",
        value_name = "PATH",
        env = "ORCH_TEST_MODEL"
    )]
    pub model: Option<PathBuf>,
    /// Measured requests, each way (after a warm-up of 10).
    #[arg(long, alias = "gateway-requests", default_value_t = 200)]
    pub requests: usize,
    /// The script that starts a llama.cpp server; default:
    /// scripts/llama-server.py of this checkout.
    #[arg(long, value_name = "PATH", env = "ORCH_LLAMA_LAUNCHER")]
    pub llama_launcher: Option<PathBuf>,
}

/// What the bench runs with: a model that exists, and a launcher.
#[derive(Debug)]
pub struct GatewayOpts {
    pub model: PathBuf,
    pub launcher: PathBuf,
    pub requests: usize,
}

impl GatewayArgs {
    /// Checked before anything starts, so a missing model costs no waiting.
    pub fn opts(&self) -> Result<GatewayOpts> {
        let Some(model) = self.model.clone() else {
            bail!(
                "the gateway bench needs a GGUF model file: --model PATH or \
                 ORCH_TEST_MODEL (scripts/model-assets.sh fetches one)"
            );
        };
        if !model.is_file() {
            bail!("--model {}: no such file", model.display());
        }
        Ok(GatewayOpts {
            model,
            launcher: self.llama_launcher.clone().unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/llama-server.py")
            }),
            requests: self.requests,
        })
    }
}

/// One variant's figures, in milliseconds.
#[derive(Serialize)]
pub struct GatewayRow {
    pub workload: &'static str,
    /// `completion` (the whole answer at once) or `stream` (Server-Sent Events).
    pub variant: &'static str,
    pub requests: usize,
    pub direct_p50_ms: f64,
    pub direct_p99_ms: f64,
    pub direct_mean_ms: f64,
    pub gateway_p50_ms: f64,
    pub gateway_p99_ms: f64,
    pub gateway_mean_ms: f64,
    /// Gateway minus direct, at the same percentile.
    pub overhead_p50_ms: f64,
    pub overhead_p99_ms: f64,
    /// The median of each round's gateway minus direct: the two requests of
    /// a round run back to back, so a slow spell of the machine falls on
    /// both and cancels out.
    pub overhead_paired_median_ms: f64,
    pub samples_direct_ms: Vec<f64>,
    pub samples_gateway_ms: Vec<f64>,
}

/// Nearest-rank percentile of `v` (unsorted).
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn random_token() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// One way to the model: a completions URL and the key it wants, if any.
struct Route {
    url: String,
    key: Option<String>,
}

/// Sends one request and reads its answer to the end; the time it took, in ms.
async fn once(http: &reqwest::Client, to: &Route, body: &Value) -> Result<f64> {
    let t = Instant::now();
    let mut req = http.post(&to.url).json(body);
    if let Some(k) = &to.key {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("POST {}", to.url))?;
    let status = resp.status();
    let mut text = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(&chunk.with_context(|| format!("reading {}", to.url))?);
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&text);
    // A refusal or an empty answer would measure nothing worth reporting.
    if !status.is_success() || !text.contains("\"choices\"") {
        bail!("POST {} answered {status}: {text}", to.url);
    }
    Ok(ms)
}

/// A daemon serving the server at `upstream` as the `external` model
/// [`MODEL`], and the key of a job claimed over HTTP.
async fn daemon_with_key(dir: &Path, upstream: &str) -> Result<(Daemon, String)> {
    let store = Arc::new(SqlStore::open(StoreOptions::new(dir.join("orch.db")))?);
    let agent_token = random_token()?;
    let mut cfg = DaemonConfig::new(
        "127.0.0.1:0".parse()?,
        Tokens {
            admin: vec![random_token()?],
            agent: vec![agent_token.clone()],
        },
    );
    // Nobody heartbeats the claimed job: its lease, and so its key, must
    // outlive the whole measurement.
    cfg.lease_ttl_ms = 24 * 3600 * 1000;
    cfg.models = orchestrator_core::fabric::parse_models(
        &format!("models:\n  - name: {MODEL}\n    runtime: {{external: {{url: {upstream:?}}}}}\n    concurrency: 1\n"),
        "bench models",
    )?;
    let daemon = Daemon::start(cfg, store.clone())
        .await
        .context("cannot start the bench's daemon")?;
    let base = format!("http://{}/v1", daemon.addr);
    store
        .submit_run(NewRun {
            workflow: "name: gateway-bench\nstages:\n  - id: ask\n    steps: [{commands: [{argv: [\"true\"]}]}]\n".into(),
            file: Some("gateway-bench.yaml".into()),
            project_dir: dir.display().to_string(),
            priority: None,
            policy: Default::default(),
            // Never checked out: no agent runs this job, it only holds the key.
            base_commit: "0".repeat(40),
            tree: Vec::new(),
            actor: orchestrator_core::Actor::user("bench"),
            on_failure: None,
            inputs: Default::default(),
        })
        .await?;
    let http = reqwest::Client::new();
    let reg: Value = http
        .post(format!("{base}/agents"))
        .bearer_auth(&agent_token)
        .json(&json!({"name": "bench-gateway", "slots": 1}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let agent = reg["agent_id"]
        .as_str()
        .context("registering the agent gave no agent_id")?;
    let job: Value = http
        .post(format!("{base}/agents/{agent}/claim"))
        .bearer_auth(&agent_token)
        .json(&json!({"wait_ms": 5000}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key = job["api_key"]
        .as_str()
        .with_context(|| format!("the claimed job carries no api_key: {job}"))?
        .to_owned();
    Ok((daemon, key))
}

pub async fn run(o: &GatewayOpts, root: &Path) -> Result<Vec<GatewayRow>> {
    let spec = orchestrator_core::fabric::parse_models(
        &format!(
            "models:\n  - name: {MODEL}\n    runtime: {{llama_cpp: {{model: {:?}, ctx: 2048, threads: 1}}}}\n    memory: 1G\n    concurrency: 1\n",
            o.model.display().to_string()
        ),
        "bench models",
    )?;
    let launcher = orchestrator_host::model_server::Launcher::new(o.launcher.clone());
    // Held for the whole bench: dropping it stops the server.
    let (direct_base, server) = launcher
        .spawn(&spec[0], "127.0.0.1", None)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (launcher {})", o.launcher.display()))?;
    let dir = root.join("gateway");
    std::fs::create_dir_all(&dir)?;
    let (daemon, key) = daemon_with_key(&dir, &direct_base).await?;
    let direct = Route {
        url: format!("{direct_base}/completions"),
        key: None,
    };
    let gateway = Route {
        url: format!("http://{}/v1/completions", daemon.addr),
        key: Some(key),
    };
    // llama.cpp may close a kept-alive connection after an answer, so the
    // gateway opens a fresh one to it per request; the direct path does the
    // same, and the client keeps its connection to the daemon, as a step's
    // OpenAI client would: each path pays one connect to the server.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let kept = reqwest::Client::new();
    let mut rows = Vec::new();
    for (variant, stream) in [("completion", false), ("stream", true)] {
        let body = json!({
            "model": MODEL,
            "prompt": "The capital of France is",
            "max_tokens": 1,
            "temperature": 0,
            "stream": stream,
        });
        for _ in 0..WARMUP {
            once(&fresh, &direct, &body).await?;
            once(&kept, &gateway, &body).await?;
        }
        let (mut d, mut g) = (Vec::new(), Vec::new());
        for i in 0..o.requests.max(1) {
            if i % 2 == 0 {
                d.push(once(&fresh, &direct, &body).await?);
                g.push(once(&kept, &gateway, &body).await?);
            } else {
                g.push(once(&kept, &gateway, &body).await?);
                d.push(once(&fresh, &direct, &body).await?);
            }
        }
        let (dp50, dp99, gp50, gp99) = (
            percentile(&d, 50.0),
            percentile(&d, 99.0),
            percentile(&g, 50.0),
            percentile(&g, 99.0),
        );
        rows.push(GatewayRow {
            workload: "gateway",
            variant,
            requests: d.len(),
            direct_p50_ms: dp50,
            direct_p99_ms: dp99,
            direct_mean_ms: mean(&d),
            gateway_p50_ms: gp50,
            gateway_p99_ms: gp99,
            gateway_mean_ms: mean(&g),
            overhead_p50_ms: gp50 - dp50,
            overhead_p99_ms: gp99 - dp99,
            overhead_paired_median_ms: crate::stats::median(
                &g.iter().zip(&d).map(|(g, d)| g - d).collect::<Vec<_>>(),
            ),
            samples_direct_ms: d,
            samples_gateway_ms: g,
        });
    }
    daemon.shutdown_token().cancel();
    daemon
        .wait()
        .await
        .map_err(|e| anyhow::anyhow!("the bench's daemon: {e}"))?;
    drop(server);
    Ok(rows)
}

/// The figures as text: a line per variant, then the means.
pub fn render(rows: &[GatewayRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} cores; POST /v1/completions, max_tokens 1, temperature 0, one at a time, direct and gateway alternating",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let _ = writeln!(
        out,
        "{:<12} {:>8} {:>11} {:>11} {:>12} {:>12} {:>10} {:>10}",
        "GATEWAY",
        "REQUESTS",
        "direct p50",
        "direct p99",
        "gateway p50",
        "gateway p99",
        "+p50 ms",
        "+p99 ms"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:>11.3} {:>11.3} {:>12.3} {:>12.3} {:>+10.3} {:>+10.3}",
            r.variant,
            r.requests,
            r.direct_p50_ms,
            r.direct_p99_ms,
            r.gateway_p50_ms,
            r.gateway_p99_ms,
            r.overhead_p50_ms,
            r.overhead_p99_ms
        );
    }
    for r in rows {
        let _ = writeln!(
        out,
            "{}: mean ms direct {:.3}, gateway {:.3} ({:+.3}); median of the rounds' differences {:+.3} ms",
            r.variant,
            r.direct_mean_ms,
            r.gateway_mean_ms,
            r.gateway_mean_ms - r.direct_mean_ms,
            r.overhead_paired_median_ms
        );
    }
    out
}
