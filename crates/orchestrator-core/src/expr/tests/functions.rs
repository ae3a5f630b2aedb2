//! Every function with its edge cases and errors; the status functions
//! over every combination of `Status`; host functions.

use super::*;

#[test]
fn functions() {
    let table = [
        ("contains('hello', 'ell')", json!(true)),
        ("contains('hello', '')", json!(true)),
        ("contains('hello', 'Ell')", json!(false)),
        ("contains('', 'a')", json!(false)),
        ("contains(inputs.tags, 'a')", json!(true)),
        ("contains(inputs.tags, 'A')", json!(false)),
        ("contains(inputs.list, 2)", json!(true)),
        ("contains(inputs.list, 2.0)", json!(true)),
        ("contains(inputs.list, '2')", json!(false)),
        ("contains(fromJSON('[]'), null)", json!(false)),
        (
            "contains(fromJSON('[null, [1]]'), fromJSON('[1]'))",
            json!(true),
        ),
        ("startsWith('refs/heads/main', 'refs/heads/')", json!(true)),
        ("startsWith('main', 'Main')", json!(false)),
        ("startsWith('', '')", json!(true)),
        ("endsWith('file.tar.gz', '.gz')", json!(true)),
        ("endsWith('a', 'ba')", json!(false)),
        ("format('{0} and {1}', 'a', 'b')", json!("a and b")),
        ("format('{1}{0}{1}', 1, 2)", json!("212")),
        ("format('no args')", json!("no args")),
        ("format('{{0}} is {0}', 'x')", json!("{0} is x")),
        ("format('}}{{')", json!("}{")),
        ("format('{0}', null)", json!("")),
        (
            "format('{0}|{1}|{2}', true, 1.5, fromJSON('[1,\"a\"]'))",
            json!("true|1.5|[1,\"a\"]"),
        ),
        ("format('{00}', 'z')", json!("z")),
        ("join(inputs.tags)", json!("a,b")),
        ("join(inputs.tags, ' + ')", json!("a + b")),
        ("join(inputs.list, '')", json!("123")),
        ("join(fromJSON('[]'), '-')", json!("")),
        (
            "join(fromJSON('[null, true, 2.5, \"s\", [1]]'), ' ')",
            json!(" true 2.5 s [1]"),
        ),
        ("join('already', '-')", json!("already")),
        ("toJSON(inputs.obj)", json!("{\"k\":\"v\",\"x y\":1}")),
        ("toJSON('a')", json!("\"a\"")),
        ("toJSON(null)", json!("null")),
        ("toJSON(1.0)", json!("1")),
        (
            "fromJSON('{\"a\": [1, true, null]}')",
            json!({"a": [1, true, null]}),
        ),
        ("fromJSON(' 3 ')", json!(3)),
        ("fromJSON('\"s\"')", json!("s")),
        ("fromJSON(toJSON(inputs.obj)) == inputs.obj", json!(true)),
        ("length('héllo')", json!(5)),
        ("length('')", json!(0)),
        ("length(inputs.list)", json!(3)),
        ("length(inputs.obj)", json!(2)),
        ("length(fromJSON('[]'))", json!(0)),
    ];
    for (text, want) in table {
        assert_eq!(ev(text), want, "{text}");
    }
}

#[test]
fn function_errors() {
    let table = [
        ("contains('abc', 1)", ErrorKind::Type, "contains: searching a string needs a string to find, found a number"),
        ("contains(null, 'a')", ErrorKind::Type, "contains: expected a string or a list to search, found null"),
        ("contains(inputs.obj, 'k')", ErrorKind::Type, "contains: expected a string or a list to search, found an object"),
        ("startsWith(1, 'a')", ErrorKind::Type, "startsWith: expected two strings, found a number"),
        ("endsWith('a', null)", ErrorKind::Type, "endsWith: expected two strings, found null"),
        ("format(1)", ErrorKind::Type, "format: the format must be a string, found a number"),
        ("format('{2}', 1, 2)", ErrorKind::Function, "format: '{2}' but only 2 arguments"),
        ("format('{0}')", ErrorKind::Function, "format: '{0}' but only 0 arguments"),
        ("format('{1}', 'a')", ErrorKind::Function, "format: '{1}' but only 1 argument"),
        ("format('{99999999999999999999999}', 'a')", ErrorKind::Function, "format: '{99999999999999999999999}' but only 1 argument"),
        ("format('{x}', 1)", ErrorKind::Function, "format: '{' is not an argument such as '{0}'; write '{{' for a brace"),
        ("format('{0', 1)", ErrorKind::Function, "format: '{0' is not an argument such as '{0}'; write '{{' for a brace"),
        ("format('a}b')", ErrorKind::Function, "format: a lone '}' must be written '}}'"),
        ("join(1)", ErrorKind::Type, "join: expected a list to join, found a number"),
        ("join(inputs.tags, 1)", ErrorKind::Type, "join: the separator must be a string, found a number"),
        ("fromJSON(1)", ErrorKind::Type, "fromJSON: expected a string of JSON, found a number"),
        ("fromJSON('{')", ErrorKind::Function, "fromJSON: not valid JSON: EOF while parsing an object at line 1 column 1"),
        ("fromJSON('[1,]')", ErrorKind::Function, "fromJSON: not valid JSON: trailing comma at line 1 column 4"),
        ("fromJSON('')", ErrorKind::Function, "fromJSON: not valid JSON: EOF while parsing a value at line 1 column 0"),
        ("length(1)", ErrorKind::Type, "length: expected a string, a list or an object, found a number"),
        ("length(null)", ErrorKind::Type, "length: expected a string, a list or an object, found null"),
        ("contains('a')", ErrorKind::Arguments, "contains takes 2 arguments, found 1"),
        ("join()", ErrorKind::Arguments, "join takes 1 or 2 arguments, found 0"),
        ("join(1, 2, 3)", ErrorKind::Arguments, "join takes 1 or 2 arguments, found 3"),
        ("format()", ErrorKind::Arguments, "format takes at least 1 argument, found 0"),
        ("toJSON()", ErrorKind::Arguments, "toJSON takes 1 argument, found 0"),
        ("success(1)", ErrorKind::Arguments, "success takes no arguments, found 1"),
        ("nope(1)", ErrorKind::UnknownFunction, "unknown function 'nope' (known: contains, startsWith, endsWith, format, join, toJSON, fromJSON, length, success, failure, always, cancelled)"),
        ("Contains('a', 'b')", ErrorKind::UnknownFunction, "unknown function 'Contains'; names are case-sensitive: did you mean 'contains'? (known: contains, startsWith, endsWith, format, join, toJSON, fromJSON, length, success, failure, always, cancelled)"),
        ("success()", ErrorKind::Unavailable, "success() is not available here: it needs the status of a stage's needs"),
        ("always()", ErrorKind::Unavailable, "always() is not available here: it needs the status of a stage's needs"),
    ];
    for (text, kind, message) in table {
        let e = err(text);
        assert_eq!(
            (e.kind, e.message.as_str(), e.column),
            (kind, message, 1),
            "{text}"
        );
    }
}

