//! The checks of stages' `matrix:`: keys, values that can go into a stage
//! id, `include`/`exclude` entries that mean something, a bounded number of
//! combinations whose ids fit, and no send-back to a matrix stage (it
//! stands for several).

use std::collections::BTreeSet;

use serde_json::Value;

use super::{add_within, is_valid_id, Problem, MAX_STAGES};
use crate::spec::{
    input_env_value, instance_id, is_id_safe, is_scalar, is_valid_input_name, Matrix, MatrixError,
    MatrixValues, Workflow, ID_VALUE_CHARS, MAX_COMBINATIONS,
};

/// Longest stage id, in characters (see [`is_valid_id`]).
const MAX_ID: usize = 64;

/// Checks every stage's matrix; `nth[i]` locates stage `i`'s block.
pub(super) fn check_matrices(wf: &Workflow, nth: &[usize], out: &mut Vec<Problem>) {
    let mut total = 0usize;
    for (i, st) in wf.stages.iter().enumerate() {
        let stage = Some((st.id.as_str(), nth.get(i).copied().unwrap_or(0)));
        if let Some(rule) = st.send_back() {
            let target = rule.retry_stage.as_str();
            if wf
                .stages
                .iter()
                .any(|s| s.id == target && s.matrix.is_some())
            {
                add_within(
                    out,
                    format!("stages[{i}].on_failure.retry_stage"),
                    format!(
                        "stage {:?} sends its work back to {target:?}, a matrix stage that stands for several stages; expected a stage without a matrix",
                        st.id
                    ),
                    stage,
                    &["on_failure"],
                    Some(("retry_stage", target)),
                );
            }
        }
        let Some(m) = &st.matrix else {
            total += 1;
            continue;
        };
        let field = format!("stages[{i}].matrix");
        let mut c = Check {
            out,
            field: &field,
            stage,
            found: false,
        };
        c.axes(m);
        for (j, e) in m.include.iter().enumerate() {
            c.entry("include", j, e);
        }
        for (j, e) in m.exclude.iter().enumerate() {
            if c.entry("exclude", j, e) {
                c.exclude(m, j, e);
            }
        }
        if c.found {
            continue;
        }
        match m.combinations() {
            Ok(combos) => {
                total += combos.len();
                c.ids(&st.id, &combos);
            }
            Err(e) => {
                let why = match e {
                    MatrixError::Empty => format!(
                        "stage {:?} has a matrix without combinations (no values, or every one excluded); expected at least one",
                        st.id
                    ),
                    MatrixError::TooMany { count } => format!(
                        "stage {:?}'s matrix makes {count} combinations; at most {MAX_COMBINATIONS} are accepted",
                        st.id
                    ),
                };
                c.push(field.clone(), why, &["matrix"], None);
            }
        }
    }
    if total > MAX_STAGES {
        add_within(
            out,
            "stages".into(),
            format!("the matrices expand the workflow to {total} stages; at most {MAX_STAGES} are accepted"),
            None,
            &["stages"],
            None,
        );
    }
}

/// The problems of one stage's matrix.
struct Check<'a> {
    out: &'a mut Vec<Problem>,
    field: &'a str,
    stage: Option<(&'a str, usize)>,
    /// Whether a problem was found (the combinations are then not made).
    found: bool,
}

