//! Accounting of model calls: per run, stage and model, how many requests,
//! how many tokens in and out, and how long they waited and took. Records
//! add up; a [`UsageSummary`] is what manifests, `orch show` and the
//! metrics carry, as JSON.

use crate::ids::RunId;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one finished (or failed) request cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub queue_wait_ms: u64,
    pub latency_ms: u64,
}

/// Totals of some requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Sum over the requests.
    pub queue_wait_ms: u64,
    /// Sum over the requests.
    pub latency_ms: u64,
    /// The longest single wait and latency.
    #[serde(default)]
    pub max_queue_wait_ms: u64,
    #[serde(default)]
    pub max_latency_ms: u64,
}

impl Usage {
    /// Counts one request.
    pub fn record(&mut self, r: RequestUsage) {
        self.add(&Usage {
            requests: 1,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            queue_wait_ms: r.queue_wait_ms,
            latency_ms: r.latency_ms,
            max_queue_wait_ms: r.queue_wait_ms,
            max_latency_ms: r.latency_ms,
        });
    }

    /// Adds another total to this one (saturating).
    pub fn add(&mut self, o: &Usage) {
        self.requests = self.requests.saturating_add(o.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(o.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(o.completion_tokens);
        self.queue_wait_ms = self.queue_wait_ms.saturating_add(o.queue_wait_ms);
        self.latency_ms = self.latency_ms.saturating_add(o.latency_ms);
        self.max_queue_wait_ms = self.max_queue_wait_ms.max(o.max_queue_wait_ms);
        self.max_latency_ms = self.max_latency_ms.max(o.max_latency_ms);
    }

    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// Mean queue wait per request, 0 with no requests.
    pub fn mean_queue_wait_ms(&self) -> u64 {
        self.queue_wait_ms.checked_div(self.requests).unwrap_or(0)
    }

    /// Mean latency per request, 0 with no requests.
    pub fn mean_latency_ms(&self) -> u64 {
        self.latency_ms.checked_div(self.requests).unwrap_or(0)
    }
}

/// Whose requests a total counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UsageKey {
    pub run: RunId,
    pub stage: String,
    pub model: String,
}

/// The usage ledger: totals per (run, stage, model).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageLedger {
    rows: BTreeMap<UsageKey, Usage>,
}

impl UsageLedger {
    pub fn record(&mut self, run: &RunId, stage: &str, model: &str, r: RequestUsage) {
        let key = UsageKey {
            run: run.clone(),
            stage: stage.into(),
            model: model.into(),
        };
        self.rows.entry(key).or_default().record(r);
    }

    /// Adds a total to the row of `key`: a stored row read back.
    pub fn add(&mut self, key: UsageKey, u: &Usage) {
        self.rows.entry(key).or_default().add(u);
    }

    /// Adds another ledger's rows to this one.
    pub fn merge(&mut self, other: &UsageLedger) {
        for (k, u) in &other.rows {
            self.rows.entry(k.clone()).or_default().add(u);
        }
    }

    pub fn get(&self, run: &RunId, stage: &str, model: &str) -> Option<&Usage> {
        self.rows.get(&UsageKey {
            run: run.clone(),
            stage: stage.into(),
            model: model.into(),
        })
    }

    /// The totals of one run, by stage and by model.
    pub fn summary(&self, run: &RunId) -> UsageSummary {
        let mut s = UsageSummary::default();
        for (k, u) in self.rows.iter().filter(|(k, _)| k.run == *run) {
            s.total.add(u);
            s.by_model.entry(k.model.clone()).or_default().add(u);
            s.by_stage
                .entry(k.stage.clone())
                .or_default()
                .entry(k.model.clone())
                .or_default()
                .add(u);
        }
        s
    }

    /// Every row, in (run, stage, model) order: for the metrics.
    pub fn rows(&self) -> impl Iterator<Item = (&UsageKey, &Usage)> {
        self.rows.iter()
    }
}

/// One run's model usage, as manifests and `orch show` carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageSummary {
    pub total: Usage,
    /// Model name to its totals over the run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_model: BTreeMap<String, Usage>,
    /// Stage name to model name to totals.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_stage: BTreeMap<String, BTreeMap<String, Usage>>,
}

