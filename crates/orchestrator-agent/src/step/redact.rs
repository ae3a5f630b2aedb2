//! Keeping a step's secret values out of what the agent writes: its command
//! logs, its manifest and its error messages show `***` instead.

/// What a secret value becomes.
pub(super) const MASK: &str = "***";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_masked_in_text_longest_first() {
        let vals = values(&["abc".to_owned(), "abcdef".to_owned(), String::new()]);
        assert_eq!(vals, ["abcdef", "abc"]);
        assert_eq!(text("x abcdef y abc z", &vals), "x *** y *** z");
    }
}
