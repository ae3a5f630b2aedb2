//! Cooperative pre-emption in the store: the pass that asks running stages
//! to yield (the choice is the core's planner), a stage yielding at its
//! checkpoint, and the resumption of yielded stages once the work they
//! yielded to is placed.

use crate::db::params;
use orchestrator_core::machine::StageEvent;
use orchestrator_core::sched::{
    plan_preemption, AgentState, Capacity, Gpu, Grant, Needs, RunningJob, Waiting,
};
use orchestrator_core::Actor;
use orchestrator_core::StageState;
use orchestrator_core::{AgentId, JobId, RunId};

use super::common::stage_key;
use super::placement::parse_grant;
use super::stage::stage_event;
use super::tx::Ctx;
use crate::Result;

/// Most waiting jobs one pass considers: the highest priorities.
const WAITING_PER_PASS: u32 = 32;

/// One pre-emption pass; returns how many stages were asked to yield.
/// Cheap when nothing waits above the lowest running priority.
pub fn preempt(ctx: &mut Ctx<'_>, online_ms: u64) -> Result<usize> {
    let min_running: Option<i32> = ctx
        .conn
        .prepare_cached("SELECT MIN(priority) FROM jobs WHERE state = 'leased'")?
        .query_row([], |r| r.get(0))?;
    let Some(min_running) = min_running else {
        return Ok(0);
    };
    let waiting: Vec<Waiting> = ctx
        .conn
        .prepare_cached(
            "SELECT j.id, j.priority, j.run_id, j.stage_id, s.needs, s.pin
             FROM jobs j JOIN shapes s ON s.id = j.shape
             WHERE j.state = 'queued' AND j.priority > ?1
             ORDER BY j.priority DESC, j.id LIMIT ?2",
        )?
        .query_map(params![min_running, WAITING_PER_PASS], |r| {
            Ok((
                r.get::<_, JobId>(0)?,
                r.get::<_, i32>(1)?,
                r.get::<_, RunId>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?
        .map(|row| {
            let (job_id, priority, run, stage, needs, pin) = row?;
            Ok(Waiting {
                job_id,
                stage: stage_key(&run, &stage),
                priority,
                needs: serde_json::from_str::<Needs>(&needs).unwrap_or_default(),
                pinned: (!pin.is_empty()).then(|| AgentId::from(pin)),
            })
        })
        .collect::<crate::db::Result<_>>()?;
    if waiting.is_empty() {
        return Ok(0);
    }
    let agents = agent_states(ctx, online_ms)?;
    let orders = plan_preemption(&waiting, &agents, ctx.rules);
    let mut asked = 0;
    for order in orders {
        for victim in &order.victims {
            let (run_id, stage_id): (RunId, String) = ctx
                .conn
                .prepare_cached("SELECT run_id, stage_id FROM jobs WHERE id = ?1")?
                .query_row([victim], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let n = ctx
                .conn
                .prepare_cached(
                    "UPDATE stage_runs SET yield_job = ?3, yield_for = ?4
                     WHERE run_id = ?1 AND stage_id = ?2 AND state = 'running' AND yield_job IS NULL",
                )?
                .execute(params![run_id, stage_id, order.for_job, order.reason])?;
            if n == 1 {
                asked += 1;
                ctx.transition(
                    stage_key(&run_id, &stage_id),
                    Some(&run_id),
                    Some(StageState::Running),
                    StageState::Running,
                    format!("asked to yield at its next checkpoint: {}", order.reason),
                    &Actor::Scheduler,
                )?;
            }
        }
    }
    Ok(asked)
}

/// Online agents with their running jobs. A job running its stage's last
/// step frees its place at its checkpoint anyway: it counts as yielding, so
/// nobody asks it to and the planner counts on what it frees.
fn agent_states(ctx: &Ctx<'_>, online_ms: u64) -> Result<Vec<AgentState>> {
    let since = ctx.now - online_ms as i64;
    let mut agents: Vec<AgentState> = ctx
        .conn
        .prepare_cached(
            "SELECT id, labels, slots, memory_mb, gpus FROM agents WHERE last_seen_at >= ?1 ORDER BY id",
        )?
        .query_map([since], |r| {
            Ok((
                r.get::<_, AgentId>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?
        .map(|row| {
            let (id, labels, slots, memory_mb, gpus) = row?;
            Ok(AgentState {
                id,
                cap: Capacity {
                    slots,
                    memory_mb: memory_mb.max(0) as u64,
                    gpus: serde_json::from_str::<Vec<Gpu>>(&gpus).unwrap_or_default(),
                    labels: serde_json::from_str(&labels).unwrap_or_default(),
                },
                running: Vec::new(),
            })
        })
        .collect::<crate::db::Result<_>>()?;
    let running: Vec<(AgentId, RunningJob)> = ctx
        .conn
        .prepare_cached(
            "SELECT l.agent_id, j.id, j.run_id, j.stage_id, j.priority, j.granted,
                    s.yield_job IS NOT NULL OR j.step + 1 >= s.steps_total
             FROM leases l JOIN jobs j ON j.id = l.job_id
             JOIN stage_runs s ON s.run_id = j.run_id AND s.stage_id = j.stage_id
             WHERE l.state = 'active' ORDER BY j.id",
        )?
        .query_map([], |r| {
            let run: RunId = r.get(2)?;
            let stage: String = r.get(3)?;
            let granted: Option<String> = r.get(5)?;
            Ok((
                r.get(0)?,
                RunningJob {
                    job_id: r.get(1)?,
                    stage: stage_key(&run, &stage),
                    priority: r.get(4)?,
                    grant: parse_grant(granted.as_deref()),
                    yielding: r.get(6)?,
                },
            ))
        })?
        .collect::<crate::db::Result<_>>()?;
    for (agent, job) in running {
        if let Some(a) = agents.iter_mut().find(|a| a.id == agent) {
            a.running.push(job);
        }
    }
    Ok(agents)
}

/// What a stage asked to yield is waiting to do: (the job it yields to, why).
pub(super) fn yield_request(
    ctx: &Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
) -> Result<Option<(JobId, String)>> {
    let row: (Option<JobId>, Option<String>) = ctx
        .conn
        .prepare_cached(
            "SELECT yield_job, yield_for FROM stage_runs WHERE run_id = ?1 AND stage_id = ?2",
        )?
        .query_row(params![run_id, stage_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(match row {
        (Some(j), why) => Some((j, why.unwrap_or_default())),
        _ => None,
    })
}

/// A stage asked to yield reached a checkpoint with its next step queued:
/// it is suspended, and what its step held stays kept for the work it
/// yielded to.
pub(super) fn yield_at_checkpoint(
    ctx: &mut Ctx<'_>,
    run_id: &RunId,
    stage_id: &str,
    held: &Grant,
    why: &str,
    actor: &Actor,
) -> Result<StageState> {
    let reserved = crate::error::encode("a reservation", held)?;
    ctx.conn
        .prepare_cached("UPDATE stage_runs SET reserved = ?3 WHERE run_id = ?1 AND stage_id = ?2")?
        .execute(params![run_id, stage_id, reserved])?;
    stage_event(
        ctx,
        run_id,
        stage_id,
        StageEvent::Yield,
        format!("suspended at its checkpoint: {why}"),
        actor,
    )
}

/// Job `job_id` left the queue (placed `where_`, or withdrawn): stages that
/// yielded to it resume, and stages still asked to yield to it need not.
pub(super) fn release_yielders(ctx: &mut Ctx<'_>, job_id: JobId, where_: &str) -> Result<()> {
    let stages: Vec<(RunId, String, String, u32)> = ctx
        .conn
        .prepare_cached(
            "SELECT run_id, stage_id, state, step FROM stage_runs WHERE yield_job = ?1",
        )?
        .query_map([job_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<crate::db::Result<_>>()?;
    for (run_id, stage_id, state, step) in stages {
        ctx.conn
            .prepare_cached(
                "UPDATE stage_runs SET yield_job = NULL, yield_for = NULL, reserved = NULL
                 WHERE run_id = ?1 AND stage_id = ?2",
            )?
            .execute(params![run_id, stage_id])?;
        if state == StageState::Suspended.as_str() {
            let next = super::human::next_of(ctx, &run_id, &stage_id, Some(step))?;
            stage_event(
                ctx,
                &run_id,
                &stage_id,
                StageEvent::Resume { next },
                format!("resumed: the work it yielded to (job {job_id}) was placed {where_}; step {step} queued on its agent"),
                &Actor::Scheduler,
            )?;
        }
    }
    Ok(())
}
