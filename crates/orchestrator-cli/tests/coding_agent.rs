//! A real coding-agent CLI as a step: mini-swe-agent from PyPI, its wheels
//! fetched by `scripts/agent-assets.sh`, run unmodified by
//! `examples/coding-agent.yaml` in the default (namespace) sandbox without
//! network. The stage installs it from the wheelhouse it mounts read-only
//! into a virtual environment it keeps in a `cache:`, so the next run only
//! restores it. It calls SmolLM2-135M through the daemon's model gateway as
//! it would any OpenAI-compatible server, and commits with git in its
//! worktree as it would anywhere.
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
//! agent's next task, and so does the output of the project's tests when
//! they fail (they want one note more than the agent has written by then),
//! by themselves (`on_failure: retry_stage`); the tests pass on the next
//! round and `orch land` lands every round's commit. A second run restores
//! the agent's environment from the cache and runs the agent from it; the
//! test prints what the install cost against the restore.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The agent's whole step, model calls included, on a busy two-core machine.
const AGENT_STEP: Duration = Duration::from_secs(600);

const FEEDBACK: &str = "Say it in fewer words.";

/// The project's own tests, which the example's `tests` stage runs: three
/// notes at least. The agent appends one note a round, so the change it
/// hands in after one rejection (two notes) fails them, and the next passes.
const NOTES_TEST: &str = "n=$(($(grep -c . NOTES.md) - 1))\n\
if [ \"$n\" -lt 3 ]; then\n\
  echo \"NOTES.md has $n notes beyond its heading; it needs 3. Add one.\"\n\
  exit 1\n\
fi\n";

/// What they say of two notes.
const TESTS_SAY: &str = "NOTES.md has 2 notes beyond its heading; it needs 3. Add one.";

