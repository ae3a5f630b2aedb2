//! One target's delivery task: follow the committed transitions, deliver
//! the events this target wants in `seq` order, retry, advance the cursor.
//!
//! The feed: subscribed to the store's broadcast before anything is read,
//! the task first reads the log from its cursor to the end (a restart's
//! backlog), then takes live batches. When the broadcast lags (this target
//! was slow), or the queue of events read ahead is full, it forgets the
//! broadcast until the queue is delivered and reads the log again from
//! where it stopped: every committed transition is seen once, in order.
//! While a delivery waits to retry, live batches keep being read, so the
//! status's `behind` counts what piled up meanwhile.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use orchestrator_core::Transition;
use orchestrator_store::SqlStore;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::cursor::{Cursors, Saved};
use super::event::EventKind;
use super::{human_event, openclaw, webhook, How, HumanEvent, Shared, Target};

/// Transitions read from the log at once.
const PAGE: u32 = 1000;
/// Events read ahead of delivery at most; the rest wait in the log.
const MAX_QUEUE: usize = 1000;
/// Persist a cursor advanced this far by transitions that made no event,
/// so a restart does not re-read a long stretch of log for nothing.
const PERSIST_EVERY: i64 = 10_000;
/// How much of a refusing answer's body the status keeps.
const ERROR_BODY_CHARS: usize = 200;

/// A request ready to send, the same bytes on every attempt (the
/// signature covers the body).
#[derive(Debug)]
pub(crate) struct Prepared {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// What the task has read and not yet handled.
struct Feed {
    /// Every transition up to this seq has been read (queued if wanted).
    read: i64,
    queue: VecDeque<HumanEvent>,
    /// Live batches may have been missed: read the log before trusting them.
    gap: bool,
    /// The broadcast ended (the store is closing): wait for shutdown only.
    closed: bool,
}

impl Feed {
    /// Everything up to here is handled once the queue is: the cursor.
    fn handled(&self) -> i64 {
        self.queue.front().map_or(self.read, |e| e.seq - 1)
    }

    /// Takes in transitions read (from the log or live), in order. Returns
    /// false when the queue is full and the rest must wait in the log.
    fn take(&mut self, t: &Transition, wants: impl Fn(&HumanEvent) -> bool) -> bool {
        if t.seq <= self.read {
            return true;
        }
        if let Some(ev) = human_event(t).filter(wants) {
            if self.queue.len() >= MAX_QUEUE {
                self.gap = true;
                return false;
            }
            self.queue.push_back(ev);
        }
        self.read = t.seq;
        true
    }

    fn live(&mut self, next: Result<Arc<[Transition]>, RecvError>, target: &Target) {
        match next {
            Ok(batch) if !self.gap => {
                for t in batch.iter() {
                    if !self.take(t, |e| target.wants(e)) {
                        break;
                    }
                }
            }
            // Seen in the log when it is read again.
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(
                    missed = n,
                    "hook fell behind the live feed; reading the log"
                );
                self.gap = true;
            }
            Err(RecvError::Closed) => {
                self.gap = true;
                self.closed = true;
            }
        }
    }
}

impl Target {
    fn wants(&self, ev: &HumanEvent) -> bool {
        match self.how {
            How::Webhook { .. } => true,
            How::OpenClaw(_) => openclaw::wants(ev.event),
        }
    }

    fn prepare(&self, shared: &Shared, ev: &HumanEvent) -> Prepared {
        match &self.how {
            How::Webhook { url } => webhook::request(url, &shared.secret, ev),
            How::OpenClaw(cfg) => {
                openclaw::request(cfg, ev, shared.links.as_ref(), shared.clock.now_ms())
            }
        }
    }
}

/// One target's delivery task.
pub(crate) struct Worker {
    store: Arc<SqlStore>,
    target: Arc<Target>,
    shared: Arc<Shared>,
    cursors: Cursors,
    stop: CancellationToken,
    live: broadcast::Receiver<Arc<[Transition]>>,
    /// The cursor last written to `hooks.json` (the start is already there).
    saved: i64,
}

/// How one event's delivery ended.
enum Outcome {
    Delivered,
    Failed,
    /// Shutdown came first: the event is not handled and is sent again
    /// after the restart.
    Stopped,
}

