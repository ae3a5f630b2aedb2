//! The write operations, run by the writer inside a batch's transaction.
//! Each loads the rows it needs, asks the core's machines what the event
//! does, writes the new state with its transition row, and applies the effects.

use std::collections::BTreeMap;
use std::sync::Arc;

use orchestrator_core::api::{
    AgentRegistered, ClaimedJob, CompleteRequest, Completed, HeartbeatResponse, JobSpec, LeaseRef,
    RegisterAgent, Submitted,
};
use orchestrator_core::error::{ErrorClass, MAX_INFRA_ATTEMPTS};
use orchestrator_core::machine::{
    job_on, run_on, stage_on, JobEvent, RunEvent, StageEffect, StageEvent,
};
use orchestrator_core::{Entity, JobState, RunState, StageState, Workflow};
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use super::writer::Ctx;
use crate::{ids, NewRun, Result, StoreError};

fn conflict(e: impl std::fmt::Display) -> StoreError {
    StoreError::Conflict(e.to_string())
}

fn stage_key(run_id: &str, stage_id: &str) -> String {
    format!("{run_id}/{stage_id}")
}

/// The parsed workflow of a run, from the cache or the `runs` row.
fn workflow(ctx: &mut Ctx<'_>, run_id: &str) -> Result<Arc<Workflow>> {
    if let Some(w) = ctx.workflows.get(run_id) {
        return Ok(w.clone());
    }
    let spec: String = ctx
        .conn
        .prepare_cached("SELECT spec FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "run",
            id: run_id.to_owned(),
        })?;
    let wf: Workflow = serde_json::from_str(&spec)
        .map_err(|e| StoreError::Database(format!("run {run_id}: stored spec unreadable: {e}")))?;
    let wf = Arc::new(wf);
    ctx.workflows.insert(run_id.to_owned(), wf.clone());
    Ok(wf)
}

pub fn submit_run(ctx: &mut Ctx<'_>, run: NewRun) -> Result<Submitted> {
    let wf = orchestrator_core::parse_workflow(&run.workflow, run.file.as_deref())
        .map_err(StoreError::InvalidWorkflow)?;
    let plan = orchestrator_core::plan(&wf).map_err(|cycle| {
        conflict(format!(
            "the needs of these stages form a cycle: {}",
            cycle.join(" -> ")
        ))
    })?;
    let run_id = ids::new_id("r");
    let spec = serde_json::to_string(&wf).map_err(|e| StoreError::Database(e.to_string()))?;
    let hash = format!("{:x}", Sha256::digest(run.workflow.as_bytes()));
    ctx.conn
        .prepare_cached(
            "INSERT INTO runs (id, workflow, project_dir, spec, spec_hash, state, priority, stages_total, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            run_id,
            wf.name,
            run.project_dir,
            spec,
            hash,
            RunState::Running.as_str(),
            run.priority,
            wf.stages.len() as i64,
            ctx.now
        ])?;
    ctx.transition(
        Entity::Run,
        run_id.clone(),
        Some(&run_id),
        None,
        RunState::Running.as_str(),
        format!(
            "submitted workflow {} ({} stages, spec sha256 {})",
            wf.name,
            wf.stages.len(),
            &hash[..12]
        ),
        &run.actor,
    )?;
    {
        let mut ins_stage = ctx.conn.prepare_cached(
            "INSERT INTO stage_runs (run_id, stage_id, ord, state, unmet, steps_total) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut ins_req = ctx.conn.prepare_cached(
            "INSERT INTO requires (run_id, stage_id, required) VALUES (?1, ?2, ?3)",
        )?;
        for (i, st) in wf.stages.iter().enumerate() {
            ins_stage.execute(params![
                run_id,
                st.id,
                i as i64,
                StageState::Pending.as_str(),
                st.needs.len() as i64,
                st.steps.len() as i64
            ])?;
            for n in &st.needs {
                ins_req.execute(params![run_id, st.id, n])?;
            }
        }
    }
    for st in &wf.stages {
        ctx.transition(
            Entity::Stage,
            stage_key(&run_id, &st.id),
            Some(&run_id),
            None,
            StageState::Pending.as_str(),
            if st.needs.is_empty() {
                "created".to_owned()
            } else {
                format!("created; needs {}", st.needs.join(", "))
            },
            "scheduler",
        )?;
    }
    ctx.workflows.insert(run_id.clone(), Arc::new(wf));
    ctx.schedule = true;
    Ok(Submitted { run_id, plan })
}

