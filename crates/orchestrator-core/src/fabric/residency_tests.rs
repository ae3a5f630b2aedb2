use super::*;
use proptest::prelude::*;

/// Without hysteresis, for the scenarios.
pub(super) fn decide(
    now_ms: i64,
    places: &[PlaceBudget],
    models: &[ModelFootprint],
    instances: &[Instance],
    demand: &BTreeMap<String, Demand>,
) -> Vec<Action> {
    super::decide(now_ms, places, models, instances, demand, 0)
}

pub(super) fn place(name: &str, budget_mib: u64) -> PlaceBudget {
    PlaceBudget {
        place: name.into(),
        budget_mib,
    }
}

pub(super) fn model(
    name: &str,
    memory_mib: u64,
    places: &[&str],
    idle_stop_ms: Option<u64>,
) -> ModelFootprint {
    ModelFootprint {
        model: name.into(),
        memory_mib,
        places: places.iter().map(|p| p.to_string()).collect(),
        idle_stop_ms,
    }
}

pub(super) fn inst(model: &str, place: &str, state: InstanceState) -> Instance {
    Instance {
        model: model.into(),
        place: place.into(),
        state,
    }
}

pub(super) fn wants(list: &[(&str, u32, i64)]) -> BTreeMap<String, Demand> {
    list.iter()
        .map(|(m, waiting, best_key)| {
            (
                m.to_string(),
                Demand {
                    waiting: *waiting,
                    best_key: *best_key,
                },
            )
        })
        .collect()
}

pub(super) fn start(m: &str, p: &str) -> Action {
    Action::Start {
        model: m.into(),
        place: p.into(),
    }
}
pub(super) fn stop(m: &str, p: &str) -> Action {
    Action::Stop {
        model: m.into(),
        place: p.into(),
    }
}
pub(super) fn drain(m: &str, p: &str) -> Action {
    Action::Drain {
        model: m.into(),
        place: p.into(),
    }
}

#[test]
fn starts_a_needed_model_where_it_fits() {
    let places = [place("a", 4000), place("b", 16000)];
    let models = [model("big", 8000, &["a", "b"], None)];
    let acts = decide(0, &places, &models, &[], &wants(&[("big", 1, 0)]));
    assert_eq!(acts, vec![start("big", "b")]);
    assert!(!can_be_resident(&models[0], &places[0]));
    assert!(can_be_resident(&models[0], &places[1]));
}

#[test]
fn nothing_without_demand_and_unknown_models_are_ignored() {
    let places = [place("a", 4000)];
    let models = [model("m", 1000, &["a"], None)];
    assert!(decide(0, &places, &models, &[], &wants(&[("m", 0, 0)])).is_empty());
    assert!(decide(0, &places, &models, &[], &wants(&[("x", 3, 0)])).is_empty());
}

#[test]
fn idle_past_idle_stop_is_stopped_unless_wanted() {
    let places = [place("a", 4000)];
    let models = [model("m", 1000, &["a"], Some(60_000))];
    let idle = [inst("m", "a", InstanceState::Idle { since_ms: 0 })];
    assert!(decide(59_999, &places, &models, &idle, &wants(&[])).is_empty());
    assert_eq!(
        decide(60_000, &places, &models, &idle, &wants(&[])),
        vec![stop("m", "a")]
    );
    assert!(decide(90_000, &places, &models, &idle, &wants(&[("m", 1, 0)])).is_empty());
}

#[test]
fn less_urgent_idle_model_makes_room() {
    let places = [place("a", 10_000)];
    let models = [
        model("low", 6000, &["a"], None),
        model("high", 6000, &["a"], None),
    ];
    let res = [inst("low", "a", InstanceState::Idle { since_ms: 0 })];
    let acts = decide(5, &places, &models, &res, &wants(&[("high", 1, -100)]));
    assert_eq!(acts, vec![stop("low", "a"), start("high", "a")]);
    // A more urgent resident model is not stopped for a less urgent one.
    let acts = decide(
        5,
        &places,
        &models,
        &res,
        &wants(&[("high", 1, 10), ("low", 1, 0)]),
    );
    assert!(acts.is_empty(), "{acts:?}");
}

