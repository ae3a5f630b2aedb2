//! Binding the values a run is given to its workflow's inputs: every type
//! with every kind of given value (command-line text, JSON), good and bad;
//! defaults, optional and missing inputs; unknown names; size caps; the
//! environment each value reaches commands as.

use std::collections::BTreeMap;

use orchestrator_core::spec::{
    bind_inputs, input_env_name, input_env_value, Given, InputError, InputType, Workflow,
};
use proptest::prelude::*;
use serde_json::{json, Value};

mod common;

use common::workflow_text::parses;

/// The workflow of the inputs example: one input of each type.
fn workflow() -> Workflow {
    parses(
        r#"
name: release
inputs:
  version:
    type: string
    description: The release to build
    default: "1.2"
  count: {type: number, default: 3}
  fast: {type: boolean, default: false}
  target: {type: choice, choices: [linux, mac], default: linux}
  files: {type: list}
  level: {type: choice, choices: [1, 2.5, true]}
  note: {required: false}
stages:
  - id: a
    steps: [{commands: [{argv: ["true"]}]}]
"#,
    )
}

fn text(pairs: &[(&str, &str)]) -> Given {
    let mut g = Given::new();
    for (k, v) in pairs {
        g.text(*k, *v);
    }
    g
}

fn json_given(pairs: &[(&str, Value)]) -> Given {
    let mut g = Given::new();
    for (k, v) in pairs {
        g.json(*k, v.clone());
    }
    g
}

/// The required inputs, given as text, plus `more`.
fn with_required(more: &[(&str, &str)]) -> Given {
    let mut g = text(&[("files", "a"), ("level", "1")]);
    g.merge(text(more));
    g
}

/// The value `name` is bound to from `given`.
fn bound(given: &Given, name: &str) -> Value {
    match bind_inputs(&workflow(), given) {
        Ok(b) => b[name].clone(),
        Err(e) => panic!("expected {name} to bind, got:\n{e}"),
    }
}

/// The one error binding `given` gives.
fn the_error(given: &Given) -> InputError {
    match bind_inputs(&workflow(), given) {
        Ok(b) => panic!("expected an error, got {b:?}"),
        Err(e) => {
            assert_eq!(e.0.len(), 1, "{e}");
            e.0.into_iter().next().unwrap()
        }
    }
}

#[track_caller]
fn says(e: &InputError, want: &str) {
    assert_eq!(e.to_string(), want);
}

// ------------------------------------------------------------- defaults

#[test]
fn defaults_fill_what_is_not_given_and_an_optional_input_is_null() {
    let b = bind_inputs(&workflow(), &with_required(&[])).unwrap();
    assert_eq!(
        b,
        BTreeMap::from([
            ("version".into(), json!("1.2")),
            ("count".into(), json!(3)),
            ("fast".into(), json!(false)),
            ("target".into(), json!("linux")),
            ("files".into(), json!(["a"])),
            ("level".into(), json!(1)),
            ("note".into(), Value::Null),
        ])
    );
}

#[test]
fn missing_required_inputs_are_each_named_with_their_type_and_how_to_give_them() {
    let e = bind_inputs(&workflow(), &Given::new()).unwrap_err();
    let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "missing required input 'files' (type list): give it with -p files=...",
            "missing required input 'level' (type choice): give it with -p level=...",
        ]
    );
    assert_eq!(e.to_string(), lines.join("\n"));
}

#[test]
fn json_null_counts_as_not_given() {
    let mut g = with_required(&[]);
    g.json("count", Value::Null).json("note", Value::Null);
    assert_eq!(bound(&g, "count"), json!(3));
    assert_eq!(bound(&g, "note"), Value::Null);
    let e = the_error(&json_given(&[("files", Value::Null), ("level", json!(1))]));
    assert!(
        matches!(e, InputError::Missing { ref name, kind: InputType::List } if name == "files")
    );
}

// --------------------------------------------------------- text, by type

