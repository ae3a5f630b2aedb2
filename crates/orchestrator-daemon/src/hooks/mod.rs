//! The event hub's outbound side: human-facing events pushed to webhooks
//! and to an OpenClaw gateway.
//!
//! What it is: one delivery task per target (each configured webhook URL,
//! and the OpenClaw gateway when one is set), every one a component under
//! the daemon's supervisor. A task follows the store's committed
//! transitions — the live broadcast, falling back to the transitions log
//! when it lags or starts behind — turns them into [`HumanEvent`]s with the
//! pure [`human_event`], and delivers them one at a time, in `seq` order,
//! retrying a failed delivery with exponential backoff and jitter before it
//! records the event as failed and goes on. No polling interval anywhere.
//!
//! Durability: each target's cursor (the last `seq` it handled) is written
//! to `hooks.json` in the data directory after every event it handles, so a
//! restarted daemon delivers what it missed from the log, and nothing twice
//! in the normal case (at-least-once: a crash between a delivery and its
//! cursor write repeats that one event, with the same `seq`). A target seen
//! for the first time starts at the log's end: a new webhook is not flooded
//! with history.
//!
//! Who owns what: each task owns its target's cursor and counters; the
//! status (`GET /v1/webhooks`) only reads a snapshot of them.
//!
//! Main types: [`HooksConfig`], [`Hooks`], [`HookStatus`], [`HumanEvent`];
//! [`sign`] makes and checks one-click action links.

mod cursor;
mod deliver;
mod event;
mod openclaw;
pub mod sign;
mod webhook;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchestrator_host::clock::Clock;
use orchestrator_store::SqlStore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use event::{answer_commands, human_event, EventKind, HumanEvent, ReasonFrom};
pub use openclaw::message as openclaw_message;
pub use webhook::signature;

/// Where events go, and how hard to try. Empty by default: no targets.
#[derive(Clone, Default)]
pub struct HooksConfig {
    /// URLs that receive every event as a signed JSON POST.
    pub webhooks: Vec<String>,
    /// Key of the webhooks' `X-Orch-Signature-256` HMAC.
    pub webhook_secret: Vec<u8>,
    /// The OpenClaw gateway, when one is set.
    pub openclaw: Option<OpenClawConfig>,
    /// One-click links in OpenClaw messages, when the daemon has a public URL.
    pub links: Option<ActionLinks>,
    /// `hooks.json`, where cursors survive restarts; None keeps them in
    /// memory (each start begins at the log's end).
    pub state_file: Option<PathBuf>,
    pub retry: RetryPolicy,
}

impl HooksConfig {
    /// Refuses a URL that is not one, or that this build cannot reach.
    pub fn check(&self) -> Result<(), HooksError> {
        let openclaw = self.openclaw.as_ref().map(|o| &o.url);
        self.webhooks
            .iter()
            .chain(openclaw)
            .try_for_each(|u| check_url(u))
    }
}

