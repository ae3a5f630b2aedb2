//! Why a queued step is not running yet: the verdict over the agents and
//! the lines `orch explain` prints for it.

use orchestrator_core::sched::explain::{describe, verdict, AgentFit, Verdict};
use orchestrator_core::sched::{
    free, Capacity, Free, Gpu, Grant, Misfit, Needs, Reserve, SystemRules,
};

const G: u64 = 1024;

struct Agent {
    name: &'static str,
    labels: Vec<String>,
    free: Free,
    online: bool,
}

/// An agent with `slots` slots of which `busy` are taken, `memory_mb`
/// memory and one 24G GPU when `gpu`.
fn agent(name: &'static str, slots: u32, busy: usize, memory_mb: u64, gpu: bool) -> Agent {
    let cap = Capacity {
        slots,
        memory_mb,
        gpus: if gpu {
            vec![Gpu {
                index: 0,
                name: String::new(),
                memory_mb: 24 * G,
            }]
        } else {
            vec![]
        },
        labels: vec![],
    };
    let held = vec![Grant::default(); busy];
    Agent {
        name,
        labels: vec!["linux".into()],
        free: free(&cap, &held),
        online: true,
    }
}

fn offline(mut a: Agent) -> Agent {
    a.online = false;
    a
}

fn fits<'a>(agents: &'a [Agent]) -> Vec<AgentFit<'a>> {
    agents
        .iter()
        .map(|a| AgentFit {
            name: a.name,
            labels: &a.labels,
            free: &a.free,
            online: a.online,
        })
        .collect()
}

fn judge(needs: &Needs, pinned: Option<&str>, agents: &[Agent]) -> Verdict {
    verdict(needs, 0, pinned, &fits(agents), &SystemRules::default())
}

fn memory(mb: u64) -> Needs {
    Needs {
        memory_mb: mb,
        ..Needs::default()
    }
}

#[test]
fn a_step_that_fits_names_every_agent_it_fits_on() {
    let agents = [
        agent("a", 1, 1, 0, false),
        agent("b", 2, 0, 0, false),
        agent("c", 2, 1, 0, false),
    ];
    let v = judge(&Needs::default(), None, &agents);
    assert_eq!(v, Verdict::FitsNow(vec!["b".into(), "c".into()]));
    assert_eq!(
        describe(&v, 5),
        ["fits now on agent b, agent c; an agent claims it at its next poll"]
    );
    assert_eq!(
        describe(&v, 1),
        ["fits now on agent b and 1 more; an agent claims it at its next poll"]
    );
}

#[test]
fn a_step_that_fits_nowhere_yet_waits_with_the_momentary_reasons_only() {
    let agents = [
        agent("busy", 1, 1, 8 * G, false),
        agent("small", 4, 0, 2 * G, false),
        agent("full", 4, 0, 8 * G, false),
    ];
    // `full` has all its memory taken by a job holding 8G.
    let mut agents = agents;
    agents[2].free.take(&Grant {
        memory_mb: 8 * G,
        gpus: vec![],
    });
    let v = judge(&memory(4 * G), None, &agents);
    let Verdict::Waits(reasons) = &v else {
        panic!("expected Waits, got {v:?}")
    };
    // `small` never has 4G: it is left out while others may still free up.
    let names: Vec<&str> = reasons.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(names, ["busy", "full"]);
    assert_eq!(reasons[0].1, Misfit::Slots { total: 1 });
    assert!(reasons.iter().all(|(_, m)| !m.is_permanent()));
    assert_eq!(
        describe(&v, 5),
        [
            "waits for capacity on 2 agents:",
            "  agent busy: its only slot is in use",
            "  agent full: needs 4 GiB memory, 0 MiB free",
        ]
    );
    assert_eq!(
        describe(&v, 1),
        [
            "waits for capacity on 2 agents:",
            "  agent busy: its only slot is in use",
            "  ... and 1 more agent",
        ]
    );
}

#[test]
fn a_step_no_agent_could_ever_run_says_never_with_each_reason() {
    let agents = [
        agent("cpu", 4, 0, 64 * G, false),
        agent("gpu", 4, 4, 8 * G, true),
    ];
    let needs = Needs {
        memory_mb: 16 * G,
        gpus: 1,
        ..Needs::default()
    };
    let v = judge(&needs, None, &agents);
    let Verdict::Never(reasons) = &v else {
        panic!("expected Never, got {v:?}")
    };
    assert!(matches!(reasons[0], (ref a, Misfit::GpusNever { .. }) if a == "cpu"));
    assert!(matches!(reasons[1], (ref a, Misfit::Memory { .. }) if a == "gpu"));
    let lines = describe(&v, 5);
    assert_eq!(lines[0], "no registered agent could ever run it:");
    assert_eq!(
        lines[2],
        "  agent gpu: needs 16 GiB memory, the agent has 8 GiB in all"
    );
    // A missing label is as permanent as a missing GPU.
    let labelled = Needs {
        labels: vec!["macos".into()],
        ..Needs::default()
    };
    assert!(matches!(judge(&labelled, None, &agents), Verdict::Never(r) if r.len() == 2));
}

#[test]
fn without_an_online_agent_there_is_nobody_to_ask() {
    assert_eq!(judge(&Needs::default(), None, &[]), Verdict::NoAgents);
    let agents = [offline(agent("a", 4, 0, 0, false))];
    let v = judge(&Needs::default(), None, &agents);
    assert_eq!(v, Verdict::NoAgents);
    assert_eq!(describe(&v, 5), ["no agent is online to run it"]);
}

#[test]
fn a_pinned_step_is_judged_on_its_agent_alone() {
    let agents = [agent("a", 4, 0, 0, false), agent("b", 1, 1, 0, false)];
    assert_eq!(
        judge(&Needs::default(), Some("b"), &agents),
        Verdict::Waits(vec![("b".into(), Misfit::Slots { total: 1 })])
    );
    assert_eq!(
        judge(&Needs::default(), Some("a"), &agents),
        Verdict::FitsNow(vec!["a".into()])
    );
    // Its agent is gone or offline: room elsewhere does not help.
    assert_eq!(
        judge(&Needs::default(), Some("c"), &agents),
        Verdict::NoAgents
    );
    let agents = [
        agent("a", 4, 0, 0, false),
        offline(agent("b", 4, 0, 0, false)),
    ];
    assert_eq!(
        judge(&Needs::default(), Some("b"), &agents),
        Verdict::NoAgents
    );
}

#[test]
fn the_reserve_makes_low_priority_work_wait_and_lets_high_priority_work_fit() {
    let rules = SystemRules {
        reserve: Some(Reserve {
            slots: 1,
            min_priority: 10,
        }),
        ..SystemRules::default()
    };
    let agents = [agent("a", 4, 3, 0, false)];
    let low = verdict(&Needs::default(), 9, None, &fits(&agents), &rules);
    assert_eq!(
        low,
        Verdict::Waits(vec![(
            "a".into(),
            Misfit::Reserved {
                slots: 1,
                min_priority: 10
            }
        )])
    );
    let high = verdict(&Needs::default(), 10, None, &fits(&agents), &rules);
    assert_eq!(high, Verdict::FitsNow(vec!["a".into()]));
}
