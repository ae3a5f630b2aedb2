//! The checks of one stage's steps, its loop and its validation: what each
//! step runs or asks, which files it commits, how the stage repeats and
//! what checks it afterwards.

use super::{
    add_in, add_within, check_command, check_env, ArtifactGlobError, CommandError, Problem,
};
use crate::spec::{Stage, MAX_UNTIL_TEXT};

/// Most iterations a loop stage may declare.
pub const MAX_ITERATIONS: u32 = 10_000;

/// Checks the steps and `repeat` of stage `i` (`stage` locates its block).
pub(super) fn check_steps(i: usize, st: &Stage, stage: (&str, usize), out: &mut Vec<Problem>) {
    check_validate(i, st, stage, out);
    check_secrets(i, st, stage, out);
    let id = st.id.as_str();
    for (k, step) in st.steps.iter().enumerate() {
        let at = format!("stages[{i}].steps[{k}]");
        match (&step.input, step.commands.is_empty()) {
            (None, true) => add_in(
                out,
                format!("{at}.commands"),
                format!(
                    "step {k} of stage {id:?} has no commands; expected at least one command, or an `input` question"
                ),
                stage,
                None,
            ),
            (Some(_), false) => add_in(
                out,
                format!("{at}.input"),
                format!(
                    "step {k} of stage {id:?} has both `commands` and `input`; an input step only asks, expected one of them"
                ),
                stage,
                None,
            ),
            _ => {}
        }
        if let Some(input) = &step.input {
            if input.question.trim().is_empty() {
                add_in(
                    out,
                    format!("{at}.input.question"),
                    "empty question; expected the text a human answers".into(),
                    stage,
                    None,
                );
            }
            for (c, choice) in input.choices.iter().enumerate() {
                if choice.trim().is_empty() {
                    add_in(
                        out,
                        format!("{at}.input.choices[{c}]"),
                        "empty choice; expected a non-empty answer".into(),
                        stage,
                        None,
                    );
                } else if input.choices[..c].contains(choice) {
                    add_in(
                        out,
                        format!("{at}.input.choices[{c}]"),
                        format!("choice {choice:?} is listed twice"),
                        stage,
                        None,
                    );
                }
            }
            for (field, set) in [
                ("approve", step.approve),
                ("artifacts", !step.artifacts.is_empty()),
            ] {
                if set {
                    add_in(
                        out,
                        format!("{at}.{field}"),
                        format!(
                            "`{field}` applies to steps that run commands, not to an input step"
                        ),
                        stage,
                        None,
                    );
                }
            }
        }
        for (a, glob) in step.artifacts.iter().enumerate() {
            if let Err(e) = check_artifact_glob(glob) {
                add_in(
                    out,
                    format!("{at}.artifacts[{a}]"),
                    e.to_string(),
                    stage,
                    Some(("artifacts", glob)),
                );
            }
        }
        for (c, cmd) in step.commands.iter().enumerate() {
            let field = format!("{at}.commands[{c}]");
            if let Err(e) = check_command(cmd, step.shell) {
                // Point at the line the rule is about, when the text shows it.
                let locate = match (&cmd.cwd, &cmd.run) {
                    (Some(cwd), _) if matches!(e, CommandError::Cwd { .. }) => {
                        Some(("cwd", cwd.as_str()))
                    }
                    (_, Some(run)) => Some(("run", run.as_str())),
                    _ if cmd.argv.is_empty() => Some(("argv", "[]")),
                    _ => None,
                };
                add_in(out, field.clone(), e.to_string(), stage, locate);
            }
            check_env(&format!("{field}.env"), &cmd.env, Some(stage), out);
        }
    }
    let Some(repeat) = &st.repeat else { return };
    if repeat.max == 0 || repeat.max > MAX_ITERATIONS {
        add_in(
            out,
            format!("stages[{i}].repeat.max"),
            format!(
                "max {} iterations; expected 1 to {MAX_ITERATIONS}",
                repeat.max
            ),
            stage,
            None,
        );
    }
    if let Some(text) = repeat.until_output() {
        if text.is_empty() || text.len() > MAX_UNTIL_TEXT {
            add_within(
                out,
                format!("stages[{i}].repeat.until.output_contains"),
                format!(
                    "{} bytes; expected 1 to {MAX_UNTIL_TEXT} bytes of text to look for",
                    text.len()
                ),
                Some(stage),
                &["repeat", "until"],
                None,
            );
        }
    }
    if repeat.until.is_some() {
        let field = format!("stages[{i}].repeat.until");
        if let Some(until) = repeat.until_command() {
            if let Err(e) = check_command(until, repeat.shell) {
                let msg = shell_rule(&e, "with `repeat.shell: true`");
                add_in(out, field.clone(), msg, stage, None);
            }
            check_env(&format!("{field}.env"), &until.env, Some(stage), out);
        }
        if st.steps.last().is_some_and(|s| s.is_input()) {
            add_in(
                out,
                field,
                format!(
                    "stage {id:?} ends each iteration with an input step, but `until` runs after the iteration's last command step; put a step with commands last"
                ),
                stage,
                None,
            );
        }
    }
}

