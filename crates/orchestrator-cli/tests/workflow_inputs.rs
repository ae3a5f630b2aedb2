//! Workflow inputs from end to end, through the real daemon, agent and
//! CLI: `orch run -p` and `--params-file` reach commands as
//! `ORCH_INPUT_*` variables and as `${{ inputs.NAME }}` in argv; values
//! that do not bind refuse the run with nothing written; a hostile value
//! stays one literal argument; the API binds the same way.

mod common;

use common::*;
use serde_json::{json, Value};

const RELEASE: &str = r#"name: release
inputs:
  version: {type: string}
  count: {type: number, default: 3}
  files: {type: list, required: false}
  note: {required: false}
stages:
  - id: build
    steps:
      - commands:
          - argv: [sh, -c, 'echo "env version=$ORCH_INPUT_VERSION count=$ORCH_INPUT_COUNT files=$ORCH_INPUT_FILES"']
          - argv: [echo, "argv version=${{ inputs.version }}", "files=${{ inputs.files }}"]
          - argv: [sh, -c, 'printf "[%s]" "$@"; printf "n=%d\n" "$#"', sh, "${{ inputs.note }}"]
"#;

/// The run's whole log, as `orch logs RUN` prints it.
fn logs(h: &Harness, run: &str) -> String {
    let out = h.orch(&["logs", run]);
    out.expect_code(0);
    out.stdout
}

fn run_id(out: &Out) -> String {
    out.expect_code(0);
    out.stdout.trim().to_owned()
}

#[test]
fn params_reach_commands_as_variables_and_as_arguments() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "w", 1);
    let wf = h.write("release.yaml", RELEASE);
    let params = h.write("params.yaml", "version: '1.0'\nfiles: [a.txt, b c.txt]\n");
    let project = h.project.to_str().unwrap().to_owned();
    let out = h.orch(&[
        "run",
        wf.to_str().unwrap(),
        "--project",
        &project,
        "--params-file",
        params.to_str().unwrap(),
        "-p",
        "version=2.0",
        "-p",
        "count=7",
    ]);
    let run = run_id(&out);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    // `-p` won over the file; the file gave the list; `note` is null.
    assert_eq!(
        detail["inputs"],
        json!({"version": "2.0", "count": 7, "files": ["a.txt", "b c.txt"], "note": null})
    );
    let log = logs(&h, &run);
    assert!(
        log.contains(r#"env version=2.0 count=7 files=["a.txt","b c.txt"]"#),
        "{log}"
    );
    assert!(
        log.contains(r#"argv version=2.0 files=["a.txt","b c.txt"]"#),
        "{log}"
    );
    // Null renders as nothing, still one argument.
    assert!(log.contains("[]n=1"), "{log}");
    let shown = h.orch(&["show", &run]);
    shown.expect_code(0);
    assert!(shown.stdout.contains("inputs    count=7"), "{shown}");
    assert!(shown.stdout.contains("          version=2.0"), "{shown}");
}

#[test]
fn a_hostile_value_is_one_literal_argument_and_is_not_rendered_again() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "w", 1);
    let wf = h.write("release.yaml", RELEASE);
    let hostile = "$(touch pwned); echo 'a\" b`id`\nsecond ${{ inputs.version }}";
    let project = h.project.to_str().unwrap().to_owned();
    let note = format!("note={hostile}");
    let out = h.orch(&[
        "run",
        wf.to_str().unwrap(),
        "--project",
        &project,
        "-p",
        "version=9",
        "-p",
        &note,
    ]);
    let run = run_id(&out);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let log = logs(&h, &run);
    assert!(log.contains(&format!("[{hostile}]n=1")), "{log}");
    assert!(!h.worktree(&run).join("pwned").exists());
}

