//! A stage's `matrix:`: named lists of values whose combinations each run
//! the stage once, as a stage of its own (`test[py=3.12,os=linux]`).
//!
//! The keys keep the order they are written in (the first varies slowest,
//! and ids list them in that order), so the matrix reads its map itself
//! instead of through a sorted map.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{Error as _, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::inputs::{input_env_value, same_value};

/// Most combinations one matrix stage may expand into.
pub const MAX_COMBINATIONS: usize = 256;

/// Largest product of a matrix's lists that is enumerated to apply its
/// `exclude` entries; a larger one is refused without enumerating it.
const MAX_PRODUCT: usize = 64 * 1024;

/// Keys and values in the order written: one combination of a matrix, or
/// one `include`/`exclude` entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MatrixValues(pub Vec<(String, Value)>);

impl MatrixValues {
    /// The value of `key`, if it has one.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether every key of `self` has the same value in `other`.
    fn within(&self, other: &MatrixValues) -> bool {
        self.0
            .iter()
            .all(|(k, v)| other.get(k).is_some_and(|o| same_value(o, v)))
    }

    /// Whether both hold the same keys with the same values, in any order.
    pub fn same_as(&self, other: &MatrixValues) -> bool {
        self.0.len() == other.0.len() && self.within(other)
    }
}

/// A stage's matrix: each key (other than `include` and `exclude`) lists
/// values; the stage runs once for each combination of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matrix {
    /// The keys and their values, in the order written.
    pub axes: Vec<(String, Vec<Value>)>,
    /// Combinations added after the product (each unless one the same is
    /// there already).
    pub include: Vec<MatrixValues>,
    /// Entries taking combinations out of the product: each takes out those
    /// whose values equal all of its own.
    pub exclude: Vec<MatrixValues>,
}

/// Why a matrix has no usable combinations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatrixError {
    /// Nothing to run: no lists, an empty list, or every combination excluded.
    #[error("the matrix has no combinations; expected at least one")]
    Empty,
    /// More combinations than [`MAX_COMBINATIONS`].
    #[error("the matrix makes {count} combinations; at most {max} are accepted", max = MAX_COMBINATIONS)]
    TooMany { count: usize },
}

impl Matrix {
    /// The combinations, in order: the product of the lists (the first key
    /// varies slowest) less the excluded ones, then each `include` entry not
    /// the same as one already there. Each combination lists the matrix's
    /// keys in their order, then an include's own further keys in its.
    pub fn combinations(&self) -> Result<Vec<MatrixValues>, MatrixError> {
        let product = self
            .axes
            .iter()
            .try_fold(1usize, |n, (_, vs)| n.checked_mul(vs.len()))
            .unwrap_or(usize::MAX);
        if product > MAX_PRODUCT {
            return Err(MatrixError::TooMany { count: product });
        }
        let mut out: Vec<MatrixValues> = Vec::new();
        if !self.axes.is_empty() {
            for n in 0..product {
                // Mixed radix, the last key fastest.
                let mut rest = n;
                let mut values = vec![Value::Null; self.axes.len()];
                for (i, (_, vs)) in self.axes.iter().enumerate().rev() {
                    values[i] = vs[rest % vs.len()].clone();
                    rest /= vs.len();
                }
                let combo = MatrixValues(
                    self.axes
                        .iter()
                        .map(|(k, _)| k.clone())
                        .zip(values)
                        .collect(),
                );
                if !self.exclude.iter().any(|e| e.within(&combo)) {
                    out.push(combo);
                }
            }
        }
        for inc in &self.include {
            let combo = self.ordered(inc);
            if !out.iter().any(|c| c.same_as(&combo)) {
                out.push(combo);
            }
        }
        if out.is_empty() {
            return Err(MatrixError::Empty);
        }
        if out.len() > MAX_COMBINATIONS {
            return Err(MatrixError::TooMany { count: out.len() });
        }
        Ok(out)
    }

