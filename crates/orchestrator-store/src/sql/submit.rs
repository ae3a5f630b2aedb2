//! Submitting a run: the workflow checked against the daemon's rules and
//! the run's policy, planned, and written (the run, its stored spec, its
//! stage runs and their `requires` edges) with a transition row each, in
//! the submitting command's savepoint. The scheduler pass at the end of the
//! batch queues its first jobs.

use orchestrator_core::Actor;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::db::params;
use orchestrator_core::api::Submitted;
use orchestrator_core::sched::{self, could_ever_fit, effective_priority, Needs};
use orchestrator_core::{AgentId, RunId, RunState, StageState, Workflow};
use orchestrator_host::ids;
use sha2::{Digest, Sha256};

use super::common::{conflict, stage_key};
use super::tx::Ctx;
use super::{placement, policy};
use crate::error::encode;
use crate::{NewRun, Result, StoreError};

pub fn submit_run(ctx: &mut Ctx<'_>, run: NewRun) -> Result<Submitted> {
    let mut wf = orchestrator_core::parse_workflow(&run.workflow, run.file.as_deref())
        .map_err(StoreError::InvalidWorkflow)?;
    // Bound here, not only by the CLI: the API is public, and the store
    // records exactly the values the run's commands will see.
    let inputs = orchestrator_core::spec::bind_inputs(&wf, &run.inputs)
        .map_err(StoreError::InvalidInputs)?;
    if ctx.rules.allow_shell == Some(false) {
        sched::check_shell(&wf, false, "the daemon's --rules file")
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
    }
    orchestrator_core::sched::apply_sandbox_policy(
        &mut wf,
        run.policy.sandbox,
        run.policy.min_sandbox,
    )
    .map_err(|e| StoreError::Invalid(e.to_string()))?;
    // Keys are computed now, once, from the base commit: every attempt of
    // the run, on any agent, uses the same ones, and the stored spec says
    // which (the workflow's entries moved into each stage).
    orchestrator_core::cache::resolve(&mut wf, &run.tree, run.file.as_deref())
        .map_err(StoreError::InvalidWorkflow)?;
    if let Some(on) = run.on_failure {
        // The submitter's word wins over the workflow's, stage by stage; the
        // stored spec says what the run really does.
        wf.on_failure = Some(on);
        for st in &mut wf.stages {
            // A send-back rule still sends back first; the word is what it does last.
            st.on_failure = Some(st.on_failure.take().map_or(on.into(), |f| f.with_then(on)));
        }
    }
    let plan = orchestrator_core::plan(&wf).map_err(|cycle| {
        conflict(format!(
            "the needs of these stages form a cycle: {}",
            cycle.join(" -> ")
        ))
    })?;
    let run_id = RunId::new(ids::new_id("r"));
    let mut expr = super::substitute::context_of(&run_id, &wf.name, inputs.clone(), None);
    for st in &wf.stages {
        match &st.instance {
            Some(m) => expr.insert(
                "matrix",
                serde_json::Value::Object(m.values.iter().cloned().collect()),
            ),
            None => {
                expr.remove("matrix");
            }
        }
        let mut env = wf.env.clone();
        env.extend(st.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        super::substitute::check_stage(st, &env, &expr)?;
    }
    let inputs_text = if inputs.is_empty() {
        None
    } else {
        Some(encode("a run's inputs", &inputs)?)
    };
    let spec = crate::error::encode("a run's spec", &wf)?;
    let hash = format!("{:x}", Sha256::digest(run.workflow.as_bytes()));
    let eff = effective_priority(run.priority, wf.priority, &run.policy, ctx.rules);
    let limits = sched::limits(&run.policy, ctx.rules);
    let active = policy::active_runs(ctx, &run.project_dir)?;
    let hold = policy::admission(&limits, active, &run.project_dir);
    let state = if hold.is_some() {
        RunState::Queued
    } else {
        RunState::Running
    };
    ctx.conn
        .prepare_cached(
            "INSERT INTO runs (id, workflow, project_dir, spec_hash, state, priority, stages_total, created_at, base_commit,
                               suggested_priority, priority_why, limits, clock, hold, inputs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?8, ?13, ?14)",
        )?
        .execute(params![
            run_id,
            wf.name,
            run.project_dir,
            hash,
            state.as_str(),
            eff.value,
            wf.stages.len() as i64,
            ctx.now,
            run.base_commit,
            eff.suggested,
            encode("a run's effective policy", &eff)?,
            encode("a run's limits", &limits)?,
            hold,
            inputs_text
        ])?;
    ctx.conn
        .prepare_cached("INSERT INTO run_specs (run_id, spec) VALUES (?1, ?2)")?
        .execute(params![run_id, spec])?;
    let mut reason = format!(
        "submitted workflow {} ({} stages, spec sha256 {}); priority {eff}",
        wf.name,
        wf.stages.len(),
        &hash[..12]
    );
    if let Some(h) = &hold {
        reason = format!("{reason}; {h}");
    }
    ctx.transition(
        run_id.to_string(),
        Some(&run_id),
        None,
        state,
        reason,
        &run.actor,
    )?;
    {
        let mut ins_stage = ctx.conn.prepare_cached(
            "INSERT INTO stage_runs (run_id, stage_id, ord, state, unmet, steps_total, matrix) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (i, st) in wf.stages.iter().enumerate() {
            // The stored spec does not keep a stage's matrix values (they
            // are no part of the workflow's text): its row does.
            let matrix = match &st.instance {
                Some(m) => Some(encode(
                    "a stage's matrix values",
                    &m.values
                        .iter()
                        .cloned()
                        .collect::<serde_json::Map<String, serde_json::Value>>(),
                )?),
                None => None,
            };
            ins_stage.execute(params![
                run_id,
                st.id,
                i as i64,
                StageState::Pending.as_str(),
                st.needs.len() as i64,
                st.steps.len() as i64 * i64::from(st.iterations()),
                matrix
            ])?;
        }
        // In key order, so the B-tree only ever appends: a wide DAG has
        // tens of thousands of edges.
        let mut edges: Vec<(&str, &str)> = wf
            .stages
            .iter()
            .flat_map(|st| st.needs.iter().map(move |n| (n.as_str(), st.id.as_str())))
            .collect();
        edges.sort_unstable();
        let mut ins_req = ctx.conn.prepare_cached(
            "INSERT INTO requires (run_id, required, stage_id) VALUES (?1, ?2, ?3)",
        )?;
        for (required, stage) in edges {
            ins_req.execute(params![run_id, required, stage])?;
        }
    }
    for st in &wf.stages {
        ctx.transition(
            stage_key(&run_id, &st.id),
            Some(&run_id),
            None,
            StageState::Pending,
            match st.needs.as_slice() {
                [] => "created".to_owned(),
                [a] => format!("created; needs {a}"),
                [a, b] => format!("created; needs {a} and {b}"),
                many => format!("created; needs {} stages", many.len()),
            },
            &Actor::Scheduler,
        )?;
    }
    let mut warnings = never_fits(ctx, &wf)?;
    warnings.extend(hold);
    ctx.workflows.insert(run_id.clone(), Arc::new(wf));
    ctx.schedule = true;
    Ok(Submitted {
        run_id,
        plan,
        state,
        priority: Some(eff),
        warnings,
    })
}

