//! Amounts of memory as a user writes them: `512M`, `4G`, `16GiB`, or a bare
//! number of MiB. Held in MiB, the unit agents report and placement counts in.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An amount of memory in MiB, written `512M`, `4G`, `1T` (binary units; a
/// trailing `B` or `iB` is accepted) or as a bare number of MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SizeSpec(pub u64);

impl SizeSpec {
    pub fn from_mib(mib: u64) -> Self {
        SizeSpec(mib)
    }
    pub fn as_mib(self) -> u64 {
        self.0
    }
    /// Parses `512M`, `4G`, `16GiB`, `1T`, `2048` (MiB).
    pub fn parse(text: &str) -> Result<Self, SizeError> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits.parse().map_err(|_| SizeError::NotANumber {
            text: text.to_owned(),
        })?;
        let written = unit.trim();
        // `B` and `iB` only follow a unit: on their own (`512B`) they would
        // read bytes as MiB, a million times too much.
        let unit = written
            .strip_suffix("iB")
            .or_else(|| written.strip_suffix('B'))
            .filter(|u| !u.is_empty())
            .unwrap_or(written);
        let factor: u64 = match unit {
            "" | "M" | "m" => 1,
            "G" | "g" => 1024,
            "T" | "t" => 1024 * 1024,
            _ => {
                return Err(SizeError::UnknownUnit {
                    text: text.to_owned(),
                    unit: written.to_owned(),
                })
            }
        };
        n.checked_mul(factor)
            .map(SizeSpec)
            .ok_or_else(|| SizeError::TooLarge {
                text: text.to_owned(),
            })
    }
}

/// Why a text is no size; each names the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No number leads the text (or it does not fit in 64 bits).
    #[error("invalid size {text:?}: expected a number with a unit such as 512M, 4G or 1T")]
    NotANumber { text: String },
    /// The number is followed by something other than M, G or T.
    #[error("invalid size {text:?}: unknown unit {unit:?}, expected M, G or T")]
    UnknownUnit { text: String, unit: String },
    /// The amount in MiB does not fit in 64 bits.
    #[error("invalid size {text:?}: too large")]
    TooLarge { text: String },
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        for (unit, name) in [(1024 * 1024, "T"), (1024, "G")] {
            if m >= unit && m.checked_rem(unit) == Some(0) {
                return write!(f, "{}{name}", m / unit);
            }
        }
        write!(f, "{m}M")
    }
}

impl Serialize for SizeSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SizeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SizeSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 512M, 4G, 1T or a number of MiB")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SizeSpec, E> {
                Ok(SizeSpec(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SizeSpec, E> {
                u64::try_from(v)
                    .map(SizeSpec)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeSpec, E> {
                SizeSpec::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for SizeSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A number of MiB, or a string with a binary unit: 512M, 4G, 16GiB, 1T.",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+ *([MGTmgt](i?B)?)?$"}
            ]
        })
    }
}

/// Formats MiB for people: `512 MiB`, `4 GiB`, `1.5 GiB`.
pub fn human_mib(mib: u64) -> String {
    if mib >= 1024 {
        let g = mib as f64 / 1024.0;
        if mib.checked_rem(1024) == Some(0) {
            format!("{} GiB", mib / 1024)
        } else {
            format!("{g:.1} GiB")
        }
    } else {
        format!("{mib} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(SizeSpec::parse("512M").unwrap().0, 512);
        assert_eq!(SizeSpec::parse("4G").unwrap().0, 4096);
        assert_eq!(SizeSpec::parse("16GiB").unwrap().0, 16384);
        assert_eq!(SizeSpec::parse("2GB").unwrap().0, 2048);
        assert_eq!(SizeSpec::parse("1T").unwrap().0, 1 << 20);
        assert_eq!(SizeSpec::parse("2048").unwrap().0, 2048);
        assert!(SizeSpec::parse("4 bananas").is_err());
        assert!(SizeSpec::parse("G").is_err());
        assert!(SizeSpec::parse("99999999999999999T").is_err());
    }

    #[test]
    fn sizes_display_round_trips() {
        for s in ["512M", "4G", "1T", "1500M", "0M"] {
            assert_eq!(SizeSpec::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(human_mib(1536), "1.5 GiB");
        assert_eq!(human_mib(8192), "8 GiB");
        assert_eq!(human_mib(300), "300 MiB");
    }
}
