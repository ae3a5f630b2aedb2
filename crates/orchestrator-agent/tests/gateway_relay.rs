//! The model gateway's relay into sandboxes without network, with real
//! processes and the agent's real step socket: a step reaches the socket at
//! `127.0.0.1:GATEWAY_PORT` of its own loopback, the socket answers the
//! agent's own paths and relays the gateway's to the daemon (here an
//! address where nothing listens, so the relay's error is what comes back),
//! and nothing else is reached. The gateway through a real daemon is tested
//! end to end in `orchestrator-cli`'s `tests/gateway.rs`.

use std::time::Duration;

use orchestrator_agent::ask::AskBox;
use orchestrator_agent::run_step_with;
use orchestrator_agent::sandbox::{Dirs, Limits, Sandbox, SandboxConfig, GATEWAY_PORT};
use orchestrator_core::api::SandboxSpec;
use orchestrator_core::spec::{CommandSpec, SandboxKind};
use tokio_util::sync::CancellationToken;

mod common;

use common::sandboxed::{
    assert_no_sleepers, assert_ok, keyed, relaying, require, sh, spawn_cost, spec, Project,
    NO_DAEMON,
};

/// Asks a question through the sandbox's gateway port, asks for the models
/// (relayed to the daemon) and for a daemon path outside the gateway, and
/// prints each status and body.
const PROBE: &str = r#"
import json, os, urllib.error, urllib.request
base = os.environ["OPENAI_BASE_URL"]
def call(path, body=None, token=None):
    req = urllib.request.Request(base + path, data=body)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
ask = json.dumps({"question": "Which database?", "choices": ["sqlite", "postgres"]}).encode()
print(json.dumps({
    "base": base,
    "ask": call("/ask", ask, os.environ["ORCH_STEP_TOKEN"]),
    "models": call("/models", token=os.environ["OPENAI_API_KEY"]),
    "runs": call("/runs", token=os.environ["OPENAI_API_KEY"]),
}))
"#;

fn probe() -> CommandSpec {
    CommandSpec {
        argv: vec!["/usr/bin/python3".into(), "-c".into(), PROBE.into()],
        ..sh("")
    }
}

async fn relayed(kind: SandboxKind) {
    require("python3", "python3");
    let p = Project::new();
    let (ctx, stop, _sockets) = relaying(&p).await;
    let job = keyed(&p, kind, vec![probe()]);
    let out = run_step_with(&job, &ctx, CancellationToken::new()).await;
    assert_ok(&p, &job, &out);
    let printed = p.stdout(&job);
    let seen: serde_json::Value = serde_json::from_str(printed.trim()).expect(&printed);
    assert_eq!(
        seen["base"],
        format!("http://127.0.0.1:{GATEWAY_PORT}/v1"),
        "{seen:#}"
    );
    // The agent's own path, answered by the agent through the relay.
    assert_eq!(seen["ask"][0], 200, "{seen:#}");
    assert_eq!(out.questions.len(), 1, "{out:?}");
    assert_eq!(out.questions[0].question, "Which database?");
    // A gateway path, relayed to the daemon's address.
    assert_eq!(seen["models"][0], 502, "{seen:#}");
    let why = seen["models"][1].as_str().unwrap();
    assert!(why.contains(&format!("{NO_DAEMON}/v1")), "{why}");
    // The daemon's API is under /v1 too, and is not relayed.
    assert_eq!(seen["runs"][0], 404, "{seen:#}");
    stop.cancel();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs python3: run scripts/test"
)]
async fn a_namespace_step_without_network_reaches_the_step_socket_at_the_gateway_port() {
    relayed(SandboxKind::Namespace).await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs bubblewrap and python3: run scripts/test"
)]
async fn a_bubblewrap_step_without_network_reaches_the_step_socket_at_the_gateway_port() {
    require("bwrap", "bubblewrap");
    relayed(SandboxKind::Bubblewrap).await;
}

