//! Templates: text with `${{ EXPR }}` parts.

use super::eval::{eval, to_text};
use super::parse::{parse_at, Expr, Reference};
use super::{Context, ErrorKind, ExprError, MAX_RENDERED};

/// A parsed template: literal text and expressions, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

/// One piece of a [`Template`].
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Text taken as it is (a `$${{` in the source already made `${{`).
    Literal(String),
    /// A `${{ ... }}`; its columns count from the start of the template.
    Expr(Expr),
}

impl Template {
    /// Parses `text`. `$${{` stands for a literal `${{`; a `}}` inside a
    /// string literal does not close the expression.
    pub fn parse(text: &str) -> Result<Self, ExprError> {
        if text.len() > MAX_RENDERED {
            return Err(ExprError::new(
                ErrorKind::Limit,
                1,
                format!(
                    "template of {} bytes is longer than the limit of {MAX_RENDERED}",
                    text.len()
                ),
            ));
        }
        let chars: Vec<char> = text.chars().collect();
        let at = |i: usize, s: &str| {
            s.chars()
                .enumerate()
                .all(|(k, c)| chars.get(i + k) == Some(&c))
        };
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while i < chars.len() {
            if at(i, "$${{") {
                literal.push_str("${{");
                i += 4;
            } else if at(i, "${{") {
                let start = i + 3;
                let end = closing(&chars, start).map_err(|in_string| {
                    let why = if in_string {
                        "a string in it is not closed"
                    } else {
                        "expected '}}' after the expression"
                    };
                    ExprError::new(
                        ErrorKind::Syntax,
                        i + 1,
                        format!("'${{{{' at column {} is not closed: {why}", i + 1),
                    )
                })?;
                let source: String = chars[start..end].iter().collect();
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Expr(parse_at(&source, start)?));
                i = end + 2;
            } else {
                literal.push(chars[i]);
                i += 1;
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Whether the template has no expression: it renders as its text.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The context paths its expressions read; see [`Expr::references`].
    pub fn references(&self) -> Vec<Reference> {
        self.exprs().flat_map(Expr::references).collect()
    }

    /// The expressions, in order.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            Part::Literal(_) => None,
        })
    }

    /// The text with each expression replaced by its value as text (see
    /// [`to_text`](super::to_text)).
    pub fn render(&self, ctx: &Context<'_>) -> Result<String, ExprError> {
        let mut out = String::new();
        for part in &self.parts {
            let column = match part {
                Part::Literal(text) => {
                    out.push_str(text);
                    1
                }
                Part::Expr(e) => {
                    out.push_str(&to_text(&eval(e, ctx)?));
                    e.column
                }
            };
            if out.len() > MAX_RENDERED {
                return Err(ExprError::new(
                    ErrorKind::Limit,
                    column,
                    format!("the rendered text is longer than the limit of {MAX_RENDERED} bytes"),
                ));
            }
        }
        Ok(out)
    }
}

/// The index of the `}}` that closes an expression starting at `start`,
/// skipping string literals (`''` inside one toggles twice, so it needs no
/// case of its own). `Err(true)`: the text ends inside a string.
fn closing(chars: &[char], start: usize) -> Result<usize, bool> {
    let mut in_string = false;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '\'' => in_string = !in_string,
            '}' if !in_string && chars.get(i + 1) == Some(&'}') => return Ok(i),
            _ => {}
        }
        i += 1;
    }
    Err(in_string)
}
