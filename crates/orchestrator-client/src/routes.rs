//! The routes a user (an admin token or a dashboard session) calls: runs,
//! the decisions a human takes, agents, workflows, tokens, metrics.

use orchestrator_core::api::{
    AgentTokenCreated, AgentTokenView, AgentView, AnswerRequest, ApproveRequest, DecideRequest,
    Explanation, InboxItem, NewAgentToken, RejectRequest, RunDetail, RunSummary, SubmitRun,
    Submitted, WorkflowView,
};
use orchestrator_core::{RunId, Transition};
use reqwest::Method;

use crate::client::{encode, Client};
use crate::error::ClientError;

/// What a run is told by [`Client::run_command`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunVerb {
    Cancel,
    Pause,
    Resume,
}

impl RunVerb {
    fn path(self) -> &'static str {
        match self {
            RunVerb::Cancel => "cancel",
            RunVerb::Pause => "pause",
            RunVerb::Resume => "resume",
        }
    }
}

/// What a human decides for a stage by [`Client::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run the failed stage again (or, with feedback, send the work back).
    Retry,
    /// Go on without the stage.
    Skip,
    /// End the stage as failed.
    Abort,
}

impl Decision {
    fn path(self) -> &'static str {
        match self {
            Decision::Retry => "retry",
            Decision::Skip => "skip",
            Decision::Abort => "abort",
        }
    }
}

/// An empty JSON object, the body of commands that take no arguments.
fn empty() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl Client {
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.expect(Method::GET, path, None, self.timeout()).await
    }

    async fn post<B: serde::Serialize + Sync, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.expect(Method::POST, path, Some(body), self.timeout())
            .await
    }

    /// `POST /v1/runs`.
    pub async fn submit(&self, req: &SubmitRun) -> Result<Submitted, ClientError> {
        self.post("/v1/runs", req).await
    }

    /// `GET /v1/runs?limit=N`: the latest runs.
    pub async fn runs(&self, limit: u32) -> Result<Vec<RunSummary>, ClientError> {
        self.get(&format!("/v1/runs?limit={limit}")).await
    }

    /// `GET /v1/runs/{id}`; `id` may be an unambiguous prefix.
    pub async fn run(&self, id: &RunId) -> Result<RunDetail, ClientError> {
        self.get(&format!("/v1/runs/{}", encode(id.as_str()))).await
    }

    /// `GET /v1/runs/{id}/transitions`: the run's log, oldest first.
    pub async fn transitions(&self, id: &RunId) -> Result<Vec<Transition>, ClientError> {
        self.get(&format!("/v1/runs/{}/transitions", encode(id.as_str())))
            .await
    }

    /// `GET /v1/runs/{id}/explain[?stage=S]`: why stages wait.
    pub async fn explain(
        &self,
        id: &RunId,
        stage: Option<&str>,
    ) -> Result<Explanation, ClientError> {
        let mut path = format!("/v1/runs/{}/explain", encode(id.as_str()));
        if let Some(s) = stage {
            path += &format!("?stage={}", encode(s));
        }
        self.get(&path).await
    }

    /// `POST /v1/runs/{id}/{cancel,pause,resume}`; `id` must be a full id.
    pub async fn run_command(&self, id: &RunId, verb: RunVerb) -> Result<RunSummary, ClientError> {
        let path = format!("/v1/runs/{}/{}", encode(id.as_str()), verb.path());
        self.post(&path, &empty()).await
    }

    /// `POST /v1/runs/{id}/stages/{stage}/approve`.
    pub async fn approve(
        &self,
        run: &RunId,
        stage: &str,
        req: &ApproveRequest,
    ) -> Result<RunSummary, ClientError> {
        let path = format!(
            "/v1/runs/{}/stages/{}/approve",
            encode(run.as_str()),
            encode(stage)
        );
        self.post(&path, req).await
    }

    /// `POST /v1/runs/{id}/stages/{stage}/reject`.
    pub async fn reject(
        &self,
        run: &RunId,
        stage: &str,
        req: &RejectRequest,
    ) -> Result<RunSummary, ClientError> {
        let path = format!(
            "/v1/runs/{}/stages/{}/reject",
            encode(run.as_str()),
            encode(stage)
        );
        self.post(&path, req).await
    }

    /// `POST /v1/runs/{id}/questions/{qid}/answer`.
    pub async fn answer(
        &self,
        run: &RunId,
        question: i64,
        req: &AnswerRequest,
    ) -> Result<RunSummary, ClientError> {
        let path = format!(
            "/v1/runs/{}/questions/{question}/answer",
            encode(run.as_str())
        );
        self.post(&path, req).await
    }

    /// `POST /v1/runs/{id}/stages/{stage}/{retry,skip,abort}`.
    pub async fn decide(
        &self,
        run: &RunId,
        stage: &str,
        decision: Decision,
        req: &DecideRequest,
    ) -> Result<RunSummary, ClientError> {
        let path = format!(
            "/v1/runs/{}/stages/{}/{}",
            encode(run.as_str()),
            encode(stage),
            decision.path()
        );
        self.post(&path, req).await
    }

    /// `POST /v1/runs/{id}/abort`: the whole run.
    pub async fn abort_run(
        &self,
        run: &RunId,
        req: &DecideRequest,
    ) -> Result<RunSummary, ClientError> {
        self.post(&format!("/v1/runs/{}/abort", encode(run.as_str())), req)
            .await
    }

    /// `GET /v1/inbox`: what waits for a human.
    pub async fn inbox(&self) -> Result<Vec<InboxItem>, ClientError> {
        self.get("/v1/inbox").await
    }

    /// `GET /v1/agents`.
    pub async fn agents(&self) -> Result<Vec<AgentView>, ClientError> {
        self.get("/v1/agents").await
    }

    /// `GET /v1/workflows`: the catalog the daemon watches.
    pub async fn workflows(&self) -> Result<Vec<WorkflowView>, ClientError> {
        self.get("/v1/workflows").await
    }

    /// `POST /v1/agent-tokens`.
    pub async fn create_agent_token(&self, name: &str) -> Result<AgentTokenCreated, ClientError> {
        self.post(
            "/v1/agent-tokens",
            &NewAgentToken {
                name: name.to_owned(),
            },
        )
        .await
    }

    /// `GET /v1/agent-tokens`.
    pub async fn agent_tokens(&self) -> Result<Vec<AgentTokenView>, ClientError> {
        self.get("/v1/agent-tokens").await
    }

    /// `POST /v1/agent-tokens/{name}/revoke`.
    pub async fn revoke_agent_token(&self, name: &str) -> Result<AgentTokenView, ClientError> {
        let path = format!("/v1/agent-tokens/{}/revoke", encode(name));
        self.post(&path, &empty()).await
    }

    /// `GET /metrics`: the Prometheus exposition.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let resp = self
            .respond(Method::GET, "/metrics", None, self.timeout())
            .await?;
        resp.text()
            .await
            .map_err(|source| ClientError::Unreachable {
                base: self.base().to_owned(),
                path: "/metrics".into(),
                source,
            })
    }
}
