//! Checks the layering `mod.rs` documents against the sources: every
//! module of `sql/` is in exactly one layer, imports (`super::NAME`) only
//! from its own layer or a lower one, and only the state machines' layer
//! has cycles. Read from the files, so a new import that breaks the rule
//! fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layer whose modules may call each other in a cycle.
const RECURSIVE: &str = "2";

/// The layer table of `mod.rs`'s module doc: layer name → its modules.
fn layers(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    doc.lines()
        .filter_map(|l| l.strip_prefix("//! | "))
        .filter_map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let layer = cells.first()?.split_whitespace().next()?;
            layer.parse::<u32>().ok()?;
            let mods = cells.get(1)?.split(',').map(|m| m.trim().to_owned());
            Some((layer.to_owned(), mods.collect()))
        })
        .collect()
}

/// The sibling modules `src` names through `super::`, tests left out.
fn imports(src: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let src = src.split("#[cfg(test)]").next().unwrap_or(src);
    let mut out = BTreeSet::new();
    for (i, _) in src.match_indices("super::") {
        let rest = &src[i + "super::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => group
                .split('}')
                .next()
                .unwrap_or("")
                .split(',')
                .map(|p| p.trim().split("::").next().unwrap_or(""))
                .collect(),
            None => vec![rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("")],
        };
        out.extend(
            names
                .into_iter()
                .filter(|n| known.contains(*n))
                .map(str::to_owned),
        );
    }
    out
}

/// Whether `from` reaches `to` through `edges`.
fn reaches(edges: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(m) = todo.pop() {
        for n in edges.get(&m).into_iter().flatten() {
            if n == to {
                return true;
            }
            if seen.insert(n.clone()) {
                todo.push(n.clone());
            }
        }
    }
    false
}

#[test]
fn layers_hold() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sql");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("read a module");
    let table = layers(&read("mod.rs"));
    assert!(table.len() >= 5, "the layer table of mod.rs: {table:?}");
    let layer_of: BTreeMap<String, String> = table
        .iter()
        .flat_map(|(l, ms)| ms.iter().map(move |m| (m.clone(), l.clone())))
        .collect();
    let mut files: BTreeSet<String> = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("list src/sql") {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_string_lossy();
        if let Some(m) = name.strip_suffix(".rs") {
            if m != "layers" {
                files.insert(m.to_owned());
            }
        }
    }
    let listed: BTreeSet<String> = layer_of.keys().cloned().collect();
    assert_eq!(files, listed, "every module of src/sql is in one layer");
    let count: usize = table.values().map(BTreeSet::len).sum();
    assert_eq!(count, listed.len(), "no module is in two layers");

    let known = listed;
    let edges: BTreeMap<String, BTreeSet<String>> = files
        .iter()
        .filter(|m| *m != "mod")
        .map(|m| {
            let mut deps = imports(&read(&format!("{m}.rs")), &known);
            deps.remove(m);
            (m.clone(), deps)
        })
        .collect();
    let rank = |m: &str| -> u32 { layer_of[m].parse().expect("a numbered layer") };
    for (m, deps) in &edges {
        for d in deps {
            assert!(
                rank(d) <= rank(m),
                "{m} (layer {}) imports {d} (layer {}), a higher layer",
                layer_of[m],
                layer_of[d]
            );
            if layer_of[m] != RECURSIVE || layer_of[d] != RECURSIVE {
                assert!(
                    !reaches(&edges, d, m),
                    "{m} imports {d}, which imports {m} back: a cycle outside the machines' layer"
                );
            }
        }
    }
    // The transaction layer is infrastructure: not even a helper of the domain.
    for m in ["tx", "writer"] {
        for d in &edges[m] {
            assert_eq!(layer_of[d], "0", "{m} imports {d}");
        }
    }
}
