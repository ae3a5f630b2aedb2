//! Evaluation: values, truthiness, comparison and how a value reads as text.

use std::cmp::Ordering;

use serde_json::{Number, Value};

use super::parse::{CmpOp, Expr, ExprKind, Segment};
use super::{funcs, Context, ErrorKind, ExprError};

static NULL: Value = Value::Null;

/// Evaluates `expr` against `ctx`. `&&` and `||` evaluate their right side
/// only when the left does not decide, so an error there does not surface.
pub fn eval(expr: &Expr, ctx: &Context<'_>) -> Result<Value, ExprError> {
    match &expr.kind {
        ExprKind::Literal(v) => Ok(v.clone()),
        ExprKind::Name(name) => ctx.lookup(name, expr.column).cloned(),
        ExprKind::Access(base, segments) => access(base, segments, ctx),
        ExprKind::Not(inner) => Ok(Value::Bool(!truthy(&eval(inner, ctx)?))),
        ExprKind::Or(items) => short_circuit(items, ctx, true),
        ExprKind::And(items) => short_circuit(items, ctx, false),
        ExprKind::Compare(first, rest) => {
            let mut left = eval(first, ctx)?;
            for c in rest {
                let right = eval(&c.right, ctx)?;
                left = Value::Bool(compare(c.op, &left, &right, c.column)?);
            }
            Ok(left)
        }
        ExprKind::Call(name, args) => funcs::call(name, args, expr.column, ctx),
    }
}

/// The first operand whose truthiness is `stop_on`, else the last one.
fn short_circuit(items: &[Expr], ctx: &Context<'_>, stop_on: bool) -> Result<Value, ExprError> {
    let mut value = Value::Null;
    for item in items {
        value = eval(item, ctx)?;
        if truthy(&value) == stop_on {
            break;
        }
    }
    Ok(value)
}

/// Walks the keys and indexes by reference and clones only what they end
/// at, so `stages.build.result` does not copy every stage.
fn access(base: &Expr, segments: &[Segment], ctx: &Context<'_>) -> Result<Value, ExprError> {
    let owned;
    let mut current: &Value = match &base.kind {
        ExprKind::Name(name) => ctx.lookup(name, base.column)?,
        _ => {
            owned = eval(base, ctx)?;
            &owned
        }
    };
    for segment in segments {
        current = match segment {
            Segment::Key(key) => match current {
                Value::Object(map) => map.get(key).unwrap_or(&NULL),
                _ => &NULL,
            },
            Segment::Index(index) => {
                let index = eval(index, ctx)?;
                element(current, &index)
            }
        };
    }
    Ok(current.clone())
}

/// `value[index]`: an object's key or a list's position; anything else,
/// a missing key or a position past the end, is null.
fn element<'v>(value: &'v Value, index: &Value) -> &'v Value {
    match (value, index) {
        (Value::Object(map), Value::String(key)) => map.get(key).unwrap_or(&NULL),
        (Value::Array(items), Value::Number(n)) => {
            let i = as_f64(n);
            if i >= 0.0 && i.fract() == 0.0 && i < items.len() as f64 {
                // Whole, non-negative and below the length: the cast is exact.
                &items[i as usize]
            } else {
                &NULL
            }
        }
        _ => &NULL,
    }
}

/// Falsy: `false`, `null`, `0`, `-0` and `''`. Everything else is truthy,
/// empty lists and objects included (as in GitHub Actions).
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => as_f64(n) != 0.0,
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Equality of `==`: numbers numerically, strings exactly (case matters),
/// lists and objects element by element; values of different kinds are
/// unequal.
pub fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => as_f64(x) == as_f64(y),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => false,
    }
}

/// One comparison. Ordering is defined on two numbers or two strings (by
/// code point); any other pair is an error naming both kinds.
pub(super) fn compare(op: CmpOp, a: &Value, b: &Value, column: usize) -> Result<bool, ExprError> {
    let ordering = match op {
        CmpOp::Eq => return Ok(equal(a, b)),
        CmpOp::Ne => return Ok(!equal(a, b)),
        _ => match (a, b) {
            (Value::Number(x), Value::Number(y)) => as_f64(x).partial_cmp(&as_f64(y)),
            (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
            _ => {
                return Err(ExprError::new(
                    ErrorKind::Type,
                    column,
                    format!(
                        "cannot compare {} with {} using '{}'",
                        kind(a),
                        kind(b),
                        op.symbol()
                    ),
                ))
            }
        },
    };
    Ok(match ordering {
        None => false,
        Some(o) => match op {
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            _ => o != Ordering::Less,
        },
    })
}

/// The kind of a value with its article, for messages: "a string".
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `n` as a float. Without serde_json's arbitrary precision every number
/// has one; with it, an unreadable one is NaN, which equals nothing.
pub(super) fn as_f64(n: &Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

/// A number value, whole ones stored as integers so that they serialize
/// without `.0`. Only finite numbers reach here (the lexer refuses others);
/// a non-finite one would be null.
pub(super) fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        // Whole and within ±2^53: the cast is exact (and turns -0 into 0).
        Value::from(x as i64)
    } else {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// A number's shortest text: whole numbers without `.0`, very large or
/// small ones with an exponent (`1e20`, `1.5e-7`).
pub fn number_text(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e16 {
        // Whole and below 2^53: the cast is exact.
        format!("{}", x as i64)
    } else {
        // `Debug` is the shortest text that reads back as `x`, with an
        // exponent where plain digits would be long.
        format!("{x:?}")
    }
}

/// Compact JSON.
pub fn json_text(value: &Value) -> String {
    // Serializing a `Value` cannot fail: its keys are strings.
    serde_json::to_string(value).unwrap_or_default()
}

/// How a value reads inside a template: a string as it is, a number in its
/// shortest form, `true`/`false`, null as nothing, a list or an object as
/// compact JSON.
pub fn to_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(u)) => u.to_string(),
            (None, None) => number_text(as_f64(n)),
        },
        Value::String(s) => s.clone(),
        Value::Array(_) | Value::Object(_) => json_text(value),
    }
}
