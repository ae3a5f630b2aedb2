//! The built-in functions, the status functions and the dispatch to the
//! caller's host functions.

use serde_json::Value;

use super::eval::{equal, eval, json_text, kind, number, to_text};
use super::parse::Expr;
use super::{Context, ErrorKind, ExprError, MAX_RESULT};

/// The functions that read the [`Status`](super::Status) of a condition.
pub(super) const STATUS_FUNCTIONS: [&str; 4] = ["success", "failure", "always", "cancelled"];

/// Each built-in with its least and most arguments (`None`: any number).
const BUILTINS: &[(&str, usize, Option<usize>)] = &[
    ("contains", 2, Some(2)),
    ("startsWith", 2, Some(2)),
    ("endsWith", 2, Some(2)),
    ("format", 1, None),
    ("join", 1, Some(2)),
    ("toJSON", 1, Some(1)),
    ("fromJSON", 1, Some(1)),
    ("length", 1, Some(1)),
    ("success", 0, Some(0)),
    ("failure", 0, Some(0)),
    ("always", 0, Some(0)),
    ("cancelled", 0, Some(0)),
];

/// The names of the built-in functions; a host function of the same name is
/// never called.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(name, ..)| *name)
}

/// Refuses a call to a built-in with the wrong number of arguments when it
/// is parsed. Other names may be host functions, known only at evaluation.
pub(super) fn check_arity(name: &str, found: usize, column: usize) -> Result<(), ExprError> {
    let Some(&(_, min, max)) = BUILTINS.iter().find(|(n, ..)| *n == name) else {
        return Ok(());
    };
    if found >= min && max.is_none_or(|max| found <= max) {
        return Ok(());
    }
    let takes = match (min, max) {
        (0, Some(0)) => "no arguments".to_owned(),
        (1, Some(1)) => "1 argument".to_owned(),
        (min, Some(max)) if min == max => format!("{min} arguments"),
        (min, Some(max)) => format!("{min} or {max} arguments"),
        (1, None) => "at least 1 argument".to_owned(),
        (min, None) => format!("at least {min} arguments"),
    };
    Err(ExprError::new(
        ErrorKind::Arguments,
        column,
        format!("{name} takes {takes}, found {found}"),
    ))
}

/// Calls `name`: a built-in, else a host function of `ctx`.
pub(super) fn call(
    name: &str,
    args: &[Expr],
    column: usize,
    ctx: &Context<'_>,
) -> Result<Value, ExprError> {
    // Parsing checked this already; a tree built by hand may not have been.
    check_arity(name, args.len(), column)?;
    if STATUS_FUNCTIONS.contains(&name) {
        let Some(status) = ctx.status else {
            return Err(ExprError::new(
                ErrorKind::Unavailable,
                column,
                format!("{name}() is not available here: it needs the status of a stage's needs"),
            ));
        };
        return Ok(Value::Bool(match name {
            "success" => status.all_succeeded && !status.cancelled,
            "failure" => status.any_failed,
            "cancelled" => status.cancelled,
            _ => true,
        }));
    }
    let args = args
        .iter()
        .map(|a| eval(a, ctx))
        .collect::<Result<Vec<_>, _>>()?;
    let fail = |kind: ErrorKind, message: String| {
        ExprError::new(kind, column, format!("{name}: {message}"))
    };
    let result = match (name, args.as_slice()) {
        ("contains", [haystack, needle]) => Value::Bool(match (haystack, needle) {
            (Value::String(h), Value::String(n)) => h.contains(n.as_str()),
            (Value::String(_), other) => {
                return Err(fail(
                    ErrorKind::Type,
                    format!(
                        "searching a string needs a string to find, found {}",
                        kind(other)
                    ),
                ))
            }
            (Value::Array(items), n) => items.iter().any(|item| equal(item, n)),
            (other, _) => {
                return Err(fail(
                    ErrorKind::Type,
                    format!(
                        "expected a string or a list to search, found {}",
                        kind(other)
                    ),
                ))
            }
        }),
        ("startsWith" | "endsWith", [s, affix]) => {
            let (Value::String(s), Value::String(affix)) = (s, affix) else {
                let other = if s.is_string() { affix } else { s };
                return Err(fail(
                    ErrorKind::Type,
                    format!("expected two strings, found {}", kind(other)),
                ));
            };
            Value::Bool(if name == "startsWith" {
                s.starts_with(affix.as_str())
            } else {
                s.ends_with(affix.as_str())
            })
        }
        ("format", [Value::String(template), rest @ ..]) => {
            Value::String(format(template, rest, &fail)?)
        }
        ("format", [other, ..]) => {
            return Err(fail(
                ErrorKind::Type,
                format!("the format must be a string, found {}", kind(other)),
            ))
        }
        ("join", [list, rest @ ..]) => {
            let separator = match rest.first() {
                None => ",",
                Some(Value::String(s)) => s.as_str(),
                Some(other) => {
                    return Err(fail(
                        ErrorKind::Type,
                        format!("the separator must be a string, found {}", kind(other)),
                    ))
                }
            };
            match list {
                Value::String(s) => Value::String(s.clone()),
                Value::Array(items) => Value::String(join(items, separator, &fail)?),
                other => {
                    return Err(fail(
                        ErrorKind::Type,
                        format!("expected a list to join, found {}", kind(other)),
                    ))
                }
            }
        }
        ("toJSON", [v]) => Value::String(json_text(v)),
        ("fromJSON", [Value::String(s)]) => serde_json::from_str(s)
            .map_err(|e| fail(ErrorKind::Function, format!("not valid JSON: {e}")))?,
        ("fromJSON", [other]) => {
            return Err(fail(
                ErrorKind::Type,
                format!("expected a string of JSON, found {}", kind(other)),
            ))
        }
        ("length", [v]) => match v {
            Value::String(s) => number(s.chars().count() as f64),
            Value::Array(items) => number(items.len() as f64),
            Value::Object(map) => number(map.len() as f64),
            other => {
                return Err(fail(
                    ErrorKind::Type,
                    format!(
                        "expected a string, a list or an object, found {}",
                        kind(other)
                    ),
                ))
            }
        },
        _ => match ctx.functions.get(name) {
            Some(f) => f(&args).map_err(|m| fail(ErrorKind::Function, m))?,
            None => return Err(unknown_function(name, column, ctx)),
        },
    };
    check_size(&result).map_err(|m| fail(ErrorKind::Limit, m))?;
    Ok(result)
}

