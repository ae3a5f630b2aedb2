//! Turning workflow text into a checked [`Workflow`], or into errors a human can
//! act on: each names the file, the line and column where they are known, the
//! field, and what was expected. Every problem is reported, not just the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::error::MAX_INFRA_ATTEMPTS;
use crate::spec::{SandboxKind, Workflow};

mod caches;
mod commands;
mod errors;
mod exprs;
mod inputs;
mod locate;
mod loops;
mod matrix;
mod steps;

pub use commands::{check_command, check_relative_path};
pub use errors::{ArtifactGlobError, CommandError, RelativePathError};
pub use loops::ancestors;
pub use matrix::is_valid_stage_id;
pub use steps::{check_artifact_glob, MAX_ITERATIONS};

use locate::place;

/// Largest workflow text accepted, in bytes.
pub const MAX_WORKFLOW_BYTES: usize = 4 * 1024 * 1024;
/// Most GPUs one stage may ask for.
pub const MAX_GPUS: u32 = 64;
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

/// Parses and validates workflow YAML (JSON is YAML too), then expands its
/// matrix stages ([`crate::spec::expand`]): what it returns holds only
/// stages that run. `file` is only used in error messages.
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
        // Validation has refused everything expanding could: this is a
        // last word without a place in the file.
        return crate::spec::expand(wf)
            .map_err(|e| SpecErrors(vec![err(None, None, "stages", e.to_string())]));
    }
    let lines: Vec<&str> = text.lines().collect();
    Err(SpecErrors(
        problems
            .into_iter()
            .map(|p| {
                let (line, column) =
                    place(&lines, &p).map_or((None, None), |(l, c)| (Some(l), Some(c)));
                err(line, column, &p.field, p.message)
            })
            .collect(),
    ))
}

/// serde_yaml reports nested errors as `stages[0].steps[1]: message`, and
/// errors in a top-level field as `name: message`.
fn split_field_prefix(msg: &str) -> (String, String) {
    const TOP_LEVEL: [&str; 6] = ["name", "description", "inputs", "env", "cache", "stages"];
    if let Some((head, tail)) = msg.split_once(": ") {
        if !head.contains(' ')
            && (head.contains('.') || head.contains('[') || TOP_LEVEL.contains(&head))
        {
            return (head.to_owned(), tail.to_owned());
        }
    }
    (String::new(), msg.to_owned())
}

