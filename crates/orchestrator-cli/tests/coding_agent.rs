//! A real coding-agent CLI as a step: mini-swe-agent, installed from PyPI by
//! `scripts/agent-assets.sh` and run unmodified by `examples/coding-agent.yaml`
//! in the default (namespace) sandbox without network, its virtual
//! environment brought in with `mounts:`. It calls SmolLM2-135M through the
//! daemon's model gateway as it would any OpenAI-compatible server, and
//! commits with git in its worktree as it would anywhere.
//!
//! A 135M model cannot follow the agent's action format by itself, so its
//! llama.cpp server is given a grammar (`examples/coding-agent/notes.gbnf`,
//! `scripts/llama-server.py --grammar-file`) that lets it answer only with
//! one action of the agent's format: append a line to NOTES.md, commit,
//! submit. That constrains the model, on the server's side; the agent, its
//! prompts and its parsing are mini-swe-agent's own. So this test asserts
//! the flow, never the model's cleverness: the agent's requests went through
//! the gateway and are counted for its stage; what the model said the agent
//! should do is exactly what the agent's commit, the checkpoint, `orch
//! diff` and the approval hold; feedback from a rejection reaches the
//! agent's next task; the tests stage passes and `orch land` lands it all.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The agent's whole step, model calls included, on a busy two-core machine.
const AGENT_STEP: Duration = Duration::from_secs(600);

const FEEDBACK: &str = "Say it in fewer words.";

/// Where scripts/agent-assets.sh installed mini-swe-agent.
fn coding_agent() -> PathBuf {
    let dir = match std::env::var("ORCH_TEST_CODING_AGENT") {
        Ok(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!(
            "ORCH_TEST_CODING_AGENT is not set: scripts/test installs the coding agent and \
             sets it (or run `scripts/agent-assets.sh` and export the line it prints)"
        ),
    };
    assert!(
        dir.join("bin/mini").is_file(),
        "{} has no bin/mini: run scripts/agent-assets.sh",
        dir.display()
    );
    dir
}

/// What the agent did, from the trajectory it wrote into its bundle.
struct Trajectory {
    /// Model calls, by the agent's own count.
    calls: u64,
    /// Its first user message (the task as the agent put it to the model).
    task: String,
    /// The lines its actions appended to NOTES.md, in order.
    lines: Vec<String>,
    /// The commit messages its actions gave.
    messages: Vec<String>,
    exit_status: String,
}

/// The text between `start` and the next `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in {text:?}"))
        + start.len();
    let len = text[from..]
        .find(end)
        .unwrap_or_else(|| panic!("no {end:?} after {start:?} in {text:?}"));
    &text[from..from + len]
}

fn trajectory(bundle: &Path) -> Trajectory {
    let path = bundle.join("trajectory.json");
    let t: Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no trajectory at {}: {e}", path.display())),
    )
    .unwrap();
    let messages = t["messages"].as_array().unwrap();
    let task = messages
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_else(|| panic!("no task in {t:#}"))
        .to_owned();
    let mut lines = Vec::new();
    let mut commit_messages = Vec::new();
    for m in messages.iter().filter(|m| m["role"] == "assistant") {
        let text = m["content"].as_str().unwrap();
        // The one command the grammar allows; see examples/coding-agent/notes.gbnf.
        lines.push(between(text, "printf '%s\\n' '", "' >> NOTES.md").to_owned());
        commit_messages.push(between(text, "git commit -q -m '", "' && echo").to_owned());
    }
    Trajectory {
        calls: t["info"]["model_stats"]["api_calls"].as_u64().unwrap(),
        task,
        lines,
        messages: commit_messages,
        exit_status: t["info"]["exit_status"].as_str().unwrap_or("").to_owned(),
    }
}

/// Waits until stage `agent` awaits approval after its `jobs`th job.
fn await_approval(d: &Daemon, run: &str, jobs: usize) -> Value {
    wait_for("the agent's change to await approval", AGENT_STEP, || {
        let detail = run_detail(d, run);
        let agent = &stage(&detail, "agent")["state"];
        assert!(
            !["failed", "awaiting_decision"].iter().any(|s| agent == *s),
            "the agent's step failed: {detail:#}"
        );
        (agent == "awaiting_approval" && jobs_of(&detail, "agent").len() == jobs).then_some(detail)
    })
}

/// The lines `orch diff` shows added, without the file headers.
fn added(diff: &str) -> Vec<String> {
    diff.lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .map(|l| l[1..].to_owned())
        .collect()
}