/// Secrets stay out of logs: only what is configured, never the keys.
impl std::fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HooksConfig")
            .field(
                "webhooks",
                &self
                    .webhooks
                    .iter()
                    .map(|u| shown_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("openclaw", &self.openclaw)
            .field("links", &self.links)
            .field("state_file", &self.state_file)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// An OpenClaw gateway's webhook endpoint.
#[derive(Clone)]
pub struct OpenClawConfig {
    /// The gateway's base URL; events go to `{url}/hooks/agent`.
    pub url: String,
    /// The gateway's hook token, sent as `Authorization: Bearer`.
    pub token: String,
    /// The chat channel to deliver on (`telegram`, `slack`, ...); the gateway's default when None.
    pub channel: Option<String>,
    /// The recipient on that channel; the gateway's default when None.
    pub to: Option<String>,
}

impl std::fmt::Debug for OpenClawConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenClawConfig")
            .field("url", &shown_url(&self.url))
            .field("channel", &self.channel)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// How one-click links are made.
#[derive(Clone)]
pub struct ActionLinks {
    /// The daemon's address as a phone reaches it; links are `{public_url}/v1/act/{token}`.
    pub public_url: String,
    /// The key that signs actions (not the webhook secret, which receivers know).
    pub key: Vec<u8>,
    /// How long a link works, in milliseconds.
    pub ttl_ms: i64,
}

impl std::fmt::Debug for ActionLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionLinks")
            .field("public_url", &self.public_url)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

/// How long one-click links work by default: a day.
pub const DEFAULT_LINK_TTL_MS: i64 = 24 * 3600 * 1000;

/// How a failed delivery is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Wait before the second attempt, in milliseconds; doubles each time.
    pub first_backoff_ms: u64,
    /// Longest wait between attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// Attempts per event before it is recorded as failed.
    pub max_attempts: u32,
    /// Longest one attempt may take (connect, send, answer), in milliseconds.
    pub timeout_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_backoff_ms: 250,
            max_backoff_ms: 30_000,
            max_attempts: 8,
            timeout_ms: 10_000,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based): doubling from
    /// `first_backoff_ms` up to `max_backoff_ms`, then jittered into its
    /// upper half by `random`, so targets that failed together do not all
    /// retry in the same instant.
    pub fn backoff(&self, attempt: u32, random: u64) -> Duration {
        let doubled = self
            .first_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32));
        let d = doubled.min(self.max_backoff_ms);
        let half = d / 2;
        Duration::from_millis(d - half + random % (half + 1))
    }
}

/// Why the hooks cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    #[error("hook URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error("{}: {error}", path.display())]
    State { path: PathBuf, error: String },
    #[error("cannot make the HTTP client for hooks: {0}")]
    Client(String),
    #[error("hooks cannot read the store: {0}")]
    Store(String),
}

/// Which adapter a target uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Webhook,
    Openclaw,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Webhook => "webhook",
            TargetKind::Openclaw => "openclaw",
        }
    }
}

/// One target as `GET /v1/webhooks` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStatus {
    /// The URL without credentials or query values.
    pub url: String,
    pub kind: TargetKind,
    /// Events delivered (a 2xx answer), since the target was first configured.
    pub delivered: u64,
    /// Events given up on after every attempt failed.
    pub failed: u64,
    /// Attempts that failed and were retried, since this daemon started.
    pub retries: u64,
    /// Whether the current event failed and waits for its next attempt.
    pub retrying: bool,
    /// Attempts made at the current event (0 when none is in flight).
    pub attempt: u32,
    /// Events read and not yet handled (more may still be in the log).
    pub behind: u64,
    /// HTTP status of the last attempt; None when it got no answer.
    pub last_status: Option<u16>,
    /// The last failure, even when later attempts succeeded (see `last_error_ms`).
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    pub last_attempt_ms: Option<i64>,
    /// Every transition up to this seq has been handled.
    pub cursor: i64,
}

/// What delivery does for one target.
#[derive(Debug, Clone)]
pub(crate) enum How {
    Webhook { url: String },
    OpenClaw(OpenClawConfig),
}

/// One target: how to reach it, its key in `hooks.json`, its live status.
pub(crate) struct Target {
    pub how: How,
    pub key: String,
    pub status: Mutex<HookStatus>,
}

