//! The DAG planner: topological layers, their width and the critical path,
//! checked on small named shapes and as properties over random DAGs.

use std::collections::{BTreeMap, BTreeSet};

use orchestrator_core::parse_workflow;
use orchestrator_core::plan::{find_cycle, plan, Plan};
use orchestrator_core::spec::{CommandSpec, DurationSpec, Stage, Step, Workflow};
use proptest::prelude::*;
use proptest::sample::Index;

fn stage(id: &str, needs: &[&str], estimate_ms: Option<u64>) -> Stage {
    Stage {
        id: id.to_owned(),
        description: None,
        needs: needs.iter().map(|s| (*s).to_owned()).collect(),
        labels: Vec::new(),
        timeout: None,
        estimate: estimate_ms.map(DurationSpec),
        env: BTreeMap::new(),
        steps: vec![Step {
            name: None,
            shell: false,
            commands: vec![CommandSpec {
                argv: vec!["true".to_owned()],
                run: None,
                cwd: None,
                env: BTreeMap::new(),
                timeout: None,
            }],
            ..Default::default()
        }],
        repeat: None,
        ..Default::default()
    }
}

fn workflow(stages: Vec<Stage>) -> Workflow {
    Workflow {
        name: "wf".to_owned(),
        description: None,
        inputs: BTreeMap::new(),
        priority: None,
        env: BTreeMap::new(),
        on_failure: None,
        cache: vec![],
        stages,
    }
}

fn planned(stages: Vec<Stage>) -> Plan {
    let wf = workflow(stages);
    plan(&wf).unwrap_or_else(|c| panic!("unexpected cycle {c:?}"))
}

fn layers(p: &Plan) -> Vec<Vec<&str>> {
    p.layers
        .iter()
        .map(|l| l.iter().map(String::as_str).collect())
        .collect()
}

// ------------------------------------------------------------ shapes

#[test]
fn a_diamond_has_three_layers_with_the_two_arms_together() {
    let p = planned(vec![
        stage("a", &[], None),
        stage("b", &["a"], None),
        stage("c", &["a"], None),
        stage("d", &["b", "c"], None),
    ]);
    assert_eq!(layers(&p), [vec!["a"], vec!["b", "c"], vec!["d"]]);
    assert_eq!(p.parallelism, [1, 2, 1]);
    // Without estimates both arms are three stages long; the first need wins the tie.
    assert_eq!(p.critical_path, ["a", "b", "d"]);
    assert_eq!(p.critical_path_ms, 0);
}

#[test]
fn in_a_diamond_the_slower_arm_is_the_critical_path() {
    let p = planned(vec![
        stage("a", &[], Some(1_000)),
        stage("b", &["a"], Some(2_000)),
        stage("c", &["a"], Some(5_000)),
        stage("d", &["b", "c"], Some(500)),
    ]);
    assert_eq!(p.critical_path, ["a", "c", "d"]);
    assert_eq!(p.critical_path_ms, 6_500);
}

#[test]
fn a_chain_is_one_stage_per_layer_and_all_of_it_is_critical() {
    let p = planned(vec![
        stage("one", &[], Some(10)),
        stage("two", &["one"], Some(20)),
        stage("three", &["two"], Some(30)),
        stage("four", &["three"], Some(40)),
    ]);
    assert_eq!(
        layers(&p),
        [vec!["one"], vec!["two"], vec!["three"], vec!["four"]]
    );
    assert_eq!(p.parallelism, [1, 1, 1, 1]);
    assert_eq!(p.critical_path, ["one", "two", "three", "four"]);
    assert_eq!(p.critical_path_ms, 100);
}

#[test]
fn a_chain_declared_backwards_plans_the_same() {
    let p = planned(vec![
        stage("four", &["three"], None),
        stage("three", &["two"], None),
        stage("two", &["one"], None),
        stage("one", &[], None),
    ]);
    assert_eq!(
        layers(&p),
        [vec!["one"], vec!["two"], vec!["three"], vec!["four"]]
    );
    assert_eq!(p.critical_path, ["one", "two", "three", "four"]);
}

