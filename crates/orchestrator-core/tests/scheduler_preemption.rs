//! Cooperative pre-emption: which running jobs are asked to yield so that
//! waiting higher-priority work can be placed, as tables of small clusters
//! and as properties over random ones.

mod common;

use orchestrator_core::sched::{
    fit, free, plan_preemption, AgentState, Capacity, Free, Gpu, GpuGrant, Grant, Needs, Reserve,
    RunningJob, SystemRules, Waiting, YieldOrder,
};
use orchestrator_core::JobId;
use proptest::prelude::*;

use common::needs;

const G: u64 = 1024;

fn cap(slots: u32, memory_mb: u64, gpus: &[u64]) -> Capacity {
    Capacity {
        slots,
        memory_mb,
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(i, &m)| Gpu {
                index: i as u32,
                name: String::new(),
                memory_mb: m,
            })
            .collect(),
        labels: Vec::new(),
    }
}

fn job(job_id: i64, priority: i32, grant: Grant) -> RunningJob {
    RunningJob {
        job_id: job_id.into(),
        stage: format!("run/s{job_id}"),
        priority,
        grant,
        yielding: false,
    }
}

/// A running job holding one slot and nothing else.
fn cpu(job_id: i64, priority: i32) -> RunningJob {
    job(job_id, priority, Grant::default())
}

fn yielding(mut j: RunningJob) -> RunningJob {
    j.yielding = true;
    j
}

fn mem(memory_mb: u64) -> Grant {
    Grant {
        memory_mb,
        gpus: vec![],
    }
}

fn on_gpu(index: u32, memory_mb: u64) -> Grant {
    Grant {
        memory_mb: 0,
        gpus: vec![GpuGrant { index, memory_mb }],
    }
}

fn agent(id: &str, cap: Capacity, running: Vec<RunningJob>) -> AgentState {
    AgentState {
        id: id.into(),
        cap,
        running,
    }
}

fn wait(job_id: i64, priority: i32, needs: Needs) -> Waiting {
    Waiting {
        job_id: job_id.into(),
        stage: format!("run/w{job_id}"),
        priority,
        needs,
        pinned: None,
    }
}

fn pinned(mut w: Waiting, agent: &str) -> Waiting {
    w.pinned = Some(agent.into());
    w
}

/// (agent, victims, for_job) of each order.
fn plan(
    waiting: &[Waiting],
    agents: &[AgentState],
    rules: &SystemRules,
) -> Vec<(String, Vec<i64>, i64)> {
    plan_preemption(waiting, agents, rules)
        .into_iter()
        .map(|o| {
            (
                o.agent.into_string(),
                o.victims.iter().map(|v| v.get()).collect(),
                o.for_job.get(),
            )
        })
        .collect()
}

fn order(agent: &str, victims: &[i64], for_job: i64) -> (String, Vec<i64>, i64) {
    (agent.into(), victims.to_vec(), for_job)
}

fn rules() -> SystemRules {
    SystemRules::default()
}

// ------------------------------------------------------------ when nobody yields

#[test]
fn nobody_yields_for_a_job_that_fits_somewhere_now() {
    let agents = [
        agent("a", cap(1, 0, &[]), vec![cpu(1, 0)]),
        agent("b", cap(2, 0, &[]), vec![cpu(2, 0)]),
    ];
    assert_eq!(plan(&[wait(9, 9, Needs::default())], &agents, &rules()), []);
}

#[test]
fn nobody_yields_to_a_job_of_equal_or_lower_priority() {
    let agents = [agent("a", cap(1, 0, &[]), vec![cpu(1, 5)])];
    for p in [5, 4, -1000] {
        assert_eq!(plan(&[wait(9, p, Needs::default())], &agents, &rules()), []);
    }
    assert_eq!(
        plan(&[wait(9, 6, Needs::default())], &agents, &rules()),
        [order("a", &[1], 9)]
    );
}

#[test]
fn nobody_yields_for_a_job_no_agent_could_ever_run() {
    let agents = [agent("a", cap(1, 8 * G, &[]), vec![job(1, 0, mem(8 * G))])];
    assert_eq!(
        plan(&[wait(9, 9, needs(64 * G, 0, None))], &agents, &rules()),
        []
    );
    assert_eq!(
        plan(&[wait(9, 9, needs(0, 1, None))], &agents, &rules()),
        []
    );
}

