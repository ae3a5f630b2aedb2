//! The workflow catalog, as a user meets it: `orch up --project P` watches
//! P/.orchestrator/workflows/, `orch run NAME` runs what it loaded last,
//! edits reload it for new runs while earlier runs keep their definition,
//! an invalid edit keeps the old one and says why, and files that appear or
//! go are seen. Real daemon and agent, real files, real inotify.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn hello(word: &str) -> String {
    format!(
        "name: hello\nstages:\n  - id: say\n    steps:\n      - commands:\n          - argv: [echo, {word}]\n"
    )
}

fn sha256(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

/// `GET /v1/workflows`.
fn workflows(d: &Daemon) -> Vec<Value> {
    let r = http(d, "GET", "/v1/workflows", Some(&d.admin_token), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().cloned().unwrap_or_default()
}

/// The catalog's entry for `file`, once `ready` holds for it (polled).
fn wait_entry(d: &Daemon, file: &Path, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let file = file.display().to_string();
    wait_for(what, LONG, || {
        workflows(d)
            .into_iter()
            .find(|w| w["file"] == file.as_str() && ready(w))
    })
}

/// Writes as editors do: a temporary file, then a rename over the old one.
fn save(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Ran {
    id: String,
    hash: String,
    logs: String,
}

/// `orch run NAME --project P --wait -o json`, which must succeed.
fn run_named(h: &Harness, name: &str) -> Ran {
    let project = h.project.to_str().unwrap();
    let out = h.orch(&["run", name, "--project", project, "--wait", "-o", "json"]);
    out.expect_code(0);
    let detail = out.json();
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let id = detail["run"]["id"].as_str().unwrap().to_owned();
    let logs = h.orch(&["logs", &id]);
    logs.expect_code(0);
    Ran {
        hash: detail["run"]["spec_hash"]
            .as_str()
            .unwrap_or_else(|| panic!("no spec_hash: {detail:#}"))
            .to_owned(),
        id,
        logs: logs.stdout,
    }
}

#[test]
fn orch_up_watches_workflows_and_new_runs_take_the_edited_definition() {
    let mut h = Harness::new();
    let dir: PathBuf = h.project.join(".orchestrator/workflows");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hello.yaml");
    std::fs::write(&file, hello("first-version")).unwrap();
    let project = h.project.to_str().unwrap().to_owned();

    let up = h.start_up(&["--slots", "2", "--project", &project]);
    let banner = wait_for("the watch banner", LONG, || {
        let log = h.log(up.id);
        log.contains("watching ").then_some(log)
    });
    assert!(
        banner.contains(&format!("watching {} for workflows: hello", dir.display())),
        "{banner}"
    );
    // Admin only, as the other reads.
    assert_eq!(http(&up, "GET", "/v1/workflows", None, None).status, 401);

    // The first definition.
    let h1 = sha256(&hello("first-version"));
    let entry = wait_entry(&up, &file, "hello loaded", |w| !w["hash"].is_null());
    assert_eq!(entry["name"], "hello");
    assert_eq!(entry["project_dir"], project.as_str());
    assert_eq!(entry["hash"], h1.as_str());
    let first = run_named(&h, "hello");
    assert_eq!(first.hash, h1, "the run records the catalog's text");
    assert!(first.logs.contains("first-version"), "{}", first.logs);

    // An edit (written and renamed, as editors do) reloads it for new runs.
    save(&file, &hello("second-version"));
    let h2 = sha256(&hello("second-version"));
    wait_entry(&up, &file, "hello reloaded", |w| w["hash"] == h2.as_str());
    let second = run_named(&h, "hello");
    assert_eq!(second.hash, h2);
    assert!(second.logs.contains("second-version"), "{}", second.logs);
    assert!(!second.logs.contains("first-version"), "{}", second.logs);
    // The earlier run keeps the definition it started with.
    let earlier = h.show(&first.id);
    assert_eq!(earlier["run"]["spec_hash"], h1.as_str());
    let shown = h.orch(&["show", &first.id]);
    shown.expect_code(0);
    assert!(shown.stdout.contains(&format!("sha256 {h1}")), "{shown}");
    let logs = h.orch(&["logs", &first.id]);
    assert!(logs.stdout.contains("first-version"), "{logs}");
    assert!(
        h.log(up.id).contains(&format!(
            "workflow hello reloaded from {} (sha256 {}",
            file.display(),
            &h2[..12]
        )),
        "{}",
        h.log(up.id)
    );

    // An invalid edit, written in place: the old definition stays, and the
    // catalog and the log say why.
    std::fs::write(&file, "name: hello\nstages:\n  - id: say\n    stepz: []\n").unwrap();
    let entry = wait_entry(&up, &file, "the invalid reload", |w| !w["error"].is_null());
    assert_eq!(entry["hash"], h2.as_str(), "{entry:#}");
    let error = entry["error"].as_str().unwrap();
    assert!(
        error.contains("hello.yaml"),
        "the error names the file: {error}"
    );
    let listed = h.orch(&["workflows"]);
    listed.expect_code(0);
    assert!(
        listed
            .stdout
            .contains("the last reload failed; runs use the definition loaded before"),
        "{listed}"
    );
    assert!(listed.stdout.contains(&h2[..12]), "{listed}");
    let json = h.orch(&["workflows", "-o", "json"]);
    json.expect_code(0);
    assert_eq!(json.json()[0]["error"], error);
    assert!(
        h.log(up.id).contains("the old definition is kept"),
        "{}",
        h.log(up.id)
    );
    let third = run_named(&h, "hello");
    assert_eq!(
        third.hash, h2,
        "a run after a failed reload takes the last good one"
    );
    assert!(third.logs.contains("second-version"), "{}", third.logs);

    // A new file is seen, and runs by its name.
    let greet = dir.join("greet.yml");
    std::fs::write(
        &greet,
        "name: greet\nstages:\n  - id: hi\n    steps:\n      - commands:\n          - argv: [echo, greetings]\n",
    )
    .unwrap();
    wait_entry(&up, &greet, "greet listed", |w| {
        w["name"] == "greet" && !w["hash"].is_null()
    });
    let g = run_named(&h, "greet");
    assert!(g.logs.contains("greetings"), "{}", g.logs);

    // A deleted file takes its workflow away; a run by its name is refused
    // with the names known.
    std::fs::remove_file(&greet).unwrap();
    wait_for("greet removed", LONG, || {
        (!workflows(&up)
            .iter()
            .any(|w| w["file"] == greet.display().to_string().as_str()))
        .then_some(())
    });
    let refused = h.orch(&["run", "greet", "--project", &project]);
    assert_ne!(refused.code, 0, "{refused}");
    assert!(
        refused.stderr.contains("\"greet\"") && refused.stderr.contains("hello"),
        "{refused}"
    );

    // Fixing the file loads it again and clears the error.
    save(&file, &hello("third-version"));
    let h3 = sha256(&hello("third-version"));
    let entry = wait_entry(&up, &file, "hello fixed", |w| w["hash"] == h3.as_str());
    assert!(entry["error"].is_null(), "{entry:#}");
}

#[test]
fn a_project_that_is_not_watched_is_refused_by_name() {
    let mut h = Harness::new();
    let d = h.start_up(&["--slots", "1"]);
    let project = h.project.to_str().unwrap();
    let out = h.orch(&["run", "hello", "--project", project]);
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("not watched"), "{out}");
    assert!(workflows(&d).is_empty());
    let listed = h.orch(&["workflows"]);
    listed.expect_code(0);
    assert!(listed.stdout.starts_with("no workflows"), "{listed}");
}
