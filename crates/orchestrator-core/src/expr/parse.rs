//! The syntax tree and the parser: recursive descent with one function per
//! precedence level, its recursion bounded by [`MAX_DEPTH`].

use std::fmt;

use serde_json::Value;

use super::eval::{number, number_text};
use super::funcs;
use super::lex::{lex, Tok, Token};
use super::{ErrorKind, ExprError, MAX_DEPTH, MAX_EXPR_LEN};

/// A parsed expression: what it is and the column (1-based, in characters of
/// the text it was parsed from) where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub column: usize,
}

/// The forms of an expression. Chains of one operator are kept flat, so
/// that neither the parser, the evaluator nor `Drop` recurse once per
/// operator of a long chain.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// `null`, `true`, `false`, a number or a string.
    Literal(Value),
    /// A top-level context name: `inputs`, `matrix`, `item`.
    Name(String),
    /// Keys and indexes after a value: `stages.build.outputs['version']`.
    Access(Box<Expr>, Vec<Segment>),
    /// `!x`.
    Not(Box<Expr>),
    /// `a || b || c`: the first truthy operand, else the last.
    Or(Vec<Expr>),
    /// `a && b && c`: the first falsy operand, else the last.
    And(Vec<Expr>),
    /// `a == b != c`, applied left to right: `(a == b) != c`. All
    /// comparisons of one node share a precedence level.
    Compare(Box<Expr>, Vec<Comparison>),
    /// `name(args...)`: a built-in or a host function.
    Call(String, Vec<Expr>),
}

/// One step of an [`ExprKind::Access`].
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// `.key`
    Key(String),
    /// `[expr]`
    Index(Expr),
}

/// The operator and right operand of one comparison in a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub op: CmpOp,
    /// Where the operator is.
    pub column: usize,
    pub right: Expr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A context path an expression reads: its statically known prefix
/// (`["stages", "build", "outputs", "version"]`) and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub path: Vec<String>,
    pub column: usize,
}

/// Parses one expression; columns count from the start of `text`.
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    parse_at(text, 0)
}

