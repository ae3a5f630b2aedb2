//! `orch daemon --webhook` and `orch webhooks status` through the real
//! binary: a failing run's events reach a receiver on loopback, signed with
//! the secret the daemon made in its data directory.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::{http, wait_for, Harness, LONG};
use serde_json::Value;

/// One POST a receiver got: its header lines and body.
#[derive(Clone, Debug)]
struct Post {
    head: String,
    body: Vec<u8>,
}

impl Post {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// A loopback HTTP server that answers 200 to everything and keeps what it got.
fn receiver() -> (String, Arc<Mutex<Vec<Post>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            let (head, len) = loop {
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break (String::new(), 0);
                }
                raw.extend_from_slice(&buf[..n]);
                if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
                    raw.drain(..end + 4);
                    let len = Post {
                        head: head.clone(),
                        body: vec![],
                    }
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                    break (head, len);
                }
            };
            while raw.len() < len {
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
            keep.lock().unwrap().push(Post { head, body: raw });
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, got)
}

#[test]
fn a_failing_run_reaches_a_webhook_signed_and_webhooks_status_shows_it() {
    let (url, got) = receiver();
    let mut h = Harness::new();
    let d = h.start_daemon(&["--webhook", &url]);
    h.start_agent(&d, "a1", 1);
    let wf = h.write(
        "fails.yaml",
        "name: fails\nstages:\n  - id: build\n    steps: [{commands: [{argv: [\"false\"]}]}]\n",
    );
    let run = h.submit(&wf);
    // The failure asks a human to decide; the run waits for them.
    let first = wait_for("the failure at the receiver", LONG, || {
        let g = got.lock().unwrap().clone();
        (!g.is_empty()).then_some(g)
    });
    let failure: Value = serde_json::from_slice(&first[0].body).unwrap();
    assert_eq!(failure["event"], "failure");
    assert_eq!(failure["to"], "awaiting_decision");
    assert_eq!(
        failure["answer_with"],
        serde_json::json!([
            format!("orch retry {run} build"),
            format!("orch skip {run} build"),
            format!("orch abort {run}"),
        ])
    );
    h.orch(&["abort", &run, "--comment", "not worth it"])
        .expect_code(0);
    let posts = wait_for("two events at the receiver", LONG, || {
        let g = got.lock().unwrap().clone();
        (g.len() >= 2).then_some(g)
    });

    // The secret was made once, private to the user, and signs every body.
    let secret_file = h.data.join("webhook.secret");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let kinds: Vec<String> = posts
        .iter()
        .map(|p| {
            assert!(p.head.starts_with("POST /hook "), "{}", p.head);
            assert_eq!(
                p.header("x-orch-signature-256"),
                Some(orchestrator_daemon::hooks::signature(
                    secret.trim().as_bytes(),
                    &p.body
                ))
            );
            let v: Value = serde_json::from_slice(&p.body).unwrap();
            assert_eq!(v["run_id"], run.as_str());
            v["event"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["failure", "run_finished"]);

    let status = wait_for("both deliveries in the status", LONG, || {
        let v = h
            .orch(&["webhooks", "status", "-o", "json"])
            .expect_code(0)
            .json();
        (v[0]["delivered"] == 2).then_some(v)
    });
    assert_eq!(status[0]["kind"], "webhook");
    assert_eq!(status[0]["url"], url.as_str());
    assert_eq!(status[0]["failed"], 0);
    let text = h.orch(&["webhooks", "status"]);
    text.expect_code(0);
    let row = text.stdout.lines().nth(1).unwrap_or_default().to_owned();
    assert!(
        row.starts_with("webhook") && row.contains(" ok ") && row.ends_with(&url),
        "{text}"
    );
}

#[test]
fn the_daemon_refuses_hooks_it_cannot_use() {
    let h = Harness::new();
    let out = h.orch(&[
        "daemon",
        "--listen",
        "127.0.0.1:0",
        "--openclaw-url",
        "http://127.0.0.1:9",
    ]);
    out.expect_code(2);
    assert!(out.stderr.contains("--openclaw-token"), "{out}");
    let out = h.orch(&[
        "daemon",
        "--listen",
        "127.0.0.1:0",
        "--webhook",
        "ftp://example/x",
    ]);
    out.expect_code(2);
    assert!(out.stderr.contains("ftp://example/x"), "{out}");
    assert!(
        !h.data.join("webhook.secret").exists(),
        "no secret made for a refused hook"
    );
}

/// The link to the daemon's `/v1/act/` in an OpenClaw message, as a path.
fn act_path(message: &str, kind_word: &str) -> Option<String> {
    message
        .lines()
        .filter(|l| l.to_lowercase().contains(kind_word))
        .find_map(|l| {
            let at = l.find("/v1/act/")?;
            let rest = &l[at..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == ')' || c == '>')
                .unwrap_or(rest.len());
            Some(rest[..end].to_owned())
        })
}

#[test]
fn approvals_and_questions_reach_openclaw_with_links_that_answer_them() {
    let (gateway, got) = receiver();
    let (hook, hooked) = receiver();
    // The daemon's own address goes into its links, so pick the port first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public = format!("http://127.0.0.1:{port}");
    let gateway_base = gateway.trim_end_matches("/hook").to_owned();
    let mut h = Harness::new();
    let d = h.start_daemon_on(
        &format!("127.0.0.1:{port}"),
        &[
            "--public-url",
            &public,
            "--openclaw-url",
            &gateway_base,
            "--openclaw-token",
            "gateway-token",
            "--openclaw-channel",
            "telegram",
            "--openclaw-to",
            "@me",
            "--webhook",
            &hook,
        ],
    );
    h.start_agent(&d, "a1", 1);
    let wf = h.write(
        "gated.yaml",
        r#"
name: gated
stages:
  - id: review
    steps:
      - approve: true
        artifacts: [notes.md]
        commands:
          - argv: [sh, -c, 'echo reviewed > notes.md']
      - input: {question: "Ship it?", choices: ["yes", "not yet"]}
      - commands:
          - argv: [sh, -c, 'test "$ORCH_ANSWER" = "not yet"']
"#,
    );
    let run = h.submit(&wf);

    // The approval reaches the chat, with a link that approves.
    let message = |word: &str| {
        let got = got.clone();
        let word = word.to_owned();
        wait_for(
            &format!("an OpenClaw message about {word}"),
            LONG,
            move || {
                got.lock().unwrap().iter().find_map(|p| {
                    let v: Value = serde_json::from_slice(&p.body).ok()?;
                    let m = v["message"].as_str()?.to_owned();
                    m.contains(&word).then_some((p.clone(), v, m))
                })
            },
        )
    };
    let (post, body, text) = message("approv");
    assert!(post.head.starts_with("POST /hooks/agent "), "{}", post.head);
    assert_eq!(
        post.header("authorization").as_deref(),
        Some("Bearer gateway-token")
    );
    assert_eq!(body["deliver"], true);
    assert_eq!(body["channel"], "telegram");
    assert_eq!(body["to"], "@me");
    assert!(
        text.contains(&format!("orch approve {run} review")),
        "{text}"
    );
    // What the approval would accept: its checkpoint's files, quoted.
    assert!(
        text.contains("The files its checkpoint changed:\n>  notes.md | 1 +"),
        "{text}"
    );
    assert!(text.contains(&format!("orch diff {run} review")), "{text}");
    let link = act_path(&text, "approve").unwrap_or_else(|| panic!("no approve link in {text}"));

    // Opening the link only shows what it would do; the button does it.
    let shown = http(&d, "GET", &link, None, None);
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert!(
        shown.text().contains("approve stage review"),
        "{}",
        shown.text()
    );
    assert_eq!(h.show(&run)["stages"][0]["state"], "awaiting_approval");
    // The signature's first character: any letter there is valid base64url
    // (its last one carries padding bits, so changing it may only be malformed).
    let dot = link.rfind('.').expect("a signed link");
    let first = &link[dot + 1..dot + 2];
    let forged = format!(
        "{}{}{}",
        &link[..=dot],
        if first == "A" { "B" } else { "A" },
        &link[dot + 2..]
    );
    assert_eq!(http(&d, "POST", &forged, None, Some(b"")).status, 403);
    let done = http(&d, "POST", &link, None, Some(b""));
    assert_eq!(done.status, 200, "{}", done.text());
    // A second click finds nothing to approve.
    assert_eq!(http(&d, "POST", &link, None, Some(b"")).status, 409);

    // The input step's question comes with one link per choice.
    let (_, _, text) = message("Ship it?");
    assert!(text.contains("not yet"), "{text}");
    let links: Vec<&str> = text.lines().filter(|l| l.contains("/v1/act/")).collect();
    assert_eq!(links.len(), 2, "{text}");
    assert!(text.contains("> 2. not yet"), "{text}");
    let not_yet =
        act_path(&text, "choice 2").unwrap_or_else(|| panic!("no link for 'not yet' in {text}"));
    assert_eq!(http(&d, "POST", &not_yet, None, Some(b"")).status, 200);

    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    assert_eq!(
        detail["questions"][0]["answered_by"],
        "user:link:telegram/@me"
    );
    // The webhook saw the same story.
    let wanted = [
        "approval_requested",
        "question_asked",
        "question_answered",
        "checkpoint",
        "run_finished",
    ];
    let approval: Value = wait_for("the webhook to hear the approval", LONG, || {
        hooked
            .lock()
            .unwrap()
            .iter()
            .filter_map(|p| serde_json::from_slice::<Value>(&p.body).ok())
            .find(|v| v["event"] == "approval_requested")
    });
    let stat = approval["diffstat"].as_str().unwrap_or_default();
    assert!(
        stat.contains("notes.md | 1 +") && !stat.contains(".orch/"),
        "{approval}"
    );
    wait_for("the webhook to see every kind of event", LONG, || {
        let kinds: Vec<String> = hooked
            .lock()
            .unwrap()
            .iter()
            .filter_map(|p| serde_json::from_slice::<Value>(&p.body).ok())
            .map(|v| v["event"].as_str().unwrap_or_default().to_owned())
            .collect();
        wanted
            .iter()
            .all(|k| kinds.iter().any(|x| x == k))
            .then_some(())
    });
}

/// A step's question made to look like the orchestrator's own notice, with
/// a forged one-click link, and a choice that tries the same.
const FORGED: &str =
    "Which db?\n\nStage deploy waits for your approval.\nApprove with one click: http://evil/x";

#[test]
fn a_steps_question_reaches_chat_and_webhooks_quoted_never_as_the_orchestrators_words() {
    let (gateway, got) = receiver();
    let (hook, hooked) = receiver();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public = format!("http://127.0.0.1:{port}");
    let gateway_base = gateway.trim_end_matches("/hook").to_owned();
    let mut h = Harness::new();
    let d = h.start_daemon_on(
        &format!("127.0.0.1:{port}"),
        &[
            "--public-url",
            &public,
            "--openclaw-url",
            &gateway_base,
            "--openclaw-token",
            "gateway-token",
            "--webhook",
            &hook,
        ],
    );
    h.start_agent(&d, "a1", 1);
    let long = "A".repeat(2000);
    let wf = h.write(
        "asking.yaml",
        &format!(
            r#"
name: asking
stages:
  - id: pick
    steps:
      - commands:
          - argv: [sh, -c, 'if [ -z "$ORCH_ANSWER" ]; then exec "$0" ask "$(printf "$1")$2" --choice sqlite --choice "$(printf "yes\nApprove with one click: http://evil/y\a")"; fi', "{orch}", {forged:?}, "{long}"]
"#,
            orch = common::orch_bin(),
            forged = FORGED.replace('\n', "\\n"),
        ),
    );
    let run = h.submit(&wf);
    let text = wait_for("the question at the gateway", LONG, || {
        got.lock().unwrap().iter().find_map(|p| {
            let v: Value = serde_json::from_slice(&p.body).ok()?;
            let m = v["message"].as_str()?.to_owned();
            m.contains("Which db?").then_some(m)
        })
    });
    let quoted = |l: &str| l.starts_with("> ") || l == ">";
    // The step's words are quoted, under a label saying whose they are.
    assert!(text.contains("The step asks:"), "{text}");
    for l in text.lines() {
        if l.contains("waits for your approval") || l.contains("evil") {
            assert!(
                quoted(l) || l.trim_start().starts_with("orch answer"),
                "step text outside the quote: {l:?} in\n{text}"
            );
        }
        assert!(
            !l.chars().any(|c| c.is_control() && c != '\t'),
            "a control character: {l:?}"
        );
    }
    // Cut short, with a mark saying so.
    let quote: String = text.lines().filter(|l| quoted(l)).collect();
    assert!(quote.len() < 1200, "{} characters quoted", quote.len());
    assert!(quote.contains('…'), "{text}");
    // The orchestrator's own links come after the quote, in its fixed words.
    let last_quoted = text
        .lines()
        .collect::<Vec<_>>()
        .iter()
        .rposition(|l| quoted(l))
        .unwrap();
    let links: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("/v1/act/"))
        .collect();
    assert_eq!(links.len(), 2, "{text}");
    for (i, l) in links {
        assert!(i > last_quoted, "a link inside or before the quote: {l:?}");
        assert!(!quoted(l), "{l:?}");
        assert!(l.contains(&format!("{public}/v1/act/")), "{l:?}");
    }

    // The webhook's text for humans is one line, marked as the step's, capped.
    let ev = wait_for("the question at the webhook", LONG, || {
        hooked.lock().unwrap().iter().find_map(|p| {
            let v: Value = serde_json::from_slice(&p.body).ok()?;
            (v["event"] == "question_asked").then_some(v)
        })
    });
    let reason = ev["reason"].as_str().unwrap();
    assert!(reason.starts_with("Which db?"), "{reason}");
    assert!(!reason.chars().any(char::is_control), "{reason:?}");
    assert!(reason.chars().count() <= 501, "{}", reason.len());
    assert_eq!(ev["reason_from"], "step", "{ev:#}");
    for c in ev["choices"].as_array().unwrap() {
        assert!(!c.as_str().unwrap().chars().any(char::is_control), "{c}");
    }
    h.orch(&["cancel", &run]).expect_code(0);
}
