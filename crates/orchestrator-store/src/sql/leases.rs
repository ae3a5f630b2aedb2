//! The lease protocol's write operations: agents register, claim jobs under
//! leases, heartbeat them and complete them; the reaper expires them. A job
//! completes at most once: only under its live lease, and a refusal is recorded.

use crate::db::{params, Optional};
use orchestrator_core::api::{
    AgentRegistered, ClaimedJob, CompleteRequest, Completed, HeartbeatResponse, JobSpec, LeaseRef,
    RegisterAgent,
};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::machine::{job_on, After, Gate, JobEffect, JobEvent, LeaseEnd, StageEvent};
use orchestrator_core::{Entity, JobState, RunState, StageState};

use orchestrator_core::sched::{free, Free, Grant};

use super::graph::{conflict, end_lease, job_event, schedule, stage_event, JobRef};
use super::retry::{failure_policy, what_follows};
use super::writer::Ctx;
use super::{human, loops, placement, preempt};
use crate::{ids, Result, StoreError};

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
    if reg.gpus.len() > 64 {
        return Err(conflict(format!(
            "{} GPUs: expected at most 64",
            reg.gpus.len()
        )));
    }
    let mut indices: Vec<u32> = reg.gpus.iter().map(|g| g.index).collect();
    indices.sort_unstable();
    indices.dedup();
    if indices.len() != reg.gpus.len() {
        return Err(conflict(
            "gpus: two GPUs share one index; expected distinct indices",
        ));
    }
    let mut labels_sorted = reg.labels.clone();
    labels_sorted.sort();
    labels_sorted.dedup();
    let labels =
        serde_json::to_string(&labels_sorted).map_err(|e| StoreError::Database(e.to_string()))?;
    let gpus = serde_json::to_string(&reg.gpus).map_err(|e| StoreError::Database(e.to_string()))?;
    let described = describe_agent(&reg);
    let mem = i64::try_from(reg.memory_mb).unwrap_or(i64::MAX);
    let existing: Option<String> = ctx
        .conn
        .prepare_cached("SELECT id FROM agents WHERE name = ?1")?
        .query_row([&reg.name], |r| r.get(0))
        .optional()?;
    let agent_id = match existing {
        Some(id) => {
            ctx.conn
                .prepare_cached(
                    "UPDATE agents SET labels = ?2, slots = ?3, hostname = ?4, last_seen_at = ?5, memory_mb = ?6, gpus = ?7 WHERE id = ?1",
                )?
                .execute(params![id, labels, reg.slots, reg.hostname, ctx.now, mem, gpus])?;
            super::agents::heard_from(ctx, &id, "registered again")?;
            id
        }
        None => {
            let id = ids::new_id("a");
            ctx.conn
                .prepare_cached(
                    "INSERT INTO agents (id, name, labels, slots, hostname, registered_at, last_seen_at, memory_mb, gpus)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
                )?
                .execute(params![id, reg.name, labels, reg.slots, reg.hostname, ctx.now, mem, gpus])?;
            ctx.transition(
                Entity::Agent,
                id.clone(),
                None,
                None,
                "registered",
                described,
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
        .collect::<crate::db::Result<_>>()?;
    let mut stale_jobs = Vec::new();
    for lease_id in stale {
        stale_jobs.push(lose_lease(
            ctx,
            lease_id,
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

fn describe_agent(reg: &RegisterAgent) -> String {
    let mut s = format!(
        "agent {} with {} slots, {} memory",
        reg.name,
        reg.slots,
        orchestrator_core::spec::human_mib(reg.memory_mb)
    );
    for g in &reg.gpus {
        s += &format!(
            ", GPU{} {}",
            g.index,
            orchestrator_core::spec::human_mib(g.memory_mb)
        );
    }
    s += &format!(", labels [{}]", reg.labels.join(", "));
    s
}

/// Ends an active lease without a completion (expiry, agent restart) and
/// requeues its stage from step 0. Returns the job id.
fn lose_lease(ctx: &mut Ctx<'_>, lease_id: i64, why: &str) -> Result<i64> {
    type Lost = (
        i64,
        String,
        String,
        String,
        String,
        u32,
        u32,
        Option<String>,
        Option<i64>,
    );
    let (job_id, agent_id, run_id, stage_id, state, attempt, step, host, seen): Lost = ctx
        .conn
        .prepare_cached(
            "SELECT j.id, l.agent_id, j.run_id, j.stage_id, j.state, j.attempt, j.step, a.hostname, a.last_seen_at
             FROM leases l JOIN jobs j ON j.id = l.job_id LEFT JOIN agents a ON a.id = l.agent_id
             WHERE l.id = ?1",
        )?
        .query_row([lease_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
        })?;
    // The machine is out of reach: say where the work was and when it was
    // last heard of, which is what the human reading this can act on.
    let reason = format!(
        "{why} [run {run_id}, stage {stage_id}, step {step}, attempt {attempt}, agent {agent_id} on {}; last heard from {}]",
        host.as_deref().unwrap_or("an unknown host"),
        seen.map_or("never".to_owned(), |t| format!("{} ms before", (ctx.now - t).max(0)))
    );
    let from = JobState::parse(&state).unwrap_or(JobState::Leased);
    if from != JobState::Leased {
        // The job already left this lease behind; end the lease all the same.
        end_lease(
            ctx,
            lease_id,
            &run_id,
            LeaseEnd::Expired.as_str(),
            reason,
            "reaper",
        )?;
    } else {
        ctx.conn
            .prepare_cached("UPDATE jobs SET error = ?2, error_class = 'infra' WHERE id = ?1")?
            .execute(params![job_id, reason])?;
        let job = JobRef {
            id: job_id,
            run_id: &run_id,
            lease_id: Some(lease_id),
        };
        job_event(ctx, &job, from, JobEvent::Expire, reason.clone(), "reaper")?;
        let (max_attempts, ask) =
            failure_policy(ctx, &run_id, &stage_id, ErrorClass::Infra, false)?;
        stage_event(
            ctx,
            &run_id,
            &stage_id,
            StageEvent::AttemptLost {
                attempt,
                max_attempts,
                ask,
            },
            format!(
                "attempt {attempt} of {max_attempts} lost: {reason}; {}",
                what_follows(attempt, max_attempts, ask, 0)
            ),
            "reaper",
        )?;
    }
    Ok(job_id)
}

pub fn claim(
    ctx: &mut Ctx<'_>,
    agent_id: &str,
    lease_ttl_ms: u64,
    key: Option<&str>,
) -> Result<Option<ClaimedJob>> {
    if let Some(key) = key {
        if let Some(job) = claimed_before(ctx, agent_id, key, lease_ttl_ms)? {
            return Ok(Some(job));
        }
    }
    let Some(cap) = placement::capacity(ctx.conn, ctx.rules, agent_id)? else {
        return Err(StoreError::NotFound {
            what: "agent",
            id: agent_id.to_owned(),
        });
    };
    // A claim that finds nothing writes nothing, so an idle agent's
    // long-poll costs no commit; heartbeats keep `last_seen_at`.
    let free = free(&cap, placement::held(ctx.conn, agent_id)?.iter());
    if free.slots == 0 {
        return Ok(None);
    }
    let Some((job_id, grant)) = placement::pick(ctx, agent_id, &cap, &free)? else {
        return Ok(None);
    };
    let (payload, queued_at_ms): (String, i64) = ctx
        .conn
        .prepare_cached("SELECT payload, created_at FROM jobs WHERE id = ?1")?
        .query_row([job_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let spec: JobSpec =
        serde_json::from_str(&payload).map_err(|e| StoreError::Database(e.to_string()))?;
    ctx.conn
        .prepare_cached("UPDATE agents SET last_seen_at = ?2 WHERE id = ?1")?
        .execute(params![agent_id, ctx.now])?;
    super::agents::heard_from(ctx, agent_id, "claim")?;
    let (to, effects) = job_on(JobState::Queued, JobEvent::Lease).map_err(conflict)?;
    if effects != [JobEffect::GrantLease] {
        return Err(conflict(format!(
            "job {job_id}: leasing it grants no lease"
        )));
    }
    let token = ids::new_secret();
    let expires = ctx.now + lease_ttl_ms as i64;
    let lease_id: i64 = ctx.conn
        .prepare_cached(
            "INSERT INTO leases (job_id, agent_id, token, state, expires_at, created_at, claim_key) VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?6) RETURNING id",
        )?
        .query_row(params![job_id, agent_id, token, expires, ctx.now, key], |r| r.get(0))?;
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
    ctx.conn
        .prepare_cached("UPDATE jobs SET state = ?2, agent_id = ?3, lease_id = ?4, started_at = ?5, granted = ?6 WHERE id = ?1")?
        .execute(params![job_id, to.as_str(), agent_id, lease_id, ctx.now, grant_text(&grant)])?;
    ctx.transition(
        Entity::Job,
        job_id.to_string(),
        Some(&spec.run_id),
        Some(JobState::Queued.as_str()),
        to.as_str(),
        format!("claimed by agent {agent_id}"),
        &actor,
    )?;
    pin(ctx, &spec.run_id, &spec.stage_id, agent_id, &grant, &free)?;
    stage_event(
        ctx,
        &spec.run_id,
        &spec.stage_id,
        StageEvent::Started,
        format!("step {} running on agent {agent_id}", spec.step),
        &actor,
    )?;
    preempt::release_yielders(ctx, job_id, &format!("on agent {agent_id}"))?;
    Ok(Some(ClaimedJob {
        job_id,
        lease_id,
        lease_token: token,
        queued_at_ms,
        lease_expires_at_ms: expires,
        grant,
        spec,
    }))
}

/// The job a claim named `key` already leased this agent, handed out again
/// (its lease extended) because the agent asks again: the first answer
/// never reached it. Nothing is recorded; the lease is the one it was.
fn claimed_before(
    ctx: &mut Ctx<'_>,
    agent_id: &str,
    key: &str,
    lease_ttl_ms: u64,
) -> Result<Option<ClaimedJob>> {
    type Row = (i64, i64, String, String, i64, Option<String>);
    let row: Option<Row> = ctx
        .conn
        .prepare_cached(
            "SELECT l.id, l.job_id, l.token, j.payload, j.created_at, j.granted
             FROM leases l JOIN jobs j ON j.id = l.job_id AND j.lease_id = l.id
             WHERE l.agent_id = ?1 AND l.state = 'active' AND l.claim_key = ?2 AND j.state = 'leased'",
        )?
        .query_row(params![agent_id, key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })
        .optional()?;
    let Some((lease_id, job_id, token, payload, queued_at_ms, granted)) = row else {
        return Ok(None);
    };
    let spec: JobSpec =
        serde_json::from_str(&payload).map_err(|e| StoreError::Database(e.to_string()))?;
    let expires = ctx.now + lease_ttl_ms as i64;
    ctx.conn
        .prepare_cached("UPDATE leases SET expires_at = MAX(expires_at, ?2) WHERE id = ?1")?
        .execute(params![lease_id, expires])?;
    tracing::info!(
        agent_id,
        job_id,
        "claim asked again after its answer was lost; the same job handed out"
    );
    Ok(Some(ClaimedJob {
        job_id,
        lease_id,
        lease_token: token,
        queued_at_ms,
        lease_expires_at_ms: expires,
        grant: placement::parse_grant(granted.as_deref()),
        spec,
    }))
}

fn grant_text(g: &Grant) -> Option<String> {
    (g != &Grant::default()).then(|| serde_json::to_string(g).unwrap_or_default())
}

/// Pins a stage to the agent that runs its first step (its worktree will
/// be there) and records why it was placed there.
fn pin(
    ctx: &mut Ctx<'_>,
    run_id: &str,
    stage_id: &str,
    agent_id: &str,
    grant: &Grant,
    before: &Free,
) -> Result<()> {
    let gpus = match grant.gpus.as_slice() {
        [] => String::new(),
        g => format!(
            ", GPU {}",
            g.iter()
                .map(|x| x.index.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    let why = format!("placed on agent {agent_id}{gpus}: it fit ({before} before)");
    ctx.conn
        .prepare_cached(
            "UPDATE stage_runs SET agent_id = ?3, placement = ?4
             WHERE run_id = ?1 AND stage_id = ?2 AND agent_id IS NULL",
        )?
        .execute(params![run_id, stage_id, agent_id, why])?;
    Ok(())
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
    super::agents::heard_from(ctx, agent_id, "heartbeat")?;
    let expires = ctx.now + lease_ttl_ms as i64;
    let mut out = HeartbeatResponse {
        lease_expires_at_ms: expires,
        ..Default::default()
    };
    for l in leases {
        let lease: Option<(i64, String)> = ctx
            .conn
            .prepare_cached(
                "SELECT l.id, l.state FROM jobs j JOIN leases l ON l.id = j.lease_id
                 WHERE j.id = ?1 AND l.token = ?2 AND l.agent_id = ?3",
            )?
            .query_row(params![l.job_id, l.lease_token, agent_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        match lease {
            Some((lease_id, state)) if state == "active" => {
                ctx.conn
                    .prepare_cached("UPDATE leases SET expires_at = ?2 WHERE id = ?1")?
                    .execute(params![lease_id, expires])?;
                out.extended.push(l.job_id);
            }
            // Completed by this agent while the heartbeat was on its way:
            // nothing to extend and nothing to kill.
            Some((_, state)) if state == LeaseEnd::Released.as_str() => {}
            _ => out.revoked.push(l.job_id),
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
    // The same completion again, from the holder under the same token: the
    // first was recorded (a lease is released only by its completion) and
    // its answer lost. Acknowledged again, with the job it leased.
    if holder.as_deref() == Some(req.agent_id.as_str())
        && token.as_deref() == Some(req.lease_token.as_str())
        && lease_state.as_deref() == Some(LeaseEnd::Released.as_str())
    {
        return completed_before(ctx, job_id, &run_id, &stage_id, &req, lease_ttl_ms).map(Ok);
    }
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
        .prepare_cached("UPDATE jobs SET exit_codes = ?2, error = ?3, error_class = ?4, bundle = ?5, sandbox = ?6, log_tail = ?7 WHERE id = ?1")?
        .execute(params![job_id, exit_codes, o.error, o.error_class.map(|c| c.as_str()), o.bundle, o.sandbox.map(|k| k.as_str()), o.log_tail.as_deref().map(orchestrator_core::feedback::tail)])?;
    let reason = match (&o.error, o.success) {
        (_, true) => format!("step {step} succeeded in {} ms", o.duration_ms),
        (Some(e), false) => e.clone(),
        (None, false) => "step failed".to_owned(),
    };
    let event = if o.success {
        JobEvent::Succeed
    } else {
        JobEvent::Fail
    };
    let job = JobRef {
        id: job_id,
        run_id: &run_id,
        lease_id,
    };
    job_event(ctx, &job, from, event, reason.clone(), &actor)?;
    let class = o.error_class.unwrap_or(ErrorClass::Task);
    // Where a task failure's work would go back to, once the stage's own
    // retries are spent: what the transition says.
    let send_back = if !o.success && class == ErrorClass::Task || o.until_met == Some(false) {
        loops::send_back_plan(ctx, &run_id, &stage_id)?
    } else {
        None
    };
    let mut event = if o.success {
        human::step_succeeded(ctx, &run_id, &stage_id, job_id, step, o, &actor)?
    } else {
        let (max_attempts, ask) = failure_policy(ctx, &run_id, &stage_id, class, o.timed_out)?;
        if class == ErrorClass::Infra {
            StageEvent::AttemptLost {
                attempt,
                max_attempts,
                ask,
            }
        } else {
            StageEvent::StepFailed {
                step,
                max_attempts,
                ask,
                send_back: send_back.is_some(),
            }
        }
    };
    let follows = |max_attempts, ask, step| match &send_back {
        Some(words) if attempt >= max_attempts => words.clone(),
        _ => what_follows(attempt, max_attempts, ask, step),
    };
    let mut why = match event {
        StageEvent::Validated => format!("validation (job {job_id}) succeeded"),
        _ if o.success => format!("step {step} succeeded"),
        StageEvent::StepFailed {
            max_attempts, ask, ..
        } => format!(
            "step {step} failed ({}{}): {reason}; {}",
            class.as_str(),
            if o.timed_out { ", timeout" } else { "" },
            follows(max_attempts, ask, step)
        ),
        StageEvent::AttemptLost {
            max_attempts, ask, ..
        } => format!(
            "step {step} failed ({}): {reason}; {}",
            class.as_str(),
            what_follows(attempt, max_attempts, ask, 0)
        ),
        _ => format!("step {step} failed: {reason}"),
    };
    // A loop whose `until` still fails after its last iteration failed its
    // task: like a failed step, it is retried (its last iteration) or
    // escalated, never silently ended.
    if let StageEvent::StepSucceeded {
        after: After::Exhausted,
        gate: Gate::None | Gate::Approval,
        ..
    } = event
    {
        let (max_attempts, ask) = failure_policy(ctx, &run_id, &stage_id, ErrorClass::Task, false)?;
        let last = human::last_iteration_start(ctx, &run_id, &stage_id, step)?;
        event = StageEvent::StepFailed {
            step: last,
            max_attempts,
            ask,
            send_back: send_back.is_some(),
        };
        why = format!(
            "step {step} succeeded, but the loop's until still fails after its last iteration (task); {}",
            follows(max_attempts, ask, last)
        );
    }
    let asked_to_yield = if o.success {
        preempt::yield_request(ctx, &run_id, &stage_id)?
    } else {
        None
    };
    let mut stage_state = stage_event(ctx, &run_id, &stage_id, event, why, &actor)?;
    if let (StageState::Queued, Some((_, why))) = (stage_state, asked_to_yield) {
        let held: Option<String> = ctx
            .conn
            .prepare_cached("SELECT granted FROM jobs WHERE id = ?1")?
            .query_row([job_id], |r| r.get(0))?;
        stage_state = preempt::yield_at_checkpoint(
            ctx,
            &run_id,
            &stage_id,
            &placement::parse_grant(held.as_deref()),
            &why,
            &actor,
        )?;
    }
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
        claim(ctx, &req.agent_id, lease_ttl_ms, req.claim_key.as_deref())?
    } else {
        None
    };
    Ok(Ok(Completed {
        job_id,
        stage_state,
        run_state: RunState::parse(&run_state).unwrap_or(RunState::Running),
        next,
        again: false,
    }))
}

/// The answer to a completion asked again: the stage and run as they are
/// now and, when asked for, the next job the first completion leased (or
/// one leased now, if it found none).
fn completed_before(
    ctx: &mut Ctx<'_>,
    job_id: i64,
    run_id: &str,
    stage_id: &str,
    req: &CompleteRequest,
    lease_ttl_ms: u64,
) -> Result<Completed> {
    let stage: String = ctx
        .conn
        .prepare_cached("SELECT state FROM stage_runs WHERE run_id = ?1 AND stage_id = ?2")?
        .query_row(params![run_id, stage_id], |r| r.get(0))?;
    let run: String = ctx
        .conn
        .prepare_cached("SELECT state FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| r.get(0))?;
    tracing::info!(job_id, agent_id = %req.agent_id, "completion sent again after its answer was lost; acknowledged again");
    let next = if req.claim_next {
        claim(ctx, &req.agent_id, lease_ttl_ms, req.claim_key.as_deref())?
    } else {
        None
    };
    Ok(Completed {
        job_id,
        stage_state: StageState::parse(&stage).unwrap_or(StageState::Running),
        run_state: RunState::parse(&run).unwrap_or(RunState::Running),
        next,
        again: true,
    })
}

pub fn expire_leases(ctx: &mut Ctx<'_>, now: i64) -> Result<usize> {
    let due: Vec<(i64, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, expires_at FROM leases WHERE state = 'active' AND expires_at <= ?1",
        )?
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (lease_id, at) in &due {
        lose_lease(
            ctx,
            *lease_id,
            &format!("lease expired {} ms ago without a heartbeat", now - at),
        )?;
    }
    super::retry::due_retries(ctx, now)?;
    Ok(due.len())
}

pub fn resume(ctx: &mut Ctx<'_>, grace_ms: u64) -> Result<usize> {
    let n = ctx
        .conn
        .prepare_cached(
            "UPDATE leases SET expires_at = MAX(expires_at, ?1) WHERE state = 'active'",
        )?
        .execute([ctx.now + grace_ms as i64])?;
    reshape_legacy(ctx)?;
    // Anything runnable that was not queued before a crash is queued now.
    ctx.schedule = true;
    Ok(n)
}

/// Jobs queued by a version without shapes get their shape and queue key,
/// so an upgrade keeps its queue.
fn reshape_legacy(ctx: &mut Ctx<'_>) -> Result<()> {
    let legacy: Vec<(i64, String, i32, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, labels, priority, created_at FROM jobs WHERE state = 'queued' AND shape IS NULL",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (id, labels, priority, created) in legacy {
        let mut labels: Vec<String> = serde_json::from_str(&labels).unwrap_or_default();
        labels.sort();
        labels.dedup();
        let needs = orchestrator_core::sched::Needs {
            labels,
            ..Default::default()
        };
        let shape = placement::shape_id(ctx, &needs, "", ctx.rules.is_high(priority))?;
        let (key, _) = orchestrator_core::sched::queue_key(
            created,
            created,
            priority,
            1,
            ctx.rules.aging.as_millis(),
        );
        ctx.conn
            .prepare_cached("UPDATE jobs SET shape = ?2, queue_key = ?3 WHERE id = ?1")?
            .execute(params![id, shape, key])?;
    }
    Ok(())
}
