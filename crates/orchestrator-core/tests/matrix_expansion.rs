//! Expanding matrix stages: the combinations in order, excludes and
//! includes, the ids, needs rewritten, the caps, and the plan that shows
//! where each stage came from. Property tests check the count, the ids and
//! that the same text always expands the same.

use std::collections::BTreeSet;

use orchestrator_core::spec::{
    expand, ExpandError, Matrix, MatrixError, MatrixValues, Stage, Workflow, MAX_COMBINATIONS,
};
use orchestrator_core::validate::{is_valid_stage_id, MAX_STAGES};
use orchestrator_core::{parse_workflow, plan};
use proptest::prelude::*;
use serde_json::{json, Value};

mod common;

use common::workflow_text::{parses, yaml};

fn ids(wf: &Workflow) -> Vec<&str> {
    wf.stages.iter().map(|s| s.id.as_str()).collect()
}

fn stage<'a>(wf: &'a Workflow, id: &str) -> &'a Stage {
    wf.stages.iter().find(|s| s.id == id).unwrap()
}

#[test]
fn a_matrix_stage_needing_another_needs_each_of_its_stages_and_so_does_each_of_its_own() {
    let wf = parses(&yaml(
        r#"
        name: w
        stages:
          - id: fetch
            steps: [{commands: [{argv: ["true"]}]}]
          - id: build
            needs: [fetch]
            matrix: {os: [linux, mac]}
            steps: [{commands: [{argv: ["true"]}]}]
          - id: test
            needs: [build, fetch]
            matrix: {py: [3, 4]}
            steps: [{commands: [{argv: ["true"]}]}]
          - id: report
            needs: [test]
            steps: [{commands: [{argv: ["true"]}]}]
        "#,
    ));
    assert_eq!(
        ids(&wf),
        [
            "fetch",
            "build[os=linux]",
            "build[os=mac]",
            "test[py=3]",
            "test[py=4]",
            "report"
        ]
    );
    for b in ["build[os=linux]", "build[os=mac]"] {
        assert_eq!(stage(&wf, b).needs, ["fetch"]);
    }
    for t in ["test[py=3]", "test[py=4]"] {
        assert_eq!(
            stage(&wf, t).needs,
            ["build[os=linux]", "build[os=mac]", "fetch"]
        );
    }
    assert_eq!(stage(&wf, "report").needs, ["test[py=3]", "test[py=4]"]);
    assert_eq!(
        stage(&wf, "test[py=4]").instance.as_ref().unwrap().values,
        [("py".to_owned(), json!(4))]
    );
}

#[test]
fn the_plan_shows_which_matrix_stage_each_stage_came_from() {
    let wf = parses(&yaml(
        r#"
        name: w
        stages:
          - id: test
            matrix: {py: ["3.11", "3.12"]}
            steps: [{commands: [{argv: ["true"]}]}]
          - id: report
            needs: [test]
            steps: [{commands: [{argv: ["true"]}]}]
        "#,
    ));
    let p = plan(&wf).unwrap();
    assert_eq!(
        p.layers,
        [
            vec!["test[py=3.11]".to_owned(), "test[py=3.12]".to_owned()],
            vec!["report".to_owned()]
        ]
    );
    assert_eq!(p.parallelism, [2, 1]);
    assert_eq!(p.matrix.len(), 2);
    assert_eq!(p.matrix["test[py=3.12]"], "test");
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["matrix"]["test[py=3.11]"], "test");
    // A stored spec (JSON) read back has no instances; the ids still say it.
    let stored: Workflow = serde_json::from_str(&serde_json::to_string(&wf).unwrap()).unwrap();
    assert!(stored.stages.iter().all(|s| s.instance.is_none()));
    assert_eq!(plan(&stored).unwrap(), p);
}

#[test]
fn a_plan_without_matrices_prints_as_before() {
    let wf = parses("name: w\nstages: [{id: a, steps: [{commands: [{argv: [\"true\"]}]}]}]\n");
    let json = serde_json::to_value(plan(&wf).unwrap()).unwrap();
    let keys: BTreeSet<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["layers", "parallelism", "critical_path", "critical_path_ms"])
    );
    // And a plan printed before matrices existed reads back.
    let old = r#"{"layers":[["a"]],"parallelism":[1],"critical_path":["a"],"critical_path_ms":0}"#;
    let back: orchestrator_core::Plan = serde_json::from_str(old).unwrap();
    assert!(back.matrix.is_empty());
}

