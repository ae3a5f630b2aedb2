//! Tokens of an expression, each with the column it starts at.

use std::fmt;

use super::{ErrorKind, ExprError};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    /// A name: a context name, a function, or a key after `.`.
    Ident(String),
    Number(f64),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
    Comma,
    Not,
    And,
    Or,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(name) => write!(f, "name '{name}'"),
            Tok::Number(n) => write!(f, "number {}", super::eval::number_text(*n)),
            Tok::Str(s) => write!(f, "string {}", super::parse::quote(s)),
            Tok::End => f.write_str("end of expression"),
            other => write!(f, "'{}'", other.symbol()),
        }
    }
}

impl Tok {
    pub(super) fn symbol(&self) -> &'static str {
        match self {
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Dot => ".",
            Tok::Comma => ",",
            Tok::Not => "!",
            Tok::And => "&&",
            Tok::Or => "||",
            Tok::Eq => "==",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Ident(_) | Tok::Number(_) | Tok::Str(_) | Tok::End => "",
        }
    }
}

/// A token and its 1-based column in the text the caller numbers by.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub tok: Tok,
    pub column: usize,
}

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

/// Letters, digits, `_` and `-` (stage ids such as `build-linux`): there is
/// no subtraction, so a `-` inside a name is never ambiguous.
fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Splits `text` into tokens; `base` is the number of characters before it
/// in the text columns count from (a template's `${{`). Always ends with
/// [`Tok::End`].
pub(super) fn lex(text: &str, base: usize) -> Result<Vec<Token>, ExprError> {
    let chars: Vec<char> = text.chars().collect();
    let col = |i: usize| base + i + 1;
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let after_dot = matches!(out.last(), Some(Token { tok: Tok::Dot, .. }));
        let tok = if c.is_whitespace() {
            i += 1;
            continue;
        } else if after_dot && (c.is_ascii_alphanumeric() || c == '_') {
            // A key after `.` may start with a digit: stage ids do.
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            Tok::Ident(chars[start..i].iter().collect())
        } else if ident_start(c) {
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            Tok::Ident(chars[start..i].iter().collect())
        } else if c.is_ascii_digit() || c == '-' {
            i = number_end(&chars, i, &col)?;
            let text: String = chars[start..i].iter().collect();
            let n: f64 = text.parse().map_err(|_| {
                ExprError::new(
                    ErrorKind::Syntax,
                    col(start),
                    format!("'{text}' is not a number"),
                )
            })?;
            if !n.is_finite() {
                return Err(ExprError::new(
                    ErrorKind::Syntax,
                    col(start),
                    format!("number {text} is out of range"),
                ));
            }
            Tok::Number(n)
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ExprError::new(
                            ErrorKind::Syntax,
                            col(start),
                            "string is not closed: expected ' before the end of the expression"
                                .into(),
                        ))
                    }
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        s.push(other);
                        i += 1;
                    }
                }
            }
            Tok::Str(s)
        } else {
            let next = chars.get(i + 1).copied();
            let (tok, len) = match (c, next) {
                ('(', _) => (Tok::LParen, 1),
                (')', _) => (Tok::RParen, 1),
                ('[', _) => (Tok::LBracket, 1),
                (']', _) => (Tok::RBracket, 1),
                ('.', _) => (Tok::Dot, 1),
                (',', _) => (Tok::Comma, 1),
                ('&', Some('&')) => (Tok::And, 2),
                ('|', Some('|')) => (Tok::Or, 2),
                ('=', Some('=')) => (Tok::Eq, 2),
                ('!', Some('=')) => (Tok::Ne, 2),
                ('<', Some('=')) => (Tok::Le, 2),
                ('>', Some('=')) => (Tok::Ge, 2),
                ('!', _) => (Tok::Not, 1),
                ('<', _) => (Tok::Lt, 1),
                ('>', _) => (Tok::Gt, 1),
                _ => return Err(unexpected(c, col(i))),
            };
            i += len;
            tok
        };
        out.push(Token {
            tok,
            column: col(start),
        });
    }
    out.push(Token {
        tok: Tok::End,
        column: col(chars.len()),
    });
    Ok(out)
}

fn unexpected(c: char, column: usize) -> ExprError {
    let hint = match c {
        '&' => "; expected '&&'",
        '|' => "; expected '||'",
        '=' => "; expected '==' (there is no assignment)",
        '"' => "; strings are in single quotes: 'text'",
        '+' | '*' | '/' | '%' => "; there is no arithmetic",
        '$' => "; '${{ }}' wraps a whole condition or marks an expression in a template",
        _ => "",
    };
    ExprError::new(
        ErrorKind::Syntax,
        column,
        format!("unexpected character {c:?}{hint}"),
    )
}

/// The end of the number starting at `i`: `-?digits(.digits)?([eE][+-]?digits)?`,
/// not followed by a name character.
fn number_end(
    chars: &[char],
    mut i: usize,
    col: &dyn Fn(usize) -> usize,
) -> Result<usize, ExprError> {
    let digits = |mut i: usize| {
        while chars.get(i).is_some_and(char::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let start = i;
    if chars[i] == '-' {
        i += 1;
        if !chars.get(i).is_some_and(char::is_ascii_digit) {
            return Err(ExprError::new(
                ErrorKind::Syntax,
                col(start),
                "expected a digit after '-' (there is no subtraction)".into(),
            ));
        }
    }
    i = digits(i);
    if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
        i = digits(i + 1);
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let mut j = i + 1;
        if matches!(chars.get(j), Some('+' | '-')) {
            j += 1;
        }
        if chars.get(j).is_some_and(char::is_ascii_digit) {
            i = digits(j);
        }
    }
    if let Some(&c) = chars.get(i).filter(|&&c| ident_char(c) || c == '.') {
        let what: String = chars[start..i].iter().collect();
        return Err(ExprError::new(
            ErrorKind::Syntax,
            col(i),
            format!("unexpected {c:?} after the number {what}"),
        ));
    }
    Ok(i)
}
