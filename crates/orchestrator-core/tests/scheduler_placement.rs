//! Placement: what an agent has free, and whether (and
//! on which GPUs) a step fits there, as tables and as properties over
//! random agents and random sequences of placements.

mod common;

use orchestrator_core::sched::resources::GpuFree;
use orchestrator_core::sched::{
    could_ever_fit, fit, free, Capacity, Free, Gpu, GpuGrant, Grant, Misfit, Needs,
};
use proptest::prelude::*;

use common::{needs, shared, strings, whole};

const G: u64 = 1024;

fn gpu(index: u32, memory_mb: u64) -> Gpu {
    Gpu {
        index,
        name: format!("gpu{index}"),
        memory_mb,
    }
}

fn cap(slots: u32, memory_mb: u64, gpus: Vec<Gpu>) -> Capacity {
    Capacity {
        slots,
        memory_mb,
        gpus,
        labels: Vec::new(),
    }
}

/// Fits `n` on `f` and takes the grant, panicking when it does not fit.
#[track_caller]
fn place(n: &Needs, f: &mut Free) -> Grant {
    let g = fit(n, &[], f).unwrap_or_else(|m| panic!("{n} should fit on {f}: {m}"));
    f.take(&g);
    g
}

fn gpu_state(f: &Free, index: u32) -> &GpuFree {
    f.gpus.iter().find(|g| g.index == index).unwrap()
}

// ------------------------------------------------------------ labels, memory, slots

#[test]
fn a_step_needing_nothing_takes_one_slot_and_is_granted_nothing() {
    let mut f = free(&cap(2, 0, vec![]), []);
    assert_eq!(place(&Needs::default(), &mut f), Grant::default());
    assert_eq!(f.slots, 1);
    place(&Needs::default(), &mut f);
    assert_eq!(
        fit(&Needs::default(), &[], &f),
        Err(Misfit::Slots { total: 2 })
    );
}

#[test]
fn every_label_the_stage_needs_must_be_on_the_agent() {
    let f = free(&cap(1, 0, vec![]), []);
    let n = Needs {
        labels: strings(&["gpu", "linux"]),
        ..Needs::default()
    };
    let err = fit(&n, &strings(&["linux"]), &f).unwrap_err();
    assert_eq!(
        err,
        Misfit::Label {
            label: "gpu".into()
        }
    );
    assert!(err.is_permanent());
    assert_eq!(err.to_string(), "lacks label \"gpu\"");
    assert!(fit(&n, &strings(&["x", "linux", "gpu"]), &f).is_ok());
}

#[test]
fn memory_that_is_taken_now_waits_and_memory_beyond_the_agent_never_fits() {
    let c = cap(4, 8 * G, vec![]);
    let busy = Grant {
        memory_mb: 6 * G,
        gpus: vec![],
    };
    let f = free(&c, [&busy]);
    assert_eq!(f.memory_mb, 2 * G);
    let now = fit(&needs(4 * G, 0, None), &[], &f).unwrap_err();
    assert_eq!(
        now,
        Misfit::Memory {
            need: 4 * G,
            free: 2 * G,
            total: 8 * G
        }
    );
    assert!(!now.is_permanent());
    assert_eq!(now.to_string(), "needs 4 GiB memory, 2 GiB free");
    let ever = fit(&needs(9 * G, 0, None), &[], &free(&c, [])).unwrap_err();
    assert!(ever.is_permanent(), "{ever:?}");
    assert_eq!(
        ever.to_string(),
        "needs 9 GiB memory, the agent has 8 GiB in all"
    );
    // Exactly what is free fits, and is granted as declared.
    let g = fit(&needs(2 * G, 0, None), &[], &f).unwrap();
    assert_eq!(g.memory_mb, 2 * G);
}

#[test]
fn full_slots_wait_and_an_agent_without_slots_never_runs_anything() {
    let c = cap(1, 0, vec![]);
    let f = free(&c, [&Grant::default()]);
    let busy = fit(&Needs::default(), &[], &f).unwrap_err();
    assert_eq!(busy, Misfit::Slots { total: 1 });
    assert!(!busy.is_permanent());
    let none = could_ever_fit(&Needs::default(), &cap(0, 0, vec![])).unwrap_err();
    assert_eq!(none, Misfit::Slots { total: 0 });
    assert!(none.is_permanent());
}

