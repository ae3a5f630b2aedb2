//! The patterns of `hashFiles`: `*` within a name, `?` one character, a
//! whole `**` any number of directories. Nothing else is special, and
//! brackets and braces are refused, so a pattern never means more than it
//! shows.

use super::GlobError;

/// Checks a pattern: relative, plain names, no `..`.
pub fn check_pattern(p: &str) -> Result<(), GlobError> {
    if p.is_empty() {
        return Err(GlobError::Empty);
    }
    if p.starts_with('/') {
        return Err(GlobError::Absolute);
    }
    if p.chars()
        .any(|c| c.is_control() || matches!(c, '[' | ']' | '{' | '}' | '\\'))
    {
        return Err(GlobError::Special);
    }
    for part in p.split('/') {
        match part {
            "" => return Err(GlobError::EmptyName),
            "." | ".." => return Err(GlobError::DotName(part.to_owned())),
            _ if part.contains("**") && part != "**" => {
                return Err(GlobError::PartialDoubleStar(part.to_owned()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `path` (a file's path from the repository's top) matches
/// `pattern`. Linear-time wildcard matching (the last star is the only
/// backtracking point), at the level of names for `**` and of bytes for
/// `*`: a pattern from a repository cannot make the daemon spin.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let names: Vec<&str> = path.split('/').collect();
    wildcard(
        &pat,
        &names,
        |p| *p == "**",
        |p, n| name_matches(p.as_bytes(), n.as_bytes()),
    )
}

fn name_matches(p: &[u8], n: &[u8]) -> bool {
    wildcard(p, n, |c| *c == b'*', |c, x| *c == b'?' || c == x)
}

/// Matches `items` against `pat`, where `is_star` marks an element that
/// stands for any run of items and `one` says whether an element matches
/// one item.
fn wildcard<P, T>(
    pat: &[P],
    items: &[T],
    is_star: impl Fn(&P) -> bool,
    one: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < items.len() {
        if p < pat.len() && is_star(&pat[p]) {
            star = Some((p, i));
            p += 1;
        } else if p < pat.len() && one(&pat[p], &items[i]) {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(is_star)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_stay_in_a_name_and_double_stars_cross_directories() {
        assert!(matches("requirements.txt", "requirements.txt"));
        assert!(!matches("requirements.txt", "sub/requirements.txt"));
        assert!(matches("*.lock", "Cargo.lock"));
        assert!(!matches("*.lock", "a/Cargo.lock"));
        assert!(matches("**/*.lock", "Cargo.lock"));
        assert!(matches("**/*.lock", "a/b/Cargo.lock"));
        assert!(matches("a/**", "a/b/c"));
        assert!(!matches("a/**", "b/c"));
        assert!(matches("req?.txt", "req1.txt"));
        assert!(!matches("req?.txt", "req.txt"));
        assert!(matches("a/**/z", "a/z"));
        assert!(matches("a/**/z", "a/b/c/z"));
        assert!(!matches("a/**/z", "a/b/c/y"));
        assert!(matches("*", "x"));
        assert!(!matches("*", "x/y"));
    }

    #[test]
    fn a_pattern_of_many_stars_is_fast() {
        let name = "a".repeat(4000);
        let pattern = format!("{}b", "*a".repeat(50));
        let started = std::time::Instant::now();
        assert!(!matches(&pattern, &name));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn patterns_are_checked() {
        assert!(check_pattern("a/*.txt").is_ok());
        assert!(check_pattern("**/package-lock.json").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a//b",
            "a/",
            "a/**b",
            "x[ab]",
            "{a,b}",
            "a\\b",
            "./a",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad:?}");
        }
    }
}
