//! Workflows written in the Rust source and the errors they parse to, for
//! the validation tests: the YAML as a user would see it in their editor
//! (line 1 is the `name:` line), and the checks on an error's field,
//! message and line.

use orchestrator_core::spec::Workflow;
use orchestrator_core::{parse_workflow, SpecError};

/// Removes the leading newline and the common indentation of a YAML literal.
pub fn yaml(src: &str) -> String {
    let src = src.strip_prefix('\n').unwrap_or(src);
    let indent = src
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for l in src.lines() {
        out.push_str(l.get(indent..).unwrap_or(""));
        out.push('\n');
    }
    out
}

pub fn parses(text: &str) -> Workflow {
    match parse_workflow(text, Some("wf.yaml")) {
        Ok(wf) => wf,
        Err(e) => panic!("expected the workflow to parse, got:\n{e}\n--- text ---\n{text}"),
    }
}

pub fn errors(text: &str) -> Vec<SpecError> {
    match parse_workflow(text, Some("wf.yaml")) {
        Ok(wf) => panic!("expected errors, got a workflow: {wf:?}\n--- text ---\n{text}"),
        Err(e) => {
            assert!(!e.0.is_empty(), "an Err must hold at least one error");
            for err in &e.0 {
                assert_eq!(err.file.as_deref(), Some("wf.yaml"), "{err}");
            }
            e.0
        }
    }
}

/// The only error of `text`.
pub fn the_error(text: &str) -> SpecError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected exactly one error, got: {errs:#?}");
    errs.into_iter().next().unwrap()
}

/// The error about `field` among `errs`.
pub fn error_at<'a>(errs: &'a [SpecError], field: &str) -> &'a SpecError {
    errs.iter()
        .find(|e| e.field == field)
        .unwrap_or_else(|| panic!("no error about {field:?} in {errs:#?}"))
}

#[track_caller]
pub fn assert_mentions(err: &SpecError, parts: &[&str]) {
    for p in parts {
        assert!(
            err.message.contains(p),
            "message {:?} should mention {p:?}",
            err.message
        );
    }
}

/// The 1-based number of the first line of `text` containing `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
        + 1
}

/// Like `line_of`, for the `n`th (0-based) line containing `needle`.
pub fn nth_line_of(text: &str, needle: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)
        .unwrap_or_else(|| panic!("{needle:?} not {} times in text", n + 1))
        .0
        + 1
}
