//! `model:` on a stage: it runs only on an agent where the model can be
//! resident, and an unknown model is refused at submission. A model placed
//! on an agent runs there, as the agent's child, ordered by the daemon.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

fn models_file(h: &Harness) -> std::path::PathBuf {
    // Nothing calls the llama.cpp models here: their files are never opened.
    h.write(
        "models.yaml",
        "local: {ram: 1G}\nmodels:\n\
         - {name: remote, runtime: {external: {url: 'http://127.0.0.1:9'}}}\n\
         - {name: small, runtime: {llama_cpp: {model: small.gguf}}, memory: 300M}\n\
         - {name: big, runtime: {llama_cpp: {model: big.gguf}}, memory: 64G}\n",
    )
}

fn agent(d: &Daemon, name: &str) -> serde_json::Value {
    let r = http(d, "GET", "/v1/agents", Some(&d.admin_token), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let agents = r.json();
    agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no agent {name} in {agents:#}"))
        .clone()
}

fn labels_of(d: &Daemon, name: &str) -> Vec<String> {
    let a = agent(d, name);
    let mut l: Vec<String> = a["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    l.sort();
    l
}

#[test]
fn a_stage_with_a_model_runs_where_that_model_can_be_resident() {
    let mut h = Harness::new();
    let file = models_file(&h);
    let d = h.start_daemon(&["--models", file.to_str().unwrap()]);
    h.start_agent(&d, "here", 2);
    // An agent on another machine: only the external model reaches it.
    let r = post_json(
        &d,
        "/v1/agents",
        &d.agent_token,
        &json!({"name": "elsewhere", "slots": 1, "hostname": "another-machine", "labels": ["fast"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("the local agent", LONG, || {
        let r = http(&d, "GET", "/v1/agents", Some(&d.admin_token), None);
        r.text().contains("\"here\"").then_some(())
    });
    assert_eq!(labels_of(&d, "here"), ["model:remote", "model:small"]);
    assert_eq!(labels_of(&d, "elsewhere"), ["fast", "model:remote"]);

    let wf = h.write(
        "wf.yaml",
        "name: m\nstages:\n\
         - {id: small, model: small, steps: [{commands: [{argv: ['true']}]}]}\n\
         - {id: big, model: big, steps: [{commands: [{argv: ['true']}]}]}\n",
    );
    let run = h.submit(&wf);
    let detail = wait_for("stage small to succeed", LONG, || {
        let d = h.show(&run);
        (stage(&d, "small")["state"] == "succeeded").then_some(d)
    });
    assert!(agent(&d, "here")["id"].is_string());
    assert_eq!(
        jobs_of(&detail, "small")[0]["agent_id"],
        agent(&d, "here")["id"],
        "{detail:#}"
    );
    // No agent can hold 64G of model: the stage waits, and says why.
    assert_eq!(stage(&detail, "big")["state"], "queued", "{detail:#}");
    let out = h.orch(&["explain", &run, "big"]);
    out.expect_code(0);
    assert!(out.stdout.contains("model:big"), "{out}");
    h.orch(&["cancel", &run]).expect_code(0);

    // A model the daemon does not serve is refused, naming stage and model.
    let bad = h.write(
        "bad.yaml",
        "name: b\nstages:\n  - {id: x, model: nope, steps: [{commands: [{argv: ['true']}]}]}\n",
    );
    let out = h.orch(&[
        "run",
        bad.to_str().unwrap(),
        "--project",
        h.project.to_str().unwrap(),
    ]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("stage \"x\": model \"nope\" is not served by this daemon")
            && out.stderr.contains("remote, small, big"),
        "{out}"
    );
}

/// The pids of the llama.cpp servers answering to `alias`.
fn servers(alias: &str) -> Vec<i32> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", "--", &format!("--alias {alias}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces; the fields after its ')' do not.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
fn a_model_placed_on_an_agent_runs_there_and_answers_its_stage_through_the_gateway() {
    let model = test_model();
    let mut h = Harness::new();
    let file = h.write(
        "models.yaml",
        &format!(
            "models:\n- {{name: hosted-smol, runtime: {{llama_cpp: {{model: {model:?}, ctx: 512, threads: 1}}}}, memory: 300M, placement: {{agents: [gpu-box]}}}}\n"
        ),
    );
    let d = h.start_daemon(&["--models", file.to_str().unwrap()]);
    // The launcher of this checkout: the binary may be built elsewhere.
    let launcher =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/llama-server.py");
    let hoster = h.spawn(
        "agent-hoster",
        &[
            "agent",
            "--server",
            &d.url,
            "--slots",
            "1",
            "--name",
            "hoster",
            "--label",
            "gpu-box",
            "--model-ram",
            "1G",
            "--model-launcher",
            launcher.to_str().unwrap(),
        ],
    );
    h.start_agent(&d, "plain", 1);
    wait_for("both agents", LONG, || {
        let r = http(&d, "GET", "/v1/agents", Some(&d.admin_token), None);
        (r.text().contains("\"hoster\"") && r.text().contains("\"plain\"")).then_some(())
    });
    assert!(labels_of(&d, "hoster").contains(&"model:hosted-smol".to_owned()));
    assert!(!labels_of(&d, "plain").contains(&"model:hosted-smol".to_owned()));
    assert!(
        servers("hosted-smol").is_empty(),
        "started before anyone asked"
    );

    // The step calls the gateway like any OpenAI client would.
    let script = r#"
import json, os, urllib.request
req = urllib.request.Request(
    os.environ["OPENAI_BASE_URL"] + "/completions",
    data=json.dumps({"model": "hosted-smol", "prompt": "Once upon a time", "max_tokens": 5}).encode(),
    headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"], "Content-Type": "application/json"},
)
answer = json.load(urllib.request.urlopen(req))
print("completion tokens:", answer["usage"]["completion_tokens"])
"#;
    let wf = h.write(
        "wf.yaml",
        &format!(
            "name: m\nstages:\n  - id: ask\n    model: hosted-smol\n    sandbox: process\n    steps:\n      - commands:\n          - argv: [python3, -c, {}]\n",
            serde_json::to_string(script).unwrap()
        ),
    );
    let run = h.submit(&wf);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let job = jobs_of(&detail, "ask")[0];
    assert_eq!(job["agent_id"], agent(&d, "hoster")["id"], "{detail:#}");
    let bundle = h.project.join(job["bundle"].as_str().unwrap());
    let out = std::fs::read_to_string(bundle.join("cmd-000.stdout.log")).unwrap();
    assert!(out.contains("completion tokens: "), "{out}");

    // The server is the agent's child, and goes with it.
    let pids = servers("hosted-smol");
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert_eq!(parent_of(pids[0]), h.pid(hoster));
    h.signal(hoster, nix::sys::signal::Signal::SIGTERM);
    h.wait_exit(hoster, LONG);
    wait_for("the server to stop with its agent", LONG, || {
        servers("hosted-smol").is_empty().then_some(())
    });
}
