//! Checking a file's text: every problem at once, each with its line and
//! column and the closest key for a misspelt one; or every setting, with the
//! text its environment variable would hold, checked by its flag's own parser.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use super::{keys, Key, Kind};

/// One thing wrong with a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    /// `FILE:LINE:COLUMN: message`.
    pub fn render(&self, file: &Path) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}: {}", file.display(), self.message),
            _ => format!("{}: {}", file.display(), self.message),
        }
    }
}

/// A setting of a file: its key and the text its variable would hold.
#[derive(Debug, Clone)]
pub struct Setting {
    pub key: Key,
    pub value: String,
}

/// 1-based line and column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Checks a file's text as `kind`'s configuration: every problem, or every
/// setting (in the file's order) with the text of its variable.
pub fn check(text: &str, kind: Kind) -> Result<Vec<Setting>, Vec<Problem>> {
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = e.span().map(|s| position(text, s.start)).unzip();
            return Err(vec![Problem {
                line,
                column,
                key: None,
                message: format!("not TOML: {}", e.message().trim_end()),
            }]);
        }
    };
    // Where each key is, for the messages.
    let spans: BTreeMap<String, usize> = toml::de::DeTable::parse(text)
        .map(|t| {
            t.get_ref()
                .iter()
                .map(|(k, _)| (k.get_ref().to_string(), k.span().start))
                .collect()
        })
        .unwrap_or_default();
    let known = keys(kind);
    let mut settings = Vec::new();
    let mut problems = Vec::new();
    for (name, value) in &table {
        let at = spans.get(name).map(|&s| position(text, s));
        let problem = |message: String| Problem {
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
            key: Some(name.clone()),
            message,
        };
        let Some(key) = known.iter().find(|k| &k.name == name) else {
            problems.push(problem(format!(
                "unknown key `{name}`{}",
                suggestion(name, kind, &known)
            )));
            continue;
        };
        match value_text(key, value).and_then(|v| validate(key, &v).map(|()| v)) {
            Ok(v) => settings.push((
                at,
                Setting {
                    key: key.clone(),
                    value: v,
                },
            )),
            Err(e) => problems.push(problem(format!("{name}: {e}"))),
        }
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(problems);
    }
    settings.sort_by_key(|(at, _)| *at);
    Ok(settings.into_iter().map(|(_, s)| s).collect())
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// Why a file's value is refused for its key; the caller names the key.
#[derive(Debug, thiserror::Error)]
enum ValueError {
    /// A switch given something else than a boolean (of this type).
    #[error("expected true or false, found {0}")]
    NotABool(&'static str),
    #[error("expected a value, found a table: settings are keys at the top level, not sections")]
    Table,
    /// A list holding a value of this type.
    #[error("expected an array of strings, found {0} in it")]
    BadElement(&'static str),
    #[error("{element:?}: an element cannot hold {delimiter:?}, which separates them")]
    HoldsDelimiter { element: String, delimiter: char },
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    /// The flag's own parser refuses the text: its message's first line.
    #[error("{}", first_line(.0))]
    Refused(#[source] clap::Error),
}

/// The first line of clap's message, without its `error: `.
fn first_line(e: &clap::Error) -> String {
    let rendered = e.to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// The text of a value, as its environment variable would hold it: lists
/// joined by their delimiter.
fn value_text(key: &Key, v: &toml::Value) -> Result<String, ValueError> {
    use toml::Value as V;
    fn scalar(v: &toml::Value) -> Result<String, &toml::Value> {
        match v {
            V::String(s) => Ok(s.clone()),
            V::Integer(i) => Ok(i.to_string()),
            // Debug keeps the point (`2.0`, not `2`), so a whole float
            // given where an integer is expected is refused by its parser.
            V::Float(f) => Ok(format!("{f:?}")),
            other => Err(other),
        }
    }
    if key.is_switch() {
        return match v {
            V::Boolean(b) => Ok(b.to_string()),
            other => Err(ValueError::NotABool(type_name(other))),
        };
    }
    match (v, key.arg.get_value_delimiter()) {
        (V::Table(_), _) => Err(ValueError::Table),
        (V::Array(items), Some(delim)) => {
            let mut parts = Vec::new();
            for item in items {
                let s = scalar(item).map_err(|other| ValueError::BadElement(type_name(other)))?;
                if s.contains(delim) {
                    return Err(ValueError::HoldsDelimiter {
                        element: s,
                        delimiter: delim,
                    });
                }
                parts.push(s);
            }
            Ok(parts.join(&delim.to_string()))
        }
        (v, delim) => scalar(v).map_err(|other| {
            let expected = if delim.is_some() {
                "an array of strings"
            } else {
                "a string or a number"
            };
            ValueError::WrongType {
                expected,
                found: type_name(other),
            }
        }),
    }
}

/// Runs the flag's own parser on the value.
fn validate(key: &Key, text: &str) -> Result<(), ValueError> {
    // An empty value leaves the default (its variable is not set).
    if key.is_switch() || text.is_empty() {
        return Ok(());
    }
    let cmd = clap::Command::new("orch").arg(key.arg.clone());
    let flag = OsString::from(format!("--{}={text}", key.long()));
    cmd.try_get_matches_from([OsString::from("orch"), flag])
        .map(drop)
        .map_err(ValueError::Refused)
}

/// `; did you mean ...?`, or where the key belongs, or nothing.
fn suggestion(name: &str, kind: Kind, known: &[Key]) -> String {
    let norm = name.trim().to_ascii_lowercase().replace('-', "_");
    let norm = norm.strip_prefix("orch_").unwrap_or(&norm).to_owned();
    // The flag's name or the variable's, in place of the key.
    let alias = known.iter().find(|k| {
        k.name == norm
            || k.long().replace('-', "_") == norm
            || k.env.to_ascii_lowercase() == format!("orch_{norm}")
    });
    if let Some(k) = alias {
        return format!("; did you mean `{}`?", k.name);
    }
    for other in [Kind::Daemon, Kind::Agent] {
        if other != kind && keys(other).iter().any(|k| k.name == norm) {
            let article = if other == Kind::Agent { "an" } else { "a" };
            return format!(": it is {article} {other} setting, which `orch {kind}` does not take");
        }
    }
    let best = known
        .iter()
        .map(|k| (distance(&norm, &k.name), k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= 2 || d * 3 <= k.name.len() => {
            format!("; did you mean `{}`?", k.name)
        }
        _ => format!(" (`orch config defaults --for {kind}` lists the keys)"),
    }
}

/// Levenshtein distance.
pub(super) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
