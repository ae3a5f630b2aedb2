//! A loop's `until: {output_contains: TEXT}`: whether a command of the
//! iteration's last step printed TEXT on its stdout. Read from the sealed
//! logs (secrets already masked, within the log's cap) through the
//! bundle's confined directory: the step could have planted anything at
//! their names. Searched as a stream, so a log of any size costs one pass
//! and a marker split across two reads is still found.

use std::io::Read;

use orchestrator_host::confined::ConfinedDir;

use crate::bundle;

/// How much of a log is read at a time.
const CHUNK: usize = 64 * 1024;

/// Whether the stdout log of one of commands `0..count` contains `text`.
/// A log that cannot be read counts as not containing it: the loop then
/// runs another iteration, or fails at its last, rather than ending on
/// what it did not see.
pub(super) fn printed(dir: &ConfinedDir, count: usize, text: &str) -> bool {
    let finder = Finder::new(text.as_bytes());
    (0..count).any(|i| {
        dir.open_regular(&bundle::stdout_name(i))
            .is_ok_and(|f| finder.found_in(f))
    })
}

/// Knuth–Morris–Pratt over a stream: linear in the log whatever the text.
struct Finder<'a> {
    needle: &'a [u8],
    /// For each prefix of `needle`, the length of its longest proper
    /// border (a prefix that is also a suffix).
    border: Vec<usize>,
}

impl<'a> Finder<'a> {
    fn new(needle: &'a [u8]) -> Self {
        let mut border = vec![0; needle.len()];
        let mut k = 0;
        for i in 1..needle.len() {
            while k > 0 && needle[i] != needle[k] {
                k = border[k - 1];
            }
            if needle[i] == needle[k] {
                k += 1;
            }
            border[i] = k;
        }
        Finder { needle, border }
    }

    fn found_in(&self, mut from: impl Read) -> bool {
        if self.needle.is_empty() {
            return true;
        }
        let mut buf = vec![0u8; CHUNK];
        let mut k = 0;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                while k > 0 && b != self.needle[k] {
                    k = self.border[k - 1];
                }
                if b == self.needle[k] {
                    k += 1;
                    if k == self.needle.len() {
                        return true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out one byte per read, so that every split is tried.
    struct Drip<'a>(&'a [u8]);

    impl Read for Drip<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.split_first() {
                Some((&b, rest)) if !buf.is_empty() => {
                    buf[0] = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn finds_the_text_across_reads_and_only_it() {
        let cases: [(&str, &str, bool); 6] = [
            ("DONE", "iteration 3\nDONE\n", true),
            ("DONE", "iteration 2\nDON\nE\n", false),
            ("aab", "aaaab", true),
            ("abab", "abaabab", true),
            ("abac", "ababab", false),
            ("x", "", false),
        ];
        for (needle, hay, want) in cases {
            let f = Finder::new(needle.as_bytes());
            assert_eq!(f.found_in(hay.as_bytes()), want, "{needle:?} in {hay:?}");
            assert_eq!(
                f.found_in(Drip(hay.as_bytes())),
                want,
                "{needle:?} in {hay:?}"
            );
        }
    }
}
