//! Why a queued step is not running yet, agent by agent, in words.

use super::policy::SystemRules;
use super::resources::{Free, Misfit, Needs};

/// An agent as `orch explain` weighs it.
#[derive(Debug, Clone)]
pub struct AgentFit<'a> {
    pub name: &'a str,
    pub labels: &'a [String],
    pub free: &'a Free,
    /// Heard from recently.
    pub online: bool,
}

/// How a step needing `needs` at `priority` fares on each agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It fits on these agents now: one claims it at its next poll.
    FitsNow(Vec<String>),
    /// It waits for capacity; each agent with its reason.
    Waits(Vec<(String, Misfit)>),
    /// No agent could ever run it; each with its reason.
    Never(Vec<(String, Misfit)>),
    /// No agent is registered (or pinned agent gone).
    NoAgents,
}

/// Weighs every online agent (only `pinned` when given).
pub fn verdict(
    needs: &Needs,
    priority: i32,
    pinned: Option<&str>,
    agents: &[AgentFit<'_>],
    rules: &SystemRules,
) -> Verdict {
    let mut fits = Vec::new();
    let mut waits = Vec::new();
    let mut never = Vec::new();
    for a in agents
        .iter()
        .filter(|a| a.online && pinned.is_none_or(|p| p == a.name))
    {
        match rules.place(needs, a.labels, a.free, priority) {
            Ok(_) => fits.push(a.name.to_owned()),
            Err(m) if m.is_permanent() => never.push((a.name.to_owned(), m)),
            Err(m) => waits.push((a.name.to_owned(), m)),
        }
    }
    if !fits.is_empty() {
        Verdict::FitsNow(fits)
    } else if !waits.is_empty() {
        Verdict::Waits(waits)
    } else if !never.is_empty() {
        Verdict::Never(never)
    } else {
        Verdict::NoAgents
    }
}

/// Lines for people, at most `max` agents named.
pub fn describe(v: &Verdict, max: usize) -> Vec<String> {
    let list = |items: &[(String, Misfit)]| {
        let mut lines: Vec<String> = items
            .iter()
            .take(max)
            .map(|(a, m)| format!("  agent {a}: {m}"))
            .collect();
        if items.len() > max {
            let more = items.len() - max;
            lines.push(format!(
                "  ... and {more} more agent{}",
                if more == 1 { "" } else { "s" }
            ));
        }
        lines
    };
    match v {
        Verdict::FitsNow(a) => vec![format!(
            "fits now on {}; an agent claims it at its next poll",
            name_list(a, max)
        )],
        Verdict::Waits(items) => {
            let mut out = vec![format!(
                "waits for capacity on {} agent{}:",
                items.len(),
                if items.len() == 1 { "" } else { "s" }
            )];
            out.extend(list(items));
            out
        }
        Verdict::Never(items) => {
            let mut out = vec!["no registered agent could ever run it:".to_owned()];
            out.extend(list(items));
            out
        }
        Verdict::NoAgents => vec!["no agent is online to run it".to_owned()],
    }
}

fn name_list(names: &[String], max: usize) -> String {
    let mut s = names
        .iter()
        .take(max)
        .map(|n| format!("agent {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > max {
        s += &format!(" and {} more", names.len() - max);
    }
    s
}