/// Init serves the gateway's port while it waits: the command's exit code
/// still comes through, and a timeout still ends the whole sandbox, a
/// connection held open to the gateway and the processes behind it
/// included.
#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs python3: run scripts/test"
)]
async fn a_relaying_init_passes_the_exit_code_on_and_dies_whole_on_timeout() {
    require("python3", "python3");
    let p = Project::new();
    let (ctx, stop, _sockets) = relaying(&p).await;
    let job = keyed(
        &p,
        SandboxKind::Namespace,
        vec![sh("sleep 0.2 & (sleep 0.3 &); exit 3")],
    );
    let out = run_step_with(&job, &ctx, CancellationToken::new()).await;
    let error = out.error.as_deref().unwrap_or("");
    assert!(
        !out.success && error.contains("exited with code 3"),
        "{out:?}"
    );

    let hold = "import socket, time; s = socket.create_connection(('127.0.0.1', int(__import__('sys').argv[1]))); time.sleep(43)";
    let mut job = keyed(
        &p,
        SandboxKind::Namespace,
        vec![sh(&format!(
            "/usr/bin/python3 -c \"{hold}\" {GATEWAY_PORT} & sleep 43"
        ))],
    );
    job.spec.timeout_ms = Some(1000);
    let started = std::time::Instant::now();
    let out = run_step_with(&job, &ctx, CancellationToken::new()).await;
    let error = out.error.as_deref().unwrap_or("");
    assert!(!out.success && error.contains("timed out"), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_no_sleepers("43", Duration::from_secs(5)).await;
    stop.cancel();
}

#[tokio::test]
async fn a_step_with_network_or_without_a_key_gets_no_relay() {
    let p = Project::new();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("ask.sock");
    let dirs = || Dirs {
        gateway: Some(socket.clone()),
        ..p.dirs()
    };
    let open = SandboxSpec {
        network: true,
        ..spec(SandboxKind::Namespace)
    };
    let cfg = SandboxConfig::default();
    let with_network = Sandbox::new(&open, &cfg, dirs(), Limits::default()).unwrap();
    assert_eq!(with_network.relayed_gateway(), None);
    let closed = Sandbox::new(
        &spec(SandboxKind::Namespace),
        &cfg,
        dirs(),
        Limits::default(),
    );
    assert!(closed.unwrap().relayed_gateway().is_some());
    let no_socket = Sandbox::new(
        &spec(SandboxKind::Namespace),
        &cfg,
        p.dirs(),
        Limits::default(),
    );
    assert_eq!(no_socket.unwrap().relayed_gateway(), None);
}

/// What the relay adds to each command (`cargo test --release -p
/// orchestrator-agent --test gateway_relay -- --nocapture cost` prints it):
/// a listening socket and a forked process in the sandbox.
#[tokio::test]
async fn per_command_cost_of_the_relay() {
    let p = Project::new();
    let stop = CancellationToken::new();
    let sockets = tempfile::tempdir().unwrap();
    let asks = AskBox::start(stop.clone(), &sockets.path().join("orch"), Some(NO_DAEMON))
        .await
        .unwrap();
    let socket = asks.socket().unwrap().to_owned();
    let cfg = SandboxConfig::default();
    let n = 60;
    let mut line = format!("per command (mean of {n}):");
    for kind in [SandboxKind::Namespace, SandboxKind::Bubblewrap] {
        // Without bubblewrap the plain tier measures the namespace alone; the
        // system tier has it, or fails naming it.
        if kind == SandboxKind::Bubblewrap {
            if cfg!(feature = "system-tests") {
                require("bwrap", "bubblewrap");
            } else if Sandbox::new(&spec(kind), &cfg, p.dirs(), Limits::default()).is_err() {
                continue;
            }
        }
        let mut dirs = p.dirs();
        dirs.readable.extend(socket.parent().map(ToOwned::to_owned));
        let plain = Sandbox::new(&spec(kind), &cfg, dirs.clone(), Limits::default()).unwrap();
        dirs.gateway = Some(socket.clone());
        let relay = Sandbox::new(&spec(kind), &cfg, dirs, Limits::default()).unwrap();
        // Alternated, so that a busy machine weighs on both alike.
        let (mut without, mut with) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..n {
            without += spawn_cost(&plain, &p.worktree(), 1).await;
            with += spawn_cost(&relay, &p.worktree(), 1).await;
        }
        let (without, with) = (without / n, with / n);
        line += &format!(" {kind}: {without:?} without the relay, {with:?} with it;");
    }
    println!("{line}");
    stop.cancel();
}
