//! Binding the values a run is given to a workflow's declared inputs: text
//! from the command line (`-p NAME=VALUE`, coerced to the input's type) or
//! JSON (the API, `--params-file`: exact types). Every problem is reported,
//! each naming the input, what was expected and what was given.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::inputs::{
    input_env_value, InputType, WorkflowInput, MAX_INPUTS_BYTES, MAX_INPUT_VALUE_BYTES,
};
use super::Workflow;

/// A value as a submitter gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum GivenValue {
    /// Text from the command line (`-p NAME=VALUE`), read as the input's type.
    Text(String),
    /// JSON (the API, `--params-file`): its type must be the input's.
    Json(Value),
}

/// The values a run is given, by input name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Given {
    values: BTreeMap<String, GivenValue>,
}

impl Given {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `name` the command-line text `value` (over an earlier value).
    pub fn text(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.values
            .insert(name.into(), GivenValue::Text(value.into()));
        self
    }

    /// Gives `name` the JSON `value` (over an earlier value). JSON null
    /// counts as not given.
    pub fn json(&mut self, name: impl Into<String>, value: Value) -> &mut Self {
        self.values.insert(name.into(), GivenValue::Json(value));
        self
    }

    /// Reads `-p` arguments, each `NAME=VALUE` (the value may hold `=`); a
    /// name given twice, or an argument without `=`, is refused.
    pub fn from_cli<S: AsRef<str>>(
        args: impl IntoIterator<Item = S>,
    ) -> Result<Given, InputErrors> {
        let mut given = Given::new();
        let mut errors = Vec::new();
        for arg in args {
            let arg = arg.as_ref();
            match arg.split_once('=') {
                Some((name, _)) if given.values.contains_key(name) => {
                    errors.push(InputError::GivenTwice { name: name.into() });
                }
                Some((name, value)) if !name.is_empty() => {
                    given.text(name, value);
                }
                _ => errors.push(InputError::NotAssignment { arg: arg.into() }),
            }
        }
        if errors.is_empty() {
            Ok(given)
        } else {
            Err(InputErrors(errors))
        }
    }

    /// Reads a JSON object of input names to values (`--params-file`, the API).
    pub fn from_json(v: Value) -> Result<Given, InputErrors> {
        match v {
            Value::Object(map) => {
                let mut given = Given::new();
                for (k, v) in map {
                    given.json(k, v);
                }
                Ok(given)
            }
            other => Err(InputErrors(vec![InputError::NotAnObject {
                got: shown_json(&other),
            }])),
        }
    }

    /// Adds `other`'s values, which win over these (`-p` over a params file).
    pub fn merge(&mut self, other: Given) {
        self.values.extend(other.values);
    }

    /// The values, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &GivenValue)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// One problem with the values given to a workflow's inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A value that is not of the input's type (or not one of its choices).
    #[error("input '{name}': expected {expected}, got {got}")]
    Mismatch {
        name: String,
        expected: String,
        /// The value as given: `'abc'` for text, JSON and its kind for JSON.
        got: String,
    },
    /// A value for an input the workflow does not declare.
    #[error("unknown input '{name}' ({}){}", declared_list(.declared), suggestion_text(.suggestion))]
    Unknown {
        name: String,
        declared: Vec<String>,
        /// A declared name close to it, when one is.
        suggestion: Option<String>,
    },
    /// A required input without a value.
    #[error("missing required input '{name}' (type {kind}): give it with -p {name}=...")]
    Missing { name: String, kind: InputType },
    /// One value over [`MAX_INPUT_VALUE_BYTES`].
    #[error("input '{name}' is {size} bytes; at most {max} are accepted", max = MAX_INPUT_VALUE_BYTES)]
    TooLarge { name: String, size: usize },
    /// All values together over [`MAX_INPUTS_BYTES`].
    #[error("the inputs are {size} bytes in all; at most {max} are accepted", max = MAX_INPUTS_BYTES)]
    TotalTooLarge { size: usize },
    /// A `-p` argument without `NAME=`.
    #[error("-p {arg:?}: expected NAME=VALUE")]
    NotAssignment { arg: String },
    /// A `-p` name given twice.
    #[error("input '{name}' is given twice with -p")]
    GivenTwice { name: String },
    /// A params file or request whose inputs are not a JSON object.
    #[error("the inputs must be a JSON object of input names to values, got {got}")]
    NotAnObject { got: String },
}

fn declared_list(declared: &[String]) -> String {
    if declared.is_empty() {
        "this workflow declares no inputs".into()
    } else {
        format!("declared: {}", declared.join(", "))
    }
}

fn suggestion_text(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!("; did you mean '{s}'?"))
        .unwrap_or_default()
}

/// Every problem with a run's inputs, one a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InputErrors(pub Vec<InputError>);

