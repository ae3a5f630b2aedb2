//! Bad input for the text parsers: the workflow parser and the two policy
//! files. Arbitrary text and mutations of the valid examples must end in
//! errors that name the file and say something, never in a panic; what is
//! accepted must survive a round trip through its own serialization.
//!
//! `ORCH_FUZZ_CASES=100000 cargo test -p orchestrator-core --test fuzz_parser`
//! runs more cases than the CI default of 256.

use orchestrator_core::sched::{parse_project_policy, parse_system_rules};
use orchestrator_core::{parse_workflow, Workflow};
use proptest::prelude::*;

const FILE: &str = "fuzz/wf-Ω.yaml";

const EXAMPLES: &[&str] = &[
    include_str!("../../../examples/hello.yaml"),
    include_str!("../../../examples/diamond.yaml"),
    include_str!("../../../examples/failing.yaml"),
    include_str!("../../../examples/demo.yaml"),
];

const PROJECT_POLICIES: &[&str] = &[
    "priority: {min: -10, max: 10}\ndefault_priority: 3\nmax_parallel_runs: 2\n\
     max_parallel_stages: 8\nquotas:\n  slots: 4\n  memory: 8GiB\n  gpus: 1\n",
    "max_parallel_runs: 1\n",
];

const SYSTEM_RULES: &[&str] = &[
    "priority: {min: -100, max: 100}\nmax_parallel_runs: 10\nmax_parallel_stages: 40\n\
     reserve: {slots: 1, min_priority: 50}\nagent_max_slots: 16\naging: 10m\n",
    "aging: 1s\n",
];

fn cases() -> u32 {
    std::env::var("ORCH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// A position as a fraction of a length, so it fits any document.
#[derive(Debug, Clone, Copy)]
struct Pos(u32);

impl Pos {
    fn index(self, len: usize) -> usize {
        ((len as u64 * self.0 as u64) >> 32) as usize
    }
}

fn pos() -> impl Strategy<Value = Pos> {
    any::<u32>().prop_map(Pos)
}

/// One edit to a document.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(Pos),
    DuplicateLine(Pos),
    SwapLines(Pos, Pos),
    /// Replaces one whitespace-separated token of a line with `String`.
    ReplaceToken(Pos, Pos, String),
    TruncateAt(Pos),
    /// Adds (true) or removes (false) leading spaces on a line.
    Indent(Pos, bool, u8),
    InsertAt(Pos, String),
    HugeNumber(Pos, Pos),
    DeepNesting(Pos, u16, bool),
}

fn weird_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,12}",
        "[\\PC]{0,6}",
        Just("\u{0}".to_owned()),
        Just("\u{FEFF}".to_owned()),
        Just("é\u{301}🦀\u{202E}".to_owned()),
        Just(": ".to_owned()),
        Just("- ".to_owned()),
        Just("{".to_owned()),
        Just("]".to_owned()),
        Just("&a *a".to_owned()),
        Just("!!binary x".to_owned()),
        Just("<<: *x".to_owned()),
        Just("\t".to_owned()),
        Just("~".to_owned()),
        Just("\"\\u00".to_owned()),
        Just("-1".to_owned()),
        Just("1e400".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("999999999999999999999h".to_owned()),
        Just("0x7fffffffffffffff".to_owned()),
        Just(".nan".to_owned()),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        pos().prop_map(Mutation::DeleteLine),
        pos().prop_map(Mutation::DuplicateLine),
        (pos(), pos()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (pos(), pos(), weird_text()).prop_map(|(l, t, s)| Mutation::ReplaceToken(l, t, s)),
        pos().prop_map(Mutation::TruncateAt),
        (pos(), any::<bool>(), 1u8..9).prop_map(|(l, add, n)| Mutation::Indent(l, add, n)),
        (pos(), weird_text()).prop_map(|(at, s)| Mutation::InsertAt(at, s)),
        (pos(), pos()).prop_map(|(l, t)| Mutation::HugeNumber(l, t)),
        (pos(), 1u16..2000, any::<bool>())
            .prop_map(|(l, depth, flow)| Mutation::DeepNesting(l, depth, flow)),
    ]
}

