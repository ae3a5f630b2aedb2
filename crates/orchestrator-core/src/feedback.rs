//! The feedback a failed stage's `on_failure` hands back to the stage it
//! sends its work to: what failed, how, and the end of what it printed.
//!
//! Log text is the step's own and untrusted: it is cut to a bounded tail
//! and stripped of control and direction-changing characters (see
//! [`crate::quote`]) before anything shows or hands it on.

use crate::spec::FeedbackKind;

/// The most lines of each log a tail keeps.
pub const TAIL_LINES: usize = 40;
/// The most characters of each log a tail keeps.
pub const TAIL_CHARS: usize = 4000;

/// The last [`TAIL_LINES`] lines of `log` (at most [`TAIL_CHARS`]
/// characters, cut at the front), cleaned line by line.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    let mut kept: Vec<String> = lines[from..]
        .iter()
        .map(|l| crate::quote::clean(l, TAIL_CHARS))
        .collect();
    while kept.iter().map(|l| l.chars().count() + 1).sum::<usize>() > TAIL_CHARS && kept.len() > 1 {
        kept.remove(0);
    }
    let mut out = kept.join("\n");
    if out.chars().count() > TAIL_CHARS {
        out = out.chars().skip(out.chars().count() - TAIL_CHARS).collect();
    }
    out
}

/// A failed command's tail as the agent reports it: its stderr's tail,
/// then its stdout's, each under a heading; None when both are empty.
pub fn log_tail(stderr: &str, stdout: &str) -> Option<String> {
    let mut out = String::new();
    for (name, log) in [("stderr", stderr), ("stdout", stdout)] {
        let t = tail(log);
        if !t.trim().is_empty() {
            out.push_str(&format!("--- last lines of {name} ---\n{t}\n"));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// What the stage the work is sent back to reads: which stage failed at
/// which step, the error (the failing command and its exit code, as the
/// agent said), and with `log_tail` the end of its output.
pub fn failure_feedback(
    stage: &str,
    step: u32,
    error: &str,
    tail: Option<&str>,
    kind: FeedbackKind,
) -> String {
    let mut out = format!(
        "Stage {stage} failed at step {step}: {}\n",
        crate::quote::one_line(error, 2000)
    );
    if let (FeedbackKind::LogTail, Some(t)) = (kind, tail) {
        out.push('\n');
        out.push_str(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_last_lines_and_cleans_them() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&log);
        assert!(t.starts_with("line 60\n"), "{t}");
        assert!(t.ends_with("line 99"), "{t}");
        assert_eq!(tail("a\u{1b}[31mred\u{202e}x"), "a[31mredx");
    }

    #[test]
    fn a_tail_is_capped_in_characters() {
        let long = "x".repeat(10 * TAIL_CHARS);
        assert!(tail(&long).chars().count() <= TAIL_CHARS);
        let lines = format!("{}\nlast", "y".repeat(TAIL_CHARS));
        assert_eq!(tail(&lines), "last");
    }

    #[test]
    fn feedback_names_the_stage_the_step_and_the_error() {
        let f = failure_feedback(
            "test",
            0,
            "command 0 exited with code 3",
            Some("--- last lines of stderr ---\nboom\n"),
            FeedbackKind::LogTail,
        );
        assert!(f.starts_with("Stage test failed at step 0: command 0 exited with code 3\n"));
        assert!(f.contains("boom"));
        let f = failure_feedback("test", 0, "e", Some("boom"), FeedbackKind::Error);
        assert!(!f.contains("boom"));
        assert_eq!(log_tail("", ""), None);
        assert_eq!(
            log_tail("err\n", "out\n").as_deref(),
            Some("--- last lines of stderr ---\nerr\n--- last lines of stdout ---\nout\n")
        );
    }
}
