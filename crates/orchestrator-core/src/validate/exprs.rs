//! The checks of `${{ ... }}` in a workflow: every one in a field that is
//! rendered (a command's argv items, env values and cwd, and the workflow's
//! and stages' env values) must parse and read only names that exist
//! there; `${{` in a field that is not rendered is refused rather than
//! passed on as text that looks substituted.
//!
//! What a rendered field may read: `inputs.NAME` for a declared input,
//! `matrix.KEY` in a matrix stage that has the key, `run.id` and
//! `run.workflow`, and `stages.ID.outputs.KEY` and `stages.ID.result` for a
//! stage `ID` that the stage needs, directly or through others (a matrix
//! stage's expansion by its own id, `stages['test[py=3.12]']`).
//! A stage's `if:` reads the same, and may call the status functions,
//! which nothing else may.

use std::collections::{BTreeMap, BTreeSet};

use super::{add_in, add_within, ancestors, Problem};
use crate::expr::{parse_condition, Template};
use crate::spec::{CommandSpec, Stage, Workflow};

/// The top-level names a rendered field may read.
const NAMES: [&str; 4] = ["inputs", "matrix", "run", "stages"];

/// Checks every `${{ }}` of `wf` (before its matrices are expanded).
pub(super) fn check_exprs(wf: &Workflow, nth: &[usize], out: &mut Vec<Problem>) {
    let needs: BTreeMap<&str, &[String]> = wf
        .stages
        .iter()
        .map(|s| (s.id.as_str(), s.needs.as_slice()))
        .collect();
    let top = Scope {
        wf,
        stage: None,
        upstream: BTreeSet::new(),
    };
    for (k, v) in &wf.env {
        top.check(&format!("env.{k}"), v, None, Some((k, v)), &["env"], out);
    }
    for (i, st) in wf.stages.iter().enumerate() {
        let at = (st.id.as_str(), nth.get(i).copied().unwrap_or(0));
        let scope = Scope {
            wf,
            stage: Some((st, at)),
            upstream: ancestors(&needs, &st.id),
        };
        let base = format!("stages[{i}]");
        if let Some(cond) = &st.condition {
            scope.condition(&format!("{base}.if"), cond, at, out);
        }
        for (k, v) in &st.env {
            scope.check(
                &format!("{base}.env.{k}"),
                v,
                Some(at),
                Some((k, v)),
                &["env"],
                out,
            );
        }
        for (s, step) in st.steps.iter().enumerate() {
            for (c, cmd) in step.commands.iter().enumerate() {
                scope.command(&format!("{base}.steps[{s}].commands[{c}]"), cmd, out);
            }
            for (a, glob) in step.artifacts.iter().enumerate() {
                literal(&format!("{base}.steps[{s}].artifacts[{a}]"), glob, at, out);
            }
            if let Some(q) = &step.input {
                literal(
                    &format!("{base}.steps[{s}].input.question"),
                    &q.question,
                    at,
                    out,
                );
            }
        }
        if let Some(v) = &st.validate {
            for (c, cmd) in v.commands.iter().enumerate() {
                scope.command(&format!("{base}.validate.commands[{c}]"), cmd, out);
            }
        }
        if let Some(u) = st.repeat.as_ref().and_then(|r| r.until_command()) {
            scope.command(&format!("{base}.repeat.until"), u, out);
        }
        if let Some(text) = st.repeat.as_ref().and_then(|r| r.until_output()) {
            literal(
                &format!("{base}.repeat.until.output_contains"),
                text,
                at,
                out,
            );
        }
        for (j, l) in st.labels.iter().enumerate() {
            literal(&format!("{base}.labels[{j}]"), l, at, out);
        }
        for (j, m) in st.mounts.iter().enumerate() {
            literal(&format!("{base}.mounts[{j}]"), m, at, out);
        }
        for (j, s) in st.secrets.iter().enumerate() {
            literal(&format!("{base}.secrets[{j}]"), s, at, out);
        }
        if let Some(image) = &st.image {
            literal(&format!("{base}.image"), image, at, out);
        }
        if let Some(model) = &st.model {
            literal(&format!("{base}.model"), model, at, out);
        }
    }
}

