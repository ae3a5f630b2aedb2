//! The model gateway from sandboxed steps, end to end: a step without
//! network reaches the daemon's gateway through its agent (and nothing else
//! of the network), a step with network reaches the daemon directly.

mod common;

use std::net::TcpListener;

use common::*;
use serde_json::Value;

/// An `external` model: listing it needs no server behind it.
const MODELS: &str =
    "models:\n  - name: remote\n    runtime: {external: {url: \"http://127.0.0.1:9\"}}\n";

/// A python program that asks the gateway for its models (with the step's
/// key and without), asks the relay for a daemon path outside the gateway,
/// tries the daemon's port and `other` directly, and writes all it saw to
/// `FILE.json`.
const PROBE: &str = r#"
import json, os, socket, sys, urllib.error, urllib.request
base = os.environ["OPENAI_BASE_URL"]
def get(url, key=None):
    req = urllib.request.Request(url)
    if key:
        req.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return "unreachable", str(e)
def reach(port):
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
        return "reached"
    except OSError:
        return "unreachable"
status, body = get(base + "/models", os.environ["OPENAI_API_KEY"])
seen = {
    "base": base,
    "status": status,
    "models": [m["id"] for m in json.loads(body)["data"]] if status == 200 else body,
    "without_key": get(base + "/models")[0],
    "daemon_api": get(base + "/runs", os.environ["OPENAI_API_KEY"])[0],
    "daemon_port": reach(sys.argv[2]),
    "other_port": reach(sys.argv[3]),
}
print(json.dumps(seen))
with open(sys.argv[1] + ".json", "w") as f:
    json.dump(seen, f)
"#;

fn stage(id: &str, sandbox: &str, network: bool, needs: Option<&str>, ports: (u16, u16)) -> String {
    let needs = needs.map_or(String::new(), |n| format!("\n    needs: [{n}]"));
    let script = PROBE.replace('\n', "\n              ");
    format!(
        r#"
  - id: {id}
    sandbox: {sandbox}
    network: {network}{needs}
    steps:
      - artifacts: [{id}.json]
        commands:
          - argv:
            - /usr/bin/python3
            - -c
            - |{script}
            - {id}
            - "{}"
            - "{}"
"#,
        ports.0, ports.1
    )
}

fn seen(h: &Harness, run: &str, id: &str) -> Value {
    let text = git(&h.project, &["show", &format!("orch/run/{run}:{id}.json")]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{id}.json: {e}: {text}"))
}

#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap and python3: run scripts/test"
)]
fn a_step_without_network_reaches_the_gateway_and_nothing_else() {
    require("python3", "python3");
    require("bwrap", "bubblewrap");
    let mut h = Harness::new();
    let models = h.write("models.yaml", MODELS);
    let d = h.start_daemon(&["--models", models.to_str().unwrap()]);
    h.start_agent(&d, "worker", 1);
    // A port of the host's loopback that a step with network does reach.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let ports = (d.port, other.local_addr().unwrap().port());
    let mut wf = String::from("name: gateway\non_failure: fail\nstages:");
    wf += &stage("namespace", "namespace", false, None, ports);
    wf += &stage("open", "namespace", true, Some("namespace"), ports);
    wf += &stage("bubblewrap", "bubblewrap", false, Some("open"), ports);
    let file = h.write("gateway.yaml", &wf);
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");

    for id in ["namespace", "bubblewrap"] {
        let s = seen(&h, &run, id);
        assert_eq!(s["base"], "http://127.0.0.1:11380/v1", "{id}: {s:#}");
        assert_eq!(s["status"], 200, "{id}: {s:#}");
        assert_eq!(s["models"], serde_json::json!(["remote"]), "{id}: {s:#}");
        // The daemon still checks the key: the relay lends none.
        assert_eq!(s["without_key"], 401, "{id}: {s:#}");
        // The daemon's API is under /v1 too, but only the gateway is relayed.
        assert_eq!(s["daemon_api"], 404, "{id}: {s:#}");
        assert_eq!(s["daemon_port"], "unreachable", "{id}: {s:#}");
        assert_eq!(s["other_port"], "unreachable", "{id}: {s:#}");
    }

    // With network, the daemon directly, and the host's loopback is there.
    let open = seen(&h, &run, "open");
    assert_eq!(open["base"], format!("{}/v1", d.url), "{open:#}");
    assert_eq!(open["status"], 200, "{open:#}");
    assert_eq!(open["models"], serde_json::json!(["remote"]), "{open:#}");
    assert_eq!(open["daemon_port"], "reached", "{open:#}");
    assert_eq!(open["other_port"], "reached", "{open:#}");
    drop(other);
}

/// Streams a chat completion from the gateway and writes what arrived to
/// `stream.json`: the content type, each event's line and the seconds
/// between the first event and the last.
const STREAM: &str = r#"
import json, os, time, urllib.request
body = json.dumps({
    "model": "smol",
    "messages": [{"role": "user", "content": "Count from one to forty."}],
    "max_tokens": 32,
    "ignore_eos": True,
    "stream": True,
}).encode()
req = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions", data=body, headers={
    "Authorization": "Bearer " + os.environ["OPENAI_API_KEY"],
    "Content-Type": "application/json",
})
events, times = [], []
with urllib.request.urlopen(req, timeout=300) as r:
    kind = r.headers["Content-Type"]
    for line in r:
        line = line.decode().strip()
        if line:
            events.append(line)
            times.append(time.monotonic())
seen = {"content_type": kind, "events": events, "spread": times[-1] - times[0] if times else 0}
print(json.dumps(seen))
with open("stream.json", "w") as f:
    json.dump(seen, f)
"#;

#[test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
fn a_step_without_network_streams_a_completion_from_a_llama_cpp_model() {
    let model = test_model();
    let mut h = Harness::new();
    let models = h.write(
        "models.yaml",
        &format!(
            "models:\n  - name: smol\n    runtime: {{llama_cpp: {{model: {model:?}, ctx: 2048, threads: 1}}}}\n    memory: 1G\n"
        ),
    );
    let launcher =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/llama-server.py");
    let d = h.start_daemon(&[
        "--models",
        models.to_str().unwrap(),
        "--llama-launcher",
        launcher.to_str().unwrap(),
    ]);
    h.start_agent(&d, "worker", 1);
    let script = STREAM.replace('\n', "\n              ");
    let wf = format!(
        r#"
name: streamed
on_failure: fail
stages:
  - id: ask
    sandbox: namespace
    steps:
      - artifacts: [stream.json]
        commands:
          - argv:
            - /usr/bin/python3
            - -c
            - |{script}
"#
    );
    let file = h.write("streamed.yaml", &wf);
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let s = seen(&h, &run, "stream");
    assert!(
        s["content_type"]
            .as_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{s:#}"
    );
    let events: Vec<&str> = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(events.len() > 8, "{s:#}");
    assert!(events[0].starts_with("data: {"), "{s:#}");
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{s:#}");
    // The tokens arrived as the model made them, not all at once at the end.
    assert!(s["spread"].as_f64().unwrap() > 0.02, "{s:#}");
}