/// The scheduler pass: every pending stage whose needs have all succeeded
/// gets a job for its first step, highest run priority first.
pub fn schedule(ctx: &mut Ctx<'_>) -> Result<()> {
    ctx.schedule = false;
    let ready: Vec<(String, String, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT s.run_id, s.stage_id, s.ord FROM stage_runs s JOIN runs r ON r.id = s.run_id
             WHERE s.state = 'pending' AND s.unmet = 0
             ORDER BY r.priority DESC, r.created_at, s.ord",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (run_id, stage_id, ord) in ready {
        let wf = workflow(ctx, &run_id)?;
        let needs = wf
            .stages
            .get(ord as usize)
            .map_or(&[][..], |s| &s.needs[..]);
        let reason = match needs {
            [] => "runnable: needs nothing".to_owned(),
            [a] => format!("runnable: {a} succeeded"),
            [a, b] => format!("runnable: {a} and {b} succeeded"),
            [a, b, rest @ ..] => format!(
                "runnable: {a}, {b} and the {} other stages it needs succeeded",
                rest.len()
            ),
        };
        stage_event(
            ctx,
            &run_id,
            &stage_id,
            StageEvent::NeedsMet,
            reason,
            "scheduler",
        )?;
    }
    Ok(())
}

struct StageRow {
    state: StageState,
    ord: usize,
    attempt: u32,
    steps_total: u32,
    priority: i32,
    project_dir: String,
}

