//! Queries on the read connection. They never wait for the writer: WAL lets
//! them read the last committed state while a batch is being written.

use crate::db::{params, Conn, Optional, Row};
use orchestrator_core::api::{AgentView, JobView, RunDetail, RunSummary, StageView};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::rounds::RoundReason;
use orchestrator_core::spec::SandboxKind;
use orchestrator_core::{
    Actor, Entity, JobState, RunState, StageState, State, Transition, Workflow,
};
use orchestrator_core::{AgentId, JobId, LeaseId, RunId};

use orchestrator_core::sched::{free, SystemRules};

use crate::{Counts, Result, StoreError};

const RUN_COLS: &str = "id, workflow, project_dir, state, priority, stages_total, stages_succeeded, stages_ended, created_at, ended_at, base_commit, suggested_priority, spec_hash";

fn run_summary(r: &Row<'_>) -> crate::db::Result<RunSummary> {
    let state: String = r.get(3)?;
    Ok(RunSummary {
        id: r.get(0)?,
        workflow: r.get(1)?,
        project_dir: r.get(2)?,
        state: RunState::parse(&state).unwrap_or(RunState::Failed),
        priority: r.get(4)?,
        stages_total: r.get(5)?,
        stages_succeeded: r.get(6)?,
        stages_ended: r.get(7)?,
        created_at_ms: r.get(8)?,
        ended_at_ms: r.get(9)?,
        base_commit: r.get(10)?,
        suggested_priority: r.get(11)?,
        branch: Some(format!("orch/run/{}", r.get::<_, String>(0)?)),
        spec_hash: r.get(12)?,
    })
}

pub fn run_summary_by_id(conn: &Conn, id: &RunId) -> Result<RunSummary> {
    let sql = format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1");
    conn.prepare_cached(&sql)?
        .query_row([id], run_summary)
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "run",
            id: id.to_string(),
        })
}

pub fn lease_jobs(conn: &Conn, agent_id: &AgentId, lease_ids: &[LeaseId]) -> Result<Vec<JobId>> {
    let mut st =
        conn.prepare_cached("SELECT job_id FROM leases WHERE id = ?1 AND agent_id = ?2")?;
    let mut jobs = Vec::new();
    for id in lease_ids {
        if let Some(job) = st
            .query_row(params![id, agent_id], |r| r.get(0))
            .optional()?
        {
            jobs.push(job);
        }
    }
    Ok(jobs)
}

pub fn list_runs(conn: &Conn, limit: u32) -> Result<Vec<RunSummary>> {
    let sql = format!("SELECT {RUN_COLS} FROM runs ORDER BY created_at DESC, id LIMIT ?1");
    let rows = conn
        .prepare_cached(&sql)?
        .query_map([limit], run_summary)?
        .collect::<crate::db::Result<_>>()?;
    Ok(rows)
}

/// Finds a run by its id or by an unambiguous prefix of it.
pub fn resolve_run(conn: &Conn, run: &RunId) -> Result<RunId> {
    let id = run.as_str();
    let exact: Option<RunId> = conn
        .prepare_cached("SELECT id FROM runs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    if let Some(x) = exact {
        return Ok(x);
    }
    // Ids sort bytewise, so those starting with the prefix are the ones
    // from the first id at or after it on; two of them make it ambiguous.
    // (A LIKE pattern would read `%` and `_` in the id as wildcards and
    // ignore case, so `_` alone named the only run.)
    let found: Vec<String> = conn
        .prepare_cached("SELECT id FROM runs WHERE id >= ?1 ORDER BY id LIMIT 2")?
        .query_map([id], |r| r.get::<_, String>(0))?
        .filter(|r| r.as_ref().map_or(true, |x| x.starts_with(id)))
        .collect::<crate::db::Result<_>>()?;
    match found.as_slice() {
        [one] if !id.is_empty() => Ok(RunId::from(one)),
        [] | [_] => Err(StoreError::NotFound {
            what: "run",
            id: id.to_owned(),
        }),
        _ => Err(StoreError::Conflict(format!(
            "run id prefix {id:?} is ambiguous; give more characters"
        ))),
    }
}