/// A semantic problem, with where to look for it in the source to find its line.
struct Problem {
    field: String,
    message: String,
    /// A `key: value` to look for (`value` may also be an item of a flow or
    /// block list under `key`).
    locate: Option<(String, String)>,
    /// The stage the problem belongs to, as its id and how many earlier
    /// stages use the same id: `locate` is searched only inside that stage's
    /// block, and the stage's `id:` line is the fallback.
    stage: Option<(String, usize)>,
    /// Keys leading to the block `locate` is searched in, each inside the
    /// last (`["matrix", "include"]`); the deepest one found is the
    /// fallback.
    within: Vec<String>,
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
    check_env("env", &wf.env, None, &mut out);
    inputs::check_inputs(wf, &mut out);
    // Whether the graph of needs already has a reported problem that a cycle
    // search would repeat or misread (a self-need is a cycle; duplicate ids
    // make "the stage named x" ambiguous).
    let mut graph_reported = false;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    // For each stage, how many earlier stages use its id (to find its own block).
    let mut nth = vec![0usize; wf.stages.len()];
    let mut uses: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, st) in wf.stages.iter().enumerate() {
        let n = uses.entry(st.id.as_str()).or_default();
        nth[i] = *n;
        *n += 1;
    }
    for (i, st) in wf.stages.iter().enumerate() {
        let id = st.id.as_str();
        let stage = (id, nth[i]);
        if !is_valid_id(id) {
            add_in(
                &mut out,
                format!("stages[{i}].id"),
                format!("invalid stage id {id:?}: {ID_RULE}"),
                stage,
                None,
            );
        }
        if let Some(first) = seen.get(id) {
            graph_reported = true;
            add_in(
                &mut out,
                format!("stages[{i}].id"),
                format!(
                    "duplicate stage id {id:?}: stages[{first}] already uses it; ids must be unique"
                ),
                stage,
                None,
            );
        } else {
            seen.insert(id, i);
        }
        if st.steps.is_empty() {
            add_in(
                &mut out,
                format!("stages[{i}].steps"),
                format!("stage {id:?} has no steps; expected at least one"),
                stage,
                None,
            );
        }
        if let (Some(image), Some(kind)) = (&st.image, st.sandbox) {
            if kind != SandboxKind::Container {
                add_in(
                    &mut out,
                    format!("stages[{i}].image"),
                    format!(
                        "stage {id:?} sets image {image:?} but its sandbox is {kind}; an image is only used by sandbox: container (set sandbox: container, or remove image)"
                    ),
                    stage,
                    Some(("image", image)),
                );
            }
        }
        for (j, m) in st.mounts.iter().enumerate() {
            if let Err(why) = commands::check_mount(m) {
                add_in(
                    &mut out,
                    format!("stages[{i}].mounts[{j}]"),
                    format!("stage {id:?} mounts {m:?}: {why}"),
                    stage,
                    Some(("mounts", m)),
                );
            }
        }
        let mut needs_seen = BTreeSet::new();
        for (j, n) in st.needs.iter().enumerate() {
            if !needs_seen.insert(n) {
                add_in(
                    &mut out,
                    format!("stages[{i}].needs[{j}]"),
                    format!("stage {id:?} lists {n:?} twice in needs"),
                    stage,
                    Some(("needs", n)),
                );
            }
            if n == id {
                graph_reported = true;
                add_in(
                    &mut out,
                    format!("stages[{i}].needs[{j}]"),
                    format!("stage {id:?} needs itself"),
                    stage,
                    Some(("needs", n)),
                );
            }
        }
        for (j, l) in st.labels.iter().enumerate() {
            if l.trim().is_empty() {
                add_in(
                    &mut out,
                    format!("stages[{i}].labels[{j}]"),
                    "empty label; expected a capability name".into(),
                    stage,
                    None,
                );
            }
        }
        if let Some(r) = &st.resources {
            if r.gpus.is_some_and(|g| g > MAX_GPUS) {
                add_in(
                    &mut out,
                    format!("stages[{i}].resources.gpus"),
                    format!("{} GPUs: expected at most {MAX_GPUS}", r.gpus.unwrap_or(0)),
                    stage,
                    None,
                );
            }
            if r.gpu_memory.is_some_and(|m| m.as_mib() == 0) {
                add_in(
                    &mut out,
                    format!("stages[{i}].resources.gpu_memory"),
                    "0 MiB: expected an amount such as 8G (or leave it out to take whole GPUs)"
                        .into(),
                    stage,
                    None,
                );
            }
            if r.gpus == Some(0) && r.gpu_memory.is_some() {
                add_in(
                    &mut out,
                    format!("stages[{i}].resources.gpu_memory"),
                    "set with gpus: 0; expected gpus of at least 1, or no gpu_memory".into(),
                    stage,
                    None,
                );
            }
        }
        if let Some(r) = &st.retry {
            if let Some(a) = r.attempts.filter(|a| !(1..=MAX_INFRA_ATTEMPTS).contains(a)) {
                add_in(
                    &mut out,
                    format!("stages[{i}].retry.attempts"),
                    format!("{a}: expected 1 to {MAX_INFRA_ATTEMPTS} (the system allows no more)"),
                    stage,
                    None,
                );
            }
            if let Some(f) = r.factor.filter(|f| !(1..=100).contains(f)) {
                add_in(
                    &mut out,
                    format!("stages[{i}].retry.factor"),
                    format!("{f}: expected 1 to 100"),
                    stage,
                    None,
                );
            }
            if let (Some(a), Some(b)) = (r.initial, r.max) {
                if a > b {
                    add_in(
                        &mut out,
                        format!("stages[{i}].retry.initial"),
                        format!("{a} is longer than max {b}; expected initial <= max"),
                        stage,
                        None,
                    );
                }
            }
        }
        check_env(&format!("stages[{i}].env"), &st.env, Some(stage), &mut out);
        steps::check_steps(i, st, stage, &mut out);
    }
    for (i, st) in wf.stages.iter().enumerate() {
        for (j, n) in st.needs.iter().enumerate() {
            if n != &st.id && !seen.contains_key(n.as_str()) {
                let known: Vec<&str> = seen.keys().copied().take(10).collect();
                let of_matrix = crate::spec::matrix_stage_of(n)
                    .filter(|of| wf.stages.iter().any(|s| s.id == *of && s.matrix.is_some()));
                add_in(&mut out,
                    format!("stages[{i}].needs[{j}]"),
                    match of_matrix {
                        Some(of) => format!(
                            "stage {:?} needs {n:?}, one combination of the matrix stage {of:?}; a stage can only need a matrix stage as a whole: write needs: [{of}]",
                            st.id
                        ),
                        None => format!(
                            "stage {:?} needs {n:?}, which is not a stage of this workflow; expected one of: {}",
                            st.id,
                            known.join(", ")
                        ),
                    },
                    (st.id.as_str(), nth[i]),
                    Some(("needs", n)),
                );
            }
        }
    }
    let stages: Vec<(&str, usize)> = wf
        .stages
        .iter()
        .enumerate()
        .map(|(i, st)| (st.id.as_str(), nth[i]))
        .collect();
    caches::check_caches(wf, &stages, &mut out);
    loops::check_send_backs(wf, &nth, &mut out);
    matrix::check_matrices(wf, &nth, &mut out);
    exprs::check_exprs(wf, &nth, &mut out);
    // Needs that point nowhere are ignored by the cycle search, so a cycle
    // among the other stages is still reported alongside them.
    if !graph_reported {
        if let Some(cycle) = crate::plan::find_cycle(wf) {
            let first = cycle.first().cloned().unwrap_or_default();
            add_in(
                &mut out,
                "stages".into(),
                format!(
                    "the needs of these stages form a cycle: {}",
                    cycle.join(" -> ")
                ),
                (first.as_str(), 0),
                None,
            );
        }
    }
    out
}

