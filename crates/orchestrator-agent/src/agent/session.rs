//! The agent's registration with the daemon and what its loops share: the
//! session (registered again when a restarted daemon forgets the agent), the
//! leases held now, and the first fatal error.

use orchestrator_core::{AgentId, JobId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchestrator_client::{Client, ClientError};
use orchestrator_core::api::{AgentRegistered, RegisterAgent};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::{lock, DEFAULT_HEARTBEAT, LEASE_REVOKED};
use crate::ask::AskBox;
use crate::sandbox::SandboxConfig;
use crate::step::CancelReason;

/// What the loops share.
pub(super) struct Shared {
    pub(super) client: Client,
    pub(super) register: RegisterAgent,
    pub(super) hostname: Option<String>,
    /// The local endpoint steps ask their questions through.
    pub(super) asks: AskBox,
    /// How steps are isolated.
    pub(super) sandbox: Arc<SandboxConfig>,
    /// The daemon's URL, for the steps' model gateway.
    pub(super) server: String,
    /// The current registration; replaced when the daemon forgets the agent.
    pub(super) session: Mutex<Arc<Session>>,
    /// Held while re-registering, so that loops noticing together register once.
    pub(super) reregistering: tokio::sync::Mutex<()>,
    /// Leases held now, by job id.
    pub(super) leases: Mutex<HashMap<JobId, Held>>,
    pub(super) stop: CancellationToken,
    /// The first fatal error, returned by `run_agent`.
    pub(super) fatal: Mutex<Option<ClientError>>,
}

/// One registration with the daemon.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) agent_id: AgentId,
    pub(super) heartbeat: Duration,
    /// Counts registrations, to tell a stale view of the session from the current one.
    pub(super) generation: u64,
}

/// A lease held by a running (or completing) job.
pub(super) struct Held {
    pub(super) lease_token: String,
    /// Kills the job's commands.
    pub(super) kill: CancellationToken,
    pub(super) reason: CancelReason,
    /// Set when the daemon took the lease back: the job is not completed.
    pub(super) revoked: Arc<AtomicBool>,
}

impl Shared {
    pub(super) fn session(&self) -> Arc<Session> {
        lock(&self.session).clone()
    }

    /// Records how a loop ended; a fatal error stops the whole agent.
    pub(super) fn end(&self, result: Result<(), ClientError>) {
        if let Err(e) = result {
            tracing::error!(error = %e, "agent stopping on a fatal error");
            lock(&self.fatal).get_or_insert(e);
            self.stop.cancel();
        }
    }

    /// Kills a job whose lease the daemon no longer honours; it is not completed.
    pub(super) fn revoke(&self, job_id: JobId, why: &str) {
        if let Some(held) = lock(&self.leases).get(&job_id) {
            tracing::warn!(%job_id, why, "lease revoked; killing the job");
            held.reason.set(LEASE_REVOKED);
            held.revoked.store(true, Ordering::SeqCst);
            held.kill.cancel();
        }
    }

    /// Registers again after the daemon answered 404 for the agent id `seen`
    /// had. Loops noticing together register once. Returns false when the
    /// agent is stopping.
    pub(super) async fn reregister(&self, seen: &Session) -> Result<bool, ClientError> {
        let _one_at_a_time = self.reregistering.lock().await;
        if self.session().generation != seen.generation {
            return Ok(true);
        }
        tracing::warn!(agent_id = %seen.agent_id, "the daemon does not know this agent; registering again");
        let Some(mut session) =
            register_until_done(&self.client, &self.register, &self.stop, Some(self)).await?
        else {
            return Ok(false);
        };
        session.generation = seen.generation + 1;
        tracing::info!(agent_id = %session.agent_id, "agent registered again");
        *lock(&self.session) = Arc::new(session);
        Ok(true)
    }
}

/// Registers, retrying network trouble and 5xx until it works or `stop`
/// fires (then None). `shared`, when given, receives the stale jobs.
pub(super) async fn register_until_done(
    client: &Client,
    req: &RegisterAgent,
    stop: &CancellationToken,
    shared: Option<&Shared>,
) -> Result<Option<Session>, ClientError> {
    let mut backoff = Backoff::new();
    loop {
        let answer = tokio::select! {
            answer = client.register(req) => answer,
            () = stop.cancelled() => return Ok(None),
        };
        match answer {
            Ok(reg) => {
                handle_stale_jobs(&reg, shared);
                let heartbeat = match reg.heartbeat_interval_ms {
                    0 if reg.lease_ttl_ms > 0 => Duration::from_millis(reg.lease_ttl_ms / 3),
                    0 => DEFAULT_HEARTBEAT,
                    ms => Duration::from_millis(ms),
                };
                return Ok(Some(Session {
                    agent_id: reg.agent_id,
                    heartbeat: heartbeat.max(Duration::from_millis(10)),
                    generation: 0,
                }));
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "could not register; retrying");
                if !backoff.sleep(stop).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The daemon lists leases it believes this agent held before registering.
/// Any still running here belongs to a registration the daemon has written
/// off, so it is killed and not completed; others are from an earlier process.
fn handle_stale_jobs(reg: &AgentRegistered, shared: Option<&Shared>) {
    if reg.stale_jobs.is_empty() {
        return;
    }
    tracing::warn!(stale_jobs = ?reg.stale_jobs, "the daemon lists stale leases of this agent");
    if let Some(shared) = shared {
        for &job_id in &reg.stale_jobs {
            shared.revoke(job_id, "stale after registering again");
        }
    }
}
