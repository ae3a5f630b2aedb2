//! Raw HTTP/1.1 to the daemon, over a plain TCP stream: a request and its
//! answer (chunked bodies included), and the event stream read as it comes.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Daemon, LONG};

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

fn request_head(
    d: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body_len: Option<usize>,
) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
        d.port
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(n) = body_len {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {n}\r\n"
        ));
    }
    head.push_str("\r\n");
    head
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a response head: status and headers.
fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

/// Decodes the complete chunks at the front of `raw` into `out`; returns the
/// bytes consumed and whether the last chunk was seen.
fn dechunk(raw: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
    let mut pos = 0;
    loop {
        let Some(eol) = find(&raw[pos..], b"\r\n") else {
            return (pos, false);
        };
        let size_text = String::from_utf8_lossy(&raw[pos..pos + eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        let start = pos + eol + 2;
        if size == 0 {
            return (raw.len(), true);
        }
        if raw.len() < start + size + 2 {
            return (pos, false);
        }
        out.extend_from_slice(&raw[start..start + size]);
        pos = start + size + 2;
    }
}

/// One request on a fresh connection (`Connection: close`), read to its end.
pub fn http(
    d: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", d.port))
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", d.url));
    s.set_read_timeout(Some(LONG)).unwrap();
    s.set_write_timeout(Some(LONG)).unwrap();
    let head = request_head(d, method, path, token, body.map(<[u8]>::len));
    let mut req = head.into_bytes();
    if let Some(b) = body {
        req.extend_from_slice(b);
    }
    // The daemon may answer (413) and close before reading all of the body:
    // what could not be written does not matter then, the answer does.
    let _ = s.write_all(&req);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset after the answer (unread request body) ends it too.
            Err(e) if find(&raw, b"\r\n\r\n").is_some() => {
                let _ = e;
                break;
            }
            Err(e) => panic!("{method} {path}: reading the answer failed: {e}"),
        }
    }
    let end = find(&raw, b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "{method} {path}: no HTTP answer: {:?}",
            String::from_utf8_lossy(&raw)
        )
    });
    let (status, headers) = parse_head(&raw[..end]);
    let rest = &raw[end + 4..];
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut body = Vec::new();
        dechunk(rest, &mut body);
        resp.body = body;
    } else {
        let len = resp
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(rest.len())
            .min(rest.len());
        resp.body = rest[..len].to_vec();
    }
    resp
}

/// Reads `GET /v1/events?QUERY` as Server-Sent Events until `done` says so
/// for an event or `timeout` passes; returns the events' data as JSON, in
/// the order received.
pub fn events(
    d: &Daemon,
    query: &str,
    timeout: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> Vec<Value> {
    let path = format!("/v1/events?{query}");
    let mut s = TcpStream::connect(("127.0.0.1", d.port))
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", d.url));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(request_head(d, "GET", &path, Some(&d.admin_token), None).as_bytes())
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut head: Option<(usize, bool)> = None; // (body start, chunked)
    let mut consumed = 0;
    let mut text = Vec::new();
    let mut seen = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => panic!("reading {path}: {e}"),
        }
        if head.is_none() {
            let Some(end) = find(&raw, b"\r\n\r\n") else {
                continue;
            };
            let (status, headers) = parse_head(&raw[..end]);
            assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&raw));
            let chunked = headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
            });
            head = Some((end + 4, chunked));
            consumed = end + 4;
        }
        let Some((_, chunked)) = head else { continue };
        if chunked {
            let (n, _) = dechunk(&raw[consumed..], &mut text);
            consumed += n;
        } else {
            text.extend_from_slice(&raw[consumed..]);
            consumed = raw.len();
        }
        // Whole events end with a blank line.
        while let Some(end) = find(&text, b"\n\n") {
            let block: Vec<u8> = text.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block);
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let v: Value = serde_json::from_str(&data.join("\n"))
                .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {block}"));
            let stop = done(&v);
            seen.push(v);
            if stop {
                return seen;
            }
        }
    }
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
