//! The agent's half of `orch ask --wait`: a running step's question comes
//! in at once under the job's lease, and the agent long-polls for its
//! answer. Everything is in the store (the question, its state, its
//! answer), so a restarted daemon answers the same polls: the agent just
//! asks again. Each poll proves the job's live lease: a step's questions
//! are readable only by the agent running that step, and only while it runs.

use orchestrator_core::JobId;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::{Extension, Json};
use orchestrator_core::api::{QuestionState, WaitAsk, WaitPoll, WaitStatus};
use orchestrator_core::Entity;

use crate::auth::Principal;
use crate::error::{ApiErr, JsonBody};
use crate::extract::Path;
use crate::App;

/// `POST /v1/jobs/{id}/questions`: the running step asks and waits; the
/// question (open) with its id.
pub async fn ask(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path(job_id): Path<JobId>,
    JsonBody(req): JsonBody<WaitAsk>,
) -> Result<Json<WaitStatus>, ApiErr> {
    crate::ident::check_agent(&app, &who, &req.agent_id).await?;
    let poll = WaitPoll {
        agent_id: req.agent_id.clone(),
        lease_token: req.lease_token.clone(),
        question_id: 0,
        wait_ms: 0,
    };
    let question_id = app.store.ask_waiting(job_id, req).await?;
    tracing::info!(%job_id, question_id, "a running step asks and waits");
    let status = app
        .store
        .wait_status(
            job_id,
            WaitPoll {
                question_id,
                ..poll
            },
        )
        .await?;
    Ok(Json(status))
}

/// `POST /v1/jobs/{id}/questions/{qid}/wait`: the question's state, as soon
/// as it is answered or closed, or after `wait_ms` with it still open.
pub async fn wait(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path((job_id, question_id)): Path<(JobId, i64)>,
    JsonBody(mut poll): JsonBody<WaitPoll>,
) -> Result<Json<WaitStatus>, ApiErr> {
    use tokio::sync::broadcast::error::RecvError;
    crate::ident::check_agent(&app, &who, &poll.agent_id).await?;
    poll.question_id = question_id;
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(poll.wait_ms.min(app.config.max_claim_wait_ms));
    let suffix = format!("/{question_id}");
    // Subscribed before looking, so an answer committed in between still wakes us.
    let mut live = app.store.subscribe();
    loop {
        let status = app.store.wait_status(job_id, poll.clone()).await?;
        if status.state != QuestionState::Open || tokio::time::Instant::now() >= deadline {
            return Ok(Json(status));
        }
        // Until this question changes (or its lease ends: the next look
        // refuses it), the deadline or shutdown.
        loop {
            let batch = tokio::select! {
                b = live.recv() => b,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = app.shutdown.cancelled() => break,
            };
            match batch {
                Ok(b) => {
                    if b.iter().any(|t| {
                        (t.entity == Entity::Question && t.entity_id.ends_with(&suffix))
                            || t.entity == Entity::Lease
                    }) {
                        break;
                    }
                }
                // Missed batches may have held the answer: look again.
                Err(RecvError::Lagged(_)) => break,
                // The store is closing: say where the question stands now.
                Err(RecvError::Closed) => {
                    return Ok(Json(app.store.wait_status(job_id, poll).await?))
                }
            }
        }
        if app.shutdown.is_cancelled() {
            return Ok(Json(app.store.wait_status(job_id, poll).await?));
        }
    }
}

/// `POST /v1/jobs/{id}/questions/{qid}/withdraw`: the step stopped
/// waiting; an open question closes and the stage runs on.
pub async fn withdraw(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path((job_id, question_id)): Path<(JobId, i64)>,
    JsonBody(mut poll): JsonBody<WaitPoll>,
) -> Result<Json<WaitStatus>, ApiErr> {
    crate::ident::check_agent(&app, &who, &poll.agent_id).await?;
    poll.question_id = question_id;
    Ok(Json(app.store.withdraw_wait(job_id, poll).await?))
}
