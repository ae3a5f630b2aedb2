//! Exec safety from end to end, with a real daemon: a project whose policy
//! (or a daemon whose system rules) say `allow_shell: false` gets no run that
//! uses a shell string, and nothing of a refused run is stored.

mod common;

use common::*;

const SHELL: &str = r#"
name: shelly
stages:
  - id: build
    steps:
      - name: compile
        shell: true
        commands: [{run: "echo hi > out.txt"}]
"#;

const ARGV: &str = r#"
name: plain
stages:
  - id: build
    steps: [{commands: [{argv: ["true"]}]}]
"#;

#[test]
fn a_project_without_shell_refuses_shell_workflows_and_stores_nothing() {
    let mut h = Harness::new();
    let policy = h.project.join(".orchestrator/policy.yaml");
    std::fs::create_dir_all(policy.parent().unwrap()).unwrap();
    std::fs::write(&policy, "allow_shell: false\n").unwrap();
    let _d = h.start_daemon(&[]);
    let shell = h.write("shell.yaml", SHELL);
    let project = h.project.to_str().unwrap().to_owned();

    let out = h.orch(&["run", shell.to_str().unwrap(), "--project", &project]);
    out.expect_code(2);
    assert!(out.stdout.is_empty(), "{out}");
    for part in [
        ".orchestrator/policy.yaml sets allow_shell: false",
        r#"stage "build" step 0 ("compile") sets shell: true"#,
        "stages[0].steps[0].shell",
        "expected argv commands",
    ] {
        assert!(out.stderr.contains(part), "{part:?} in {out}");
    }
    assert_eq!(
        h.ps().as_array().unwrap().len(),
        0,
        "a refused run was stored"
    );

    // Argv commands are still welcome, and the shell is back once allowed.
    let argv = h.write("argv.yaml", ARGV);
    h.orch(&["run", argv.to_str().unwrap(), "--project", &project])
        .expect_code(0);
    std::fs::write(&policy, "allow_shell: true\n").unwrap();
    h.orch(&["run", shell.to_str().unwrap(), "--project", &project])
        .expect_code(0);
    assert_eq!(h.ps().as_array().unwrap().len(), 2);
}

#[test]
fn system_rules_without_shell_refuse_shell_workflows_whatever_the_project_says() {
    let mut h = Harness::new();
    let policy = h.project.join(".orchestrator/policy.yaml");
    std::fs::create_dir_all(policy.parent().unwrap()).unwrap();
    std::fs::write(&policy, "allow_shell: true\n").unwrap();
    let rules = h.write("rules.yaml", "allow_shell: false\n");
    let _d = h.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let shell = h.write("shell.yaml", SHELL);
    let project = h.project.to_str().unwrap().to_owned();

    let out = h.orch(&["run", shell.to_str().unwrap(), "--project", &project]);
    out.expect_code(2);
    for part in [
        "the daemon's --rules file sets allow_shell: false",
        r#"stage "build" step 0 ("compile") sets shell: true"#,
    ] {
        assert!(out.stderr.contains(part), "{part:?} in {out}");
    }
    assert_eq!(
        h.ps().as_array().unwrap().len(),
        0,
        "a refused run was stored"
    );
    let argv = h.write("argv.yaml", ARGV);
    h.orch(&["run", argv.to_str().unwrap(), "--project", &project])
        .expect_code(0);
}
