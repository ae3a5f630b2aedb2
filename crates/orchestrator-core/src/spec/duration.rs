//! Durations as a workflow writes them: a number of seconds or a string
//! with a unit.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DurationError;

/// A duration written as an integer number of seconds or a string with a unit:
/// `250ms`, `30s`, `10m`, `2h`. Held in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationSpec(pub u64);

impl DurationSpec {
    pub fn from_secs(s: u64) -> Self {
        DurationSpec(s.saturating_mul(1000))
    }
    pub fn as_millis(self) -> u64 {
        self.0
    }
    /// Parses `250ms`, `30s`, `10m`, `2h` or a bare number of seconds.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits.parse().map_err(|_| DurationError::NotANumber {
            text: text.to_owned(),
        })?;
        let factor = match unit.trim() {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    text: text.to_owned(),
                    unit: other.to_owned(),
                })
            }
        };
        Ok(DurationSpec(n.saturating_mul(factor)))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        // The largest unit that divides the value exactly. (`checked_rem`, not
        // `%`, because clippy asks for `is_multiple_of`, which needs Rust 1.87.)
        for (unit, name) in [(3_600_000, "h"), (60_000, "m"), (1000, "s")] {
            if ms.checked_rem(unit) == Some(0) {
                return write!(f, "{}{name}", ms / unit);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, 10m, 2h, 250ms or a number of seconds")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DurationSpec, E> {
                Ok(DurationSpec::from_secs(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DurationSpec, E> {
                u64::try_from(v)
                    .map(DurationSpec::from_secs)
                    .map_err(|_| E::custom(format!("invalid duration {v}: must not be negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationSpec, E> {
                DurationSpec::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for DurationSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A number of seconds, or a string with a unit: 250ms, 30s, 10m, 2h.",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)?$"}
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(DurationSpec::parse("250ms").unwrap().0, 250);
        assert_eq!(DurationSpec::parse("30s").unwrap().0, 30_000);
        assert_eq!(DurationSpec::parse("10m").unwrap().0, 600_000);
        assert_eq!(DurationSpec::parse("2h").unwrap().0, 7_200_000);
        assert_eq!(DurationSpec::parse("7").unwrap().0, 7_000);
        assert!(DurationSpec::parse("5 days").is_err());
        assert!(DurationSpec::parse("m").is_err());
    }

    #[test]
    fn durations_display_round_trips() {
        for s in [
            "250ms", "30s", "10m", "2h", "0s", "1500ms", "90s", "61m", "25h",
        ] {
            assert_eq!(DurationSpec::parse(s).unwrap().to_string(), s);
        }
    }
}
