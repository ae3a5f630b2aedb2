//! The heartbeat loop: one long-polling beat for every held lease, so a
//! revoked lease (a cancelled run) reaches its commands at once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use orchestrator_client::ClientError;
use orchestrator_core::api::LeaseRef;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::lock;
use super::session::Shared;

/// One heartbeat per interval for all held leases (also when none are held:
/// it tells the daemon the agent is alive); revoked leases are killed. Ends
/// when the slots have ended, or on a fatal error.
pub(super) async fn heartbeat_loop(
    shared: &Shared,
    slots_done: &CancellationToken,
) -> Result<(), ClientError> {
    let mut backoff = Backoff::new();
    let mut delay = Duration::ZERO;
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = slots_done.cancelled() => return Ok(()),
        }
        let session = shared.session();
        let leases: Vec<LeaseRef> = lock(&shared.leases)
            .iter()
            .filter(|(_, held)| !held.revoked.load(Ordering::SeqCst))
            .map(|(&job_id, held)| LeaseRef {
                job_id,
                lease_token: held.lease_token.clone(),
            })
            .collect();
        // The heartbeat long-polls for one interval: the daemon answers at
        // once when a lease is revoked (a cancelled run), so a cancellation
        // reaches the commands without waiting for the next beat.
        let sent = Instant::now();
        let answer = tokio::select! {
            answer = shared.client.heartbeat(&session.agent_id, leases, session.heartbeat) => answer,
            () = slots_done.cancelled() => return Ok(()),
        };
        match answer {
            Ok(resp) => {
                backoff.reset();
                let revoked = !resp.revoked.is_empty();
                for job_id in resp.revoked {
                    shared.revoke(job_id, "the heartbeat answered revoked");
                }
                // Beat again at once after a revocation or a full wait. A
                // daemon that answered early (it caps the wait, or is
                // stopping) is not hammered, nor left without beats for long.
                delay = if revoked {
                    Duration::ZERO
                } else {
                    session
                        .heartbeat
                        .saturating_sub(sent.elapsed())
                        .min(Duration::from_secs(1))
                };
            }
            Err(ClientError::UnknownAgent { .. }) => {
                if !shared.reregister(&session).await? {
                    return Ok(());
                }
                // Tell the daemon about the held leases right away.
                delay = Duration::ZERO;
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "heartbeat failed; retrying");
                delay = backoff.next_delay().min(session.heartbeat);
            }
            Err(e) => return Err(e),
        }
    }
}
