//! The checks of a workflow's `inputs:`: names that make distinct
//! environment variables, not too many, choices only for a choice, and
//! defaults of the input's own type.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{add_within, Problem};
use crate::spec::{
    input_env_name, input_env_value, is_scalar, is_valid_input_name, same_value, InputType,
    Workflow, WorkflowInput, MAX_INPUTS, MAX_INPUT_VALUE_BYTES,
};

const NAME_RULE: &str = "expected 1 to 64 letters, digits, '_' or '-'";

/// Checks every input `wf` declares.
pub(super) fn check_inputs(wf: &Workflow, out: &mut Vec<Problem>) {
    if wf.inputs.len() > MAX_INPUTS {
        add_within(
            out,
            "inputs".into(),
            format!(
                "{} inputs; at most {MAX_INPUTS} are accepted",
                wf.inputs.len()
            ),
            None,
            &["inputs"],
            None,
        );
    }
    // Names that would reach commands as the same variable.
    let mut vars: BTreeMap<String, &str> = BTreeMap::new();
    for (name, decl) in &wf.inputs {
        let field = format!("inputs.{name}");
        let at = ["inputs", name.as_str()];
        if !is_valid_input_name(name) {
            add_within(
                out,
                field.clone(),
                format!("invalid input name {name:?}: {NAME_RULE}"),
                None,
                &at,
                None,
            );
        } else if let Some(first) = vars.insert(input_env_name(name), name) {
            add_within(
                out,
                field.clone(),
                format!(
                    "inputs {first:?} and {name:?} would both reach commands as {}; expected names that differ in more than case and '-' or '_'",
                    input_env_name(name)
                ),
                None,
                &at,
                None,
            );
        }
        check_one(name, decl, &field, &at, out);
    }
}

fn check_one(name: &str, decl: &WorkflowInput, field: &str, at: &[&str], out: &mut Vec<Problem>) {
    let mut push = |sub: &str, message: String, locate: Option<(&str, &str)>| {
        add_within(out, format!("{field}.{sub}"), message, None, at, locate);
    };
    if decl.kind == InputType::Choice {
        if decl.choices.is_empty() {
            push(
                "choices",
                format!("input {name:?} is a choice without choices; expected a list such as choices: [a, b]"),
                Some(("type", "choice")),
            );
        }
        for (j, c) in decl.choices.iter().enumerate() {
            let text = input_env_value(c);
            if !is_scalar(c) {
                push(
                    &format!("choices[{j}]"),
                    format!("choice {text} of input {name:?} is not a string, number or boolean"),
                    Some(("choices", &text)),
                );
            } else if decl.choices[..j].iter().any(|o| same_value(o, c)) {
                push(
                    &format!("choices[{j}]"),
                    format!(
                        "choice {text:?} of input {name:?} is listed twice; expected each once"
                    ),
                    Some(("choices", &text)),
                );
            }
        }
    } else if !decl.choices.is_empty() {
        push(
            "choices",
            format!(
                "input {name:?} has choices but is of type {}; choices are only for type: choice",
                decl.kind
            ),
            Some(("type", decl.kind.as_str())),
        );
    }
    let Some(default) = &decl.default else {
        return;
    };
    let text = input_env_value(default);
    if decl.required == Some(true) {
        push(
            "required",
            format!("input {name:?} is required but has a default, which makes it optional; remove one of them"),
            Some(("required", "true")),
        );
    }
    let size = default.to_string().len();
    if size > MAX_INPUT_VALUE_BYTES {
        push(
            "default",
            format!("the default of input {name:?} is {size} bytes; at most {MAX_INPUT_VALUE_BYTES} are accepted"),
            None,
        );
    // A choice without choices is reported above; its default says nothing more.
    } else if !(decl.accepts(default) || decl.kind == InputType::Choice && decl.choices.is_empty())
    {
        let shown = match default {
            Value::String(s) => format!("{s:?} (a string)"),
            other => format!("{other}"),
        };
        push(
            "default",
            format!(
                "the default of input {name:?} is {shown}; expected {} (type {})",
                decl.expected(),
                decl.kind
            ),
            Some(("default", &text)),
        );
    }
}
