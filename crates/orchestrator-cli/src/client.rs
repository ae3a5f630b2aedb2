//! The CLI's HTTP client: finds the daemon and its admin token, sends
//! requests, turns error answers into messages, and reads the event stream.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use orchestrator_core::api::ApiError;
use orchestrator_core::Transition;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::paths;

/// Where the daemon is and how to speak to it.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    token: String,
    http: reqwest::Client,
}

/// Failures the CLI maps to distinct exit codes.
#[derive(Debug)]
pub enum CliError {
    /// The daemon refused the input (exit code 2).
    BadInput(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::BadInput(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CliError {}

impl Client {
    /// `--server`/`$ORCH_SERVER` or the data directory's endpoint file;
    /// `--token`/`$ORCH_TOKEN` or the data directory's admin token.
    pub fn resolve(
        server: Option<String>,
        token: Option<String>,
        data_dir: &Path,
    ) -> Result<Client> {
        let base = match server {
            Some(s) => s,
            None => std::fs::read_to_string(paths::endpoint_file(data_dir))
                .map(|s| s.trim().to_owned())
                .map_err(|_| {
                    anyhow!(
                        "no daemon address: start one with `orch up` (data directory {}), or pass --server URL",
                        data_dir.display()
                    )
                })?,
        };
        let token = match token {
            Some(t) => t,
            None => std::fs::read_to_string(data_dir.join("admin.token"))
                .map(|s| s.trim().to_owned())
                .map_err(|_| {
                    anyhow!(
                        "no admin token: none in {} and none given with --token or ORCH_TOKEN",
                        data_dir.display()
                    )
                })?,
        };
        Ok(Client::new(base, token))
    }

    pub fn new(base: String, token: String) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        }
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let msg = match serde_json::from_str::<ApiError>(&text) {
            Ok(e) => e.error,
            Err(_) => text,
        };
        if status == StatusCode::UNPROCESSABLE_ENTITY
            || status == StatusCode::BAD_REQUEST
            || status == StatusCode::CONFLICT
        {
            return Err(CliError::BadInput(msg).into());
        }
        bail!("{msg} (HTTP {status})")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach the daemon at {}: {e}; is `orch up` running?",
            self.base
        )
    }

    /// A GET whose answer was a success.
    async fn fetch(&self, path: &str) -> Result<reqwest::Response> {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Self::check(resp).await
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.fetch(path).await?.json().await?)
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        Ok(self.fetch(path).await?.text().await?)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(Self::check(resp).await?.json().await?)
    }

    /// Follows `/v1/events` for one run from `since`, calling `f` for each
    /// transition until it returns false. Reconnects when the stream drops
    /// (a daemon restart), resuming after the last seq seen. `entities`
    /// limits the kinds of entity (`run,stage`).
    pub async fn follow_run(
        &self,
        run_id: &str,
        entities: &str,
        mut since: i64,
        mut f: impl FnMut(&Transition) -> bool,
    ) -> Result<()> {
        let mut failures = 0u32;
        loop {
            let url = self.url(&format!(
                "/v1/events?run={run_id}&entities={entities}&since={since}"
            ));
            let resp = match self.http.get(url).bearer_auth(&self.token).send().await {
                Ok(r) => Self::check(r).await?,
                Err(e) => {
                    failures += 1;
                    if failures > 50 {
                        return Err(self.unreachable(e));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            failures = 0;
            let mut stream = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { break };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let data: String = block
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(|d| d.strip_prefix(' ').unwrap_or(d))
                        .collect::<Vec<_>>()
                        .join("\n");
                    if data.is_empty() {
                        continue;
                    }
                    let t: Transition =
                        serde_json::from_str(&data).context("unreadable event from the daemon")?;
                    since = t.seq;
                    if !f(&t) {
                        return Ok(());
                    }
                }
            }
        }
    }
}
