//! Simulations of residency over time: models that do not fit together
//! take turns, and none starves.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;

use super::tests::{inst, model, place, start, stop, wants};
use super::*;

#[test]
fn models_that_do_not_fit_together_alternate() {
    let (served, swaps) = alternate(0);
    assert!(served.0 > 100 && served.1 > 100, "{served:?}");
    let (served_h, swaps_h) = alternate(10_000);
    assert!(served_h.0 > 100 && served_h.1 > 100, "{served_h:?}");
    // Hysteresis makes turns longer: far fewer reloads.
    assert!(
        swaps_h * 5 < swaps,
        "{swaps_h} swaps with hysteresis, {swaps} without"
    );
}

#[test]
fn hysteresis_keeps_a_resident_model_with_close_demand() {
    let places = [place("a", 10_000)];
    let models = [
        model("x", 6000, &["a"], None),
        model("y", 6000, &["a"], None),
    ];
    let res = [inst("x", "a", InstanceState::Idle { since_ms: 0 })];
    let w = wants(&[("x", 1, 100), ("y", 1, 50)]);
    assert!(super::decide(0, &places, &models, &res, &w, 60).is_empty());
    assert_eq!(
        super::decide(0, &places, &models, &res, &w, 40),
        vec![stop("x", "a"), start("y", "a")]
    );
    // A resident model with nothing waiting is displaced whatever the hysteresis.
    let w = wants(&[("y", 1, 50)]);
    assert_eq!(
        super::decide(0, &places, &models, &res, &w, 1_000_000).len(),
        2
    );
}

/// Simulates two models that do not fit together, both always wanted:
/// (requests served of each, model starts).
fn alternate(switch_ms: u64) -> ((u32, u32), u32) {
    let mut swaps = 0u32;
    let aging = 1000u64;
    let places = [place("gpu", 10_000)];
    let models = [
        model("a", 6000, &["gpu"], None),
        model("b", 6000, &["gpu"], None),
    ];
    // Each model's queue: enqueue times of waiting requests.
    let mut queues: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut instances: Vec<Instance> = Vec::new();
    let mut served: BTreeMap<&str, u32> = BTreeMap::new();
    let mut in_flight: Option<(&str, i64)> = None; // model, finishes at
    for now in (0..200_000i64).step_by(100) {
        // Steady arrivals for both.
        if now % 500 == 0 {
            queues.entry("a").or_default().push(now);
            queues.entry("b").or_default().push(now);
        }
        if let Some((m, until)) = in_flight {
            if now >= until {
                in_flight = None;
                for i in instances.iter_mut().filter(|i| i.model == m) {
                    i.state = InstanceState::Idle { since_ms: now };
                }
            }
        }
        let demand: BTreeMap<String, Demand> = queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(m, q)| {
                let best_key = super::super::queue::request_key(0, q[0], aging);
                (
                    m.to_string(),
                    Demand {
                        waiting: q.len() as u32,
                        best_key,
                    },
                )
            })
            .collect();
        let acts = super::decide(now, &places, &models, &instances, &demand, switch_ms);
        let mut draining = HashSet::new();
        for a in &acts {
            match a {
                Action::Stop { model, .. } => instances.retain(|i| &i.model != model),
                Action::Start { model, place } => {
                    swaps += 1;
                    instances.push(Instance {
                        model: model.clone(),
                        place: place.clone(),
                        // Loading takes no time in this simulation.
                        state: InstanceState::Idle { since_ms: now },
                    })
                }
                Action::Drain { model, .. } => {
                    draining.insert(model.clone());
                }
            }
        }
        let total: u64 = instances.iter().map(|_| 6000).sum();
        assert!(total <= 10_000);
        // Dispatch one request at a time to a resident idle, undrained model.
        if in_flight.is_none() {
            for i in instances.iter_mut() {
                let m: &str = if i.model == "a" { "a" } else { "b" };
                let q = queues.entry(m).or_default();
                if !q.is_empty() && !draining.contains(m) {
                    q.remove(0);
                    i.state = InstanceState::Busy { in_flight: 1 };
                    in_flight = Some((m, now + 300));
                    *served.entry(m).or_default() += 1;
                    break;
                }
            }
        }
    }
    // Neither waits unboundedly: the oldest waiting request is recent.
    for q in queues.values() {
        if let Some(oldest) = q.first() {
            assert!(200_000 - oldest < 60_000, "oldest waiting since {oldest}");
        }
    }
    ((served["a"], served["b"]), swaps)
}

