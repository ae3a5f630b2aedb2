//! The routes a running step calls on its agent's local endpoint (`orch
//! ask`), over the agent's Unix socket or loopback TCP, with the step's token.

use orchestrator_core::api::{StepAskRequest, StepAsked, WaitPoll, WaitStatus};
use reqwest::Method;

use crate::client::Client;
use crate::error::ClientError;

impl Client {
    /// `POST /v1/ask` without `wait`: the question is handed over when the
    /// step ends.
    pub async fn step_ask(
        &self,
        question: String,
        choices: Vec<String>,
    ) -> Result<StepAsked, ClientError> {
        let req = StepAskRequest {
            question,
            choices,
            wait: false,
        };
        self.expect(Method::POST, "/v1/ask", Some(&req), self.timeout())
            .await
    }

    /// `POST /v1/ask` with `wait`: the question goes to the daemon now; its
    /// state comes back.
    pub async fn step_ask_wait(
        &self,
        question: String,
        choices: Vec<String>,
    ) -> Result<WaitStatus, ClientError> {
        let req = StepAskRequest {
            question,
            choices,
            wait: true,
        };
        self.expect(Method::POST, "/v1/ask", Some(&req), self.timeout())
            .await
    }

    /// `POST /v1/ask/wait`: the question's state once it is answered or
    /// closed, or after `poll.wait_ms`.
    pub async fn step_wait(&self, poll: &WaitPoll) -> Result<WaitStatus, ClientError> {
        self.expect(Method::POST, "/v1/ask/wait", Some(poll), self.timeout())
            .await
    }

    /// `POST /v1/ask/withdraw`: the step stops waiting.
    pub async fn step_withdraw(&self, poll: &WaitPoll) -> Result<WaitStatus, ClientError> {
        self.expect(Method::POST, "/v1/ask/withdraw", Some(poll), self.timeout())
            .await
    }
}
