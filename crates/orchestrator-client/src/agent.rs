//! The routes an agent calls: register, claim, heartbeat, model orders,
//! complete, and a running step's questions. A 404 on the agent's own
//! endpoints means the daemon does not know the agent; a 409 on a request
//! made under a lease means the lease is no longer held.

use std::time::Duration;

use orchestrator_core::api::{
    AgentRegistered, ClaimRequest, ClaimedJob, CompleteRequest, Completed, HeartbeatRequest,
    HeartbeatResponse, LeaseRef, ModelOrders, ModelReport, RegisterAgent, WaitAsk, WaitPoll,
    WaitStatus,
};
use orchestrator_core::{AgentId, JobId};
use reqwest::Method;

use crate::client::{encode, Client, REQUEST_TIMEOUT};
use crate::error::ClientError;

/// Slack added to a long poll's wait before the request itself times out.
const LONG_POLL_SLACK: Duration = Duration::from_secs(10);

impl Client {
    /// The limit of a request that does not long-poll, for the agent's routes.
    fn short(&self) -> Duration {
        self.timeout().unwrap_or(REQUEST_TIMEOUT)
    }

    /// `POST /v1/agents`.
    pub async fn register(&self, req: &RegisterAgent) -> Result<AgentRegistered, ClientError> {
        self.expect(Method::POST, "/v1/agents", Some(req), Some(self.short()))
            .await
    }

    /// `POST /v1/agents/{id}/claim`: a job, or None when none came within
    /// `wait_ms`. Asked again with the same `key` after an error, it gets
    /// the job the lost answer carried.
    pub async fn claim(
        &self,
        agent_id: &AgentId,
        wait_ms: u64,
        key: &str,
    ) -> Result<Option<ClaimedJob>, ClientError> {
        let path = format!("/v1/agents/{}/claim", encode(agent_id.as_str()));
        let req = ClaimRequest {
            wait_ms,
            claim_key: Some(key.to_owned()),
        };
        let timeout = Duration::from_millis(wait_ms) + LONG_POLL_SLACK;
        self.call(Method::POST, &path, Some(&req), Some(timeout))
            .await
            .map_err(|e| e.for_agent(agent_id))
    }

    /// `POST /v1/agents/{id}/heartbeat`; with `wait`, the daemon answers
    /// early only when one of the agent's leases is revoked.
    pub async fn heartbeat(
        &self,
        agent_id: &AgentId,
        leases: Vec<LeaseRef>,
        wait: Duration,
    ) -> Result<HeartbeatResponse, ClientError> {
        let path = format!("/v1/agents/{}/heartbeat", encode(agent_id.as_str()));
        let req = HeartbeatRequest {
            leases,
            wait_ms: wait.as_millis() as u64,
        };
        self.expect(Method::POST, &path, Some(&req), Some(wait + self.short()))
            .await
            .map_err(|e| e.for_agent(agent_id))
    }

    /// `POST /v1/agents/{id}/models`: the model servers the daemon wants
    /// here; it answers early only when they differ from `report`.
    pub async fn models(
        &self,
        agent_id: &AgentId,
        report: &ModelReport,
    ) -> Result<ModelOrders, ClientError> {
        let path = format!("/v1/agents/{}/models", encode(agent_id.as_str()));
        let timeout = Duration::from_millis(report.wait_ms) + LONG_POLL_SLACK;
        self.expect(Method::POST, &path, Some(report), Some(timeout))
            .await
            .map_err(|e| e.for_agent(agent_id))
    }

    /// `POST /v1/jobs/{id}/complete`; a 409 is [`ClientError::StaleLease`].
    pub async fn complete(
        &self,
        job_id: JobId,
        req: &CompleteRequest,
    ) -> Result<Completed, ClientError> {
        let path = format!("/v1/jobs/{job_id}/complete");
        self.expect(Method::POST, &path, Some(req), Some(self.short()))
            .await
            .map_err(ClientError::under_lease)
    }

    /// `POST /v1/jobs/{id}/questions`: a running step's question, asked
    /// now; a 409 is [`ClientError::StaleLease`] (the step's lease ended).
    pub async fn ask_waiting(
        &self,
        job_id: JobId,
        req: &WaitAsk,
    ) -> Result<WaitStatus, ClientError> {
        let path = format!("/v1/jobs/{job_id}/questions");
        self.expect(Method::POST, &path, Some(req), Some(self.short()))
            .await
            .map_err(ClientError::under_lease)
    }

    /// `POST /v1/jobs/{id}/questions/{qid}/wait`: the question's state once
    /// it is answered or closed, or after `poll.wait_ms`.
    pub async fn wait_question(
        &self,
        job_id: JobId,
        poll: &WaitPoll,
    ) -> Result<WaitStatus, ClientError> {
        let path = format!("/v1/jobs/{job_id}/questions/{}/wait", poll.question_id);
        let timeout = Duration::from_millis(poll.wait_ms) + LONG_POLL_SLACK;
        self.expect(Method::POST, &path, Some(poll), Some(timeout))
            .await
            .map_err(ClientError::under_lease)
    }

    /// `POST /v1/jobs/{id}/questions/{qid}/withdraw`: the step stopped waiting.
    pub async fn withdraw_question(
        &self,
        job_id: JobId,
        poll: &WaitPoll,
    ) -> Result<WaitStatus, ClientError> {
        let path = format!("/v1/jobs/{job_id}/questions/{}/withdraw", poll.question_id);
        self.expect(Method::POST, &path, Some(poll), Some(self.short()))
            .await
            .map_err(ClientError::under_lease)
    }
}
