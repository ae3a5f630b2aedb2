//! How read commands print: tables for people, `-o json` for programs.

use orchestrator_core::api::{AgentView, RunDetail, RunSummary};
use orchestrator_core::fabric::{Usage, UsageSummary};
use orchestrator_core::spec::{human_mib, SandboxKind};
use orchestrator_core::AgentId;
use orchestrator_core::Plan;
use orchestrator_daemon::hooks::HookStatus;

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

pub fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `1.2s`, `3m04s`, `2h01m`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

fn span(start: Option<i64>, end: Option<i64>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => duration(e - s),
        (Some(s), None) => format!("{} so far", duration(orchestrator_host::now_ms() - s)),
        _ => "-".into(),
    }
}

pub fn runs(list: &[RunSummary]) {
    if list.is_empty() {
        println!("no runs yet; start one with `orch run FILE`");
        return;
    }
    println!(
        "{:<13} {:<20} {:<10} {:>5} {:>9} {:>10}",
        "RUN", "WORKFLOW", "STATE", "PRIO", "STAGES", "DURATION"
    );
    for r in list {
        println!(
            "{:<13} {:<20} {:<10} {:>5} {:>9} {:>10}",
            r.id,
            r.workflow,
            r.state.as_str(),
            r.priority,
            format!("{}/{}", r.stages_succeeded, r.stages_total),
            span(
                Some(r.created_at_ms),
                r.ended_at_ms.or(Some(orchestrator_host::now_ms()))
            ),
        );
    }
}

/// The most characters of an output's value `orch show` prints.
const SHOWN_VALUE: usize = 80;

/// Each stage's outputs, `key=value`, long values cut (`-o json` has them
/// whole).
fn stage_outputs(d: &RunDetail) {
    if d.stages.iter().all(|s| s.outputs.is_empty()) {
        return;
    }
    println!();
    println!("{:<24} KEY=VALUE", "OUTPUTS OF");
    let mut cut = false;
    for s in &d.stages {
        for (k, v) in &s.outputs {
            let (shown, was_cut) = orchestrator_core::outputs::shown_value(v, SHOWN_VALUE);
            cut |= was_cut;
            println!(
                "{:<24} {k}={shown}{}",
                s.stage_id,
                if was_cut {
                    format!("… ({} bytes)", v.len())
                } else {
                    String::new()
                }
            );
        }
    }
    if cut {
        println!(
            "(values cut at {SHOWN_VALUE} characters; `orch show {} -o json` shows them whole)",
            d.run.id
        );
    }
}

