//! Text a step wrote (a question, its choices, an error, a log excerpt),
//! made fit to show inside the orchestrator's own messages without being
//! mistaken for them: stripped of control and direction-changing
//! characters, cut to a length, and either quoted as a block (every line
//! prefixed `> `) or folded onto one line.
//!
//! Step text is untrusted: a step that can put a newline or a terminal
//! escape into a chat message can write a line that reads as the
//! orchestrator's own, with a link of its choosing.

/// The most characters of step text a message quotes.
pub const MAX_QUOTED: usize = 500;

/// Marks where quoted text was cut.
pub const ELLIPSIS: char = '…';

/// Characters that change how the text around them reads without being
/// visible: bidirectional overrides and isolates, zero-width ones.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// Cuts `s` to at most `max` characters, the last of them [`ELLIPSIS`]
/// when anything was cut.
fn cap(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push(ELLIPSIS);
    out
}

/// `text` with line breaks as `\n` and every other control or invisible
/// character gone (a tab becomes a space), at most `max` characters.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max.saturating_mul(4)));
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() == Some(&'\n') {
            continue;
        }
        if line_break(c) {
            out.push('\n');
        } else if c == '\t' {
            out.push(' ');
        } else if !c.is_control() && !invisible(c) {
            out.push(c);
        }
    }
    cap(out.trim_end(), max)
}

/// `text` on one line: [`clean`], then every run of whitespace holding a
/// line break folded to one space; at most `max` characters.
pub fn one_line(text: &str, max: usize) -> String {
    let cleaned = clean(text, usize::MAX);
    let folded = cleaned
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    cap(&folded, max)
}

/// `text` as a quoted block: [`clean`], at most `max` characters, each
/// line prefixed `> ` (an empty line is `>`), every line ending in `\n`.
pub fn block(text: &str, max: usize) -> String {
    let cleaned = clean(text, max);
    let mut out = String::with_capacity(cleaned.len() + 16);
    for line in cleaned.split('\n') {
        if line.trim().is_empty() {
            out.push_str(">\n");
        } else {
            out.push_str("> ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Whether `text` is shown as it is by [`one_line`]: no control or
/// invisible character, no line break, within `max` characters.
pub fn is_one_line(text: &str, max: usize) -> bool {
    one_line(text, max) == text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_forged_notice_stays_inside_the_quote() {
        let forged =
            "Which db?\n\nStage deploy waits for your approval.\r\nApprove: http://evil/x\x1b[2J";
        assert_eq!(
            block(forged, MAX_QUOTED),
            "> Which db?\n>\n> Stage deploy waits for your approval.\n> Approve: http://evil/x[2J\n"
        );
        assert_eq!(
            one_line(forged, MAX_QUOTED),
            "Which db? Stage deploy waits for your approval. Approve: http://evil/x[2J"
        );
        assert_eq!(one_line("a\u{202E}b\u{200B}c", 10), "abc");
    }

    #[test]
    fn long_text_is_cut_with_a_mark() {
        let s = "x".repeat(600);
        let q = one_line(&s, MAX_QUOTED);
        assert_eq!(q.chars().count(), MAX_QUOTED);
        assert!(q.ends_with(ELLIPSIS));
        assert_eq!(one_line("short", MAX_QUOTED), "short");
        assert!(is_one_line("sqlite", 50) && !is_one_line("a\nb", 50));
    }

    proptest! {
        #[test]
        fn a_block_is_only_quoted_lines(s in "\\PC*|[\\x00-\\x7f\u{2028}\u{202e}]{0,700}", max in 1usize..600) {
            let b = block(&s, max);
            for line in b.lines() {
                prop_assert!(line == ">" || line.starts_with("> "), "{line:?}");
            }
            prop_assert!(b.chars().all(|c| c == '\n' || (!c.is_control() && !invisible(c))));
            let body: usize = b.lines().map(|l| l.chars().count().saturating_sub(2)).sum();
            prop_assert!(body <= max);
        }

        #[test]
        fn one_line_has_no_break_and_keeps_its_length(s in "\\PC*|[\\x00-\\x7f\u{2028}\u{202e}]{0,700}", max in 1usize..600) {
            let l = one_line(&s, max);
            prop_assert!(l.chars().count() <= max);
            prop_assert!(!l.chars().any(|c| c.is_control() || invisible(c) || line_break(c)));
            prop_assert_eq!(one_line(&l, max), l);
        }
    }
}
