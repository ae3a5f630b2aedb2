//! The column and wording of errors for malformed expressions, and the
//! limits against hostile input.

use super::*;

#[test]
fn malformed_expressions() {
    let table = [
        ("contains('a', 'b'", 18, "expected ')' to close the call to contains, found end of expression"),
        ("contains('a' 'b')", 14, "expected ',' or ')' after an argument of contains, found string 'b'"),
        ("inputs.", 8, "expected a name after '.', found end of expression"),
        ("inputs.'x'", 8, "expected a name after '.', found string 'x'"),
        ("inputs.name ==", 15, "expected an expression, found end of expression"),
        ("", 1, "expected an expression, found end of expression"),
        ("   ", 4, "expected an expression, found end of expression"),
        ("&& a", 1, "expected an expression, found '&&'"),
        ("'abc", 1, "string is not closed: expected ' before the end of the expression"),
        ("a == 'it''s", 6, "string is not closed: expected ' before the end of the expression"),
        ("a = b", 3, "unexpected character '='; expected '==' (there is no assignment)"),
        ("a & b", 3, "unexpected character '&'; expected '&&'"),
        ("a | b", 3, "unexpected character '|'; expected '||'"),
        ("a + 1", 3, "unexpected character '+'; there is no arithmetic"),
        ("\"x\"", 1, "unexpected character '\"'; strings are in single quotes: 'text'"),
        ("a == ${{ b }}", 6, "unexpected character '$'; '${{ }}' wraps a whole condition or marks an expression in a template"),
        ("a # b", 3, "unexpected character '#'"),
        ("(a || b", 8, "expected ')' to close the '(' at column 1, found end of expression"),
        ("((a) b)", 6, "expected ')' to close the '(' at column 1, found name 'b'"),
        ("a[0", 4, "expected ']' to close the '[' at column 2, found end of expression"),
        ("a[]", 3, "expected an expression, found ']'"),
        ("a b", 3, "expected an operator or the end of the expression, found name 'b'"),
        ("a)", 2, "expected an operator or the end of the expression, found ')'"),
        ("a.b(1)", 4, "only a function name can be called, found '(' after a value"),
        ("1abc", 2, "unexpected 'a' after the number 1"),
        ("1.", 2, "unexpected '.' after the number 1"),
        ("1.5.2", 4, "unexpected '.' after the number 1.5"),
        ("a -b", 3, "expected a digit after '-' (there is no subtraction)"),
        ("1e999", 1, "number 1e999 is out of range"),
        ("contains('a')", 1, "contains takes 2 arguments, found 1"),
        ("f(a,)", 5, "expected an expression, found ')'"),
        ("f(,a)", 3, "expected an expression, found ','"),
        ("é == ü", 1, "unexpected character 'é'"),
        ("a\n  && ]", 8, "expected an expression, found ']'"),
    ];
    for (text, column, message) in table {
        let e = parse(text).unwrap_err();
        assert_eq!((e.column, e.message.as_str()), (column, message), "{text}");
        assert_eq!(e.to_string(), format!("column {column}: {message}"));
    }
}

#[test]
fn evaluation_errors() {
    let table = [
        (
            "input.name",
            1,
            ErrorKind::UnknownName,
            "unknown name 'input' (known: inputs, item, matrix, run, stages)",
        ),
        (
            "inputs.flag && stage.x",
            16,
            ErrorKind::UnknownName,
            "unknown name 'stage' (known: inputs, item, matrix, run, stages)",
        ),
        (
            "inputs.n < '3'",
            10,
            ErrorKind::Type,
            "cannot compare a number with a string using '<'",
        ),
        (
            "inputs.list >= 1",
            13,
            ErrorKind::Type,
            "cannot compare a list with a number using '>='",
        ),
        (
            "1 < 2 < 3",
            7,
            ErrorKind::Type,
            "cannot compare a boolean with a number using '<'",
        ),
        (
            "inputs.obj[nope]",
            12,
            ErrorKind::UnknownName,
            "unknown name 'nope' (known: inputs, item, matrix, run, stages)",
        ),
        (
            "x && contains(inputs, 1)",
            1,
            ErrorKind::UnknownName,
            "unknown name 'x' (known: inputs, item, matrix, run, stages)",
        ),
        (
            "!contains(inputs.name, 1)",
            2,
            ErrorKind::Type,
            "contains: searching a string needs a string to find, found a number",
        ),
    ];
    for (text, column, kind, message) in table {
        let e = err(text);
        assert_eq!(
            (e.column, e.kind, e.message.as_str()),
            (column, kind, message),
            "{text}"
        );
    }
    let e = eval(&parse("inputs").unwrap(), &Context::new()).unwrap_err();
    assert_eq!(
        e.message,
        "unknown name 'inputs' (no names are available here)"
    );
}

#[test]
fn nesting_limit() {
    let nested =
        |n: usize, open: &str, close: &str| format!("{}true{}", open.repeat(n), close.repeat(n));
    for (open, close) in [("(", ")"), ("!", ""), ("length(", ")"), ("a[", "]")] {
        let ok = nested(MAX_DEPTH, open, close);
        assert!(parse(&ok).is_ok(), "{ok}");
        let deep = nested(MAX_DEPTH + 1, open, close);
        let e = parse(&deep).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Limit, "{deep}");
        assert_eq!(
            e.message,
            "nested deeper than the limit of 32 (parentheses, calls, indexes and '!')"
        );
        // The column of the 33rd opening: `(`, `!`, the function's name or the `[`.
        let width = open.chars().count();
        let at = if open == "a[" { 2 } else { 1 };
        assert_eq!(e.column, MAX_DEPTH * width + at, "{deep}");
        // Far past the limit: an error, not a stack overflow.
        assert_eq!(
            parse(&nested(2000, open, close)).unwrap_err().kind,
            ErrorKind::Limit
        );
    }
    // Mixed kinds count together.
    let mixed = format!("{}x{}", "!(".repeat(17), ")".repeat(17));
    assert_eq!(parse(&mixed).unwrap_err().kind, ErrorKind::Limit);
    // Long flat chains are not nesting: they stay flat in the tree.
    let chain = vec!["true"; 500].join(" && ");
    assert_eq!(eval(&parse(&chain).unwrap(), &ctx()), Ok(json!(true)));
    let compares = vec!["1"; 800].join(" == ");
    assert_eq!(eval(&parse(&compares).unwrap(), &ctx()), Ok(json!(false)));
    let path = format!("inputs{}", ".a".repeat(1500));
    assert_eq!(eval(&parse(&path).unwrap(), &ctx()), Ok(json!(null)));
}

#[test]
fn length_limit() {
    let at_limit = format!("'{}'", "a".repeat(MAX_EXPR_LEN - 2));
    assert_eq!(ev(&at_limit).as_str().map(str::len), Some(MAX_EXPR_LEN - 2));
    let over = format!("'{}'", "a".repeat(MAX_EXPR_LEN - 1));
    let e = parse(&over).unwrap_err();
    assert_eq!(
        (e.kind, e.column, e.message.as_str()),
        (
            ErrorKind::Limit,
            1,
            "expression of 4097 bytes is longer than the limit of 4096"
        )
    );
    // In a template the column is where the expression starts.
    let e = Template::parse(&format!("ab${{{{{over}}}}}")).unwrap_err();
    assert_eq!((e.kind, e.column), (ErrorKind::Limit, 6));
}
