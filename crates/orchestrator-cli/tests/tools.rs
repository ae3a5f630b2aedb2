//! A stage's tools from the agent's machine, through the real binaries: a
//! workflow's `mounts:` reach the step when the agent allows them, and are
//! refused with an error naming the flag when it does not.

mod common;

use std::path::PathBuf;

use common::{jobs_of, Harness};

/// A tool directory in the agent's home, removed when dropped.
struct Tool(PathBuf);

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_stage_reads_an_allowed_mount_and_a_forbidden_one_fails_naming_the_flag() {
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
    let tool = Tool(home.join(format!(".orch-e2e-tool-{}", std::process::id())));
    std::fs::create_dir_all(tool.0.join("bin")).unwrap();
    std::fs::write(tool.0.join("bin/version"), "tool 4.5.6\n").unwrap();
    let name = tool.0.file_name().unwrap().to_string_lossy().into_owned();

    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    let allowed = tool.0.to_string_lossy().into_owned();
    h.spawn(
        "agent-tools",
        &[
            "agent",
            "--server",
            &d.url,
            "--slots",
            "1",
            "--name",
            "tools",
            "--allow-mount",
            &allowed,
        ],
    );
    let file = h.write(
        "tools.yaml",
        &format!(
            "name: tools\nstages:\n  - id: use\n    mounts: [\"~/{name}\"]\n    steps:\n      - commands:\n          - argv: [sh, -c, 'cat \"$HOME/{name}/bin/version\"']\n"
        ),
    );
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let logs = h.orch(&["logs", &run]);
    assert!(logs.stdout.contains("tool 4.5.6"), "{logs}");

    let file = h.write(
        "forbidden.yaml",
        "name: forbidden\non_failure: fail\nstages:\n  - id: use\n    mounts: [/usr/share]\n    steps:\n      - commands:\n          - argv: [\"true\"]\n",
    );
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "failed", "{detail:#}");
    let job = &jobs_of(&detail, "use")[0];
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("mounts[0]") && error.contains("--allow-mount"),
        "{error}"
    );
}
