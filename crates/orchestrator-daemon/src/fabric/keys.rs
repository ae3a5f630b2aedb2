//! Per-job API keys: `orch-job-<job_id>-<hmac>`, minted when a job is handed
//! to an agent and given to its step as `OPENAI_API_KEY`. A key is accepted
//! while its HMAC matches (the daemon's key, made at start, so keys do not
//! outlive the daemon) and its job is still leased.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{header, HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use orchestrator_core::JobState;
use orchestrator_store::Store;
use sha2::Sha256;

use super::OpenAiErr;
use crate::App;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "orch-job-";

/// The daemon's job-key secret and the run of each job it minted a key for.
pub struct JobKeys {
    secret: [u8; 32],
    runs: Mutex<HashMap<i64, String>>,
}

impl Default for JobKeys {
    fn default() -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the OS gives random bytes");
        JobKeys {
            secret,
            runs: Mutex::default(),
        }
    }
}

/// A job whose key was accepted.
#[derive(Debug, Clone)]
pub struct KeyHolder {
    pub job_id: i64,
    pub run_id: String,
    /// The run's priority.
    pub priority: i32,
}

impl JobKeys {
    fn mac(&self, job_id: i64) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key");
        m.update(job_id.to_string().as_bytes());
        m
    }

    /// The key of `job_id`, a job of `run_id`.
    pub fn mint(&self, job_id: i64, run_id: &str) -> String {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job_id, run_id.to_owned());
        let sig: String = self
            .mac(job_id)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{PREFIX}{job_id}-{sig}")
    }

    /// Forgets an ended job: its key is refused from now on.
    pub fn forget(&self, job_id: i64) {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job_id);
    }

    /// The job and run of a key this daemon minted, signature checked in
    /// constant time; `None` for any other string.
    pub fn check(&self, key: &str) -> Option<(i64, String)> {
        let (id, sig) = key.strip_prefix(PREFIX)?.split_once('-')?;
        let job_id: i64 = id.parse().ok()?;
        if sig.len() != 64 {
            return None;
        }
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(sig.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        self.mac(job_id).verify_slice(&bytes).ok()?;
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        Some((job_id, runs.get(&job_id)?.clone()))
    }
}

fn unauthorized(message: &str) -> OpenAiErr {
    OpenAiErr::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message)
}

/// Accepts the request's bearer key when it is a job key of this daemon
/// and its job is leased now.
pub async fn authorize<S: Store>(
    app: &App<S>,
    headers: &HeaderMap,
) -> Result<KeyHolder, OpenAiErr> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("missing API key; expected `Authorization: Bearer orch-job-...`, the step's OPENAI_API_KEY"))?;
    let (job_id, run_id) = app.job_keys.check(key.trim()).ok_or_else(|| {
        unauthorized("invalid API key; expected the key this daemon gave the step (OPENAI_API_KEY)")
    })?;
    let detail = app
        .store
        .run_detail(&run_id)
        .await
        .map_err(|_| unauthorized("the API key's run is gone"))?;
    let leased = detail
        .jobs
        .iter()
        .any(|j| j.id == job_id && j.state == JobState::Leased);
    if !leased {
        app.job_keys.forget(job_id);
        return Err(unauthorized(&format!(
            "the API key's job {job_id} is no longer running; a key works only while its job is leased"
        )));
    }
    Ok(KeyHolder {
        job_id,
        run_id,
        priority: detail.run.priority,
    })
}
