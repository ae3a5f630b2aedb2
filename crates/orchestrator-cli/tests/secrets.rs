//! The daemon's secrets reach only the stages that name them, are masked in
//! what the agent writes, and never reach the store.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

const VALUE: &str = "s3kr1t-value-4711";

#[test]
fn a_named_secret_reaches_its_stage_only_masked_and_never_the_store() {
    let mut h = Harness::new();
    let file = h.root().join("secrets");
    std::fs::write(&file, format!("API_KEY={VALUE}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = h.start_daemon(&["--secrets-file", file.to_str().unwrap()]);
    h.start_agent(&d, "worker", 2);
    // The workflow names the secret, never its value: the masked output
    // below proves the value arrived.
    let wf = h.write(
        "keys.yaml",
        r#"
name: keys
stages:
  - id: uses
    secrets: [API_KEY]
    steps:
      - commands:
          - argv: [sh, -c, 'test -n "$API_KEY" && echo "key=$API_KEY"']
  - id: plain
    steps:
      - commands:
          - argv: [sh, -c, 'test -z "${API_KEY:-}"']
"#,
    );
    let run = h.submit(&wf);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let job = jobs_of(&detail, "uses")[0];
    let bundle = h.project.join(job["bundle"].as_str().unwrap());
    let out = std::fs::read_to_string(bundle.join("cmd-000.stdout.log")).unwrap();
    assert_eq!(out.trim(), "key=***");
    // Neither the database nor its log holds the value.
    for entry in std::fs::read_dir(&h.data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
                "{} holds the secret",
                path.display()
            );
        }
    }

    // A stage that names a secret the daemon lacks is refused; nothing is stored.
    let missing = h.write(
        "missing.yaml",
        "name: m\nstages:\n  - id: x\n    secrets: [NOPE]\n    steps: [{commands: [{argv: ['true']}]}]\n",
    );
    let out = h.orch(&[
        "run",
        missing.to_str().unwrap(),
        "--project",
        h.project.to_str().unwrap(),
    ]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("stage \"x\" names secret \"NOPE\", which this daemon does not have"),
        "{out}"
    );
    assert_eq!(h.ps().as_array().unwrap().len(), 1);
}

#[test]
fn a_secrets_file_others_can_read_is_refused_at_start() {
    let h = Harness::new();
    let file = h.root().join("secrets");
    std::fs::write(&file, format!("API_KEY={VALUE}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = h.orch(&[
        "daemon",
        "--listen",
        "127.0.0.1:0",
        "--secrets-file",
        file.to_str().unwrap(),
    ]);
    out.expect_code(2);
    assert!(out.stderr.contains("mode 644"), "{out}");
    assert!(!out.stderr.contains(VALUE), "{out}");
}
