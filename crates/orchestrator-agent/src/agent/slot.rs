//! One slot's loop: claim (or take the job handed out with the last
//! completion), run the step, complete it, again; and what a completion does
//! when the daemon cannot be reached, or the agent is stopping.

use orchestrator_core::AgentId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use orchestrator_client::ClientError;
use orchestrator_core::api::{ClaimedJob, CompleteRequest, StepOutcome};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::backoff::Backoff;
use super::session::{Held, Session, Shared};
use super::{lock, CLAIM_WAIT_MS, SHUTDOWN_COMPLETE_WINDOW, SHUTTING_DOWN};
use crate::step::{run_step_with, CancelReason, StepContext};

/// One slot: claim, run, complete, again, until the agent stops.
pub(super) async fn slot_loop(shared: &Shared, slot: u32) -> Result<(), ClientError> {
    let mut backoff = Backoff::new();
    // A job handed out with the previous completion, run without claiming.
    let mut handed: Option<ClaimedJob> = None;
    // Kept until a claim is answered, so asking again after an error gets
    // the job a lost answer carried.
    let mut key: Option<String> = None;
    loop {
        if shared.stop.is_cancelled() {
            return Ok(());
        }
        let session = shared.session();
        let answer = match handed.take() {
            Some(job) => Ok(Some(job)),
            None => {
                let key = key.get_or_insert_with(claim_key);
                tokio::select! {
                    answer = shared.client.claim(&session.agent_id, CLAIM_WAIT_MS, key) => answer,
                    () = shared.stop.cancelled() => return Ok(()),
                }
            }
        };
        if answer.is_ok() {
            key = None;
        }
        match answer {
            Ok(None) => backoff.reset(),
            Ok(Some(job)) => {
                backoff.reset();
                let span = tracing::info_span!(
                    "job",
                    run_id = %job.spec.run_id,
                    stage_id = %job.spec.stage_id,
                    job_id = %job.job_id,
                    slot
                );
                handed = run_job(shared, &session, job).instrument(span).await?;
            }
            Err(ClientError::UnknownAgent { .. }) => {
                if !shared.reregister(&session).await? || !backoff.sleep(&shared.stop).await {
                    return Ok(());
                }
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(slot, error = %e, "claim failed; retrying");
                if !backoff.sleep(&shared.stop).await {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A fresh key for one claim: unique among this agent's claims.
pub(super) fn claim_key() -> String {
    let mut bytes = [0u8; 12];
    // Without randomness, time and a counter are unique enough within one
    // agent, which is all a key must be.
    if getrandom::fill(&mut bytes).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes[..8].copy_from_slice(&now.to_le_bytes());
        bytes[8..].copy_from_slice(&(COUNTER.fetch_add(1, Ordering::Relaxed) as u32).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one claimed job under its lease and reports it, unless the lease was
/// revoked meanwhile. Returns the next job when the daemon handed one out
/// with the completion.
pub(super) async fn run_job(
    shared: &Shared,
    session: &Session,
    job: ClaimedJob,
) -> Result<Option<ClaimedJob>, ClientError> {
    tracing::debug!(
        step = job.spec.step,
        attempt = job.spec.attempt,
        "job claimed"
    );
    let kill = CancellationToken::new();
    let reason = CancelReason::new();
    let revoked = Arc::new(AtomicBool::new(false));
    lock(&shared.leases).insert(
        job.job_id,
        Held {
            lease_token: job.lease_token.clone(),
            kill: kill.clone(),
            reason: reason.clone(),
            revoked: revoked.clone(),
        },
    );
    let ctx = StepContext {
        agent_id: session.agent_id.clone(),
        hostname: shared.hostname.clone(),
        cancel_reason: reason.clone(),
        asks: Some(shared.asks.clone()),
        has_gpus: !shared.register.gpus.is_empty(),
        sandbox: shared.sandbox.clone(),
        daemon_url: Some(shared.server.clone()),
    };
    let step = run_step_with(&job, &ctx, kill.clone());
    tokio::pin!(step);
    let outcome = tokio::select! {
        outcome = &mut step => outcome,
        () = shared.stop.cancelled() => {
            reason.set(SHUTTING_DOWN);
            kill.cancel();
            step.await
        }
    };
    let result = if revoked.load(Ordering::SeqCst) {
        tracing::warn!("job killed after its lease was revoked; not completing it");
        Ok(None)
    } else {
        log_outcome(&outcome);
        complete(shared, &job, &session.agent_id, outcome, &revoked).await
    };
    lock(&shared.leases).remove(&job.job_id);
    result
}

pub(super) fn log_outcome(outcome: &StepOutcome) {
    if outcome.success {
        tracing::debug!(duration_ms = outcome.duration_ms, "step succeeded");
    } else {
        tracing::info!(
            duration_ms = outcome.duration_ms,
            error = outcome.error.as_deref().unwrap_or(""),
            error_class = outcome.error_class.map_or("", |c| c.as_str()),
            "step failed"
        );
    }
}

/// Reports a job's outcome. Network trouble and 5xx are retried (the lease
/// stays held and heartbeated meanwhile); once the agent is stopping, only
/// for a short window. A refused completion is logged and dropped.
pub(super) async fn complete(
    shared: &Shared,
    job: &ClaimedJob,
    agent_id: &AgentId,
    outcome: StepOutcome,
    revoked: &AtomicBool,
) -> Result<Option<ClaimedJob>, ClientError> {
    let req = CompleteRequest {
        agent_id: agent_id.to_owned(),
        lease_token: job.lease_token.clone(),
        outcome,
        // A stopping agent takes no new work.
        claim_next: !shared.stop.is_cancelled(),
        // The same for every retry below: one completion, one next job.
        claim_key: Some(claim_key()),
    };
    let mut backoff = Backoff::new();
    let mut give_up_at: Option<Instant> = None;
    loop {
        match shared.client.complete(job.job_id, &req).await {
            Ok(done) => {
                if done.again {
                    tracing::info!("the completion was recorded before its answer was lost");
                }
                tracing::debug!(stage_state = ?done.stage_state, run_state = ?done.run_state, "job completed");
                return Ok(done.next);
            }
            Err(ClientError::StaleLease(refused)) => {
                tracing::warn!(message = %refused.message(), "completion refused: the lease is stale");
                return Ok(None);
            }
            Err(e) if e.is_auth() => return Err(e),
            Err(e) if e.is_retryable() => {
                if revoked.load(Ordering::SeqCst) {
                    tracing::warn!(error = %e, "lease revoked while completing; giving up");
                    return Ok(None);
                }
                let delay = backoff.next_delay();
                if shared.stop.is_cancelled() {
                    let until = *give_up_at
                        .get_or_insert_with(|| Instant::now() + SHUTDOWN_COMPLETE_WINDOW);
                    if Instant::now() + delay > until {
                        tracing::warn!(error = %e, "could not report the job before stopping; the daemon will requeue it when its lease expires");
                        return Ok(None);
                    }
                    tokio::time::sleep(delay).await;
                } else {
                    tracing::warn!(error = %e, "completion failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shared.stop.cancelled() => {}
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "completion refused");
                return Ok(None);
            }
        }
    }
}
