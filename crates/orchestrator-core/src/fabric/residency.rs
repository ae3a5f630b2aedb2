//! Which model instances should be resident where: a function from the
//! places' memory budgets, the instances there and the queues' demand to
//! the starts, stops and drains that bring them closer to what is needed.
//!
//! Rules:
//! - a model with waiting requests and no instance is started on a place it
//!   may run on, in order of urgency (the [`super::queue::request_key`] of
//!   its most urgent waiting request: lower is more urgent, and it ages);
//! - an idle instance with no demand is stopped once idle past `idle_stop`;
//! - when memory is short, idle instances of less urgent models (or of
//!   models with no waiting request) are stopped to make room; a busy one is
//!   never stopped, only drained: the gateway sends it no new request until
//!   it is idle, and a later decision stops it, so requests are never cut off
//!   and models that do not fit together alternate at request boundaries as
//!   their oldest waiting requests age past each other;
//! - `switch_ms` keeps a resident model that still has waiting requests
//!   from being displaced until the other model's most urgent request is
//!   more urgent by more than that (in key terms: has waited that much
//!   longer at equal priority), so two models that do not fit together
//!   take turns of about `switch_ms` instead of reloading at every request;
//! - a drain holds for the latest decision only: an instance that a decision
//!   does not name again takes requests again;
//! - starts never take a place past its budget, counting the stops of the
//!   same decision as done (the daemon applies stops before starts).
//!
//! Only models the fabric runs itself belong here; external ones hold no
//! memory and are always available.

use std::collections::{BTreeMap, HashSet};

/// A place models run on (an agent, or a GPU of one) and its memory budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceBudget {
    pub place: String,
    pub budget_mib: u64,
}

/// What residency needs to know of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFootprint {
    pub model: String,
    pub memory_mib: u64,
    /// Places it may run on, in order of preference.
    pub places: Vec<String>,
    pub idle_stop_ms: Option<u64>,
}

/// An instance's state as the daemon sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// Started, not yet answering.
    Starting,
    /// No request in flight since `since_ms`.
    Idle { since_ms: i64 },
    /// Requests in flight.
    Busy { in_flight: u32 },
}

/// A model instance on a place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub model: String,
    pub place: String,
    pub state: InstanceState,
}

/// A model's waiting requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub waiting: u32,
    /// The key of its most urgent waiting request (lower is more urgent).
    pub best_key: i64,
}

/// What the daemon should do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Stop {
        model: String,
        place: String,
    },
    Start {
        model: String,
        place: String,
    },
    /// Send this busy instance no new request until the next decision.
    Drain {
        model: String,
        place: String,
    },
}

/// Whether `model` can ever be resident on `place`: it may run there and
/// its footprint fits the budget. Where a stage with `model:` may be placed.
pub fn can_be_resident(model: &ModelFootprint, place: &PlaceBudget) -> bool {
    model.places.contains(&place.place) && model.memory_mib <= place.budget_mib
}