impl Worker {
    pub fn new(
        store: Arc<SqlStore>,
        target: Arc<Target>,
        shared: Arc<Shared>,
        cursors: Cursors,
        stop: CancellationToken,
        start: i64,
    ) -> Self {
        // Subscribed before the log is read, so nothing committed in between is missed.
        let live = store.subscribe();
        Worker {
            store,
            target,
            shared,
            cursors,
            stop,
            live,
            saved: start,
        }
    }

    /// Delivers until shutdown; saves the cursor on the way out.
    pub async fn run(mut self) {
        let mut feed = Feed {
            read: self.saved,
            queue: VecDeque::new(),
            gap: true,
            closed: false,
        };
        loop {
            self.show(&feed);
            if feed.gap && !feed.closed && feed.queue.len() < MAX_QUEUE {
                if !self.read_log(&mut feed).await {
                    break;
                }
                continue;
            }
            if let Some(ev) = feed.queue.front().cloned() {
                let outcome = self.deliver(&ev, &mut feed).await;
                if let Outcome::Stopped = outcome {
                    break;
                }
                feed.queue.pop_front();
                // Counted together with the cursor's move, so the status
                // never shows an event both handled and still behind.
                self.target.update(|s| {
                    match outcome {
                        Outcome::Delivered => s.delivered += 1,
                        _ => s.failed += 1,
                    }
                    s.retrying = false;
                    s.attempt = 0;
                    s.behind = feed.queue.len() as u64;
                    s.cursor = feed.handled();
                });
                self.save(&feed).await;
                continue;
            }
            // Caught up: keep a far-advanced cursor, then wait for commits.
            if feed.read - self.saved >= PERSIST_EVERY {
                self.save(&feed).await;
            }
            tokio::select! {
                _ = self.stop.cancelled() => break,
                next = self.live.recv(), if !feed.closed => feed.live(next, &self.target),
            }
        }
        self.show(&feed);
        if self.saved != feed.handled() {
            self.save(&feed).await;
        }
    }

    /// Reads one page of the log into the feed. False on shutdown.
    async fn read_log(&mut self, feed: &mut Feed) -> bool {
        match self.store.transitions_since(feed.read, None, PAGE).await {
            Ok(page) => {
                let whole = page.len() < PAGE as usize;
                let mut all_taken = true;
                for t in &page {
                    if !feed.take(t, |e| self.target.wants(e)) {
                        all_taken = false;
                        break;
                    }
                }
                // The log's end: live batches are trusted again.
                if whole && all_taken {
                    feed.gap = false;
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "hook cannot read the transitions log; trying again");
                self.pause(Duration::from_secs(1)).await
            }
        }
    }