/// Simulates models with steady demand on one place: each instance serves
/// one request at a time (300ms), requests arrive every 2s per model, so
/// even three models taking turns on one place are not overloaded.
/// Returns requests served per model and the longest any request waited.
fn simulate(mems: &[u64], prios: &[i32], budget: u64, switch_ms: u64) -> (Vec<u32>, i64) {
    let aging = 1000u64;
    let places = [place("p", budget)];
    let names: Vec<String> = (0..mems.len()).map(|n| format!("m{n}")).collect();
    let models: Vec<ModelFootprint> = mems
        .iter()
        .zip(&names)
        .map(|(m, n)| model(n, *m, &["p"], None))
        .collect();
    let mut queues: Vec<Vec<i64>> = vec![Vec::new(); mems.len()];
    let mut served = vec![0u32; mems.len()];
    let mut busy_until: Vec<Option<i64>> = vec![None; mems.len()];
    let mut instances: Vec<Instance> = Vec::new();
    let mut max_wait = 0i64;
    for now in (0..300_000i64).step_by(100) {
        for (n, q) in queues.iter_mut().enumerate() {
            if now % 2000 == 0 {
                q.push(now);
            }
            if busy_until[n].is_some_and(|u| now >= u) {
                busy_until[n] = None;
                for i in instances.iter_mut().filter(|i| i.model == names[n]) {
                    i.state = InstanceState::Idle { since_ms: now };
                }
            }
        }
        let demand: BTreeMap<String, Demand> = queues
            .iter()
            .enumerate()
            .filter(|(_, q)| !q.is_empty())
            .map(|(n, q)| {
                let best_key = super::super::queue::request_key(prios[n], q[0], aging);
                let waiting = q.len() as u32;
                (names[n].clone(), Demand { waiting, best_key })
            })
            .collect();
        let acts = super::decide(now, &places, &models, &instances, &demand, switch_ms);
        let mut draining = HashSet::new();
        for a in &acts {
            match a {
                Action::Stop { model, .. } => instances.retain(|i| &i.model != model),
                Action::Start { model, place } => {
                    instances.push(inst(model, place, InstanceState::Idle { since_ms: now }))
                }
                Action::Drain { model, .. } => {
                    draining.insert(model.clone());
                }
            }
        }
        let used: u64 = instances
            .iter()
            .map(|i| mems[names.iter().position(|n| *n == i.model).unwrap()])
            .sum();
        assert!(used <= budget);
        for i in instances.iter_mut() {
            let n = names.iter().position(|m| *m == i.model).unwrap();
            if busy_until[n].is_none() && !queues[n].is_empty() && !draining.contains(&i.model) {
                let at = queues[n].remove(0);
                max_wait = max_wait.max(now - at);
                served[n] += 1;
                busy_until[n] = Some(now + 300);
                i.state = InstanceState::Busy { in_flight: 1 };
            }
        }
    }
    for q in &queues {
        if let Some(at) = q.first() {
            max_wait = max_wait.max(300_000 - at);
        }
    }
    (served, max_wait)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// However memory and priorities fall, every model with steady demand
    /// is served and no request waits longer than its priority gap and the
    /// hysteresis allow (plus slack for the queue that built up).
    #[test]
    fn no_model_starves(
        mems in proptest::collection::vec(1000u64..10_000, 2..4),
        prios in proptest::collection::vec(-2i32..=2, 4),
        switch in 0u64..5000,
    ) {
        let (served, max_wait) = simulate(&mems, &prios[..mems.len()], 10_000, switch);
        prop_assert!(served.iter().all(|s| *s > 100), "{served:?}");
        // Priority gap at most 4 levels of 1000ms each.
        prop_assert!(max_wait < 30_000, "waited {max_wait}ms, served {served:?}");
    }
}
