//! The model runtime the model fabric starts: `scripts/llama-server.py`
//! running llama.cpp's server (the `xllamacpp` wheel) on a real small model
//! (SmolLM2-135M-Instruct, Q4_1). `scripts/test` installs both and exports
//! ORCH_TEST_MODEL (the .gguf) and ORCH_LLAMA_PYTHON (the python3 that
//! imports xllamacpp); `scripts/model-assets.sh` prints them.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const ALIAS: &str = "smollm2-test";
const READY: Duration = Duration::from_secs(60);
const REQUEST: Duration = Duration::from_secs(30);

fn env_path(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!(
            "{name} is not set: scripts/test installs the model runtime and sets it \
             (or run `scripts/model-assets.sh` and export the lines it prints)"
        ),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// The launcher's stderr (llama.cpp's log), kept for failure messages.
struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn log(&self) -> String {
        let log = self.log.lock().unwrap();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

async fn start(model: &PathBuf, python: &PathBuf, port: u16) -> Server {
    start_with(model, python, port, &[]).await
}

/// [`start`] with more arguments for the launcher.
async fn start_with(model: &PathBuf, python: &PathBuf, port: u16, extra: &[&str]) -> Server {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/llama-server.py");
    let mut child = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(model)
        .args(["--port", &port.to_string(), "--alias", ALIAS])
        .args(["--ctx", "2048", "--parallel", "4", "--threads", "1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} {}: {e}", python.display(), script.display()));
    let log = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(READY, lines.next_line()).await;
    let url = match first {
        Ok(Ok(Some(line))) => match line.strip_prefix("ready ") {
            Some(url) => url.to_owned(),
            None => panic!("launcher printed {line:?}, not `ready URL`"),
        },
        other => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let log = log.lock().unwrap().clone();
            panic!("launcher not ready ({other:?}); its stderr:\n{log}")
        }
    };
    assert_eq!(url, format!("http://127.0.0.1:{port}"));
    Server { child, url, log }
}

/// One value of the server's Prometheus metrics.
async fn metric(http: &reqwest::Client, url: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
async fn llama_server_serves_the_small_model_and_stops_on_sigterm() {
    let model = env_path("ORCH_TEST_MODEL");
    let python = env_path("ORCH_LLAMA_PYTHON");
    assert!(
        model.is_file(),
        "ORCH_TEST_MODEL={} is not a file: scripts/test installs it",
        model.display()
    );

    let t0 = Instant::now();
    let mut server = start(&model, &python, free_port()).await;
    let ready = t0.elapsed();
    // A fresh connection per request: llama.cpp's server may close a
    // kept-alive connection after a streamed answer, and a request sent on
    // it then fails with an incomplete message.
    let http = reqwest::Client::builder()
        .timeout(REQUEST)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = server.url.clone();
    let chat = |stream: bool| {
        json!({
            "model": ALIAS,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "stream": stream,
        })
    };

    // Non-streaming chat completion.
    let resp = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat(false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("chat completion: {e}\n{}", server.log()));
    assert_eq!(resp.status(), 200, "{}", server.log());
    let body: Value = resp.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {body}"));
    assert!(!content.trim().is_empty(), "empty content in {body}");
    assert_eq!(body["model"], ALIAS, "{body}");
    let generated = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&generated), "{body}");

    // Streaming: server-sent events, one `data:` chunk per token, then [DONE].
    let resp = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat(true))
        .send()
        .await
        .unwrap_or_else(|e| panic!("streaming chat completion: {e}\n{}", server.log()));
    assert_eq!(resp.status(), 200, "{}", server.log());
    let mut text = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert!(data.len() >= 3, "too few SSE chunks:\n{text}");
    assert_eq!(
        data.last(),
        Some(&"[DONE]"),
        "stream does not end in [DONE]:\n{text}"
    );
    let mut streamed = String::new();
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d:?}: {e}"));
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        if let Some(s) = v["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(s);
        }
    }
    assert!(!streamed.trim().is_empty(), "no content streamed:\n{text}");

    // The model list names the alias.
    let models: Value = http
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {models}"))
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&ALIAS), "{ALIAS} not in {models}");

    // Prometheus metrics, counting the tokens generated above.
    let resp = http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let metrics = resp.text().await.unwrap();
    let predicted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("llamacpp:tokens_predicted_total "))
        .unwrap_or_else(|| panic!("no llamacpp:tokens_predicted_total in:\n{metrics}"));
    let predicted: f64 = predicted.trim().parse().unwrap();
    assert!(predicted >= 2.0, "{metrics}");

    // A client that goes away frees its slot: a long streaming request is
    // busy while read, and no longer counted soon after it is dropped.
    let mut long = chat(true);
    long["max_tokens"] = json!(1000);
    long["messages"] = json!([{"role": "user", "content": "Write a long story."}]);
    let resp = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    stream.next().await.expect("a first chunk").unwrap();
    assert_eq!(
        metric(&http, &url, "llamacpp:requests_processing").await,
        1.0
    );
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&http, &url, "llamacpp:requests_processing").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "slot still busy 5 s after the client went away\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = metric(&http, &url, "llamacpp:tokens_predicted_total").await;
    assert!(after < predicted + 500.0, "{after} tokens predicted in all");

    // SIGTERM: the launcher stops the server and exits 0 within seconds.
    let pid = server.child.id().expect("launcher still running");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let t1 = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .unwrap_or_else(|_| panic!("still running 10 s after SIGTERM\n{}", server.log()))
        .unwrap();
    assert!(
        status.success(),
        "exit {status} after SIGTERM\n{}",
        server.log()
    );
    let stopped = t1.elapsed();
    assert!(
        std::net::TcpStream::connect(url.trim_start_matches("http://")).is_err(),
        "port still answers after exit"
    );
    eprintln!("llama runtime: ready in {ready:?}, stopped in {stopped:?} after SIGTERM");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
