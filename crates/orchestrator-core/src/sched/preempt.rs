//! Cooperative pre-emption: which running stages to ask to yield at their
//! next checkpoint so that waiting higher-priority work can be placed.
//!
//! Nothing is ever stopped here: a victim finishes its current step,
//! checkpoints and is suspended; only then is its slot free. The planner
//! therefore counts what victims already asked will free (`yielding`) before
//! asking anyone else, and asks for as little as it can: the agent needing
//! the fewest victims, lowest priorities first.

use serde::{Deserialize, Serialize};

use super::policy::SystemRules;
use super::resources::{free, Capacity, Free, Grant, Needs};
use crate::ids::{AgentId, JobId};

/// A job running on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningJob {
    pub job_id: JobId,
    /// `run/stage`, for the reason.
    pub stage: String,
    pub priority: i32,
    pub grant: Grant,
    /// Already asked to yield at its next checkpoint.
    pub yielding: bool,
}

/// An agent with what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub id: AgentId,
    pub cap: Capacity,
    pub running: Vec<RunningJob>,
}

/// A queued job that may deserve a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub job_id: JobId,
    pub stage: String,
    pub priority: i32,
    pub needs: Needs,
    /// The agent its stage is pinned to, if it started somewhere already.
    pub pinned: Option<AgentId>,
}

/// Ask these jobs on `agent` to yield at their next checkpoint, for `for_job`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct YieldOrder {
    pub agent: AgentId,
    pub victims: Vec<JobId>,
    pub for_job: JobId,
    /// Why, as a person reads it.
    pub reason: String,
}

struct Sim<'a> {
    agent: &'a AgentState,
    /// Free now.
    now: Free,
    /// Free once every yielding job has yielded.
    later: Free,
    yielding: Vec<bool>,
}

/// A way to place one waiting job: the agent (its index among the sims),
/// the victims there (indices into its running jobs), what it has free
/// once they yielded, and its cost (victims, sum of their priorities).
type Candidate = (usize, Vec<usize>, Free, (usize, i64));

/// Plans the yields for `waiting` (any order; served by priority, highest
/// first) over `agents`. Deterministic: equal inputs, equal orders.
pub fn plan_preemption(
    waiting: &[Waiting],
    agents: &[AgentState],
    rules: &SystemRules,
) -> Vec<YieldOrder> {
    let mut sims: Vec<Sim<'_>> = agents
        .iter()
        .map(|a| {
            let mut cap = a.cap.clone();
            cap.slots = rules.agent_slots(cap.slots);
            let now = free(&cap, a.running.iter().map(|r| &r.grant));
            let mut later = now.clone();
            for r in a.running.iter().filter(|r| r.yielding) {
                later.give(&r.grant);
            }
            Sim {
                agent: a,
                now,
                later,
                yielding: a.running.iter().map(|r| r.yielding).collect(),
            }
        })
        .collect();
    let mut order: Vec<&Waiting> = waiting.iter().collect();
    order.sort_by_key(|w| std::cmp::Reverse(w.priority));
    let mut out = Vec::new();
    for w in order {
        let eligible = |s: &Sim<'_>| w.pinned.as_ref().is_none_or(|p| *p == s.agent.id);
        // Placeable now: an agent will claim it; count it as taken.
        if let Some(s) = sims
            .iter_mut()
            .find(|s| eligible(s) && placeable(w, &s.agent.cap.labels, &s.now, rules).is_some())
        {
            if let Some(g) = placeable(w, &s.agent.cap.labels, &s.now, rules) {
                s.now.take(&g);
                s.later.take(&g);
            }
            continue;
        }
        // Placeable once the yields already asked for happen.
        if let Some(s) = sims
            .iter_mut()
            .find(|s| eligible(s) && placeable(w, &s.agent.cap.labels, &s.later, rules).is_some())
        {
            if let Some(g) = placeable(w, &s.agent.cap.labels, &s.later, rules) {
                s.later.take(&g);
            }
            continue;
        }
        // Otherwise: the cheapest set of lower-priority victims on one agent.
        let mut best: Option<Candidate> = None;
        for (si, s) in sims.iter().enumerate().filter(|(_, s)| eligible(s)) {
            let mut cands: Vec<usize> = (0..s.agent.running.len())
                .filter(|&i| !s.yielding[i] && s.agent.running[i].priority < w.priority)
                .collect();
            cands.sort_by_key(|&i| {
                let r = &s.agent.running[i];
                (r.priority, std::cmp::Reverse(r.job_id))
            });
            let mut f = s.later.clone();
            let mut chosen = Vec::new();
            let mut done = false;
            for i in cands {
                f.give(&s.agent.running[i].grant);
                chosen.push(i);
                if placeable(w, &s.agent.cap.labels, &f, rules).is_some() {
                    done = true;
                    break;
                }
            }
            if !done {
                continue;
            }
            // Lowest first may have taken victims that free nothing the job
            // lacks (a CPU job when it waits for a GPU). Drop every victim it
            // fits without, the highest priorities first, so nobody yields in
            // vain. The last one taken is always needed.
            let freed = |set: &[usize]| {
                let mut f = s.later.clone();
                for &i in set {
                    f.give(&s.agent.running[i].grant);
                }
                f
            };
            for k in (0..chosen.len().saturating_sub(1)).rev() {
                let mut fewer = chosen.clone();
                fewer.remove(k);
                if placeable(w, &s.agent.cap.labels, &freed(&fewer), rules).is_some() {
                    chosen = fewer;
                }
            }
            let f = freed(&chosen);
            let score = (
                chosen.len(),
                chosen
                    .iter()
                    .map(|&i| i64::from(s.agent.running[i].priority))
                    .sum::<i64>(),
            );
            if best.as_ref().is_none_or(|b| score < b.3) {
                best = Some((si, chosen, f, score));
            }
        }
        let Some((si, chosen, mut f, _)) = best else {
            continue;
        };
        let s = &mut sims[si];
        if let Some(g) = placeable(w, &s.agent.cap.labels, &f, rules) {
            f.take(&g);
        }
        s.later = f;
        let mut victims = Vec::new();
        let mut names = Vec::new();
        for i in chosen {
            s.yielding[i] = true;
            let r = &s.agent.running[i];
            victims.push(r.job_id);
            names.push(format!("{} (priority {})", r.stage, r.priority));
        }
        out.push(YieldOrder {
            agent: s.agent.id.clone(),
            victims,
            for_job: w.job_id,
            reason: format!(
                "{} (priority {}, needs {}) cannot be placed; asked {} on agent {} to yield at the next checkpoint",
                w.stage,
                w.priority,
                w.needs,
                names.join(", "),
                s.agent.id
            ),
        });
    }
    out
}

/// The grant `w` would get on an agent with `labels` and `f` free, if the
/// reserve rule lets it have one.
fn placeable(w: &Waiting, labels: &[String], f: &Free, rules: &SystemRules) -> Option<Grant> {
    rules.place(&w.needs, labels, f, w.priority).ok()
}