    /// Sleeps, unless shutdown comes first (then false).
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.stop.cancelled() => false,
        }
    }

    /// A question's choices are in its row, not its transition: filled in
    /// here so the message offers one command (and one link) per choice.
    async fn with_choices(&self, ev: &HumanEvent) -> HumanEvent {
        let mut ev = ev.clone();
        if ev.event == EventKind::ApprovalRequested {
            ev.diffstat = self.approval_stat(&ev).await;
            return ev;
        }
        let (EventKind::QuestionAsked, Some(id)) = (ev.event, ev.question_id) else {
            return ev;
        };
        match self.store.run_detail(&ev.run_id).await {
            Ok(d) => {
                if let Some(q) = d.questions.iter().find(|q| q.id == id) {
                    ev.choices = q.choices.clone();
                    ev.answer_with = super::event::answer_commands(&ev);
                }
            }
            Err(e) => tracing::debug!(error = %e, "question choices unavailable"),
        }
        ev
    }

    /// What an approval would accept: its stage's latest checkpoint's files.
    async fn approval_stat(&self, ev: &HumanEvent) -> Option<String> {
        let d = self.store.run_detail(&ev.run_id).await.ok()?;
        let stage = ev.stage_id.as_deref()?;
        let commit = d
            .checkpoints
            .iter()
            .filter(|c| c.stage_id == stage)
            .max_by_key(|c| c.seq)?
            .commit
            .clone();
        let project = std::path::PathBuf::from(&d.run.project_dir);
        let base = d.run.base_commit.clone();
        tokio::task::spawn_blocking(move || {
            orchestrator_host::git::checkpoint_stat(&project, &commit, base.as_deref())
        })
        .await
        .ok()
        .flatten()
        .filter(|s| !s.is_empty())
    }

    /// Tries `ev` until it is delivered, every attempt failed, or shutdown.
    async fn deliver(&mut self, ev: &HumanEvent, feed: &mut Feed) -> Outcome {
        let ev = &self.with_choices(ev).await;
        let req = self.target.prepare(&self.shared, ev);
        let retry = self.shared.retry;
        let shown = self.target.update(|s| s.url.clone());
        for attempt in 1..=retry.max_attempts.max(1) {
            self.target.update(|s| {
                s.attempt = attempt;
                s.last_attempt_ms = Some(self.shared.clock.now_ms());
            });
            let sent = tokio::select! {
                r = send(&self.shared.http, &req) => r,
                _ = self.stop.cancelled() => return Outcome::Stopped,
            };
            let error = match sent {
                Ok((status, _)) if (200..300).contains(&status) => {
                    self.target.update(|s| s.last_status = Some(status));
                    tracing::debug!(url = %shown, seq = ev.seq, event = %ev.event, attempt, "event delivered");
                    return Outcome::Delivered;
                }
                Ok((status, body)) => {
                    // One line, however the receiver laid out its page.
                    let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
                    let body: String = body.chars().take(ERROR_BODY_CHARS).collect();
                    let error = if body.is_empty() {
                        format!("HTTP {status}")
                    } else {
                        format!("HTTP {status}: {body}")
                    };
                    (Some(status), error)
                }
                Err(e) => (None, describe(&e)),
            };
            let last = attempt >= retry.max_attempts;
            self.target.update(|s| {
                s.last_status = error.0;
                s.last_error = Some(error.1.clone());
                s.last_error_ms = Some(self.shared.clock.now_ms());
                if !last {
                    s.retrying = true;
                    s.retries += 1;
                }
            });
            if last {
                tracing::warn!(url = %shown, seq = ev.seq, event = %ev.event, attempts = attempt, error = %error.1, "event not delivered; going on with the next");
                return Outcome::Failed;
            }
            tracing::info!(url = %shown, seq = ev.seq, attempt, error = %error.1, "delivery failed; retrying");
            let wait = retry.backoff(attempt, getrandom::u64().unwrap_or(0));
            if !self.wait(wait, feed).await {
                return Outcome::Stopped;
            }
        }
        Outcome::Failed
    }

    /// Waits out a backoff while taking live batches in. False on shutdown.
    async fn wait(&mut self, d: Duration, feed: &mut Feed) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                _ = self.stop.cancelled() => return false,
                next = self.live.recv(), if !feed.closed => {
                    feed.live(next, &self.target);
                    self.show(feed);
                }
            }
        }
    }

    /// Publishes the feed's position in the status.
    fn show(&self, feed: &Feed) {
        self.target.update(|s| {
            s.behind = feed.queue.len() as u64;
            s.cursor = feed.handled();
        });
    }

    /// Writes the cursor and counters to `hooks.json`. A failed write is
    /// logged, not fatal: delivery goes on and the next write catches up.
    async fn save(&mut self, feed: &Feed) {
        let cursor = feed.handled();
        let saved = self.target.update(|s| Saved {
            url: s.url.clone(),
            cursor,
            delivered: s.delivered,
            failed: s.failed,
        });
        match self.cursors.save(&self.target.key, saved).await {
            Ok(()) => self.saved = cursor,
            Err(e) => tracing::warn!(error = %e, "cannot save the hook's cursor"),
        }
    }
}

/// One attempt: the answer's status, and its body when it refused.
async fn send(http: &reqwest::Client, p: &Prepared) -> Result<(u16, String), reqwest::Error> {
    let mut req = http
        .post(&p.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(p.body.clone());
    for (k, v) in &p.headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let body = if resp.status().is_success() {
        String::new()
    } else {
        resp.text().await.unwrap_or_default()
    };
    Ok((status, body))
}

/// A transport error with its causes (`connection refused`, `timed out`),
/// without the URL, which may hold a secret.
fn describe(e: &reqwest::Error) -> String {
    let mut msg = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}
