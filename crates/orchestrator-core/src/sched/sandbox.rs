//! The project's word on isolation: the sandbox a stage gets when its
//! workflow chooses none, and the weakest one it may choose. Applied at
//! submission, so the stored workflow says what really runs.

use crate::spec::{SandboxKind, Workflow};

/// A workflow refused because a stage chose a sandbox weaker than its
/// project allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the project's policy (.orchestrator/policy.yaml) sets min_sandbox: {min}, but {}; expected sandbox: {min} or stronger, or no sandbox (the project's default then applies)",
    .stages.iter().map(|(id, k)| format!("stage {id:?} chooses sandbox: {k}")).collect::<Vec<_>>().join("; ")
)]
pub struct SandboxRefused {
    pub min: SandboxKind,
    /// Each refused stage with what it chose.
    pub stages: Vec<(String, SandboxKind)>,
}

/// Gives every stage that chooses no sandbox `default` (when set, and at
/// least `min`), then refuses the workflow if a stage is weaker than `min`.
pub fn apply_sandbox_policy(
    wf: &mut Workflow,
    default: Option<SandboxKind>,
    min: Option<SandboxKind>,
) -> Result<(), SandboxRefused> {
    let floor = min.unwrap_or(SandboxKind::Process);
    let default = default
        .map(|d| {
            if d.strength() < floor.strength() {
                floor
            } else {
                d
            }
        })
        .or(min);
    let mut refused = Vec::new();
    for st in &mut wf.stages {
        match st.sandbox {
            None => st.sandbox = default,
            Some(k) if k.strength() < floor.strength() => refused.push((st.id.clone(), k)),
            Some(_) => {}
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(SandboxRefused {
            min: floor,
            stages: refused,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Stage;
    use SandboxKind::{Namespace, Process};

    fn wf(choices: &[Option<SandboxKind>]) -> Workflow {
        Workflow {
            name: "w".into(),
            description: None,
            inputs: Default::default(),
            priority: None,
            env: Default::default(),
            on_failure: None,
            cache: vec![],
            stages: choices
                .iter()
                .enumerate()
                .map(|(i, c)| Stage {
                    id: format!("s{i}"),
                    sandbox: *c,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn kinds(w: &Workflow) -> Vec<Option<SandboxKind>> {
        w.stages.iter().map(|s| s.sandbox).collect()
    }

    #[test]
    fn the_default_fills_what_a_stage_leaves_open_and_the_minimum_refuses_weaker() {
        let mut w = wf(&[None, Some(Process)]);
        apply_sandbox_policy(&mut w, None, None).unwrap();
        assert_eq!(kinds(&w), [None, Some(Process)], "no policy, no change");

        let mut w = wf(&[None, Some(Process)]);
        apply_sandbox_policy(&mut w, Some(Namespace), None).unwrap();
        assert_eq!(kinds(&w), [Some(Namespace), Some(Process)]);

        let mut w = wf(&[None, Some(Namespace)]);
        apply_sandbox_policy(&mut w, None, Some(Namespace)).unwrap();
        assert_eq!(kinds(&w), [Some(Namespace), Some(Namespace)]);

        // A default weaker than the minimum is raised to it.
        let mut w = wf(&[None]);
        apply_sandbox_policy(&mut w, Some(Process), Some(Namespace)).unwrap();
        assert_eq!(kinds(&w), [Some(Namespace)]);

        let mut w = wf(&[None, Some(Process), Some(Process)]);
        let e = apply_sandbox_policy(&mut w, None, Some(Namespace)).unwrap_err();
        assert_eq!(e.stages, [("s1".into(), Process), ("s2".into(), Process)]);
        let msg = e.to_string();
        assert!(
            msg.contains("min_sandbox: namespace")
                && msg.contains("stage \"s1\" chooses sandbox: process"),
            "{msg}"
        );
    }
}