/// Parses an expression that sits `base` characters into the text columns
/// are reported against (a template).
pub(super) fn parse_at(text: &str, base: usize) -> Result<Expr, ExprError> {
    if text.len() > MAX_EXPR_LEN {
        return Err(ExprError::new(
            ErrorKind::Limit,
            base + 1,
            format!(
                "expression of {} bytes is longer than the limit of {MAX_EXPR_LEN}",
                text.len()
            ),
        ));
    }
    let mut p = Parser {
        toks: lex(text, base)?,
        pos: 0,
    };
    let expr = p.or(0)?;
    let end = p.next();
    if end.tok != Tok::End {
        let message = if end.tok == Tok::LParen {
            "only a function name can be called, found '(' after a value".to_owned()
        } else {
            format!(
                "expected an operator or the end of the expression, found {}",
                end.tok
            )
        };
        return Err(ExprError::new(ErrorKind::Syntax, end.column, message));
    }
    Ok(expr)
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

fn syntax(column: usize, message: String) -> ExprError {
    ExprError::new(ErrorKind::Syntax, column, message)
}

/// One level deeper than `level`, unless that passes [`MAX_DEPTH`].
fn deeper(level: usize, column: usize) -> Result<usize, ExprError> {
    if level >= MAX_DEPTH {
        return Err(ExprError::new(
            ErrorKind::Limit,
            column,
            format!(
                "nested deeper than the limit of {MAX_DEPTH} (parentheses, calls, indexes and '!')"
            ),
        ));
    }
    Ok(level + 1)
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos.min(self.toks.len() - 1)].tok
    }

    /// The next token; past the end, [`Tok::End`] again (`lex` always ends
    /// with it, so the vector is never empty).
    fn next(&mut self) -> Token {
        let t = self.toks[self.pos.min(self.toks.len() - 1)].clone();
        self.pos += 1;
        t
    }

    fn or(&mut self, level: usize) -> Result<Expr, ExprError> {
        let first = self.and(level)?;
        if *self.peek() != Tok::Or {
            return Ok(first);
        }
        let column = first.column;
        let mut items = vec![first];
        while *self.peek() == Tok::Or {
            self.next();
            items.push(self.and(level)?);
        }
        Ok(Expr {
            kind: ExprKind::Or(items),
            column,
        })
    }

    fn and(&mut self, level: usize) -> Result<Expr, ExprError> {
        let first = self.equality(level)?;
        if *self.peek() != Tok::And {
            return Ok(first);
        }
        let column = first.column;
        let mut items = vec![first];
        while *self.peek() == Tok::And {
            self.next();
            items.push(self.equality(level)?);
        }
        Ok(Expr {
            kind: ExprKind::And(items),
            column,
        })
    }

    fn equality(&mut self, level: usize) -> Result<Expr, ExprError> {
        self.chain(level, Self::relation, |t| match t {
            Tok::Eq => Some(CmpOp::Eq),
            Tok::Ne => Some(CmpOp::Ne),
            _ => None,
        })
    }

    fn relation(&mut self, level: usize) -> Result<Expr, ExprError> {
        self.chain(level, Self::unary, |t| match t {
            Tok::Lt => Some(CmpOp::Lt),
            Tok::Le => Some(CmpOp::Le),
            Tok::Gt => Some(CmpOp::Gt),
            Tok::Ge => Some(CmpOp::Ge),
            _ => None,
        })
    }

    fn chain(
        &mut self,
        level: usize,
        operand: fn(&mut Self, usize) -> Result<Expr, ExprError>,
        op_of: fn(&Tok) -> Option<CmpOp>,
    ) -> Result<Expr, ExprError> {
        let first = operand(self, level)?;
        let mut rest = Vec::new();
        while let Some(op) = op_of(self.peek()) {
            let column = self.next().column;
            rest.push(Comparison {
                op,
                column,
                right: operand(self, level)?,
            });
        }
        if rest.is_empty() {
            return Ok(first);
        }
        let column = first.column;
        Ok(Expr {
            kind: ExprKind::Compare(Box::new(first), rest),
            column,
        })
    }

    fn unary(&mut self, level: usize) -> Result<Expr, ExprError> {
        let mut bangs = Vec::new();
        let mut inner = level;
        while *self.peek() == Tok::Not {
            let column = self.next().column;
            inner = deeper(inner, column)?;
            bangs.push(column);
        }
        let mut expr = self.postfix(inner)?;
        for column in bangs.into_iter().rev() {
            expr = Expr {
                kind: ExprKind::Not(Box::new(expr)),
                column,
            };
        }
        Ok(expr)
    }

    fn postfix(&mut self, level: usize) -> Result<Expr, ExprError> {
        let base = self.primary(level)?;
        let mut segments = Vec::new();
        loop {
            match self.peek() {
                Tok::Dot => {
                    self.next();
                    let t = self.next();
                    match t.tok {
                        Tok::Ident(key) => segments.push(Segment::Key(key)),
                        other => {
                            return Err(syntax(
                                t.column,
                                format!("expected a name after '.', found {other}"),
                            ))
                        }
                    }
                }
                Tok::LBracket => {
                    let open = self.next().column;
                    let index = self.or(deeper(level, open)?)?;
                    let t = self.next();
                    if t.tok != Tok::RBracket {
                        return Err(syntax(
                            t.column,
                            format!(
                                "expected ']' to close the '[' at column {open}, found {}",
                                t.tok
                            ),
                        ));
                    }
                    segments.push(Segment::Index(index));
                }
                _ => break,
            }
        }
        if segments.is_empty() {
            return Ok(base);
        }
        let column = base.column;
        Ok(Expr {
            kind: ExprKind::Access(Box::new(base), segments),
            column,
        })
    }

    fn primary(&mut self, level: usize) -> Result<Expr, ExprError> {
        let t = self.next();
        let column = t.column;
        let kind = match t.tok {
            Tok::Number(n) => ExprKind::Literal(number(n)),
            Tok::Str(s) => ExprKind::Literal(Value::String(s)),
            Tok::Ident(name) if *self.peek() == Tok::LParen => {
                self.next();
                let args = self.arguments(&name, deeper(level, column)?)?;
                funcs::check_arity(&name, args.len(), column)?;
                ExprKind::Call(name, args)
            }
            Tok::Ident(name) => match name.as_str() {
                "null" => ExprKind::Literal(Value::Null),
                "true" => ExprKind::Literal(Value::Bool(true)),
                "false" => ExprKind::Literal(Value::Bool(false)),
                _ => ExprKind::Name(name),
            },
            Tok::LParen => {
                let inner = self.or(deeper(level, column)?)?;
                let close = self.next();
                if close.tok != Tok::RParen {
                    return Err(syntax(
                        close.column,
                        format!(
                            "expected ')' to close the '(' at column {column}, found {}",
                            close.tok
                        ),
                    ));
                }
                return Ok(inner);
            }
            other => {
                return Err(syntax(
                    column,
                    format!("expected an expression, found {other}"),
                ))
            }
        };
        Ok(Expr { kind, column })
    }

    /// The arguments of a call, after its `(`, through its `)`.
    fn arguments(&mut self, name: &str, level: usize) -> Result<Vec<Expr>, ExprError> {
        let mut args = Vec::new();
        if *self.peek() == Tok::RParen {
            self.next();
            return Ok(args);
        }
        loop {
            args.push(self.or(level)?);
            let t = self.next();
            match t.tok {
                Tok::Comma => {}
                Tok::RParen => return Ok(args),
                Tok::End => {
                    return Err(syntax(
                        t.column,
                        format!(
                            "expected ')' to close the call to {name}, found end of expression"
                        ),
                    ))
                }
                other => {
                    return Err(syntax(
                        t.column,
                        format!("expected ',' or ')' after an argument of {name}, found {other}"),
                    ))
                }
            }
        }
    }
}

