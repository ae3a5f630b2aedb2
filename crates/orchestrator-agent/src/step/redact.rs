//! Keeping a step's secret values out of what the agent writes: its command
//! logs, its manifest and its error messages show `***` instead.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

/// What a secret value becomes.
pub(super) const MASK: &str = "***";

/// Bytes read at once while redacting a log.
const CHUNK: usize = 1 << 20;

/// The values to hide, longest first (so a value containing another is
/// hidden whole); empty values hide nothing.
pub(super) fn values<'a>(secrets: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = secrets
        .into_iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    v.sort_by_key(|s| std::cmp::Reverse(s.len()));
    v.dedup();
    v
}

/// `text` with every value replaced by [`MASK`].
pub(super) fn text(text: &str, values: &[String]) -> String {
    let mut out = text.to_owned();
    for v in values {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), MASK);
        }
    }
    out
}

/// Replaces every value in the file at `path` by [`MASK`], chunk by chunk (a
/// log may be larger than memory), through a temporary file renamed over it.
/// A file without any value is left as it is.
pub(super) fn file(path: &Path, values: &[String]) -> io::Result<()> {
    let Some(longest) = values.first().map(String::len) else {
        return Ok(());
    };
    let tmp = path.with_extension("redacting");
    let mut input = File::open(path)?;
    let mut output = File::create(&tmp)?;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0; CHUNK];
    let mut changed = false;
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&buf[..n]);
        changed |= replace_all(&mut pending, values);
        // Keep a tail that may hold the start of a value cut by the chunk.
        let keep = if n == 0 { 0 } else { longest - 1 };
        let flush = pending.len().saturating_sub(keep);
        output.write_all(&pending[..flush])?;
        pending.drain(..flush);
        if n == 0 {
            break;
        }
    }
    output.sync_all()?;
    drop(output);
    if changed {
        fs::rename(&tmp, path)
    } else {
        fs::remove_file(&tmp)
    }
}

/// Replaces every value in `bytes`; says whether any was found.
fn replace_all(bytes: &mut Vec<u8>, values: &[String]) -> bool {
    let mut found = false;
    for v in values {
        let v = v.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i..].starts_with(v) {
                out.extend_from_slice(MASK.as_bytes());
                i += v.len();
                found = true;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        *bytes = out;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_masked_in_text_and_across_chunks_of_a_file() {
        let vals = values(&["abc".to_owned(), "abcdef".to_owned(), String::new()]);
        assert_eq!(vals, ["abcdef", "abc"]);
        assert_eq!(text("x abcdef y abc z", &vals), "x *** y *** z");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        // A value straddling the chunk boundary is still found.
        let mut content = vec![b'.'; CHUNK - 2];
        content.extend_from_slice(b"abcdef!");
        fs::write(&path, &content).unwrap();
        file(&path, &vals).unwrap();
        let after = fs::read(&path).unwrap();
        assert!(
            after.ends_with(b"...***!"),
            "{:?}",
            &after[after.len() - 8..]
        );
        assert_eq!(after.len(), CHUNK - 2 + 4);
        assert!(!dir.path().join("log.redacting").exists());
    }
}
