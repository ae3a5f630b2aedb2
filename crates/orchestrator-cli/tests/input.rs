//! Bad input and access: what `orch` and the HTTP API answer to broken
//! workflows, broken requests and wrong tokens, and that none of it touches
//! the store. Also the commands that need no daemon: `schema`, `plan`.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};

/// The ids and states `orch ps -o json` lists.
fn runs(h: &Harness) -> Vec<(String, String)> {
    h.ps()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Whether `text` holds `file:LINE:COL:` with numbers.
fn has_location(text: &str, file: &str) -> bool {
    text.match_indices(&format!("{file}:")).any(|(i, m)| {
        let mut parts = text[i + m.len()..].splitn(3, ':');
        let line = parts.next().unwrap_or("");
        let col = parts.next().unwrap_or("");
        parts.next().is_some()
            && !line.is_empty()
            && line.bytes().all(|b| b.is_ascii_digit())
            && !col.is_empty()
            && col.bytes().all(|b| b.is_ascii_digit())
    })
}

const CYCLE: &str = "\
name: cyclic
stages:
  - id: a
    needs: [c]
    steps:
      - commands:
          - argv: [echo, a]
  - id: b
    needs: [a]
    steps:
      - commands:
          - argv: [echo, b]
  - id: c
    needs: [b]
    steps:
      - commands:
          - argv: [echo, c]
";

#[test]
fn invalid_workflows_are_refused_with_exit_code_2_and_leave_the_store_intact() {
    let mut h = Harness::new();
    h.start_daemon(&[]);
    // One run from before (no agent: it stays queued).
    let hello = h.example("hello.yaml");
    let before_run = h.submit(&hello);
    let before = runs(&h);
    assert_eq!(before, [(before_run, "running".to_owned())]);

    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "malformed.yaml",
            "name: broken\nstages:\n  - id: a\n    steps: [\n",
            &[],
        ),
        ("cycle.yaml", CYCLE, &["a -> ", "cycle"]),
        (
            "unknown-field.yaml",
            "name: typo\nstages:\n  - id: a\n    step:\n      - commands:\n          - argv: [echo]\n",
            &["unknown field `step`"],
        ),
        (
            "dangling.yaml",
            "name: dangling\nstages:\n  - id: a\n    needs: [ghost]\n    steps:\n      - commands:\n          - argv: [echo]\n",
            &["\"ghost\"", "not a stage"],
        ),
    ];
    for (name, text, expected) in cases {
        let file = h.write(name, text);
        let path = file.to_str().unwrap();
        let v = h.orch(&["validate", path]);
        v.expect_code(2);
        assert!(
            has_location(&v.stderr, path),
            "`orch validate {name}` gives no file:line:col:\n{v}"
        );
        for e in expected {
            assert!(
                v.stderr.contains(e),
                "`orch validate {name}` lacks {e:?}:\n{v}"
            );
        }

        let r = h.orch(&["run", path, "--project", h.project.to_str().unwrap()]);
        r.expect_code(2);
        assert!(has_location(&r.stderr, path), "`orch run {name}`:\n{r}");
        assert_eq!(runs(&h), before, "`orch run {name}` changed the store");
    }

    // The cycle names its whole path, first stage repeated at the end.
    let v = h.orch(&["validate", h.root().join("cycle.yaml").to_str().unwrap()]);
    let path_found = [
        "a -> c -> b -> a",
        "a -> b -> c -> a",
        "b -> a -> c -> b",
        "c -> b -> a -> c",
    ]
    .iter()
    .any(|p| v.stderr.contains(p));
    assert!(path_found, "the cycle's path is not named:\n{v}");

    // `-o json` tells programs the same.
    let j = h.orch(&[
        "validate",
        h.root().join("dangling.yaml").to_str().unwrap(),
        "-o",
        "json",
    ]);
    j.expect_code(2);
    let report = j.json();
    assert_eq!(report["valid"], false);
    assert!(
        !report["errors"].as_array().unwrap().is_empty(),
        "{report:#}"
    );

    // A valid file validates, and a missing one is bad input too.
    let ok = h.orch(&["validate", hello.to_str().unwrap()]);
    ok.expect_code(0);
    let missing = h.orch(&["validate", h.root().join("nope.yaml").to_str().unwrap()]);
    missing.expect_code(2);
    let no_project = h.orch(&[
        "run",
        hello.to_str().unwrap(),
        "--project",
        "/nonexistent/dir",
    ]);
    no_project.expect_code(2);
    assert_eq!(runs(&h), before);
}

