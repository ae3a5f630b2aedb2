//! Shell strings run only where the workflow says `shell: true` and the
//! project's policy (`allow_shell`) allows them. The workflow's own check
//! (a `run:` needs `shell: true`) is in `validate`; this one is the
//! project's, made at submission.

use std::fmt;

use crate::spec::Workflow;

/// One place of a workflow that allows shell strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellUse {
    /// The stage's id.
    pub stage: String,
    /// The step, its `repeat` or its `validate`, for humans: `step 1 ("build")`.
    pub place: String,
    /// The field, as a path such as `stages[0].steps[1].shell`.
    pub field: String,
}

impl fmt::Display for ShellUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stage {:?} {} sets shell: true ({})",
            self.stage, self.place, self.field
        )
    }
}

/// A workflow refused because its project does not allow shell strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{policy_file} sets allow_shell: false, so this project runs no shell strings, but {}; expected argv commands (`argv: [...]`) and no `shell: true`",
    list(.uses)
)]
pub struct ShellRefused {
    /// The policy file that refuses, as the daemon read it.
    pub policy_file: String,
    /// Every place of the workflow that sets `shell: true`.
    pub uses: Vec<ShellUse>,
}

fn list(uses: &[ShellUse]) -> String {
    uses.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every place of `workflow` that sets `shell: true`: steps, `repeat` and
/// `validate`.
pub fn shell_uses(workflow: &Workflow) -> Vec<ShellUse> {
    let mut uses = Vec::new();
    for (s, stage) in workflow.stages.iter().enumerate() {
        let mut add = |place: String, field: String| {
            uses.push(ShellUse {
                stage: stage.id.clone(),
                place,
                field: format!("stages[{s}].{field}.shell"),
            })
        };
        for (i, step) in stage.steps.iter().enumerate() {
            if step.shell {
                let name = step
                    .name
                    .as_ref()
                    .map(|n| format!(" ({n:?})"))
                    .unwrap_or_default();
                add(format!("step {i}{name}"), format!("steps[{i}]"));
            }
        }
        if stage.repeat.as_ref().is_some_and(|r| r.shell) {
            add("repeat".into(), "repeat".into());
        }
        if stage.validate.as_ref().is_some_and(|v| v.shell) {
            add("validate".into(), "validate".into());
        }
    }
    uses
}

/// Refuses `workflow` when the project does not allow shell strings
/// (`allowed` false) and it sets `shell: true` anywhere; `policy_file` names
/// the file that said so.
pub fn check_shell(
    workflow: &Workflow,
    allowed: bool,
    policy_file: &str,
) -> Result<(), ShellRefused> {
    if allowed {
        return Ok(());
    }
    let uses = shell_uses(workflow);
    if uses.is_empty() {
        Ok(())
    } else {
        Err(ShellRefused {
            policy_file: policy_file.to_owned(),
            uses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::parse_project_policy;
    use crate::validate::parse_workflow;

    fn workflow(text: &str) -> Workflow {
        parse_workflow(text, Some("wf.yaml")).expect("a valid workflow")
    }

    const SHELLS: &str = r#"
name: w
stages:
  - id: build
    steps:
      - commands: [{argv: [make]}]
      - name: pack
        shell: true
        commands:
          - run: tar czf out.tgz dist
    repeat:
      max: 3
      shell: true
      until: {run: "test -f done"}
    validate:
      shell: true
      commands:
        - run: "test -s out.tgz"
"#;

    #[test]
    fn the_policy_key_defaults_to_allowed() {
        let p = parse_project_policy("max_parallel_runs: 2\n", "policy.yaml").unwrap();
        assert!(p.shell_allowed());
        let p = parse_project_policy("allow_shell: true\n", "policy.yaml").unwrap();
        assert!(p.shell_allowed());
        let p = parse_project_policy("allow_shell: false\n", "policy.yaml").unwrap();
        assert!(!p.shell_allowed());
        let err = parse_project_policy("allow_shell: sometimes\n", "policy.yaml").unwrap_err();
        assert!(err.to_string().contains("allow_shell"), "{err}");
    }

    #[test]
    fn every_shell_place_is_named_when_refused() {
        let wf = workflow(SHELLS);
        assert!(check_shell(&wf, true, ".orchestrator/policy.yaml").is_ok());
        let err = check_shell(&wf, false, ".orchestrator/policy.yaml").unwrap_err();
        let fields: Vec<&str> = err.uses.iter().map(|u| u.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "stages[0].steps[1].shell",
                "stages[0].repeat.shell",
                "stages[0].validate.shell"
            ]
        );
        let msg = err.to_string();
        for part in [
            ".orchestrator/policy.yaml sets allow_shell: false",
            r#"stage "build" step 1 ("pack") sets shell: true (stages[0].steps[1].shell)"#,
            r#"stage "build" repeat sets shell: true"#,
            r#"stage "build" validate sets shell: true"#,
            "expected argv commands",
        ] {
            assert!(msg.contains(part), "{part:?} in {msg}");
        }
    }

    #[test]
    fn argv_only_workflows_pass_a_policy_without_shell() {
        let wf = workflow(
            "name: w\nstages:\n  - id: a\n    steps:\n      - commands: [{argv: [\"true\"]}]\n",
        );
        assert!(check_shell(&wf, false, "policy.yaml").is_ok());
    }
}
