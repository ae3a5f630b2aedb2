//! Who an agent or a human is, proved rather than asserted: each agent has
//! a credential of its own that binds its name, and the actor of every
//! recorded human action is the token's holder, whatever the request says.

mod common;

use common::{http, post_json, run_transitions, wait_for, Daemon, Harness, LONG};
use serde_json::{json, Value};

/// `orch agent-token create NAME`: the token, printed once.
fn create_token(h: &Harness, name: &str) -> String {
    let out = h.orch(&["agent-token", "create", name]);
    out.expect_code(0);
    let token = out.stdout.trim().to_owned();
    assert!(
        token.len() >= 32 && !token.contains(char::is_whitespace),
        "one token on stdout:\n{out}"
    );
    token
}

fn register(d: &Daemon, token: &str, name: &str) -> common::Response {
    post_json(d, "/v1/agents", token, &json!({"name": name, "slots": 1}))
}

#[test]
fn an_agent_token_binds_its_name_and_no_other_token_takes_it_over() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    let builder = create_token(&h, "builder");
    let other = create_token(&h, "other");
    assert_ne!(builder, other);

    // Stored hashed: the token is nowhere in the data directory.
    let db = std::fs::read(h.data.join("orch.db")).unwrap();
    assert!(
        !db.windows(builder.len()).any(|w| w == builder.as_bytes()),
        "the token is stored in clear"
    );

    let r = register(&d, &builder, "builder");
    assert_eq!(r.status, 200, "{}", r.text());
    let builder_id = r.json()["agent_id"].as_str().unwrap().to_owned();

    // Another agent's token, or the shared one, cannot register as builder:
    // that would void builder's leases.
    let r = register(&d, &other, "builder");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.error().contains("other"), "{}", r.error());
    let r = register(&d, &d.agent_token, "builder");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.error().contains("builder"), "{}", r.error());

    // Nor act for builder's agent id.
    let r = register(&d, &other, "other");
    assert_eq!(r.status, 200, "{}", r.text());
    for token in [&other, &d.agent_token] {
        for (what, body) in [
            ("heartbeat", json!({"leases": [], "wait_ms": 0})),
            ("claim", json!({"wait_ms": 0})),
        ] {
            let r = post_json(&d, &format!("/v1/agents/{builder_id}/{what}"), token, &body);
            assert_eq!(r.status, 403, "{what}: {}", r.text());
        }
    }
    let r = post_json(
        &d,
        "/v1/jobs/1/complete",
        &other,
        &json!({"agent_id": builder_id, "lease_token": "x",
                "outcome": {"success": true, "exit_codes": [], "duration_ms": 1, "bundle": "b"}}),
    );
    assert_eq!(r.status, 403, "{}", r.text());

    // The owner can.
    let r = post_json(
        &d,
        &format!("/v1/agents/{builder_id}/heartbeat"),
        &builder,
        &json!({"leases": [], "wait_ms": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // The list shows names, never tokens.
    let list = h.orch(&["agent-token", "list"]);
    list.expect_code(0);
    assert!(
        list.stdout.contains("builder") && list.stdout.contains("other"),
        "{list}"
    );
    assert!(
        !list.stdout.contains(&builder) && !list.stdout.contains(&other),
        "{list}"
    );

    // Revoked: refused at once, and the name stays bound.
    h.orch(&["agent-token", "revoke", "builder"]).expect_code(0);
    let r = post_json(
        &d,
        &format!("/v1/agents/{builder_id}/heartbeat"),
        &builder,
        &json!({"leases": [], "wait_ms": 0}),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.error().contains("revoked"), "{}", r.error());
    assert_eq!(register(&d, &d.agent_token, "builder").status, 403);
    let list = h.orch(&["agent-token", "list"]);
    assert!(
        list.stdout
            .lines()
            .any(|l| l.contains("builder") && l.contains("revoked")),
        "{list}"
    );
    // A name that is not one is refused, naming it.
    let bad = h.orch(&["agent-token", "create", ""]);
    assert_eq!(bad.code, 2, "{bad}");
    let bad = h.orch(&["agent-token", "revoke", "nobody"]);
    assert_ne!(bad.code, 0, "{bad}");
    assert!(bad.stderr.contains("nobody"), "{bad}");
}

#[test]
fn an_agent_with_its_own_token_runs_work_and_stops_when_revoked() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    let token = create_token(&h, "worker");
    h.spawn(
        "agent-worker",
        &[
            "agent",
            "--server",
            &d.url,
            "--agent-token",
            &token,
            "--name",
            "worker",
        ],
    );
    let wf = h.write(
        "ok.yaml",
        "name: ok\nstages:\n  - id: build\n    steps: [{commands: [{argv: [\"true\"]}]}]\n",
    );
    let run = h.submit(&wf);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");
    let agents = common::admin_get(&d, "/v1/agents");
    assert!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "worker"),
        "{agents:#}"
    );
}

#[test]
fn orch_up_gives_its_local_agent_a_credential_of_its_own() {
    let mut h = Harness::new();
    let d = h.start_up(&[]);
    let wf = h.write(
        "ok.yaml",
        "name: ok\nstages:\n  - id: build\n    steps: [{commands: [{argv: [\"true\"]}]}]\n",
    );
    let run = h.submit(&wf);
    assert_eq!(h.wait_run_end(&d, &run)["run"]["state"], "succeeded");
    let agents = common::admin_get(&d, "/v1/agents");
    let name = agents[0]["name"].as_str().unwrap().to_owned();
    // The shared token cannot take the local agent's name over.
    let r = register(&d, &d.agent_token, &name);
    assert_eq!(r.status, 403, "{}", r.text());
    let list = h.orch(&["agent-token", "list"]);
    assert!(list.stdout.contains(&name), "{list}");
}

