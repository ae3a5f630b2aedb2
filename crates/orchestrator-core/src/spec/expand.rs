//! Expanding matrix stages into the concrete stages they stand for. After
//! it, every stage is one that runs: the planner, the store and the
//! scheduler never see a `matrix:`.

use std::collections::BTreeMap;

use super::matrix::{instance_id, MatrixError, MatrixInstance};
use super::{Stage, Workflow};
use crate::validate::MAX_STAGES;

/// Why a workflow's matrices cannot be expanded. Validation reports these
/// with their place in the file first; expanding a validated workflow
/// never fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("stage {stage:?}: {source}")]
    Matrix {
        stage: String,
        #[source]
        source: MatrixError,
    },
    #[error("the matrices expand the workflow to {count} stages; at most {max} are accepted", max = MAX_STAGES)]
    TooManyStages { count: usize },
}

/// Replaces each matrix stage, in place, by one stage per combination
/// (`test[py=3.12,os=linux]`, see [`super::matrix`]), each with its
/// [`MatrixInstance`] and the matrix stage's needs. A need naming a matrix
/// stage becomes a need of every stage it expanded into. The same workflow
/// always expands the same.
pub fn expand(mut wf: Workflow) -> Result<Workflow, ExpandError> {
    if wf.stages.iter().all(|s| s.matrix.is_none()) {
        return Ok(wf);
    }
    // Every combination first, so that the count is known before a stage is copied.
    let mut combos = Vec::with_capacity(wf.stages.len());
    for st in &wf.stages {
        combos.push(match &st.matrix {
            None => None,
            Some(m) => Some(m.combinations().map_err(|source| ExpandError::Matrix {
                stage: st.id.clone(),
                source,
            })?),
        });
    }
    let count: usize = combos.iter().map(|c| c.as_ref().map_or(1, Vec::len)).sum();
    if count > MAX_STAGES {
        return Err(ExpandError::TooManyStages { count });
    }
    let mut expanded: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::with_capacity(count);
    for (mut st, combos) in std::mem::take(&mut wf.stages).into_iter().zip(combos) {
        let Some(combos) = combos else {
            stages.push(st);
            continue;
        };
        st.matrix = None;
        let mut ids = Vec::with_capacity(combos.len());
        for combo in combos {
            let mut one = st.clone();
            one.id = instance_id(&st.id, &combo.0);
            one.instance = Some(MatrixInstance {
                of: st.id.clone(),
                values: combo.0,
            });
            ids.push(one.id.clone());
            stages.push(one);
        }
        expanded.insert(st.id, ids);
    }
    for st in &mut stages {
        if st.needs.iter().any(|n| expanded.contains_key(n)) {
            st.needs = st
                .needs
                .iter()
                .flat_map(|n| match expanded.get(n) {
                    Some(ids) => ids.clone(),
                    None => vec![n.clone()],
                })
                .collect();
        }
    }
    wf.stages = stages;
    Ok(wf)
}
