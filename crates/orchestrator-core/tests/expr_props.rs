//! Properties of the expression language over generated input: the parsers
//! never panic on any text (deep nesting and long input included), what
//! parses evaluates without panicking and prints back to the same tree,
//! and the identities the reference promises hold for any value.
//!
//! `ORCH_FUZZ_CASES=100000 cargo test -p orchestrator-core --test expr_props`
//! runs more cases than the CI default of 256.

use orchestrator_core::expr::{
    eval, parse, quote, render, to_text, truthy, Context, Status, Template,
};
use proptest::prelude::*;
use serde_json::{json, Value};

fn cases() -> u32 {
    std::env::var("ORCH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Text made of the language's own pieces, so that much of it parses and
/// the rest fails deep inside rather than at the first character.
fn expression_text() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "(",
        ")",
        "[",
        "]",
        ".",
        ",",
        "!",
        "&&",
        "||",
        "==",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        " ",
        "'",
        "''",
        "'a'",
        "'}}'",
        "0",
        "-1",
        "2.5",
        "1e3",
        "null",
        "true",
        "false",
        "inputs",
        "inputs.name",
        "a",
        "b",
        "x",
        "item",
        "matrix.os",
        "stages.s-1.result",
        "contains(",
        "format('{0}{{}}', ",
        "join(",
        "length(",
        "fromJSON('[1]')",
        "toJSON(",
        "success()",
        "startsWith(",
        "${{",
        "}}",
        "$${{",
        "-",
        "é",
        "\n",
    ]);
    prop::collection::vec(piece, 0..60).prop_map(|p| p.concat())
}

/// Text that nests one kind of opening `depth` times.
fn nested_text() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["(", "!", "[", "a[", "f(", "!(", "${{ ("]),
        0usize..3000,
        any::<bool>(),
    )
        .prop_map(|(open, depth, closed)| {
            let close = match open {
                "(" | "f(" | "!(" | "${{ (" => ")",
                "[" | "a[" => "]",
                _ => "",
            };
            let tail = if closed {
                close.repeat(depth)
            } else {
                String::new()
            };
            format!("{}x{tail}", open.repeat(depth))
        })
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn context(a: Value, b: Value) -> Context<'static> {
    Context::new()
        .with("a", a)
        .with("b", b)
        .with("inputs", json!({"name": "n", "list": [1, 2]}))
        .with("item", json!("i"))
        .with("matrix", json!({"os": "linux"}))
        .with("stages", json!({"s-1": {"result": "success"}}))
        .with_status(Status {
            all_succeeded: true,
            any_failed: false,
            cancelled: false,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn parsers_never_panic_on_any_text(text in any::<String>()) {
        let _ = parse(&text);
        let _ = Template::parse(&text);
    }

    #[test]
    fn parsers_never_panic_on_long_text(piece in any::<String>(), times in 0usize..400) {
        let text = piece.repeat(times);
        let _ = parse(&text);
        let _ = Template::parse(&text);
    }

    #[test]
    fn nesting_is_refused_not_overflowed(text in nested_text()) {
        let _ = parse(&text);
        let _ = Template::parse(&text);
    }

    /// What parses evaluates to a value or an error, and prints as text that
    /// parses to the same tree.
    #[test]
    fn parsed_text_evaluates_and_prints_back(text in expression_text(), a in value()) {
        let ctx = context(a, json!(null)).with_function("f", |args| Ok(json!(args.len())));
        if let Ok(expr) = parse(&text) {
            let _ = eval(&expr, &ctx);
            let printed = expr.to_string();
            let again = parse(&printed);
            prop_assert!(again.is_ok(), "{text:?} printed as {printed:?}: {again:?}");
            let again = again.unwrap();
            prop_assert_eq!(again.to_string(), printed);
        }
        if let Ok(template) = Template::parse(&text) {
            let _ = template.render(&ctx);
        }
    }

    #[test]
    fn text_without_expressions_renders_unchanged(text in any::<String>()) {
        prop_assume!(!text.contains("${{"));
        prop_assert_eq!(render(&text, &Context::new()), Ok(text));
    }

    #[test]
    fn a_quoted_string_evaluates_to_itself(s in any::<String>()) {
        let quoted = quote(&s);
        prop_assume!(quoted.len() <= orchestrator_core::expr::MAX_EXPR_LEN);
        let got = eval(&parse(&quoted).unwrap(), &Context::new());
        prop_assert_eq!(got, Ok(Value::String(s)));
    }

    #[test]
    fn format_renders_an_argument_as_a_template_does(x in value()) {
        let ctx = context(x.clone(), json!(null));
        let formatted = render("${{ format('{0}', a) }}", &ctx);
        prop_assert_eq!(&formatted, &render("${{ a }}", &ctx));
        prop_assert_eq!(formatted, Ok(to_text(&x)));
    }

    #[test]
    fn and_or_pick_an_operand(a in value(), b in value()) {
        let ctx = context(a.clone(), b.clone());
        let run = |text: &str| eval(&parse(text).unwrap(), &ctx).unwrap();
        let a_truthy = truthy(&a);
        let (and, or) = if a_truthy { (b, a) } else { (a, b) };
        prop_assert_eq!(run("a && b"), and);
        prop_assert_eq!(run("a || b"), or);
        prop_assert_eq!(run("!a"), Value::Bool(!a_truthy));
        prop_assert_eq!(run("a == a"), Value::Bool(true));
        prop_assert_eq!(run("a == b"), run("b == a"));
        prop_assert_eq!(run("a != b"), Value::Bool(run("a == b") == Value::Bool(false)));
    }
}