/// Every human action of a run, by whoever the daemon knows the caller to be.
fn actors(d: &Daemon, run: &str) -> Vec<(String, String)> {
    run_transitions(d, run)
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["actor"].as_str().unwrap_or("").starts_with("user:"))
        .map(|t| {
            (
                t["actor"].as_str().unwrap().to_owned(),
                t["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_actor_recorded_is_the_token_holder_and_by_only_a_note() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "worker", 1);
    let wf = h.write(
        "gated.yaml",
        r#"
name: gated
stages:
  - id: review
    steps:
      - approve: true
        artifacts: [seen.md]
        commands:
          - argv: [sh, -c, 'touch seen.md; if [ -n "$ORCH_FEEDBACK_FILE" ]; then cat "$ORCH_FEEDBACK_FILE" > seen.md; fi']
      - input: {question: "Ship it?", choices: ["yes", "no"]}
"#,
    );
    let run = h.submit(&wf);
    let waiting = |state: &'static str| {
        wait_for(state, LONG, || {
            let d = h.show(&run);
            (d["stages"][0]["state"] == state).then_some(d)
        })
    };
    waiting("awaiting_approval");
    h.orch(&[
        "reject",
        &run,
        "review",
        "--feedback",
        "again",
        "--by",
        "root\nforged: yes",
    ])
    .expect_code(0);
    wait_for("the step to run again", LONG, || {
        let d = h.show(&run);
        (d["stages"][0]["state"] == "awaiting_approval" && d["jobs"].as_array().unwrap().len() == 2)
            .then_some(())
    });
    // Through the API, a body naming another actor changes nothing but the note.
    let r = post_json(
        &d,
        &format!("/v1/runs/{run}/stages/review/approve"),
        &d.admin_token,
        &json!({"by": "mallory"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let detail = waiting("awaiting_input");
    let qid = detail["questions"][0]["id"].as_i64().unwrap().to_string();
    h.orch(&["answer", &run, &qid, "yes", "--by", "carol"])
        .expect_code(0);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail:#}");

    let log = actors(&d, &run);
    assert!(!log.is_empty());
    for (actor, _) in &log {
        assert!(
            actor.starts_with("user:admin"),
            "the actor is the token's holder: {log:?}"
        );
        assert!(!actor.contains('\n'), "{log:?}");
    }
    assert!(
        log.iter().any(|(a, _)| a == "user:admin (said: mallory)"),
        "{log:?}"
    );
    assert!(
        log.iter().any(|(a, _)| a == "user:admin (said: carol)"),
        "{log:?}"
    );
    assert_eq!(
        detail["questions"][0]["answered_by"],
        "user:admin (said: carol)"
    );
    let shown = h.orch(&["show", &run]);
    assert!(!shown.stdout.contains("user:carol"), "{shown}");
    assert!(!shown.stdout.contains("user:mallory"), "{shown}");

    // The feedback the step was handed names the admin, the claim quoted.
    let feedback = common::git(&h.project, &["show", &format!("orch/run/{run}:seen.md")]);
    assert!(feedback.contains("again"), "{feedback}");
    assert!(feedback.contains("user:admin"), "{feedback}");
    assert!(!feedback.contains("\nforged: yes"), "{feedback}");

    // A dashboard session is recorded as such, whatever it claims.
    let run2 = h.submit(&wf);
    wait_for("the second run to wait", LONG, || {
        let d = h.show(&run2);
        (d["stages"][0]["state"] == "awaiting_approval").then_some(())
    });
    let link = http(
        &d,
        "POST",
        "/v1/dashboard/links",
        Some(&d.admin_token),
        Some(b"{}"),
    );
    assert_eq!(link.status, 200, "{}", link.text());
    let url = link.json()["url"].as_str().unwrap().to_owned();
    let ticket = url.split_once("#ticket=").unwrap().1.to_owned();
    let session = post_json(
        &d,
        "/v1/dashboard/session",
        "",
        &json!({ "ticket": ticket }),
    );
    assert_eq!(session.status, 200, "{}", session.text());
    let session: Value = session.json();
    let st = session["token"].as_str().unwrap().to_owned();
    let r = post_json(
        &d,
        &format!("/v1/runs/{run2}/stages/review/approve"),
        &st,
        &json!({"by": "dashboard"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let log = actors(&d, &run2);
    assert!(log.iter().any(|(a, _)| a == "user:dashboard"), "{log:?}");
    h.orch(&["cancel", &run2]).expect_code(0);
}

#[test]
fn a_daemon_that_refuses_the_shared_token_takes_only_agents_own_tokens() {
    let mut h = Harness::new();
    // A shared token left from before the operator turned it off.
    std::fs::write(h.data.join("agent.token"), "shared-left-from-before\n").unwrap();
    let d = h.start_daemon(&["--no-shared-agent-token"]);
    let r = register(&d, "shared-left-from-before", "anyone");
    assert_eq!(r.status, 401, "{}", r.text());
    let own = create_token(&h, "builder");
    let r = register(&d, &own, "builder");
    assert_eq!(r.status, 200, "{}", r.text());
}
