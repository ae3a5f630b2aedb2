//! `/metrics`: every metric the daemon exports is described once below, as a
//! [`Family`] (name, help, type, labels), and `prometheus-client` writes
//! them: OpenMetrics text for a scraper that asks for it, else Prometheus
//! text format 0.0.4.
//!
//! Two kinds of value: what the API counts as it serves ([`Metrics`]:
//! relaxed atomic adds, since a claim bumps several), and what is read when
//! scraped ([`Scraped`]: the store's counts and writer, the agents, the
//! inbox, the gateway's accounting, the model fabric).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use orchestrator_core::api::{AgentView, InboxItem};
use orchestrator_core::fabric::Usage;
use orchestrator_store::{Counts, WriterStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric, MetricEncoder,
    NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};

/// One metric family as `/metrics` describes it, with `N` labels. A
/// counter's name leaves out `_total`: the encoder adds it to the samples
/// (and, in the 0.0.4 format, to the family).
struct Family<const N: usize> {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: [&'static str; N],
}

const fn counter(name: &'static str, help: &'static str) -> Family<0> {
    Family {
        name,
        help,
        kind: MetricType::Counter,
        labels: [],
    }
}

const fn gauge<const N: usize>(
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
) -> Family<N> {
    Family {
        name,
        help,
        kind: MetricType::Gauge,
        labels,
    }
}

const fn by<const N: usize>(f: Family<0>, labels: [&'static str; N]) -> Family<N> {
    Family {
        name: f.name,
        help: f.help,
        kind: f.kind,
        labels,
    }
}

const HISTOGRAM: MetricType = MetricType::Histogram;

// What the API counts as it serves.
const CLAIMS_GRANTED: Family<0> = counter("orch_claims_granted", "Claims answered with a job.");
const CLAIMS_EMPTY: Family<0> = counter("orch_claims_empty", "Claims that waited and got no job.");
const CLAIM_STORE_SECONDS: Family<0> = counter(
    "orch_claim_store_seconds",
    "Time granted claims spent in the store.",
);
const CLAIM_SECONDS: Family<0> = Family {
    name: "orch_claim_seconds",
    help: "Time granted claims spent in the store.",
    kind: HISTOGRAM,
    labels: [],
};
const DISPATCH_SECONDS: Family<0> = Family {
    name: "orch_dispatch_seconds",
    help: "Time from a job queued to its lease (claim granted).",
    kind: HISTOGRAM,
    labels: [],
};
const COMPLETIONS: Family<0> = counter("orch_completions", "Jobs completed.");
const STALE_COMPLETIONS: Family<0> = counter(
    "orch_stale_completions",
    "Completions refused for a stale lease.",
);
const LEASES_EXPIRED: Family<0> = counter("orch_leases_expired", "Leases the reaper expired.");

// The store.
const RUNS: Family<1> = gauge("orch_runs", "Runs by state.", ["state"]);
const STAGES: Family<1> = gauge("orch_stages", "Stage runs by state.", ["state"]);
const JOBS: Family<1> = gauge("orch_jobs", "Jobs by state.", ["state"]);
const AGENTS: Family<0> = gauge("orch_agents", "Registered agents.", []);
const TRANSITIONS: Family<0> = counter("orch_transitions", "Transition rows written.");
const RETRIES: Family<1> = by(
    counter(
        "orch_retries",
        "Failed attempts tried again, by the failure's class.",
    ),
    ["class"],
);
const STORE_BATCHES: Family<0> = counter("orch_store_batches", "Store transactions committed.");
const STORE_COMMANDS: Family<0> = counter("orch_store_commands", "Store commands committed.");
const STORE_BATCH_MAX: Family<0> = gauge("orch_store_batch_max", "Largest store batch so far.", []);
const STORE_COMMIT_SECONDS: Family<0> = counter(
    "orch_store_commit_seconds",
    "Time spent committing store batches.",
);
const STORE_FAILED_BATCHES: Family<0> =
    counter("orch_store_failed_batches", "Store batches rolled back.");

// Online agents and what waits for humans.
const AGENT_SLOTS: Family<1> = gauge(
    "orch_agent_slots",
    "Slots an online agent may use.",
    ["agent"],
);
const AGENT_SLOTS_USED: Family<1> = gauge(
    "orch_agent_slots_used",
    "Jobs an online agent runs now.",
    ["agent"],
);
const AGENT_SLOTS_FREE: Family<1> = gauge(
    "orch_agent_slots_free",
    "Slots an online agent has free now.",
    ["agent"],
);
const AGENT_MEMORY_MB: Family<1> = gauge(
    "orch_agent_memory_mb",
    "Memory an online agent offers to steps, in MiB.",
    ["agent"],
);
const AGENT_MEMORY_FREE_MB: Family<1> = gauge(
    "orch_agent_memory_free_mb",
    "Memory an online agent has free for steps now, in MiB.",
    ["agent"],
);
const AGENT_GPU_MEMORY_FREE_MB: Family<2> = gauge(
    "orch_agent_gpu_memory_free_mb",
    "Memory free on each GPU of an online agent, in MiB.",
    ["agent", "gpu"],
);
const INBOX_ITEMS: Family<1> = gauge(
    "orch_inbox_items",
    "What waits for a human (approvals, questions, failures), by kind.",
    ["kind"],
);

// The model gateway's accounting since the daemon started, by model: the
// requests counted (answered, failed or abandoned), their tokens in (prompt)
// and out (completion), and the sums of their queue waits and latencies (a
// mean is the sum over the requests). Per run and stage, the store keeps
// them (`GET /v1/runs/{id}`'s `models`).
const MODEL_REQUESTS: Family<1> = by(
    counter(
        "orch_model_requests",
        "Gateway requests counted, answered or failed.",
    ),
    ["model"],
);
const MODEL_TOKENS: Family<2> = by(
    counter(
        "orch_model_tokens",
        "Tokens of gateway requests: in (prompt) and out (completion).",
    ),
    ["model", "direction"],
);
const MODEL_QUEUE_WAIT_SECONDS: Family<1> = by(
    counter(
        "orch_model_queue_wait_seconds",
        "Time gateway requests waited for a slot of their model.",
    ),
    ["model"],
);
const MODEL_LATENCY_SECONDS: Family<1> = by(
    counter(
        "orch_model_latency_seconds",
        "Time from a gateway request's slot to its answer's last byte.",
    ),
    ["model"],
);

// The model fabric: requests waiting per model, the servers running where,
// and how often each model was started (a model that reloads often is short
// of memory or `switch` time).
const MODEL_REQUESTS_WAITING: Family<1> = gauge(
    "orch_model_requests_waiting",
    "Gateway requests waiting for a slot of their model.",
    ["model"],
);
const MODEL_INSTANCES: Family<3> = gauge(
    "orch_model_instances",
    "Model servers by place; serving=\"false\" while one starts, drains or stops.",
    ["model", "place", "serving"],
);
const MODEL_STARTS: Family<1> = by(
    counter(
        "orch_model_starts",
        "Model servers started and ready, by model.",
    ),
    ["model"],
);

impl Family<0> {
    fn register(&self, reg: &mut Registry, metric: impl Metric) {
        debug_assert_eq!(metric.metric_type(), self.kind, "{}", self.name);
        // The registry ends a help text with a full stop of its own.
        let help = self.help.strip_suffix('.').unwrap_or(self.help);
        reg.register(self.name, help, metric);
    }
}

impl<const N: usize> Family<N> {
    /// The family's description and a sample per row: its label values in
    /// the order of `labels`, and its value.
    fn write<V>(
        &self,
        out: &mut DescriptorEncoder<'_>,
        rows: impl IntoIterator<Item = ([String; N], V)>,
    ) -> fmt::Result
    where
        V: EncodeCounterValue + EncodeGaugeValue,
    {
        let mut family = out.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (values, v) in rows {
            let labels: Vec<(&str, String)> = self.labels.into_iter().zip(values).collect();
            let sample = family.encode_family(&labels)?;
            match self.kind {
                MetricType::Counter => ConstCounter::new(v).encode(sample)?,
                _ => ConstGauge::new(v).encode(sample)?,
            }
        }
        Ok(())
    }
}

/// Upper bounds of the claim latency histogram's buckets, in seconds.
const CLAIM_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Upper bounds of the dispatch latency histogram's buckets, in seconds: a
/// job waits from milliseconds (a free slot) to hours (a full machine).
const DISPATCH_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0,
];

/// A histogram of durations over fixed bucket bounds, counted with atomics:
/// `prometheus-client`'s own takes a lock per observation.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<Buckets>);

#[derive(Debug)]
struct Buckets {
    bounds: &'static [f64],
    /// Observations by the first bucket they fit; the last slot is above
    /// every bound.
    slots: Vec<AtomicU64>,
    micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram(Arc::new(Buckets {
            bounds,
            slots: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            micros: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, took: Duration) {
        let b = &self.0;
        let secs = took.as_secs_f64();
        let slot = b
            .bounds
            .iter()
            .position(|x| secs <= *x)
            .unwrap_or(b.bounds.len());
        b.slots[slot].fetch_add(1, Ordering::Relaxed);
        b.micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn seconds(&self) -> f64 {
        self.0.micros.load(Ordering::Relaxed) as f64 / 1e6
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.0.slots.iter().map(|n| n.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' sum, so `+Inf` and `_count` always agree.
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(self.seconds(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The seconds a histogram observed in all, as a counter.
#[derive(Debug)]
struct SumOf(Histogram);

impl EncodeMetric for SumOf {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        encoder.encode_counter::<NoLabelSet, f64, f64>(&self.0.seconds(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Counters the API updates as it serves.
#[derive(Debug)]
pub struct Metrics {
    /// Granted claims' time in the store.
    claim: Histogram,
    /// Jobs' time from queued to leased.
    dispatch: Histogram,
    claims_granted: Counter,
    claims_empty: Counter,
    completions: Counter,
    stale_completions: Counter,
    leases_expired: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            claim: Histogram::new(&CLAIM_BUCKETS),
            dispatch: Histogram::new(&DISPATCH_BUCKETS),
            claims_granted: Counter::default(),
            claims_empty: Counter::default(),
            completions: Counter::default(),
            stale_completions: Counter::default(),
            leases_expired: Counter::default(),
        }
    }
}

/// The text formats `/metrics` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus text format 0.0.4: what a scraper that does not ask for
    /// OpenMetrics gets.
    Text004,
}

impl Format {
    /// OpenMetrics when the request's `Accept` names it.
    pub fn accepted(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text004,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text004 => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

impl Metrics {
    /// A claim got a job: `took` in the store, `waited` since the job was queued.
    pub fn claim_granted(&self, took: Duration, waited: Duration) {
        self.claims_granted.inc();
        self.claim.observe(took);
        self.dispatch.observe(waited);
    }
    pub fn claim_empty(&self) {
        self.claims_empty.inc();
    }
    pub fn completed(&self) {
        self.completions.inc();
    }
    pub fn stale_completion(&self) {
        self.stale_completions.inc();
    }
    pub fn leases_expired(&self, n: usize) {
        self.leases_expired.inc_by(n as u64);
    }

    /// The whole exposition: these counters and what was read for this scrape.
    pub fn render(&self, scraped: Scraped, format: Format) -> String {
        let mut reg = Registry::default();
        CLAIMS_GRANTED.register(&mut reg, self.claims_granted.clone());
        CLAIMS_EMPTY.register(&mut reg, self.claims_empty.clone());
        CLAIM_STORE_SECONDS.register(&mut reg, SumOf(self.claim.clone()));
        CLAIM_SECONDS.register(&mut reg, self.claim.clone());
        DISPATCH_SECONDS.register(&mut reg, self.dispatch.clone());
        COMPLETIONS.register(&mut reg, self.completions.clone());
        STALE_COMPLETIONS.register(&mut reg, self.stale_completions.clone());
        LEASES_EXPIRED.register(&mut reg, self.leases_expired.clone());
        reg.register_collector(Box::new(scraped));
        let mut out = String::with_capacity(8192);
        let written = match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &reg),
            Format::Text004 => prometheus_client::encoding::prometheus_text::encode(&mut out, &reg),
        };
        // Writing to a String fails only if an encoder refuses its input,
        // which these fixed families never give it.
        if let Err(e) = written {
            tracing::error!("cannot encode /metrics: {e}");
        }
        out
    }
}

/// The model fabric as `/metrics` shows it.
#[derive(Debug, Default)]
pub struct FabricView {
    /// Requests waiting, per configured model; empty without models.
    pub waiting: Vec<(String, usize)>,
    /// (model, place, serving) of each model server.
    pub instances: Vec<(String, String, bool)>,
    /// Servers started and ready, by model.
    pub starts: BTreeMap<String, u64>,
}

impl FabricView {
    pub fn of(fabric: &crate::fabric::control::Fabric) -> FabricView {
        FabricView {
            waiting: fabric.pool.waiting_all(),
            instances: fabric.pool.instances(),
            starts: fabric.starts(),
        }
    }
}

/// What `/metrics` reads when scraped.
#[derive(Debug, Default)]
pub struct Scraped {
    pub counts: Counts,
    pub writer: WriterStats,
    /// Online agents.
    pub agents: Vec<AgentView>,
    pub inbox: Vec<InboxItem>,
    /// The gateway's accounting by model.
    pub models: BTreeMap<String, Usage>,
    pub fabric: FabricView,
}

fn n(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Collector for Scraped {
    fn encode(&self, mut out: DescriptorEncoder<'_>) -> fmt::Result {
        let out = &mut out;
        let c = &self.counts;
        let by_state = |rows: &[(String, i64)]| {
            rows.iter()
                .map(|(s, v)| ([s.clone()], n(*v)))
                .collect::<Vec<_>>()
        };
        RUNS.write(out, by_state(&c.runs))?;
        STAGES.write(out, by_state(&c.stages))?;
        JOBS.write(out, by_state(&c.jobs))?;
        AGENTS.write(out, [([], n(c.agents))])?;
        TRANSITIONS.write(out, [([], n(c.transitions))])?;
        RETRIES.write(
            out,
            c.retries.iter().map(|(class, v)| ([class.clone()], n(*v))),
        )?;

        let w = &self.writer;
        STORE_BATCHES.write(out, [([], w.batches)])?;
        STORE_COMMANDS.write(out, [([], w.commands)])?;
        STORE_BATCH_MAX.write(out, [([], w.max_batch)])?;
        STORE_COMMIT_SECONDS.write(out, [([], w.commit_micros as f64 / 1e6)])?;
        STORE_FAILED_BATCHES.write(out, [([], w.failed_batches)])?;

        let agent =
            |f: fn(&AgentView) -> u64| self.agents.iter().map(move |a| ([a.name.clone()], f(a)));
        AGENT_SLOTS.write(out, agent(|a| u64::from(a.slots)))?;
        AGENT_SLOTS_USED.write(out, agent(|a| u64::from(a.running)))?;
        AGENT_SLOTS_FREE.write(out, agent(|a| u64::from(a.free.slots)))?;
        AGENT_MEMORY_MB.write(out, agent(|a| a.memory_mb))?;
        AGENT_MEMORY_FREE_MB.write(out, agent(|a| a.free.memory_mb))?;
        AGENT_GPU_MEMORY_FREE_MB.write(
            out,
            self.agents.iter().flat_map(|a| {
                a.free
                    .gpus
                    .iter()
                    .map(|g| ([a.name.clone(), g.index.to_string()], g.free_mb))
            }),
        )?;
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        for i in &self.inbox {
            let kind = serde_json::to_value(i.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *by_kind.entry(kind).or_default() += 1;
        }
        INBOX_ITEMS.write(out, by_kind.into_iter().map(|(k, v)| ([k], v)))?;

        // Only where models are served.
        if !self.models.is_empty() {
            let model =
                |f: fn(&Usage) -> u64| self.models.iter().map(move |(m, u)| ([m.clone()], f(u)));
            MODEL_REQUESTS.write(out, model(|u| u.requests))?;
            MODEL_TOKENS.write(
                out,
                self.models.iter().flat_map(|(m, u)| {
                    [
                        ([m.clone(), "in".to_owned()], u.prompt_tokens),
                        ([m.clone(), "out".to_owned()], u.completion_tokens),
                    ]
                }),
            )?;
            let seconds = |f: fn(&Usage) -> u64| {
                self.models
                    .iter()
                    .map(move |(m, u)| ([m.clone()], f(u) as f64 / 1e3))
            };
            MODEL_QUEUE_WAIT_SECONDS.write(out, seconds(|u| u.queue_wait_ms))?;
            MODEL_LATENCY_SECONDS.write(out, seconds(|u| u.latency_ms))?;
        }
        let f = &self.fabric;
        if !f.waiting.is_empty() {
            MODEL_REQUESTS_WAITING
                .write(out, f.waiting.iter().map(|(m, w)| ([m.clone()], *w as u64)))?;
            MODEL_INSTANCES.write(
                out,
                f.instances.iter().map(|(m, place, serving)| {
                    ([m.clone(), place.clone(), serving.to_string()], 1u64)
                }),
            )?;
            MODEL_STARTS.write(
                out,
                f.waiting
                    .iter()
                    .map(|(m, _)| ([m.clone()], f.starts.get(m).copied().unwrap_or(0))),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