impl UsageSummary {
    /// Adds another summary (e.g. of a retried attempt) to this one.
    pub fn merge(&mut self, o: &UsageSummary) {
        self.total.add(&o.total);
        for (m, u) in &o.by_model {
            self.by_model.entry(m.clone()).or_default().add(u);
        }
        for (st, models) in &o.by_stage {
            let mine = self.by_stage.entry(st.clone()).or_default();
            for (m, u) in models {
                mine.entry(m.clone()).or_default().add(u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(p: u64, c: u64, w: u64, l: u64) -> RequestUsage {
        RequestUsage {
            prompt_tokens: p,
            completion_tokens: c,
            queue_wait_ms: w,
            latency_ms: l,
        }
    }

    #[test]
    fn records_and_summarises_per_stage_and_model() {
        let mut l = UsageLedger::default();
        l.record(&RunId::from("r1"), "build", "qwen", req(100, 20, 5, 300));
        l.record(&RunId::from("r1"), "build", "qwen", req(50, 10, 15, 100));
        l.record(&RunId::from("r1"), "review", "llama", req(10, 1, 0, 50));
        l.record(&RunId::from("r2"), "build", "qwen", req(1, 1, 1, 1));
        let u = l.get(&RunId::from("r1"), "build", "qwen").unwrap();
        assert_eq!(
            (u.requests, u.prompt_tokens, u.completion_tokens),
            (2, 150, 30)
        );
        assert_eq!((u.queue_wait_ms, u.max_queue_wait_ms), (20, 15));
        assert_eq!((u.mean_latency_ms(), u.max_latency_ms), (200, 300));
        let s = l.summary(&RunId::from("r1"));
        assert_eq!(s.total.requests, 3);
        assert_eq!(s.total.total_tokens(), 191);
        assert_eq!(s.by_model["qwen"].requests, 2);
        assert_eq!(s.by_stage["review"]["llama"].latency_ms, 50);
        assert_eq!(l.summary(&RunId::from("nope")), UsageSummary::default());
        assert_eq!(Usage::default().mean_queue_wait_ms(), 0);
    }

    #[test]
    fn summary_json_round_trips() {
        let mut l = UsageLedger::default();
        l.record(&RunId::from("r"), "s", "m", req(3, 4, 5, 6));
        let s = l.summary(&RunId::from("r"));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["total"]["prompt_tokens"], 3);
        assert_eq!(json["by_stage"]["s"]["m"]["latency_ms"], 6);
        let back: UsageSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        let empty = serde_json::to_string(&UsageSummary::default()).unwrap();
        assert!(!empty.contains("by_model"), "{empty}");
    }

    /// (stage, model, (prompt, completion, wait, latency)).
    type Req = (u8, u8, (u64, u64, u64, u64));

    fn reqs() -> impl Strategy<Value = Vec<Req>> {
        proptest::collection::vec(
            (
                0u8..3,
                0u8..3,
                (0u64..1000, 0u64..1000, 0u64..1000, 0u64..1000),
            ),
            0..40,
        )
    }

    proptest! {
        /// Recording in two ledgers and merging equals recording in one; a
        /// summary's total is the sum of its stages and of its models.
        #[test]
        fn merge_is_recording_together(a in reqs(), b in reqs()) {
            let put = |l: &mut UsageLedger, rs: &[Req]| {
                for (s, m, (p, c, w, lat)) in rs {
                    l.record(&RunId::from("r"), &format!("s{s}"), &format!("m{m}"), req(*p, *c, *w, *lat));
                }
            };
            let (mut la, mut lb, mut both) = Default::default();
            put(&mut la, &a);
            put(&mut lb, &b);
            put(&mut both, &a);
            put(&mut both, &b);
            let (sa, sb) = (la.summary(&RunId::from("r")), lb.summary(&RunId::from("r")));
            la.merge(&lb);
            prop_assert_eq!(&la, &both);
            let mut s = sa;
            s.merge(&sb);
            prop_assert_eq!(&s, &both.summary(&RunId::from("r")));
            let mut by_model = Usage::default();
            s.by_model.values().for_each(|u| by_model.add(u));
            prop_assert_eq!(by_model, s.total);
            let mut by_stage = Usage::default();
            s.by_stage.values().flat_map(|m| m.values()).for_each(|u| by_stage.add(u));
            prop_assert_eq!(by_stage, s.total);
            prop_assert_eq!(s.total.requests as usize, a.len() + b.len());
        }
    }
}