pub fn run_detail(conn: &Conn, id: &RunId) -> Result<RunDetail> {
    let id = resolve_run(conn, id)?;
    let sql = format!(
        "SELECT {RUN_COLS}, (SELECT spec FROM run_specs WHERE run_id = runs.id), inputs FROM runs WHERE id = ?1"
    );
    let (run, spec, inputs): (RunSummary, String, Option<String>) = conn
        .prepare_cached(&sql)?
        .query_row([&id], |r| Ok((run_summary(r)?, r.get(13)?, r.get(14)?)))?;
    let wf: Workflow = serde_json::from_str(&spec)
        .map_err(|e| StoreError::corrupt(format!("run {id}: stored spec unreadable"), e))?;
    let inputs = super::common::decode_inputs(&id, inputs.as_deref())?;
    let plan = orchestrator_core::plan(&wf).map_err(|c| {
        StoreError::corrupt(
            format!("run {id}: stored spec unreadable"),
            format!("it has a cycle {c:?}"),
        )
    })?;
    let mut stages: Vec<StageView> = conn
        .prepare_cached(
            "SELECT stage_id, state, step, steps_total, attempt, started_at, ended_at, ord, agent_id
             FROM stage_runs WHERE run_id = ?1 ORDER BY ord",
        )?
        .query_map([&id], |r| {
            let state: String = r.get(1)?;
            Ok(StageView {
                stage_id: r.get(0)?,
                state: StageState::parse(&state).unwrap_or(StageState::Failed),
                needs: Vec::new(),
                step: r.get(2)?,
                steps_total: r.get(3)?,
                attempt: r.get(4)?,
                round: 0,
                iteration: 0,
                started_at_ms: r.get(5)?,
                ended_at_ms: r.get(6)?,
                agent_id: r.get(8)?,
                cache: Vec::new(),
                outputs: Default::default(),
                condition: None,
                bypassed: None,
            })
        })?
        .collect::<crate::db::Result<_>>()?;
    let mut jobs: Vec<JobView> = conn
        .prepare_cached(
            "SELECT id, run_id, stage_id, step, attempt, state, agent_id, exit_codes, error, error_class, bundle,
                    created_at, started_at, ended_at, sandbox, round, round_reason
             FROM jobs WHERE run_id = ?1 ORDER BY id",
        )?
        .query_map([&id], job_view)?
        .collect::<crate::db::Result<_>>()?;
    // Steps are shown by their index in the stage: a loop's iterations are
    // rounds of the same steps, not more steps.
    let specs: std::collections::HashMap<&str, &orchestrator_core::spec::Stage> =
        wf.stages.iter().map(|s| (s.id.as_str(), s)).collect();
    for j in &mut jobs {
        if let Some(spec) = specs.get(j.stage_id.as_str()) {
            j.step = spec.step_index(j.step);
        }
    }
    let mut outputs = super::outputs::of_run(conn, &id)?;
    for (s, spec) in stages.iter_mut().zip(&wf.stages) {
        s.outputs = outputs.remove(&s.stage_id).unwrap_or_default();
        s.needs = spec.needs.clone();
        s.cache = spec.cache.clone();
        s.condition = spec.condition.clone();
        if s.state == StageState::Bypassed {
            s.bypassed = bypassed_reason(conn, &id, &s.stage_id)?;
        }
        s.iteration = spec.iteration_of(s.step);
        s.step = spec.step_index(s.step);
        s.steps_total = u32::try_from(spec.steps.len()).unwrap_or(u32::MAX);
        s.round = jobs
            .iter()
            .rev()
            .find(|j| j.stage_id == s.stage_id && j.step == s.step)
            .map_or(0, |j| j.round);
    }
    Ok(RunDetail {
        run,
        stages,
        jobs,
        plan,
        checkpoints: super::inbox::checkpoints(conn, &id, &wf)?,
        questions: super::inbox::questions(conn, &id)?,
        models: super::usage::run(conn, &id)?,
        inputs,
    })
}

/// The reason recorded when a stage was bypassed.
fn bypassed_reason(conn: &Conn, run: &RunId, stage_id: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT reason FROM transitions WHERE run_id = ?1 AND entity = 'stage' AND entity_id = ?2
               AND to_state = 'bypassed' ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![run, super::common::stage_key(run, stage_id)], |r| r.get(0))
        .optional()?)
}

fn job_view(r: &Row<'_>) -> crate::db::Result<JobView> {
    let state: String = r.get(5)?;
    let codes: Option<String> = r.get(7)?;
    let class: Option<String> = r.get(9)?;
    let sandbox: Option<String> = r.get(14)?;
    let reason: String = r.get(16)?;
    Ok(JobView {
        round: r.get(15)?,
        round_reason: RoundReason::parse(&reason).unwrap_or_default(),
        id: r.get(0)?,
        run_id: r.get(1)?,
        stage_id: r.get(2)?,
        step: r.get(3)?,
        attempt: r.get(4)?,
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        agent_id: r.get(6)?,
        exit_codes: codes
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_default(),
        error: r.get(8)?,
        error_class: class.and_then(|c| ErrorClass::parse(&c)),
        sandbox: sandbox.and_then(|k| SandboxKind::parse(&k).ok()),
        bundle: r.get(10)?,
        created_at_ms: r.get(11)?,
        started_at_ms: r.get(12)?,
        ended_at_ms: r.get(13)?,
    })
}