    /// An include entry's values with the matrix's keys first, in their order.
    fn ordered(&self, entry: &MatrixValues) -> MatrixValues {
        let mut out: Vec<(String, Value)> = self
            .axes
            .iter()
            .filter_map(|(k, _)| entry.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        out.extend(
            entry
                .0
                .iter()
                .filter(|(k, _)| !self.axes.iter().any(|(a, _)| a == k))
                .cloned(),
        );
        MatrixValues(out)
    }

    /// Whether `entry` (of `exclude`) takes out some combination of the product.
    pub fn excludes_any(&self, entry: &MatrixValues) -> bool {
        entry.0.iter().all(|(k, v)| {
            self.axes
                .iter()
                .any(|(a, vs)| a == k && vs.iter().any(|x| same_value(x, v)))
        })
    }
}

/// Where a stage made by a matrix comes from: the matrix stage's id and the
/// values of its combination (for `${{ matrix.KEY }}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MatrixInstance {
    /// The id of the stage as written, with the `matrix:`.
    pub of: String,
    /// The combination's keys and values, in order.
    pub values: Vec<(String, Value)>,
}

/// Characters a matrix value may put into a stage id.
pub const ID_VALUE_CHARS: &str = "letters, digits, '_', '.', '+' and '-'";

/// Whether a value, as text, may go into a stage id.
pub fn is_id_safe(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'))
}

/// The id of the stage one combination makes: `test[py=3.12,os=linux]`.
pub fn instance_id(of: &str, values: &[(String, Value)]) -> String {
    let inner: Vec<String> = values
        .iter()
        .map(|(k, v)| format!("{k}={}", input_env_value(v)))
        .collect();
    format!("{of}[{}]", inner.join(","))
}

/// The matrix stage a stage id was made from (`test` for
/// `test[py=3.12,os=linux]`); None for an id a workflow writes itself.
pub fn matrix_stage_of(id: &str) -> Option<&str> {
    let (of, rest) = id.split_once('[')?;
    rest.ends_with(']').then_some(of)
}

