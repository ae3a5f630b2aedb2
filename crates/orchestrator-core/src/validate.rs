//! Turning workflow text into a checked [`Workflow`], or into errors a human can
//! act on: each names the file, the line and column where they are known, the
//! field, and what was expected. Every problem is reported, not just the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::spec::{CommandSpec, Workflow};

/// Largest workflow text accepted, in bytes.
pub const MAX_WORKFLOW_BYTES: usize = 4 * 1024 * 1024;
/// Most stages a workflow may have.
pub const MAX_STAGES: usize = 20_000;

/// One problem found in a workflow file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecError {
    /// The file, as the user named it, when known.
    pub file: Option<String>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The field, as a path such as `stages[2].needs[0]`.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}:")?;
        }
        if let Some(line) = self.line {
            write!(f, "{line}:")?;
            if let Some(col) = self.column {
                write!(f, "{col}:")?;
            }
        }
        if self.file.is_some() || self.line.is_some() {
            f.write_str(" ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found in one workflow file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parses and validates workflow YAML (JSON is YAML too). `file` is only used
/// in error messages.
pub fn parse_workflow(text: &str, file: Option<&str>) -> Result<Workflow, SpecErrors> {
    let err = |line, column, field: &str, message: String| SpecError {
        file: file.map(str::to_owned),
        line,
        column,
        field: field.to_owned(),
        message,
    };
    if text.len() > MAX_WORKFLOW_BYTES {
        return Err(SpecErrors(vec![err(
            None,
            None,
            "",
            format!(
                "workflow is {} bytes; at most {MAX_WORKFLOW_BYTES} are accepted",
                text.len()
            ),
        )]));
    }
    let wf: Workflow = match serde_yaml_ng::from_str(text) {
        Ok(wf) => wf,
        Err(e) => {
            let (line, column) = match e.location() {
                Some(l) => (Some(l.line()), Some(l.column())),
                None => (None, None),
            };
            let raw = e.to_string();
            // serde_yaml appends " at line L column C"; the location is already in front.
            let message = match raw.find(" at line ") {
                Some(i) => raw[..i].to_owned(),
                None => raw,
            };
            let (field, message) = split_field_prefix(&message);
            return Err(SpecErrors(vec![err(line, column, &field, message)]));
        }
    };
    let problems = check(&wf);
    if problems.is_empty() {
        return Ok(wf);
    }
    Err(SpecErrors(
        problems
            .into_iter()
            .map(|p| {
                let (line, column) = p
                    .locate
                    .as_ref()
                    .and_then(|(k, v)| locate(text, k, v))
                    .map_or((None, None), |(l, c)| (Some(l), Some(c)));
                err(line, column, &p.field, p.message)
            })
            .collect(),
    ))
}

/// serde_yaml reports nested errors as `stages[0].steps[1]: message`.
fn split_field_prefix(msg: &str) -> (String, String) {
    if let Some((head, tail)) = msg.split_once(": ") {
        if !head.contains(' ') && (head.contains('.') || head.contains('[')) {
            return (head.to_owned(), tail.to_owned());
        }
    }
    (String::new(), msg.to_owned())
}

/// A semantic problem, with a `key: value` to look for in the source to find its line.
struct Problem {
    field: String,
    message: String,
    locate: Option<(String, String)>,
}

/// Finds the first line holding `key: value` (or `- value` in a list under key), 1-based.
fn locate(text: &str, key: &str, value: &str) -> Option<(usize, usize)> {
    let quoted = |s: &str| [s.to_owned(), format!("\"{s}\""), format!("'{s}'")];
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ").trim_start();
        if let Some(rest) = trimmed.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
            let rest = rest.trim();
            if quoted(value).iter().any(|q| rest == q) {
                return Some((i + 1, line.len() - trimmed.len() + 1));
            }
            // Flow sequences: `needs: [a, b]`.
            if rest.starts_with('[') {
                let inner = rest.trim_matches(|c| c == '[' || c == ']');
                if inner
                    .split(',')
                    .any(|x| quoted(value).iter().any(|q| x.trim() == q))
                {
                    let col = line.find(value).map_or(1, |c| c + 1);
                    return Some((i + 1, col));
                }
            }
        }
    }
    None
}

/// Whether `s` is usable as a workflow name or stage id (it becomes a path component).
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

const ID_RULE: &str =
    "expected 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit";