#[test]
fn nothing_waiting_or_no_agents_asks_nothing() {
    let agents = [agent("a", cap(1, 0, &[]), vec![cpu(1, 0)])];
    assert_eq!(plan(&[], &agents, &rules()), []);
    assert_eq!(plan(&[wait(9, 9, Needs::default())], &[], &rules()), []);
}

// ------------------------------------------------------------ whom to ask

#[test]
fn the_lowest_priority_job_yields_and_among_equals_the_newest() {
    let agents = [agent(
        "a",
        cap(3, 0, &[]),
        vec![cpu(1, 3), cpu(2, 1), cpu(3, 2)],
    )];
    let orders = plan_preemption(&[wait(9, 5, Needs::default())], &agents, &rules());
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].victims, [2]);
    assert_eq!(
        orders[0].reason,
        "run/w9 (priority 5, needs 1 slot) cannot be placed; asked run/s2 (priority 1) \
         on agent a to yield at the next checkpoint"
    );
    let equals = [agent("a", cap(2, 0, &[]), vec![cpu(4, 1), cpu(7, 1)])];
    assert_eq!(
        plan(&[wait(9, 5, Needs::default())], &equals, &rules()),
        [order("a", &[7], 9)]
    );
}

#[test]
fn the_agent_needing_fewest_victims_is_chosen_then_the_lowest_priorities() {
    let agents = [
        agent(
            "a",
            cap(2, 8 * G, &[]),
            vec![job(1, 0, mem(4 * G)), job(2, 0, mem(4 * G))],
        ),
        agent("b", cap(1, 8 * G, &[]), vec![job(3, 2, mem(8 * G))]),
    ];
    assert_eq!(
        plan(&[wait(9, 5, needs(8 * G, 0, None))], &agents, &rules()),
        [order("b", &[3], 9)]
    );
    // One victim each: the lower priority, wherever it is listed.
    let agents = [
        agent("c", cap(1, 0, &[]), vec![cpu(4, 1)]),
        agent("d", cap(1, 0, &[]), vec![cpu(5, 0)]),
    ];
    assert_eq!(
        plan(&[wait(9, 5, Needs::default())], &agents, &rules()),
        [order("d", &[5], 9)]
    );
}

#[test]
fn memory_is_freed_by_as_many_victims_as_it_takes() {
    let agents = [agent(
        "a",
        cap(4, 12 * G, &[]),
        vec![
            job(1, 0, mem(4 * G)),
            job(2, 1, mem(4 * G)),
            job(3, 2, mem(4 * G)),
        ],
    )];
    // Nothing is free: 8G takes two of them, the two lowest.
    let orders = plan(&[wait(9, 5, needs(8 * G, 0, None))], &agents, &rules());
    assert_eq!(orders, [order("a", &[1, 2], 9)]);
}

#[test]
fn a_gpu_job_asks_only_gpu_holders_on_a_gpu_agent_to_yield() {
    let agents = [
        agent("cpu", cap(1, 0, &[]), vec![cpu(1, 0)]),
        // A low CPU-only job shares the GPU agent: yielding would free
        // nothing the waiting job lacks, so it is not asked.
        agent(
            "gpu",
            cap(4, 0, &[24 * G]),
            vec![cpu(2, 0), job(3, 1, on_gpu(0, 24 * G))],
        ),
    ];
    assert_eq!(
        plan(&[wait(9, 5, needs(0, 1, None))], &agents, &rules()),
        [order("gpu", &[3], 9)]
    );
    // Shared by memory: one of two holders is enough, the lower one.
    let shared = [agent(
        "gpu",
        cap(4, 0, &[24 * G]),
        vec![job(4, 1, on_gpu(0, 12 * G)), job(5, 0, on_gpu(0, 12 * G))],
    )];
    assert_eq!(
        plan(&[wait(9, 5, needs(0, 1, Some(8 * G)))], &shared, &rules()),
        [order("gpu", &[5], 9)]
    );
    // A whole GPU needs every holder gone.
    assert_eq!(
        plan(&[wait(9, 5, needs(0, 1, None))], &shared, &rules()),
        [order("gpu", &[5, 4], 9)]
    );
}