#[test]
fn a_wide_layer_reports_its_width_and_keeps_declaration_order() {
    let mut stages = vec![stage("setup", &[], None)];
    let workers: Vec<String> = (0..12).rev().map(|i| format!("w{i:02}")).collect();
    for w in &workers {
        stages.push(stage(w, &["setup"], None));
    }
    let refs: Vec<&str> = workers.iter().map(String::as_str).collect();
    stages.push(stage("gather", &refs, None));
    let p = planned(stages);
    assert_eq!(p.parallelism, [1, 12, 1]);
    assert_eq!(p.layers[1], workers, "declaration order within a layer");
    assert_eq!(p.critical_path.len(), 3);
    assert_eq!(p.critical_path[0], "setup");
    assert_eq!(p.critical_path[2], "gather");
}

#[test]
fn independent_stages_all_share_the_first_layer() {
    let p = planned(vec![
        stage("x", &[], None),
        stage("y", &[], None),
        stage("z", &[], None),
    ]);
    assert_eq!(layers(&p), [vec!["x", "y", "z"]]);
    assert_eq!(p.parallelism, [3]);
    assert_eq!(p.critical_path, ["x"], "a tie goes to the first declared");
}

#[test]
fn a_stage_sits_one_layer_after_its_deepest_need() {
    // d needs a (layer 0) and c (layer 2): it belongs in layer 3, not 1.
    let p = planned(vec![
        stage("a", &[], None),
        stage("b", &["a"], None),
        stage("c", &["b"], None),
        stage("d", &["a", "c"], None),
    ]);
    assert_eq!(layers(&p), [vec!["a"], vec!["b"], vec!["c"], vec!["d"]]);
}

#[test]
fn estimates_move_the_critical_path_off_the_longest_chain() {
    // By count the chain a -> b -> c -> d is longest; by time the single
    // slow stage `train` (10 minutes) dominates.
    let chain = vec![
        stage("a", &[], Some(1_000)),
        stage("b", &["a"], Some(1_000)),
        stage("c", &["b"], Some(1_000)),
        stage("d", &["c"], Some(1_000)),
    ];
    let mut with_slow = chain.clone();
    with_slow.push(stage("train", &[], Some(600_000)));
    let p = planned(with_slow);
    assert_eq!(p.critical_path, ["train"]);
    assert_eq!(p.critical_path_ms, 600_000);

    let mut with_fast = chain;
    with_fast.push(stage("train", &[], Some(3_000)));
    let p = planned(with_fast);
    assert_eq!(p.critical_path, ["a", "b", "c", "d"]);
    assert_eq!(p.critical_path_ms, 4_000);
}

#[test]
fn without_estimates_the_critical_path_is_the_longest_chain_by_count() {
    let p = planned(vec![
        stage("root", &[], None),
        stage("short1", &["root"], None),
        stage("short2", &["short1"], None),
        stage("long1", &["root"], None),
        stage("long2", &["long1"], None),
        stage("long3", &["long2"], None),
        stage("long4", &["long3"], None),
        stage("alone", &[], None),
    ]);
    assert_eq!(
        p.critical_path,
        ["root", "long1", "long2", "long3", "long4"]
    );
    assert_eq!(p.critical_path_ms, 0);
}

#[test]
fn stages_without_an_estimate_weigh_nothing_but_break_ties_by_count() {
    // Both chains take 1s; the one with more stages is reported.
    let p = planned(vec![
        stage("solo", &[], Some(1_000)),
        stage("head", &[], Some(1_000)),
        stage("tail", &["head"], None),
    ]);
    assert_eq!(p.critical_path, ["head", "tail"]);
    assert_eq!(p.critical_path_ms, 1_000);
}

#[test]
fn planning_a_cycle_fails_with_the_cycle() {
    let wf = workflow(vec![
        stage("a", &["c"], None),
        stage("b", &["a"], None),
        stage("c", &["b"], None),
    ]);
    let cycle = plan(&wf).unwrap_err();
    assert_eq!(find_cycle(&wf), Some(cycle.clone()));
    assert_cycle_in(&wf, &cycle);
    assert_eq!(cycle.len(), 4);
}