#[test]
fn a_workflow_without_matrices_expands_to_itself() {
    let wf = parses(&yaml(
        r#"
        name: w
        stages:
          - id: a
            steps: [{commands: [{argv: ["true"]}]}]
          - id: b
            needs: [a]
            steps: [{commands: [{argv: ["true"]}]}]
        "#,
    ));
    assert_eq!(expand(wf.clone()), Ok(wf));
}

fn bare(stages: Vec<Stage>) -> Workflow {
    Workflow {
        name: "w".into(),
        description: None,
        inputs: Default::default(),
        priority: None,
        env: Default::default(),
        on_failure: None,
        cache: Vec::new(),
        stages,
    }
}

fn axis(key: &str, n: usize) -> (String, Vec<Value>) {
    (key.into(), (0..n).map(Value::from).collect())
}

fn with_matrix(id: &str, m: Matrix) -> Stage {
    Stage {
        id: id.into(),
        matrix: Some(m),
        ..Stage::default()
    }
}

#[test]
fn expanding_an_unchecked_workflow_reports_what_validation_would() {
    let empty = with_matrix("e", Matrix::default());
    assert_eq!(
        expand(bare(vec![empty])),
        Err(ExpandError::Matrix {
            stage: "e".into(),
            source: MatrixError::Empty
        })
    );
    let big = with_matrix(
        "b",
        Matrix {
            axes: vec![axis("x", 16), axis("y", 17)],
            ..Matrix::default()
        },
    );
    let e = expand(bare(vec![big])).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("stage \"b\": the matrix makes 272 combinations; at most {MAX_COMBINATIONS} are accepted")
    );
    let full = Matrix {
        axes: vec![axis("x", MAX_COMBINATIONS)],
        ..Matrix::default()
    };
    let n = MAX_STAGES / MAX_COMBINATIONS + 1;
    let many: Vec<Stage> = (0..n)
        .map(|i| with_matrix(&format!("s{i}"), full.clone()))
        .collect();
    assert_eq!(
        expand(bare(many)),
        Err(ExpandError::TooManyStages {
            count: n * MAX_COMBINATIONS
        })
    );
}

#[test]
fn an_include_the_same_as_an_excluded_combination_adds_it_back_at_the_end() {
    let m = Matrix {
        axes: vec![axis("a", 2), axis("b", 2)],
        exclude: vec![MatrixValues(vec![("a".into(), json!(0))])],
        include: vec![
            MatrixValues(vec![("b".into(), json!(1)), ("a".into(), json!(0))]),
            MatrixValues(vec![("a".into(), json!(1)), ("b".into(), json!(1))]),
            MatrixValues(vec![("a".into(), json!(0)), ("b".into(), json!(1))]),
        ],
    };
    let wf = expand(bare(vec![with_matrix("t", m)])).unwrap();
    assert_eq!(ids(&wf), ["t[a=1,b=0]", "t[a=1,b=1]", "t[a=0,b=1]"]);
}

// ------------------------------------------------------------ properties

/// Values that can go into ids: short strings, small integers, booleans.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z0-9][a-z0-9.+_-]{0,3}".prop_map(Value::from),
        (-5i64..20).prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ]
}

/// A matrix of 1 to 3 keys with distinct values, excludes and includes
/// drawn from them (and a key of their own for some includes).
fn matrix() -> impl Strategy<Value = Matrix> {
    prop::collection::btree_set("[a-z]{1,3}", 1..=3)
        .prop_flat_map(|keys| {
            let keys: Vec<String> = keys.into_iter().collect();
            let axes = keys
                .iter()
                .map(|k| {
                    prop::collection::vec(value(), 1..=4).prop_map({
                        let k = k.clone();
                        move |vs| {
                            let mut seen = BTreeSet::new();
                            let vs: Vec<Value> = vs
                                .into_iter()
                                .filter(|v| seen.insert(v.to_string()))
                                .collect();
                            (k.clone(), vs)
                        }
                    })
                })
                .collect::<Vec<_>>();
            axes
        })
        .prop_flat_map(|axes: Vec<(String, Vec<Value>)>| {
            let entry = {
                let axes = axes.clone();
                prop::collection::vec((0..axes.len(), 0usize..4), 1..=3).prop_map(move |picks| {
                    let mut e: Vec<(String, Value)> = Vec::new();
                    for (k, v) in picks {
                        let (key, vs) = &axes[k];
                        if !e.iter().any(|(o, _)| o == key) {
                            e.push((key.clone(), vs[v % vs.len()].clone()));
                        }
                    }
                    MatrixValues(e)
                })
            };
            let include = (entry.clone(), any::<bool>()).prop_map(|(mut e, extra)| {
                // A key no axis has; an entry names each key once, as
                // YAML's mappings do.
                if extra && !e.0.iter().any(|(k, _)| k == "zz") {
                    e.0.push(("zz".into(), json!("x")));
                }
                e
            });
            (
                Just(axes),
                prop::collection::vec(entry, 0..3),
                prop::collection::vec(include, 0..4),
            )
        })
        .prop_map(|(axes, exclude, include)| Matrix {
            axes,
            include,
            exclude,
        })
}