// ------------------------------------------------------------ yields already asked

#[test]
fn a_job_already_yielding_is_counted_before_anyone_else_is_asked() {
    let agents = [agent("a", cap(1, 0, &[]), vec![yielding(cpu(1, 0))])];
    assert_eq!(plan(&[wait(9, 5, Needs::default())], &agents, &rules()), []);
    // Two waiting, one slot about to free: only one more yield.
    let agents = [agent(
        "a",
        cap(2, 0, &[]),
        vec![yielding(cpu(1, 0)), cpu(2, 0)],
    )];
    let waiting = [wait(10, 6, Needs::default()), wait(11, 5, Needs::default())];
    assert_eq!(plan(&waiting, &agents, &rules()), [order("a", &[2], 11)]);
}

#[test]
fn no_job_is_asked_twice_in_one_plan() {
    let agents = [agent("a", cap(2, 0, &[]), vec![cpu(1, 0), cpu(2, 0)])];
    let waiting = [wait(10, 5, Needs::default()), wait(11, 6, Needs::default())];
    let orders = plan(&waiting, &agents, &rules());
    // The higher priority is served first.
    assert_eq!(orders, [order("a", &[2], 11), order("a", &[1], 10)]);
    // A third waiting job finds no one left to ask.
    let mut more = waiting.to_vec();
    more.push(wait(12, 7, Needs::default()));
    assert_eq!(plan(&more, &agents, &rules()).len(), 2);
}

// ------------------------------------------------------------ pinned, reserve, caps

#[test]
fn a_pinned_job_considers_only_its_agent() {
    let agents = [
        agent("a", cap(2, 0, &[]), vec![cpu(1, 0)]),
        agent("b", cap(1, 0, &[]), vec![cpu(2, 0)]),
        agent("c", cap(1, 0, &[]), vec![cpu(3, 9)]),
    ];
    // Room on a is no use to a stage whose worktree is on b.
    assert_eq!(
        plan(
            &[pinned(wait(9, 5, Needs::default()), "b")],
            &agents,
            &rules()
        ),
        [order("b", &[2], 9)]
    );
    // On c nobody ranks lower, so it waits; a's room and b's victim are not its.
    assert_eq!(
        plan(
            &[pinned(wait(9, 5, Needs::default()), "c")],
            &agents,
            &rules()
        ),
        []
    );
    assert_eq!(
        plan(
            &[pinned(wait(9, 5, Needs::default()), "gone")],
            &agents,
            &rules()
        ),
        []
    );
}

#[test]
fn the_reserve_is_respected_when_placing_and_when_pre_empting() {
    let rules = SystemRules {
        reserve: Some(Reserve {
            slots: 1,
            min_priority: 10,
        }),
        ..SystemRules::default()
    };
    let agents = [agent("a", cap(2, 0, &[]), vec![cpu(1, 0)])];
    // High work takes the reserved slot; nobody yields.
    assert_eq!(plan(&[wait(9, 10, Needs::default())], &agents, &rules), []);
    // Lower work may not: it asks the lowest job to yield instead.
    assert_eq!(
        plan(&[wait(9, 5, Needs::default())], &agents, &rules),
        [order("a", &[1], 9)]
    );
    // On a full 3-slot agent one victim leaves 1 free: still the reserve,
    // so work below it needs two.
    let full = [agent(
        "a",
        cap(3, 0, &[]),
        vec![cpu(1, 0), cpu(2, 1), cpu(3, 2)],
    )];
    assert_eq!(
        plan(&[wait(9, 5, Needs::default())], &full, &rules),
        [order("a", &[1, 2], 9)]
    );
    assert_eq!(
        plan(&[wait(9, 10, Needs::default())], &full, &rules),
        [order("a", &[1], 9)]
    );
}

#[test]
fn the_system_cap_on_slots_counts_instead_of_what_the_agent_declares() {
    let agents = [agent("a", cap(4, 0, &[]), vec![cpu(1, 0), cpu(2, 1)])];
    assert_eq!(plan(&[wait(9, 5, Needs::default())], &agents, &rules()), []);
    let capped = SystemRules {
        agent_max_slots: Some(2),
        ..SystemRules::default()
    };
    assert_eq!(
        plan(&[wait(9, 5, Needs::default())], &agents, &capped),
        [order("a", &[1], 9)]
    );
}