impl Serialize for MatrixValues {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for MatrixValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MatrixValues;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of matrix keys to values, such as {py: \"3.13\", os: linux}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MatrixValues, A::Error> {
                let mut out: Vec<(String, Value)> = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v: Value = map.next_value()?;
                    if out.iter().any(|(o, _)| *o == k) {
                        return Err(A::Error::custom(format!(
                            "matrix key {k:?} is written twice"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(MatrixValues(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for Matrix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let extra = usize::from(!self.include.is_empty()) + usize::from(!self.exclude.is_empty());
        let mut map = s.serialize_map(Some(self.axes.len() + extra))?;
        for (k, vs) in &self.axes {
            map.serialize_entry(k, vs)?;
        }
        if !self.include.is_empty() {
            map.serialize_entry("include", &self.include)?;
        }
        if !self.exclude.is_empty() {
            map.serialize_entry("exclude", &self.exclude)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Matrix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Matrix;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of keys to lists of values, such as {py: [\"3.11\", \"3.12\"]}, with optional include and exclude lists")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Matrix, A::Error> {
                let mut m = Matrix::default();
                let mut seen: Vec<String> = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    if seen.contains(&k) {
                        return Err(A::Error::custom(format!(
                            "matrix key {k:?} is written twice"
                        )));
                    }
                    match k.as_str() {
                        "include" => m.include = map.next_value()?,
                        "exclude" => m.exclude = map.next_value()?,
                        _ => {
                            let v: Value = map.next_value()?;
                            let Value::Array(values) = v else {
                                return Err(A::Error::custom(format!(
                                    "matrix key {k:?}: expected a list of values such as [a, b], got {v}"
                                )));
                            };
                            m.axes.push((k.clone(), values));
                        }
                    }
                    seen.push(k);
                }
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
}

impl JsonSchema for Matrix {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Matrix".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let scalar = serde_json::json!({"type": ["string", "number", "boolean"]});
        let entry = serde_json::json!({"type": "object", "additionalProperties": scalar});
        schemars::json_schema!({
            "description": "Keys, each with a list of values (strings, numbers, booleans); the stage runs once for each combination. Keys keep their order: the first varies slowest.",
            "type": "object",
            "properties": {
                "include": {
                    "description": "Combinations added after the product, each unless the same one is already there; an entry may set keys the matrix does not list.",
                    "type": "array",
                    "items": entry
                },
                "exclude": {
                    "description": "Entries taking combinations out of the product: each takes out those whose values equal all of its own.",
                    "type": "array",
                    "items": entry
                }
            },
            "additionalProperties": {"type": "array", "items": scalar}
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn matrix(yaml: &str) -> Matrix {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn ids(m: &Matrix) -> Vec<String> {
        m.combinations()
            .unwrap()
            .iter()
            .map(|c| instance_id("t", &c.0))
            .collect()
    }

    #[test]
    fn keys_keep_their_written_order_and_the_first_varies_slowest() {
        let m = matrix("{z: [1, 2], a: [x, y]}");
        assert_eq!(
            ids(&m),
            ["t[z=1,a=x]", "t[z=1,a=y]", "t[z=2,a=x]", "t[z=2,a=y]"]
        );
        let back = serde_json::to_string(&m).unwrap();
        assert_eq!(back, r#"{"z":[1,2],"a":["x","y"]}"#);
    }

    #[test]
    fn excludes_take_out_matches_and_includes_come_last() {
        let m = matrix("{py: ['3.11', '3.12'], os: [linux, mac], exclude: [{py: '3.11', os: mac}], include: [{os: linux, py: '3.13'}, {py: '3.12', os: mac}]}");
        assert_eq!(
            ids(&m),
            [
                "t[py=3.11,os=linux]",
                "t[py=3.12,os=linux]",
                "t[py=3.12,os=mac]",
                "t[py=3.13,os=linux]"
            ]
        );
    }

    #[test]
    fn an_include_only_matrix_is_its_includes() {
        let m = matrix("{include: [{a: 1, b: true}, {a: 2}]}");
        assert_eq!(ids(&m), ["t[a=1,b=true]", "t[a=2]"]);
    }

    #[test]
    fn empty_and_oversized_matrices_are_errors() {
        assert_eq!(matrix("{}").combinations(), Err(MatrixError::Empty));
        assert_eq!(matrix("{a: []}").combinations(), Err(MatrixError::Empty));
        assert_eq!(
            matrix("{a: [1], exclude: [{a: 1}]}").combinations(),
            Err(MatrixError::Empty)
        );
        let big = Matrix {
            axes: vec![
                ("a".into(), (0..16).map(Value::from).collect()),
                ("b".into(), (0..17).map(Value::from).collect()),
            ],
            ..Matrix::default()
        };
        assert_eq!(big.combinations(), Err(MatrixError::TooMany { count: 272 }));
        let huge = Matrix {
            axes: (0..8)
                .map(|i| (format!("k{i}"), (0..10).map(Value::from).collect()))
                .collect(),
            ..Matrix::default()
        };
        assert_eq!(
            huge.combinations(),
            Err(MatrixError::TooMany { count: 100_000_000 })
        );
    }

    #[test]
    fn written_twice_and_non_list_keys_are_refused_when_read() {
        for bad in [
            "{a: [1], a: [2]}",
            "{a: 1}",
            "{include: [{a: 1, a: 2}]}",
            "{include: [1], include: []}",
        ] {
            assert!(serde_yaml_ng::from_str::<Matrix>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_name_their_matrix_stage() {
        let id = instance_id(
            "test",
            &[("py".into(), json!("3.12")), ("n".into(), json!(2))],
        );
        assert_eq!(id, "test[py=3.12,n=2]");
        assert_eq!(matrix_stage_of(&id), Some("test"));
        assert_eq!(matrix_stage_of("test"), None);
        assert!(is_id_safe("3.12+cu1_x-y"));
        assert!(!is_id_safe("a b") && !is_id_safe("") && !is_id_safe("a,b") && !is_id_safe("a]"));
    }
}
