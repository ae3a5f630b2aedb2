//! Per-job API keys: `orch-job-<job_id>-<run_id>-<hmac>`, minted when a job
//! is handed to an agent and given to its step as `OPENAI_API_KEY`. A key is
//! accepted while its HMAC matches and its job is still leased. The key
//! names its run, so checking it needs no memory of minted keys, and with
//! the secret kept in the daemon's data directory a running step's key
//! still works after the daemon restarts.

use axum::http::{header, HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use orchestrator_core::JobState;
use orchestrator_core::{JobId, RunId};
use sha2::Sha256;

use super::OpenAiErr;
use crate::App;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "orch-job-";

/// The daemon's job-key secret.
pub struct JobKeys {
    secret: Vec<u8>,
}

impl Default for JobKeys {
    /// A secret of this process alone: keys die with the daemon.
    fn default() -> Self {
        let mut secret = [0u8; 32];
        // Without the OS's randomness no key could be trusted; stopping is
        // the only safe answer, and it happens at start.
        getrandom::fill(&mut secret).expect("the OS gives random bytes");
        JobKeys::with_secret(secret.to_vec())
    }
}

/// A job whose key was accepted.
#[derive(Debug, Clone)]
pub struct KeyHolder {
    pub job_id: JobId,
    pub run_id: RunId,
    /// The run's priority.
    pub priority: i32,
}

impl JobKeys {
    /// Keys signed with `secret` (the data directory's, so that they outlive
    /// a restart).
    pub fn with_secret(secret: Vec<u8>) -> Self {
        JobKeys { secret }
    }

    fn mac(&self, job_id: JobId, run_id: &str) -> HmacSha256 {
        // HMAC accepts a key of any length.
        let mut m = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key");
        m.update(format!("{job_id}-{run_id}").as_bytes());
        m
    }

    /// The key of `job_id`, a job of `run_id`.
    pub fn mint(&self, job_id: JobId, run_id: &RunId) -> String {
        let sig: String = self
            .mac(job_id, run_id.as_str())
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{PREFIX}{job_id}-{run_id}-{sig}")
    }

    /// The job and run of a key this daemon minted, signature checked in
    /// constant time; `None` for any other string.
    pub fn check(&self, key: &str) -> Option<(JobId, RunId)> {
        let mut parts = key.strip_prefix(PREFIX)?.splitn(3, '-');
        let job_id: JobId = parts.next()?.parse().ok()?;
        let run_id = parts.next()?;
        let sig = parts.next()?;
        if sig.len() != 64 || run_id.is_empty() {
            return None;
        }
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(sig.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        self.mac(job_id, run_id).verify_slice(&bytes).ok()?;
        Some((job_id, RunId::from(run_id)))
    }
}

fn unauthorized(message: &str) -> OpenAiErr {
    OpenAiErr::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message)
}

/// Accepts the request's bearer key when it is a job key of this daemon
/// and its job is leased now.
pub async fn authorize(app: &App, headers: &HeaderMap) -> Result<KeyHolder, OpenAiErr> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("missing API key; expected `Authorization: Bearer orch-job-...`, the step's OPENAI_API_KEY"))?;
    let (job_id, run_id) = app.job_keys.check(key.trim()).ok_or_else(|| {
        unauthorized("invalid API key; expected the key this daemon gave the step (OPENAI_API_KEY)")
    })?;
    let holder = app
        .store
        .job_holder(job_id)
        .await
        .ok()
        .flatten()
        .filter(|h| h.run_id == run_id)
        .ok_or_else(|| unauthorized("the API key's job is gone"))?;
    if holder.state != JobState::Leased {
        return Err(unauthorized(&format!(
            "the API key's job {job_id} is no longer running; a key works only while its job is leased"
        )));
    }
    Ok(KeyHolder {
        job_id,
        run_id,
        priority: holder.priority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_job_and_run_and_survives_a_restart_with_the_same_secret() {
        let before = JobKeys::with_secret(b"kept in the data dir".to_vec());
        let key = before.mint(JobId::new(42), &RunId::from("r0abc"));
        let after = JobKeys::with_secret(b"kept in the data dir".to_vec());
        assert_eq!(
            after.check(&key),
            Some((JobId::new(42), RunId::from("r0abc")))
        );
        let other = JobKeys::with_secret(b"another daemon".to_vec());
        assert_eq!(other.check(&key), None);
    }

    #[test]
    fn a_key_with_any_part_changed_is_refused() {
        let keys = JobKeys::with_secret(b"s".to_vec());
        let key = keys.mint(JobId::new(7), &RunId::from("r1"));
        assert!(keys.check(&key).is_some());
        for forged in [
            key.replacen("orch-job-7-", "orch-job-8-", 1),
            key.replacen("-r1-", "-r2-", 1),
            format!("{}0", &key[..key.len() - 1]),
            "orch-job-7-r1".to_owned(),
            "sk-anything".to_owned(),
        ] {
            if forged != key {
                assert_eq!(keys.check(&forged), None, "{forged}");
            }
        }
    }
}
