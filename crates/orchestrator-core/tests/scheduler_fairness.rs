//! The queue's order: priority first, runs of equal priority interleaved,
//! projects sharing fairly, and ageing so that no job waits forever. Each
//! test queues jobs with `queue_key` and dispatches them lowest key first,
//! as the store's index does.

use std::collections::BTreeSet;

use orchestrator_core::sched::fair::{levels_aged, QUANTUM_MS};
use orchestrator_core::sched::queue_key;
use proptest::prelude::*;

const AGING: u64 = 60_000;

/// A queue ordered like the store's index: by key, then by arrival.
#[derive(Default)]
struct Queue {
    jobs: BTreeSet<(i64, u64, usize)>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, key: i64, tag: usize) {
        self.jobs.insert((key, self.seq, tag));
        self.seq += 1;
    }
    fn pop(&mut self) -> Option<usize> {
        self.jobs.pop_first().map(|(_, _, tag)| tag)
    }
}

#[test]
fn a_higher_priority_is_a_head_start_of_one_aging_period_per_level() {
    let (high, clock_h) = queue_key(1_000, 0, 1, 1, AGING);
    let (low, clock_l) = queue_key(1_000, 0, 0, 1, AGING);
    assert!(high < low);
    assert_eq!(low - high, AGING as i64);
    let (negative, _) = queue_key(1_000, 0, -2, 1, AGING);
    assert_eq!(negative - low, 2 * AGING as i64);
    // The run's clock moves on by one quantum whatever the priority.
    assert_eq!((clock_h, clock_l), (1_000 + QUANTUM_MS, 1_000 + QUANTUM_MS));
}

#[test]
fn a_runs_clock_spreads_its_jobs_but_an_idle_run_earns_no_credit() {
    // Ahead of now: the job starts at the run's clock.
    assert_eq!(queue_key(100, 5_000, 0, 1, AGING), (5_000, 6_000));
    // Behind now (the run was idle): it starts now, not in the past.
    assert_eq!(queue_key(100_000, 5_000, 0, 1, AGING), (100_000, 101_000));
    // A project with more active runs moves each of them on faster; a
    // count of 0 reads as the run itself.
    assert_eq!(queue_key(0, 0, 0, 3, AGING).1, 3 * QUANTUM_MS);
    assert_eq!(queue_key(0, 0, 0, 0, AGING).1, QUANTUM_MS);
    // Extreme values saturate instead of wrapping.
    let (key, clock) = queue_key(i64::MAX, i64::MAX, i32::MIN, u32::MAX, u64::MAX);
    assert_eq!((key, clock), (i64::MAX, i64::MAX));
    let (key, _) = queue_key(0, 0, i32::MAX, 1, u64::MAX);
    assert_eq!(key, -i64::MAX);
}

#[test]
fn two_runs_queueing_many_jobs_interleave_instead_of_queueing_behind_each_other() {
    let (a, b) = (0usize, 1usize);
    let mut q = Queue::default();
    let mut clock_a = 0;
    for _ in 0..100 {
        let (key, c) = queue_key(0, clock_a, 0, 2, AGING);
        clock_a = c;
        q.push(key, a);
    }
    let mut clock_b = 0;
    for _ in 0..10 {
        let (key, c) = queue_key(1, clock_b, 0, 2, AGING);
        clock_b = c;
        q.push(key, b);
    }
    let order: Vec<usize> = std::iter::from_fn(|| q.pop()).collect();
    assert_eq!(order.len(), 110);
    let b_at: Vec<usize> = (0..order.len()).filter(|&i| order[i] == b).collect();
    assert!(b_at[0] < 3, "B's first job waits behind {} of A's", b_at[0]);
    // Spread: never more than one of A's jobs between two of B's.
    assert!(b_at.windows(2).all(|w| w[1] - w[0] <= 2), "{b_at:?}");
    assert!(*b_at.last().unwrap() < 20, "{b_at:?}");
}

#[test]
fn a_job_that_waited_one_aging_period_goes_before_newer_work_one_level_up() {
    let t0 = 1_000_000;
    let (old_low, _) = queue_key(t0, 0, 0, 1, AGING);
    let (late_high, _) = queue_key(t0 + AGING as i64 + 1, 0, 1, 1, AGING);
    let (early_high, _) = queue_key(t0 + AGING as i64 - 1, 0, 1, 1, AGING);
    assert!(old_low < late_high);
    assert!(early_high < old_low);
    // Five levels take five periods.
    let (later_top, _) = queue_key(t0 + 5 * AGING as i64 + 1, 0, 5, 1, AGING);
    assert!(old_low < later_top);
    let mut q = Queue::default();
    q.push(late_high, 1);
    q.push(old_low, 0);
    assert_eq!(q.pop(), Some(0));
}