/// Stages that no registered agent could ever run, each with every agent's reason.
fn never_fits(ctx: &Ctx<'_>, wf: &Workflow) -> Result<Vec<String>> {
    let ids: Vec<AgentId> = ctx
        .conn
        .prepare_cached("SELECT id FROM agents ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<crate::db::Result<_>>()?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut caps = Vec::new();
    for id in ids {
        if let Some(c) = placement::capacity(ctx.conn, ctx.rules, &id)? {
            caps.push((id, c));
        }
    }
    let mut out = Vec::new();
    let mut judged: BTreeMap<Needs, Vec<String>> = BTreeMap::new();
    for st in &wf.stages {
        let needs = Needs::of_stage(st);
        // Wide workflows repeat a few shapes many times: judge each once.
        let reasons = judged.entry(needs.clone()).or_insert_with(|| {
            caps.iter()
                .filter_map(|(id, c)| {
                    could_ever_fit(&needs, c)
                        .err()
                        .map(|m| format!("agent {id} {m}"))
                })
                .collect::<Vec<String>>()
        });
        if reasons.len() == caps.len() {
            let shown: Vec<&str> = reasons.iter().take(5).map(String::as_str).collect();
            out.push(format!(
                "stage {} needs {needs}: no registered agent could ever run it ({}{}); it waits until one registers",
                st.id,
                shown.join("; "),
                if reasons.len() > 5 { "; ..." } else { "" }
            ));
        }
    }
    Ok(out)
}