fn load_stage(ctx: &Ctx<'_>, run_id: &str, stage_id: &str) -> Result<StageRow> {
    ctx.conn
        .prepare_cached(
            "SELECT s.state, s.ord, s.attempt, s.steps_total, r.priority, r.project_dir
             FROM stage_runs s JOIN runs r ON r.id = s.run_id WHERE s.run_id = ?1 AND s.stage_id = ?2",
        )?
        .query_row([run_id, stage_id], |r| {
            let state: String = r.get(0)?;
            Ok(StageRow {
                state: StageState::parse(&state).unwrap_or(StageState::Failed),
                ord: r.get::<_, i64>(1)? as usize,
                attempt: r.get(2)?,
                steps_total: r.get(3)?,
                priority: r.get(4)?,
                project_dir: r.get(5)?,
            })
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound { what: "stage", id: stage_key(run_id, stage_id) })
}

/// Applies one event to a stage, writes the change and follows its effects.
pub fn stage_event(
    ctx: &mut Ctx<'_>,
    run_id: &str,
    stage_id: &str,
    event: StageEvent,
    reason: String,
    actor: &str,
) -> Result<StageState> {
    let row = load_stage(ctx, run_id, stage_id)?;
    let (to, effects) = stage_on(row.state, row.attempt, event).map_err(conflict)?;
    let started = matches!(event, StageEvent::Started);
    ctx.conn
        .prepare_cached(
            "UPDATE stage_runs SET state = ?3,
                started_at = CASE WHEN ?4 AND started_at IS NULL THEN ?5 ELSE started_at END,
                ended_at = CASE WHEN ?6 THEN ?5 ELSE ended_at END
             WHERE run_id = ?1 AND stage_id = ?2",
        )?
        .execute(params![
            run_id,
            stage_id,
            to.as_str(),
            started,
            ctx.now,
            to.is_terminal()
        ])?;
    if to != row.state {
        ctx.transition(
            Entity::Stage,
            stage_key(run_id, stage_id),
            Some(run_id),
            Some(row.state.as_str()),
            to.as_str(),
            reason,
            actor,
        )?;
    }
    for effect in effects {
        match effect {
            StageEffect::EnqueueStep { step, attempt } => {
                enqueue(ctx, run_id, stage_id, &row, step, attempt)?
            }
            StageEffect::ReleaseDependents => {
                ctx.conn
                    .prepare_cached(
                        "UPDATE stage_runs SET unmet = unmet - 1 WHERE run_id = ?1 AND stage_id IN
                         (SELECT stage_id FROM requires WHERE run_id = ?1 AND required = ?2)",
                    )?
                    .execute([run_id, stage_id])?;
                ctx.schedule = true;
            }
            StageEffect::BlockDependents => {
                let dependents: Vec<String> = ctx
                    .conn
                    .prepare_cached(
                        "SELECT q.stage_id FROM requires q JOIN stage_runs s
                           ON s.run_id = q.run_id AND s.stage_id = q.stage_id
                         WHERE q.run_id = ?1 AND q.required = ?2 AND s.state = 'pending'",
                    )?
                    .query_map([run_id, stage_id], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for d in dependents {
                    // A diamond may reach a dependent twice; the second time it is already blocked.
                    if load_stage(ctx, run_id, &d)?.state == StageState::Pending {
                        stage_event(
                            ctx,
                            run_id,
                            &d,
                            StageEvent::UpstreamFailed,
                            format!("blocked: it needs stage {stage_id}, which ended {to}"),
                            "scheduler",
                        )?;
                    }
                }
            }
            StageEffect::CancelJob => cancel_live_job(ctx, run_id, stage_id, actor)?,
            StageEffect::StageEnded => stage_ended(ctx, run_id, to == StageState::Succeeded)?,
        }
    }
    Ok(to)
}

fn enqueue(
    ctx: &mut Ctx<'_>,
    run_id: &str,
    stage_id: &str,
    row: &StageRow,
    step: u32,
    attempt: u32,
) -> Result<()> {
    let wf = workflow(ctx, run_id)?;
    let stage = wf
        .stages
        .get(row.ord)
        .filter(|s| s.id == stage_id)
        .ok_or_else(|| {
            StoreError::Database(format!(
                "stage {stage_id} missing from the spec of run {run_id}"
            ))
        })?;
    let st = stage
        .steps
        .get(step as usize)
        .ok_or_else(|| StoreError::Database(format!("stage {stage_id} has no step {step}")))?;
    let mut env: BTreeMap<String, String> = wf.env.clone();
    env.extend(stage.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let spec = JobSpec {
        run_id: run_id.to_owned(),
        stage_id: stage_id.to_owned(),
        step,
        steps_total: row.steps_total,
        attempt,
        step_name: st.name.clone(),
        project_dir: row.project_dir.clone(),
        shell: st.shell,
        commands: st.commands.clone(),
        env,
        timeout_ms: stage.timeout.map(|d| d.as_millis()),
    };
    let payload = serde_json::to_string(&spec).map_err(|e| StoreError::Database(e.to_string()))?;
    let labels =
        serde_json::to_string(&stage.labels).map_err(|e| StoreError::Database(e.to_string()))?;
    ctx.conn
        .prepare_cached(
            "UPDATE stage_runs SET step = ?3, attempt = ?4 WHERE run_id = ?1 AND stage_id = ?2",
        )?
        .execute(params![run_id, stage_id, step, attempt])?;
    ctx.conn
        .prepare_cached(
            "INSERT INTO jobs (run_id, stage_id, step, attempt, state, priority, labels, payload, created_at)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8)",
        )?
        .execute(params![run_id, stage_id, step, attempt, row.priority, labels, payload, ctx.now])?;
    let job_id = ctx.conn.last_insert_rowid();
    ctx.transition(
        Entity::Job,
        job_id.to_string(),
        Some(run_id),
        None,
        JobState::Queued.as_str(),
        format!("step {step} of stage {stage_id}, attempt {attempt}"),
        "scheduler",
    )?;
    ctx.queued = true;
    Ok(())
}

fn cancel_live_job(ctx: &mut Ctx<'_>, run_id: &str, stage_id: &str, actor: &str) -> Result<()> {
    let live: Vec<(i64, String, Option<i64>)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, state, lease_id FROM jobs WHERE run_id = ?1 AND stage_id = ?2 AND state IN ('queued', 'leased')",
        )?
        .query_map([run_id, stage_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (job_id, state, lease_id) in live {
        let from = JobState::parse(&state).unwrap_or(JobState::Queued);
        let to = job_on(from, JobEvent::Cancel).map_err(conflict)?;
        set_job_state(ctx, job_id, run_id, from, to, "run cancelled".into(), actor)?;
        if let Some(l) = lease_id {
            end_lease(ctx, l, run_id, "revoked", "run cancelled".into(), actor)?;
        }
    }
    Ok(())
}

fn stage_ended(ctx: &mut Ctx<'_>, run_id: &str, succeeded: bool) -> Result<()> {
    let (state, total, ended, ok): (String, i64, i64, i64) = ctx
        .conn
        .prepare_cached(
            "UPDATE runs SET stages_ended = stages_ended + 1, stages_succeeded = stages_succeeded + ?2
             WHERE id = ?1 RETURNING state, stages_total, stages_ended, stages_succeeded",
        )?
        .query_row(params![run_id, succeeded as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    let from = RunState::parse(&state).unwrap_or(RunState::Running);
    if from.is_terminal() {
        return Ok(());
    }
    let open = (total - ended).max(0) as usize;
    let to = run_on(
        from,
        RunEvent::StageEnded {
            open,
            unsuccessful: (ended - ok) as usize,
        },
    )
    .map_err(conflict)?;
    if to != from {
        ctx.conn
            .prepare_cached("UPDATE runs SET state = ?2, ended_at = ?3 WHERE id = ?1")?
            .execute(params![run_id, to.as_str(), ctx.now])?;
        let reason = if to == RunState::Succeeded {
            format!("all {total} stages succeeded")
        } else {
            format!("{} of {total} stages did not succeed", ended - ok)
        };
        ctx.transition(
            Entity::Run,
            run_id.to_owned(),
            Some(run_id),
            Some(from.as_str()),
            to.as_str(),
            reason,
            "scheduler",
        )?;
        ctx.workflows.remove(run_id);
    }
    Ok(())
}

fn set_job_state(
    ctx: &mut Ctx<'_>,
    job_id: i64,
    run_id: &str,
    from: JobState,
    to: JobState,
    reason: String,
    actor: &str,
) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE jobs SET state = ?2, ended_at = CASE WHEN ?3 THEN ?4 ELSE ended_at END WHERE id = ?1",
        )?
        .execute(params![job_id, to.as_str(), to.is_terminal(), ctx.now])?;
    ctx.transition(
        Entity::Job,
        job_id.to_string(),
        Some(run_id),
        Some(from.as_str()),
        to.as_str(),
        reason,
        actor,
    )
}

fn end_lease(
    ctx: &mut Ctx<'_>,
    lease_id: i64,
    run_id: &str,
    to: &str,
    reason: String,
    actor: &str,
) -> Result<()> {
    ctx.conn
        .prepare_cached("UPDATE leases SET state = ?2 WHERE id = ?1")?
        .execute(params![lease_id, to])?;
    ctx.transition(
        Entity::Lease,
        lease_id.to_string(),
        Some(run_id),
        Some("active"),
        to,
        reason,
        actor,
    )
}

pub fn register_agent(
    ctx: &mut Ctx<'_>,
    reg: RegisterAgent,
    lease_ttl_ms: u64,
    heartbeat_interval_ms: u64,
) -> Result<AgentRegistered> {
    if reg.name.trim().is_empty() || reg.name.len() > 128 {
        return Err(conflict("agent name must be 1 to 128 characters"));
    }
    if reg.slots == 0 || reg.slots > 4096 {
        return Err(conflict(format!(
            "slots = {}: expected 1 to 4096",
            reg.slots
        )));
    }
    let labels =
        serde_json::to_string(&reg.labels).map_err(|e| StoreError::Database(e.to_string()))?;
    let existing: Option<String> = ctx
        .conn
        .prepare_cached("SELECT id FROM agents WHERE name = ?1")?
        .query_row([&reg.name], |r| r.get(0))
        .optional()?;
    let agent_id = match existing {
        Some(id) => {
            ctx.conn
                .prepare_cached(
                    "UPDATE agents SET labels = ?2, slots = ?3, hostname = ?4, last_seen_at = ?5 WHERE id = ?1",
                )?
                .execute(params![id, labels, reg.slots, reg.hostname, ctx.now])?;
            id
        }
        None => {
            let id = ids::new_id("a");
            ctx.conn
                .prepare_cached(
                    "INSERT INTO agents (id, name, labels, slots, hostname, registered_at, last_seen_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                )?
                .execute(params![id, reg.name, labels, reg.slots, reg.hostname, ctx.now])?;
            ctx.transition(
                Entity::Agent,
                id.clone(),
                None,
                None,
                "registered",
                format!(
                    "agent {} with {} slots, labels [{}]",
                    reg.name,
                    reg.slots,
                    reg.labels.join(", ")
                ),
                &format!("agent:{id}"),
            )?;
            id
        }
    };
    // A registering agent holds nothing: leases of an earlier incarnation are void.
    let stale: Vec<i64> = ctx
        .conn
        .prepare_cached("SELECT id FROM leases WHERE agent_id = ?1 AND state = 'active'")?
        .query_map([&agent_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut stale_jobs = Vec::new();
    for lease_id in stale {
        stale_jobs.push(lose_lease(
            ctx,
            lease_id,
            "expired",
            "agent registered again; leases of its earlier run are void",
        )?);
    }
    Ok(AgentRegistered {
        agent_id,
        lease_ttl_ms,
        heartbeat_interval_ms,
        stale_jobs,
    })
}

/// Ends an active lease without a completion (expiry, agent restart) and
/// requeues its stage from step 0. Returns the job id.
fn lose_lease(ctx: &mut Ctx<'_>, lease_id: i64, lease_to: &str, why: &str) -> Result<i64> {
    let (job_id, agent_id, run_id, stage_id, state, attempt): (i64, String, String, String, String, u32) = ctx
        .conn
        .prepare_cached(
            "SELECT j.id, l.agent_id, j.run_id, j.stage_id, j.state, j.attempt FROM leases l JOIN jobs j ON j.id = l.job_id
             WHERE l.id = ?1",
        )?
        .query_row([lease_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?;
    let reason = format!("{why} (agent {agent_id})");
    end_lease(ctx, lease_id, &run_id, lease_to, reason.clone(), "reaper")?;
    let from = JobState::parse(&state).unwrap_or(JobState::Leased);
    if from == JobState::Leased {
        let to = job_on(from, JobEvent::Expire).map_err(conflict)?;
        ctx.conn
            .prepare_cached("UPDATE jobs SET error = ?2, error_class = 'infra' WHERE id = ?1")?
            .execute(params![job_id, reason])?;
        set_job_state(ctx, job_id, &run_id, from, to, reason.clone(), "reaper")?;
        stage_event(
            ctx,
            &run_id,
            &stage_id,
            StageEvent::AttemptLost {
                attempt,
                max_attempts: MAX_INFRA_ATTEMPTS,
            },
            format!("attempt {attempt} lost: {reason}; restarting from step 0"),
            "reaper",
        )?;
    }
    Ok(job_id)
}

pub fn claim(ctx: &mut Ctx<'_>, agent_id: &str, lease_ttl_ms: u64) -> Result<Option<ClaimedJob>> {
    let agent: Option<(String, u32)> = ctx
        .conn
        .prepare_cached("SELECT labels, slots FROM agents WHERE id = ?1")?
        .query_row([agent_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((labels, slots)) = agent else {
        return Err(StoreError::NotFound {
            what: "agent",
            id: agent_id.to_owned(),
        });
    };
    ctx.conn
        .prepare_cached("UPDATE agents SET last_seen_at = ?2 WHERE id = ?1")?
        .execute(params![agent_id, ctx.now])?;
    let held: u32 = ctx
        .conn
        .prepare_cached("SELECT COUNT(*) FROM leases WHERE agent_id = ?1 AND state = 'active'")?
        .query_row([agent_id], |r| r.get(0))?;
    if held >= slots {
        return Ok(None);
    }
    let agent_labels: Vec<String> = serde_json::from_str(&labels).unwrap_or_default();
    // Labels are checked here rather than in SQL; most jobs need none.
    let fits = |labels: &str| {
        labels == "[]"
            || serde_json::from_str::<Vec<String>>(labels)
                .unwrap_or_default()
                .iter()
                .all(|l| agent_labels.contains(l))
    };
    // Walk the queue in order and stop at the first job this agent can run;
    // usually that is the first row.
    let mut job_id = None;
    {
        let mut st = ctx.conn.prepare_cached(
            "SELECT id, labels FROM jobs WHERE state = 'queued' ORDER BY priority DESC, id LIMIT 256",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let labels: String = r.get(1)?;
            if fits(&labels) {
                job_id = Some(r.get::<_, i64>(0)?);
                break;
            }
        }
    }
    let Some(job_id) = job_id else {
        return Ok(None);
    };
    let payload: String = ctx
        .conn
        .prepare_cached("SELECT payload FROM jobs WHERE id = ?1")?
        .query_row([job_id], |r| r.get(0))?;
    let spec: JobSpec =
        serde_json::from_str(&payload).map_err(|e| StoreError::Database(e.to_string()))?;
    let token = ids::new_secret();
    let expires = ctx.now + lease_ttl_ms as i64;
    ctx.conn
        .prepare_cached(
            "INSERT INTO leases (job_id, agent_id, token, state, expires_at, created_at) VALUES (?1, ?2, ?3, 'active', ?4, ?5)",
        )?
        .execute(params![job_id, agent_id, token, expires, ctx.now])?;
    let lease_id = ctx.conn.last_insert_rowid();
    let actor = format!("agent:{agent_id}");
    ctx.transition(
        Entity::Lease,
        lease_id.to_string(),
        Some(&spec.run_id),
        None,
        "active",
        format!("job {job_id} leased to agent {agent_id} for {lease_ttl_ms} ms"),
        &actor,
    )?;
    let to = job_on(JobState::Queued, JobEvent::Lease).map_err(conflict)?;
    ctx.conn
        .prepare_cached("UPDATE jobs SET state = ?2, agent_id = ?3, lease_id = ?4, started_at = ?5 WHERE id = ?1")?
        .execute(params![job_id, to.as_str(), agent_id, lease_id, ctx.now])?;
    ctx.transition(
        Entity::Job,
        job_id.to_string(),
        Some(&spec.run_id),
        Some(JobState::Queued.as_str()),
        to.as_str(),
        format!("claimed by agent {agent_id}"),
        &actor,
    )?;
    stage_event(
        ctx,
        &spec.run_id,
        &spec.stage_id,
        StageEvent::Started,
        format!("step {} running on agent {agent_id}", spec.step),
        &actor,
    )?;
    Ok(Some(ClaimedJob {
        job_id,
        lease_id,
        lease_token: token,
        lease_expires_at_ms: expires,
        spec,
    }))
}

pub fn heartbeat(
    ctx: &mut Ctx<'_>,
    agent_id: &str,
    leases: Vec<LeaseRef>,
    lease_ttl_ms: u64,
) -> Result<HeartbeatResponse> {
    let n = ctx
        .conn
        .prepare_cached("UPDATE agents SET last_seen_at = ?2 WHERE id = ?1")?
        .execute(params![agent_id, ctx.now])?;
    if n == 0 {
        return Err(StoreError::NotFound {
            what: "agent",
            id: agent_id.to_owned(),
        });
    }
    let expires = ctx.now + lease_ttl_ms as i64;
    let mut out = HeartbeatResponse {
        lease_expires_at_ms: expires,
        ..Default::default()
    };
    for l in leases {
        let live: Option<i64> = ctx
            .conn
            .prepare_cached(
                "SELECT l.id FROM jobs j JOIN leases l ON l.id = j.lease_id
                 WHERE j.id = ?1 AND l.token = ?2 AND l.agent_id = ?3 AND l.state = 'active'",
            )?
            .query_row(params![l.job_id, l.lease_token, agent_id], |r| r.get(0))
            .optional()?;
        match live {
            Some(lease_id) => {
                ctx.conn
                    .prepare_cached("UPDATE leases SET expires_at = ?2 WHERE id = ?1")?
                    .execute(params![lease_id, expires])?;
                out.extended.push(l.job_id);
            }
            None => out.revoked.push(l.job_id),
        }
    }
    Ok(out)
}

/// A job with its current lease, as a completion checks it.
struct JobLease {
    run_id: String,
    stage_id: String,
    state: String,
    step: u32,
    attempt: u32,
    holder: Option<String>,
    lease_id: Option<i64>,
    token: Option<String>,
    lease_state: Option<String>,
}

/// Completes a job. The outer error rolls the command back; the inner one is
/// a refusal that is recorded (and so must commit) before it is returned.
pub fn complete(
    ctx: &mut Ctx<'_>,
    job_id: i64,
    req: CompleteRequest,
    lease_ttl_ms: u64,
) -> Result<Result<Completed>> {
    let row = ctx
        .conn
        .prepare_cached(
            "SELECT j.run_id, j.stage_id, j.state, j.step, j.attempt, j.agent_id, j.lease_id, l.token, l.state
             FROM jobs j LEFT JOIN leases l ON l.id = j.lease_id WHERE j.id = ?1",
        )?
        .query_row([job_id], |r| {
            Ok(JobLease {
                run_id: r.get(0)?,
                stage_id: r.get(1)?,
                state: r.get(2)?,
                step: r.get(3)?,
                attempt: r.get(4)?,
                holder: r.get(5)?,
                lease_id: r.get(6)?,
                token: r.get(7)?,
                lease_state: r.get(8)?,
            })
        })
        .optional()?;
    let Some(JobLease {
        run_id,
        stage_id,
        state,
        step,
        attempt,
        holder,
        lease_id,
        token,
        lease_state,
    }) = row
    else {
        return Ok(Err(StoreError::NotFound {
            what: "job",
            id: job_id.to_string(),
        }));
    };
    let actor = format!("agent:{}", req.agent_id);
    let from = JobState::parse(&state).unwrap_or(JobState::Failed);
    let refusal = if holder.as_deref() != Some(req.agent_id.as_str()) {
        Some(format!("agent {} does not hold job {job_id}", req.agent_id))
    } else if token.as_deref() != Some(req.lease_token.as_str()) {
        Some("the lease token is not the job's current lease".to_owned())
    } else if lease_state.as_deref() != Some("active") || from != JobState::Leased {
        Some(format!(
            "the lease is {} and the job is {from}; a late completion is not recorded",
            lease_state.as_deref().unwrap_or("missing")
        ))
    } else {
        None
    };
    if let Some(reason) = refusal {
        ctx.transition(
            Entity::Job,
            job_id.to_string(),
            Some(&run_id),
            Some(from.as_str()),
            from.as_str(),
            format!("completion refused: {reason}"),
            &actor,
        )?;
        return Ok(Err(StoreError::StaleLease { job_id, reason }));
    }
    let o = &req.outcome;
    let exit_codes =
        serde_json::to_string(&o.exit_codes).map_err(|e| StoreError::Database(e.to_string()))?;
    ctx.conn
        .prepare_cached("UPDATE jobs SET exit_codes = ?2, error = ?3, error_class = ?4, bundle = ?5 WHERE id = ?1")?
        .execute(params![job_id, exit_codes, o.error, o.error_class.map(|c| c.as_str()), o.bundle])?;
    let to = job_on(
        from,
        if o.success {
            JobEvent::Succeed
        } else {
            JobEvent::Fail
        },
    )
    .map_err(conflict)?;
    let reason = match (&o.error, o.success) {
        (_, true) => format!("step {step} succeeded in {} ms", o.duration_ms),
        (Some(e), false) => e.clone(),
        (None, false) => "step failed".to_owned(),
    };
    set_job_state(ctx, job_id, &run_id, from, to, reason.clone(), &actor)?;
    if let Some(l) = lease_id {
        end_lease(
            ctx,
            l,
            &run_id,
            "released",
            format!("job {job_id} completed"),
            &actor,
        )?;
    }
    let row = load_stage(ctx, &run_id, &stage_id)?;
    let event = if o.success {
        StageEvent::StepSucceeded {
            step,
            steps: row.steps_total,
        }
    } else if o.error_class == Some(ErrorClass::Infra) {
        StageEvent::AttemptLost {
            attempt,
            max_attempts: MAX_INFRA_ATTEMPTS,
        }
    } else {
        StageEvent::StepFailed
    };
    let why = if o.success {
        format!("step {step} succeeded")
    } else {
        format!(
            "step {step} failed ({}): {reason}",
            o.error_class.map_or("task", |c| c.as_str())
        )
    };
    let stage_state = stage_event(ctx, &run_id, &stage_id, event, why, &actor)?;
    let run_state: String = ctx
        .conn
        .prepare_cached("SELECT state FROM runs WHERE id = ?1")?
        .query_row([&run_id], |r| r.get(0))?;
    let next = if req.claim_next {
        // Stages this completion released are queued first, so the agent
        // can be handed one of them at once.
        if ctx.schedule {
            schedule(ctx)?;
        }
        claim(ctx, &req.agent_id, lease_ttl_ms)?
    } else {
        None
    };
    Ok(Ok(Completed {
        job_id,
        stage_state,
        run_state: RunState::parse(&run_state).unwrap_or(RunState::Running),
        next,
    }))
}

pub fn expire_leases(ctx: &mut Ctx<'_>, now: i64) -> Result<usize> {
    let due: Vec<(i64, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, expires_at FROM leases WHERE state = 'active' AND expires_at <= ?1",
        )?
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (lease_id, at) in &due {
        lose_lease(
            ctx,
            *lease_id,
            "expired",
            &format!("lease expired {} ms ago without a heartbeat", now - at),
        )?;
    }
    Ok(due.len())
}

pub fn resume(ctx: &mut Ctx<'_>, grace_ms: u64) -> Result<usize> {
    let n = ctx
        .conn
        .prepare_cached(
            "UPDATE leases SET expires_at = MAX(expires_at, ?1) WHERE state = 'active'",
        )?
        .execute([ctx.now + grace_ms as i64])?;
    // Anything runnable that was not queued before a crash is queued now.
    ctx.schedule = true;
    Ok(n)
}
