//! Tables over the language: syntax and precedence here, operators,
//! functions, templates and error messages in their own files.

use serde_json::{json, Value};

use super::*;

mod errors;
mod functions;
mod operators;
mod templates;

/// A context with every planned name, and stage ids that are not plain
/// identifiers.
fn ctx() -> Context<'static> {
    Context::new()
        .with(
            "inputs",
            json!({
                "name": "world", "n": 3, "flag": true, "empty": "",
                "list": [1, 2, 3], "tags": ["a", "b"], "obj": {"k": "v", "x y": 1}
            }),
        )
        .with(
            "stages",
            json!({
                "build": {"result": "success", "outputs": {"version": "1.2.3"}},
                "build-linux": {"result": "failure", "outputs": {}},
                "1st": {"result": "skipped"}
            }),
        )
        .with("matrix", json!({"os": "linux", "arch": ["x86", "arm"]}))
        .with("item", json!({"name": "it"}))
        .with("run", json!({"id": "r1"}))
}

fn ev(text: &str) -> Value {
    let expr = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    eval(&expr, &ctx()).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn err(text: &str) -> ExprError {
    match parse(text).and_then(|e| eval(&e, &ctx())) {
        Ok(v) => panic!("{text}: expected an error, got {v}"),
        Err(e) => e,
    }
}

#[test]
fn precedence_and_associativity() {
    let table = [
        ("a || b && c", "(a || (b && c))"),
        ("a && b || c", "((a && b) || c)"),
        ("a || b || c", "(a || b || c)"),
        ("a && b && c", "(a && b && c)"),
        ("a == b && c", "((a == b) && c)"),
        ("a || b == c", "(a || (b == c))"),
        ("a == b < c", "(a == (b < c))"),
        ("a < b == c", "((a < b) == c)"),
        ("a == b == c", "((a == b) == c)"),
        ("a != b == c", "((a != b) == c)"),
        ("a < b <= c > d >= e", "((((a < b) <= c) > d) >= e)"),
        ("!a == b", "(!a == b)"),
        ("!(a == b)", "!(a == b)"),
        ("!a.b", "!a.b"),
        ("!a[0]", "!a[0]"),
        ("!!a", "!!a"),
        ("(a || b) && c", "((a || b) && c)"),
        ("((a))", "a"),
        ("(a).b", "a.b"),
        ("(!a).b", "(!a).b"),
        ("a.b['c'][0].d", "a.b['c'][0].d"),
        ("a['x y'][b.c]", "a['x y'][b.c]"),
        ("f(a, b || c)", "f(a, (b || c))"),
        ("format('{0}', x)[0]", "format('{0}', x)[0]"),
        ("-1 < 2", "(-1 < 2)"),
        ("'it''s'", "'it''s'"),
        ("1.5e3", "1500"),
        ("0.25", "0.25"),
        ("1e20", "1e20"),
        ("stages.build-linux.result", "stages.build-linux.result"),
        ("stages.1st.result", "stages.1st.result"),
        ("null == true != false", "((null == true) != false)"),
        ("  a\n&&\tb  ", "(a && b)"),
    ];
    for (text, grouped) in table {
        let expr = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(expr.to_string(), grouped, "{text}");
        let again = parse(grouped).unwrap_or_else(|e| panic!("{grouped}: {e}"));
        assert_eq!(again.to_string(), grouped, "{grouped} reparsed");
    }
}

/// The same groupings, seen through values rather than the tree.
#[test]
fn precedence_by_value() {
    let table = [
        ("true || false && false", json!(true)),
        ("false && true || true", json!(true)),
        ("!0 == false", json!(false)),
        ("1 < 2 == true", json!(true)),
        ("2 > 1 == 1 < 2", json!(true)),
        ("(false || true) && 'x'", json!("x")),
        ("false || true && 'x'", json!("x")),
        ("!inputs.empty && inputs.name", json!("world")),
    ];
    for (text, want) in table {
        assert_eq!(ev(text), want, "{text}");
    }
}

#[test]
fn literals() {
    let table = [
        ("null", json!(null)),
        ("true", json!(true)),
        ("false", json!(false)),
        ("42", json!(42)),
        ("-7", json!(-7)),
        ("-0", json!(0)),
        ("1.5", json!(1.5)),
        ("-2.5e-3", json!(-0.0025)),
        ("2E3", json!(2000)),
        ("007", json!(7)),
        ("''", json!("")),
        ("'it''s'", json!("it's")),
        ("''''", json!("'")),
        ("'${{ x }}'", json!("${{ x }}")),
        ("'ünï ☃'", json!("ünï ☃")),
    ];
    for (text, want) in table {
        assert_eq!(ev(text), want, "{text}");
    }
}

#[test]
fn access() {
    let table = [
        ("inputs.name", json!("world")),
        ("inputs['name']", json!("world")),
        ("inputs.list[0]", json!(1)),
        ("inputs.list[2]", json!(3)),
        ("inputs.list[3]", json!(null)),
        ("inputs.list[-1]", json!(null)),
        ("inputs.list[0.5]", json!(null)),
        ("inputs.list['0']", json!(null)),
        ("inputs.obj[0]", json!(null)),
        ("inputs.obj['x y']", json!(1)),
        ("inputs.obj[inputs.tags[0] == 'a' && 'k']", json!("v")),
        ("inputs.missing", json!(null)),
        ("inputs.missing.deeper[0]", json!(null)),
        ("inputs.name.length", json!(null)),
        ("inputs.n.x", json!(null)),
        ("inputs.list.x", json!(null)),
        ("stages.build.outputs.version", json!("1.2.3")),
        ("stages['build'].result", json!("success")),
        ("stages.build-linux.result", json!("failure")),
        ("stages.1st.result", json!("skipped")),
        ("matrix.os", json!("linux")),
        ("matrix.arch[1]", json!("arm")),
        ("item.name", json!("it")),
        ("item", json!({"name": "it"})),
        ("run.id", json!("r1")),
        ("fromJSON('{\"a\": [10, 20]}').a[1]", json!(20)),
        ("(inputs.missing || inputs.obj).k", json!("v")),
        ("'abc'[0]", json!(null)),
    ];
    for (text, want) in table {
        assert_eq!(ev(text), want, "{text}");
    }
}

#[test]
fn references() {
    let table: &[(&str, &[&[&str]])] = &[
        ("inputs.name", &[&["inputs", "name"]]),
        (
            "stages.build.outputs.version",
            &[&["stages", "build", "outputs", "version"]],
        ),
        (
            "stages['build'].outputs['version']",
            &[&["stages", "build", "outputs", "version"]],
        ),
        ("inputs.files[0].name", &[&["inputs", "files"]]),
        ("matrix[item.key].x", &[&["matrix"], &["item", "key"]]),
        ("run", &[&["run"]]),
        ("'lit' == 1", &[]),
        (
            "success() && contains(inputs.tags, matrix.os) || !stages.a.result",
            &[
                &["inputs", "tags"],
                &["matrix", "os"],
                &["stages", "a", "result"],
            ],
        ),
        ("fromJSON(inputs.j).a", &[&["inputs", "j"]]),
        ("(item).name", &[&["item", "name"]]),
    ];
    for (text, want) in table {
        let got: Vec<Vec<String>> = parse(text)
            .unwrap()
            .references()
            .into_iter()
            .map(|r| r.path)
            .collect();
        let want: Vec<Vec<String>> = want
            .iter()
            .map(|p| p.iter().map(|s| s.to_string()).collect())
            .collect();
        assert_eq!(got, want, "{text}");
    }
    let refs = parse("a || inputs.x").unwrap().references();
    assert_eq!(refs[1].column, 6);
    let t = Template::parse("v${{ inputs.a }}-${{ stages.s.result }}").unwrap();
    let paths: Vec<_> = t
        .references()
        .into_iter()
        .map(|r| (r.path, r.column))
        .collect();
    assert_eq!(
        paths,
        vec![
            (vec!["inputs".to_owned(), "a".to_owned()], 6),
            (
                vec!["stages".to_owned(), "s".to_owned(), "result".to_owned()],
                22
            )
        ]
    );
}

#[test]
fn status_function_use() {
    let table = [
        ("a == b", false),
        ("success()", true),
        ("always()", true),
        ("failure() || cancelled()", true),
        ("!cancelled()", true),
        ("x[success()]", true),
        ("contains(a, failure())", true),
        ("a == always()", true),
        ("(cancelled()).x", true),
        ("successful()", false),
        ("'success()'", false),
        ("inputs.success", false),
    ];
    for (text, want) in table {
        assert_eq!(uses_status_function(&parse(text).unwrap()), want, "{text}");
    }
}

#[test]
fn conditions() {
    let c = ctx();
    let table = [
        ("inputs.flag", true),
        ("${{ inputs.flag }}", true),
        ("  ${{ inputs.flag }}\n", true),
        ("${{ inputs.empty }}", false),
        ("inputs.empty", false),
        ("${{ '}}' == '}}' }}", true),
        ("matrix.os == 'linux' && inputs.n > 2", true),
        ("inputs.missing", false),
        ("inputs.tags", true),
    ];
    for (text, want) in table {
        assert_eq!(condition(text, &c), Ok(want), "{text}");
    }
    for text in [
        "${{ inputs.flag }} == ${{ inputs.flag }}",
        "${{ inputs.flag }} x",
        "${{ a }}${{ b }}",
    ] {
        let e = condition(text, &c).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Syntax, "{text}");
        assert!(
            e.message.starts_with("a condition is one expression"),
            "{e}"
        );
    }
}