impl Target {
    fn new(how: How, url: &str) -> Target {
        let kind = match how {
            How::Webhook { .. } => TargetKind::Webhook,
            How::OpenClaw(_) => TargetKind::Openclaw,
        };
        let hash: String = Sha256::digest(url.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Target {
            how,
            key: format!("{}:{hash}", kind.as_str()),
            status: Mutex::new(HookStatus {
                url: shown_url(url),
                kind,
                delivered: 0,
                failed: 0,
                retries: 0,
                retrying: false,
                attempt: 0,
                behind: 0,
                last_status: None,
                last_error: None,
                last_error_ms: None,
                last_attempt_ms: None,
                cursor: 0,
            }),
        }
    }

    /// Changes the status; readers see it whole.
    pub fn update<R>(&self, f: impl FnOnce(&mut HookStatus) -> R) -> R {
        // Every update is a few field writes that cannot panic halfway, so
        // a poisoned lock still holds a consistent status.
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// `url` without user, password or query values: safe to show and log.
pub fn shown_url(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return "<unparsable URL>".into();
    };
    let _ = u.set_password(None);
    let _ = u.set_username("");
    let keys: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
    if keys.is_empty() {
        u.set_query(None);
    } else {
        let mut q = u.query_pairs_mut();
        q.clear();
        for k in keys {
            q.append_pair(&k, "***");
        }
    }
    u.to_string()
}

fn check_url(url: &str) -> Result<(), HooksError> {
    let bad = |why: &str| HooksError::BadUrl {
        url: shown_url(url),
        why: why.to_owned(),
    };
    let u = reqwest::Url::parse(url).map_err(|e| bad(&format!("not a URL: {e}")))?;
    match u.scheme() {
        "http" => Ok(()),
        // reqwest is built without TLS in this workspace (see the README).
        "https" => Err(bad(
            "this build speaks plain HTTP only; send to a local relay or gateway over http://",
        )),
        s => Err(bad(&format!("scheme {s:?}: expected http"))),
    }
}

/// What every delivery task shares.
pub(crate) struct Shared {
    pub http: reqwest::Client,
    pub secret: Vec<u8>,
    pub links: Option<ActionLinks>,
    pub retry: RetryPolicy,
    /// The daemon's clock: when attempts and errors happened, and how long
    /// an action link lives.
    pub clock: Arc<dyn Clock>,
}

/// The configured targets, ready to start.
pub struct Hooks {
    targets: Vec<Arc<Target>>,
    shared: Arc<Shared>,
    cursors: cursor::Cursors,
}

impl Hooks {
    /// Checks every URL, loads the cursors and makes the HTTP client.
    pub fn new(cfg: &HooksConfig, clock: Arc<dyn Clock>) -> Result<Hooks, HooksError> {
        cfg.check()?;
        let mut targets = Vec::new();
        for (i, url) in cfg.webhooks.iter().enumerate() {
            // The same URL twice would be two tasks on one cursor.
            if cfg.webhooks[..i].contains(url) {
                tracing::warn!(url = %shown_url(url), "webhook given twice; delivering once");
                continue;
            }
            let how = How::Webhook { url: url.clone() };
            targets.push(Arc::new(Target::new(how, url)));
        }
        if let Some(oc) = &cfg.openclaw {
            targets.push(Arc::new(Target::new(How::OpenClaw(oc.clone()), &oc.url)));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.retry.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.retry.timeout_ms))
            // A redirect is an answer that is not a 2xx: it fails loudly
            // instead of sending the event (and the token) somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("orchestrator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HooksError::Client(e.to_string()))?;
        let state_file = cfg.state_file.clone().filter(|_| !targets.is_empty());
        Ok(Hooks {
            targets,
            shared: Arc::new(Shared {
                http,
                secret: cfg.webhook_secret.clone(),
                links: cfg.links.clone(),
                retry: cfg.retry,
                clock,
            }),
            // Without targets the file is not read: nothing would use it.
            cursors: cursor::Cursors::load(state_file)?,
        })
    }

    /// Every target's status, in configuration order.
    pub fn status(&self) -> Vec<HookStatus> {
        self.targets
            .iter()
            .map(|t| t.update(|s| s.clone()))
            .collect()
    }

    /// Starts one delivery task per target under the supervisor's `tasks`.
    /// Each starts from its saved cursor; a target seen for the first time
    /// starts at the log's end, saved before this returns, so everything
    /// committed from now on reaches it even across a restart.
    pub(crate) async fn start(
        &self,
        store: &Arc<SqlStore>,
        tasks: &mut crate::supervisor::Components,
        stop: &CancellationToken,
    ) -> Result<(), HooksError> {
        if self.targets.is_empty() {
            return Ok(());
        }
        let mut head = None;
        for t in &self.targets {
            let cursor = match self.cursors.get(&t.key) {
                Some(saved) => {
                    t.update(|s| {
                        s.delivered = saved.delivered;
                        s.failed = saved.failed;
                    });
                    saved.cursor
                }
                None => {
                    let end = match head {
                        Some(h) => h,
                        None => {
                            store
                                .counts()
                                .await
                                .map_err(|e| HooksError::Store(e.to_string()))?
                                .transitions
                        }
                    };
                    head = Some(end);
                    let saved = cursor::Saved {
                        url: t.update(|s| s.url.clone()),
                        cursor: end,
                        delivered: 0,
                        failed: 0,
                    };
                    self.cursors.save(&t.key, saved).await?;
                    end
                }
            };
            t.update(|s| s.cursor = cursor);
            let name = t.update(|s| s.kind.as_str());
            let worker = deliver::Worker::new(
                store.clone(),
                t.clone(),
                self.shared.clone(),
                self.cursors.clone(),
                stop.clone(),
                cursor,
            );
            tasks.spawn(async move {
                worker.run().await;
                (name, Ok(()))
            });
        }
        tracing::info!(targets = self.targets.len(), "hooks started");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_carry_no_credentials() {
        assert_eq!(
            shown_url("http://user:pw@hooks.local:8080/in?token=abc&x=1"),
            "http://hooks.local:8080/in?token=***&x=***"
        );
        assert_eq!(shown_url("http://gw:18789"), "http://gw:18789/");
    }

    #[test]
    fn urls_are_checked_before_anything_starts() {
        for bad in ["not a url", "ftp://x/", "https://hooks.example/"] {
            let cfg = HooksConfig {
                webhooks: vec![bad.into()],
                ..Default::default()
            };
            assert!(
                matches!(
                    Hooks::new(&cfg, Arc::new(orchestrator_host::clock::SystemClock)),
                    Err(HooksError::BadUrl { .. })
                ),
                "{bad}"
            );
        }
        let twice = HooksConfig {
            webhooks: vec!["http://a/".into(), "http://b/".into(), "http://a/".into()],
            ..Default::default()
        };
        let urls: Vec<_> = Hooks::new(&twice, Arc::new(orchestrator_host::clock::SystemClock))
            .unwrap()
            .status()
            .into_iter()
            .map(|s| s.url)
            .collect();
        assert_eq!(urls, ["http://a/", "http://b/"]);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let p = RetryPolicy::default();
        let ms = |a, r| p.backoff(a, r).as_millis() as u64;
        assert_eq!(
            (ms(1, 0), ms(1, u64::MAX - 1)),
            (125, 125 + (u64::MAX - 1) % 126)
        );
        assert_eq!(ms(2, 0), 250);
        assert_eq!(ms(3, 125), 500 + 125);
        for a in 8..200 {
            let w = ms(a, 7);
            assert!((15_000..=30_000).contains(&w), "attempt {a}: {w}");
        }
    }

    #[test]
    fn targets_have_stable_distinct_keys() {
        let a = Target::new(
            How::Webhook {
                url: "http://a/".into(),
            },
            "http://a/",
        );
        let a2 = Target::new(
            How::Webhook {
                url: "http://a/".into(),
            },
            "http://a/",
        );
        let b = Target::new(
            How::Webhook {
                url: "http://b/".into(),
            },
            "http://b/",
        );
        assert_eq!(a.key, a2.key);
        assert_ne!(a.key, b.key);
        assert!(a.key.starts_with("webhook:"), "{}", a.key);
    }
}