/// Refuses `${{` in a field that is never rendered.
fn literal(field: &str, text: &str, stage: (&str, usize), out: &mut Vec<Problem>) {
    if text.contains("${{") {
        add_in(
            out,
            field.to_owned(),
            format!(
                "{text:?}: `${{{{ }}}}` is not substituted here; only a command's argv items, env values and cwd, and the env values of the workflow and its stages, are"
            ),
            stage,
            None,
        );
    }
}

/// Where a field sits: the workflow, or one of its stages and what that
/// stage needs.
struct Scope<'a> {
    wf: &'a Workflow,
    stage: Option<(&'a Stage, (&'a str, usize))>,
    upstream: BTreeSet<&'a str>,
}

impl Scope<'_> {
    fn command(&self, field: &str, cmd: &CommandSpec, out: &mut Vec<Problem>) {
        let at = self.stage.map(|(_, at)| at);
        for (a, arg) in cmd.argv.iter().enumerate() {
            self.check(
                &format!("{field}.argv[{a}]"),
                arg,
                at,
                Some(("argv", arg)),
                &[],
                out,
            );
        }
        for (k, v) in &cmd.env {
            self.check(&format!("{field}.env.{k}"), v, at, Some((k, v)), &[], out);
        }
        if let Some(cwd) = &cmd.cwd {
            self.check(
                &format!("{field}.cwd"),
                cwd,
                at,
                Some(("cwd", cwd)),
                &[],
                out,
            );
        }
        if let Some(run) = cmd.run.as_ref().filter(|r| r.contains("${{")) {
            let problem = format!(
                "{run:?}: `${{{{ }}}}` is not substituted in a shell string (a value would be read by the shell as code); read inputs from their variables ($ORCH_INPUT_NAME), or use argv"
            );
            self.push(
                format!("{field}.run"),
                problem,
                at,
                Some(("run", run)),
                &[],
                out,
            );
        }
    }

    /// Parses `text` (the value of `field`) and checks what it reads.
    fn check(
        &self,
        field: &str,
        text: &str,
        at: Option<(&str, usize)>,
        locate: Option<(&str, &str)>,
        within: &[&str],
        out: &mut Vec<Problem>,
    ) {
        if !text.contains("${{") {
            return;
        }
        let template = match Template::parse(text) {
            Ok(t) => t,
            Err(e) => {
                let m = format!("{text:?}: column {}: {}", e.column, e.message);
                return self.push(field.to_owned(), m, at, locate, within, out);
            }
        };
        for r in template.references() {
            if let Err(why) = self.reads(&r.path) {
                let m = format!("{text:?}: column {}: {why}", r.column);
                self.push(field.to_owned(), m, at, locate, within, out);
            }
        }
        for e in template.exprs().filter(|e| e.uses_status_function()) {
            let m = format!(
                "{text:?}: column {}: the status functions (success(), failure(), always(), cancelled()) are only in a stage's `if:`",
                e.column
            );
            self.push(field.to_owned(), m, at, locate, within, out);
        }
    }

    /// Parses a stage's `if:` and checks what it reads.
    fn condition(&self, field: &str, text: &str, at: (&str, usize), out: &mut Vec<Problem>) {
        let locate = Some(("if", text));
        let expr = match parse_condition(text) {
            Ok(e) => e,
            Err(e) => {
                let m = format!("{text:?}: column {}: {}", e.column, e.message);
                return add_in(out, field.to_owned(), m, at, locate);
            }
        };
        for r in expr.references() {
            if let Err(why) = self.reads_in_condition(&r.path) {
                let m = format!("{text:?}: column {}: {why}", r.column);
                add_in(out, field.to_owned(), m, at, locate);
            }
        }
    }

    /// What an `if:` may read: what a rendered field may, and the `result`
    /// of a stage this one needs directly.
    fn reads_in_condition(&self, path: &[String]) -> Result<(), String> {
        let (Some(st), Some("stages"), Some(id), Some("result")) = (
            self.stage.map(|(s, _)| s),
            path.first().map(String::as_str),
            path.get(1),
            path.get(2).map(String::as_str),
        ) else {
            return self.reads(path);
        };
        if st.needs.contains(id) {
            Ok(())
        } else {
            Err(format!(
                "stage {:?} reads the result of {id:?}, which it does not need directly (it needs: {})",
                st.id,
                if st.needs.is_empty() {
                    "nothing".to_owned()
                } else {
                    st.needs.join(", ")
                }
            ))
        }
    }

    fn push(
        &self,
        field: String,
        message: String,
        at: Option<(&str, usize)>,
        locate: Option<(&str, &str)>,
        within: &[&str],
        out: &mut Vec<Problem>,
    ) {
        match (at, within.is_empty()) {
            (Some(at), true) => add_in(out, field, message, at, locate),
            _ => add_within(out, field, message, at, within, locate),
        }
    }

    /// Whether a field here may read `path`; the reason when not.
    fn reads(&self, path: &[String]) -> Result<(), String> {
        let name = path.first().map(String::as_str).unwrap_or_default();
        let key = path.get(1).map(String::as_str);
        match name {
            "inputs" => match key {
                Some(k) if !self.wf.inputs.contains_key(k) => Err(format!(
                    "unknown input '{k}' ({})",
                    if self.wf.inputs.is_empty() {
                        "this workflow declares no inputs".to_owned()
                    } else {
                        format!(
                            "declared: {}",
                            self.wf
                                .inputs
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                )),
                _ => Ok(()),
            },
            "matrix" => {
                let Some(m) = self.stage.and_then(|(s, _)| s.matrix.as_ref()) else {
                    return Err("`matrix` is only in a stage with a `matrix:`".into());
                };
                let keys: BTreeSet<&str> = m
                    .axes
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .chain(
                        m.include
                            .iter()
                            .flat_map(|e| e.0.iter().map(|(k, _)| k.as_str())),
                    )
                    .collect();
                match key {
                    Some(k) if !keys.contains(k) => Err(format!(
                        "unknown matrix key '{k}' (the matrix has: {})",
                        keys.into_iter().collect::<Vec<_>>().join(", ")
                    )),
                    _ => Ok(()),
                }
            }
            "run" => match key {
                Some("id" | "workflow") | None => Ok(()),
                Some(k) => Err(format!(
                    "unknown name 'run.{k}' (known: run.id, run.workflow)"
                )),
            },
            "stages" => self.reads_stage(path),
            other => Err(format!(
                "unknown name '{other}' (known: {})",
                NAMES.join(", ")
            )),
        }
    }

    /// `stages.ID.outputs.KEY`: what a stage this one needs reported.
    fn reads_stage(&self, path: &[String]) -> Result<(), String> {
        let needs = || {
            if self.upstream.is_empty() {
                "it needs no stage".to_owned()
            } else {
                format!(
                    "it needs: {}",
                    self.upstream.iter().copied().collect::<Vec<_>>().join(", ")
                )
            }
        };
        let Some((st, _)) = self.stage else {
            return Err("`stages` is only in a stage's own fields".into());
        };
        // A matrix stage's expansions are reached by their own ids,
        // `stages['test[py=3.12]']`: the stage needed is `test`.
        let needed = |id: &str| self.upstream.contains(id.split('[').next().unwrap_or(id));
        match (path.get(1), path.get(2).map(String::as_str)) {
            (Some(id), Some("outputs" | "result")) if needed(id) => Ok(()),
            (Some(id), Some("outputs" | "result")) => Err(format!(
                "stage {:?} reads the outputs of {id:?}, which it does not need; a stage reads only the outputs of the stages it needs ({})",
                st.id,
                needs()
            )),
            _ => Err(format!(
                "expected stages.ID.outputs.KEY or stages.ID.result for a stage ID that stage {:?} needs ({})",
                st.id,
                needs()
            )),
        }
    }
}