#[test]
fn a_coding_agent_from_pypi_edits_and_commits_through_the_gateway_behind_an_approval() {
    let model = test_model();
    let venv = coding_agent();
    let mut h = Harness::new();
    std::fs::write(h.project.join("NOTES.md"), "# notes\n").unwrap();
    git(&h.project, &["add", "NOTES.md"]);
    git(&h.project, &["commit", "-q", "-m", "notes"]);

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let grammar = repo
        .join("examples/coding-agent/notes.gbnf")
        .canonicalize()
        .unwrap();
    let launcher = repo.join("scripts/llama-server.py").canonicalize().unwrap();
    let models = h.write(
        "models.yaml",
        &format!(
            "models:\n  - name: smol\n    runtime: {{llama_cpp: {{model: {model:?}, ctx: 4096, threads: 2, \
             extra_args: [--grammar-file, {grammar:?}]}}}}\n    memory: 1G\n"
        ),
    );
    let d = h.start_daemon(&[
        "--models",
        models.to_str().unwrap(),
        "--llama-launcher",
        launcher.to_str().unwrap(),
    ]);
    let allowed = venv.parent().unwrap().to_str().unwrap().to_owned();
    h.spawn(
        "agent-coder",
        &[
            "agent",
            "--server",
            &d.url,
            "--slots",
            "1",
            "--name",
            "coder",
            "--allow-mount",
            &allowed,
        ],
    );

    // The example as shipped, but for where this machine keeps the agent.
    let mut workflow = std::fs::read_to_string(examples().join("coding-agent.yaml")).unwrap();
    let shipped = ".cache/orch/agents/mini-swe-agent-2.4.6";
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
    if home.join(shipped) != venv {
        let venv = venv.to_str().unwrap();
        workflow = workflow
            .replace(&format!("~/{shipped}"), venv)
            .replace(&format!("$HOME/{shipped}"), venv);
        assert!(
            !workflow.contains(shipped),
            "the example names its agent elsewhere too"
        );
    }
    let file = h.write("coding-agent.yaml", &workflow);
    let run = h.submit(&file);

    // The agent's change awaits approval.
    let detail = await_approval(&d, &run, 1);
    let job = jobs_of(&detail, "agent")[0];
    assert_eq!(job["sandbox"], "namespace", "{detail:#}");
    let first = trajectory(&h.project.join(job["bundle"].as_str().unwrap()));
    assert!(first.task.contains("NOTES.md"), "{}", first.task);
    assert!(!first.task.contains(FEEDBACK), "{}", first.task);
    // Every request the agent made went through the gateway and is counted
    // for its stage (and none for a stage that made none).
    let usage = &detail["models"]["by_stage"]["agent"]["smol"];
    assert_eq!(usage["requests"], first.calls, "{detail:#}");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{detail:#}");
    assert!(detail["models"]["by_stage"].get("tests").is_none());

    // The checkpoint holds exactly what the agent's actions appended.
    let branch = detail["run"]["branch"].as_str().unwrap().to_owned();
    let base = detail["run"]["base_commit"].as_str().unwrap().to_owned();
    let notes = |rev: &str| git(&h.project, &["show", &format!("{rev}:NOTES.md")]);
    let mut expected = vec!["# notes".to_owned()];
    expected.extend(first.lines.iter().cloned());
    assert_eq!(notes(&branch), expected.join("\n"));
    let diff = h.orch(&["diff", &run, "agent"]);
    diff.expect_code(0);
    assert_eq!(added(&diff.stdout), first.lines, "{diff}");
    assert!(!diff.stdout.contains(".orch/"), "{diff}");
    let inbox = h.orch(&["inbox"]);
    inbox.expect_code(0);
    let n = first.lines.len();
    assert!(
        inbox
            .stdout
            .contains(&format!("NOTES.md | {n} {}", "+".repeat(n))),
        "{inbox}"
    );
    assert!(inbox.stdout.contains("1 file changed"), "{inbox}");

    // The agent committed on its first try and said it was done: its commit
    // is on the run's branch (the checkpoints around it are the
    // orchestrator's), in the stage's git identity.
    assert_eq!(first.exit_status, "Submitted");
    assert_eq!(first.calls, 1);
    let agent_commits = || -> Vec<String> {
        git(
            &h.project,
            &["log", "--format=%an|%s", &format!("{base}..{branch}")],
        )
        .lines()
        .filter(|l| !l.starts_with("orchestrator|"))
        .map(str::to_owned)
        .collect()
    };
    assert_eq!(
        agent_commits(),
        [format!("orch step|{}", first.messages[0])]
    );

    // A rejection's feedback becomes part of the agent's next task.
    h.orch(&["reject", &run, "agent", "--feedback", FEEDBACK])
        .expect_code(0);
    let detail = await_approval(&d, &run, 2);
    let second = trajectory(
        &h.project
            .join(jobs_of(&detail, "agent")[1]["bundle"].as_str().unwrap()),
    );
    assert!(second.task.contains(FEEDBACK), "{}", second.task);
    assert_eq!(second.exit_status, "Submitted");
    assert_eq!(
        agent_commits(),
        [
            format!("orch step|{}", second.messages[0]),
            format!("orch step|{}", first.messages[0]),
        ]
    );
    let usage = &detail["models"]["by_stage"]["agent"]["smol"];
    assert_eq!(usage["requests"], first.calls + second.calls, "{detail:#}");
    expected.extend(second.lines.iter().cloned());
    assert_eq!(notes(&branch), expected.join("\n"));

    // Approved, the tests run on the agent's work, and the run succeeds.
    h.orch(&["approve", &run, "agent"]).expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    assert_eq!(stage(&detail, "tests")["state"], "succeeded");
    let diff = h.orch(&["diff", &run]);
    diff.expect_code(0);
    assert_eq!(added(&diff.stdout), expected[1..], "{diff}");

    // Landed on the project's checked-out branch (squashed, the default),
    // its files following.
    h.orch_in(&h.project, true, &["land", &run]).expect_code(0);
    assert_eq!(notes("main"), expected.join("\n"));
    assert_eq!(
        std::fs::read_to_string(h.project.join("NOTES.md")).unwrap(),
        expected.join("\n") + "\n"
    );
}
