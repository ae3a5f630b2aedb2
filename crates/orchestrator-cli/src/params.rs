//! `-p NAME=VALUE` and `--params-file FILE`: the values a submitted run
//! gives its workflow's inputs. The CLI only reads them; the daemon binds
//! them to the workflow's declarations (coercing `-p` text to each input's
//! type) and refuses a run whose inputs do not bind.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::CliError;

/// The options that give a run's inputs.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct InputArgs {
    /// A value of one of the workflow's inputs, read as the input's type
    /// (`-p count=3`, `-p files=a.txt,b.txt`); repeatable. Wins over
    /// `--params-file` for the same name.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// A JSON or YAML file holding an object of input names to values, each
    /// of the input's own type (`{"version": "2.0", "files": ["a.txt"]}`).
    #[arg(long, value_name = "FILE")]
    pub params_file: Option<PathBuf>,
}

impl InputArgs {
    /// The params file's object, empty without one. A file that cannot be
    /// read, or does not hold an object, is refused naming the file.
    pub fn file_values(&self) -> Result<BTreeMap<String, Value>, CliError> {
        let Some(file) = &self.params_file else {
            return Ok(BTreeMap::new());
        };
        let bad =
            |why: String| CliError::BadInput(format!("--params-file {}: {why}", file.display()));
        let text = std::fs::read_to_string(file).map_err(|e| bad(format!("cannot read: {e}")))?;
        // YAML is a superset of JSON: one parser reads both.
        let value: Value =
            serde_yaml_ng::from_str(&text).map_err(|e| bad(format!("not JSON or YAML: {e}")))?;
        match value {
            Value::Object(map) => Ok(map.into_iter().collect()),
            other => Err(bad(format!(
                "expected an object of input names to values, got {}",
                orchestrator_core::expr::kind(&other)
            ))),
        }
    }
}
