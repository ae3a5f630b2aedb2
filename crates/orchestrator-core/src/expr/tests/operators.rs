//! Truthiness, comparison over every pair of value kinds, short-circuit.

use super::*;

#[test]
fn truthiness_of_each_kind() {
    let table = [
        ("null", false),
        ("false", false),
        ("true", true),
        ("0", false),
        ("-0", false),
        ("0.0", false),
        ("-0.0", false),
        ("1", true),
        ("-1", true),
        ("0.001", true),
        ("''", false),
        ("' '", true),
        ("'0'", true),
        ("'false'", true),
        ("fromJSON('[]')", true),
        ("fromJSON('{}')", true),
        ("fromJSON('[0]')", true),
        ("inputs.missing", false),
    ];
    for (text, want) in table {
        assert_eq!(truthy(&ev(text)), want, "{text}");
        assert_eq!(ev(&format!("!{text}")), json!(!want), "!{text}");
        assert_eq!(ev(&format!("!!({text})")), json!(want), "!!{text}");
    }
    // -0.0 straight from JSON keeps its sign; it is still falsy.
    assert!(!truthy(&json!(-0.0)));
}

/// One sample of each kind of value.
const KINDS: [(&str, &str); 6] = [
    ("null", "null"),
    ("true", "a boolean"),
    ("1", "a number"),
    ("'a'", "a string"),
    ("fromJSON('[1]')", "a list"),
    ("fromJSON('{\"a\": 1}')", "an object"),
];

#[test]
fn comparison_over_every_pair_of_kinds() {
    for (i, (a, kind_a)) in KINDS.iter().enumerate() {
        for (j, (b, kind_b)) in KINDS.iter().enumerate() {
            assert_eq!(ev(&format!("{a} == {b}")), json!(i == j), "{a} == {b}");
            assert_eq!(ev(&format!("{a} != {b}")), json!(i != j), "{a} != {b}");
            for op in ["<", "<=", ">", ">="] {
                let text = format!("{a} {op} {b}");
                let orderable = i == j && (*kind_a == "a number" || *kind_a == "a string");
                if orderable {
                    let equal_ok = op.contains('=');
                    assert_eq!(ev(&text), json!(equal_ok), "{text}");
                } else {
                    let e = err(&text);
                    assert_eq!(e.kind, ErrorKind::Type, "{text}");
                    assert_eq!(
                        e.message,
                        format!("cannot compare {kind_a} with {kind_b} using '{op}'"),
                        "{text}"
                    );
                    assert_eq!(e.column, a.chars().count() + 2, "{text}");
                }
            }
        }
    }
}

#[test]
fn comparison_values() {
    let table = [
        ("1 == 1.0", true),
        ("0 == -0", true),
        ("'1' == 1", false),
        ("'a' == 'A'", false),
        ("'a' != 'A'", true),
        ("null == null", true),
        ("null == false", false),
        ("0 == false", false),
        ("'' == null", false),
        ("'' == false", false),
        ("'true' == true", false),
        ("fromJSON('[1, 2]') == fromJSON('[1.0, 2]')", true),
        ("fromJSON('[1, 2]') == fromJSON('[2, 1]')", false),
        ("fromJSON('[1]') == fromJSON('[1, 1]')", false),
        (
            "fromJSON('{\"a\": 1, \"b\": 2}') == fromJSON('{\"b\": 2, \"a\": 1}')",
            true,
        ),
        ("fromJSON('{\"a\": 1}') == fromJSON('{\"a\": 2}')", false),
        ("fromJSON('{\"a\": 1}') == fromJSON('{\"b\": 1}')", false),
        (
            "fromJSON('{\"a\": 1}') == fromJSON('{\"a\": 1, \"b\": 1}')",
            false,
        ),
        ("inputs.list == fromJSON('[1, 2, 3]')", true),
        ("2 < 10", true),
        ("'10' < '2'", true),
        ("'B' < 'a'", true),
        ("'a' < 'b'", true),
        ("'a' < 'ab'", true),
        ("'é' > 'z'", true),
        ("1 <= 1", true),
        ("1 >= 2", false),
        ("-1 < 0", true),
        ("1.5 > 1", true),
        ("inputs.n > 2", true),
        ("stages.build.result == 'success'", true),
    ];
    for (text, want) in table {
        assert_eq!(ev(text), json!(want), "{text}");
    }
}

#[test]
fn and_or_give_an_operand() {
    let table = [
        ("0 || 'x'", json!("x")),
        ("'a' || 'b'", json!("a")),
        ("'a' && 'b'", json!("b")),
        ("'' && 'b'", json!("")),
        ("null || null", json!(null)),
        ("null && 1", json!(null)),
        ("false || 0 || '' || 'last'", json!("last")),
        ("false || 0 || ''", json!("")),
        ("1 && 2 && 3", json!(3)),
        ("1 && 0 && 3", json!(0)),
        ("inputs.missing || 'default'", json!("default")),
        ("inputs.name || 'default'", json!("world")),
        ("inputs.tags && inputs.obj", json!({"k": "v", "x y": 1})),
    ];
    for (text, want) in table {
        assert_eq!(ev(text), want, "{text}");
    }
}

/// The right side is not evaluated when the left decides, so its error
/// (an unknown name, a bad comparison, bad JSON, a failing host function,
/// a status function without a status) does not surface.
#[test]
fn short_circuit() {
    let failing = [
        "nope",
        "1 < 'a'",
        "fromJSON('{')",
        "explode()",
        "success()",
        "format('{1}', 0)",
    ];
    let calls = std::cell::Cell::new(0);
    let c = ctx().with_function("explode", |_| {
        calls.set(calls.get() + 1);
        Err("boom".to_owned())
    });
    for bad in failing {
        for (text, want) in [
            (format!("false && {bad}"), json!(false)),
            (format!("0 && {bad} && {bad}"), json!(0)),
            (format!("true || {bad}"), json!(true)),
            (format!("'x' || {bad} || {bad}"), json!("x")),
            (format!("inputs.flag || ({bad})"), json!(true)),
            (format!("!(false && {bad})"), json!(true)),
        ] {
            let got = eval(&parse(&text).unwrap(), &c);
            assert_eq!(got, Ok(want), "{text}");
        }
        for text in [
            format!("true && {bad}"),
            format!("false || {bad}"),
            format!("{bad} || true"),
        ] {
            assert!(eval(&parse(&text).unwrap(), &c).is_err(), "{text}");
        }
    }
    // `explode` ran only where its error was expected: 3 times.
    assert_eq!(calls.get(), 3);
}