#[test]
fn the_api_refuses_bad_submissions_with_json_errors_and_creates_no_run() {
    let mut h = Harness::new();
    let d = h.start_daemon(&["--max-body-bytes", "1024"]);
    let admin = d.admin_token.clone();
    let hello = std::fs::read_to_string(examples().join("hello.yaml")).unwrap();
    let project = h.project.to_str().unwrap().to_owned();
    let list = |d: &Daemon| -> Value {
        let r = http(d, "GET", "/v1/runs", Some(&d.admin_token), None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    let ok = post_json(
        &d,
        "/v1/runs",
        &admin,
        &json!({"workflow": hello, "project_dir": project}),
    );
    assert_eq!(ok.status, 201, "{}", ok.text());
    let before = list(&d);
    assert_eq!(before.as_array().unwrap().len(), 1);

    // Over the body limit.
    let big =
        json!({"workflow": format!("{hello}#{}\n", "x".repeat(4000)), "project_dir": project});
    let r = post_json(&d, "/v1/runs", &admin, &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.error().contains("--max-body-bytes"), "{}", r.text());
    assert_eq!(list(&d), before);

    // Not JSON at all.
    let r = http(
        &d,
        "POST",
        "/v1/runs",
        Some(&admin),
        Some(br#"{"workflow": "name: x", "project_dir": "/tmp",}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.error();
    assert!(e.contains("trailing comma") && e.contains("column"), "{e}");
    let r = http(&d, "POST", "/v1/runs", Some(&admin), Some(b""));
    assert_eq!(r.status, 400, "{}", r.text());
    r.error();

    // JSON, but not a submission the daemon can act on.
    for (body, names) in [
        (
            json!({"workflow": hello, "project_dir": "relative/dir"}),
            "relative/dir",
        ),
        (json!({"workflow": hello, "project_dir": ""}), "project_dir"),
        (
            json!({"workflow": hello, "project_dir": "/nonexistent/orch-e2e"}),
            "/nonexistent/orch-e2e",
        ),
        (json!({"workflow": hello}), "project_dir"),
        (
            json!({"workflow": hello, "project_dir": project, "priority": "high"}),
            "\"high\"",
        ),
        (
            json!({"workflow": hello, "project_dir": project, "colour": 1}),
            "colour",
        ),
    ] {
        let r = post_json(&d, "/v1/runs", &admin, &body);
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        let e = r.error();
        assert!(
            e.contains(names),
            "{body}: the error does not name {names:?}: {e}"
        );
    }

    // An invalid workflow: 422 with every problem in `details`.
    let r = post_json(
        &d,
        "/v1/runs",
        &admin,
        &json!({"workflow": CYCLE, "file": "cycle.yaml", "project_dir": project}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.error().contains("cycle"), "{}", r.text());
    let details = r.json()["details"].clone();
    assert!(
        details.as_array().is_some_and(|d| !d.is_empty()),
        "no details: {}",
        r.text()
    );

    assert_eq!(list(&d), before, "a refused submission created a run");
    let ps = h.ps();
    assert_eq!(ps.as_array().unwrap().len(), 1, "{ps:#}");
}

#[test]
fn tokens_decide_who_may_call_what() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);

    // The daemon made its tokens readable by their owner alone.
    for name in ["admin.token", "agent.token"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(h.data.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} has mode {:o}", mode & 0o777);
    }

    let r = http(&d, "GET", "/v1/runs", None, None);
    assert_eq!(r.status, 401);
    assert!(r.error().contains("bearer token"), "{}", r.text());

    let r = http(&d, "GET", "/v1/runs", Some("not-a-token"), None);
    assert_eq!(r.status, 401);
    r.error();
    // A token that only shares a prefix with the real one is still wrong.
    let prefix = &d.admin_token[..d.admin_token.len() - 1];
    let r = http(&d, "GET", "/v1/runs", Some(prefix), None);
    assert_eq!(r.status, 401);

    let r = http(&d, "GET", "/v1/runs", Some(&d.agent_token), None);
    assert_eq!(r.status, 403);
    assert!(r.error().contains("admin token"), "{}", r.text());
    let r = http(&d, "GET", "/v1/events?since=0", Some(&d.agent_token), None);
    assert_eq!(r.status, 403);
    let r = http(&d, "GET", "/metrics", Some(&d.agent_token), None);
    assert_eq!(r.status, 403);
    let r = post_json(
        &d,
        "/v1/runs",
        &d.agent_token,
        &json!({"workflow": "name: x", "project_dir": "/"}),
    );
    assert_eq!(r.status, 403, "an agent cannot submit runs: {}", r.text());

    // The agent token is for the lease protocol; no token for it is refused.
    let reg = json!({"name": "probe", "slots": 1});
    let r = post_json(&d, "/v1/agents", &d.agent_token, &reg);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["agent_id"].is_string());
    let r = http(
        &d,
        "POST",
        "/v1/agents",
        None,
        Some(reg.to_string().as_bytes()),
    );
    assert_eq!(r.status, 401);

    let r = http(&d, "GET", "/healthz", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), "ok");

    let r = http(&d, "GET", "/metrics", None, None);
    assert_eq!(r.status, 401);
    let r = http(&d, "GET", "/metrics", Some(&d.admin_token), None);
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("orch_runs"), "{text}");
    assert!(text.contains("orch_store_batches_total"), "{text}");
    assert_eq!(metric(&text, "orch_agents"), Some(1.0), "{text}");

    // Unknown paths: the daemon's own resources answer in its shape, the
    // rest of /v1 is the model gateway's and answers in OpenAI's.
    for path in ["/nothing-here", "/v1/runs/x/nothing-here"] {
        let r = http(&d, "GET", path, Some(&d.admin_token), None);
        assert_eq!(r.status, 404, "{path}");
        r.error();
    }
    let r = http(&d, "GET", "/v1/nothing-here", Some(&d.admin_token), None);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string(), "{}", r.text());

    // The CLI with a wrong token says so and exits 3.
    let out = h.orch(&["--token", "wrong", "ps"]);
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stderr.contains("401"), "{out}");
}