// ------------------------------------------------------------ GPUs

#[test]
fn whole_gpus_are_taken_one_job_each_and_granted_all_their_memory() {
    let mut f = free(&cap(8, 0, vec![gpu(0, 24 * G), gpu(1, 16 * G)]), []);
    // Both idle: the smaller one is the fuller fit.
    let a = place(&whole(1), &mut f);
    assert_eq!(
        a.gpus,
        [GpuGrant {
            index: 1,
            memory_mb: 16 * G
        }]
    );
    assert_eq!(gpu_state(&f, 1).free_mb, 0);
    let b = place(&whole(1), &mut f);
    assert_eq!(b.gpu_indices(), [0]);
    let busy = fit(&whole(1), &[], &f).unwrap_err();
    assert_eq!(
        busy,
        Misfit::GpusBusy {
            need: 1,
            gpu_memory: None,
            available: 0
        }
    );
    assert!(!busy.is_permanent());
    assert_eq!(busy.to_string(), "needs 1 whole GPU, 0 free now");
    // A shared job does not squeeze onto a GPU taken whole either.
    assert!(fit(&shared(1), &[], &f).is_err());
    // Giving one back frees it whole again.
    f.give(&a);
    assert_eq!(place(&whole(1), &mut f).gpu_indices(), [1]);
}

#[test]
fn more_gpus_than_the_agent_has_never_fit() {
    let c = cap(8, 0, vec![gpu(0, 24 * G), gpu(1, 24 * G)]);
    let err = could_ever_fit(&whole(3), &c).unwrap_err();
    assert_eq!(
        err,
        Misfit::GpusNever {
            need: 3,
            gpu_memory: None,
            suitable: 2
        }
    );
    assert!(err.is_permanent());
    assert_eq!(
        err.to_string(),
        "needs 3 whole GPUs, the agent has 2 such GPUs"
    );
    assert!(could_ever_fit(&whole(2), &c).is_ok());
    // An agent without GPUs never runs a GPU stage.
    assert!(could_ever_fit(&shared(G), &cap(8, 0, vec![]))
        .unwrap_err()
        .is_permanent());
}

#[test]
fn a_gpu_too_small_for_the_memory_needed_is_not_suitable_even_when_idle() {
    let c = cap(8, 0, vec![gpu(0, 16 * G), gpu(1, 40 * G)]);
    let err = could_ever_fit(&needs(0, 2, Some(24 * G)), &c).unwrap_err();
    assert_eq!(
        err,
        Misfit::GpusNever {
            need: 2,
            gpu_memory: Some(24 * G),
            suitable: 1
        }
    );
    assert_eq!(
        err.to_string(),
        "needs 2 GPUs with 24 GiB free, the agent has 1 such GPU"
    );
    assert_eq!(
        fit(&shared(24 * G), &[], &free(&c, [])).unwrap().gpus,
        [GpuGrant {
            index: 1,
            memory_mb: 24 * G
        }]
    );
}

#[test]
fn shared_gpus_fill_the_fullest_gpu_that_fits_before_breaking_into_another() {
    let mut f = free(&cap(8, 0, vec![gpu(0, 24 * G), gpu(1, 24 * G)]), []);
    let grants: Vec<Vec<u32>> = (0..4)
        .map(|_| place(&shared(8 * G), &mut f).gpu_indices())
        .collect();
    // Equal GPUs tie by index; then GPU 0, being fuller, keeps being chosen.
    assert_eq!(grants, [vec![0], vec![0], vec![0], vec![1]]);
    assert_eq!(gpu_state(&f, 0).jobs, 3);
    assert_eq!(gpu_state(&f, 0).free_mb, 0);
    assert_eq!(gpu_state(&f, 1).free_mb, 16 * G);
    // Every GPU is in use, so a whole GPU must wait.
    let err = fit(&whole(1), &[], &f).unwrap_err();
    assert!(
        matches!(err, Misfit::GpusBusy { available: 0, .. }),
        "{err:?}"
    );
    // Too much memory for what is left, though not for the GPU.
    let err = fit(&shared(20 * G), &[], &f).unwrap_err();
    assert_eq!(
        err,
        Misfit::GpusBusy {
            need: 1,
            gpu_memory: Some(20 * G),
            available: 0
        }
    );
    assert_eq!(err.to_string(), "needs 1 GPU with 20 GiB free, 0 free now");
}

