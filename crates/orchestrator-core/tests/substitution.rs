//! `${{ }}` in a workflow's commands as validation sees it: every
//! expression parses and reads only names that exist where it is, with
//! the file, line and column of the field; fields that are not rendered
//! refuse `${{`.

use orchestrator_core::parse_workflow;

fn errors(yaml: &str) -> String {
    match parse_workflow(yaml, Some("wf.yaml")) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

const HEAD: &str = "name: w\ninputs:\n  version: {default: '1'}\nstages:\n";

#[test]
fn declared_names_are_accepted() {
    let yaml = format!(
        "{HEAD}  - id: a\n    steps: [{{commands: [{{argv: [echo, '${{{{ inputs.version }}}}', '${{{{ run.id }}}}-${{{{ run.workflow }}}}']}}]}}]\n  - id: t\n    needs: [a]\n    matrix: {{py: ['3.12'], include: [{{py: '3.13', os: mac}}]}}\n    env: {{PY: '${{{{ matrix.py }}}}'}}\n    steps:\n      - commands:\n          - argv: [echo, '${{{{ matrix.os }}}}', '${{{{ stages.a.outputs.x }}}}']\n            cwd: 'd${{{{ matrix.py }}}}'\n"
    );
    parse_workflow(&yaml, Some("wf.yaml")).unwrap();
}

#[test]
fn a_parse_error_names_the_file_line_column_and_the_expressions_column() {
    let yaml = format!(
        "{HEAD}  - id: a\n    steps:\n      - commands:\n          - argv: [echo, 'v${{{{ inputs.version ==  }}}}']\n"
    );
    let e = errors(&yaml);
    assert!(
        e.starts_with("wf.yaml:8:") && e.contains("stages[0].steps[0].commands[0].argv[1]"),
        "{e}"
    );
    assert!(e.contains("column"), "{e}");
}

#[test]
fn unknown_names_are_refused_with_what_is_known() {
    let cases = [
        (
            "'${{ inputs.verison }}'",
            "unknown input 'verison' (declared: version)",
        ),
        (
            "'${{ matrix.py }}'",
            "`matrix` is only in a stage with a `matrix:`",
        ),
        (
            "'${{ run.branch }}'",
            "unknown name 'run.branch' (known: run.id, run.workflow)",
        ),
        (
            "'${{ secrets.x }}'",
            "unknown name 'secrets' (known: inputs, matrix, run, stages)",
        ),
        (
            "'${{ stages.b.outputs.x }}'",
            "reads the outputs of \"b\", which it does not need",
        ),
    ];
    for (arg, want) in cases {
        let yaml = format!(
            "{HEAD}  - id: a\n    steps:\n      - commands:\n          - argv: [echo, {arg}]\n  - id: b\n    steps: [{{commands: [{{argv: ['true']}}]}}]\n"
        );
        let e = errors(&yaml);
        assert!(e.contains(want), "{arg}: {e}");
        assert!(e.starts_with("wf.yaml:8:"), "{arg}: {e}");
    }
}

#[test]
fn a_matrix_key_the_matrix_lacks_is_refused() {
    let yaml = format!(
        "{HEAD}  - id: t\n    matrix: {{py: ['3.12']}}\n    steps:\n      - commands:\n          - argv: [echo, '${{{{ matrix.os }}}}']\n"
    );
    assert!(errors(&yaml).contains("unknown matrix key 'os' (the matrix has: py)"));
}

#[test]
fn fields_that_are_not_rendered_refuse_expressions() {
    let yaml = format!(
        "{HEAD}  - id: a\n    labels: ['gpu-${{{{ inputs.version }}}}']\n    steps:\n      - shell: true\n        commands:\n          - run: 'echo ${{{{ inputs.version }}}}'\n"
    );
    let e = errors(&yaml);
    assert!(
        e.contains("stages[0].labels[0]") && e.contains("is not substituted here"),
        "{e}"
    );
    assert!(
        e.contains("stages[0].steps[0].commands[0].run") && e.contains("$ORCH_INPUT_NAME"),
        "{e}"
    );
}

#[test]
fn a_needed_stages_result_and_a_matrix_expansion_by_its_id_are_read() {
    let yaml = format!(
        "{HEAD}  - id: t\n    matrix: {{py: ['3.12']}}\n    steps: [{{commands: [{{argv: ['true']}}]}}]\n  - id: r\n    needs: [t]\n    steps:\n      - commands:\n          - argv: [echo, \"${{{{ stages['t[py=3.12]'].outputs.cov }}}}\", \"${{{{ stages['t[py=3.12]'].result }}}}\"]\n"
    );
    parse_workflow(&yaml, Some("wf.yaml")).unwrap();
    for (arg, want) in [
        (
            "\"${{ stages['b[py=3.12]'].outputs.cov }}\"",
            "reads the outputs of \"b[py=3.12]\", which it does not need",
        ),
        (
            "'${{ stages.b.result }}'",
            "reads the outputs of \"b\", which it does not need",
        ),
        (
            "'${{ stages.a.status }}'",
            "expected stages.ID.outputs.KEY or stages.ID.result",
        ),
    ] {
        let yaml = format!(
            "{HEAD}  - id: a\n    steps: [{{commands: [{{argv: ['true']}}]}}]\n  - id: b\n    steps: [{{commands: [{{argv: ['true']}}]}}]\n  - id: c\n    needs: [a]\n    steps:\n      - commands:\n          - argv: [echo, {arg}]\n"
        );
        let e = errors(&yaml);
        assert!(e.contains(want), "{arg}: {e}");
    }
}
