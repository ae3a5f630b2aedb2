//! The checks of `cache:` entries, the workflow's and each stage's: a path
//! the step owns, keys in the documented syntax, not too many, none inside
//! another.

use super::{add, add_in, Problem};
use crate::cache::{self, check_path, overlaps, Root, MAX_CACHES, MAX_RESTORE_KEYS};
use crate::spec::{Cache, SandboxKind, Workflow};

/// Checks every cache entry of `wf`; `stages` locates each stage's block.
pub(super) fn check_caches(wf: &Workflow, stages: &[(&str, usize)], out: &mut Vec<Problem>) {
    check_list(&wf.cache, "cache", None, out);
    for (i, st) in wf.stages.iter().enumerate() {
        let at = stages.get(i).copied();
        let field = format!("stages[{i}].cache");
        check_list(&st.cache, &field, at, out);
        let all = cache::effective(&wf.cache, &st.cache);
        if all.len() > MAX_CACHES {
            push(
                out,
                field.clone(),
                format!(
                    "stage {:?} has {} cache entries with the workflow's; expected at most {MAX_CACHES}",
                    st.id,
                    all.len()
                ),
                at,
                None,
            );
        }
        // The workflow's entries apply to every stage: one may sit inside
        // a stage's own, which a single list's check does not see.
        for (j, own) in st.cache.iter().enumerate() {
            if let Some(w) = wf.cache.iter().find(|w| {
                w.path != own.path
                    && check_path(&w.path).is_ok()
                    && check_path(&own.path).is_ok()
                    && overlaps(&w.path, &own.path)
            }) {
                push(
                    out,
                    format!("{field}[{j}].path"),
                    format!(
                        "{:?} and the workflow's cache {:?} lie one inside the other; expected separate directories",
                        own.path, w.path
                    ),
                    at,
                    Some(("path", &own.path)),
                );
            }
        }
        if st.sandbox == Some(SandboxKind::Process) {
            if let Some(c) = all
                .iter()
                .find(|c| matches!(check_path(&c.path), Ok((Root::Home, _))))
            {
                push(
                    out,
                    field.clone(),
                    format!(
                        "stage {:?} runs in sandbox: process, which keeps the agent's own home, so cache {:?} has no stage home to be restored in; expected a worktree path, or another sandbox",
                        st.id, c.path
                    ),
                    at,
                    Some(("path", &c.path)),
                );
            }
        }
    }
}

fn check_list(list: &[Cache], field: &str, at: Option<(&str, usize)>, out: &mut Vec<Problem>) {
    if list.len() > MAX_CACHES {
        push(
            out,
            field.to_owned(),
            format!(
                "{} cache entries; expected at most {MAX_CACHES}",
                list.len()
            ),
            at,
            None,
        );
    }
    for (j, c) in list.iter().enumerate() {
        let here = format!("{field}[{j}]");
        match check_path(&c.path) {
            Err(why) => push(
                out,
                format!("{here}.path"),
                format!("cache path {:?} {why}", c.path),
                at,
                Some(("path", &c.path)),
            ),
            Ok(_) => {
                if let Some((k, other)) = list[..j]
                    .iter()
                    .enumerate()
                    .find(|(_, o)| check_path(&o.path).is_ok() && overlaps(&o.path, &c.path))
                {
                    push(
                        out,
                        format!("{here}.path"),
                        format!(
                            "cache path {:?} {} {field}[{k}]'s {:?}; expected each entry in a directory of its own",
                            c.path,
                            if other.path == c.path { "repeats" } else { "overlaps" },
                            other.path
                        ),
                        at,
                        Some(("path", &c.path)),
                    );
                }
            }
        }
        if let Err(why) = cache::parse_key(&c.key) {
            push(
                out,
                format!("{here}.key"),
                format!("cache key {why}"),
                at,
                Some(("key", &c.key)),
            );
        }
        if c.restore_keys.len() > MAX_RESTORE_KEYS {
            push(
                out,
                format!("{here}.restore_keys"),
                format!(
                    "{} restore keys; expected at most {MAX_RESTORE_KEYS}",
                    c.restore_keys.len()
                ),
                at,
                None,
            );
        }
        for (r, prefix) in c.restore_keys.iter().enumerate() {
            if let Err(why) = cache::parse_key(prefix) {
                push(
                    out,
                    format!("{here}.restore_keys[{r}]"),
                    format!("restore key {why}"),
                    at,
                    Some(("restore_keys", prefix)),
                );
            }
        }
    }
}

fn push(
    out: &mut Vec<Problem>,
    field: String,
    message: String,
    at: Option<(&str, usize)>,
    locate: Option<(&str, &str)>,
) {
    match at {
        Some(stage) => add_in(out, field, message, stage, locate),
        None => add(out, field, message, locate),
    }
}
