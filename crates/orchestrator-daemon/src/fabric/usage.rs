//! Accounting of the gateway's requests: per job and model, how many
//! requests, tokens in and out, queue wait (arrival to slot) and latency
//! (slot to the answer's last byte).
//!
//! A [`Meter`] follows one request from its slot to the end of its answer,
//! watching the bytes as they pass without holding them back, and records
//! what it saw when dropped: when the answer ended, its client went away, or
//! the upstream failed (a request with no tokens). Tokens come from the
//! answer's `usage` object (`prompt_tokens`, `completion_tokens`); a stream
//! without one falls back to llama.cpp's `timings` of its last chunk
//! (`cache_n + prompt_n` in, `predicted_n` out), and without those to one
//! completion token per chunk that carried text.
//!
//! Records gather in memory ([`Accounting`]) and reach the store in one
//! transaction per flush: every [`FLUSH_EVERY`] ([`run`]), before a job's or a
//! run's usage is read, and at shutdown. Answering a request never waits for
//! the store.

use orchestrator_core::JobId;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orchestrator_core::fabric::{RequestUsage, Usage};
use orchestrator_store::{SqlStore, StoreError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// How often gathered usage is written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The most of a non-streamed answer kept to read its `usage`; a longer one
/// (a large batch of embeddings) counts no tokens.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// The longest Server-Sent Events line kept while it is incomplete.
const MAX_LINE: usize = 1024 * 1024;

/// Usage gathered since the last flush, and totals per model since start.
#[derive(Default)]
pub struct Accounting {
    pending: Mutex<HashMap<(JobId, String), Usage>>,
    by_model: Mutex<BTreeMap<String, Usage>>,
    /// One flush at a time: a reader that flushes first then sees every
    /// record made before it asked, even those another flush was writing.
    flushing: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked: every update is
    // one insert or add.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Accounting {
    /// Counts one request of `job_id` to `model`.
    pub fn record(&self, job_id: JobId, model: &str, r: RequestUsage) {
        lock(&self.pending)
            .entry((job_id, model.to_owned()))
            .or_default()
            .record(r);
        lock(&self.by_model)
            .entry(model.to_owned())
            .or_default()
            .record(r);
    }

    /// Counts a request that never got a slot because its model could not
    /// serve (its server would not start): all its time was waiting.
    pub fn failed(&self, job_id: JobId, model: &str, arrived: Instant) {
        let waited = u64::try_from(arrived.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.record(
            job_id,
            model,
            RequestUsage {
                queue_wait_ms: waited,
                ..Default::default()
            },
        );
    }

    /// Totals per model since this daemon started, for `/metrics`.
    pub fn by_model(&self) -> BTreeMap<String, Usage> {
        lock(&self.by_model).clone()
    }

    /// A meter for a request of `job_id` to `model` that arrived at
    /// `arrived` and got its slot now.
    pub fn meter(self: &Arc<Self>, job_id: JobId, model: &str, arrived: Instant) -> Meter {
        let granted = Instant::now();
        Meter {
            accounting: self.clone(),
            job_id,
            model: model.to_owned(),
            queue_wait: granted.duration_since(arrived),
            granted,
            body: Watch::Unknown,
        }
    }

    /// Writes what gathered since the last flush to the store. What the
    /// store refuses is kept for the next flush.
    pub async fn flush(&self, store: &SqlStore) -> Result<(), StoreError> {
        let _one = self.flushing.lock().await;
        let rows: Vec<(JobId, String, Usage)> = std::mem::take(&mut *lock(&self.pending))
            .into_iter()
            .map(|((job, model), u)| (job, model, u))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        match store.record_usage(rows.clone()).await {
            Ok(0) => Ok(()),
            Ok(lost) => {
                tracing::warn!(rows = lost, "model usage of unknown jobs dropped");
                Ok(())
            }
            Err(e) => {
                let mut pending = lock(&self.pending);
                for (job, model, u) in rows {
                    pending.entry((job, model)).or_default().add(&u);
                }
                Err(e)
            }
        }
    }
}

/// Flushes every [`FLUSH_EVERY`] until `stop`; the last flush, after the
/// API has stopped, is the daemon's (see `Daemon::wait`).
pub async fn run(accounting: Arc<Accounting>, store: Arc<SqlStore>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = accounting.flush(&store).await {
            tracing::warn!(error = %e, "model usage not written yet; kept for the next flush");
        }
    }
}

/// What a meter does with the answer's bytes.
enum Watch {
    /// Not told the answer's type yet (the upstream failed before answering).
    Unknown,
    /// A JSON answer, kept whole to read its `usage` at the end.
    Json(Vec<u8>),
    /// Server-Sent Events, read line by line as they pass.
    Sse(SseUsage),
    /// Anything else, or a JSON answer too long to keep.
    Ignore,
}

/// Follows one request; records it when dropped.
pub struct Meter {
    accounting: Arc<Accounting>,
    job_id: JobId,
    model: String,
    queue_wait: Duration,
    granted: Instant,
    body: Watch,
}

impl Meter {
    /// Tells the meter the answer's `Content-Type`.
    pub fn answer_type(&mut self, content_type: Option<&[u8]>) {
        let ct = content_type
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        self.body = if ct.starts_with("text/event-stream") {
            Watch::Sse(SseUsage::default())
        } else if ct.contains("json") {
            Watch::Json(Vec::new())
        } else {
            Watch::Ignore
        };
    }

    /// Looks at a chunk of the answer on its way to the client.
    pub fn observe(&mut self, chunk: &[u8]) {
        match &mut self.body {
            Watch::Json(buf) if buf.len() + chunk.len() <= MAX_BODY => buf.extend_from_slice(chunk),
            Watch::Json(_) => self.body = Watch::Ignore,
            Watch::Sse(s) => s.feed(chunk),
            Watch::Unknown | Watch::Ignore => {}
        }
    }

    fn tokens(&mut self) -> (u64, u64) {
        match std::mem::replace(&mut self.body, Watch::Ignore) {
            Watch::Json(buf) => serde_json::from_slice::<Value>(&buf)
                .ok()
                .and_then(|v| usage_of(&v))
                .unwrap_or_default(),
            Watch::Sse(s) => s.finish(),
            Watch::Unknown | Watch::Ignore => (0, 0),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let (prompt_tokens, completion_tokens) = self.tokens();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let r = RequestUsage {
            prompt_tokens,
            completion_tokens,
            queue_wait_ms: ms(self.queue_wait),
            latency_ms: ms(self.granted.elapsed()),
        };
        tracing::debug!(job_id = %self.job_id, model = %self.model, ?r, "model request counted");
        self.accounting.record(self.job_id, &self.model, r);
    }
}

/// (prompt_tokens, completion_tokens) of an answer's `usage` object.
pub fn usage_of(v: &Value) -> Option<(u64, u64)> {
    let u = v.get("usage")?.as_object()?;
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some((n("prompt_tokens"), n("completion_tokens")))
}

/// llama.cpp's `timings` of a stream's last chunk: the prompt's tokens
/// (those from its cache and those it processed) and those it predicted.
fn timings_of(v: &Value) -> Option<(u64, u64)> {
    let t = v.get("timings")?.as_object()?;
    let n = |k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some((n("cache_n") + n("prompt_n"), n("predicted_n")))
}

/// Whether a chunk carried generated text (a chat delta or a completion).
fn has_text(v: &Value) -> bool {
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return false;
    };
    choices.iter().any(|c| {
        let text = c
            .get("delta")
            .and_then(|d| d.get("content"))
            .or_else(|| c.get("text"));
        text.and_then(Value::as_str).is_some_and(|s| !s.is_empty())
    })
}

/// Reads the usage of a Server-Sent Events answer as its bytes pass.
#[derive(Debug, Default)]
pub struct SseUsage {
    /// The incomplete line at the end of what has passed.
    line: Vec<u8>,
    /// Set when an over-long line is being skipped to its end.
    skipping: bool,
    usage: Option<(u64, u64)>,
    timings: Option<(u64, u64)>,
    text_chunks: u64,
}

impl SseUsage {
    /// Takes the next bytes of the stream, split anywhere.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            if !self.skipping {
                self.line.extend_from_slice(&bytes[..nl]);
                let line = std::mem::take(&mut self.line);
                self.event_line(&line);
            }
            self.skipping = false;
            self.line.clear();
            bytes = &bytes[nl + 1..];
        }
        if !self.skipping {
            if self.line.len() + bytes.len() > MAX_LINE {
                self.skipping = true;
                self.line.clear();
            } else {
                self.line.extend_from_slice(bytes);
            }
        }
    }

    fn event_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
            return; // `[DONE]`, or not JSON: nothing to count.
        };
        if let Some(u) = usage_of(&v) {
            self.usage = Some(u);
        }
        if let Some(t) = timings_of(&v) {
            self.timings = Some(t);
        }
        if has_text(&v) {
            self.text_chunks += 1;
        }
    }

    /// (prompt_tokens, completion_tokens) of what passed: the `usage` seen,
    /// else the `timings`, else no prompt tokens and one completion token per
    /// chunk with text.
    pub fn finish(mut self) -> (u64, u64) {
        if !self.line.is_empty() && !self.skipping {
            let line = std::mem::take(&mut self.line);
            self.event_line(&line);
        }
        self.usage.or(self.timings).unwrap_or((0, self.text_chunks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What llama.cpp's server sent for a streamed chat with
    /// `stream_options.include_usage`.
    const WITH_USAGE: &str = concat!(
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" I\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":\"length\",\"index\":0,\"delta\":{}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[],\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":5,\"prompt_tokens\":31,\"total_tokens\":36},",
        "\"timings\":{\"cache_n\":30,\"prompt_n\":1,\"predicted_n\":5}}\n\n",
        "data: [DONE]\n\n",
    );

    /// The same without `include_usage`: only `timings` on the last chunk.
    const WITH_TIMINGS: &str = concat!(
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"hello\"}}]}\n\n",
        "data: {\"choices\":[{\"finish_reason\":\"length\",\"index\":0,\"delta\":{}}],",
        "\"timings\":{\"cache_n\":0,\"prompt_n\":31,\"predicted_n\":5}}\n\n",
        "data: [DONE]\n\n",
    );

    fn feed_in_pieces(text: &str, piece: usize) -> (u64, u64) {
        let mut s = SseUsage::default();
        for c in text.as_bytes().chunks(piece) {
            s.feed(c);
        }
        s.finish()
    }

    #[test]
    fn a_stream_s_usage_is_read_however_its_bytes_are_split() {
        for piece in [1, 2, 7, 64, 10_000] {
            assert_eq!(feed_in_pieces(WITH_USAGE, piece), (31, 5), "{piece}");
            assert_eq!(feed_in_pieces(WITH_TIMINGS, piece), (31, 5), "{piece}");
        }
        let crlf = WITH_USAGE.replace('\n', "\r\n");
        assert_eq!(feed_in_pieces(&crlf, 3), (31, 5));
    }

    #[test]
    fn a_stream_without_usage_counts_its_text_chunks() {
        let text = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n",
            ": a comment\n\n",
            "data: {\"choices\":[{\"index\":0,\"text\":\"b\"}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"}}]}\n\n",
            "data: [DONE]\n\n",
        );
        assert_eq!(feed_in_pieces(text, 5), (0, 2));
        // A client gone mid-stream: what passed still counts, even a last
        // line without its newline.
        let cut = &WITH_USAGE[..WITH_USAGE.find("data: [DONE]").unwrap() - 2];
        assert_eq!(feed_in_pieces(cut, 4), (31, 5));
        assert_eq!(feed_in_pieces(&WITH_USAGE[..60], 4), (0, 0));
    }

    #[test]
    fn an_over_long_line_is_skipped_without_losing_the_next() {
        let mut s = SseUsage::default();
        s.feed(b"data: {\"x\":\"");
        s.feed(&vec![b'a'; MAX_LINE + 10]);
        s.feed(b"\"}\ndata: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n");
        assert!(s.line.len() <= MAX_LINE);
        assert_eq!(s.finish(), (2, 3));
    }

    #[test]
    fn a_json_answer_s_usage_is_read_and_a_failed_one_counts_no_tokens() {
        let acc = Arc::new(Accounting::default());
        let arrived = Instant::now();
        let mut m = acc.meter(JobId::new(7), "smol", arrived);
        m.answer_type(Some(b"application/json; charset=utf-8"));
        let body = br#"{"object":"chat.completion","usage":{"completion_tokens":5,"prompt_tokens":31,"total_tokens":36}}"#;
        for c in body.chunks(10) {
            m.observe(c);
        }
        drop(m);
        let mut m = acc.meter(JobId::new(7), "smol", arrived);
        m.answer_type(Some(b"text/event-stream"));
        m.observe(WITH_TIMINGS.as_bytes());
        drop(m);
        drop(acc.meter(JobId::new(7), "smol", arrived)); // the upstream failed
        let u = acc.by_model()["smol"];
        assert_eq!(
            (u.requests, u.prompt_tokens, u.completion_tokens),
            (3, 62, 10)
        );
        let pending = lock(&acc.pending);
        assert_eq!(pending[&(JobId::new(7), "smol".to_owned())], u);
    }
}