/// An artifact glob names files inside the run's worktree.
pub fn check_artifact_glob(glob: &str) -> Result<(), ArtifactGlobError> {
    if glob.trim().is_empty() {
        return Err(ArtifactGlobError::Empty);
    }
    if glob.contains('\0') {
        return Err(ArtifactGlobError::Nul(glob.to_owned()));
    }
    if glob.starts_with('/') {
        return Err(ArtifactGlobError::Absolute(glob.to_owned()));
    }
    if glob.split('/').any(|part| part == "..") {
        return Err(ArtifactGlobError::Escapes(glob.to_owned()));
    }
    Ok(())
}

/// The message of `e` for a command outside a step's `commands`, whose
/// shell is allowed by another field (`allowed_by`) than the step's.
fn shell_rule(e: &CommandError, allowed_by: &str) -> String {
    e.to_string()
        .replace("in a step with `shell: true`", allowed_by)
}

/// Checks the `validate:` block of stage `i`.
fn check_validate(i: usize, st: &Stage, stage: (&str, usize), out: &mut Vec<Problem>) {
    let Some(v) = &st.validate else { return };
    if v.commands.is_empty() {
        add_in(
            out,
            format!("stages[{i}].validate.commands"),
            format!(
                "stage {:?} validates with no commands; expected at least one command",
                st.id
            ),
            stage,
            None,
        );
    }
    for (k, cmd) in v.commands.iter().enumerate() {
        let field = format!("stages[{i}].validate.commands[{k}]");
        if let Err(e) = check_command(cmd, v.shell) {
            let msg = shell_rule(&e, "with `validate.shell: true`");
            add_in(out, field.clone(), msg, stage, None);
        }
        check_env(&format!("{field}.env"), &cmd.env, Some(stage), out);
    }
}

/// Checks the `secrets:` names of stage `i`: variable names, each once.
fn check_secrets(i: usize, st: &Stage, stage: (&str, usize), out: &mut Vec<Problem>) {
    let mut seen = std::collections::BTreeSet::new();
    for (k, name) in st.secrets.iter().enumerate() {
        let ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let message = if !ok {
            format!("invalid secret name {name:?}: expected an environment variable name (letters, digits and '_', not starting with a digit)")
        } else if !seen.insert(name) {
            format!("secret {name:?} is named twice; expected each name once")
        } else if name.starts_with("ORCH_") {
            format!("secret {name:?} would hide a variable the agent sets; expected a name not starting with ORCH_")
        } else {
            continue;
        };
        add_in(
            out,
            format!("stages[{i}].secrets[{k}]"),
            message,
            stage,
            None,
        );
    }
}