#[test]
fn levels_aged_counts_whole_aging_periods_past_the_virtual_start() {
    let t0 = 10_000;
    let (key, _) = queue_key(t0, 0, 2, 1, AGING);
    assert_eq!(levels_aged(key, 2, t0, AGING), 0);
    assert_eq!(levels_aged(key, 2, t0 + AGING as i64 - 1, AGING), 0);
    assert_eq!(levels_aged(key, 2, t0 + 3 * AGING as i64 + 5, AGING), 3);
    // Before its start (a run far ahead on its clock) nothing is gained.
    assert_eq!(levels_aged(key, 2, 0, AGING), 0);
    // An aging of 0 (refused in the rules file) must not divide by zero.
    assert_eq!(levels_aged(0, 0, 5, 0), 5);
}

#[test]
fn projects_share_the_queue_equally_however_many_runs_each_has() {
    // Runs 0..3 belong to project A (3 active runs), run 3 to project B.
    let project_of = |run: usize| usize::from(run == 3);
    let runs_in = |project: usize| if project == 0 { 3 } else { 1 };
    let mut clocks = [0i64; 4];
    let mut q = Queue::default();
    let mut now = 0;
    // Each run keeps one job queued: when one is dispatched, it queues the next.
    let mut queue_next = |run: usize, now: i64, q: &mut Queue| {
        let (key, c) = queue_key(now, clocks[run], 0, runs_in(project_of(run)), AGING);
        clocks[run] = c;
        q.push(key, run);
    };
    for run in 0..4 {
        queue_next(run, now, &mut q);
    }
    let mut per_run = [0u32; 4];
    for _ in 0..400 {
        let run = q.pop().unwrap();
        per_run[run] += 1;
        now += 1;
        queue_next(run, now, &mut q);
    }
    let a: u32 = per_run[..3].iter().sum();
    let b = per_run[3];
    assert_eq!(a + b, 400);
    assert!(a.abs_diff(b) <= 8, "project A {a}, project B {b}");
    // Within project A its runs share equally too.
    let (min, max) = (per_run[..3].iter().min(), per_run[..3].iter().max());
    assert!(max.unwrap() - min.unwrap() <= 2, "{per_run:?}");
}

#[test]
fn a_steady_stream_of_higher_priority_work_holds_a_low_job_back_only_for_a_bounded_time() {
    let t0 = 0;
    let (low, _) = queue_key(t0, 0, 0, 1, AGING);
    // A fresh run of priority 3 queues a job every second.
    let first_behind = (0..)
        .map(|s| s * 1_000)
        .find(|&now| queue_key(now, 0, 3, 1, AGING).0 > low)
        .unwrap();
    assert_eq!(first_behind, 3 * AGING as i64 + 1_000);
}

proptest! {
    #[test]
    fn no_job_starves_under_bounded_higher_priority_arrivals(
        aging in 1u64..200_000,
        low_priority in -10i32..10,
        extra in 1i32..20,
        t0 in 0i64..1_000_000_000,
        low_clock_ahead in 0i64..100_000,
        mut clocks in prop::collection::vec(0i64..2_000_000_000, 1..6),
        arrivals in prop::collection::vec((0u64..200_000, 0i32..40, any::<prop::sample::Index>(), 1u32..5), 1..200),
    ) {
        let top = low_priority + extra;
        let start = t0 + low_clock_ahead;
        let (low, _) = queue_key(t0, start, low_priority, 1, aging);
        // However busy the others are, past this moment every new arrival
        // queues behind the low job.
        let bound = start + i64::from(extra) * aging as i64;
        let mut now = t0;
        for (gap, p, run, runs) in arrivals {
            now += (gap % (2 * aging)) as i64;
            let priority = top - p.min(top + 20);
            let r = run.index(clocks.len());
            let (key, c) = queue_key(now, clocks[r], priority, runs, aging);
            clocks[r] = c;
            prop_assert!(priority <= top);
            if now > bound {
                prop_assert!(key > low, "at {} a priority-{} job keyed {} jumps the low job keyed {}", now, priority, key, low);
            }
        }
    }
}
