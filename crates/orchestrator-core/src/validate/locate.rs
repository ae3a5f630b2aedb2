//! Finding where in the source text a semantic problem lives. The YAML
//! parser knows positions only for its own errors; for the rest (a dangling
//! `needs`, a duplicate id) the line is found by looking for the key and
//! value inside the right stage's block.

use super::Problem;

/// The 1-based (line, column) of a problem, where the text shows it.
pub(super) fn place(lines: &[&str], p: &Problem) -> Option<(usize, usize)> {
    let kv = p.locate.as_ref();
    let all = (0, lines.len());
    // The range to search, and where to point when nothing more is found.
    let (mut range, fallback) = match &p.stage {
        None => (all, None),
        Some((id, nth)) => match stage_block(lines, id, *nth) {
            Some((from, to)) => ((from, to), locate_in(lines, from, to, "id", id)),
            // Not a block-style stage (e.g. JSON): search the whole text.
            None => (all, locate_in(lines, 0, lines.len(), "id", id)),
        },
    };
    let mut at = None;
    for key in &p.within {
        match descend(lines, range, key) {
            Some((pos, block)) => {
                at = Some(pos);
                range = block;
            }
            // A flow map (`matrix: {py: [...]}`): point at the key on the
            // line of the last one found, and search no further.
            None => {
                return at
                    .map(|(l, c)| flow_key(lines[l - 1], key).map_or((l, c), |c| (l, c)))
                    .or(fallback);
            }
        }
    }
    kv.and_then(|(k, v)| locate_in(lines, range.0, range.1, k, v))
        .or_else(|| {
            let (l, c) = at?;
            Some(
                kv.and_then(|(k, _)| flow_key(lines[l - 1], k))
                    .map_or((l, c), |c| (l, c)),
            )
        })
        .or(fallback)
}

/// The line of `key:` among the direct children of `lines[from..to]` (those
/// as indented as the first), as a 1-based (line, column) of the key, and
/// the lines of its block: those after it indented more.
fn descend(
    lines: &[&str],
    (from, to): (usize, usize),
    key: &str,
) -> Option<((usize, usize), (usize, usize))> {
    let to = to.min(lines.len());
    let key_col = |line: &str| {
        let t = line.trim_start();
        let t = t.strip_prefix("- ").map_or(t, str::trim_start);
        line.len() - t.len()
    };
    let first = (from..to).find(|&i| !is_blank_or_comment(lines[i]))?;
    let child = key_col(lines[first]);
    for i in first..to {
        let line = lines[i];
        if is_blank_or_comment(line) || key_col(line) != child {
            continue;
        }
        let rest = &line[child..];
        let Some(after) = rest.strip_prefix(key).and_then(|r| r.strip_prefix(':')) else {
            continue;
        };
        if !(after.is_empty() || after.starts_with([' ', '\t'])) {
            continue;
        }
        let end = (i + 1..to)
            .find(|&k| !is_blank_or_comment(lines[k]) && indent_of(lines[k]) <= child)
            .unwrap_or(to);
        return Some(((i + 1, child + 1), (i + 1, end)));
    }
    None
}

/// The 1-based column of `key:` inside a flow map on `line` (`{type:
/// number, default: 3}`).
fn flow_key(line: &str, key: &str) -> Option<usize> {
    let pat = format!("{key}:");
    line.match_indices(&pat)
        .find(|(i, _)| line[..*i].trim_end().ends_with(['{', ',']))
        .map(|(i, _)| i + 1)
}

/// Finds the first line holding `key: value` (or `- value` in a list under key), 1-based.
#[cfg(test)]
pub(super) fn locate(text: &str, key: &str, value: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    locate_in(&lines, 0, lines.len(), key, value)
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// A plain YAML scalar ends before ` #`.
fn strip_comment(s: &str) -> &str {
    s.find(" #").map_or(s, |i| s[..i].trim_end())
}

/// Whether `written` (as it appears in the source) is `value`, plain or quoted.
fn same_value(written: &str, value: &str) -> bool {
    let written = written.trim();
    [written, strip_comment(written)].iter().any(|w| {
        *w == value
            || w.strip_prefix('"').and_then(|r| r.strip_suffix('"')) == Some(value)
            || w.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) == Some(value)
    })
}