#[test]
fn best_fit_picks_the_gpu_with_the_least_free_memory_that_still_fits() {
    let c = cap(8, 0, vec![gpu(0, 16 * G), gpu(1, 16 * G), gpu(2, 16 * G)]);
    let held = |index, mb| Grant {
        memory_mb: 0,
        gpus: vec![GpuGrant {
            index,
            memory_mb: mb,
        }],
    };
    // Free: GPU 0 10G, GPU 1 4G, GPU 2 6G.
    let (h0, h1, h2) = (held(0, 6 * G), held(1, 12 * G), held(2, 10 * G));
    let f = free(&c, [&h0, &h1, &h2]);
    assert_eq!(fit(&shared(5 * G), &[], &f).unwrap().gpu_indices(), [2]);
    assert_eq!(fit(&shared(3 * G), &[], &f).unwrap().gpu_indices(), [1]);
    assert_eq!(fit(&shared(7 * G), &[], &f).unwrap().gpu_indices(), [0]);
    // Two GPUs with 5G each: the two fullest that fit, fullest first.
    let two = fit(&needs(0, 2, Some(5 * G)), &[], &f).unwrap();
    assert_eq!(
        two.gpus,
        [
            GpuGrant {
                index: 2,
                memory_mb: 5 * G
            },
            GpuGrant {
                index: 0,
                memory_mb: 5 * G
            }
        ]
    );
    assert_eq!(
        fit(&needs(0, 3, Some(5 * G)), &[], &f),
        Err(Misfit::GpusBusy {
            need: 3,
            gpu_memory: Some(5 * G),
            available: 2
        })
    );
}

// ------------------------------------------------------------ the order of reasons

#[test]
fn permanent_reasons_are_reported_before_momentary_ones() {
    let c = Capacity {
        labels: strings(&["linux"]),
        ..cap(1, 8 * G, vec![gpu(0, 16 * G)])
    };
    let everything_busy = Grant {
        memory_mb: 8 * G,
        gpus: vec![GpuGrant {
            index: 0,
            memory_mb: 16 * G,
        }],
    };
    let f = free(&c, [&everything_busy]);
    let n = |labels: &[&str], memory_mb, gpus| Needs {
        labels: strings(labels),
        ..needs(memory_mb, gpus, None)
    };
    let first = |n: &Needs| fit(n, &c.labels, &f).unwrap_err();
    // A missing label comes first, whatever else is wrong.
    assert!(matches!(
        first(&n(&["cuda"], 9 * G, 2)),
        Misfit::Label { .. }
    ));
    // Then memory the agent never has, before the busy GPU and slot.
    assert!(first(&n(&[], 9 * G, 1)).is_permanent());
    // Then GPUs it never has, before the full slot.
    assert!(matches!(first(&n(&[], 0, 2)), Misfit::GpusNever { .. }));
    // Only momentary reasons left: the busy GPU, then the slot, then memory.
    assert!(matches!(first(&n(&[], G, 1)), Misfit::GpusBusy { .. }));
    assert_eq!(first(&n(&[], G, 0)), Misfit::Slots { total: 1 });
    let roomy = free(&cap(2, 8 * G, vec![]), [&everything_busy]);
    assert!(matches!(
        fit(&needs(G, 0, None), &[], &roomy),
        Err(Misfit::Memory { .. })
    ));
}

#[test]
fn an_agent_left_with_no_slots_says_so_even_while_its_gpus_are_busy() {
    // Jobs from before it shrank to no slots still hold its GPU: the step
    // can never run there, and the reason must say so, not "GPU busy".
    let c = cap(0, 0, vec![gpu(0, 16 * G)]);
    let old = Grant {
        memory_mb: 0,
        gpus: vec![GpuGrant {
            index: 0,
            memory_mb: 16 * G,
        }],
    };
    let err = fit(&whole(1), &[], &free(&c, [&old])).unwrap_err();
    assert_eq!(err, Misfit::Slots { total: 0 });
    assert!(err.is_permanent());
}