/// A problem located by a `key: value` anywhere in the text.
fn add(out: &mut Vec<Problem>, field: String, message: String, locate: Option<(&str, &str)>) {
    out.push(Problem {
        field,
        message,
        locate: locate.map(|(k, v)| (k.to_owned(), v.to_owned())),
        stage: None,
        within: Vec::new(),
    });
}

/// A problem of one stage, located inside that stage's block (at its `id:`
/// line when `locate` is None or not found).
fn add_in(
    out: &mut Vec<Problem>,
    field: String,
    message: String,
    (id, nth): (&str, usize),
    locate: Option<(&str, &str)>,
) {
    out.push(Problem {
        field,
        message,
        locate: locate.map(|(k, v)| (k.to_owned(), v.to_owned())),
        stage: Some((id.to_owned(), nth)),
        within: Vec::new(),
    });
}

/// A problem located inside the block that the keys `within` lead to (in
/// `stage`'s block when it is given), by `locate` there or at the deepest
/// of those keys.
fn add_within(
    out: &mut Vec<Problem>,
    field: String,
    message: String,
    stage: Option<(&str, usize)>,
    within: &[&str],
    locate: Option<(&str, &str)>,
) {
    out.push(Problem {
        field,
        message,
        locate: locate.map(|(k, v)| (k.to_owned(), v.to_owned())),
        stage: stage.map(|(id, nth)| (id.to_owned(), nth)),
        within: within.iter().map(|k| (*k).to_owned()).collect(),
    });
}

fn check_env(
    field: &str,
    env: &BTreeMap<String, String>,
    stage: Option<(&str, usize)>,
    out: &mut Vec<Problem>,
) {
    for (k, v) in env {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let message = if !ok {
            format!("invalid environment variable name {k:?}: expected letters, digits and '_', not starting with a digit")
        } else if v.contains('\0') {
            format!("environment variable {k:?} holds a NUL byte; values must be plain strings")
        } else {
            continue;
        };
        let field = format!("{field}.{k}");
        match stage {
            Some(id) => add_in(out, field, message, id, None),
            None => add(out, field, message, None),
        }
    }
}