/// The decision for now; stops first, then starts, then drains. See the
/// module's rules; `switch_ms` is the hysteresis between models that
/// displace each other.
pub fn decide(
    now_ms: i64,
    places: &[PlaceBudget],
    models: &[ModelFootprint],
    instances: &[Instance],
    demand: &BTreeMap<String, Demand>,
    switch_ms: u64,
) -> Vec<Action> {
    let switch = i64::try_from(switch_ms).unwrap_or(i64::MAX);
    let model = |name: &str| models.iter().find(|m| m.model == name);
    let mem = |name: &str| model(name).map_or(0, |m| m.memory_mib);
    let urgency = |name: &str| {
        demand
            .get(name)
            .filter(|d| d.waiting > 0)
            .map_or(i64::MAX, |d| d.best_key)
    };
    let budget: BTreeMap<&str, u64> = places
        .iter()
        .map(|p| (p.place.as_str(), p.budget_mib))
        .collect();
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    for i in instances {
        *used.entry(i.place.as_str()).or_default() += mem(&i.model);
    }
    let mut stopped: HashSet<usize> = HashSet::new();
    let mut stops = Vec::new();
    let mut starts = Vec::new();
    let mut drains = Vec::new();

    // Idle past idle_stop with nothing waiting.
    for (n, i) in instances.iter().enumerate() {
        if let (InstanceState::Idle { since_ms }, Some(m)) = (i.state, model(&i.model)) {
            let expired = m.idle_stop_ms.is_some_and(|d| {
                now_ms.saturating_sub(since_ms) >= i64::try_from(d).unwrap_or(i64::MAX)
            });
            if expired && urgency(&i.model) == i64::MAX {
                stopped.insert(n);
                let u = used.entry(i.place.as_str()).or_default();
                *u = u.saturating_sub(m.memory_mib);
                stops.push((i.model.clone(), i.place.clone()));
            }
        }
    }

    // Models waiting with no instance, most urgent first.
    let mut needy: Vec<(&ModelFootprint, i64)> = demand
        .iter()
        .filter(|(_, d)| d.waiting > 0)
        .filter_map(|(name, d)| model(name).map(|m| (m, d.best_key)))
        .filter(|(m, _)| !instances.iter().any(|i| i.model == m.model))
        .collect();
    needy.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.model.cmp(&b.0.model)));
    let mut reserved: HashSet<&str> = HashSet::new();

    for (m, key) in needy {
        let fits: Vec<&str> = m
            .places
            .iter()
            .map(String::as_str)
            .filter(|p| budget.get(p).is_some_and(|b| *b >= m.memory_mib))
            .filter(|p| !reserved.contains(p))
            .collect();
        // Room already.
        if let Some(p) = fits.iter().find(|p| {
            budget[**p].saturating_sub(used.get(**p).copied().unwrap_or(0)) >= m.memory_mib
        }) {
            *used.entry(p).or_default() += m.memory_mib;
            starts.push((m.model.clone(), p.to_string()));
            continue;
        }
        // Room by stopping less urgent idle instances, or later by draining
        // less urgent busy ones.
        let mut plan: Option<(&str, Vec<usize>, Vec<usize>)> = None;
        for p in &fits {
            let free = budget[*p].saturating_sub(used.get(*p).copied().unwrap_or(0));
            let mut victims: Vec<usize> = instances
                .iter()
                .enumerate()
                .filter(|(n, i)| i.place == *p && !stopped.contains(n))
                .filter(|(_, i)| {
                    let u = urgency(&i.model);
                    u == i64::MAX || u > key.saturating_add(switch)
                })
                .filter(|(_, i)| !matches!(i.state, InstanceState::Starting))
                .map(|(n, _)| n)
                .collect();
            // Least urgent first; idle before busy at equal urgency.
            victims.sort_by_key(|n| {
                let i = &instances[*n];
                let busy = matches!(i.state, InstanceState::Busy { .. });
                (std::cmp::Reverse(urgency(&i.model)), busy, *n)
            });
            let (mut idle, mut busy, mut gained) = (Vec::new(), Vec::new(), 0u64);
            for n in victims {
                if free + gained >= m.memory_mib {
                    break;
                }
                gained += mem(&instances[n].model);
                match instances[n].state {
                    InstanceState::Idle { .. } => idle.push(n),
                    _ => busy.push(n),
                }
            }
            if free + gained < m.memory_mib {
                continue;
            }
            let better = match &plan {
                None => true,
                Some((_, _, b)) => !b.is_empty() && busy.is_empty(),
            };
            if better {
                plan = Some((p, idle, busy));
            }
            if plan.as_ref().is_some_and(|(_, _, b)| b.is_empty()) {
                break;
            }
        }
        let Some((p, idle, busy)) = plan else {
            continue;
        };
        if busy.is_empty() {
            for n in idle {
                let i = &instances[n];
                stopped.insert(n);
                let u = used.entry(p).or_default();
                *u = u.saturating_sub(mem(&i.model));
                stops.push((i.model.clone(), i.place.clone()));
            }
            *used.entry(p).or_default() += m.memory_mib;
            starts.push((m.model.clone(), p.to_owned()));
        } else {
            // Wait for the busy ones to finish; keep the place for this model.
            for n in busy {
                drains.push((instances[n].model.clone(), instances[n].place.clone()));
            }
            reserved.insert(p);
        }
    }

    let stops = stops
        .into_iter()
        .map(|(model, place)| Action::Stop { model, place });
    let starts = starts
        .into_iter()
        .map(|(model, place)| Action::Start { model, place });
    let drains = drains
        .into_iter()
        .map(|(model, place)| Action::Drain { model, place });
    stops.chain(starts).chain(drains).collect()
}

#[cfg(test)]
#[path = "residency_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "residency_sim.rs"]
mod sim;