fn too_long() -> String {
    format!("the result is longer than the limit of {MAX_RESULT} bytes")
}

fn check_size(value: &Value) -> Result<(), String> {
    let len = match value {
        Value::String(s) => s.len(),
        Value::Array(_) | Value::Object(_) => json_text(value).len(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    };
    if len > MAX_RESULT {
        return Err(too_long());
    }
    Ok(())
}

fn join(
    items: &[Value],
    separator: &str,
    fail: &dyn Fn(ErrorKind, String) -> ExprError,
) -> Result<String, ExprError> {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        out.push_str(&to_text(item));
        if out.len() > MAX_RESULT {
            return Err(fail(ErrorKind::Limit, too_long()));
        }
    }
    Ok(out)
}

/// `format`: `{N}` is the N-th argument after the format as a template
/// shows it, `{{` and `}}` are braces.
fn format(
    template: &str,
    args: &[Value],
    fail: &dyn Fn(ErrorKind, String) -> ExprError,
) -> Result<String, ExprError> {
    let refuse = |message: String| Err(fail(ErrorKind::Function, message));
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() || chars.next() != Some('}') {
                    return refuse(format!(
                        "'{{{digits}' is not an argument such as '{{0}}'; write '{{{{' for a brace"
                    ));
                }
                // Too many digits to parse is past the arguments too.
                let index = digits.parse::<usize>().unwrap_or(usize::MAX);
                let Some(arg) = args.get(index) else {
                    let n = args.len();
                    let s = if n == 1 { "" } else { "s" };
                    return refuse(format!("'{{{digits}}}' but only {n} argument{s}"));
                };
                out.push_str(&to_text(arg));
            }
            '}' => return refuse("a lone '}' must be written '}}'".to_owned()),
            c => out.push(c),
        }
        if out.len() > MAX_RESULT {
            return Err(fail(ErrorKind::Limit, too_long()));
        }
    }
    Ok(out)
}

fn unknown_function(name: &str, column: usize, ctx: &Context<'_>) -> ExprError {
    let mut known: Vec<&str> = builtin_names().collect();
    let host = ctx.functions.keys().map(String::as_str);
    known.extend(host.filter(|h| !builtin_names().any(|b| b == *h)));
    let hint = known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(name))
        .map(|k| format!("; names are case-sensitive: did you mean '{k}'?"))
        .unwrap_or_default();
    ExprError::new(
        ErrorKind::UnknownFunction,
        column,
        format!(
            "unknown function '{name}'{hint} (known: {})",
            known.join(", ")
        ),
    )
}
