//! The DAG planner: topological layers (what may run together), the width of
//! each layer, and the critical path (the chain of stages that bounds the
//! run's duration, using each stage's `estimate`, one unit when absent).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::spec::Workflow;

/// What `orch plan` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Stage ids by layer: every stage of layer n needs only stages of layers < n.
    pub layers: Vec<Vec<String>>,
    /// The most stages that can run at once in each layer (its width).
    pub parallelism: Vec<usize>,
    /// Stage ids of the longest chain by estimated duration, first to last.
    pub critical_path: Vec<String>,
    /// Sum of the critical path's estimates in milliseconds (stages without an
    /// estimate count as 0 ms and are ranked by count).
    pub critical_path_ms: u64,
    /// The feedback loops its stages' `on_failure` rules make.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feedback_loops: Vec<FeedbackLoop>,
    /// For each stage a matrix made, the id of the matrix stage it came
    /// from (`test[py=3.12]` → `test`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matrix: BTreeMap<String, String>,
    /// Each stage's `if:` condition, as written, by stage id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conditions: BTreeMap<String, String>,
}

/// A loop one stage's `on_failure: {retry_stage}` makes: when `stage`
/// fails, `retry_stage` runs again with the failure as feedback, then
/// `runs_again` (every stage after it, `stage` included) run again after
/// it; at most `max_rounds` times, then the failure goes to `then`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackLoop {
    pub stage: String,
    pub retry_stage: String,
    pub runs_again: Vec<String>,
    pub max_rounds: u32,
    /// `ask` or `fail`.
    pub then: String,
}

/// The feedback loops of `wf`, in its stages' order.
fn feedback_loops(wf: &Workflow) -> Vec<FeedbackLoop> {
    wf.stages
        .iter()
        .filter_map(|st| {
            let rule = st.send_back()?;
            // The stages after the target: those with it among their ancestors.
            let needs: std::collections::BTreeMap<&str, &[String]> = wf
                .stages
                .iter()
                .map(|s| (s.id.as_str(), s.needs.as_slice()))
                .collect();
            let runs_again = wf
                .stages
                .iter()
                .filter(|s| {
                    crate::validate::ancestors(&needs, &s.id).contains(rule.retry_stage.as_str())
                })
                .map(|s| s.id.clone())
                .collect();
            Some(FeedbackLoop {
                stage: st.id.clone(),
                retry_stage: rule.retry_stage.clone(),
                runs_again,
                max_rounds: rule.rounds(),
                then: if st.asks_on_failure(wf) {
                    "ask"
                } else {
                    "fail"
                }
                .to_owned(),
            })
        })
        .collect()
}

/// Each stage a matrix made, and the matrix stage it came from. A stored
/// spec read back has lost the [`crate::spec::MatrixInstance`], so the id
/// says it then.
fn matrix_origins(wf: &Workflow) -> BTreeMap<String, String> {
    wf.stages
        .iter()
        .filter_map(|s| {
            let of = match &s.instance {
                Some(i) => i.of.clone(),
                None => crate::spec::matrix_stage_of(&s.id)?.to_owned(),
            };
            Some((s.id.clone(), of))
        })
        .collect()
}

/// Stages without an estimate weigh this much on the path, so that with no
/// estimates at all the critical path is the longest chain by stage count.
const DEFAULT_WEIGHT: u64 = 1;

/// Index of stage ids to their position in `wf.stages`.
fn index(wf: &Workflow) -> HashMap<&str, usize> {
    wf.stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect()
}

/// Returns one cycle as a path of ids that starts and ends with the same
/// stage (`a -> b -> a`), or None when the graph is acyclic. Needs that point
/// nowhere are ignored here; validation reports them.
pub fn find_cycle(wf: &Workflow) -> Option<Vec<String>> {
    let idx = index(wf);
    let n = wf.stages.len();
    // 0 = unvisited, 1 = on the stack, 2 = done. Iterative DFS: workflows may be deep.
    let mut color = vec![0u8; n];
    let mut parent = vec![usize::MAX; n];
    for start in 0..n {
        if color[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        color[start] = 1;
        while let Some((node, next)) = stack.last_mut() {
            let node = *node;
            let needs = &wf.stages[node].needs;
            if *next < needs.len() {
                let dep = needs[*next].as_str();
                *next += 1;
                let Some(&d) = idx.get(dep) else { continue };
                match color[d] {
                    0 => {
                        color[d] = 1;
                        parent[d] = node;
                        stack.push((d, 0));
                    }
                    1 => {
                        // Walk back from node to d along parents.
                        let mut path = vec![wf.stages[d].id.clone()];
                        let mut cur = node;
                        while cur != d {
                            path.push(wf.stages[cur].id.clone());
                            cur = parent[cur];
                        }
                        path.push(wf.stages[d].id.clone());
                        // The edges are "needs", so reverse to read as "a needs b needs ... a".
                        path.reverse();
                        return Some(path);
                    }
                    _ => {}
                }
            } else {
                color[node] = 2;
                stack.pop();
            }
        }
    }
    None
}

/// Plans a validated workflow. Errors only on a cycle (returned as its path).
pub fn plan(wf: &Workflow) -> Result<Plan, Vec<String>> {
    if let Some(c) = find_cycle(wf) {
        return Err(c);
    }
    let idx = index(wf);
    let n = wf.stages.len();
    let mut indegree = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, s) in wf.stages.iter().enumerate() {
        for need in &s.needs {
            if let Some(&d) = idx.get(need.as_str()) {
                indegree[i] += 1;
                dependents[d].push(i);
            }
        }
    }
    // Kahn's algorithm, layer by layer, in declaration order within a layer.
    let mut layers: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            order.push(i);
            for &d in &dependents[i] {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    next.push(d);
                }
            }
        }
        next.sort_unstable();
        layers.push(std::mem::take(&mut current));
        current = next;
    }
    // Longest path by weight over the topological order: (weight, count) so
    // that estimates rank first and stage count breaks ties.
    let weight = |i: usize| wf.stages[i].estimate.map_or(0, |d| d.as_millis());
    let mut best: Vec<(u64, u64)> = vec![(0, 0); n];
    let mut prev = vec![usize::MAX; n];
    for &i in &order {
        let mut b = (0u64, 0u64);
        for need in &wf.stages[i].needs {
            if let Some(&d) = idx.get(need.as_str()) {
                if prev[i] == usize::MAX || best[d] > b {
                    b = best[d];
                    prev[i] = d;
                }
            }
        }
        best[i] = (b.0 + weight(i), b.1 + DEFAULT_WEIGHT);
    }
    let mut critical_path = Vec::new();
    let mut critical_path_ms = 0;
    if let Some(end) = (0..n).max_by(|&a, &b| best[a].cmp(&best[b]).then(b.cmp(&a))) {
        critical_path_ms = best[end].0;
        let mut cur = end;
        while cur != usize::MAX {
            critical_path.push(wf.stages[cur].id.clone());
            cur = prev[cur];
        }
        critical_path.reverse();
    }
    Ok(Plan {
        parallelism: layers.iter().map(Vec::len).collect(),
        layers: layers
            .into_iter()
            .map(|l| l.into_iter().map(|i| wf.stages[i].id.clone()).collect())
            .collect(),
        critical_path,
        critical_path_ms,
        feedback_loops: feedback_loops(wf),
        matrix: matrix_origins(wf),
        conditions: wf
            .stages
            .iter()
            .filter_map(|s| Some((s.id.clone(), s.condition.clone()?)))
            .collect(),
    })
}