impl Expr {
    /// The context paths this expression reads, in the order they appear.
    /// A path stops before its first index that is not a string literal
    /// (`inputs.files[0]` reads `["inputs", "files"]`); the expressions
    /// inside indexes and call arguments add their own references.
    pub fn references(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        self.collect_references(&mut out);
        out
    }

    fn collect_references(&self, out: &mut Vec<Reference>) {
        match &self.kind {
            ExprKind::Literal(_) => {}
            ExprKind::Name(name) => out.push(Reference {
                path: vec![name.clone()],
                column: self.column,
            }),
            ExprKind::Access(base, segments) => {
                if let ExprKind::Name(name) = &base.kind {
                    let mut path = vec![name.clone()];
                    for segment in segments {
                        match segment {
                            Segment::Key(key) => path.push(key.clone()),
                            Segment::Index(Expr {
                                kind: ExprKind::Literal(Value::String(key)),
                                ..
                            }) => path.push(key.clone()),
                            Segment::Index(_) => break,
                        }
                    }
                    out.push(Reference {
                        path,
                        column: self.column,
                    });
                } else {
                    base.collect_references(out);
                }
                for segment in segments {
                    if let Segment::Index(index) = segment {
                        index.collect_references(out);
                    }
                }
            }
            ExprKind::Not(inner) => inner.collect_references(out),
            ExprKind::Or(items) | ExprKind::And(items) | ExprKind::Call(_, items) => {
                for item in items {
                    item.collect_references(out);
                }
            }
            ExprKind::Compare(first, rest) => {
                first.collect_references(out);
                for c in rest {
                    c.right.collect_references(out);
                }
            }
        }
    }

    /// Whether the expression calls `success()`, `failure()`, `always()` or
    /// `cancelled()` anywhere. A condition that does not is taken as
    /// `success() && (condition)`, as GitHub Actions does.
    pub fn uses_status_function(&self) -> bool {
        match &self.kind {
            ExprKind::Literal(_) | ExprKind::Name(_) => false,
            ExprKind::Call(name, args) => {
                funcs::STATUS_FUNCTIONS.contains(&name.as_str())
                    || args.iter().any(Expr::uses_status_function)
            }
            ExprKind::Access(base, segments) => {
                base.uses_status_function()
                    || segments.iter().any(|s| match s {
                        Segment::Index(e) => e.uses_status_function(),
                        Segment::Key(_) => false,
                    })
            }
            ExprKind::Not(inner) => inner.uses_status_function(),
            ExprKind::Or(items) | ExprKind::And(items) => {
                items.iter().any(Expr::uses_status_function)
            }
            ExprKind::Compare(first, rest) => {
                first.uses_status_function() || rest.iter().any(|c| c.right.uses_status_function())
            }
        }
    }
}

/// Whether `expr` calls a status function; see [`Expr::uses_status_function`].
pub fn uses_status_function(expr: &Expr) -> bool {
    expr.uses_status_function()
}

/// `s` as a string literal: in single quotes, each `'` doubled.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn is_key(key: &str) -> bool {
    key.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The expression with every operator node in parentheses, so its grouping
/// reads off the text: `a || b && c` shows as `(a || (b && c))`. Parsing the
/// text again gives the same tree (columns aside).
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Literal(Value::String(s)) => f.write_str(&quote(s)),
            ExprKind::Literal(Value::Number(n)) => {
                f.write_str(&number_text(n.as_f64().unwrap_or(f64::NAN)))
            }
            ExprKind::Literal(v @ (Value::Array(_) | Value::Object(_))) => {
                // Never produced by the parser; shown as the call that makes it.
                write!(f, "fromJSON({})", quote(&super::eval::json_text(v)))
            }
            ExprKind::Literal(v) => write!(f, "{v}"),
            ExprKind::Name(name) => f.write_str(name),
            ExprKind::Access(base, segments) => {
                if matches!(
                    base.kind,
                    ExprKind::Not(_) | ExprKind::Literal(Value::Number(_))
                ) {
                    write!(f, "({base})")?;
                } else {
                    write!(f, "{base}")?;
                }
                for segment in segments {
                    match segment {
                        Segment::Key(key) if is_key(key) => write!(f, ".{key}")?,
                        Segment::Key(key) => write!(f, "[{}]", quote(key))?,
                        Segment::Index(index) => write!(f, "[{index}]")?,
                    }
                }
                Ok(())
            }
            ExprKind::Not(inner) => write!(f, "!{inner}"),
            ExprKind::Or(items) | ExprKind::And(items) => {
                let op = if matches!(self.kind, ExprKind::Or(_)) {
                    " || "
                } else {
                    " && "
                };
                f.write_str("(")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(op)?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str(")")
            }
            ExprKind::Compare(first, rest) => {
                for _ in rest {
                    f.write_str("(")?;
                }
                write!(f, "{first}")?;
                for c in rest {
                    write!(f, " {} {})", c.op.symbol(), c.right)?;
                }
                Ok(())
            }
            ExprKind::Call(name, args) => {
                write!(f, "{name}(")?;
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{arg}")?;
                }
                f.write_str(")")
            }
        }
    }
}