#[test]
fn schema_and_plan_describe_workflows_without_a_daemon() {
    let h = Harness::new();
    let out = h.orch(&["schema"]);
    out.expect_code(0);
    let schema = out.json();
    assert!(
        schema["properties"]["stages"].is_object(),
        "the schema has no stages: {schema:#}"
    );
    assert!(out.stdout.contains("\"stages\""));

    let demo = examples().join("demo.yaml");
    let out = h.orch(&["plan", demo.to_str().unwrap(), "-o", "json"]);
    out.expect_code(0);
    let plan = out.json();
    let layers: Vec<BTreeSet<String>> = plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    let set = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        layers,
        [
            set(&["fetch"]),
            set(&["lint", "unit-tests", "build"]),
            set(&["package"]),
            set(&["report"])
        ]
    );
    assert_eq!(plan["parallelism"], json!([1, 3, 1, 1]));
    assert_eq!(
        plan["critical_path"],
        json!(["fetch", "build", "package", "report"])
    );
    assert!(plan["critical_path_ms"].as_u64().unwrap() > 0);

    let text = h.orch(&["plan", demo.to_str().unwrap()]);
    text.expect_code(0);
    assert!(
        text.stdout.contains("fetch -> build -> package -> report"),
        "{text}"
    );

    let cycle = h.write("cycle.yaml", CYCLE);
    let out = h.orch(&["plan", cycle.to_str().unwrap()]);
    out.expect_code(2);
    assert!(out.stderr.contains("cycle"), "{out}");
}

#[test]
fn commands_that_need_a_daemon_say_how_to_start_one() {
    let h = Harness::new();
    let out = h.orch(&["ps"]);
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stderr.contains("orch up"), "{out}");
    // A daemon address that answers nothing.
    let out = h.orch(&["--server", "http://127.0.0.1:9", "--token", "t", "ps"]);
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stderr.contains("cannot reach the daemon"), "{out}");
}

#[test]
fn a_bad_models_file_stops_the_daemon_with_the_file_model_and_field() {
    let h = Harness::new();
    let models = h.write(
        "models.yaml",
        "models:\n  - name: small\n    runtime: {external: {url: \"ftp://x\"}}\n",
    );
    let out = h.orch(&[
        "daemon",
        "--listen",
        "127.0.0.1:0",
        "--models",
        models.to_str().unwrap(),
    ]);
    out.expect_code(2);
    assert!(out.stderr.contains("models.yaml"), "{out}");
    assert!(out.stderr.contains("model \"small\""), "{out}");
    assert!(out.stderr.contains("runtime.external.url"), "{out}");
}