#[test]
fn text_for_a_string_is_taken_as_it_is() {
    for t in ["", "2.0", "true", "[a]", " spaced ", "a=b", "ünï"] {
        assert_eq!(
            bound(&with_required(&[("version", t)]), "version"),
            json!(t)
        );
    }
}

#[test]
fn text_for_a_number_reads_integers_and_decimals() {
    for (t, want) in [
        ("3", json!(3)),
        ("-7", json!(-7)),
        ("0", json!(0)),
        ("2.5", json!(2.5)),
        ("1e3", json!(1000.0)),
        (" 4 ", json!(4)),
        ("18446744073709551615", json!(u64::MAX)),
    ] {
        assert_eq!(bound(&with_required(&[("count", t)]), "count"), want, "{t}");
    }
    for bad in ["abc", "", "inf", "NaN", "3 4", "0x1F", "1,5", "1e999"] {
        let e = the_error(&with_required(&[("count", bad)]));
        says(
            &e,
            &format!("input 'count': expected a number, got '{bad}'"),
        );
    }
}

#[test]
fn text_for_a_boolean_is_true_or_false_only() {
    assert_eq!(
        bound(&with_required(&[("fast", "true")]), "fast"),
        json!(true)
    );
    assert_eq!(
        bound(&with_required(&[("fast", "false")]), "fast"),
        json!(false)
    );
    for bad in ["yes", "1", "True", "FALSE", " true", ""] {
        let e = the_error(&with_required(&[("fast", bad)]));
        says(
            &e,
            &format!("input 'fast': expected a boolean (true or false), got '{bad}'"),
        );
    }
}

#[test]
fn text_for_a_choice_must_be_one_of_them_and_binds_the_choice_itself() {
    assert_eq!(
        bound(&with_required(&[("target", "mac")]), "target"),
        json!("mac")
    );
    // Choices that are not strings are matched by their text, and keep their type.
    assert_eq!(
        bound(&with_required(&[("level", "2.5")]), "level"),
        json!(2.5)
    );
    assert_eq!(
        bound(&with_required(&[("level", "true")]), "level"),
        json!(true)
    );
    let e = the_error(&with_required(&[("target", "win")]));
    says(&e, "input 'target': expected one of linux, mac, got 'win'");
    let e = the_error(&with_required(&[("level", "2")]));
    says(&e, "input 'level': expected one of 1, 2.5, true, got '2'");
    let e = the_error(&with_required(&[("target", "Linux")]));
    says(
        &e,
        "input 'target': expected one of linux, mac, got 'Linux'",
    );
}

