//! How the CLI reaches its daemon and tells what went wrong: the daemon's
//! address and admin token (flags, variables, or the data directory), the
//! message and exit code of a failure (2: the request was wrong or refused;
//! 3: the daemon could not be reached, or failed), and a run's events
//! followed across daemon restarts. The requests themselves are
//! `orchestrator-client`'s.

use orchestrator_core::RunId;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use futures_util::StreamExt;
use orchestrator_client::{ClientError, EventFilter};
use orchestrator_core::Transition;

pub use orchestrator_client::Client;

use crate::paths;

/// Failures the CLI maps to distinct exit codes.
#[derive(Debug)]
pub enum CliError {
    /// The input is wrong, or the daemon refused it (exit code 2).
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

/// The daemon's client: `--server`/`$ORCH_SERVER` or the data directory's
/// endpoint file; `--token`/`$ORCH_TOKEN` or the data directory's admin token.
pub fn resolve(server: Option<String>, token: Option<String>, data_dir: &Path) -> Result<Client> {
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
    Ok(Client::new(&base, &token)?)
}

/// What to print after `error: ` for a failed command, and its exit code.
pub fn report(e: &anyhow::Error) -> (String, u8) {
    let Some(failed) = e.downcast_ref::<ClientError>() else {
        let code = if e.downcast_ref::<CliError>().is_some() {
            2
        } else {
            3
        };
        return (format!("{e:#}"), code);
    };
    if let ClientError::Unreachable { base, source, .. } = failed {
        return (
            format!("cannot reach the daemon at {base}: {source}; is `orch up` running?"),
            3,
        );
    }
    match failed.refusal() {
        // The request itself was wrong: its input, or the state it met.
        Some(r) if matches!(r.status.as_u16(), 400 | 409 | 422) => (r.error_text().to_owned(), 2),
        Some(r) => (format!("{} (HTTP {})", r.error_text(), r.status), 3),
        None => (failed.to_string(), 3),
    }
}

/// Follows `/v1/events` for one run from `since`, calling `f` for each
/// transition until it returns false. Reconnects when the stream drops
/// (a daemon restart), resuming after the last seq seen. `entities`
/// limits the kinds of entity (`run,stage`).
pub async fn follow_run(
    client: &Client,
    run_id: &RunId,
    entities: &str,
    mut since: i64,
    mut f: impl FnMut(&Transition) -> bool,
) -> Result<()> {
    let mut failures = 0u32;
    loop {
        let filter = EventFilter {
            entities: Some(entities.to_owned()),
            ..EventFilter::run(run_id, since)
        };
        let mut events = match client.events(&filter).await {
            Ok(events) => events,
            Err(e @ ClientError::Unreachable { .. }) => {
                failures += 1;
                if failures > 50 {
                    return Err(e.into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        failures = 0;
        while let Some(event) = events.next().await {
            let t = match event {
                Ok(t) => t,
                // The connection broke: connect again after `since`.
                Err(ClientError::Unreachable { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            since = t.seq;
            if !f(&t) {
                return Ok(());
            }
        }
    }
}
