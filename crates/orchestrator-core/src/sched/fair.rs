//! The queue's order: effective priority first, with fairness between runs
//! of equal priority and ageing so that nothing waits forever.
//!
//! Each queued job gets a fixed key when it is queued; lower keys are served
//! first, so the queue is an index and dispatch costs O(log n). The key is a
//! virtual start time minus the priority's head start:
//!
//! `key = max(run clock, now) - priority * aging`
//!
//! and queuing a job moves its run's clock on by one quantum times the number
//! of its project's active runs. A run that queues many jobs at once spreads
//! them out over virtual time, so another run of equal priority that queues
//! later interleaves with it instead of waiting behind all of them
//! (start-time fair queuing); a project with many runs advances each of them
//! faster, so projects share fairly too. One priority level is worth
//! `aging` of waiting: a job waiting that long is served before newer work
//! one level above it, so low priority ages into service and never starves.

/// Virtual time one queued job costs its run, in milliseconds.
pub const QUANTUM_MS: i64 = 1000;

/// The queue key for a job of a run whose clock reads `run_clock`, queued at
/// `now_ms` with `priority`, in a project with `project_runs` active runs;
/// and the run's clock after it.
pub fn queue_key(
    now_ms: i64,
    run_clock: i64,
    priority: i32,
    project_runs: u32,
    aging_ms: u64,
) -> (i64, i64) {
    let start = run_clock.max(now_ms);
    let head_start =
        i64::from(priority).saturating_mul(i64::try_from(aging_ms).unwrap_or(i64::MAX));
    let key = start.saturating_sub(head_start);
    let clock = start.saturating_add(QUANTUM_MS.saturating_mul(i64::from(project_runs.max(1))));
    (key, clock)
}

/// How long a job with `key` has waited beyond its virtual start, in
/// priority levels gained, as of `now_ms`: for `orch explain`.
pub fn levels_aged(key: i64, priority: i32, now_ms: i64, aging_ms: u64) -> i64 {
    let aging = i64::try_from(aging_ms.max(1)).unwrap_or(i64::MAX);
    let start = key.saturating_add(i64::from(priority).saturating_mul(aging));
    (now_ms.saturating_sub(start)).max(0) / aging
}