#[test]
fn a_self_need_is_a_cycle_of_one_stage() {
    let wf = workflow(vec![stage("a", &[], None), stage("me", &["a", "me"], None)]);
    assert_eq!(
        find_cycle(&wf),
        Some(vec!["me".to_owned(), "me".to_owned()])
    );
    assert!(plan(&wf).is_err());
}

#[test]
fn an_empty_workflow_plans_to_nothing() {
    let p = planned(vec![]);
    assert!(p.layers.is_empty() && p.parallelism.is_empty());
    assert!(p.critical_path.is_empty());
    assert_eq!(p.critical_path_ms, 0);
}

#[test]
fn a_plan_is_plain_json() {
    let p = planned(vec![stage("a", &[], Some(1_500)), stage("b", &["a"], None)]);
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "layers": [["a"], ["b"]],
            "parallelism": [1, 1],
            "critical_path": ["a", "b"],
            "critical_path_ms": 1500
        })
    );
    assert_eq!(serde_json::from_value::<Plan>(json).unwrap(), p);
}

#[test]
fn a_workflow_from_yaml_plans_its_estimates() {
    let wf = parse_workflow(
        "name: y\nstages:\n  - id: a\n    estimate: 2m\n    steps: [{commands: [{argv: [true]}]}]\n  - id: b\n    needs: [a]\n    estimate: 30s\n    steps: [{commands: [{argv: [true]}]}]\n",
        Some("y.yaml"),
    )
    .unwrap();
    let p = plan(&wf).unwrap();
    assert_eq!(p.critical_path_ms, 150_000);
}

// ------------------------------------------------------------ helpers

/// Asserts `path` starts and ends at one stage and each entry needs the next.
#[track_caller]
fn assert_cycle_in(wf: &Workflow, path: &[String]) {
    assert!(
        path.len() >= 2,
        "a cycle path has at least 2 entries: {path:?}"
    );
    assert_eq!(
        path.first(),
        path.last(),
        "a cycle ends where it starts: {path:?}"
    );
    let needs: BTreeMap<&str, &Vec<String>> = wf
        .stages
        .iter()
        .map(|s| (s.id.as_str(), &s.needs))
        .collect();
    for pair in path.windows(2) {
        assert!(
            needs[pair[0].as_str()].contains(&pair[1]),
            "{} does not need {} (path {path:?})",
            pair[0],
            pair[1]
        );
    }
}

// ------------------------------------------------------------ properties