#[test]
fn equal_inputs_give_equal_plans_whatever_order_the_queue_lists_them_in() {
    let agents = [
        agent(
            "a",
            cap(2, 16 * G, &[24 * G]),
            vec![job(1, 0, mem(8 * G)), job(2, 3, on_gpu(0, 24 * G))],
        ),
        agent(
            "b",
            cap(2, 16 * G, &[]),
            vec![job(3, 1, mem(16 * G)), cpu(4, 2)],
        ),
    ];
    let waiting = vec![
        wait(10, 7, needs(0, 1, None)),
        wait(11, 6, needs(8 * G, 0, None)),
        wait(12, 5, Needs::default()),
        wait(13, 4, needs(16 * G, 0, None)),
    ];
    let first = plan_preemption(&waiting, &agents, &rules());
    assert!(!first.is_empty());
    assert_eq!(plan_preemption(&waiting, &agents, &rules()), first);
    let mut reversed = waiting;
    reversed.reverse();
    assert_eq!(plan_preemption(&reversed, &agents, &rules()), first);
}

// ------------------------------------------------------------ properties

/// A random cluster whose running jobs really fit where they run.
fn arb_cluster() -> impl Strategy<Value = (Vec<AgentState>, SystemRules)> {
    let arb_needs = (0u64..3, 0u32..3, prop::option::of(1u64..4)).prop_map(|(m, gpus, gm)| {
        needs(m * 4 * G, gpus, gm.filter(|_| gpus > 0).map(|g| g * 6 * G))
    });
    let arb_agent = (
        1u32..5,
        0u64..4,
        prop::collection::vec(Just(24 * G), 0..3),
        prop::collection::vec((arb_needs, 0i32..6, prop::bool::weighted(0.2)), 0..6),
    );
    let arb_rules = (
        prop::option::of((0u32..3, 0i32..10)),
        prop::option::of(1u32..5),
    )
        .prop_map(|(reserve, agent_max_slots)| SystemRules {
            reserve: reserve.map(|(slots, min_priority)| Reserve {
                slots,
                min_priority,
            }),
            agent_max_slots,
            ..SystemRules::default()
        });
    (prop::collection::vec(arb_agent, 1..4), arb_rules).prop_map(|(specs, rules)| {
        let mut next_id = 1;
        let agents = specs
            .into_iter()
            .enumerate()
            .map(|(i, (slots, mem_g, gpus, jobs))| {
                let c = cap(slots, mem_g * 8 * G, &gpus);
                let mut capped = c.clone();
                capped.slots = rules.agent_slots(slots);
                let mut f = free(&capped, []);
                let mut running = Vec::new();
                for (n, priority, is_yielding) in jobs {
                    if let Ok(g) = fit(&n, &[], &f) {
                        f.take(&g);
                        let mut j = job(next_id, priority, g);
                        j.yielding = is_yielding;
                        running.push(j);
                        next_id += 1;
                    }
                }
                agent(&format!("a{i}"), c, running)
            })
            .collect();
        (agents, rules)
    })
}

fn arb_waiting(id: i64) -> impl Strategy<Value = Waiting> {
    (
        0u64..3,
        0u32..3,
        prop::option::of(1u64..4),
        0i32..9,
        prop::option::of(0usize..4),
    )
        .prop_map(move |(m, gpus, gm, priority, pin)| Waiting {
            pinned: pin.map(|i| format!("a{i}").into()),
            ..wait(
                id,
                priority,
                needs(m * 4 * G, gpus, gm.filter(|_| gpus > 0).map(|g| g * 6 * G)),
            )
        })
}

/// What `a` has free once its yielding jobs and `more` have yielded.
fn freed(a: &AgentState, rules: &SystemRules, more: &[JobId]) -> Free {
    let mut c = a.cap.clone();
    c.slots = rules.agent_slots(c.slots);
    let mut f = free(&c, a.running.iter().map(|r| &r.grant));
    for r in a
        .running
        .iter()
        .filter(|r| r.yielding || more.contains(&r.job_id))
    {
        f.give(&r.grant);
    }
    f
}

