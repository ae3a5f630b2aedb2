//! One-time credentials on both backends: a link acts only on the request
//! it was sent for and only once, tickets are spent once, and logged-out
//! sessions and the revocation of all of them stay after the store is
//! opened again.

mod common;

use common::*;
use orchestrator_core::api::RunDetail;
use orchestrator_core::RunId;
use orchestrator_host::now_ms;
use orchestrator_store::{
    Credential, HumanCommand, LinkTarget, LinkUse, Refused, SqlStore, StoreError,
};

const GATED: &str = "name: gated\nstages:\n  - id: review\n    steps:\n      - approve: true\n        commands: [{argv: ['true']}]\n";

/// The `seq` of the stage's latest transition: what a link sent now names.
async fn round_of(s: &SqlStore, run: &RunId) -> i64 {
    s.transitions_since(0, Some(run.to_owned()), 1_000)
        .await
        .unwrap()
        .iter()
        .filter(|t| t.entity_id == format!("{run}/review"))
        .map(|t| t.seq)
        .max()
        .unwrap()
}

fn approve() -> HumanCommand {
    HumanCommand::Approve {
        stage_id: "review".into(),
        comment: None,
    }
}

fn link(id: &str, round: i64) -> LinkUse {
    LinkUse {
        id: id.into(),
        target: LinkTarget::Stage("review".into()),
        round,
        expires_at_ms: now_ms() + 3_600_000,
    }
}

async fn awaiting(s: &SqlStore, run: &RunId) -> bool {
    let d: RunDetail = s.run_detail(run).await.unwrap();
    d.stages[0].state.as_str() == "awaiting_approval"
}

#[tokio::test]
async fn a_link_acts_only_on_its_round_and_only_once_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let run = s.submit_run(new_run(GATED)).await.unwrap().run_id;
    let a = agent(&s, "a", 1, &[]).await;
    let job = s.claim(&a, TTL).await.unwrap().unwrap();
    complete_ok(&s, &a, &job).await;
    let first = round_of(&s, &run).await;
    s.human(
        &run,
        HumanCommand::Reject {
            stage_id: "review".into(),
            feedback: "again".into(),
        },
        &orchestrator_core::Actor::user("test"),
    )
    .await
    .unwrap();
    let job = s.claim(&a, TTL).await.unwrap().unwrap();
    complete_ok(&s, &a, &job).await;
    assert!(awaiting(&s, &run).await);
    let second = round_of(&s, &run).await;

    let stale = s
        .human_by_link(
            &run,
            approve(),
            &orchestrator_core::Actor::user("link"),
            link("old", first),
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::Refused(Refused::Superseded { .. }))),
        "{stale:?}"
    );
    assert!(awaiting(&s, &run).await, "nothing was done");
    s.human_by_link(
        &run,
        approve(),
        &orchestrator_core::Actor::user("link"),
        link("new", second),
    )
    .await
    .unwrap();
    s.close().await;
    drop(s);

    let s = open(&dir);
    let again = s
        .human_by_link(
            &run,
            approve(),
            &orchestrator_core::Actor::user("link"),
            link("new", second),
        )
        .await;
    assert!(
        matches!(again, Err(StoreError::Refused(Refused::Used { .. }))),
        "{again:?}"
    );
    s.close().await;
}

#[tokio::test]
async fn tickets_spend_once_and_revocations_outlive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let later = now_ms() + 600_000;
    s.spend(Credential::Ticket, "n1".into(), later)
        .await
        .unwrap();
    s.spend(Credential::Session, "s1".into(), later)
        .await
        .unwrap();
    s.revoke_sessions(1_000).await.unwrap();
    s.revoke_sessions(500).await.unwrap();
    s.close().await;
    drop(s);

    let s = open(&dir);
    let twice = s.spend(Credential::Ticket, "n1".into(), later).await;
    assert!(
        matches!(twice, Err(StoreError::Refused(Refused::Used { .. }))),
        "{twice:?}"
    );
    // A ticket and a link may share an id: they are different credentials.
    s.spend(Credential::Link, "n1".into(), later).await.unwrap();
    let r = s.revocations().await.unwrap();
    assert_eq!(r.before_ms, Some(1_000), "the latest revocation holds");
    assert_eq!(r.sessions, vec![("s1".to_owned(), later)]);
    s.close().await;
}