/// A random DAG: stage `s{i}` may need any subset of `s0..s{i-1}`, with an
/// optional estimate; the stages are then shuffled so declaration order tells
/// the planner nothing.
fn random_dag() -> impl Strategy<Value = Workflow> {
    (1usize..60, 0.0f64..0.6)
        .prop_flat_map(|(n, density)| {
            let needs: Vec<_> = (0..n)
                .map(|i| proptest::collection::vec(proptest::bool::weighted(density), i))
                .collect();
            let estimates =
                proptest::collection::vec(proptest::option::weighted(0.7, 0u64..10_000), n);
            (needs, estimates)
        })
        .prop_map(|(needs, estimates)| {
            needs
                .iter()
                .zip(estimates)
                .enumerate()
                .map(|(i, (picks, est))| {
                    let ids: Vec<String> = picks
                        .iter()
                        .enumerate()
                        .filter(|(_, &p)| p)
                        .map(|(j, _)| format!("s{j}"))
                        .collect();
                    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                    stage(&format!("s{i}"), &refs, est)
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
        .prop_map(workflow)
}

fn by_id(wf: &Workflow) -> BTreeMap<&str, &Stage> {
    wf.stages.iter().map(|s| (s.id.as_str(), s)).collect()
}

fn weight(s: &Stage) -> u64 {
    s.estimate.map_or(0, DurationSpec::as_millis)
}

/// The best (milliseconds, stage count) of any chain ending at each stage,
/// by memoised recursion over needs (independent of the planner's algorithm).
fn best_chains(wf: &Workflow) -> BTreeMap<String, (u64, u64)> {
    fn go<'a>(
        id: &'a str,
        stages: &BTreeMap<&'a str, &'a Stage>,
        memo: &mut BTreeMap<String, (u64, u64)>,
    ) -> (u64, u64) {
        if let Some(&b) = memo.get(id) {
            return b;
        }
        let s = stages[id];
        let before = s
            .needs
            .iter()
            .map(|n| go(n, stages, memo))
            .max()
            .unwrap_or((0, 0));
        let b = (before.0 + weight(s), before.1 + 1);
        memo.insert(id.to_owned(), b);
        b
    }
    let stages = by_id(wf);
    let mut memo = BTreeMap::new();
    for s in &wf.stages {
        go(&s.id, &stages, &mut memo);
    }
    memo
}

/// The most stages on any chain of needs ending at each stage (itself included).
fn depths(wf: &Workflow) -> BTreeMap<String, usize> {
    let mut memo: BTreeMap<String, usize> = BTreeMap::new();
    // Relax until stable (at most n rounds for n stages): deliberately not
    // the planner's algorithm.
    for _ in 0..=wf.stages.len() {
        let mut changed = false;
        for s in &wf.stages {
            let d = 1 + s
                .needs
                .iter()
                .map(|n| memo.get(n).copied().unwrap_or(1))
                .max()
                .unwrap_or(0);
            if memo.get(&s.id) != Some(&d) {
                memo.insert(s.id.clone(), d);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    memo
}

/// Ids `id` needs, directly or not.
fn ancestors(wf: &Workflow, id: &str) -> BTreeSet<String> {
    let stages = by_id(wf);
    let mut out = BTreeSet::new();
    let mut todo = vec![id.to_owned()];
    while let Some(cur) = todo.pop() {
        for n in &stages[cur.as_str()].needs {
            if out.insert(n.clone()) {
                todo.push(n.clone());
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_stage_is_in_exactly_one_layer(wf in random_dag()) {
        let p = plan(&wf).unwrap();
        let mut placed: Vec<&str> = p.layers.iter().flatten().map(String::as_str).collect();
        placed.sort_unstable();
        let mut ids: Vec<&str> = wf.stages.iter().map(|s| s.id.as_str()).collect();
        ids.sort_unstable();
        prop_assert_eq!(placed, ids);
        prop_assert!(p.layers.iter().all(|l| !l.is_empty()), "no empty layers");
    }

    #[test]
    fn every_need_is_in_an_earlier_layer_and_no_stage_could_go_earlier(wf in random_dag()) {
        let p = plan(&wf).unwrap();
        let layer_of: BTreeMap<&str, usize> = p
            .layers
            .iter()
            .enumerate()
            .flat_map(|(k, l)| l.iter().map(move |id| (id.as_str(), k)))
            .collect();
        let stages = by_id(&wf);
        for (k, layer) in p.layers.iter().enumerate() {
            for id in layer {
                let needs = &stages[id.as_str()].needs;
                for n in needs {
                    prop_assert!(layer_of[n.as_str()] < k, "{id} in layer {k} needs {n} in layer {}", layer_of[n.as_str()]);
                }
                if k == 0 {
                    prop_assert!(needs.is_empty(), "{id} in layer 0 has needs");
                } else {
                    prop_assert!(
                        needs.iter().any(|n| layer_of[n.as_str()] == k - 1),
                        "{id} in layer {k} could go earlier: needs {needs:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn each_layer_is_the_depth_of_its_longest_chain_of_needs(wf in random_dag()) {
        let p = plan(&wf).unwrap();
        let depth = depths(&wf);
        for (k, layer) in p.layers.iter().enumerate() {
            for id in layer {
                prop_assert_eq!(depth[id], k + 1, "{}", id);
            }
        }
    }

    #[test]
    fn parallelism_is_the_width_of_each_layer(wf in random_dag()) {
        let p = plan(&wf).unwrap();
        prop_assert_eq!(p.parallelism.len(), p.layers.len());
        for (w, l) in p.parallelism.iter().zip(&p.layers) {
            prop_assert_eq!(*w, l.len());
        }
    }

    #[test]
    fn the_critical_path_is_a_heaviest_chain_from_a_root(wf in random_dag()) {
        let p = plan(&wf).unwrap();
        let stages = by_id(&wf);
        let path = &p.critical_path;
        prop_assert!(!path.is_empty());
        prop_assert!(stages[path[0].as_str()].needs.is_empty(), "starts at a root: {:?}", path);
        for pair in path.windows(2) {
            prop_assert!(
                stages[pair[1].as_str()].needs.contains(&pair[0]),
                "{} does not need {}", pair[1], pair[0]
            );
        }
        let ms: u64 = path.iter().map(|id| weight(stages[id.as_str()])).sum();
        prop_assert_eq!(ms, p.critical_path_ms);
        // No chain is heavier; among the heaviest, none has more stages.
        let best = best_chains(&wf);
        let heaviest = best.values().max().copied().unwrap();
        prop_assert_eq!((ms, path.len() as u64), heaviest);
    }

    #[test]
    fn the_plan_does_not_depend_on_declaration_order(wf in random_dag()) {
        let mut reversed = wf.clone();
        reversed.stages.reverse();
        let (a, b) = (plan(&wf).unwrap(), plan(&reversed).unwrap());
        let sets = |p: &Plan| -> Vec<BTreeSet<String>> {
            p.layers.iter().map(|l| l.iter().cloned().collect()).collect()
        };
        prop_assert_eq!(sets(&a), sets(&b));
        prop_assert_eq!(a.critical_path_ms, b.critical_path_ms);
        prop_assert_eq!(a.critical_path.len(), b.critical_path.len());
    }

    #[test]
    fn a_random_dag_has_no_cycle_and_passes_validation(wf in random_dag()) {
        prop_assert_eq!(find_cycle(&wf), None);
        let text = serde_yaml_ng::to_string(&wf).unwrap();
        match parse_workflow(&text, Some("dag.yaml")) {
            Ok(parsed) => prop_assert_eq!(parsed, wf),
            Err(e) => prop_assert!(false, "a DAG must validate: {}", e),
        }
    }

    #[test]
    fn a_back_edge_makes_a_cycle_that_find_cycle_reports_as_real_edges(
        wf in random_dag(),
        pick_stage in any::<Index>(),
        pick_ancestor in any::<Index>(),
    ) {
        // Pick a stage with at least one ancestor, and one of its ancestors.
        let candidates: Vec<(String, Vec<String>)> = wf
            .stages
            .iter()
            .map(|s| (s.id.clone(), ancestors(&wf, &s.id).into_iter().collect::<Vec<_>>()))
            .filter(|(_, a)| !a.is_empty())
            .collect();
        prop_assume!(!candidates.is_empty());
        let (late, ancestors_of_late) = pick_stage.get(&candidates);
        let early = pick_ancestor.get(ancestors_of_late).clone();
        // `late` transitively needs `early`; now `early` needs `late` too.
        let mut cyclic = wf;
        cyclic
            .stages
            .iter_mut()
            .find(|s| s.id == early)
            .unwrap()
            .needs
            .push(late.clone());

        let cycle = find_cycle(&cyclic);
        prop_assert!(cycle.is_some(), "{} -> {} should close a cycle", early, late);
        let cycle = cycle.unwrap();
        assert_cycle_in(&cyclic, &cycle);
        let distinct: BTreeSet<&String> = cycle.iter().collect();
        prop_assert_eq!(distinct.len(), cycle.len() - 1, "a simple cycle: {:?}", cycle);
        prop_assert_eq!(plan(&cyclic), Err(cycle.clone()));

        // Validation reports it too, with a path.
        let text = serde_yaml_ng::to_string(&cyclic).unwrap();
        let errs = parse_workflow(&text, Some("dag.yaml")).unwrap_err().0;
        prop_assert_eq!(errs.len(), 1, "{:?}", errs);
        prop_assert!(errs[0].message.contains("form a cycle"), "{}", errs[0]);
        prop_assert!(errs[0].line.is_some(), "{}", errs[0]);
    }
}
