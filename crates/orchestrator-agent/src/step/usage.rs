//! The step's model usage for its manifest: asked of the gateway with the
//! job's own key (`GET <daemon>/v1/usage`) when the step ends, while the
//! job is still leased. The daemon writes what it counted to its store
//! before answering, so every request that ended is in it.

use std::collections::BTreeMap;
use std::time::Duration;

use orchestrator_core::api::JobUsage;
use orchestrator_core::fabric::Usage;

/// Longest wait for the answer: the manifest is not held up by a daemon
/// that does not answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The job's usage by model; empty (with a warning) when the daemon cannot
/// say, since a step's result does not depend on its accounting.
pub(crate) async fn fetch(daemon_url: &str, key: &str) -> BTreeMap<String, Usage> {
    let url = format!("{}/v1/usage", daemon_url.trim_end_matches('/'));
    // One client for every step: its connections to the daemon are kept.
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let asked = async {
        let client = match CLIENT.get() {
            Some(c) => c,
            None => {
                let c = reqwest::Client::builder().timeout(TIMEOUT).build()?;
                CLIENT.get_or_init(|| c)
            }
        };
        client
            .get(&url)
            .bearer_auth(key)
            .send()
            .await?
            .error_for_status()?
            .json::<JobUsage>()
            .await
    };
    match asked.await {
        Ok(u) => u.models,
        Err(e) => {
            tracing::warn!(%url, error = %e, "the step's model usage is not in its manifest");
            BTreeMap::new()
        }
    }
}