#[test]
fn status_functions_over_every_status() {
    for bits in 0..8u8 {
        let status = Status {
            all_succeeded: bits & 1 != 0,
            any_failed: bits & 2 != 0,
            cancelled: bits & 4 != 0,
        };
        let c = ctx().with_status(status);
        let run = |text: &str| eval(&parse(text).unwrap(), &c).unwrap();
        let want_success = status.all_succeeded && !status.cancelled;
        assert_eq!(run("success()"), json!(want_success), "{status:?}");
        assert_eq!(run("failure()"), json!(status.any_failed), "{status:?}");
        assert_eq!(run("cancelled()"), json!(status.cancelled), "{status:?}");
        assert_eq!(run("always()"), json!(true), "{status:?}");
        assert_eq!(
            run("failure() || cancelled()"),
            json!(status.any_failed || status.cancelled),
            "{status:?}"
        );
    }
    // The named situations.
    let cases = [
        ((true, false, false), [true, false, false]),
        ((false, true, false), [false, true, false]),
        ((false, false, false), [false, false, false]), // a need was skipped
        ((true, false, true), [false, false, true]),
        ((false, true, true), [false, true, true]),
    ];
    for ((all_succeeded, any_failed, cancelled), [s, f, c]) in cases {
        let ctx = Context::new().with_status(Status {
            all_succeeded,
            any_failed,
            cancelled,
        });
        let got: Vec<bool> = ["success()", "failure()", "cancelled()"]
            .iter()
            .map(|t| condition(t, &ctx).unwrap())
            .collect();
        assert_eq!(got, [s, f, c]);
    }
}

#[test]
fn host_functions() {
    let hash = |args: &[Value]| -> Result<Value, String> {
        let mut patterns = Vec::new();
        for a in args {
            match a {
                Value::String(s) if !s.is_empty() => patterns.push(s.clone()),
                _ => return Err(format!("expected a pattern, found {}", kind(a))),
            }
        }
        Ok(Value::String(format!("h[{}]", patterns.join("|"))))
    };
    let c = ctx()
        .with_function("hashFiles", hash)
        .with_function("length", |_| Ok(json!("shadowed")))
        .with_function("big", |_| Ok(Value::String("x".repeat(MAX_RESULT + 1))))
        .with_function("bigList", |_| Ok(json!(["x".repeat(MAX_RESULT)])));
    let run = |text: &str| eval(&parse(text).unwrap(), &c);
    assert_eq!(
        run("hashFiles('Cargo.lock', '**/*.rs')"),
        Ok(json!("h[Cargo.lock|**/*.rs]"))
    );
    assert_eq!(
        render("deps-${{ hashFiles('Cargo.lock') }}", &c),
        Ok("deps-h[Cargo.lock]".to_owned())
    );
    let e = run("1 && hashFiles('')").unwrap_err();
    assert_eq!(
        (e.kind, e.column, e.message.as_str()),
        (
            ErrorKind::Function,
            6,
            "hashFiles: expected a pattern, found a string"
        )
    );
    // A built-in of the same name wins.
    assert_eq!(run("length('abc')"), Ok(json!(3)));
    for text in ["big()", "bigList()"] {
        let e = run(text).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Limit, "{text}");
        assert!(
            e.message
                .ends_with("the result is longer than the limit of 65536 bytes"),
            "{e}"
        );
    }
    let e = run("hash()").unwrap_err();
    assert!(e.message.ends_with("(known: contains, startsWith, endsWith, format, join, toJSON, fromJSON, length, success, failure, always, cancelled, big, bigList, hashFiles)"), "{e}");
}

#[test]
fn hand_built_calls_are_checked_too() {
    let expr = Expr {
        kind: ExprKind::Call("contains".to_owned(), vec![]),
        column: 4,
    };
    let e = eval(&expr, &ctx()).unwrap_err();
    assert_eq!(
        (e.kind, e.column, e.message.as_str()),
        (
            ErrorKind::Arguments,
            4,
            "contains takes 2 arguments, found 0"
        )
    );
}