/// Every combination of `axes`, first key slowest, by recursion.
fn product(axes: &[(String, Vec<Value>)]) -> Vec<Vec<(String, Value)>> {
    let Some(((k, vs), rest)) = axes.split_first() else {
        return vec![Vec::new()];
    };
    let tails = product(rest);
    vs.iter()
        .flat_map(|v| {
            tails.iter().map(move |t| {
                let mut c = vec![(k.clone(), v.clone())];
                c.extend(t.iter().cloned());
                c
            })
        })
        .collect()
}

fn same(a: &[(String, Value)], b: &[(String, Value)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.iter().any(|(k2, v2)| k == k2 && v == v2))
}

proptest! {
    #[test]
    fn the_count_is_the_product_less_excludes_plus_distinct_includes(m in matrix()) {
        let mut want: Vec<Vec<(String, Value)>> = product(&m.axes)
            .into_iter()
            .filter(|c| !m.exclude.iter().any(|e| e.0.iter().all(|(k, v)| c.iter().any(|(k2, v2)| k == k2 && v == v2))))
            .collect();
        let kept = want.len();
        for inc in &m.include {
            if !want.iter().any(|c| same(c, &inc.0)) {
                want.push(inc.0.clone());
            }
        }
        match m.combinations() {
            Ok(got) => {
                prop_assert_eq!(got.len(), want.len());
                // The product part in order, first key slowest.
                for (g, w) in got.iter().zip(&want).take(kept) {
                    prop_assert_eq!(&g.0, w);
                }
                for (g, w) in got.iter().zip(&want).skip(kept) {
                    prop_assert!(same(&g.0, w));
                }
            }
            Err(MatrixError::Empty) => prop_assert!(want.is_empty()),
            Err(e) => prop_assert!(false, "{e}"),
        }
    }

    #[test]
    fn ids_are_unique_valid_stage_ids_and_expansion_is_deterministic(m in matrix()) {
        let text = serde_yaml_ng::to_string(&bare(vec![
            Stage {
                steps: vec![Default::default()],
                ..with_matrix("t", m)
            },
            Stage {
                id: "after".into(),
                needs: vec!["t".into()],
                steps: vec![Default::default()],
                ..Stage::default()
            },
        ]))
        .unwrap()
        // A step with commands, so that the workflow is valid.
        .replace("steps:\n  - {}", "steps:\n  - commands: [{argv: [\"true\"]}]");
        let first = parse_workflow(&text, None);
        prop_assert_eq!(&first, &parse_workflow(&text, None));
        let wf = match first {
            Ok(wf) => wf,
            // Only the matrix may be refused (left empty by its excludes,
            // values that look the same such as 1 and "1"): the rest is valid.
            Err(e) => {
                for err in &e.0 {
                    prop_assert!(err.field.starts_with("stages[0].matrix"), "{err}\n{text}");
                }
                return Ok(());
            }
        };
        let expanded: Vec<&str> = wf.stages.iter().filter(|s| s.instance.is_some()).map(|s| s.id.as_str()).collect();
        let unique: BTreeSet<&str> = expanded.iter().copied().collect();
        prop_assert_eq!(unique.len(), expanded.len());
        for id in &expanded {
            prop_assert!(is_valid_stage_id(id), "{id}");
        }
        prop_assert_eq!(&stage(&wf, "after").needs, &expanded);
    }
}
