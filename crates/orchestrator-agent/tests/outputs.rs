//! A step's outputs: what it appends to `$ORCH_OUTPUT` comes back in its
//! outcome, in each format, with a later write of a key winning; a file
//! out of the format or over a limit fails the step naming the file and
//! the line; and what a step plants at the file's name (a symlink to a host
//! file, a FIFO, a huge file, a hard link) fails it without being read
//! through. Under the `namespace` sandbox in every tier; with the system
//! tier also under `bubblewrap`, `container` and `vm`.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use orchestrator_core::api::{ClaimedJob, SandboxSpec, StepOutcome};
use orchestrator_core::error::ErrorClass;
use orchestrator_core::spec::SandboxKind;
use tokio_util::sync::CancellationToken;

mod common;

use common::sandboxed::{project, sh, spec, Project};

fn backends() -> Vec<SandboxSpec> {
    common::sandboxed::backends(&[
        (SandboxKind::Bubblewrap, "bwrap", "bubblewrap"),
        (SandboxKind::Container, "runc", "runc"),
    ])
    .into_iter()
    .chain(cfg!(feature = "system-tests").then(|| spec(SandboxKind::Vm)))
    .collect()
}

async fn run(p: &Project, job: &ClaimedJob) -> StepOutcome {
    // A planted FIFO must not hang the agent: a bounded wait says so.
    tokio::time::timeout(
        Duration::from_secs(120),
        p.run_job(job, CancellationToken::new()),
    )
    .await
    .expect("the step's outputs were read without hanging")
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Runs `scripts` as one step's commands under `sandbox`.
async fn step(sandbox: &SandboxSpec, scripts: &[&str]) -> (Project, ClaimedJob, StepOutcome) {
    let (p, dirs) = project(sandbox);
    let job = p.job(sandbox.clone(), scripts.iter().map(|s| sh(s)).collect());
    let out = run(&p, &job).await;
    drop(dirs);
    (p, job, out)
}

/// The step failed as a task, naming its output file and saying `what`.
fn assert_refused(p: &Project, job: &ClaimedJob, out: &StepOutcome, what: &str) {
    let err = out.error.as_deref().unwrap_or_default();
    assert!(!out.success, "{err}");
    assert_eq!(out.error_class, Some(ErrorClass::Task), "{err}");
    let file = p.bundle(job).join("outputs");
    assert!(
        err.contains(&format!("$ORCH_OUTPUT ({})", file.display())),
        "the error names the file: {err}"
    );
    assert!(err.contains(what), "expected {what:?} in: {err}");
    assert!(out.outputs.is_empty(), "{:?}", out.outputs);
}

#[tokio::test]
async fn lines_heredocs_and_json_become_the_outcomes_outputs() {
    for sandbox in backends() {
        let (_p, _job, out) = step(
            &sandbox,
            &[
                "echo version=1.0 >> \"$ORCH_OUTPUT\" && printf 'notes<<EOF\\nfirst\\nsecond=2\\nEOF\\n' >> \"$ORCH_OUTPUT\"",
                "echo version=2.0 >> \"$ORCH_OUTPUT\"; echo empty= >> \"$ORCH_OUTPUT\"",
            ],
        )
        .await;
        assert!(out.success, "{sandbox:?}: {:?}", out.error);
        assert_eq!(
            out.outputs,
            map(&[
                ("version", "2.0"),
                ("notes", "first\nsecond=2"),
                ("empty", "")
            ]),
            "{sandbox:?}"
        );
        let (_p, _job, out) = step(
            &sandbox,
            &[r#"echo '{"tag": "v1", "count": 3, "ok": true}' > "$ORCH_OUTPUT""#],
        )
        .await;
        assert!(out.success, "{sandbox:?}: {:?}", out.error);
        assert_eq!(
            out.outputs,
            map(&[("tag", "v1"), ("count", "3"), ("ok", "true")]),
            "{sandbox:?}"
        );
    }
}

#[tokio::test]
async fn a_step_that_writes_none_has_none() {
    let (_p, _job, out) = step(&spec(SandboxKind::Namespace), &["true"]).await;
    assert!(out.success, "{:?}", out.error);
    assert!(out.outputs.is_empty());
}

#[tokio::test]
async fn a_bad_line_or_key_fails_the_step_naming_its_line() {
    for sandbox in backends() {
        let (p, job, out) = step(
            &sandbox,
            &["printf 'a=1\\nb=2\\nthis is not an output\\n' > \"$ORCH_OUTPUT\""],
        )
        .await;
        assert_refused(
            &p,
            &job,
            &out,
            "line 3: \"this is not an output\"; expected key=value",
        );
        let (p, job, out) = step(
            &sandbox,
            &["printf 'a=1\\nbad.key=2\\n' > \"$ORCH_OUTPUT\""],
        )
        .await;
        assert_refused(
            &p,
            &job,
            &out,
            "line 2: key \"bad.key\"; expected 1 to 64 letters",
        );
        let (p, job, out) = step(&sandbox, &["printf '{\"a\": [1]}' > \"$ORCH_OUTPUT\""]).await;
        assert_refused(&p, &job, &out, "expected one JSON object");
    }
}

#[tokio::test]
async fn over_the_limits_fails_the_step() {
    for sandbox in backends() {
        // 16 MiB: refused by its size, never read whole.
        let (p, job, out) = step(
            &sandbox,
            &["head -c 16777216 /dev/zero | tr '\\0' a > \"$ORCH_OUTPUT\""],
        )
        .await;
        assert_refused(
            &p,
            &job,
            &out,
            "holds 16777216 bytes; expected at most 65536",
        );
        let (p, job, out) = step(
            &sandbox,
            &["i=0; while [ $i -le 256 ]; do echo k$i=v >> \"$ORCH_OUTPUT\"; i=$((i+1)); done"],
        )
        .await;
        assert_refused(&p, &job, &out, "257; expected at most 256");
    }
}

#[tokio::test]
async fn a_symlink_to_a_host_file_is_not_read_through() {
    for sandbox in backends() {
        let (p, dirs) = project(&sandbox);
        let secret = p.outside().join("host-secret");
        fs::write(&secret, "token=the-hosts-secret\n").unwrap();
        let job = p.job(
            sandbox.clone(),
            vec![sh(&format!("ln -sf {} \"$ORCH_OUTPUT\"", secret.display()))],
        );
        let out = run(&p, &job).await;
        drop(dirs);
        assert_refused(
            &p,
            &job,
            &out,
            "expected a regular file (links are never followed)",
        );
        let err = out.error.as_deref().unwrap_or_default();
        assert!(!err.contains("the-hosts-secret"), "{err}");
    }
}

#[tokio::test]
async fn a_fifo_does_not_hang_the_agent() {
    for sandbox in backends() {
        let (p, job, out) = step(&sandbox, &["mkfifo \"$ORCH_OUTPUT\""]).await;
        assert_refused(&p, &job, &out, "a FIFO");
    }
}

#[tokio::test]
async fn a_hard_link_is_refused() {
    for sandbox in backends() {
        let (p, job, out) = step(
            &sandbox,
            &["echo k=v > \"$ORCH_BUNDLE_DIR/kept\" && ln \"$ORCH_BUNDLE_DIR/kept\" \"$ORCH_OUTPUT\""],
        )
        .await;
        assert_refused(&p, &job, &out, "a hard link");
    }
}