/// Searches `lines[from..to]` for `key: value`, `key: [.., value, ..]`, or
/// `key:` followed by a block list holding `- value`. Returns the 1-based line
/// and column: of the key for `key: value`, of the value for list items.
fn locate_in(
    lines: &[&str],
    from: usize,
    to: usize,
    key: &str,
    value: &str,
) -> Option<(usize, usize)> {
    let to = to.min(lines.len());
    for i in from..to {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ").trim_start();
        let Some(rest) = trimmed.strip_prefix(key).and_then(|r| r.strip_prefix(':')) else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            continue;
        }
        let key_col = line.len() - trimmed.len();
        if same_value(rest, value) {
            return Some((i + 1, key_col + 1));
        }
        let body = strip_comment(rest.trim());
        // Flow sequences: `needs: [a, b]`.
        if let Some(inner) = body.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let mut offset = line.len() - rest.len() + (rest.len() - rest.trim_start().len()) + 1;
            for item in flow_items(inner) {
                if same_value(item, value) {
                    return Some((i + 1, offset + indent_of(item) + 1));
                }
                offset += item.len() + 1;
            }
        }
        // Block sequences: `needs:` then `- a` lines, indented at least as the key.
        if body.is_empty() {
            for (j, item_line) in lines.iter().enumerate().take(to).skip(i + 1) {
                if is_blank_or_comment(item_line) {
                    continue;
                }
                let ind = indent_of(item_line);
                let Some(item) = item_line.trim_start().strip_prefix("- ") else {
                    break;
                };
                if ind < key_col {
                    break;
                }
                if same_value(item, value) {
                    return Some((j + 1, ind + 2 + indent_of(item) + 1));
                }
            }
        }
    }
    None
}

/// The items of a flow sequence's inside, split at the commas outside
/// quotes and brackets (`"a,b", [c, d], e`), each with its spaces.
fn flow_items(inner: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut start, mut depth, mut quote) = (0, 0i32, None);
    for (i, c) in inner.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
}

/// The lines (0-based, end exclusive) of the block-style list item of the
/// `nth` (0-based) stage whose `id:` is `id`, judged by indentation.
fn stage_block(lines: &[&str], id: &str, nth: usize) -> Option<(usize, usize)> {
    let mut id_line = locate_in(lines, 0, lines.len(), "id", id)?.0 - 1;
    for _ in 0..nth {
        id_line = locate_in(lines, id_line + 1, lines.len(), "id", id)?.0 - 1;
    }
    let ind = indent_of(lines[id_line]);
    let opens_item = |l: &str| {
        let t = l.trim_start();
        t.starts_with("- ") || t == "-"
    };
    let (start, dash) = if opens_item(lines[id_line]) {
        (id_line, ind)
    } else {
        // The `-` that opens this item is on the nearest earlier, less indented line.
        let k = (0..id_line)
            .rev()
            .find(|&k| !is_blank_or_comment(lines[k]) && indent_of(lines[k]) < ind)?;
        if !opens_item(lines[k]) {
            return None;
        }
        (k, indent_of(lines[k]))
    };
    let end = (start + 1..lines.len())
        .find(|&k| !is_blank_or_comment(lines[k]) && indent_of(lines[k]) <= dash)
        .unwrap_or(lines.len());
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_block_and_flow_forms() {
        let src = "name: x\nstages:\n  - id: a\n    needs: [b, c]\n  - id: \"d\"\n";
        assert_eq!(locate(src, "id", "a"), Some((3, 5)));
        assert_eq!(locate(src, "id", "d"), Some((5, 5)));
        assert_eq!(locate(src, "needs", "c").map(|x| x.0), Some(4));
        assert_eq!(locate(src, "id", "zz"), None);
    }

    #[test]
    fn locate_finds_items_of_block_lists_and_the_column_of_flow_items() {
        let src =
            "stages:\n  - id: e\n    needs: [e, x]\n    labels:\n      - gpu\n      - 'big'\n";
        // The column is the item's, not the first `e` of `needs`.
        assert_eq!(locate(src, "needs", "e"), Some((3, 13)));
        assert_eq!(locate(src, "needs", "x"), Some((3, 16)));
        assert_eq!(locate(src, "labels", "gpu"), Some((5, 9)));
        assert_eq!(locate(src, "labels", "big"), Some((6, 9)));
        assert_eq!(locate(src, "labels", "e"), None);
    }

    #[test]
    fn flow_items_with_commas_inside_quotes_are_found_whole() {
        let src = "needs: [a, \"b[x=1,y=2]\", 'c,d']\n";
        assert_eq!(locate(src, "needs", "b[x=1,y=2]"), Some((1, 12)));
        assert_eq!(locate(src, "needs", "c,d"), Some((1, 26)));
        assert_eq!(
            flow_items("a, [b, c], {d: e, f: g}, h"),
            ["a", " [b, c]", " {d: e, f: g}", " h"]
        );
    }

    #[test]
    fn stage_blocks_end_at_the_next_item() {
        let src = "name: w\nstages:\n  - description: first\n    id: a\n    needs:\n      - z\n  - id: b\n    needs: [z]\nenv: {}\n";
        let lines: Vec<&str> = src.lines().collect();
        assert_eq!(stage_block(&lines, "a", 0), Some((2, 6)));
        assert_eq!(stage_block(&lines, "b", 0), Some((6, 8)));
        assert_eq!(stage_block(&lines, "b", 1), None);
        assert_eq!(locate_in(&lines, 6, 8, "needs", "z"), Some((8, 13)));
        assert_eq!(locate_in(&lines, 2, 6, "needs", "z"), Some((6, 9)));
    }
}