pub fn run(d: &RunDetail) {
    let r = &d.run;
    println!("run       {}", r.id);
    println!("workflow  {}", r.workflow);
    if let Some(h) = &r.spec_hash {
        println!("spec      sha256 {h}");
    }
    println!("project   {}", r.project_dir);
    println!("state     {}", r.state);
    match r.suggested_priority {
        Some(sp) if sp != r.priority => {
            println!(
                "priority  {} (suggested {sp}; `orch explain {}`)",
                r.priority, r.id
            )
        }
        _ => println!("priority  {}", r.priority),
    }
    println!(
        "stages    {} succeeded, {} ended, {} in all",
        r.stages_succeeded, r.stages_ended, r.stages_total
    );
    println!("duration  {}", span(Some(r.created_at_ms), r.ended_at_ms));
    for (i, (name, value)) in d.inputs.iter().enumerate() {
        let text = orchestrator_core::spec::input_env_value(value);
        // A value with a newline or other control characters is quoted, so
        // that it stays on its line.
        let shown = if text.chars().any(char::is_control) {
            format!("{text:?}")
        } else {
            text
        };
        let head = if i == 0 { "inputs    " } else { "          " };
        println!("{head}{name}={shown}");
    }
    println!("critical  {}", d.plan.critical_path.join(" -> "));
    feedback_loops(&d.plan);
    if let Some(branch) = &r.branch {
        println!(
            "history   {branch} ({} checkpoint{}; `orch artifacts {}`)",
            d.checkpoints.len(),
            if d.checkpoints.len() == 1 { "" } else { "s" },
            r.id
        );
    }
    println!();
    println!(
        "{:<24} {:<17} {:>7} {:>5} {:>8} {:>12}  {:<13} {:<11} NEEDS",
        "STAGE", "STATE", "STEP", "ROUND", "ATTEMPT", "DURATION", "AGENT", "SANDBOX"
    );
    // The sandbox each stage's latest attempt ran in, as its agent reported.
    let sandbox_of = |stage: &str| {
        d.jobs
            .iter()
            .rev()
            .filter(|j| j.stage_id == stage)
            .find_map(|j| j.sandbox)
    };
    let mut unisolated = false;
    let critical: std::collections::HashSet<&str> =
        d.plan.critical_path.iter().map(String::as_str).collect();
    for s in &d.stages {
        let mark = if critical.contains(s.stage_id.as_str()) {
            "*"
        } else {
            " "
        };
        let sandbox = match sandbox_of(&s.stage_id) {
            Some(SandboxKind::Process) => {
                unisolated = true;
                "process!".to_owned()
            }
            Some(k) => k.to_string(),
            None => "-".to_owned(),
        };
        println!(
            "{mark}{:<23} {:<17} {:>7} {:>5} {:>8} {:>12}  {:<13} {:<11} {}",
            s.stage_id,
            s.state.as_str(),
            // The current step, from 0, of how many: none before it started.
            if s.started_at_ms.is_some() {
                format!("{} of {}", s.step, s.steps_total)
            } else {
                format!("- of {}", s.steps_total)
            },
            if s.round == 0 {
                "-".to_owned()
            } else {
                s.round.to_string()
            },
            s.attempt,
            span(s.started_at_ms, s.ended_at_ms),
            s.agent_id.as_ref().map_or("-", AgentId::as_str),
            sandbox,
            s.needs.join(", "),
        );
    }
    println!("(* on the critical path)");
    if unisolated {
        println!("(process! ran without isolation: sandbox: process)");
    }
    stage_conditions(d);
    if let Some(u) = &d.models {
        models(u);
    }
    if d.stages.iter().any(|s| !s.cache.is_empty()) {
        println!();
        println!(
            "{:<24} {:<24} {:<40} RESTORE KEYS",
            "CACHE OF", "PATH", "KEY"
        );
        for s in &d.stages {
            for c in &s.cache {
                println!(
                    "{:<24} {:<24} {:<40} {}",
                    s.stage_id,
                    c.path,
                    c.key,
                    c.restore_keys.join(", ")
                );
            }
        }
    }
    stage_outputs(d);
    let waiting: Vec<_> = d
        .stages
        .iter()
        .filter(|s| s.state == orchestrator_core::StageState::AwaitingApproval)
        .collect();
    let open: Vec<_> = d
        .questions
        .iter()
        .filter(|q| q.state == orchestrator_core::api::QuestionState::Open)
        .collect();
    let undecided: Vec<_> = d
        .stages
        .iter()
        .filter(|s| s.state == orchestrator_core::StageState::AwaitingDecision)
        .collect();
    if !waiting.is_empty() || !open.is_empty() || !undecided.is_empty() {
        println!();
        println!("waiting for you:");
        for s in undecided {
            println!(
                "  {} failed at step {}: orch retry {} {} | orch skip {} {} | orch abort {}",
                s.stage_id, s.step, r.id, s.stage_id, r.id, s.stage_id, r.id
            );
        }
        for s in waiting {
            println!(
                "  {} awaits approval: orch approve {} {} | orch reject {} {} --feedback '...'",
                s.stage_id, r.id, s.stage_id, r.id, s.stage_id
            );
        }
        for q in open {
            let how = if q.choices.is_empty() {
                "TEXT".to_owned()
            } else {
                q.choices.join("|")
            };
            println!(
                "  {} asks (question {}): {}  -> orch answer {} {} {how}{}",
                q.stage_id,
                q.id,
                q.question,
                r.id,
                q.id,
                if q.waiting {
                    "  (its step waits, running)"
                } else {
                    ""
                }
            );
        }
    }
    rounds(d);
    let failed: Vec<_> = d.jobs.iter().filter(|j| j.error.is_some()).collect();
    if !failed.is_empty() {
        println!();
        println!("failures:");
        for j in failed {
            println!(
                "  {} step {} round {} attempt {} (job {}, {}): {}",
                j.stage_id,
                j.step,
                j.round,
                j.attempt,
                j.id,
                j.error_class.map_or("task", |c| c.as_str()),
                j.error.as_deref().unwrap_or("")
            );
        }
    }
}

/// Every step that ran more than once: its rounds, why each ran and how it
/// ended.
fn rounds(d: &RunDetail) {
    let mut steps: Vec<(&str, u32)> = d
        .jobs
        .iter()
        .filter(|j| j.round > 1)
        .map(|j| (j.stage_id.as_str(), j.step))
        .collect();
    steps.dedup();
    steps.sort_unstable();
    steps.dedup();
    if steps.is_empty() {
        return;
    }
    println!();
    println!("rounds:");
    for (stage, step) in steps {
        let each: Vec<String> = d
            .jobs
            .iter()
            .filter(|j| j.stage_id == stage && j.step == step)
            .map(|j| format!("round {} ({}) {}", j.round, j.round_reason, j.state))
            .collect();
        println!("  {stage} step {step}: {}", each.join(", "));
    }
}

/// A run's model calls through the gateway, per stage and model, and in all.
fn models(u: &UsageSummary) {
    println!();
    println!(
        "{:<24} {:<20} {:>8} {:>10} {:>10} {:>19} {:>19}",
        "MODELS BY STAGE",
        "MODEL",
        "REQUESTS",
        "TOKENS IN",
        "TOKENS OUT",
        "WAIT MEAN/MAX",
        "LATENCY MEAN/MAX"
    );
    let ms = |v: u64| duration(i64::try_from(v).unwrap_or(i64::MAX));
    let row = |stage: &str, model: &str, u: &Usage| {
        println!(
            "{:<24} {:<20} {:>8} {:>10} {:>10} {:>19} {:>19}",
            stage,
            model,
            u.requests,
            u.prompt_tokens,
            u.completion_tokens,
            format!("{}/{}", ms(u.mean_queue_wait_ms()), ms(u.max_queue_wait_ms)),
            format!("{}/{}", ms(u.mean_latency_ms()), ms(u.max_latency_ms)),
        )
    };
    for (stage, by_model) in &u.by_stage {
        for (model, usage) in by_model {
            row(stage, model, usage);
        }
    }
    row("(all)", "", &u.total);
}

