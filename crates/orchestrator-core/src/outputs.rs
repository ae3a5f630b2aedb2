//! A step's outputs: the `$ORCH_OUTPUT` file's format, its limits and the
//! merge of a stage's steps' outputs.
//!
//! The step writes the file, so its text is hostile: [`parse`] refuses
//! anything that is not exactly the format, naming the line and what was
//! expected, and [`check_step`] and [`check_stage`] hold the limits. The
//! agent parses the file; the store checks the limits again when a
//! completion arrives (the API is public: an agent could lie), and merges a
//! stage's outputs for `orch show` and for its dependents' expressions.
//!
//! The format, as GitHub Actions' `$GITHUB_OUTPUT`: lines `key=value`; a
//! multi-line value as `key<<DELIM`, its lines, then a line `DELIM`; or the
//! whole file one JSON object of string, number and boolean values. A key
//! written again wins.

use std::collections::BTreeMap;

/// A stage's (or a step's) outputs: key to value, in key order.
pub type Outputs = BTreeMap<String, String>;

/// The most bytes one step's output file may hold.
pub const MAX_STEP_BYTES: usize = 64 * 1024;
/// The most bytes (keys and values) a stage's merged outputs may hold.
pub const MAX_STAGE_BYTES: usize = 1024 * 1024;
/// The most keys a step's, or a stage's merged, outputs may hold.
pub const MAX_KEYS: usize = 256;
/// The longest key.
pub const MAX_KEY_LEN: usize = 64;

/// Why a step's outputs were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputsError {
    /// A line of the file is not in the format.
    #[error("line {line}: {found}; expected {expected}")]
    Line {
        line: usize,
        found: String,
        expected: &'static str,
    },
    /// The file is not a JSON object of string, number and boolean values.
    #[error("{0}; expected one JSON object of string, number or boolean values")]
    Json(String),
    /// The file is not UTF-8 text.
    #[error("not UTF-8 text (at byte {0})")]
    NotText(usize),
    /// A key is not a key.
    #[error("key {key:?}: {why}")]
    BadKey { key: String, why: &'static str },
    /// Over one of the limits.
    #[error("{what} {size}; expected at most {max}")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
}

const KEY_RULE: &str = "1 to 64 letters, digits, '_' or '-'";

/// Checks that `key` is 1 to 64 ASCII letters, digits, `_` or `-`.
pub fn check_key(key: &str) -> Result<(), OutputsError> {
    let fine = (1..=MAX_KEY_LEN).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if fine {
        Ok(())
    } else {
        Err(OutputsError::BadKey {
            key: shown(key),
            why: "expected 1 to 64 letters, digits, '_' or '-'",
        })
    }
}

