//! `GET /v1/events`: the transitions log as it grows, read as Server-Sent
//! Events, one [`Transition`] per event.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{BoxStream, Stream, StreamExt};
use orchestrator_core::{RunId, Transition};
use reqwest::Method;

use crate::client::{encode, Client};
use crate::error::ClientError;

/// Which transitions `/v1/events` sends; every part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this run's.
    pub run: Option<RunId>,
    /// Only these kinds of entity, comma-separated (`run,stage`).
    pub entities: Option<String>,
    /// Only those after this seq (the daemon's default: from now on).
    pub since: Option<i64>,
}

impl EventFilter {
    /// The transitions of `run` after `since`.
    pub fn run(run: &RunId, since: i64) -> EventFilter {
        EventFilter {
            run: Some(run.clone()),
            entities: None,
            since: Some(since),
        }
    }

    fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.run {
            parts.push(format!("run={}", encode(r.as_str())));
        }
        if let Some(e) = &self.entities {
            // The commas separate kinds: they stay as they are.
            let kinds: Vec<String> = e.split(',').map(encode).collect();
            parts.push(format!("entities={}", kinds.join(",")));
        }
        if let Some(s) = self.since {
            parts.push(format!("since={s}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// The transitions of one `/v1/events` connection, in order. It ends when
/// the connection does; an error is either the connection breaking
/// ([`ClientError::Unreachable`]: following on means connecting again after
/// the last seq seen) or an event this client cannot read
/// ([`ClientError::Protocol`]).
pub struct Events {
    body: BoxStream<'static, Result<Vec<u8>, reqwest::Error>>,
    /// Bytes received and not yet a whole event.
    buf: Vec<u8>,
    base: String,
    path: String,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `GET /v1/events?...`: the stream of transitions `filter` selects. A
    /// refusal is an error here; the stream has no time limit.
    pub async fn events(&self, filter: &EventFilter) -> Result<Events, ClientError> {
        let path = format!("/v1/events{}", filter.query());
        let resp = self.respond(Method::GET, &path, None, None).await?;
        Ok(Events {
            body: resp.bytes_stream().map(|c| c.map(|b| b.to_vec())).boxed(),
            buf: Vec::new(),
            base: self.base().to_owned(),
            path,
        })
    }
}

/// The data of the first whole event in `buf`, taken out of it: Some(None)
/// for an event without data (a keep-alive comment).
fn next_event(buf: &mut Vec<u8>) -> Option<Option<String>> {
    let end = buf.windows(2).position(|w| w == b"\n\n")?;
    let block: Vec<u8> = buf.drain(..end + 2).collect();
    let block = String::from_utf8_lossy(&block);
    let data: Vec<&str> = block
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    Some((!data.is_empty()).then(|| data.join("\n")))
}

impl Stream for Events {
    type Item = Result<Transition, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            while let Some(event) = next_event(&mut this.buf) {
                let Some(data) = event else { continue };
                return Poll::Ready(Some(serde_json::from_str(&data).map_err(|e| {
                    ClientError::Protocol {
                        path: this.path.clone(),
                        message: format!("unreadable event: {e}"),
                        source: Some(e),
                    }
                })));
            }
            match this.body.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(source))) => {
                    return Poll::Ready(Some(Err(ClientError::Unreachable {
                        base: this.base.clone(),
                        path: this.path.clone(),
                        source,
                    })))
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_make_queries() {
        assert_eq!(EventFilter::default().query(), "");
        let f = EventFilter {
            entities: Some("run,stage".into()),
            ..EventFilter::run(&"r 1".into(), 7)
        };
        assert_eq!(f.query(), "?run=r%201&entities=run,stage&since=7");
    }

    #[test]
    fn events_are_cut_at_blank_lines() {
        let mut buf = b": keep-alive\n\ndata: {\"a\":\ndata: 1}\n\ndata: x".to_vec();
        assert_eq!(next_event(&mut buf), Some(None));
        assert_eq!(next_event(&mut buf), Some(Some("{\"a\":\n1}".into())));
        assert_eq!(next_event(&mut buf), None);
        assert_eq!(buf, b"data: x");
    }
}
