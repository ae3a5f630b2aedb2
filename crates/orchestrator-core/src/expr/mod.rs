//! The expression language of workflows: conditions (`if:`) and the
//! substitutions in text (`${{ inputs.name }}`). The user's reference is
//! `docs/expressions.md`; this is the summary.
//!
//! What it is: a parser ([`parse`], [`Template::parse`]) and an evaluator
//! ([`eval`], [`render`], [`condition`]) over [`serde_json::Value`]s, with
//! the names an expression may read supplied by the caller in a
//! [`Context`]. What it is not: it reads no file and no clock; functions
//! that need the outside world (`hashFiles`) are host functions the caller
//! adds to the context.
//!
//! Main types: [`Expr`], [`Template`], [`Context`], [`Status`],
//! [`ExprError`].
//!
//! # Syntax
//!
//! - Templates: text with `${{ EXPR }}` parts; `$${{` is a literal `${{`.
//!   A value renders as text thus: a string as it is, a number in its
//!   shortest form (`3`, `0.5`, `1e20`), `true`/`false`, null as nothing, a
//!   list or an object as compact JSON.
//! - Conditions: a bare expression, or one wrapped whole in `${{ }}`; the
//!   result counts by truthiness.
//! - Literals: `null`, `true`, `false`, numbers (`42`, `-1.5`, `2e3`) and
//!   single-quoted strings (`'it''s'`: a quote is doubled).
//! - Names: the context's top-level names (`inputs`, `matrix`, ...), then
//!   `.key` or `['key']` or `[0]`. A key after `.` is letters, digits, `_`
//!   and `-`. A missing key, or an index into something that has none, is
//!   null; an unknown top-level name is an error that lists the known ones.
//! - Operators, loosest first: `||`; `&&`; `==` `!=`; `<` `<=` `>` `>=`;
//!   `!`; then `.key` and `[i]`. Parentheses group. `&&` and `||`
//!   short-circuit and give an operand (`a || 'default'`), as in JavaScript.
//! - Truthiness: `false`, `null`, `0`, `-0` and `''` are falsy; everything
//!   else is truthy, empty lists and objects included.
//! - Comparison is strict: `==` compares numbers numerically, strings
//!   exactly (case matters, unlike GitHub Actions) and lists and objects
//!   element by element; values of different kinds are unequal (but
//!   `null == null`). `<`, `<=`, `>`, `>=` take two numbers or two strings
//!   (compared by code point); anything else is an error. No string is ever
//!   read as a number.
//! - Functions: `contains`, `startsWith`, `endsWith`, `format`, `join`,
//!   `toJSON`, `fromJSON`, `length`, and the status functions `success()`,
//!   `failure()`, `always()`, `cancelled()` where the context has a
//!   [`Status`]. A host function is any other name the context carries.
//!
//! Limits, against hostile workflow files: [`MAX_EXPR_LEN`],
//! [`MAX_DEPTH`], [`MAX_RENDERED`], [`MAX_RESULT`]. No input makes the
//! parser or the evaluator panic or recurse without bound.

use std::collections::BTreeMap;

use serde_json::Value;

mod eval;
mod funcs;
mod lex;
mod parse;
mod template;

#[cfg(test)]
mod tests;

pub use eval::{equal, eval, json_text, kind, number_text, to_text, truthy};
pub use funcs::builtin_names;
pub use parse::{
    parse, quote, uses_status_function, CmpOp, Comparison, Expr, ExprKind, Reference, Segment,
};
pub use template::{Part, Template};

/// Longest expression text, in bytes.
pub const MAX_EXPR_LEN: usize = 4 * 1024;
/// Deepest nesting of parentheses, calls, indexes and `!` in an expression.
pub const MAX_DEPTH: usize = 32;
/// Longest template text and longest rendered template, in bytes.
pub const MAX_RENDERED: usize = 64 * 1024;
/// Longest result of one function call (a string, or a list or object as
/// JSON), in bytes.
pub const MAX_RESULT: usize = 64 * 1024;

/// What went wrong, where, and a message that names what was found and what
/// was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ExprError {
    pub kind: ErrorKind,
    /// 1-based, in characters of the expression or template text.
    pub column: usize,
    pub message: String,
}

