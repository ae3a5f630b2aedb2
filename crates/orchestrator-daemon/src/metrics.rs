//! `/metrics` in Prometheus text format. Every metric the daemon exports is
//! described here, in one place.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use orchestrator_store::{Counts, WriterStats};

/// Upper bounds of the claim latency histogram's buckets, in seconds.
const CLAIM_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Upper bounds of the dispatch latency histogram's buckets, in seconds: a
/// job waits from milliseconds (a free slot) to hours (a full machine).
const DISPATCH_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0,
];

/// A histogram of durations over fixed bucket bounds, counted without locks.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    /// Observations by the first bucket they fit; the last slot is above
    /// every bound. (N + 1 slots: a const generic cannot say so.)
    slots: Vec<AtomicU64>,
    count: AtomicU64,
    micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [f64; N]) -> Self {
        Histogram {
            bounds,
            slots: (0..=N).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let slot = self.bounds.iter().position(|b| secs <= *b).unwrap_or(N);
        self.slots[slot].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let c = |x: &AtomicU64| x.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (b, n) in self.bounds.iter().zip(&self.slots) {
            cumulative += c(n);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = c(&self.count);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {}\n{name}_count {count}",
            c(&self.micros) as f64 / 1e6,
        );
    }
}

/// Counters the API updates as it serves.
#[derive(Debug)]
pub struct Metrics {
    /// Granted claims' time in the store.
    claim: Histogram<{ CLAIM_BUCKETS.len() }>,
    /// Jobs' time from queued to leased.
    dispatch: Histogram<{ DISPATCH_BUCKETS.len() }>,
    claims_granted: AtomicU64,
    claims_empty: AtomicU64,
    claim_micros: AtomicU64,
    completions: AtomicU64,
    stale_completions: AtomicU64,
    leases_expired: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            claim: Histogram::new(&CLAIM_BUCKETS),
            dispatch: Histogram::new(&DISPATCH_BUCKETS),
            claims_granted: AtomicU64::new(0),
            claims_empty: AtomicU64::new(0),
            claim_micros: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            stale_completions: AtomicU64::new(0),
            leases_expired: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// A claim got a job: `took` in the store, `waited` since the job was queued.
    pub fn claim_granted(&self, took: Duration, waited: Duration) {
        self.claims_granted.fetch_add(1, Ordering::Relaxed);
        self.claim.observe(took);
        self.dispatch.observe(waited);
        self.claim_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
    pub fn claim_empty(&self) {
        self.claims_empty.fetch_add(1, Ordering::Relaxed);
    }
    pub fn completed(&self) {
        self.completions.fetch_add(1, Ordering::Relaxed);
    }
    pub fn stale_completion(&self) {
        self.stale_completions.fetch_add(1, Ordering::Relaxed);
    }
    pub fn leases_expired(&self, n: usize) {
        self.leases_expired.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The whole exposition.
    pub fn render(&self, counts: &Counts, w: &WriterStats) -> String {
        let mut out = String::with_capacity(4096);
        let c = |x: &AtomicU64| x.load(Ordering::Relaxed);
        let mut gauge_by_state = |name: &str, help: &str, rows: &[(String, i64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (state, n) in rows {
                let _ = writeln!(out, "{name}{{state=\"{state}\"}} {n}");
            }
        };
        gauge_by_state("orch_runs", "Runs by state.", &counts.runs);
        gauge_by_state("orch_stages", "Stage runs by state.", &counts.stages);
        gauge_by_state("orch_jobs", "Jobs by state.", &counts.jobs);
        let mut one = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        one(
            "orch_agents",
            "gauge",
            "Registered agents.",
            counts.agents as f64,
        );
        one(
            "orch_transitions_total",
            "counter",
            "Transition rows written.",
            counts.transitions as f64,
        );
        one(
            "orch_claims_granted_total",
            "counter",
            "Claims answered with a job.",
            c(&self.claims_granted) as f64,
        );
        one(
            "orch_claims_empty_total",
            "counter",
            "Claims that waited and got no job.",
            c(&self.claims_empty) as f64,
        );
        one(
            "orch_claim_store_seconds_total",
            "counter",
            "Time granted claims spent in the store.",
            c(&self.claim_micros) as f64 / 1e6,
        );
        self.claim.render(
            &mut out,
            "orch_claim_seconds",
            "Time granted claims spent in the store.",
        );
        self.dispatch.render(
            &mut out,
            "orch_dispatch_seconds",
            "Time from a job queued to its lease (claim granted).",
        );
        let _ = writeln!(
            out,
            "# HELP orch_retries_total Failed attempts tried again, by the failure's class.\n# TYPE orch_retries_total counter"
        );
        for (class, n) in &counts.retries {
            let _ = writeln!(out, "orch_retries_total{{class=\"{}\"}} {n}", label(class));
        }
        let mut one = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        one(
            "orch_completions_total",
            "counter",
            "Jobs completed.",
            c(&self.completions) as f64,
        );
        one(
            "orch_stale_completions_total",
            "counter",
            "Completions refused for a stale lease.",
            c(&self.stale_completions) as f64,
        );
        one(
            "orch_leases_expired_total",
            "counter",
            "Leases the reaper expired.",
            c(&self.leases_expired) as f64,
        );
        one(
            "orch_store_batches_total",
            "counter",
            "Store transactions committed.",
            w.batches as f64,
        );
        one(
            "orch_store_commands_total",
            "counter",
            "Store commands committed.",
            w.commands as f64,
        );
        one(
            "orch_store_batch_max",
            "gauge",
            "Largest store batch so far.",
            w.max_batch as f64,
        );
        one(
            "orch_store_commit_seconds_total",
            "counter",
            "Time spent committing store batches.",
            w.commit_micros as f64 / 1e6,
        );
        one(
            "orch_store_failed_batches_total",
            "counter",
            "Store batches rolled back.",
            w.failed_batches as f64,
        );
        out
    }
}

/// What each online agent offers and uses, and what waits for humans.
pub fn render_agents_and_inbox(
    out: &mut String,
    agents: &[orchestrator_core::api::AgentView],
    inbox: &[orchestrator_core::api::InboxItem],
) {
    let rows = [
        ("orch_agent_slots", "Slots an online agent may use."),
        ("orch_agent_slots_used", "Jobs an online agent runs now."),
        (
            "orch_agent_slots_free",
            "Slots an online agent has free now.",
        ),
        (
            "orch_agent_memory_mb",
            "Memory an online agent offers to steps, in MiB.",
        ),
        (
            "orch_agent_memory_free_mb",
            "Memory an online agent has free for steps now, in MiB.",
        ),
    ];
    for (name, help) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for a in agents {
            let v = match name {
                "orch_agent_slots" => u64::from(a.slots),
                "orch_agent_slots_used" => u64::from(a.running),
                "orch_agent_slots_free" => u64::from(a.free.slots),
                "orch_agent_memory_free_mb" => a.free.memory_mb,
                _ => a.memory_mb,
            };
            let _ = writeln!(out, "{name}{{agent=\"{}\"}} {v}", label(&a.name));
        }
    }
    let _ = writeln!(
        out,
        "# HELP orch_agent_gpu_memory_free_mb Memory free on each GPU of an online agent, in MiB.\n# TYPE orch_agent_gpu_memory_free_mb gauge"
    );
    for a in agents {
        for g in &a.free.gpus {
            let _ = writeln!(
                out,
                "orch_agent_gpu_memory_free_mb{{agent=\"{}\",gpu=\"{}\"}} {}",
                label(&a.name),
                g.index,
                g.free_mb
            );
        }
    }
    let mut by_kind: std::collections::BTreeMap<String, u64> = Default::default();
    for i in inbox {
        let kind = serde_json::to_value(i.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *by_kind.entry(kind).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "# HELP orch_inbox_items What waits for a human (approvals, questions, failures), by kind.\n# TYPE orch_inbox_items gauge"
    );
    for (kind, n) in by_kind {
        let _ = writeln!(out, "orch_inbox_items{{kind=\"{}\"}} {n}", label(&kind));
    }
}

/// A label value as the text format wants it.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The model gateway's accounting, by model (the fabric's own lines, such as
/// the requests waiting, are `render_fabric`): since the daemon started,
/// the requests counted (answered, failed or
/// abandoned), their tokens in (prompt) and out (completion), and the sums
/// of their queue waits and latencies (a mean is the sum over the requests).
/// Per run and stage, the store keeps them (`GET /v1/runs/{id}`'s `models`).
pub fn render_models(
    out: &mut String,
    used: &std::collections::BTreeMap<String, orchestrator_core::fabric::Usage>,
) {
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let by = |f: &dyn Fn(&orchestrator_core::fabric::Usage) -> f64| {
        used.iter()
            .map(|(m, u)| (format!("model=\"{}\"", label(m)), f(u)))
            .collect::<Vec<_>>()
    };
    family(
        "orch_model_requests_total",
        "counter",
        "Gateway requests counted, answered or failed.",
        by(&|u| u.requests as f64),
    );
    let tokens = used
        .iter()
        .flat_map(|(m, u)| {
            let m = label(m);
            [
                (
                    format!("model=\"{m}\",direction=\"in\""),
                    u.prompt_tokens as f64,
                ),
                (
                    format!("model=\"{m}\",direction=\"out\""),
                    u.completion_tokens as f64,
                ),
            ]
        })
        .collect();
    family(
        "orch_model_tokens_total",
        "counter",
        "Tokens of gateway requests: in (prompt) and out (completion).",
        tokens,
    );
    family(
        "orch_model_queue_wait_seconds_total",
        "counter",
        "Time gateway requests waited for a slot of their model.",
        by(&|u| u.queue_wait_ms as f64 / 1e3),
    );
    family(
        "orch_model_latency_seconds_total",
        "counter",
        "Time from a gateway request's slot to its answer's last byte.",
        by(&|u| u.latency_ms as f64 / 1e3),
    );
}

/// The fabric's lines: requests waiting per model, the servers running
/// where, and how often each model was started (a model that reloads often
/// is short of memory or `switch` time).
pub fn render_fabric(fabric: &crate::fabric::control::Fabric, out: &mut String) {
    let waiting = fabric.pool.waiting_all();
    if waiting.is_empty() {
        return;
    }
    out.push_str("# HELP orch_model_requests_waiting Gateway requests waiting for a slot of their model.\n# TYPE orch_model_requests_waiting gauge\n");
    for (model, n) in &waiting {
        out.push_str(&format!(
            "orch_model_requests_waiting{{model=\"{model}\"}} {n}\n"
        ));
    }
    out.push_str("# HELP orch_model_instances Model servers by place; serving=\"false\" while one starts, drains or stops.\n# TYPE orch_model_instances gauge\n");
    for (model, place, serving) in fabric.pool.instances() {
        out.push_str(&format!(
            "orch_model_instances{{model=\"{model}\",place=\"{place}\",serving=\"{serving}\"}} 1\n"
        ));
    }
    out.push_str("# HELP orch_model_starts_total Model servers started and ready, by model.\n# TYPE orch_model_starts_total counter\n");
    let starts = fabric.starts();
    for (model, _) in &waiting {
        let n = starts.get(model).copied().unwrap_or(0);
        out.push_str(&format!(
            "orch_model_starts_total{{model=\"{model}\"}} {n}\n"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_described_and_typed_once() {
        let m = Metrics::default();
        m.claim_granted(Duration::from_millis(2), Duration::from_millis(700));
        m.completed();
        let counts = Counts {
            runs: vec![("running".into(), 2)],
            stages: vec![("queued".into(), 5)],
            jobs: vec![("leased".into(), 1)],
            agents: 1,
            transitions: 42,
            retries: vec![("infra".into(), 3)],
        };
        let mut text = m.render(&counts, &WriterStats::default());
        let mut used = std::collections::BTreeMap::new();
        used.insert(
            "smol\"2".to_owned(),
            orchestrator_core::fabric::Usage {
                requests: 2,
                prompt_tokens: 31,
                completion_tokens: 5,
                queue_wait_ms: 1500,
                ..Default::default()
            },
        );
        render_models(&mut text, &used);
        assert!(
            text.contains("orch_model_tokens_total{model=\"smol\\\"2\",direction=\"in\"} 31"),
            "{text}"
        );
        assert!(text.contains("orch_model_queue_wait_seconds_total{model=\"smol\\\"2\"} 1.5"));
        assert!(text.contains("orch_runs{state=\"running\"} 2"), "{text}");
        assert!(text.contains("orch_claims_granted_total 1"), "{text}");
        assert!(text.contains("orch_transitions_total 42"), "{text}");
        assert!(
            text.contains("orch_retries_total{class=\"infra\"} 3"),
            "{text}"
        );
        // 2 ms: in the 2.5 ms bucket and every wider one, not the 1 ms one.
        assert!(
            text.contains("orch_claim_seconds_bucket{le=\"0.001\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("orch_claim_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("orch_claim_seconds_bucket{le=\"+Inf\"} 1"),
            "{text}"
        );
        assert!(text.contains("orch_claim_seconds_count 1"), "{text}");
        // 700 ms queued: in the 1 s bucket, not the 0.5 s one.
        for (line, present) in [
            ("orch_dispatch_seconds_bucket{le=\"0.5\"} 0", true),
            ("orch_dispatch_seconds_bucket{le=\"1\"} 1", true),
            ("orch_dispatch_seconds_sum 0.7\n", true),
            ("orch_dispatch_seconds_count 1", true),
        ] {
            assert_eq!(text.contains(line), present, "{line}: {text}");
        }
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "a metric typed twice: {names:?}");
        for n in &names {
            assert!(text.contains(&format!("# HELP {n} ")), "{n} lacks HELP");
        }
    }
}
