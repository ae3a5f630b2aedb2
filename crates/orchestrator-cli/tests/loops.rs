//! A loop that ends on a marker its step prints (`until: {output_contains:
//! TEXT}`), through the real binaries: it ends at the iteration whose step
//! printed the text, and one whose step never prints it stops at `max`,
//! failing, as a loop whose `until` command never succeeds does.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn a_loop_ends_at_the_iteration_whose_step_prints_its_marker() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    h.start_agent(&d, "looper", 1);
    let file = h.write(
        "marker.yaml",
        r#"
name: marker
stages:
  - id: iterate
    repeat:
      max: 5
      until: {output_contains: "ALL DONE"}
    steps:
      - artifacts: [count]
        commands:
          - argv: [sh, -c, 'n=$(cat count 2>/dev/null || echo 0); echo $((n + 1)) > count; echo "iteration $((n + 1))"; echo "NOT DONE" >&2']
          - argv: [sh, -c, 'n=$(cat count); [ "$n" -lt 3 ] || echo "ALL DONE"']
  - id: never
    on_failure: fail
    repeat:
      max: 2
      until: {output_contains: "ALL DONE"}
    steps:
      - commands:
          - argv: [sh, -c, 'echo "ALL"; echo "DONE"; echo "ALL DONE" >&2']
"#,
    );
    let run = h.submit(&file);
    let detail = h.wait_run_end(&d, &run);
    assert_eq!(
        stage(&detail, "iterate")["state"],
        "succeeded",
        "{detail:#}"
    );
    let iterations = detail["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["stage_id"] == "iterate")
        .count();
    assert_eq!(iterations, 3, "{detail:#}");
    // Neither stderr nor the text split over lines counts.
    assert_eq!(stage(&detail, "never")["state"], "failed", "{detail:#}");
    let never: Vec<&Value> = detail["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["stage_id"] == "never")
        .collect();
    assert_eq!(never.len(), 2, "max bounds the loop: {detail:#}");
    assert_eq!(detail["run"]["state"], "failed");
}