async fn llama_server_names_a_missing_model_and_a_busy_port() {
    let python = env_path("ORCH_LLAMA_PYTHON");
    let model = env_path("ORCH_TEST_MODEL");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/llama-server.py");
    let run = |model: PathBuf, port: u16| {
        let python = python.clone();
        let script = script.clone();
        async move {
            tokio::time::timeout(
                REQUEST,
                Command::new(&python)
                    .arg(&script)
                    .arg("--model")
                    .arg(&model)
                    .args(["--port", &port.to_string(), "--alias", ALIAS])
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("launcher did not exit")
            .unwrap()
        }
    };

    let out = run(PathBuf::from("/nonexistent/model.gguf"), free_port()).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        err.contains("model file not found: /nonexistent/model.gguf"),
        "{err}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = run(model, port).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        err.contains(&format!("port {port} on 127.0.0.1 is in use")),
        "{err}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "system-tests"),
    ignore = "needs llama.cpp and the test model: run scripts/test"
)]
async fn llama_server_holds_every_completion_without_a_grammar_to_its_grammar_file() {
    let python = env_path("ORCH_LLAMA_PYTHON");
    let model = env_path("ORCH_TEST_MODEL");
    let dir = tempfile::tempdir().unwrap();
    let grammar = dir.path().join("answer.gbnf");
    std::fs::write(&grammar, "root ::= (\"yes\" | \"no\") \".\"\n").unwrap();
    let server = start_with(
        &model,
        &python,
        free_port(),
        &["--grammar-file", grammar.to_str().unwrap()],
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(REQUEST)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let ask = |body: Value| {
        let http = http.clone();
        let url = format!("{}/v1/chat/completions", server.url);
        async move {
            let resp = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.unwrap();
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_else(|| panic!("no content in {body}"))
                .to_owned()
        }
    };
    let question = |extra: Value| {
        let mut body = json!({
            "model": ALIAS,
            "messages": [{"role": "user", "content": "Write a long poem about the sea."}],
            "max_tokens": 16,
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for _ in 0..2 {
        let said = ask(question(json!({}))).await;
        assert!(
            said == "yes." || said == "no.",
            "{said:?}\n{}",
            server.log()
        );
    }
    // A request's own grammar wins over the file's.
    let said = ask(question(json!({"grammar": "root ::= \"maybe\""}))).await;
    assert_eq!(said, "maybe", "{}", server.log());

    let missing = dir.path().join("missing.gbnf");
    let out = tokio::time::timeout(
        REQUEST,
        Command::new(&python)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/llama-server.py"))
            .arg("--model")
            .arg(&model)
            .args(["--port", &free_port().to_string(), "--alias", ALIAS])
            .arg("--grammar-file")
            .arg(&missing)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("launcher did not exit")
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot read grammar file {}", missing.display())),
        "{err}"
    );
}