fn check(wf: &Workflow) -> Vec<Problem> {
    let mut out = Vec::new();
    if !is_valid_id(&wf.name) {
        add(
            &mut out,
            "name".into(),
            format!("invalid name {:?}: {ID_RULE}", wf.name),
            Some(("name", &wf.name)),
        );
    }
    if wf.stages.is_empty() {
        add(
            &mut out,
            "stages".into(),
            "a workflow needs at least one stage".into(),
            None,
        );
    }
    if wf.stages.len() > MAX_STAGES {
        add(
            &mut out,
            "stages".into(),
            format!(
                "{} stages; at most {MAX_STAGES} are accepted",
                wf.stages.len()
            ),
            None,
        );
    }
    check_env("env", &wf.env, &mut out);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, st) in wf.stages.iter().enumerate() {
        let at = Some(("id", st.id.as_str()));
        if !is_valid_id(&st.id) {
            add(
                &mut out,
                format!("stages[{i}].id"),
                format!("invalid stage id {:?}: {ID_RULE}", st.id),
                at,
            );
        }
        if let Some(first) = seen.insert(&st.id, i) {
            add(
                &mut out,
                format!("stages[{i}].id"),
                format!(
                    "duplicate stage id {:?}: stages[{first}] already uses it; ids must be unique",
                    st.id
                ),
                at,
            );
            // Locating by text would point at the first occurrence, so leave the line out.
            if let Some(p) = out.last_mut() {
                p.locate = None;
            }
        }
        if st.steps.is_empty() {
            add(
                &mut out,
                format!("stages[{i}].steps"),
                format!("stage {:?} has no steps; expected at least one", st.id),
                at,
            );
        }
        let mut needs_seen = BTreeSet::new();
        for (j, n) in st.needs.iter().enumerate() {
            if !needs_seen.insert(n) {
                add(
                    &mut out,
                    format!("stages[{i}].needs[{j}]"),
                    format!("stage {:?} lists {n:?} twice in needs", st.id),
                    at,
                );
            }
            if n == &st.id {
                add(
                    &mut out,
                    format!("stages[{i}].needs[{j}]"),
                    format!("stage {:?} needs itself", st.id),
                    at,
                );
            }
        }
        for (j, l) in st.labels.iter().enumerate() {
            if l.trim().is_empty() {
                add(
                    &mut out,
                    format!("stages[{i}].labels[{j}]"),
                    "empty label; expected a capability name".into(),
                    at,
                );
            }
        }
        check_env(&format!("stages[{i}].env"), &st.env, &mut out);
        for (k, step) in st.steps.iter().enumerate() {
            if step.commands.is_empty() {
                add(
                    &mut out,
                    format!("stages[{i}].steps[{k}].commands"),
                    format!(
                        "step {k} of stage {:?} has no commands; expected at least one",
                        st.id
                    ),
                    at,
                );
            }
            for (c, cmd) in step.commands.iter().enumerate() {
                let field = format!("stages[{i}].steps[{k}].commands[{c}]");
                if let Err(msg) = check_command(cmd, step.shell) {
                    add(&mut out, field.clone(), msg, at);
                }
                check_env(&format!("{field}.env"), &cmd.env, &mut out);
            }
        }
    }
    for (i, st) in wf.stages.iter().enumerate() {
        for (j, n) in st.needs.iter().enumerate() {
            if n != &st.id && !seen.contains_key(n.as_str()) {
                let known: Vec<&str> = seen.keys().copied().take(10).collect();
                add(&mut out,
                    format!("stages[{i}].needs[{j}]"),
                    format!(
                        "stage {:?} needs {n:?}, which is not a stage of this workflow; expected one of: {}",
                        st.id,
                        known.join(", ")
                    ),
                    Some(("needs", n)),
                );
            }
        }
    }
    if out.is_empty() {
        if let Some(cycle) = crate::plan::find_cycle(wf) {
            let first = cycle.first().cloned().unwrap_or_default();
            add(
                &mut out,
                "stages".into(),
                format!(
                    "the needs of these stages form a cycle: {}",
                    cycle.join(" -> ")
                ),
                Some(("id", &first)),
            );
        }
    }
    out
}

fn add(out: &mut Vec<Problem>, field: String, message: String, locate: Option<(&str, &str)>) {
    out.push(Problem {
        field,
        message,
        locate: locate.map(|(k, v)| (k.to_owned(), v.to_owned())),
    });
}

fn check_env(field: &str, env: &BTreeMap<String, String>, out: &mut Vec<Problem>) {
    for k in env.keys() {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            add(
                out,
                format!("{field}.{k}"),
                format!("invalid environment variable name {k:?}: expected letters, digits and '_', not starting with a digit"),
                None,
            );
        }
    }
}

/// Checks one command against the exec-safety rules. The agent calls this again
/// before running anything (defense in depth).
pub fn check_command(cmd: &CommandSpec, shell_allowed: bool) -> Result<(), String> {
    match (&cmd.run, cmd.argv.is_empty()) {
        (Some(_), false) => return Err("has both `argv` and `run`; expected exactly one".into()),
        (None, true) => {
            return Err("has neither `argv` nor `run`; expected a non-empty argv list".into())
        }
        (Some(r), true) => {
            if !shell_allowed {
                return Err(format!(
                    "`run: {r:?}` is a shell string, allowed only in a step with `shell: true`; use `argv: [...]` instead"
                ));
            }
            if r.trim().is_empty() {
                return Err("`run` is empty; expected a shell command".into());
            }
        }
        (None, false) => {
            if cmd.argv[0].is_empty() {
                return Err("argv[0] is empty; expected a program name or path".into());
            }
        }
    }
    if cmd
        .argv
        .iter()
        .chain(cmd.run.iter())
        .any(|a| a.contains('\0'))
    {
        return Err("contains a NUL byte; arguments must be plain strings".into());
    }
    if let Some(cwd) = &cmd.cwd {
        check_relative_path(cwd).map_err(|m| format!("cwd {cwd:?} {m}"))?;
    }
    Ok(())
}

/// A path a step names must be relative and stay inside the project directory.
pub fn check_relative_path(p: &str) -> Result<(), String> {
    if p.starts_with('/') {
        return Err("is absolute; expected a path relative to the project directory".into());
    }
    let mut depth: i64 = 0;
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return Err("leads outside the project directory; expected a path inside it".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_block_and_flow_forms() {
        let src = "name: x\nstages:\n  - id: a\n    needs: [b, c]\n  - id: \"d\"\n";
        assert_eq!(locate(src, "id", "a"), Some((3, 5)));
        assert_eq!(locate(src, "id", "d"), Some((5, 5)));
        assert_eq!(locate(src, "needs", "c").map(|x| x.0), Some(4));
        assert_eq!(locate(src, "id", "zz"), None);
    }

    #[test]
    fn relative_paths_must_stay_inside() {
        assert!(check_relative_path("a/b").is_ok());
        assert!(check_relative_path("a/../b").is_ok());
        assert!(check_relative_path("../b").is_err());
        assert!(check_relative_path("a/../../b").is_err());
        assert!(check_relative_path("/etc").is_err());
    }
}