/// At most 80 characters of hostile text, for a message.
fn shown(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Parses an output file's bytes (already read within [`MAX_STEP_BYTES`]);
/// see the module documentation for the format. An empty file is no
/// outputs. The limits are checked too ([`check_step`]).
pub fn parse(bytes: &[u8]) -> Result<Outputs, OutputsError> {
    if bytes.len() > MAX_STEP_BYTES {
        return Err(OutputsError::TooLarge {
            what: "the file holds bytes:",
            size: bytes.len(),
            max: MAX_STEP_BYTES,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| OutputsError::NotText(e.valid_up_to()))?;
    let out = if text.trim_start().starts_with('{') {
        parse_json(text)?
    } else {
        parse_lines(text)?
    };
    check_step(&out)?;
    Ok(out)
}

fn parse_json(text: &str) -> Result<Outputs, OutputsError> {
    let value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| OutputsError::Json(e.to_string()))?;
    let mut out = Outputs::new();
    for (key, v) in value {
        check_key(&key)?;
        let v = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            other => {
                return Err(OutputsError::Json(format!(
                    "key {key:?} holds {}",
                    match other {
                        serde_json::Value::Null => "null",
                        serde_json::Value::Array(_) => "an array",
                        _ => "an object",
                    }
                )))
            }
        };
        out.insert(key, v);
    }
    Ok(out)
}

fn parse_lines(text: &str) -> Result<Outputs, OutputsError> {
    let mut out = Outputs::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((n, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |expected| OutputsError::Line {
            line: n,
            found: format!("{:?}", shown(line)),
            expected,
        };
        let eq = line.find('=');
        let heredoc = line.find("<<").filter(|&h| eq.is_none_or(|e| h < e));
        let (key, value) = match (heredoc, eq) {
            (Some(h), _) => {
                let (key, delim) = (&line[..h], &line[h + 2..]);
                if delim.is_empty() {
                    return Err(bad("a delimiter after '<<' (key<<DELIM)"));
                }
                let mut body: Vec<&str> = Vec::new();
                loop {
                    match lines.next() {
                        Some((_, l)) if l == delim => break,
                        Some((_, l)) => body.push(l),
                        None => {
                            return Err(OutputsError::Line {
                                line: n,
                                found: format!("no line {:?} closes it", shown(delim)),
                                expected:
                                    "the value's lines, then a line holding only the delimiter",
                            })
                        }
                    }
                }
                (key, body.join("\n"))
            }
            (None, Some(e)) => (&line[..e], line[e + 1..].to_owned()),
            (None, None) => return Err(bad("key=value, key<<DELIM or a JSON object")),
        };
        if check_key(key).is_err() {
            return Err(OutputsError::Line {
                line: n,
                found: format!("key {:?}", shown(key)),
                expected: KEY_RULE,
            });
        }
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

/// The bytes outputs hold: their keys' and values' lengths.
pub fn size(outputs: &Outputs) -> usize {
    outputs.iter().map(|(k, v)| k.len() + v.len()).sum()
}

fn check(outputs: &Outputs, max_bytes: usize, whose: &'static str) -> Result<(), OutputsError> {
    for key in outputs.keys() {
        check_key(key)?;
    }
    if outputs.len() > MAX_KEYS {
        return Err(OutputsError::TooLarge {
            what: whose,
            size: outputs.len(),
            max: MAX_KEYS,
        });
    }
    let bytes = size(outputs);
    if bytes > max_bytes {
        return Err(OutputsError::TooLarge {
            what: "outputs of keys and values, in bytes:",
            size: bytes,
            max: max_bytes,
        });
    }
    Ok(())
}

/// One step's outputs within the limits: valid keys, at most
/// [`MAX_KEYS`] of them, at most [`MAX_STEP_BYTES`] of keys and values.
pub fn check_step(outputs: &Outputs) -> Result<(), OutputsError> {
    check(outputs, MAX_STEP_BYTES, "the step's keys:")
}

/// A stage's merged outputs within the limits: at most [`MAX_KEYS`] keys
/// and [`MAX_STAGE_BYTES`] of keys and values.
pub fn check_stage(outputs: &Outputs) -> Result<(), OutputsError> {
    check(outputs, MAX_STAGE_BYTES, "the stage's keys:")
}

/// A stage's outputs from its checkpoints' outputs, each with the step
/// (position) that made it, in the order they were made. A checkpoint at a
/// step no later than one before it means the stage ran again from there
/// (a lost attempt restarts from step 0; a send-back reopens it): what the
/// earlier run of those steps wrote is dropped. Then the remaining steps'
/// outputs are merged in order, a later write of a key winning.
pub fn merge<'a>(checkpoints: impl IntoIterator<Item = (u32, &'a Outputs)>) -> Outputs {
    let mut kept: Vec<(u32, &Outputs)> = Vec::new();
    for (step, outputs) in checkpoints {
        kept.retain(|(s, _)| *s < step);
        kept.push((step, outputs));
    }
    let mut out = Outputs::new();
    for (_, outputs) in kept {
        out.extend(outputs.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// A value as a terminal may show it: step text, so control and invisible
/// characters are dropped ([`crate::quote::clean`]) and its lines joined
/// by `⏎`; at most `max` characters, and whether it was cut.
pub fn shown_value(value: &str, max: usize) -> (String, bool) {
    let one_line = crate::quote::clean(value, usize::MAX).replace('\n', "⏎");
    match one_line.char_indices().nth(max) {
        Some((at, _)) => (one_line[..at].to_owned(), true),
        None => (one_line, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Outputs {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn lines_heredocs_and_later_wins() {
        let text =
            "version=1.2.3\n\nempty=\nnote<<EOF\nline one\nline=two\nEOF\nversion=2.0\neq=a=b\n";
        assert_eq!(
            parse(text.as_bytes()).unwrap(),
            map(&[
                ("version", "2.0"),
                ("empty", ""),
                ("note", "line one\nline=two"),
                ("eq", "a=b"),
            ])
        );
    }

    #[test]
    fn json_objects_of_scalars() {
        let text = r#" {"version": "1.2", "count": 3, "ok": true, "ratio": 0.5} "#;
        assert_eq!(
            parse(text.as_bytes()).unwrap(),
            map(&[
                ("version", "1.2"),
                ("count", "3"),
                ("ok", "true"),
                ("ratio", "0.5")
            ])
        );
        for bad in [
            r#"{"a": null}"#,
            r#"{"a": [1]}"#,
            r#"{"a": {}}"#,
            "{",
            r#"{"a b": "x"}"#,
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let err = parse(b"{\"a\": [1]}").unwrap_err().to_string();
        assert!(
            err.contains("an array") && err.contains("expected one JSON object"),
            "{err}"
        );
    }

    #[test]
    fn bad_lines_name_their_number() {
        let err = parse(b"a=1\nno equals sign\n").unwrap_err().to_string();
        assert!(
            err.starts_with("line 2: \"no equals sign\"; expected key=value"),
            "{err}"
        );
        let err = parse(b"a=1\nb=2\nbad key=3\n").unwrap_err().to_string();
        assert!(
            err.starts_with("line 3: key \"bad key\"; expected 1 to 64"),
            "{err}"
        );
        let err = parse(b"a=1\nnote<<EOF\nnever closed\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("line 2: no line \"EOF\" closes it"),
            "{err}"
        );
        let err = parse(b"note<<\n").unwrap_err().to_string();
        assert!(err.contains("a delimiter"), "{err}");
        let long = format!("{}=x", "k".repeat(65));
        assert!(parse(long.as_bytes()).is_err());
        assert!(parse(b"=x").is_err());
        assert!(matches!(parse(b"a=\xff"), Err(OutputsError::NotText(2))));
    }

    #[test]
    fn limits() {
        let many: String = (0..=MAX_KEYS).map(|i| format!("k{i}=v\n")).collect();
        let err = parse(many.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("257; expected at most 256"), "{err}");
        let big = format!("a={}", "x".repeat(MAX_STEP_BYTES));
        assert!(matches!(
            parse(big.as_bytes()),
            Err(OutputsError::TooLarge { .. })
        ));
        let stage: Outputs = (0..20)
            .map(|i| (format!("k{i}"), "x".repeat(MAX_STAGE_BYTES / 16)))
            .collect();
        assert!(check_stage(&stage).is_err());
        assert!(check_step(&map(&[("bad key", "v")])).is_err());
    }

    #[test]
    fn a_rerun_drops_what_the_earlier_run_of_its_steps_wrote() {
        let (a, b, c) = (
            map(&[("a", "1"), ("x", "old")]),
            map(&[("b", "2")]),
            map(&[("x", "new")]),
        );
        // Steps 0 and 1, then a restart from step 0 that wrote only x.
        assert_eq!(merge([(0, &a), (1, &b), (0, &c)]), map(&[("x", "new")]));
        // A retry from step 1 keeps step 0's outputs.
        assert_eq!(
            merge([(0, &a), (1, &b), (1, &c)]),
            map(&[("a", "1"), ("x", "new")])
        );
        assert_eq!(merge([(0, &a), (1, &c)]), map(&[("a", "1"), ("x", "new")]));
    }

    #[test]
    fn shown_values_are_cut() {
        assert_eq!(shown_value("a\nb", 10), ("a⏎b".to_owned(), false));
        assert_eq!(shown_value("abcdef", 3), ("abc".to_owned(), true));
        assert_eq!(shown_value("a\x1b[2Jb", 10), ("a[2Jb".to_owned(), false));
    }
}