#[test]
fn which_reasons_are_permanent() {
    let table: &[(Misfit, bool)] = &[
        (Misfit::Label { label: "x".into() }, true),
        (Misfit::Slots { total: 0 }, true),
        (Misfit::Slots { total: 3 }, false),
        (
            Misfit::Memory {
                need: 5,
                free: 1,
                total: 4,
            },
            true,
        ),
        (
            Misfit::Memory {
                need: 4,
                free: 1,
                total: 4,
            },
            false,
        ),
        (
            Misfit::GpusNever {
                need: 1,
                gpu_memory: None,
                suitable: 0,
            },
            true,
        ),
        (
            Misfit::GpusBusy {
                need: 1,
                gpu_memory: Some(1),
                available: 0,
            },
            false,
        ),
        (
            Misfit::Reserved {
                slots: 1,
                min_priority: 10,
            },
            false,
        ),
    ];
    for (m, permanent) in table {
        assert_eq!(m.is_permanent(), *permanent, "{m:?}");
    }
    assert_eq!(
        table[7].0.to_string(),
        "its last slot is reserved for priority 10 and above"
    );
    let two = Misfit::Reserved {
        slots: 2,
        min_priority: 10,
    };
    assert_eq!(
        two.to_string(),
        "its last 2 slots are reserved for priority 10 and above"
    );
}

// ------------------------------------------------------------ free, take, give

#[test]
fn free_subtracts_what_running_jobs_hold() {
    let c = cap(4, 16 * G, vec![gpu(0, 24 * G), gpu(1, 24 * G)]);
    let a = Grant {
        memory_mb: 4 * G,
        gpus: vec![GpuGrant {
            index: 0,
            memory_mb: 8 * G,
        }],
    };
    let b = Grant {
        memory_mb: 2 * G,
        gpus: vec![
            GpuGrant {
                index: 0,
                memory_mb: 8 * G,
            },
            GpuGrant {
                index: 1,
                memory_mb: 24 * G,
            },
        ],
    };
    let f = free(&c, [&a, &b]);
    assert_eq!((f.slots, f.slots_total), (2, 4));
    assert_eq!((f.memory_mb, f.memory_total_mb), (10 * G, 16 * G));
    assert_eq!(
        (gpu_state(&f, 0).free_mb, gpu_state(&f, 0).jobs),
        (8 * G, 2)
    );
    assert_eq!((gpu_state(&f, 1).free_mb, gpu_state(&f, 1).jobs), (0, 1));
    assert_eq!(
        f.to_string(),
        "2/4 slots, 10 GiB of 16 GiB memory free, GPU0 8 GiB of 24 GiB free, GPU1 0 MiB of 24 GiB free"
    );
    // Giving back in any order restores the idle agent exactly.
    let mut g = f;
    g.give(&a);
    g.give(&b);
    assert_eq!(g, free(&c, []));
    // An agent that shrank shows nothing free rather than wrapping.
    let small = free(&cap(1, G, vec![gpu(0, G)]), [&a, &b]);
    assert_eq!((small.slots, small.memory_mb), (0, 0));
    assert_eq!(gpu_state(&small, 0).free_mb, 0);
}

#[test]
fn taking_then_giving_back_a_grant_is_a_round_trip() {
    let c = cap(3, 32 * G, vec![gpu(0, 24 * G), gpu(1, 48 * G)]);
    for n in [
        Needs::default(),
        needs(8 * G, 0, None),
        whole(1),
        needs(31 * G, 1, None),
        needs(G, 2, Some(20 * G)),
        shared(40 * G),
    ] {
        let before = free(
            &c,
            [&Grant {
                memory_mb: G,
                gpus: vec![GpuGrant {
                    index: 1,
                    memory_mb: 4 * G,
                }],
            }],
        );
        let g = fit(&n, &[], &before).unwrap_or_else(|m| panic!("{n}: {m}"));
        let mut f = before.clone();
        f.take(&g);
        assert_ne!(f, before, "{n}");
        f.give(&g);
        assert_eq!(f, before, "{n}");
    }
}

// ------------------------------------------------------------ properties

