//! A workflow's typed parameters (`inputs:`): what each one is, how its
//! value is checked, and how it reaches a stage's commands (an environment
//! variable per input). Binding the values a submitter gives lives in
//! [`super::bind`].

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most inputs a workflow may declare.
pub const MAX_INPUTS: usize = 64;
/// Longest input name, in characters.
pub const MAX_INPUT_NAME: usize = 64;
/// Largest single input value (a default or a given value), in bytes.
pub const MAX_INPUT_VALUE_BYTES: usize = 64 * 1024;
/// Largest total of a run's input values, in bytes.
pub const MAX_INPUTS_BYTES: usize = 256 * 1024;

/// The kind of value an input takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// Any text (the default).
    #[default]
    String,
    /// A JSON number: an integer or a decimal.
    Number,
    /// `true` or `false`.
    Boolean,
    /// One of the input's `choices`.
    Choice,
    /// A list of strings.
    List,
}

impl InputType {
    /// The name a workflow uses.
    pub fn as_str(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Number => "number",
            InputType::Boolean => "boolean",
            InputType::Choice => "choice",
            InputType::List => "list",
        }
    }
}

impl fmt::Display for InputType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parameter of a workflow, given when a run is submitted
/// (`orch run -p NAME=VALUE`, `--params-file`, or the API's `inputs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowInput {
    /// What values it takes: `string` (the default), `number`, `boolean`,
    /// `choice` (one of `choices`) or `list` (a list of strings).
    #[serde(rename = "type", default)]
    pub kind: InputType,
    /// Free text for humans: what the input means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The value when none is given; it must be of the input's type. An
    /// input with a default is optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Whether a run must give a value. Default: true without a `default`.
    /// `required: false` without a default lets the input be absent (null:
    /// its variable is then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// The values a `choice` input may take: strings, numbers or booleans,
    /// each once. Only with `type: choice`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "scalar_list_schema")]
    pub choices: Vec<Value>,
}

impl WorkflowInput {
    /// Whether a run must give this input a value.
    pub fn is_required(&self) -> bool {
        self.default.is_none() && self.required != Some(false)
    }

    /// Whether `v`, as JSON, is a value of this input (its type, and for a
    /// choice one of its choices). Any JSON number is a number.
    pub fn accepts(&self, v: &Value) -> bool {
        match self.kind {
            InputType::String => v.is_string(),
            InputType::Number => v.is_number(),
            InputType::Boolean => v.is_boolean(),
            InputType::Choice => self.choices.iter().any(|c| same_value(c, v)),
            InputType::List => v
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
        }
    }

    /// What a value of this input must be, as an error says it: `a
    /// number`, `one of linux, mac`.
    pub fn expected(&self) -> String {
        match self.kind {
            InputType::String => "a string".into(),
            InputType::Number => "a number".into(),
            InputType::Boolean => "a boolean (true or false)".into(),
            InputType::Choice => format!(
                "one of {}",
                self.choices
                    .iter()
                    .map(input_env_value)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            InputType::List => "a list of strings".into(),
        }
    }
}

/// Whether two values are the same: equal JSON, or numbers of equal value
/// (`1` and `1.0`).
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Whether `v` is a string, a number or a boolean.
pub fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// Whether `s` can name an input or a matrix key: 1 to 64 letters, digits,
/// `_` or `-`.
pub fn is_valid_input_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= MAX_INPUT_NAME
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The environment variable an input reaches commands as: `ORCH_INPUT_`
/// and its name uppercased, `-` written `_` (`dry-run` is
/// `ORCH_INPUT_DRY_RUN`).
pub fn input_env_name(name: &str) -> String {
    let mut out = String::with_capacity("ORCH_INPUT_".len() + name.len());
    out.push_str("ORCH_INPUT_");
    out.extend(name.chars().map(|c| {
        if c == '-' {
            '_'
        } else {
            c.to_ascii_uppercase()
        }
    }));
    out
}

/// A value as text, the way its environment variable (and a matrix stage's
/// id) shows it: as `${{ ... }}` shows it ([`crate::expr::to_text`]): a
/// string as it is, a number in its shortest form, a boolean as
/// `true`/`false`, null as nothing, a list or map as JSON.
pub fn input_env_value(v: &Value) -> String {
    crate::expr::to_text(v)
}

/// Reads `inputs:` into a map, refusing a name written twice (a plain map
/// would keep only the last).
pub(super) fn unique_inputs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, WorkflowInput>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<String, WorkflowInput>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of input names to their declarations")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                let decl: WorkflowInput = map.next_value()?;
                if out.insert(name.clone(), decl).is_some() {
                    return Err(serde::de::Error::custom(format!(
                        "input {name:?} is declared twice; names must be unique"
                    )));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// The schema of a list of strings, numbers and booleans.
pub(super) fn scalar_list_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": ["string", "number", "boolean"]}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_names_are_uppercased_with_dashes_as_underscores() {
        assert_eq!(input_env_name("version"), "ORCH_INPUT_VERSION");
        assert_eq!(input_env_name("dry-run"), "ORCH_INPUT_DRY_RUN");
        assert_eq!(input_env_name("a_B-3"), "ORCH_INPUT_A_B_3");
    }

    #[test]
    fn env_values_are_plain_text_and_lists_json() {
        assert_eq!(input_env_value(&json!("1.2")), "1.2");
        assert_eq!(input_env_value(&json!(3)), "3");
        assert_eq!(input_env_value(&json!(-3)), "-3");
        assert_eq!(input_env_value(&json!(u64::MAX)), u64::MAX.to_string());
        assert_eq!(input_env_value(&json!(2.5)), "2.5");
        assert_eq!(input_env_value(&json!(3.0)), "3");
        assert_eq!(input_env_value(&json!(0.1)), "0.1");
        assert_eq!(input_env_value(&json!(true)), "true");
        assert_eq!(input_env_value(&json!(false)), "false");
        assert_eq!(input_env_value(&Value::Null), "");
        assert_eq!(input_env_value(&json!(["a", "b c"])), r#"["a","b c"]"#);
    }

    #[test]
    fn names_are_letters_digits_underscores_and_dashes() {
        for ok in ["a", "A1", "dry-run", "_x", "9", &"n".repeat(64)] {
            assert!(is_valid_input_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a.b", "é", "a=b", &"n".repeat(65)] {
            assert!(!is_valid_input_name(bad), "{bad}");
        }
    }

    #[test]
    fn numbers_of_equal_value_are_the_same() {
        assert!(same_value(&json!(1), &json!(1.0)));
        assert!(!same_value(&json!(1), &json!("1")));
        assert!(same_value(&json!("a"), &json!("a")));
    }
}
