//! A step that calls a model through the gateway: its calls are counted for
//! its stage, shown by `orch show` (text and JSON) and written into the
//! step's manifest, in the bundle and on the run's branch.

mod common;

use common::*;
use serde_json::Value;

/// Two chat calls, one answered whole and one streamed; prints the tokens
/// the model said they cost, as `{"in": N, "out": M}`.
const CALLS: &str = r#"
import json, os, urllib.request
base, key = os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"]
def ask(stream):
    body = {"model": "smol", "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 6, "stream": stream, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(base + "/chat/completions", data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        text = r.read().decode()
    if not stream:
        return json.loads(text)["usage"]
    usage = None
    for line in text.splitlines():
        if line.startswith("data: {"):
            usage = json.loads(line[6:]).get("usage") or usage
    return usage
a, b = ask(False), ask(True)
print(json.dumps({"in": a["prompt_tokens"] + b["prompt_tokens"],
                  "out": a["completion_tokens"] + b["completion_tokens"]}))
"#;

#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
fn a_steps_model_calls_show_in_orch_show_and_its_manifest() {
    let model = test_model();
    let mut h = Harness::new();
    let models = h.write(
        "models.yaml",
        &format!(
            "models:\n  - name: smol\n    runtime: {{llama_cpp: {{model: {model:?}, ctx: 2048, threads: 1}}}}\n    memory: 1G\n"
        ),
    );
    let launcher = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/llama-server.py")
        .canonicalize()
        .unwrap();
    let d = h.start_daemon(&[
        "--models",
        models.to_str().unwrap(),
        "--llama-launcher",
        launcher.to_str().unwrap(),
    ]);
    h.start_agent(&d, "worker", 1);
    let calls: String = CALLS
        .lines()
        .map(|l| format!("                {l}\n"))
        .collect();
    let wf = h.write(
        "talk.yaml",
        &format!(
            "name: talk\nstages:\n  - id: think\n    sandbox: process\n    steps:\n      - commands:\n          - argv:\n              - python3\n              - -c\n              - |\n{calls}  - id: quiet\n    sandbox: process\n    steps: [{{commands: [{{argv: ['true']}}]}}]\n"
        ),
    );
    let run = h.submit(&wf);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let job = jobs_of(&detail, "think")[0];
    let bundle = h.project.join(job["bundle"].as_str().unwrap());
    let said: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("cmd-000.stdout.log")).unwrap())
            .unwrap();
    let (tin, tout) = (said["in"].as_u64().unwrap(), said["out"].as_u64().unwrap());
    assert!(tin > 0 && tout > 0, "{said}");

    // `orch show -o json`: the stage's usage by model; the quiet stage has none.
    let smol = &detail["models"]["by_stage"]["think"]["smol"];
    assert_eq!(smol["requests"], 2, "{detail:#}");
    assert_eq!(smol["prompt_tokens"], tin, "{detail:#}");
    assert_eq!(smol["completion_tokens"], tout, "{detail:#}");
    assert!(detail["models"]["by_stage"].get("quiet").is_none());

    // `orch show`: a row for the stage and model, and one for the run.
    let show = h.orch(&["show", &run]);
    show.expect_code(0);
    let row = show
        .stdout
        .lines()
        .find(|l| l.starts_with("think ") && l.contains(" smol "))
        .unwrap_or_else(|| panic!("no usage row for think in {show}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[2..5],
        ["2", &tin.to_string(), &tout.to_string()],
        "{show}"
    );
    assert!(show.stdout.contains("MODELS BY STAGE"), "{show}");

    // The manifest, in the bundle and committed on the run's branch.
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["models"]["smol"]["requests"], 2, "{manifest:#}");
    assert_eq!(manifest["models"]["smol"]["prompt_tokens"], tin);
    assert_eq!(manifest["models"]["smol"]["completion_tokens"], tout);
    // The checkpoint commit keeps the manifest in its `orch-manifest` header.
    let branch = detail["run"]["branch"].as_str().unwrap();
    let think = git(
        &h.project,
        &["log", "--format=%H", "--grep=^Orch-Stage: think$", branch],
    );
    let raw = git(&h.project, &["cat-file", "commit", think.trim()]);
    let header = raw
        .lines()
        .find_map(|l| l.strip_prefix("orch-manifest "))
        .expect("a manifest header");
    let committed: Value = serde_json::from_str(header).unwrap();
    assert_eq!(committed["models"], manifest["models"]);
    let quiet = jobs_of(&detail, "quiet")[0];
    let quiet: Value = serde_json::from_str(
        &std::fs::read_to_string(
            h.project
                .join(quiet["bundle"].as_str().unwrap())
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(quiet.get("models").is_none(), "{quiet:#}");
}