/// The wheelhouse scripts/agent-assets.sh keeps mini-swe-agent's wheels and
/// lock file in.
fn agent_wheels() -> PathBuf {
    let dir = match std::env::var("ORCH_TEST_CODING_AGENT_WHEELS") {
        Ok(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!(
            "ORCH_TEST_CODING_AGENT_WHEELS is not set: scripts/test gets the coding agent's \
             wheels and sets it (or run `scripts/agent-assets.sh` and export the lines it prints)"
        ),
    };
    assert!(
        dir.join("requirements.txt").is_file() && dir.join(".orch-installed").is_file(),
        "{} holds no complete wheelhouse: run scripts/agent-assets.sh",
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

/// The agent's step `edit` (step 1; step 0 installs it), in order.
fn edits(detail: &Value) -> Vec<&Value> {
    jobs_of(detail, "agent")
        .into_iter()
        .filter(|j| j["step"] == 1)
        .collect()
}

/// Waits until the agent's change awaits approval after its `round`th round.
fn await_approval(d: &Daemon, run: &str, round: usize) -> Value {
    wait_for("the agent's change to await approval", AGENT_STEP, || {
        let detail = run_detail(d, run);
        let agent = &stage(&detail, "agent")["state"];
        assert!(
            !["failed", "awaiting_decision"].iter().any(|s| agent == *s),
            "the agent's step failed: {detail:#}"
        );
        assert_ne!(stage(&detail, "tests")["state"], "awaiting_decision");
        (agent == "awaiting_approval" && edits(&detail).len() == round).then_some(detail)
    })
}

/// A job's bundle directory.
fn bundle(h: &Harness, job: &Value) -> PathBuf {
    h.project.join(job["bundle"].as_str().unwrap())
}

/// What a job's manifest says of its one cache entry, the agent's
/// environment.
fn cache_record(h: &Harness, job: &Value) -> Value {
    let path = bundle(h, job).join("manifest.json");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let caches = manifest["caches"].as_array().unwrap();
    assert_eq!(caches.len(), 1, "{manifest:#}");
    assert_eq!(caches[0]["path"], "~/agent", "{manifest:#}");
    caches[0].clone()
}

/// A job's first command's stdout.
fn stdout(h: &Harness, job: &Value) -> String {
    std::fs::read_to_string(bundle(h, job).join("cmd-000.stdout.log")).unwrap()
}

/// A job's time from its start to its end.
fn took(job: &Value) -> Duration {
    let ms = job["ended_at_ms"].as_u64().unwrap() - job["started_at_ms"].as_u64().unwrap();
    Duration::from_millis(ms)
}

/// The lines `orch diff` shows added, without the file headers.
fn added(diff: &str) -> Vec<String> {
    diff.lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .map(|l| l[1..].to_owned())
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs the coding agent, llama.cpp and the test model: run scripts/test"
)]
fn a_coding_agent_from_pypi_edits_and_commits_through_the_gateway_behind_an_approval_and_the_tests()
{
    let model = test_model();
    let wheels = agent_wheels();
    let mut h = Harness::new();
    std::fs::write(h.project.join("NOTES.md"), "# notes\n").unwrap();
    std::fs::create_dir_all(h.project.join("tests")).unwrap();
    std::fs::write(h.project.join("tests/notes.sh"), NOTES_TEST).unwrap();
    git(&h.project, &["add", "NOTES.md", "tests"]);
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
    let allowed = wheels.parent().unwrap().to_str().unwrap().to_owned();
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

    // The example as shipped, but for where this machine keeps the wheels.
    let mut workflow = std::fs::read_to_string(examples().join("coding-agent.yaml")).unwrap();
    let shipped = ".cache/orch/agents/wheels-2.4.6";
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
    if home.join(shipped) != wheels {
        let wheels = wheels.to_str().unwrap();
        workflow = workflow
            .replace(&format!("~/{shipped}"), wheels)
            .replace(&format!("$HOME/{shipped}"), wheels);
        assert!(
            !workflow.contains(shipped),
            "the example names its wheels elsewhere too"
        );
    }
    let file = h.write("coding-agent.yaml", &workflow);
    let run = h.submit(&file);

    // The agent's change awaits approval. The project had no environment
    // for it yet: `install` made one from the wheels, and the stage's last
    // step saved it.
    let detail = await_approval(&d, &run, 1);
    let install = jobs_of(&detail, "agent")[0];
    assert_eq!(install["step"], 0, "{detail:#}");
    let missed = cache_record(&h, install);
    assert_eq!(missed["restored"], "miss", "{missed:#}");
    assert!(
        stdout(&h, install).starts_with("agent: installed from "),
        "{}",
        stdout(&h, install)
    );
    let job = edits(&detail)[0];
    assert_eq!(job["sandbox"], "namespace", "{detail:#}");
    let saved = cache_record(&h, job);
    assert_eq!(saved["saved"], "saved", "{saved:#}");
    assert!(saved["bytes"].as_u64().unwrap() > 50 << 20, "{saved:#}");
    let first = trajectory(&bundle(&h, job));
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

    // A rejection's feedback becomes part of the agent's next task; only
    // its step runs again, in the environment it left in the stage's home.
    h.orch(&["reject", &run, "agent", "--feedback", FEEDBACK])
        .expect_code(0);
    let detail = await_approval(&d, &run, 2);
    assert_eq!(jobs_of(&detail, "agent").len(), 3, "{detail:#}");
    let job = edits(&detail)[1];
    let second = trajectory(&bundle(&h, job));
    assert!(second.task.contains(FEEDBACK), "{}", second.task);
    assert_eq!(second.exit_status, "Submitted");
    assert_eq!(cache_record(&h, job)["saved"], "kept");
    assert_eq!(
        agent_commits(),
        [
            format!("orch step|{}", second.messages[0]),
            format!("orch step|{}", first.messages[0]),
        ]
    );
    expected.extend(second.lines.iter().cloned());
    assert_eq!(notes(&branch), expected.join("\n"));

    // Approved, the project's tests run on the agent's work and fail: they
    // want three notes, the agent has written two. Their output goes back
    // to the agent by itself, which runs its step again with the failure
    // in its task, on top of its earlier commits.
    h.orch(&["approve", &run, "agent"]).expect_code(0);
    let detail = await_approval(&d, &run, 3);
    let tests = jobs_of(&detail, "tests");
    assert_eq!(tests.len(), 1, "{detail:#}");
    assert_eq!(tests[0]["state"], "failed", "{detail:#}");
    assert_eq!(tests[0]["exit_codes"], serde_json::json!([1]), "{detail:#}");
    let job = edits(&detail)[2];
    let third = trajectory(&bundle(&h, job));
    assert!(third.task.contains(TESTS_SAY), "{}", third.task);
    assert!(
        third.task.contains("Stage tests failed at step 0"),
        "{}",
        third.task
    );
    assert_eq!(third.exit_status, "Submitted");
    let rounds: Vec<(u64, &str)> = edits(&detail)
        .iter()
        .map(|j| {
            (
                j["round"].as_u64().unwrap(),
                j["round_reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rounds,
        [(1, "first"), (2, "feedback"), (3, "feedback")],
        "{detail:#}"
    );
    assert!(
        stdout(&h, job).starts_with("agent: round 3 (feedback)\n"),
        "{}",
        stdout(&h, job)
    );
    assert_eq!(
        agent_commits(),
        [
            format!("orch step|{}", third.messages[0]),
            format!("orch step|{}", second.messages[0]),
            format!("orch step|{}", first.messages[0]),
        ]
    );
    let usage = &detail["models"]["by_stage"]["agent"]["smol"];
    assert_eq!(
        usage["requests"],
        first.calls + second.calls + third.calls,
        "{detail:#}"
    );
    expected.extend(third.lines.iter().cloned());
    assert_eq!(notes(&branch), expected.join("\n"));

    // Approved again, the tests pass in their second round and the run
    // succeeds; `orch show` lists the rounds.
    h.orch(&["approve", &run, "agent"]).expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    assert_eq!(stage(&detail, "tests")["state"], "succeeded");
    let tests = jobs_of(&detail, "tests");
    assert_eq!(tests.len(), 2, "{detail:#}");
    assert_eq!(tests[1]["round"], 2, "{detail:#}");
    let show = h.orch(&["show", &run]);
    show.expect_code(0);
    assert!(
        show.stdout.contains(
            "agent step 1: round 1 (first) succeeded, round 2 (feedback) succeeded, \
             round 3 (feedback) succeeded"
        ),
        "{show}"
    );
    let diff = h.orch(&["diff", &run]);
    diff.expect_code(0);
    assert_eq!(added(&diff.stdout), expected[1..], "{diff}");

    // Landed on the project's checked-out branch (squashed, the default),
    // its files following: every round's note.
    h.orch_in(&h.project, true, &["land", &run]).expect_code(0);
    assert_eq!(notes("main"), expected.join("\n"));
    assert_eq!(
        std::fs::read_to_string(h.project.join("NOTES.md")).unwrap(),
        expected.join("\n") + "\n"
    );

    // The next run finds the agent's environment in the cache: restored
    // into its stage's home (another path), `install` has nothing to do,
    // and the agent runs from it.
    let again = h.submit(&file);
    let detail = await_approval(&d, &again, 1);
    let hit_install = jobs_of(&detail, "agent")[0];
    let hit = cache_record(&h, hit_install);
    assert_eq!(hit["restored"], "exact", "{hit:#}");
    assert_eq!(hit["restored_key"], "mini-swe-agent-2.4.6", "{hit:#}");
    assert!(
        stdout(&h, hit_install).starts_with("agent: installed ("),
        "{}",
        stdout(&h, hit_install)
    );
    let job = edits(&detail)[0];
    assert_eq!(cache_record(&h, job)["saved"], "kept");
    let fourth = trajectory(&bundle(&h, job));
    assert_eq!(fourth.exit_status, "Submitted");
    h.orch(&["approve", &again, "agent"]).expect_code(0);
    let detail = h.wait_run_end(&d, &again);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");

    let mib = |r: &Value| r["bytes"].as_u64().unwrap() as f64 / f64::from(1u32 << 20);
    println!(
        "the agent's environment, {:.0} MiB: first run (miss) `install` {} ms from the wheels, \
         then saved in {} ms; next run (hit) restored in {} ms, `install` {} ms in all",
        mib(&saved),
        took(install).as_millis(),
        saved["ms"],
        hit["ms"],
        took(hit_install).as_millis(),
    );
}