impl fmt::Display for InputErrors {
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

/// The value of every input `wf` declares, from `given`, else its default,
/// else null for an input that is not required. Reports every problem.
pub fn bind_inputs(wf: &Workflow, given: &Given) -> Result<BTreeMap<String, Value>, InputErrors> {
    let mut errors = Vec::new();
    for (name, _) in given.iter() {
        if !wf.inputs.contains_key(name) {
            errors.push(InputError::Unknown {
                name: name.into(),
                declared: wf.inputs.keys().cloned().collect(),
                suggestion: suggest(name, wf.inputs.keys()),
            });
        }
    }
    let mut bound = BTreeMap::new();
    let mut total = 0usize;
    for (name, decl) in &wf.inputs {
        let value = match given.values.get(name) {
            Some(GivenValue::Json(Value::Null)) | None => match &decl.default {
                Some(d) => Ok(d.clone()),
                None if decl.is_required() => Err(InputError::Missing {
                    name: name.clone(),
                    kind: decl.kind,
                }),
                None => Ok(Value::Null),
            },
            Some(GivenValue::Text(t)) if t.len() > MAX_INPUT_VALUE_BYTES => {
                Err(InputError::TooLarge {
                    name: name.clone(),
                    size: t.len(),
                })
            }
            Some(GivenValue::Text(t)) => {
                from_text(decl, t).ok_or_else(|| mismatch(name, decl, shown_text(t)))
            }
            Some(GivenValue::Json(v)) => {
                let size = v.to_string().len();
                if size > MAX_INPUT_VALUE_BYTES {
                    Err(InputError::TooLarge {
                        name: name.clone(),
                        size,
                    })
                } else if decl.accepts(v) {
                    Ok(v.clone())
                } else {
                    Err(mismatch(name, decl, shown_json(v)))
                }
            }
        };
        match value {
            Ok(v) => {
                total += v.to_string().len();
                bound.insert(name.clone(), v);
            }
            Err(e) => errors.push(e),
        }
    }
    if total > MAX_INPUTS_BYTES {
        errors.push(InputError::TotalTooLarge { size: total });
    }
    if errors.is_empty() {
        Ok(bound)
    } else {
        Err(InputErrors(errors))
    }
}

fn mismatch(name: &str, decl: &WorkflowInput, got: String) -> InputError {
    let expected = match decl.kind {
        InputType::List => {
            "a list of strings (a JSON array of strings, or items separated by commas)".into()
        }
        _ => decl.expected(),
    };
    InputError::Mismatch {
        name: name.into(),
        expected,
        got,
    }
}

/// Command-line text read as `decl`'s type; None when it is not one.
fn from_text(decl: &WorkflowInput, t: &str) -> Option<Value> {
    match decl.kind {
        InputType::String => Some(Value::String(t.into())),
        InputType::Number => number(t),
        InputType::Boolean => match t {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        InputType::Choice => decl
            .choices
            .iter()
            .find(|c| input_env_value(c) == t)
            .cloned(),
        InputType::List => {
            if t.trim_start().starts_with('[') {
                let items: Vec<String> = serde_json::from_str(t).ok()?;
                Some(Value::from(items))
            } else if t.trim().is_empty() {
                Some(Value::Array(Vec::new()))
            } else {
                Some(Value::from(
                    t.split(',')
                        .map(|s| s.trim().to_owned())
                        .collect::<Vec<_>>(),
                ))
            }
        }
    }
}

/// An integer, else a finite decimal, as JSON.
fn number(t: &str) -> Option<Value> {
    let t = t.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Some(Value::from(i));
    }
    if let Ok(u) = t.parse::<u64>() {
        return Some(Value::from(u));
    }
    // Rust also reads `inf`, `NaN` and `infinity`, which JSON cannot hold;
    // only digits, a sign, a point and an exponent make a number here.
    if !t
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'))
    {
        return None;
    }
    let f = t.parse::<f64>().ok().filter(|f| f.is_finite())?;
    serde_json::Number::from_f64(f).map(Value::Number)
}

/// Longest given value an error shows, in characters.
const SHOWN: usize = 80;

fn shorten(s: &str) -> String {
    if s.chars().count() <= SHOWN {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(SHOWN).collect();
        out.push('…');
        out
    }
}

fn shown_text(t: &str) -> String {
    format!("'{}'", shorten(t))
}

fn shown_json(v: &Value) -> String {
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    };
    format!("{} ({kind})", shorten(&v.to_string()))
}

/// The declared name closest to `name`, when it is close enough to be a typo.
fn suggest<'a>(name: &str, declared: impl Iterator<Item = &'a String>) -> Option<String> {
    let limit = (name.chars().count() / 3).clamp(1, 2);
    declared
        .map(|d| (edit_distance(name, d), d))
        .filter(|(dist, _)| *dist <= limit)
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, d)| d.clone())
}

/// Edits (insert, delete, replace, swap two neighbours) from `a` to `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_a_swap_as_one_edit() {
        assert_eq!(edit_distance("verison", "version"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("count", "count"), 0);
        assert_eq!(edit_distance("fast", "files"), 4);
    }

    #[test]
    fn numbers_read_integers_and_finite_decimals_only() {
        assert_eq!(number("3"), Some(Value::from(3)));
        assert_eq!(number(" -3 "), Some(Value::from(-3)));
        assert_eq!(number("2.5"), Some(Value::from(2.5)));
        assert_eq!(number("1e3"), Some(Value::from(1000.0)));
        assert_eq!(number(&u64::MAX.to_string()), Some(Value::from(u64::MAX)));
        for bad in [
            "", "abc", "inf", "NaN", "infinity", "1e999", "0x10", "1_000", "3 4",
        ] {
            assert_eq!(number(bad), None, "{bad}");
        }
    }
}