#[test]
fn busy_is_drained_never_stopped() {
    let places = [place("a", 10_000)];
    let models = [
        model("low", 6000, &["a"], None),
        model("high", 6000, &["a"], None),
    ];
    let res = [inst("low", "a", InstanceState::Busy { in_flight: 2 })];
    let acts = decide(5, &places, &models, &res, &wants(&[("high", 1, -100)]));
    assert_eq!(acts, vec![drain("low", "a")]);
    // Once idle, it is stopped and the urgent model starts.
    let res = [inst("low", "a", InstanceState::Idle { since_ms: 6 })];
    let acts = decide(7, &places, &models, &res, &wants(&[("high", 1, -100)]));
    assert_eq!(acts, vec![stop("low", "a"), start("high", "a")]);
}

#[test]
fn starting_instances_are_left_alone() {
    let places = [place("a", 10_000)];
    let models = [
        model("low", 6000, &["a"], None),
        model("high", 6000, &["a"], None),
    ];
    let res = [inst("low", "a", InstanceState::Starting)];
    assert!(decide(5, &places, &models, &res, &wants(&[("high", 1, -100)])).is_empty());
}

#[test]
fn prefers_a_place_where_stopping_idle_is_enough() {
    let places = [place("a", 8000), place("b", 8000)];
    let models = [
        model("x", 6000, &["a"], None),
        model("y", 6000, &["b"], None),
        model("z", 6000, &["a", "b"], None),
    ];
    let res = [
        inst("x", "a", InstanceState::Busy { in_flight: 1 }),
        inst("y", "b", InstanceState::Idle { since_ms: 0 }),
    ];
    let acts = decide(1, &places, &models, &res, &wants(&[("z", 1, -5)]));
    assert_eq!(acts, vec![stop("y", "b"), start("z", "b")]);
}

#[test]
fn reserved_place_is_not_taken_by_less_urgent_models() {
    let places = [place("a", 10_000)];
    let models = [
        model("busy", 6000, &["a"], None),
        model("urgent", 8000, &["a"], None),
        model("small", 3000, &["a"], None),
    ];
    let res = [inst("busy", "a", InstanceState::Busy { in_flight: 1 })];
    let acts = decide(
        1,
        &places,
        &models,
        &res,
        &wants(&[("urgent", 1, -50), ("small", 1, 0)]),
    );
    assert_eq!(acts, vec![drain("busy", "a")]);
}

#[test]
fn over_budget_state_does_not_panic() {
    // The budget shrank below what is resident: nothing starts, nothing busy stops.
    let places = [place("a", 1000)];
    let models = [
        model("m", 6000, &["a"], None),
        model("n", 500, &["a"], None),
    ];
    let res = [inst("m", "a", InstanceState::Busy { in_flight: 1 })];
    let acts = decide(0, &places, &models, &res, &wants(&[("n", 1, 0)]));
    assert_eq!(acts, vec![drain("m", "a")]);
}

/// Two models that do not fit together, both always wanted at the same
/// priority: simulated over time, each gets served again and again.
/// Places, models, instances, demand and now.
type World = (
    Vec<PlaceBudget>,
    Vec<ModelFootprint>,
    Vec<Instance>,
    BTreeMap<String, Demand>,
    i64,
);

