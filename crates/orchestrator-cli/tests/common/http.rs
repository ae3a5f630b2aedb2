//! The daemon's API as the tests call it, through `orchestrator-client`:
//! typed reads (a run, its log, the event stream) and raw requests, whose
//! status, headers and body a test checks as they came (refusals, limits,
//! the dashboard's pages). The tests are synchronous; one runtime serves
//! every request.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::StreamExt;
pub use orchestrator_client::EventFilter;
use orchestrator_client::{Client, Method};
use serde_json::Value;

use super::{Daemon, LONG};

/// Runs `f` to its end on the tests' runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the tests' runtime starts")
    })
    .block_on(f)
}

impl Daemon {
    /// A client of this daemon with `token` (or none).
    pub fn client(&self, token: Option<&str>) -> Client {
        let mut b = Client::builder(self.url.as_str()).timeout(LONG);
        if let Some(t) = token {
            b = b.token(t);
        }
        b.build()
            .unwrap_or_else(|e| panic!("no client for {}: {e}", self.url))
    }

    /// A client of this daemon with the admin token.
    pub fn admin(&self) -> Client {
        self.client(Some(&self.admin_token))
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error` of a JSON error answer; panics when there is none.
    #[track_caller]
    pub fn error(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "error answer is not JSON: {self:?}"
        );
        match self.json()["error"].as_str() {
            Some(e) if !e.is_empty() => e.to_owned(),
            _ => panic!("no `error` in the answer: {}", self.text()),
        }
    }
}

/// One request, its answer as it came, whatever its status.
pub fn http(
    d: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Response {
    let m = Method::from_bytes(method.as_bytes())
        .unwrap_or_else(|e| panic!("bad method {method:?}: {e}"));
    let r = block_on(d.client(token).send(m, path, body.map(<[u8]>::to_vec)))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    Response {
        status: r.status.as_u16(),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), v)
            })
            .collect(),
        body: r.body,
    }
}

/// Reads `GET /v1/events` as the admin until `done` says so for an event
/// or `timeout` passes; returns the transitions as JSON, in the order
/// received.
pub fn events(
    d: &Daemon,
    filter: EventFilter,
    timeout: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> Vec<Value> {
    let client = d.admin();
    let mut seen = Vec::new();
    block_on(async {
        let follow = async {
            let mut events = client
                .events(&filter)
                .await
                .unwrap_or_else(|e| panic!("/v1/events ({filter:?}): {e}"));
            while let Some(t) = events.next().await {
                let t = t.unwrap_or_else(|e| panic!("reading /v1/events: {e}"));
                let v = serde_json::to_value(&t).expect("a transition is JSON");
                let stop = done(&v);
                seen.push(v);
                if stop {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, follow).await;
    });
    seen
}

/// A POST with a JSON body.
pub fn post_json(d: &Daemon, path: &str, token: &str, body: &Value) -> Response {
    http(
        d,
        "POST",
        path,
        Some(token),
        Some(body.to_string().as_bytes()),
    )
}
