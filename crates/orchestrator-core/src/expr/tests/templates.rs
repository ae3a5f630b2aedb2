//! Templates: rendering each kind of value, escapes, `}}` in strings.

use super::*;

#[test]
fn rendering_values() {
    let c = ctx();
    let table = [
        ("plain text", "plain text"),
        ("", ""),
        ("hello ${{ inputs.name }}!", "hello world!"),
        ("${{inputs.name}}", "world"),
        ("${{ inputs.n }}", "3"),
        (
            "${{ 1.0 }}|${{ -0 }}|${{ 0.5 }}|${{ 1e20 }}|${{ 1.5e-7 }}",
            "1|0|0.5|1e20|1.5e-7",
        ),
        ("${{ 123456789012345 }}", "123456789012345"),
        ("${{ true }}/${{ false }}", "true/false"),
        ("[${{ null }}][${{ inputs.missing }}]", "[][]"),
        ("${{ inputs.list }}", "[1,2,3]"),
        ("${{ inputs.obj }}", "{\"k\":\"v\",\"x y\":1}"),
        ("${{ fromJSON('[1.5, \"a\", {}]') }}", "[1.5,\"a\",{}]"),
        (
            "v${{ stages.build.outputs.version }}-${{ matrix.os }}",
            "v1.2.3-linux",
        ),
        ("$${{ inputs.name }}", "${{ inputs.name }}"),
        ("$${{ x }} ${{ inputs.name }}", "${{ x }} world"),
        ("$$${{ inputs.name }}", "$${{ inputs.name }}"),
        ("${ {{ }} $ {{", "${ {{ }} $ {{"),
        ("${{ '}}' }}", "}}"),
        ("${{ 'a''}}''b' }}", "a'}}'b"),
        ("${{ format('{{{0}}}', 'x') }}", "{x}"),
        ("${{ format('{0}}}', inputs.name) }}", "world}"),
        ("é ${{ 'ü' }} é", "é ü é"),
        ("${{ inputs.name }}${{ inputs.name }}", "worldworld"),
        ("a }} b", "a }} b"),
    ];
    for (text, want) in table {
        assert_eq!(render(text, &c), Ok(want.to_owned()), "{text}");
    }
}

#[test]
fn parts() {
    let t = Template::parse("a ${{ x }} $${{ b ${{ y }}").unwrap();
    assert_eq!(t.parts().len(), 4);
    assert!(matches!(&t.parts()[0], Part::Literal(s) if s == "a "));
    assert!(matches!(&t.parts()[2], Part::Literal(s) if s == " ${{ b "));
    assert!(!t.is_literal());
    assert_eq!(t.exprs().count(), 2);
    assert!(Template::parse("only $${{ text }}").unwrap().is_literal());
    assert!(Template::parse("").unwrap().parts().is_empty());
}

#[test]
fn template_errors() {
    let table = [
        (
            "hello ${{ inputs.name",
            7,
            "'${{' at column 7 is not closed: expected '}}' after the expression",
        ),
        (
            "${{ 'abc }}",
            1,
            "'${{' at column 1 is not closed: a string in it is not closed",
        ),
        (
            "x ${{ }}",
            7,
            "expected an expression, found end of expression",
        ),
        (
            "ü ${{ inputs.nme == }}",
            21,
            "expected an expression, found end of expression",
        ),
        (
            "ab ${{ a b }}",
            10,
            "expected an operator or the end of the expression, found name 'b'",
        ),
        (
            "${{ x }} ${{ ( }}",
            16,
            "expected an expression, found end of expression",
        ),
        (
            "é${{ nope }}",
            6,
            "unknown name 'nope' (known: inputs, item, matrix, run, stages)",
        ),
    ];
    for (text, column, message) in table {
        let e = render(text, &ctx()).unwrap_err();
        assert_eq!((e.column, e.message.as_str()), (column, message), "{text}");
    }
}

#[test]
fn limits() {
    let big = "x".repeat(40 * 1024);
    let c = ctx()
        .with("big", json!(big))
        .with("bigs", json!([big, big]));
    assert_eq!(render("${{ big }}", &c).map(|s| s.len()), Ok(40 * 1024));
    let e = render("ab${{ big }}${{ big }}", &c).unwrap_err();
    assert_eq!(
        (e.kind, e.column, e.message.as_str()),
        (
            ErrorKind::Limit,
            17,
            "the rendered text is longer than the limit of 65536 bytes"
        )
    );
    let e = render("${{ format('{0}{0}', big) }}", &c).unwrap_err();
    assert_eq!(
        (e.kind, e.column, e.message.as_str()),
        (
            ErrorKind::Limit,
            5,
            "format: the result is longer than the limit of 65536 bytes"
        )
    );
    let e = render("${{ join(bigs) }}", &c).unwrap_err();
    assert_eq!(
        e.message,
        "join: the result is longer than the limit of 65536 bytes"
    );
    // Doubling through nested calls stops at the limit, not at memory's end.
    let mut text = "big".to_owned();
    for _ in 0..20 {
        text = format!("format('{{0}}{{0}}', {text})");
    }
    assert_eq!(
        eval(&parse(&text).unwrap(), &c).unwrap_err().kind,
        ErrorKind::Limit
    );

    let long = "x".repeat(MAX_RENDERED + 1);
    let e = Template::parse(&long).unwrap_err();
    assert_eq!(
        (e.kind, e.column, e.message.as_str()),
        (
            ErrorKind::Limit,
            1,
            "template of 65537 bytes is longer than the limit of 65536"
        )
    );
    assert_eq!(
        render(&"y".repeat(MAX_RENDERED), &c).map(|s| s.len()),
        Ok(MAX_RENDERED)
    );
}
