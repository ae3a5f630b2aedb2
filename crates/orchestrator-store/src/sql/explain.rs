//! `orch explain`: why each stage of a run runs where it does, or why it
//! waits: which rule, which resource, which higher-priority work. Read from
//! what the scheduler recorded (holds, placements, yields) and from a fresh
//! look at every agent's free resources.

use crate::db::{params, Conn, Optional};
use orchestrator_core::api::{AgentView, Explanation, StageExplanation};
use orchestrator_core::sched::explain::{describe, verdict, AgentFit};
use orchestrator_core::sched::{Effective, Needs, SystemRules};
use orchestrator_core::{AgentId, JobId, RunId};
use orchestrator_core::{RunState, StageState, Workflow};

use super::placement;
use crate::{Result, StoreError};

/// Agents named per waiting stage before the list is cut short.
const AGENTS_SHOWN: usize = 8;

/// Every agent as `orch agents` shows it, less what suspended stages keep
/// for the work they yielded to, in id order.
fn agents(conn: &Conn, rules: &SystemRules, now: i64, online_ms: u64) -> Result<Vec<AgentView>> {
    let mut all = super::reads::list_agents(conn, rules, now, online_ms)?;
    all.sort_by(|a, b| a.id.cmp(&b.id));
    for a in &mut all {
        for (_, g) in placement::reservations(conn, &a.id)? {
            a.free.take(&g);
        }
    }
    Ok(all)
}

