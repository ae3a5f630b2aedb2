//! A loop's end condition (`repeat.until`): a command whose success ends
//! the loop, or `{output_contains: TEXT}`, a marker the iteration's last
//! step prints.
//!
//! Read by hand rather than as an untagged enum: serde would buffer the
//! map and YAML's plain scalars with it, so `argv: [false]` would reach
//! the command as a boolean and be refused. The first key decides which
//! form it is, and a command's keys go on to `CommandSpec` as written.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::CommandSpec;

/// The most bytes of an `until: {output_contains: TEXT}`.
pub const MAX_UNTIL_TEXT: usize = 1024;

/// A loop's end condition: a command whose success ends it, or a marker
/// the iteration's last step prints.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Until {
    /// `{output_contains: TEXT}`: met when the stdout of a command of the
    /// iteration's last step contains TEXT.
    Output(UntilOutput),
    /// A command run in the worktree after the iteration's last step: exit
    /// 0 means met.
    Command(CommandSpec),
}

/// `until: {output_contains: TEXT}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UntilOutput {
    /// Text (1 to 1,024 bytes) that ends the loop when the stdout of any
    /// command of the iteration's last step contains it, as its log keeps
    /// it (secrets masked, within the log's cap). Not rendered: `${{` is
    /// refused.
    #[schemars(length(min = 1, max = 1024))]
    pub output_contains: String,
}

impl<'de> Deserialize<'de> for Until {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(UntilVisitor)
    }
}

struct UntilVisitor;

impl<'de> Visitor<'de> for UntilVisitor {
    type Value = Until;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a command ({argv: [...]} or {run: \"...\"}) or {output_contains: TEXT}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Until, A::Error> {
        let first = map.next_key::<String>()?;
        if first.as_deref() == Some("output_contains") {
            let output_contains: String = map.next_value()?;
            if let Some(k) = map.next_key::<String>()? {
                return Err(de::Error::custom(format!(
                    "unknown field `{k}` beside `output_contains`; `until: {{output_contains: TEXT}}` takes nothing else"
                )));
            }
            return Ok(Until::Output(UntilOutput { output_contains }));
        }
        let rest = Replay { first, map };
        CommandSpec::deserialize(de::value::MapAccessDeserializer::new(rest)).map(Until::Command)
    }
}

/// The map again, its first key (already read) handed out first.
struct Replay<A> {
    first: Option<String>,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Replay<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.first.take() {
            Some(k) => seed
                .deserialize(IntoDeserializer::<A::Error>::into_deserializer(k))
                .map(Some),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_form_reads_and_writes_back_as_written() {
        let u: Until = serde_yaml_ng::from_str("{argv: [test, -f, 'false', false]}").unwrap();
        let Until::Command(c) = &u else {
            panic!("{u:?}")
        };
        assert_eq!(c.argv, ["test", "-f", "false", "false"]);
        let u: Until = serde_yaml_ng::from_str("{output_contains: DONE}").unwrap();
        assert_eq!(
            u,
            Until::Output(UntilOutput {
                output_contains: "DONE".into()
            })
        );
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"output_contains":"DONE"}"#
        );
        let back: Until = serde_json::from_str(r#"{"output_contains":"DONE"}"#).unwrap();
        assert_eq!(back, u);
    }

    #[test]
    fn a_mix_of_the_forms_is_refused() {
        let e = serde_yaml_ng::from_str::<Until>("{output_contains: DONE, argv: [x]}").unwrap_err();
        assert!(e.to_string().contains("beside `output_contains`"), "{e}");
        let e = serde_yaml_ng::from_str::<Until>("{argv: [x], output_contains: DONE}").unwrap_err();
        assert!(e.to_string().contains("output_contains"), "{e}");
    }
}