pub fn plan(p: &Plan) {
    for (i, layer) in p.layers.iter().enumerate() {
        println!(
            "layer {i} ({} in parallel): {}",
            p.parallelism[i],
            layer.join(", ")
        );
    }
    let est = if p.critical_path_ms > 0 {
        format!(" (estimated {})", duration(p.critical_path_ms as i64))
    } else {
        String::new()
    };
    println!("critical path{est}: {}", p.critical_path.join(" -> "));
    for (stage, cond) in &p.conditions {
        println!("condition: {stage} runs only if: {cond}");
    }
    feedback_loops(p);
}

/// Each stage's `if:`, and why each bypassed stage did not run.
fn stage_conditions(d: &RunDetail) {
    if d.stages
        .iter()
        .all(|s| s.condition.is_none() && s.bypassed.is_none())
    {
        return;
    }
    println!();
    for s in &d.stages {
        if let Some(c) = &s.condition {
            println!("{:<24} if: {c}", s.stage_id);
        }
        if let Some(why) = &s.bypassed {
            println!("{:<24} {why}", s.stage_id);
        }
    }
}

/// The workflow's feedback loops, one line each.
fn feedback_loops(p: &Plan) {
    for l in &p.feedback_loops {
        println!(
            "feedback loop: when {} fails, {} runs again with the failure as feedback, then {} (at most {} round{}, then {})",
            l.stage,
            l.retry_stage,
            l.runs_again.join(", "),
            l.max_rounds,
            if l.max_rounds == 1 { "" } else { "s" },
            l.then
        );
    }
}

pub fn agents(list: &[AgentView]) {
    if list.is_empty() {
        println!("no agents registered");
        return;
    }
    println!(
        "{:<13} {:<20} {:<7} {:>7} {:>19} {:<28} {:<16} LAST SEEN",
        "AGENT", "NAME", "STATE", "SLOTS", "MEMORY FREE", "GPUS (FREE/TOTAL)", "LABELS"
    );
    let now = orchestrator_host::now_ms();
    for a in list {
        let gpus = if a.free.gpus.is_empty() {
            "-".to_owned()
        } else {
            a.free
                .gpus
                .iter()
                .map(|g| {
                    format!(
                        "{}:{}/{}",
                        g.index,
                        human_mib(g.free_mb),
                        human_mib(g.total_mb)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{:<13} {:<20} {:<7} {:>7} {:>19} {:<28} {:<16} {} ago",
            a.id,
            a.name,
            if a.online { "online" } else { "lost" },
            format!("{}/{}", a.running, a.slots),
            format!("{}/{}", human_mib(a.free.memory_mb), human_mib(a.memory_mb)),
            gpus,
            if a.labels.is_empty() {
                "-".to_owned()
            } else {
                a.labels.join(",")
            },
            duration(now - a.last_seen_ms)
        );
    }
}

/// What a hook target is doing, in one word.
fn hook_state(h: &HookStatus) -> &'static str {
    if h.retrying {
        "retrying"
    } else if h.last_attempt_ms.is_none() {
        "idle"
    } else if h.last_error_ms.is_some() && h.last_error_ms >= h.last_attempt_ms {
        // The last attempt of all failed.
        "failing"
    } else {
        "ok"
    }
}

pub fn webhooks(list: &[HookStatus]) {
    if list.is_empty() {
        println!("no webhooks or OpenClaw gateway; start the daemon with --webhook URL or --openclaw-url URL");
        return;
    }
    println!(
        "{:<9} {:<9} {:>9} {:>6} {:>6} {:>8} {:>10}  URL",
        "KIND", "STATE", "DELIVERED", "FAILED", "BEHIND", "CURSOR", "LAST TRY"
    );
    let now = orchestrator_host::now_ms();
    let ago = |ms: Option<i64>| ms.map_or("-".to_owned(), |t| format!("{} ago", duration(now - t)));
    for h in list {
        println!(
            "{:<9} {:<9} {:>9} {:>6} {:>6} {:>8} {:>10}  {}",
            h.kind.as_str(),
            hook_state(h),
            h.delivered,
            h.failed,
            h.behind,
            h.cursor,
            ago(h.last_attempt_ms),
            h.url
        );
        if let Some(e) = &h.last_error {
            let retry = if h.retrying {
                format!(", attempt {} failed, retrying", h.attempt)
            } else {
                String::new()
            };
            println!("          last error {}{retry}: {e}", ago(h.last_error_ms));
        }
    }
}