impl Check<'_> {
    fn push(
        &mut self,
        field: String,
        message: String,
        within: &[&str],
        locate: Option<(&str, &str)>,
    ) {
        self.found = true;
        add_within(self.out, field, message, self.stage, within, locate);
    }

    fn axes(&mut self, m: &Matrix) {
        for (k, values) in &m.axes {
            let field = format!("{}.{k}", self.field);
            if !is_valid_input_name(k) {
                self.push(
                    field.clone(),
                    format!(
                        "invalid matrix key {k:?}: expected 1 to 64 letters, digits, '_' or '-'"
                    ),
                    &["matrix", k],
                    None,
                );
            }
            if values.is_empty() {
                self.push(
                    field.clone(),
                    format!("matrix key {k:?} has no values; expected a list of at least one"),
                    &["matrix", k],
                    None,
                );
            }
            let mut seen: BTreeSet<String> = BTreeSet::new();
            for (j, v) in values.iter().enumerate() {
                let here = format!("{field}[{j}]");
                if self.value(here.clone(), k, v, &["matrix"]) && !seen.insert(input_env_value(v)) {
                    self.push(
                        here,
                        format!(
                            "value {:?} of matrix key {k:?} is listed twice; expected each value once",
                            input_env_value(v)
                        ),
                        &["matrix"],
                        Some((k, &input_env_value(v))),
                    );
                }
            }
        }
    }

    /// Checks one value: a scalar that can go into a stage id. True when it is.
    fn value(&mut self, field: String, key: &str, v: &Value, within: &[&str]) -> bool {
        let text = input_env_value(v);
        let why = if !is_scalar(v) {
            format!("value {text} of matrix key {key:?} is not a string, number or boolean")
        } else if !is_id_safe(&text) {
            let shown = match text.chars().find(|c| !is_id_safe(&c.to_string())) {
                Some(c) => format!("{c:?}"),
                None => "nothing".into(),
            };
            format!(
                "value {text:?} of matrix key {key:?} would put {shown} into a stage id; values may hold only {ID_VALUE_CHARS}"
            )
        } else {
            return true;
        };
        self.push(field, why, within, Some((key, &text)));
        false
    }

    /// Checks an include or exclude entry's keys and values. True when they
    /// are fine.
    fn entry(&mut self, list: &str, j: usize, e: &MatrixValues) -> bool {
        let field = format!("{}.{list}[{j}]", self.field);
        let within = ["matrix", list];
        if e.0.is_empty() {
            self.push(
                field,
                format!("{list}[{j}] is empty; expected keys with values, such as {{os: linux}}"),
                &within,
                None,
            );
            return false;
        }
        let mut ok = true;
        for (k, v) in &e.0 {
            let here = format!("{field}.{k}");
            if !is_valid_input_name(k) {
                ok = false;
                self.push(
                    here.clone(),
                    format!(
                        "invalid matrix key {k:?}: expected 1 to 64 letters, digits, '_' or '-'"
                    ),
                    &within,
                    None,
                );
            }
            ok &= self.value(here, k, v, &within);
        }
        ok
    }

    /// An exclude entry must name the matrix's keys and take something out.
    fn exclude(&mut self, m: &Matrix, j: usize, e: &MatrixValues) {
        let field = format!("{}.exclude[{j}]", self.field);
        let keys: Vec<&str> = m.axes.iter().map(|(k, _)| k.as_str()).collect();
        if let Some((k, _)) = e.0.iter().find(|(k, _)| !keys.contains(&k.as_str())) {
            self.push(
                format!("{field}.{k}"),
                format!(
                    "exclude[{j}] names {k:?}, which is not a key of the matrix; expected one of: {}",
                    if keys.is_empty() { "(none: the matrix lists no keys)".to_owned() } else { keys.join(", ") }
                ),
                &["matrix", "exclude"],
                None,
            );
        } else if !m.excludes_any(e) {
            let shown: Vec<String> = e.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
            self.push(
                field,
                format!(
                    "exclude[{j}] ({}) matches no combination of the matrix; expected values the matrix lists (a number and a string differ: 3.1 is not \"3.10\")",
                    shown.join(", ")
                ),
                &["matrix", "exclude"],
                None,
            );
        }
    }

    /// The ids the combinations make: distinct, and short enough.
    fn ids(&mut self, id: &str, combos: &[MatrixValues]) {
        let ids: Vec<String> = combos.iter().map(|c| instance_id(id, &c.0)).collect();
        let mut seen = BTreeSet::new();
        if let Some(dup) = ids.iter().find(|i| !seen.insert(i.as_str())) {
            self.push(
                self.field.to_owned(),
                format!(
                    "two combinations of stage {id:?} make the same stage id {dup:?} (values that differ only in type, such as 1 and \"1\"); expected distinct values"
                ),
                &["matrix"],
                None,
            );
        }
        if let Some(long) = ids
            .iter()
            .max_by_key(|i| i.len())
            .filter(|i| i.len() > MAX_ID)
        {
            self.push(
                self.field.to_owned(),
                format!(
                    "stage {id:?}'s matrix makes the id {long:?}, {} characters; stage ids are at most {MAX_ID}: shorten the stage id, the keys or the values",
                    long.len()
                ),
                &["matrix"],
                None,
            );
        }
    }
}

/// Whether `s` is a stage id: one a workflow writes (see [`is_valid_id`])
/// or one a matrix makes (`test[py=3.12,os=linux]`), at most 64 characters.
pub fn is_valid_stage_id(s: &str) -> bool {
    if is_valid_id(s) {
        return true;
    }
    let Some(inner) = s
        .split_once('[')
        .filter(|(of, _)| is_valid_id(of))
        .and_then(|(_, rest)| rest.strip_suffix(']'))
    else {
        return false;
    };
    s.len() <= MAX_ID
        && inner.split(',').all(|kv| {
            kv.split_once('=')
                .is_some_and(|(k, v)| is_valid_input_name(k) && is_id_safe(v))
        })
}
