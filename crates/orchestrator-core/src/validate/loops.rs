//! The checks of a stage's `on_failure` send-back rule: the stage it sends
//! the work back to must come before it (an ancestor through `needs`), and
//! its rounds must be bounded.

use std::collections::{BTreeMap, BTreeSet};

use super::{add_in, Problem};
use crate::spec::{Workflow, MAX_SEND_BACK_ROUNDS};

/// Checks every stage's send-back rule; `nth[i]` locates stage `i`'s block.
pub(super) fn check_send_backs(wf: &Workflow, nth: &[usize], out: &mut Vec<Problem>) {
    let needs: BTreeMap<&str, &[String]> = wf
        .stages
        .iter()
        .map(|s| (s.id.as_str(), s.needs.as_slice()))
        .collect();
    for (i, st) in wf.stages.iter().enumerate() {
        let Some(rule) = st.send_back() else {
            continue;
        };
        let stage = (st.id.as_str(), nth.get(i).copied().unwrap_or(0));
        let target = rule.retry_stage.as_str();
        if let Some(n) = rule
            .max_rounds
            .filter(|n| !(1..=MAX_SEND_BACK_ROUNDS).contains(n))
        {
            add_in(
                out,
                format!("stages[{i}].on_failure.max_rounds"),
                format!(
                    "{n}: expected 1 to {MAX_SEND_BACK_ROUNDS} rounds (each round runs the stages between again)"
                ),
                stage,
                Some(("max_rounds", &n.to_string())),
            );
        }
        if !ancestors(&needs, &st.id).contains(target) {
            let before: Vec<&str> = ancestors(&needs, &st.id).into_iter().take(10).collect();
            add_in(
                out,
                format!("stages[{i}].on_failure.retry_stage"),
                format!(
                    "stage {:?} sends its work back to {target:?}, which is not a stage it needs (directly or through others); expected one of: {}",
                    st.id,
                    if before.is_empty() {
                        "(none: this stage needs no stage)".to_owned()
                    } else {
                        before.join(", ")
                    }
                ),
                stage,
                Some(("retry_stage", target)),
            );
        }
    }
}

/// Every stage `id` needs, directly or through others.
pub fn ancestors<'a>(needs: &BTreeMap<&'a str, &'a [String]>, id: &str) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = needs
        .get(id)
        .map(|n| n.iter().map(String::as_str).collect())
        .unwrap_or_default();
    while let Some(s) = todo.pop() {
        // A need that names no stage is reported elsewhere; a cycle ends here.
        let Some((&key, &more)) = needs.get_key_value(s) else {
            continue;
        };
        if seen.insert(key) {
            todo.extend(more.iter().map(String::as_str));
        }
    }
    seen
}