fn char_boundary(s: &str, at: Pos) -> usize {
    let mut i = at.index(s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(doc: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = doc.lines().map(str::to_owned).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    match m {
        Mutation::DeleteLine(i) => {
            lines.remove(i.index(n));
        }
        Mutation::DuplicateLine(i) => {
            let l = lines[i.index(n)].clone();
            lines.insert(i.index(n), l);
        }
        Mutation::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
        Mutation::ReplaceToken(l, t, s) => {
            let line = &mut lines[l.index(n)];
            let mut tokens: Vec<String> = line.split(' ').map(str::to_owned).collect();
            let k = t.index(tokens.len());
            tokens[k] = s.clone();
            *line = tokens.join(" ");
        }
        Mutation::TruncateAt(at) => return doc[..char_boundary(doc, *at)].to_owned(),
        Mutation::Indent(l, add, k) => {
            let line = &mut lines[l.index(n)];
            if *add {
                line.insert_str(0, &" ".repeat(*k as usize));
            } else {
                let strip = line.len() - line.trim_start_matches(' ').len();
                line.drain(..strip.min(*k as usize));
            }
        }
        Mutation::InsertAt(at, s) => {
            let mut out = doc.to_owned();
            out.insert_str(char_boundary(doc, *at), s);
            return out;
        }
        Mutation::HugeNumber(l, t) => {
            let line = &mut lines[l.index(n)];
            let mut tokens: Vec<String> = line.split(' ').map(str::to_owned).collect();
            let k = t.index(tokens.len());
            tokens[k] = "9".repeat(40);
            *line = tokens.join(" ");
        }
        Mutation::DeepNesting(l, depth, flow) => {
            let d = *depth as usize;
            let nested = if *flow {
                format!("x: {}1{}", "[".repeat(d), "]".repeat(d))
            } else {
                (0..d.min(300))
                    .map(|i| format!("{}k{i}:", " ".repeat(i)))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            lines.insert(l.index(n + 1), nested);
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn mutated(docs: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        prop::sample::select(docs),
        prop::collection::vec(mutation(), 1..5),
    )
        .prop_map(|(doc, ms)| ms.iter().fold(doc.to_owned(), |d, m| apply(&d, m)))
}

fn arbitrary_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..512)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        // Text made of YAML's own punctuation reaches deeper into the parser
        // than uniformly random characters do.
        "[a-z:\\-\\[\\]{},&*!|>'\"#%@ \n\t0-9]{0,200}",
    ]
}

/// The property every workflow text must have, whatever it is.
fn check_workflow(text: &str) -> Result<(), TestCaseError> {
    match parse_workflow(text, Some(FILE)) {
        Err(errs) => {
            prop_assert!(!errs.0.is_empty(), "an error with no problems in it");
            for e in &errs.0 {
                prop_assert!(!e.message.trim().is_empty(), "empty message: {e:?}");
                prop_assert_eq!(e.file.as_deref(), Some(FILE));
            }
            let shown = errs.to_string();
            prop_assert_eq!(shown.matches(FILE).count(), errs.0.len(), "{}", shown);
        }
        Ok(wf) => round_trip(&wf)?,
    }
    Ok(())
}

fn round_trip(wf: &Workflow) -> Result<(), TestCaseError> {
    let json = serde_json::to_string(wf).expect("a parsed workflow serializes");
    match parse_workflow(&json, Some(FILE)) {
        Ok(again) => prop_assert_eq!(&again, wf, "changed by a round trip: {}", json),
        Err(e) => prop_assert!(false, "its own serialization is refused: {e}\n{json}"),
    }
    Ok(())
}

fn check_policies(text: &str) -> Result<(), TestCaseError> {
    for r in [
        parse_project_policy(text, FILE).map(|_| ()),
        parse_system_rules(text, FILE).map(|_| ()),
    ] {
        if let Err(e) = r {
            prop_assert_eq!(&e.file, FILE);
            prop_assert!(!e.message.trim().is_empty(), "empty message: {e:?}");
            prop_assert!(e.to_string().starts_with(FILE), "{e}");
        }
    }
    Ok(())
}

#[test]
fn every_example_parses_and_survives_a_round_trip() {
    for doc in EXAMPLES {
        let wf = parse_workflow(doc, Some(FILE)).unwrap();
        round_trip(&wf).unwrap();
    }
    for doc in PROJECT_POLICIES {
        parse_project_policy(doc, FILE).unwrap();
    }
    for doc in SYSTEM_RULES {
        parse_system_rules(doc, FILE).unwrap();
    }
}

/// The mutations must make bad documents, not only harmless ones, or the
/// error branch of the properties would go untested.
#[test]
fn mutations_reach_both_outcomes() {
    let unbalanced = apply(EXAMPLES[0], &Mutation::InsertAt(Pos(0), "{".to_owned()));
    check_workflow(&unbalanced).unwrap();
    assert!(parse_workflow(&unbalanced, Some(FILE)).is_err());
    let deep = apply(EXAMPLES[0], &Mutation::DeepNesting(Pos(0), 1999, true));
    check_workflow(&deep).unwrap();
    assert!(parse_workflow(&deep, Some(FILE)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_text_never_panics_the_workflow_parser(text in arbitrary_text()) {
        check_workflow(&text)?;
    }

    #[test]
    fn mutated_examples_never_panic_the_workflow_parser(text in mutated(EXAMPLES)) {
        check_workflow(&text)?;
    }

    #[test]
    fn arbitrary_text_never_panics_the_policy_parsers(text in arbitrary_text()) {
        check_policies(&text)?;
    }

    #[test]
    fn mutated_policies_never_panic_their_parsers(
        text in prop_oneof![mutated(PROJECT_POLICIES), mutated(SYSTEM_RULES)],
    ) {
        check_policies(&text)?;
    }
}