#[test]
fn text_for_a_list_is_comma_separated_or_a_json_array() {
    for (t, want) in [
        ("a", json!(["a"])),
        ("a,b", json!(["a", "b"])),
        ("a, b ,c", json!(["a", "b", "c"])),
        ("", json!([])),
        ("a,,b", json!(["a", "", "b"])),
        (r#"["a,b", "c"]"#, json!(["a,b", "c"])),
        ("[]", json!([])),
    ] {
        assert_eq!(
            bound(&with_required(&[("files", t)]), "files"),
            want,
            "{t:?}"
        );
    }
    for bad in ["[a, b]", "[1, 2]", r#"["a""#, r#"[["a"]]"#] {
        let e = the_error(&with_required(&[("files", bad)]));
        says(
            &e,
            &format!("input 'files': expected a list of strings (a JSON array of strings, or items separated by commas), got '{bad}'"),
        );
    }
}

// --------------------------------------------------------- JSON, by type

#[test]
fn json_values_of_the_right_type_bind_as_they_are() {
    let g = json_given(&[
        ("version", json!("2.0")),
        ("count", json!(2.5)),
        ("fast", json!(true)),
        ("target", json!("mac")),
        ("files", json!(["x", "y"])),
        ("level", json!(2.5)),
        ("note", json!("hi")),
    ]);
    let b = bind_inputs(&workflow(), &g).unwrap();
    assert_eq!(b["version"], json!("2.0"));
    assert_eq!(b["count"], json!(2.5));
    assert_eq!(b["fast"], json!(true));
    assert_eq!(b["target"], json!("mac"));
    assert_eq!(b["files"], json!(["x", "y"]));
    assert_eq!(b["level"], json!(2.5));
    assert_eq!(b["note"], json!("hi"));
    // Any JSON number is a number, integer or not; a number choice matches by value.
    let g = json_given(&[
        ("count", json!(7)),
        ("files", json!([])),
        ("level", json!(1.0)),
    ]);
    let b = bind_inputs(&workflow(), &g).unwrap();
    assert_eq!(b["count"], json!(7));
    assert_eq!(b["level"], json!(1.0));
}

#[test]
fn json_values_of_another_type_are_not_coerced() {
    for (name, v, want) in [
        ("version", json!(2), "input 'version': expected a string, got 2 (a number)"),
        ("version", json!(["a"]), "input 'version': expected a string, got [\"a\"] (a list)"),
        ("count", json!("3"), "input 'count': expected a number, got \"3\" (a string)"),
        ("count", json!(true), "input 'count': expected a number, got true (a boolean)"),
        ("fast", json!("true"), "input 'fast': expected a boolean (true or false), got \"true\" (a string)"),
        ("fast", json!(1), "input 'fast': expected a boolean (true or false), got 1 (a number)"),
        ("target", json!("win"), "input 'target': expected one of linux, mac, got \"win\" (a string)"),
        ("level", json!("1"), "input 'level': expected one of 1, 2.5, true, got \"1\" (a string)"),
        ("files", json!("a,b"), "input 'files': expected a list of strings (a JSON array of strings, or items separated by commas), got \"a,b\" (a string)"),
        ("files", json!([1]), "input 'files': expected a list of strings (a JSON array of strings, or items separated by commas), got [1] (a list)"),
        ("note", json!({"a": 1}), "input 'note': expected a string, got {\"a\":1} (a map)"),
    ] {
        let mut g = json_given(&[("files", json!(["f"])), ("level", json!(1))]);
        g.json(name, v);
        says(&the_error(&g), want);
    }
}

// ------------------------------------------------------- names and caps

#[test]
fn an_unknown_name_lists_the_declared_ones_and_suggests_a_close_one() {
    let e = the_error(&with_required(&[("verison", "2")]));
    says(
        &e,
        "unknown input 'verison' (declared: count, fast, files, level, note, target, version); did you mean 'version'?",
    );
    let e = the_error(&with_required(&[("zzz", "2")]));
    says(
        &e,
        "unknown input 'zzz' (declared: count, fast, files, level, note, target, version)",
    );
    let bare = parses("name: w\nstages: [{id: a, steps: [{commands: [{argv: [\"true\"]}]}]}]\n");
    let e = bind_inputs(&bare, &text(&[("x", "1")])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown input 'x' (this workflow declares no inputs)"
    );
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let g = text(&[
        ("count", "abc"),
        ("fast", "yes"),
        ("verison", "1"),
        ("level", "9"),
    ]);
    let e = bind_inputs(&workflow(), &g).unwrap_err();
    let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(lines[0].starts_with("unknown input 'verison'"));
    assert_eq!(lines[1], "input 'count': expected a number, got 'abc'");
    assert_eq!(
        lines[2],
        "input 'fast': expected a boolean (true or false), got 'yes'"
    );
    assert_eq!(
        lines[3],
        "missing required input 'files' (type list): give it with -p files=..."
    );
    assert_eq!(
        lines[4],
        "input 'level': expected one of 1, 2.5, true, got '9'"
    );
}

#[test]
fn a_value_over_64_kib_and_inputs_over_256_kib_in_all_are_refused() {
    let big = "x".repeat(64 * 1024 + 1);
    let e = the_error(&with_required(&[("version", &big)]));
    says(
        &e,
        "input 'version' is 65537 bytes; at most 65536 are accepted",
    );
    let mut g = with_required(&[]);
    g.json("version", Value::String(big));
    assert!(matches!(
        the_error(&g),
        InputError::TooLarge { size: 65539, .. }
    ));
    // Five values under the cap each, over it together.
    let mut wf = workflow();
    let decl = wf.inputs["version"].clone();
    for i in 0..5 {
        wf.inputs.insert(format!("s{i}"), decl.clone());
    }
    let mut g = with_required(&[]);
    for i in 0..5 {
        g.text(format!("s{i}"), "y".repeat(60 * 1024));
    }
    let e = bind_inputs(&wf, &g).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert!(e.0[0].to_string().starts_with("the inputs are "), "{e}");
    assert!(
        e.0[0]
            .to_string()
            .ends_with("bytes in all; at most 262144 are accepted"),
        "{e}"
    );
    // A long given value is shortened in errors.
    let e = the_error(&with_required(&[("count", &"9x".repeat(100))]));
    assert!(e.to_string().ends_with("…'"), "{e}");
}

// ------------------------------------------------------ how values are given

#[test]
fn cli_parameters_are_name_equals_value() {
    let g = Given::from_cli(["count=4", "version=a=b", "files="]).unwrap();
    let b = bind_inputs(&workflow(), &{
        let mut g = g;
        g.text("level", "1");
        g
    })
    .unwrap();
    assert_eq!(b["count"], json!(4));
    assert_eq!(b["version"], json!("a=b"));
    assert_eq!(b["files"], json!([]));
    let e = Given::from_cli(["count", "=3", "a=1", "a=2"]).unwrap_err();
    let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "-p \"count\": expected NAME=VALUE",
            "-p \"=3\": expected NAME=VALUE",
            "input 'a' is given twice with -p",
        ]
    );
}

