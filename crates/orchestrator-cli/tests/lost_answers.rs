//! Answers lost on the way back to an agent: the daemon committed a claim or
//! a completion, then the connection dropped before the agent heard. A
//! loopback proxy between agent and daemon forwards everything except the
//! first successful answer to a claim and to a completion, which it
//! swallows by closing the connection. The agent asks again under the same
//! claim key and gets the job the lost answer carried: every step runs
//! once, in its stage's first attempt, with no lease left to expire.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::*;

/// A proxy to the daemon on `upstream` that swallows, once each, the first
/// 200 answer to a request whose request line contains one of `rules`.
///
/// It reads HTTP/1.1 off the wire itself, on purpose: it stands between the
/// agent and the daemon, and must cut the connection after the daemon
/// answered and before the agent heard, which no client can do. The test's
/// own requests go through `orchestrator-client` (`common`).
struct LossyProxy {
    port: u16,
    /// The request lines whose answers were swallowed.
    swallowed: Arc<Mutex<Vec<String>>>,
}

fn lossy_proxy(upstream: u16, rules: &[&'static str]) -> LossyProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let rules = Arc::new(Mutex::new(rules.to_vec()));
    let swallowed = Arc::new(Mutex::new(Vec::new()));
    let out = swallowed.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let (rules, swallowed) = (rules.clone(), swallowed.clone());
            std::thread::spawn(move || {
                let _ = relay(client, upstream, &rules, &swallowed);
            });
        }
    });
    LossyProxy {
        port,
        swallowed: out,
    }
}

/// One client connection: request by request (HTTP/1.1, no pipelining).
fn relay(
    client: TcpStream,
    upstream: u16,
    rules: &Mutex<Vec<&'static str>>,
    swallowed: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut to_server = server.try_clone()?;
    let mut from_server = BufReader::new(server);
    let mut to_client = client.try_clone()?;
    let mut from_client = BufReader::new(client);
    loop {
        let Some(request) = read_message(&mut from_client, false)? else {
            return Ok(());
        };
        let line = String::from_utf8_lossy(
            &request[..request.iter().position(|&b| b == b'\r').unwrap_or(0)],
        )
        .into_owned();
        to_server.write_all(&request)?;
        let Some(answer) = read_message(&mut from_server, true)? else {
            return Ok(());
        };
        if answer.starts_with(b"HTTP/1.1 200") {
            let mut rules = rules.lock().unwrap();
            if let Some(i) = rules.iter().position(|r| line.contains(r)) {
                rules.remove(i);
                swallowed.lock().unwrap().push(line);
                // Closing both ends: the agent sees the connection drop.
                return Ok(());
            }
        }
        to_client.write_all(&answer)?;
    }
}

/// One HTTP message, head and body, as it came; None at a clean end.
fn read_message(r: &mut BufReader<TcpStream>, answer: bool) -> std::io::Result<Option<Vec<u8>>> {
    let mut raw = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut raw)?;
        if n == 0 {
            return Ok(None);
        }
        if raw.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let no_body = answer && (head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304"));
    if no_body {
        return Ok(Some(raw));
    }
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        loop {
            let start = raw.len();
            r.read_until(b'\n', &mut raw)?;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&raw[start..])
                    .trim()
                    .split(';')
                    .next()
                    .unwrap_or("0"),
                16,
            )
            .unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            raw.extend_from_slice(&chunk);
            if size == 0 {
                return Ok(Some(raw));
            }
        }
    }
    let len: usize = header("content-length:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    raw.extend_from_slice(&body);
    Ok(Some(raw))
}

#[test]
fn a_lost_claim_answer_and_a_lost_completion_answer_lose_no_work() {
    let mut h = Harness::new();
    // Short leases: a lease the agent never heard of would expire within
    // the test and show as a second attempt.
    let d = h.start_daemon(&["--lease-ttl-ms", "3000", "--heartbeat-ms", "500"]);
    let proxy = lossy_proxy(d.port, &["/claim", "/complete"]);
    let server = format!("http://127.0.0.1:{}", proxy.port);
    h.spawn(
        "agent-a1",
        &["agent", "--server", &server, "--slots", "1", "--name", "a1"],
    );
    let file = h.project.join("steps.yaml");
    std::fs::write(
        &file,
        "name: steps\nstages:\n  - id: first\n    steps:\n      - commands: [{argv: [\"true\"]}]\n      - commands: [{argv: [\"true\"]}]\n      - commands: [{argv: [\"true\"]}]\n  - id: then\n    needs: [first]\n    steps:\n      - commands: [{argv: [\"true\"]}]\n      - commands: [{argv: [\"true\"]}]\n",
    )
    .unwrap();
    let run = h.submit(&file);
    let end = h.wait_run_end(&d, &run);
    assert_eq!(end["run"]["state"], "succeeded", "{end:#}");

    let swallowed = proxy.swallowed.lock().unwrap().clone();
    assert_eq!(
        swallowed.len(),
        2,
        "both answers were swallowed: {swallowed:?}"
    );
    assert!(swallowed[0].contains("/claim"), "{swallowed:?}");
    assert!(swallowed[1].contains("/complete"), "{swallowed:?}");

    // Each step ran once, in its stage's first attempt.
    let detail = run_detail(&d, &run);
    let jobs = detail["jobs"].as_array().unwrap();
    let mut steps: Vec<(String, u64, u64, String)> = jobs
        .iter()
        .map(|j| {
            (
                j["stage_id"].as_str().unwrap().to_owned(),
                j["step"].as_u64().unwrap(),
                j["attempt"].as_u64().unwrap(),
                j["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    steps.sort();
    let want: Vec<(String, u64, u64, String)> = [
        ("first", 0),
        ("first", 1),
        ("first", 2),
        ("then", 0),
        ("then", 1),
    ]
    .iter()
    .map(|(s, i)| ((*s).to_owned(), *i, 1, "succeeded".to_owned()))
    .collect();
    assert_eq!(steps, want);

    // Nothing expired or was refused: the log says so.
    let log = run_transitions(&d, &run);
    let reasons: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["reason"].as_str())
        .collect();
    assert!(
        !reasons
            .iter()
            .any(|r| r.contains("expired") || r.contains("refused") || r.contains("lost")),
        "{reasons:#?}"
    );
}