fn placeable(w: &Waiting, f: &Free, rules: &SystemRules) -> bool {
    fit(&w.needs, &[], f).is_ok()
        && rules
            .reserve_allows(w.priority, f.slots, f.slots_total)
            .is_ok()
}

fn check_orders(
    orders: &[YieldOrder],
    waiting: &[Waiting],
    agents: &[AgentState],
) -> Result<(), TestCaseError> {
    let mut asked = Vec::new();
    let mut served = Vec::new();
    for o in orders {
        let w = waiting.iter().find(|w| w.job_id == o.for_job).unwrap();
        prop_assert!(w.pinned.as_ref().is_none_or(|p| *p == o.agent), "{:?}", o);
        let a = agents.iter().find(|a| a.id == o.agent).unwrap();
        prop_assert!(!o.victims.is_empty());
        for v in &o.victims {
            let r = a.running.iter().find(|r| r.job_id == *v);
            prop_assert!(r.is_some(), "victim {} is not on {}", v, o.agent);
            let r = r.unwrap();
            prop_assert!(r.priority < w.priority, "{:?} yields to {:?}", r, w);
            prop_assert!(!r.yielding, "{} asked twice", v);
            prop_assert!(!asked.contains(v), "{} asked twice", v);
            asked.push(*v);
        }
        prop_assert!(!served.contains(&o.for_job));
        served.push(o.for_job);
    }
    Ok(())
}

proptest! {
    #[test]
    fn a_plan_for_one_job_asks_exactly_enough_lower_priority_victims(
        (agents, rules) in arb_cluster(),
        w in arb_waiting(1000),
    ) {
        let orders = plan_preemption(std::slice::from_ref(&w), &agents, &rules);
        check_orders(&orders, std::slice::from_ref(&w), &agents)?;
        prop_assert!(orders.len() <= 1);
        let eligible: Vec<&AgentState> = agents
            .iter()
            .filter(|a| w.pinned.as_ref().is_none_or(|p| *p == a.id))
            .collect();
        let fits_without_yields = eligible.iter().any(|a| placeable(&w, &freed(a, &rules, &[]), &rules));
        match orders.first() {
            Some(o) => {
                prop_assert!(!fits_without_yields, "asked {:?} though it fits", o);
                let a = agents.iter().find(|a| a.id == o.agent).unwrap();
                // Once the victims yield, it fits there...
                prop_assert!(placeable(&w, &freed(a, &rules, &o.victims), &rules), "{:?}", o);
                // ...and not without any one of them.
                for v in &o.victims {
                    let fewer: Vec<JobId> = o.victims.iter().copied().filter(|x| x != v).collect();
                    prop_assert!(!placeable(&w, &freed(a, &rules, &fewer), &rules), "{} yields in vain: {:?}", v, o);
                }
            }
            None if !fits_without_yields => {
                // Nothing asked: no eligible agent could make room, even if
                // every lower-priority job on it yielded.
                for a in eligible {
                    let all: Vec<JobId> = a.running.iter().filter(|r| r.priority < w.priority).map(|r| r.job_id).collect();
                    prop_assert!(!placeable(&w, &freed(a, &rules, &all), &rules), "missed room on {}", a.id);
                }
            }
            None => {}
        }
    }

    #[test]
    fn a_plan_never_asks_a_job_twice_or_for_equal_or_lower_work(
        (agents, rules) in arb_cluster(),
        waiting in (arb_waiting(1000), arb_waiting(1001), arb_waiting(1002), arb_waiting(1003), 1usize..5)
            .prop_map(|(a, b, c, d, n)| vec![a, b, c, d].into_iter().take(n).collect::<Vec<_>>()),
    ) {
        let orders = plan_preemption(&waiting, &agents, &rules);
        check_orders(&orders, &waiting, &agents)?;
        // Served highest priority first.
        let priorities: Vec<i32> = orders
            .iter()
            .map(|o| waiting.iter().find(|w| w.job_id == o.for_job).unwrap().priority)
            .collect();
        prop_assert!(priorities.windows(2).all(|p| p[0] >= p[1]), "{:?}", priorities);
        prop_assert_eq!(plan_preemption(&waiting, &agents, &rules), orders);
    }
}