impl ExprError {
    pub(crate) fn new(kind: ErrorKind, column: usize, message: String) -> Self {
        ExprError {
            kind,
            column,
            message,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The text is not an expression or template.
    Syntax,
    /// A built-in called with the wrong number of arguments.
    Arguments,
    /// A top-level name the context does not have.
    UnknownName,
    /// A function that is neither built in nor in the context.
    UnknownFunction,
    /// An operand or argument of a kind the operation does not take.
    Type,
    /// A function refused its arguments (`fromJSON` of bad JSON, `format`
    /// past its arguments, a host function's own error).
    Function,
    /// A status function where the context has no [`Status`].
    Unavailable,
    /// One of the limits: text length, nesting, result or rendered size.
    Limit,
}

/// What the status functions of a condition read: how the stages it
/// depends on ended, and whether the run is being cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Every needed stage succeeded (true when there are none).
    pub all_succeeded: bool,
    /// A needed stage failed or was blocked.
    pub any_failed: bool,
    /// The run is being cancelled.
    pub cancelled: bool,
}

/// A function the caller supplies: it takes the evaluated arguments and
/// gives a value, or a message that the error reports after its name.
pub type HostFn<'a> = dyn Fn(&[Value]) -> Result<Value, String> + 'a;

/// The names an expression may read, the [`Status`] for `success()` and
/// its kin, and the host functions. Which names exist is up to where the
/// expression is used.
#[derive(Default)]
pub struct Context<'a> {
    names: BTreeMap<String, Value>,
    status: Option<Status>,
    functions: BTreeMap<String, Box<HostFn<'a>>>,
}

impl<'a> Context<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the top-level name `name`.
    pub fn with(mut self, name: impl Into<String>, value: Value) -> Self {
        self.insert(name, value);
        self
    }

    pub fn insert(&mut self, name: impl Into<String>, value: Value) {
        self.names.insert(name.into(), value);
    }

    pub fn with_status(mut self, status: Status) -> Self {
        self.status = Some(status);
        self
    }

    /// Adds a host function. A built-in of the same name takes precedence.
    pub fn with_function(
        mut self,
        name: impl Into<String>,
        f: impl Fn(&[Value]) -> Result<Value, String> + 'a,
    ) -> Self {
        self.functions.insert(name.into(), Box::new(f));
        self
    }

    /// Takes the top-level name `name` out.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        self.names.remove(name)
    }

    /// The value of the top-level name `name`, when the context has it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.names.get(name)
    }

    /// The top-level names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    fn lookup(&self, name: &str, column: usize) -> Result<&Value, ExprError> {
        self.names.get(name).ok_or_else(|| {
            let known = if self.names.is_empty() {
                "no names are available here".to_owned()
            } else {
                format!("known: {}", self.names().collect::<Vec<_>>().join(", "))
            };
            ExprError::new(
                ErrorKind::UnknownName,
                column,
                format!("unknown name '{name}' ({known})"),
            )
        })
    }
}

/// Parses and renders a template; see [`Template::render`].
pub fn render(template: &str, ctx: &Context<'_>) -> Result<String, ExprError> {
    Template::parse(template)?.render(ctx)
}

/// Parses a condition: a bare expression, or one wrapped whole in
/// `${{ }}` (whitespace around it allowed). Text mixed with `${{ }}`
/// (`${{ a }} == ${{ b }}`) is refused: as a template it would be a
/// non-empty string, always true.
pub fn parse_condition(text: &str) -> Result<Expr, ExprError> {
    if !text.trim_start().starts_with("${{") {
        return parse(text);
    }
    let template = Template::parse(text)?;
    let mut exprs = template.exprs();
    let only_space = template.parts().iter().all(|p| match p {
        Part::Literal(s) => s.trim().is_empty(),
        Part::Expr(_) => true,
    });
    match (exprs.next(), exprs.next()) {
        (Some(e), None) if only_space => Ok(e.clone()),
        _ => Err(ExprError::new(
            ErrorKind::Syntax,
            1,
            "a condition is one expression, bare or wrapped whole in '${{ }}'; \
             this one mixes text and '${{ }}' (write `a == b`, not `${{ a }} == ${{ b }}`)"
                .to_owned(),
        )),
    }
}

/// Parses and evaluates a condition; its value counts by truthiness.
pub fn condition(text: &str, ctx: &Context<'_>) -> Result<bool, ExprError> {
    Ok(truthy(&eval(&parse_condition(text)?, ctx)?))
}