#[test]
fn inputs_that_do_not_bind_exit_2_and_leave_no_run() {
    let mut h = Harness::new();
    let _d = h.start_daemon(&[]);
    let wf = h.write("release.yaml", RELEASE);
    let project = h.project.to_str().unwrap().to_owned();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", wf.to_str().unwrap(), "--project", &project];
        args.extend_from_slice(extra);
        h.orch(&args)
    };
    let missing = run(&[]);
    missing.expect_code(2);
    assert!(
        missing.stderr.contains("missing required input 'version'"),
        "{missing}"
    );
    let unknown = run(&["-p", "version=1", "-p", "verison=2"]);
    unknown.expect_code(2);
    assert!(
        unknown.stderr.contains("unknown input 'verison'")
            && unknown.stderr.contains("did you mean 'version'?"),
        "{unknown}"
    );
    let mistyped = run(&["-p", "version=1", "-p", "count=abc"]);
    mistyped.expect_code(2);
    assert!(
        mistyped
            .stderr
            .contains("input 'count': expected a number, got 'abc'"),
        "{mistyped}"
    );
    let bad_file = h.write("params.json", "[1, 2]");
    let bad = run(&["--params-file", bad_file.to_str().unwrap()]);
    bad.expect_code(2);
    assert!(
        bad.stderr.contains("params.json") && bad.stderr.contains("expected an object"),
        "{bad}"
    );
    let no_file = run(&["--params-file", "/nonexistent/p.yaml"]);
    no_file.expect_code(2);
    assert!(no_file.stderr.contains("/nonexistent/p.yaml"), "{no_file}");
    assert_eq!(h.ps(), json!([]));
}

#[test]
fn the_api_binds_inputs_and_shows_them_in_the_run() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    let project = h.project.to_str().unwrap().to_owned();
    let bad = post_json(
        &d,
        "/v1/runs",
        &d.admin_token,
        &json!({"workflow": RELEASE, "project_dir": project, "inputs": {"version": 2}}),
    );
    assert_eq!(bad.status, 422, "{}", bad.text());
    assert!(
        bad.error()
            .contains("input 'version': expected a string, got 2 (a number)"),
        "{}",
        bad.text()
    );
    let text = post_json(
        &d,
        "/v1/runs",
        &d.admin_token,
        &json!({"workflow": RELEASE, "project_dir": project, "params": ["version=1", "count=x"]}),
    );
    assert_eq!(text.status, 422, "{}", text.text());
    assert!(text.error().contains("input 'count'"), "{}", text.text());
    assert_eq!(h.ps(), json!([]));
    let ok = post_json(
        &d,
        "/v1/runs",
        &d.admin_token,
        &json!({"workflow": RELEASE, "project_dir": project,
                "inputs": {"version": "3", "files": ["x"]}, "params": ["count=5"]}),
    );
    assert_eq!(ok.status, 201, "{}", ok.text());
    let run = ok.json()["run_id"].as_str().unwrap().to_owned();
    let detail: Value = run_detail(&d, &run);
    assert_eq!(
        detail["inputs"],
        json!({"version": "3", "count": 5, "files": ["x"], "note": null})
    );
}

#[test]
fn a_substitution_that_reads_an_unknown_name_is_refused_at_submission() {
    let mut h = Harness::new();
    let _d = h.start_daemon(&[]);
    let wf = h.write(
        "typo.yaml",
        "name: typo\ninputs: {version: {default: '1'}}\nstages:\n  - id: a\n    steps:\n      - commands:\n          - argv: [echo, '${{ inputs.nme }}']\n",
    );
    let project = h.project.to_str().unwrap().to_owned();
    let out = h.orch(&["run", wf.to_str().unwrap(), "--project", &project]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("typo.yaml:7:26:")
            && out
                .stderr
                .contains("stages[0].steps[0].commands[0].argv[1]: \"${{ inputs.nme }}\": column 5: unknown input 'nme' (declared: version)"),
        "{out}"
    );
    assert_eq!(h.ps(), json!([]));
}

#[test]
fn the_inputs_example_does_what_its_comment_says() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "w", 1);
    let file = h.example("inputs.yaml");
    let project = h.project.to_str().unwrap().to_owned();
    let out = h.orch(&[
        "run",
        file.to_str().unwrap(),
        "--project",
        &project,
        "-p",
        "version=2.0",
        "-p",
        "targets=linux,mac",
    ]);
    let run = run_id(&out);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let log = logs(&h, &run);
    assert!(
        log.contains(r#"env: version=2.0 targets=["linux","mac"] dry-run=false"#),
        "{log}"
    );
    assert!(
        log.contains(r#"argv: version=2.0 targets=["linux","mac"] run=inputs"#),
        "{log}"
    );
}