#[test]
fn a_params_file_is_a_json_object_and_cli_values_win_over_it() {
    let mut g = Given::from_json(json!({"count": 5, "files": ["f"], "level": 1})).unwrap();
    assert!(!g.is_empty());
    g.merge(Given::from_cli(["count=6"]).unwrap());
    assert_eq!(bound(&g, "count"), json!(6));
    let e = Given::from_json(json!(["count", 5])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the inputs must be a JSON object of input names to values, got [\"count\",5] (a list)"
    );
}

#[test]
fn values_reach_commands_as_orch_input_variables() {
    let b = bind_inputs(&workflow(), &with_required(&[("files", "a, b c")])).unwrap();
    let env: BTreeMap<String, String> = b
        .iter()
        .map(|(k, v)| (input_env_name(k), input_env_value(v)))
        .collect();
    assert_eq!(env["ORCH_INPUT_VERSION"], "1.2");
    assert_eq!(env["ORCH_INPUT_COUNT"], "3");
    assert_eq!(env["ORCH_INPUT_FAST"], "false");
    assert_eq!(env["ORCH_INPUT_TARGET"], "linux");
    assert_eq!(env["ORCH_INPUT_FILES"], r#"["a","b c"]"#);
    assert_eq!(env["ORCH_INPUT_LEVEL"], "1");
    assert_eq!(env["ORCH_INPUT_NOTE"], "");
}

proptest! {
    #[test]
    fn binding_any_text_never_panics(name in "[a-z]{1,8}", t in ".{0,40}") {
        let wf = workflow();
        for input in ["version", "count", "fast", "target", "files", "level", "note", name.as_str()] {
            let mut g = with_required(&[]);
            g.text(input, t.as_str());
            if let Ok(b) = bind_inputs(&wf, &g) {
                for (k, v) in &b {
                    prop_assert!(v.is_null() || wf.inputs[k].accepts(v), "{k} = {v}");
                }
            }
            let _ = Given::from_cli([format!("{input}={t}"), t.clone()]);
        }
    }

    #[test]
    fn a_bound_number_prints_as_it_reads_back(n in any::<i64>(), f in -1e12f64..1e12) {
        let g = with_required(&[("count", &n.to_string())]);
        prop_assert_eq!(input_env_value(&bound(&g, "count")), n.to_string());
        let g = with_required(&[("count", &f.to_string())]);
        let printed = input_env_value(&bound(&g, "count"));
        prop_assert_eq!(printed.parse::<f64>().unwrap(), f);
    }
}
