//! `${{ ... }}` in what a step runs: each argv item, each `env` value and
//! the `cwd` of a command (of a step, a `validate:` or a loop's `until`),
//! and the `env` values of the workflow and the stage, rendered against a
//! context (`inputs`, `matrix`, `run`, ...). The store renders them when it
//! makes a job, so the agent gets concrete commands and the job's recorded
//! spec says what ran.
//!
//! Never through a shell: each argv item is rendered on its own and stays
//! one argument whatever its value holds (spaces, quotes, `;`, `$(...)`,
//! newlines); a list or an object renders as compact JSON, still one
//! argument. What a value holds is never rendered again: a value holding
//! `${{ ... }}` reaches the command as that text. A `run:` shell string is
//! not rendered (validation refuses `${{` in it): its values come in
//! through the `ORCH_INPUT_*` variables, which the shell quotes itself.

use std::collections::BTreeMap;

use super::{CommandSpec, Step};
use crate::expr::{Context, ExprError, Template};

/// A field whose `${{ }}` could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {template}: {message}")]
pub struct SubstError {
    /// The field, as a path such as `stages[1].steps[0].commands[2].argv[1]`.
    pub field: String,
    /// The field's text as written.
    pub template: String,
    /// What went wrong, from the expression language.
    pub message: String,
    #[source]
    pub source: ExprError,
}

/// Renders `text`, the value of `field`. A text without `${{` is returned
/// as it is, unparsed (so a literal `$${{` elsewhere costs nothing).
pub fn substitute_text(text: &str, ctx: &Context<'_>, field: &str) -> Result<String, SubstError> {
    if !text.contains("${{") {
        return Ok(text.to_owned());
    }
    let fail = |source: ExprError| SubstError {
        field: field.to_owned(),
        template: text.to_owned(),
        message: source.message.clone(),
        source,
    };
    Template::parse(text)
        .map_err(fail)?
        .render(ctx)
        .map_err(fail)
}

/// Renders the values of an `env` map whose field is `field`.
pub fn substitute_env(
    env: &BTreeMap<String, String>,
    ctx: &Context<'_>,
    field: &str,
) -> Result<BTreeMap<String, String>, SubstError> {
    env.iter()
        .map(|(k, v)| Ok((k.clone(), substitute_text(v, ctx, &format!("{field}.{k}"))?)))
        .collect()
}

/// Renders one command's argv items, env values and cwd; `field` is the
/// command's path (`stages[0].steps[1].commands[0]`). A `run:` string is
/// left as it is.
pub fn substitute_command(
    cmd: &CommandSpec,
    ctx: &Context<'_>,
    field: &str,
) -> Result<CommandSpec, SubstError> {
    let argv = cmd
        .argv
        .iter()
        .enumerate()
        .map(|(i, a)| substitute_text(a, ctx, &format!("{field}.argv[{i}]")))
        .collect::<Result<_, _>>()?;
    let cwd = match &cmd.cwd {
        Some(c) => Some(substitute_text(c, ctx, &format!("{field}.cwd"))?),
        None => None,
    };
    Ok(CommandSpec {
        argv,
        cwd,
        env: substitute_env(&cmd.env, ctx, &format!("{field}.env"))?,
        ..cmd.clone()
    })
}

/// A copy of `step` with every command rendered; `field` is the step's
/// path (`stages[1].steps[0]`, or `stages[1].validate` for a validation).
pub fn substitute_commands(
    step: &Step,
    ctx: &Context<'_>,
    field: &str,
) -> Result<Step, SubstError> {
    let commands = step
        .commands
        .iter()
        .enumerate()
        .map(|(i, c)| substitute_command(c, ctx, &format!("{field}.commands[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Step {
        commands,
        ..step.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Context<'static> {
        Context::new()
            .with(
                "inputs",
                json!({"version": "1.2", "files": ["a b", "c"], "evil": "$(rm -rf /); echo '\"\n${{ inputs.version }}"}),
            )
            .with("matrix", json!({"py": "3.12"}))
            .with("run", json!({"id": "r1", "workflow": "w"}))
    }

    fn cmd(argv: &[&str]) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn each_argv_item_renders_to_one_argument() {
        let step = Step {
            commands: vec![CommandSpec {
                cwd: Some("py${{ matrix.py }}".into()),
                env: [("V".to_owned(), "${{ inputs.version }}".to_owned())].into(),
                ..cmd(&[
                    "tox",
                    "-e",
                    "py${{ matrix.py }}",
                    "${{ inputs.files }}",
                    "${{ run.id }}",
                ])
            }],
            ..Default::default()
        };
        let out = substitute_commands(&step, &ctx(), "stages[0].steps[0]").unwrap();
        let c = &out.commands[0];
        assert_eq!(c.argv, ["tox", "-e", "py3.12", r#"["a b","c"]"#, "r1"]);
        assert_eq!(c.cwd.as_deref(), Some("py3.12"));
        assert_eq!(c.env["V"], "1.2");
    }

    #[test]
    fn a_value_is_never_rendered_again_nor_split() {
        let c = substitute_command(&cmd(&["echo", "${{ inputs.evil }}"]), &ctx(), "c").unwrap();
        assert_eq!(c.argv.len(), 2);
        assert_eq!(c.argv[1], "$(rm -rf /); echo '\"\n${{ inputs.version }}");
    }

    #[test]
    fn a_shell_string_and_escaped_text_stay_as_written() {
        let mut c = cmd(&[]);
        c.run = Some("echo ${{ inputs.version }}".into());
        assert_eq!(substitute_command(&c, &ctx(), "c").unwrap(), c);
        let c = substitute_command(&cmd(&["echo", "$${{ inputs.version }}"]), &ctx(), "c").unwrap();
        assert_eq!(c.argv[1], "${{ inputs.version }}");
    }

    #[test]
    fn an_error_names_the_field_and_the_text() {
        let e = substitute_command(
            &cmd(&["x", "${{ nope.x }}"]),
            &ctx(),
            "stages[1].steps[0].commands[2]",
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(
            m.starts_with(
                "stages[1].steps[0].commands[2].argv[1]: ${{ nope.x }}: unknown name 'nope'"
            ),
            "{m}"
        );
    }
}