/// state, project_dir, priority, priority_why, limits, hold, spec.
type RunRow = (
    String,
    String,
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

struct StageRow {
    id: String,
    state: StageState,
    ord: usize,
    unmet: i64,
    step: u32,
    agent: Option<AgentId>,
    hold: Option<String>,
    placement: Option<String>,
    yield_for: Option<String>,
    yield_job: Option<JobId>,
    attempt: u32,
    retry_at: Option<i64>,
    /// How often its failures sent its work back automatically.
    sent_back: u32,
}

pub fn explain(
    conn: &Conn,
    rules: &SystemRules,
    run_id: &RunId,
    only: Option<&str>,
    now: i64,
    online_ms: u64,
) -> Result<Explanation> {
    let row: Option<RunRow> = conn
        .prepare_cached(
            "SELECT r.state, r.project_dir, r.priority, r.priority_why, r.limits, r.hold, s.spec
             FROM runs r JOIN run_specs s ON s.run_id = r.id WHERE r.id = ?1",
        )?
        .query_row([run_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .optional()?;
    let Some((state, project, priority, why, limits, hold, spec)) = row else {
        return Err(StoreError::NotFound {
            what: "run",
            id: run_id.to_string(),
        });
    };
    let state = RunState::parse(&state).unwrap_or(RunState::Failed);
    let wf: Workflow = serde_json::from_str(&spec)
        .map_err(|e| StoreError::corrupt(format!("run {run_id}: stored spec unreadable"), e))?;
    let effective: Option<Effective> = why.and_then(|w| serde_json::from_str(&w).ok());
    let limits = super::policy::parse_limits(limits.as_deref());
    let mut lines = Vec::new();
    lines.push(match &effective {
        Some(e) => format!("effective priority {e}"),
        None => format!("effective priority {priority}"),
    });
    if let Some(h) = hold {
        lines.push(h);
    }
    match state {
        RunState::Paused => {
            lines.push("the run is paused: its stages hold at their next checkpoint".into())
        }
        s if s.is_terminal() => lines.push(format!("the run has ended: {s}")),
        _ => {}
    }
    let stages: Vec<StageRow> = conn
        .prepare_cached(
            "SELECT stage_id, state, ord, unmet, step, agent_id, hold, placement, yield_for, yield_job,
                    attempt, retry_at, sent_back
             FROM stage_runs WHERE run_id = ?1 ORDER BY ord",
        )?
        .query_map([run_id], |r| {
            let st: String = r.get(1)?;
            Ok(StageRow {
                id: r.get(0)?,
                state: StageState::parse(&st).unwrap_or(StageState::Failed),
                ord: r.get::<_, i64>(2)? as usize,
                unmet: r.get(3)?,
                step: r.get(4)?,
                agent: r.get(5)?,
                hold: r.get(6)?,
                placement: r.get(7)?,
                yield_for: r.get(8)?,
                yield_job: r.get(9)?,
                attempt: r.get(10)?,
                retry_at: r.get(11)?,
                sent_back: r.get(12)?,
            })
        })?
        .collect::<crate::db::Result<_>>()?;
    // Steps are shown by their index in the stage, as everywhere.
    let mut stages = stages;
    for s in &mut stages {
        if let Some(spec) = wf.stages.get(s.ord) {
            s.step = spec.step_index(s.step);
        }
    }
    if let Some(want) = only {
        if !stages.iter().any(|s| s.id == want) {
            return Err(StoreError::NotFound {
                what: "stage",
                id: format!("{run_id}/{want}"),
            });
        }
    }
    let state_of = |id: &str| {
        stages
            .iter()
            .find(|s| s.id == id)
            .map_or("unknown".to_owned(), |s| s.state.to_string())
    };
    let mut fleet: Option<Vec<AgentView>> = None;
    let mut out = Vec::new();
    for s in stages.iter().filter(|s| only.is_none_or(|o| o == s.id)) {
        let spec = wf.stages.get(s.ord);
        let needs = spec.map(Needs::of_stage).unwrap_or_default();
        let mut l = Vec::new();
        match s.state {
            StageState::Pending if s.unmet > 0 => {
                let waits: Vec<String> = spec
                    .map(|st| {
                        st.needs
                            .iter()
                            .filter(|n| state_of(n) != StageState::Succeeded.as_str())
                            .map(|n| format!("{n} ({})", state_of(n)))
                            .collect()
                    })
                    .unwrap_or_default();
                l.push(format!(
                    "waits for the stages it needs: {}",
                    waits.join(", ")
                ));
            }
            StageState::Pending => {
                if let Some(h) = &s.hold {
                    l.push(h.clone());
                } else if state == RunState::Queued {
                    l.push("runnable once its run is admitted".into());
                } else {
                    l.push("runnable; the scheduler queues it in its next pass".into());
                }
            }
            StageState::Queued => {
                let fleet = match &mut fleet {
                    Some(f) => f,
                    None => fleet.insert(agents(conn, rules, now, online_ms)?),
                };
                queued_lines(conn, rules, run_id, s, &needs, fleet, now, &mut l)?;
            }
            StageState::Running => {
                l.push(format!(
                    "running step {} on agent {}",
                    s.step,
                    s.agent.as_ref().map(AgentId::as_str).unwrap_or("?")
                ));
                if let Some(p) = &s.placement {
                    l.push(p.clone());
                }
                if let Some(y) = &s.yield_for {
                    l.push(format!("asked to yield at its next checkpoint: {y}"));
                }
            }
            StageState::Suspended => {
                l.push(format!(
                    "suspended before step {}: yielded to job {} ({})",
                    s.step,
                    s.yield_job.map_or("?".into(), |j| j.to_string()),
                    s.yield_for.as_deref().unwrap_or("higher-priority work")
                ));
                l.push(format!(
                    "pinned to agent {}: it resumes there once that work is placed",
                    s.agent.as_ref().map(AgentId::as_str).unwrap_or("?")
                ));
            }
            StageState::Paused => l.push("held at its checkpoint: the run is paused".into()),
            StageState::Retrying => l.push(format!(
                "its last attempt failed and is retried; attempt {} starts at step {} in {} ms (backoff)",
                s.attempt,
                s.step,
                s.retry_at.map_or(0, |t| (t - now).max(0))
            )),
            StageState::Validating => l.push(format!(
                "its steps are done; its validate commands run as job step {}",
                s.step
            )),
            StageState::AwaitingDecision => l.push(format!(
                "failed at step {} and waits for a human's decision: orch retry {run_id} {id} | orch skip {run_id} {id} | orch abort {run_id}; stages that need it wait, the others go on",
                s.step,
                id = s.id
            )),
            StageState::Skipped => l.push("skipped by a human after it failed: its dependents went on without it".into()),
            StageState::AwaitingApproval => l.push(format!(
                "waits for a human to approve step {} (orch approve {run_id} {})",
                s.step, s.id
            )),
            StageState::AwaitingInput => l.push("waits for a human to answer (orch inbox)".into()),
            StageState::Bypassed => l.push("bypassed: its if: condition said not to run it (orch show says why); it does not fail its run".into()),
            other => l.push(format!("ended: {other}")),
        }
        if let Some(rule) = spec.and_then(|st| st.send_back()) {
            l.push(format!(
                "feedback loop: when it fails, its work goes back to stage {} with the failure as feedback and the stages between run again ({} of {} rounds used); then {}",
                rule.retry_stage,
                s.sent_back,
                rule.rounds(),
                if spec.is_some_and(|st| st.asks_on_failure(&wf)) {
                    "a human decides"
                } else {
                    "it fails"
                }
            ));
        }
        out.push(StageExplanation {
            stage_id: s.id.clone(),
            state: s.state,
            needs,
            agent_id: s.agent.clone(),
            lines: l,
        });
    }
    let active = super::policy::count_active(conn, &project)?;
    if let Some(m) = limits.max_parallel_runs {
        lines.push(format!(
            "project {project}: {active} runs running, max_parallel_runs {m}"
        ));
    }
    Ok(Explanation {
        run_id: run_id.to_owned(),
        state,
        priority: effective,
        limits,
        lines,
        stages: out,
    })
}

#[allow(clippy::too_many_arguments)]
fn queued_lines(
    conn: &Conn,
    rules: &SystemRules,
    run_id: &RunId,
    s: &StageRow,
    needs: &Needs,
    fleet: &[AgentView],
    now: i64,
    l: &mut Vec<String>,
) -> Result<()> {
    let job: Option<(i64, i64, i32)> = conn
        .prepare_cached(
            "SELECT id, queue_key, priority FROM jobs
             WHERE run_id = ?1 AND stage_id = ?2 AND state = 'queued' ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![run_id, s.id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((job, key, priority)) = job else {
        l.push("queued; its job is being written".into());
        return Ok(());
    };
    l.push(format!(
        "step {} queued as job {job} at priority {priority}, needing {needs}",
        s.step
    ));
    let (ahead, higher): (i64, i64) = conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN priority > ?3 THEN 1 ELSE 0 END), 0) FROM jobs
             WHERE state = 'queued' AND (queue_key < ?1 OR (queue_key = ?1 AND id < ?2))",
        )?
        .query_row(params![key, job, priority], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if ahead > 0 {
        l.push(format!(
            "{ahead} queued jobs come before it ({higher} of higher priority, the rest waiting longer)"
        ));
    }
    let aged =
        orchestrator_core::sched::fair::levels_aged(key, priority, now, rules.aging.as_millis());
    if aged > 0 {
        l.push(format!(
            "it has waited long enough to gain {aged} priority levels"
        ));
    }
    if let Some(a) = &s.agent {
        l.push(format!("pinned to agent {a}: its worktree is there"));
    }
    let fits: Vec<AgentFit<'_>> = fleet
        .iter()
        .map(|a| AgentFit {
            name: a.id.as_str(),
            labels: &a.labels,
            free: &a.free,
            online: a.online,
        })
        .collect();
    let v = verdict(
        needs,
        priority,
        s.agent.as_ref().map(AgentId::as_str),
        &fits,
        rules,
    );
    l.extend(describe(&v, AGENTS_SHOWN));
    Ok(())
}
