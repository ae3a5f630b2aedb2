//! The client itself: where the daemon is, how to reach it, the token, and
//! one request with its answer read by status.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ClientError, Refusal};

/// A sensible limit for requests that do not long-poll; the agent uses it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The daemon's API (or an agent's local endpoint), for one token.
///
/// Cloning is cheap and shares the connections, which are kept alive.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// The `Authorization` header, when there is a token.
    auth: Option<HeaderValue>,
    /// The limit of a request that does not long-poll; None: none.
    timeout: Option<Duration>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// How to build a [`Client`]: [`Client::builder`].
#[derive(Debug)]
pub struct ClientBuilder {
    base: String,
    token: Option<String>,
    timeout: Option<Duration>,
    unix_socket: Option<PathBuf>,
}

impl ClientBuilder {
    /// The bearer token every request carries.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The limit of each request that does not long-poll (long polls get
    /// their wait plus a margin). Default: none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Every connection goes to this Unix socket; the base URL then only
    /// names the host (`http://agent`).
    pub fn unix_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.unix_socket = Some(path.into());
        self
    }

    /// The client; an error when the base URL is not `http://HOST[:PORT]`
    /// (this build speaks no TLS: a daemon elsewhere is reached on a
    /// trusted network or through a tunnel).
    pub fn build(self) -> Result<Client, ClientError> {
        let base = self.base.trim_end_matches('/').to_owned();
        let config = |message: String| ClientError::Address {
            server: self.base.clone(),
            message,
        };
        if base.starts_with("https://") {
            return Err(config(
                "https is not supported by this build; use http:// (on a trusted network or through a tunnel)".into(),
            ));
        }
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(config(
                "expected an address such as http://127.0.0.1:7777".into(),
            ));
        }
        let auth = match &self.token {
            Some(t) => Some(
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| config("the token is not a valid header value".into()))?,
            ),
            None => None,
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            // The API never redirects; a redirect is an answer to show
            // (the dashboard's `/ui` is one), not to follow with a token.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(socket) = self.unix_socket {
            http = http.unix_socket(socket);
        }
        let http = http.build().map_err(|e| config(crate::error::chain(&e)))?;
        Ok(Client {
            http,
            base,
            auth,
            timeout: self.timeout,
        })
    }
}

/// An answer as it came, whatever its status: [`Client::send`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Client {
    /// A client for `base` (`http://host:port`): no token, no timeout, TCP.
    pub fn builder(base: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base.into(),
            token: None,
            timeout: None,
            unix_socket: None,
        }
    }

    /// A client for `base` with `token`, no timeout, over TCP.
    pub fn new(base: &str, token: &str) -> Result<Client, ClientError> {
        Client::builder(base).token(token).build()
    }

    /// `http://host:port`, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The limit of a request that does not long-poll.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn unreachable(&self, path: &str) -> impl Fn(reqwest::Error) -> ClientError + '_ {
        let path = path.to_owned();
        move |source| ClientError::Unreachable {
            base: self.base.clone(),
            path: path.clone(),
            source,
        }
    }

    /// Starts a request to `path` (query included) with the token.
    fn start(
        &self,
        method: Method,
        path: &str,
        timeout: Option<Duration>,
    ) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        req
    }

    /// One request as it goes on the wire, its answer as it came: no
    /// reading of the status. `body` is sent as JSON (as given: it need not
    /// be valid). For checks of the API's own answers; everything else uses
    /// the typed methods.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let mut req = self.start(method, path, self.timeout);
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(body);
        }
        let resp = req.send().await.map_err(self.unreachable(path))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(self.unreachable(path))?;
        Ok(RawResponse {
            status,
            headers,
            body: body.to_vec(),
        })
    }

    /// A success's response, or the refusal as an error; the body of a
    /// success is left to read.
    pub(crate) async fn respond(
        &self,
        method: Method,
        path: &str,
        body: Option<&(dyn ErasedJson + Sync)>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self.start(method, path, timeout);
        if let Some(body) = body {
            let bytes = body.to_json().map_err(|e| ClientError::Protocol {
                path: path.to_owned(),
                message: format!("the request does not serialize: {e}"),
                source: Some(e),
            })?;
            req = req.header(CONTENT_TYPE, "application/json").body(bytes);
        }
        let resp = req.send().await.map_err(self.unreachable(path))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(self.unreachable(path))?;
        Err(ClientError::refused(Refusal {
            path: path.to_owned(),
            status,
            error: serde_json::from_slice(&bytes).ok(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }))
    }

    /// The decoded answer to a request; 204 (no content) is None.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(dyn ErasedJson + Sync)>,
        timeout: Option<Duration>,
    ) -> Result<Option<T>, ClientError> {
        let resp = self.respond(method, path, body, timeout).await?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(self.unreachable(path))?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Protocol {
                path: path.to_owned(),
                message: format!("{status} with a body that does not parse: {e}"),
                source: Some(e),
            })
    }

    /// The decoded answer, which must not be 204.
    pub(crate) async fn expect<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(dyn ErasedJson + Sync)>,
        timeout: Option<Duration>,
    ) -> Result<T, ClientError> {
        self.call(method, path, body, timeout)
            .await?
            .ok_or_else(|| ClientError::Protocol {
                path: path.to_owned(),
                message: "204 No Content where an answer was expected".into(),
                source: None,
            })
    }

    /// `GET path` as JSON, for a route whose wire type lives with the
    /// daemon (the dashboard's links, the webhooks' status) rather than in
    /// `orchestrator_core::api`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.expect(Method::GET, path, None, self.timeout).await
    }

    /// `POST path` with `body` as JSON, for a route whose wire type lives
    /// with the daemon (see [`Client::get_json`]).
    pub async fn post_json<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.expect(Method::POST, path, Some(body), self.timeout)
            .await
    }
}

/// A request body, serialized when the request is made (a trait object, so
/// that the request code is compiled once, not once per body type).
pub(crate) trait ErasedJson {
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error>;
}

impl<T: Serialize> ErasedJson for T {
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// `s` as one path segment or query value: what is not unreserved is
/// percent-encoded, so that an id cannot reach another route.
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        assert!(Client::new("http://127.0.0.1:1/", "t").is_ok());
        assert_eq!(
            Client::new("http://127.0.0.1:1/", "t").unwrap().base(),
            "http://127.0.0.1:1"
        );
        for bad in ["https://x", "localhost:7777", "http://"] {
            assert!(
                matches!(Client::new(bad, "t"), Err(ClientError::Address { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Client::new("http://x", "bad\ntoken"),
            Err(ClientError::Address { .. })
        ));
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode("run-1_a.b~"), "run-1_a.b~");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