pub fn list_agents(
    conn: &Conn,
    rules: &SystemRules,
    now: i64,
    online_ms: u64,
) -> Result<Vec<AgentView>> {
    let rows: Vec<(AgentId, String, Option<String>, i64)> = conn
        .prepare_cached("SELECT id, name, hostname, last_seen_at FROM agents ORDER BY name")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<crate::db::Result<_>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, name, hostname, last_seen_ms) in rows {
        let Some(cap) = super::placement::capacity(conn, rules, &id)? else {
            continue;
        };
        let held = super::placement::held(conn, &id)?;
        let free = free(&cap, held.iter());
        out.push(AgentView {
            id,
            name,
            labels: cap.labels,
            slots: cap.slots,
            running: held.len() as u32,
            hostname,
            last_seen_ms,
            memory_mb: cap.memory_mb,
            gpus: cap.gpus,
            free,
            online: now - last_seen_ms <= online_ms as i64,
        });
    }
    Ok(out)
}

pub fn transitions_since(
    conn: &Conn,
    after: i64,
    run: Option<&RunId>,
    limit: u32,
) -> Result<Vec<Transition>> {
    let sql = if run.is_some() {
        "SELECT seq, entity, entity_id, run_id, from_state, to_state, reason, actor, at
         FROM transitions WHERE run_id = ?3 AND seq > ?1 ORDER BY seq LIMIT ?2"
    } else {
        "SELECT seq, entity, entity_id, run_id, from_state, to_state, reason, actor, at
         FROM transitions WHERE seq > ?1 AND CAST(?3 AS TEXT) IS NULL ORDER BY seq LIMIT ?2"
    };
    let rows = conn
        .prepare_cached(sql)?
        .query_map(params![after, limit, run], |r| {
            let entity: String = r.get(1)?;
            let entity = Entity::parse(&entity).ok_or_else(|| {
                crate::db::Error::Conversion(format!("transition: no entity {entity:?}"))
            })?;
            let state = |s: String| {
                State::parse(entity, &s).ok_or_else(|| {
                    crate::db::Error::Conversion(format!(
                        "transition: {s:?} is not a state of a {}",
                        entity.as_str()
                    ))
                })
            };
            Ok(Transition {
                seq: r.get(0)?,
                entity,
                entity_id: r.get(2)?,
                run_id: r.get(3)?,
                from: r.get::<_, Option<String>>(4)?.map(state).transpose()?,
                to: state(r.get(5)?)?,
                reason: r.get(6)?,
                actor: Actor::read(r.get(7)?),
                at_ms: r.get(8)?,
            })
        })?
        .collect::<crate::db::Result<_>>()?;
    Ok(rows)
}

pub fn next_lease_expiry(conn: &Conn) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached(
            "SELECT MIN(t) FROM (SELECT MIN(expires_at) AS t FROM leases WHERE state = 'active'
             UNION ALL SELECT MIN(retry_at) FROM stage_runs WHERE state = 'retrying') AS due",
        )?
        .query_row([], |r| r.get(0))?)
}

pub fn counts(conn: &Conn) -> Result<Counts> {
    let by_state = |table: &str| -> Result<Vec<(String, i64)>> {
        let sql = format!("SELECT state, COUNT(*) FROM {table} GROUP BY state");
        Ok(conn
            .prepare_cached(&sql)?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<crate::db::Result<_>>()?)
    };
    Ok(Counts {
        runs: by_state("runs")?,
        stages: by_state("stage_runs")?,
        jobs: by_state("jobs")?,
        agents: conn.query_row("SELECT COUNT(*) FROM agents", [], |r| r.get(0))?,
        transitions: conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM transitions", [], |r| {
            r.get(0)
        })?,
        retries: conn
            .prepare_cached(
                "SELECT j.error_class, COUNT(*) FROM jobs j
                 WHERE j.error_class IS NOT NULL AND EXISTS (
                     SELECT 1 FROM jobs k
                     WHERE k.run_id = j.run_id AND k.stage_id = j.stage_id AND k.attempt > j.attempt)
                 GROUP BY j.error_class ORDER BY j.error_class",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<crate::db::Result<_>>()?,
    })
}