fn world() -> impl Strategy<Value = World> {
    let places = proptest::collection::vec(1000u64..20_000, 1..3);
    let models = proptest::collection::vec(
        (
            500u64..12_000,
            any::<u8>(),
            proptest::option::of(0u64..10_000),
        ),
        1..5,
    );
    (places, models)
        .prop_flat_map(|(budgets, ms)| {
            let places: Vec<PlaceBudget> = budgets
                .iter()
                .enumerate()
                .map(|(n, b)| place(&format!("p{n}"), *b))
                .collect();
            let models: Vec<ModelFootprint> = ms
                .iter()
                .enumerate()
                .map(|(n, (mem, mask, idle))| {
                    let allowed: Vec<String> = (0..places.len())
                        .filter(|p| mask & (1 << p) != 0 || *p == usize::from(*mask) % places.len())
                        .map(|p| format!("p{p}"))
                        .collect();
                    ModelFootprint {
                        model: format!("m{n}"),
                        memory_mib: *mem,
                        places: allowed,
                        idle_stop_ms: *idle,
                    }
                })
                .collect();
            let nm = models.len();
            let np = places.len();
            let inst =
                proptest::collection::vec((0..nm, 0..np, 0u8..3, 0i64..10_000, 1u32..4), 0..6);
            let dem = proptest::collection::vec((0..nm, 0u32..3, -5000i64..5000), 0..5);
            (Just(places), Just(models), inst, dem, 0i64..20_000)
        })
        .prop_map(|(places, models, raw, dem, now)| {
            // Keep only instances that fit the budget, one per model.
            let mut used = vec![0u64; places.len()];
            let mut instances: Vec<Instance> = Vec::new();
            for (m, p, s, since, n) in raw {
                let mm = &models[m];
                if instances.iter().any(|i| i.model == mm.model)
                    || used[p] + mm.memory_mib > places[p].budget_mib
                {
                    continue;
                }
                used[p] += mm.memory_mib;
                let state = match s {
                    0 => InstanceState::Starting,
                    1 => InstanceState::Idle { since_ms: since },
                    _ => InstanceState::Busy { in_flight: n },
                };
                instances.push(inst(&mm.model, &places[p].place, state));
            }
            let demand = dem
                .into_iter()
                .map(|(m, waiting, best_key)| (format!("m{m}"), Demand { waiting, best_key }))
                .collect();
            (places, models, instances, demand, now)
        })
}

proptest! {
    #[test]
    fn invariants((places, models, instances, demand, now) in world(), switch in 0u64..3000) {
        let acts = super::decide(now, &places, &models, &instances, &demand, switch);
        let mut after = instances.clone();
        for a in &acts {
            match a {
                Action::Stop { model, place } => {
                    let i = instances.iter().find(|i| &i.model == model && &i.place == place);
                    // Only existing, idle instances are stopped.
                    prop_assert!(matches!(i.map(|i| i.state), Some(InstanceState::Idle { .. })), "{a:?}");
                    after.retain(|i| !(&i.model == model && &i.place == place));
                }
                Action::Start { model, place } => {
                    let m = models.iter().find(|m| &m.model == model).unwrap();
                    prop_assert!(m.places.contains(place));
                    prop_assert!(!instances.iter().any(|i| &i.model == model));
                    prop_assert!(demand.get(model).is_some_and(|d| d.waiting > 0));
                    after.push(inst(model, place, InstanceState::Starting));
                }
                Action::Drain { model, place } => {
                    let i = instances.iter().find(|i| &i.model == model && &i.place == place);
                    prop_assert!(matches!(i.map(|i| i.state), Some(InstanceState::Busy { .. })), "{a:?}");
                }
            }
        }
        // Budget never exceeded.
        for p in &places {
            let used: u64 = after
                .iter()
                .filter(|i| i.place == p.place)
                .map(|i| models.iter().find(|m| m.model == i.model).unwrap().memory_mib)
                .sum();
            prop_assert!(used <= p.budget_mib, "{} uses {used} of {}: {acts:?}", p.place, p.budget_mib);
        }
        // Every stop has a purpose: idle past idle_stop with nothing
        // waiting, or room for a more urgent model started on that place.
        let urgency = |m: &str| demand.get(m).filter(|d| d.waiting > 0).map_or(i64::MAX, |d| d.best_key);
        for a in &acts {
            if let Action::Stop { model, place } = a {
                let m = models.iter().find(|m| &m.model == model).unwrap();
                let i = instances.iter().find(|i| &i.model == model && &i.place == place).unwrap();
                let expired = match (i.state, m.idle_stop_ms) {
                    (InstanceState::Idle { since_ms }, Some(d)) => now - since_ms >= d as i64,
                    _ => false,
                } && urgency(model) == i64::MAX;
                let for_urgent = acts.iter().any(|b| matches!(b, Action::Start { model: sm, place: sp }
                    if sp == place && (urgency(model) == i64::MAX || demand[sm].best_key + (switch as i64) < urgency(model))));
                prop_assert!(expired || for_urgent, "{a:?} in {acts:?}");
            }
        }
        // A model is started at most once.
        let mut started = HashSet::new();
        for a in &acts {
            if let Action::Start { model, .. } = a {
                prop_assert!(started.insert(model.clone()));
            }
        }
    }
}
