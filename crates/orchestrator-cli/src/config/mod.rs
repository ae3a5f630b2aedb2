//! Configuration files of `orch daemon`, `orch agent` and `orch up`
//! (`--config FILE`, or `ORCH_CONFIG`): flat TOML whose keys are the
//! commands' settings, each also an environment variable.
//!
//! The keys are not a second list to keep in step with the flags: they are
//! read from clap's own description of the commands. A key is the id of a
//! flag that has an environment variable (`--lease-ttl-ms` is
//! `lease_ttl_ms`, `--webhook` is `webhooks`, like `ORCH_WEBHOOKS`), and its
//! value is checked by that flag's own parser. A flag beats its variable,
//! the variable beats the file, and the file beats the default: `main`
//! gives each of the file's settings whose variable is unset to clap as that
//! variable, so clap's own fallback orders them.

use std::path::Path;

use crate::client::CliError;

mod check;
mod cmd;
mod keys;

pub use check::{check, Setting};
pub use cmd::{run, ConfigCmd};
pub use keys::{keys, Key, Kind};

/// Reads and checks `file`; a user error listing every problem.
pub fn load(file: &Path, kind: Kind) -> Result<Vec<Setting>, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::BadInput(format!("{}: cannot read: {e}", file.display())))?;
    check(&text, kind).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| p.render(file)).collect();
        CliError::BadInput(lines.join("\n"))
    })
}

/// The variables a file gives clap: those of its settings whose variable
/// is unset (a variable beats the file) and whose value is not empty (an
/// empty value leaves the default).
pub fn variables(settings: &[Setting]) -> Vec<(String, String)> {
    variables_with(settings, |name| std::env::var_os(name).is_some())
}

fn variables_with(settings: &[Setting], is_set: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    settings
        .iter()
        .filter(|s| !s.value.is_empty() && !is_set(&s.key.env))
        .map(|s| (s.key.env.clone(), s.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests;