fn arb_capacity() -> impl Strategy<Value = Capacity> {
    (
        0u32..6,
        0u64..64 * G,
        prop::collection::vec(1u64..80 * G, 0..4),
    )
        .prop_map(|(slots, memory_mb, gpu_mem)| {
            let gpus = gpu_mem
                .into_iter()
                .enumerate()
                .map(|(i, m)| gpu(i as u32 * 2 + 1, m))
                .collect();
            cap(slots, memory_mb, gpus)
        })
}

fn arb_needs() -> impl Strategy<Value = Needs> {
    (
        prop_oneof![Just(0u64), 0u64..24 * G],
        prop_oneof![Just(0u32), 0u32..4],
        prop::option::of(1u64..48 * G),
    )
        .prop_map(|(memory_mb, gpus, gpu_memory_mb)| Needs {
            labels: Vec::new(),
            memory_mb,
            gpus,
            gpu_memory_mb: gpu_memory_mb.filter(|_| gpus > 0),
        })
}

/// Fit this, or give back the `n`-th grant held.
#[derive(Debug, Clone)]
enum Op {
    Fit(Needs),
    Release(usize),
}

fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => arb_needs().prop_map(Op::Fit),
            1 => any::<usize>().prop_map(Op::Release),
        ],
        0..40,
    )
}

proptest! {
    #[test]
    fn placements_never_oversubscribe_an_agent(c in arb_capacity(), ops in arb_ops()) {
        let mut f = free(&c, []);
        let mut held: Vec<(Needs, Grant)> = Vec::new();
        for op in ops {
            match op {
                Op::Fit(n) => match fit(&n, &[], &f) {
                    Ok(g) => {
                        f.take(&g);
                        held.push((n, g));
                    }
                    Err(m) => {
                        // A step that fails for good fails on the idle agent too.
                        if m.is_permanent() {
                            prop_assert!(could_ever_fit(&n, &c).is_err(), "{m:?}");
                        }
                    }
                },
                Op::Release(i) if !held.is_empty() => {
                    let (_, g) = held.remove(i % held.len());
                    f.give(&g);
                }
                Op::Release(_) => {}
            }
            // What is free is exactly what the held grants leave.
            prop_assert_eq!(&f, &free(&c, held.iter().map(|(_, g)| g)));
            prop_assert_eq!(f.slots as usize + held.len(), c.slots as usize);
            let memory: u64 = held.iter().map(|(_, g)| g.memory_mb).sum();
            prop_assert!(memory <= c.memory_mb);
            prop_assert_eq!(f.memory_mb, c.memory_mb - memory);
            for g in &c.gpus {
                let on: Vec<&(Needs, Grant)> = held
                    .iter()
                    .filter(|(_, h)| h.gpus.iter().any(|x| x.index == g.index))
                    .collect();
                let used: u64 = on
                    .iter()
                    .flat_map(|(_, h)| &h.gpus)
                    .filter(|x| x.index == g.index)
                    .map(|x| x.memory_mb)
                    .sum();
                prop_assert!(used <= g.memory_mb, "GPU {} oversubscribed", g.index);
                let state = gpu_state(&f, g.index);
                prop_assert_eq!(state.free_mb, g.memory_mb - used);
                prop_assert_eq!(state.jobs as usize, on.len());
                // A GPU taken whole is held by that job alone.
                if on.iter().any(|(n, _)| n.gpu_memory_mb.is_none()) {
                    prop_assert_eq!(on.len(), 1, "GPU {} shared with a whole job", g.index);
                }
            }
            for (n, g) in &held {
                prop_assert_eq!(g.gpus.len(), n.gpus as usize);
                prop_assert_eq!(g.memory_mb, n.memory_mb);
                let mut idx = g.gpu_indices();
                idx.sort_unstable();
                idx.dedup();
                prop_assert_eq!(idx.len(), g.gpus.len(), "distinct GPUs");
            }
        }
    }

    #[test]
    fn every_misfit_on_an_idle_agent_is_permanent(c in arb_capacity(), n in arb_needs()) {
        // On an idle agent nothing is momentarily busy.
        if let Err(m) = fit(&n, &[], &free(&c, [])) {
            prop_assert!(m.is_permanent(), "{:?} on an idle agent", m);
        }
    }
}
