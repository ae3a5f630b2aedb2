//! What the path and query fuzzing shares: a seeded generator, the bad
//! values, percent-encoding as a server reads it, and a raw HTTP/1.1 client
//! (an HTTP library would resolve `..` and re-encode what it sends).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: a fixed seed gives the same cases on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ------------------------------------------------------------ values

/// Every byte as `%XX`, or only those a path may not hold as they are.
pub fn encode(bytes: &[u8], all: bool) -> String {
    bytes
        .iter()
        .map(|&b| {
            if !all && (b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What a server decodes from `%XX` (a `%` not followed by two hex digits
/// stays as it is); `plus` also reads `+` as a space, as query strings do.
pub fn decode(s: &str, plus: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: &u8| (*c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex)) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if plus && b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    out
}

/// One bad value, as it goes into the URL (already encoded).
pub fn value(rng: &mut Rng, real: &[&str]) -> String {
    match rng.below(12) {
        0 => encode(&rng.bytes(64), true),
        1 => encode(&rng.bytes(64), false),
        // Huge: past any id, under hyper's 400 KiB limit on a request's head.
        2 => "x".repeat(1 + rng.below(16 * 1024)),
        3 => {
            let s: String = (0..1 + rng.below(8))
                .map(|_| {
                    *rng.pick(&[
                        "é",
                        "🦀",
                        "\u{202E}",
                        "\u{0}",
                        "Ω≈ç√",
                        "\u{FEFF}",
                        "\u{10FFFF}",
                        "ﬀ",
                    ])
                })
                .collect();
            encode(s.as_bytes(), rng.below(2) == 0)
        }
        4 => rng
            .pick(&[
                ".", "..", "...", "%2e%2e", "..%2F..", "%2F", "%5C", "..%5C..", "%2e", "../..",
            ])
            .to_string(),
        5 => rng
            .pick(&[
                "-1",
                "0",
                "-0",
                "+1",
                "9223372036854775807",
                "9223372036854775808",
                "-9223372036854775809",
                "99999999999999999999999",
                "1e3",
                "0x10",
                "1.5",
                "%201",
                "NaN",
                "-",
                "00000000001",
                "4294967296",
            ])
            .to_string(),
        6 => rng
            .pick(&[
                "%",
                "%z",
                "%zz",
                "%%",
                "%0",
                "%c3",
                "%ff%fe",
                "%c3%28",
                "%ED%A0%80",
            ])
            .to_string(),
        7 => rng
            .pick(&[
                "_",
                "%25",
                "%25%25",
                "r%25",
                "'",
                "'%20OR%201=1%20--",
                "*",
                "%5B",
                ";",
                "%00",
                "%0A",
            ])
            .to_string(),
        // Near misses of the real ids: changed case, one more character, a
        // `_` for a character (a LIKE wildcard), a NUL after it.
        8 => {
            let r = *rng.pick(real);
            match rng.below(5) {
                0 => encode(r.to_uppercase().as_bytes(), false),
                // Names it, every byte encoded, or a prefix of it: a run id
                // prefix is a run id.
                4 => encode(&r.as_bytes()[..1 + rng.below(r.len())], true),
                1 => format!("{}x", encode(r.as_bytes(), false)),
                2 if r.len() > 1 => format!("_{}", encode(&r.as_bytes()[1..], false)),
                _ => format!("{}%00", encode(r.as_bytes(), false)),
            }
        }
        9 => String::new(),
        10 => format!("{}{}", value(rng, real), value(rng, real)),
        _ => encode(
            &(0..1 + rng.below(8))
                .map(|_| rng.below(32) as u8)
                .collect::<Vec<_>>(),
            true,
        ),
    }
}

// ------------------------------------------------------------ raw HTTP

pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// One request on its own connection; an event stream's answer is its head.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let shown = &target[..target.len().min(200)];
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        let n = c
            .read(&mut buf)
            .await
            .unwrap_or_else(|e| panic!("{method} {shown}: {e}"));
        assert!(n > 0, "{method} {shown}: connection closed with no answer");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_default()
            .to_owned()
    };
    let content_type = header("content-type");
    if content_type.starts_with("text/event-stream") {
        return Answer {
            status,
            content_type,
            body: String::new(),
        };
    }
    let mut rest = got[end + 4..].to_vec();
    c.read_to_end(&mut rest).await.unwrap();
    if header("transfer-encoding") == "chunked" {
        let mut plain = Vec::new();
        let mut r = &rest[..];
        while let Some(i) = r.windows(2).position(|w| w == b"\r\n") {
            let n =
                usize::from_str_radix(std::str::from_utf8(&r[..i]).unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            plain.extend_from_slice(&r[i + 2..i + 2 + n]);
            r = &r[i + 4 + n..];
        }
        rest = plain;
    }
    Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&rest).into_owned(),
    }
}

// ------------------------------------------------------------ query strings

#[derive(Clone, Copy)]
pub enum Kind {
    U32,
    I64,
    Text,
}

/// The parameters a query string gets wrong, read as the daemon reads one:
/// `&`-separated, `+` a space, percent-decoded, lossy UTF-8, unknown names
/// ignored, a name given twice refused.
pub fn query_problems(q: &str, known: &[(&str, Kind)]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut bad = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = String::from_utf8_lossy(&decode(k, true)).into_owned();
        let v = String::from_utf8_lossy(&decode(v, true)).into_owned();
        let Some((name, kind)) = known.iter().find(|(n, _)| *n == k) else {
            continue;
        };
        let ok = match kind {
            Kind::U32 => v.parse::<u32>().is_ok(),
            Kind::I64 => v.parse::<i64>().is_ok(),
            Kind::Text => true,
        };
        if !ok || seen.contains(&k) {
            bad.push(name.to_string());
        }
        seen.push(k);
    }
    bad
}

pub fn query(rng: &mut Rng, known: &[(&str, Kind)], real: &[&str]) -> String {
    let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
    (0..rng.below(4))
        .map(|_| {
            let key = match rng.below(6) {
                0 => rng
                    .pick(&["unknown", "", "LIMIT", "%6cimit", "s%69nce", "since[]"])
                    .to_string(),
                1 => encode(&rng.bytes(12), false),
                _ => rng.pick(&names).to_string(),
            };
            match rng.below(8) {
                0 => key,
                1 => format!("{key}="),
                2 => format!(
                    "{key}={}",
                    rng.pick(&[
                        "+1",
                        "1+",
                        "%2B1",
                        "-1",
                        "0",
                        "1%00",
                        "12",
                        "-9223372036854775808"
                    ])
                ),
                _ => format!("{key}={}", value(rng, real).replace('/', "%2F")),
            }
        })
        .collect::<Vec<_>>()
        .join(if rng.below(8) == 0 { "&&" } else { "&" })
}
