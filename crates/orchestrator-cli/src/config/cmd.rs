//! `orch config check` and `orch config defaults`.

use std::process::ExitCode;

use super::{check, keys, Kind};
use crate::client::CliError;
use crate::view::{self, Output};

/// The kind a file is for when `orch config check` is not told: the
/// daemon's or the agent's when its keys are all theirs, else `orch up`'s.
fn infer(text: &str) -> Kind {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Kind::Up;
    };
    for kind in [Kind::Daemon, Kind::Agent] {
        let known = keys(kind);
        if table.keys().all(|k| known.iter().any(|key| &key.name == k)) {
            return kind;
        }
    }
    Kind::Up
}

/// `orch config ...`
#[derive(clap::Subcommand)]
pub enum ConfigCmd {
    /// Check a configuration file without starting anything: every unknown
    /// key and every bad value. Exit 0 when it is valid, 2 when not.
    Check {
        file: std::path::PathBuf,
        /// The command the file configures; default: daemon or agent when
        /// all its keys are theirs, else up.
        #[arg(long = "for", value_enum)]
        kind: Option<Kind>,
        /// Output format: text for people, json for programs.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print every setting of a configuration file, with its meaning,
    /// environment variable and default, as commented TOML.
    Defaults {
        /// The command the file configures.
        #[arg(long = "for", value_enum, default_value = "up")]
        kind: Kind,
    },
}

pub fn run(cmd: ConfigCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Check { file, kind, output } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::BadInput(format!("{}: cannot read: {e}", file.display())))?;
            let kind = kind.unwrap_or_else(|| infer(&text));
            let result = check(&text, kind);
            match output {
                Output::Json => {
                    let (settings, problems) = match &result {
                        Ok(s) => (s.len(), Vec::new()),
                        Err(p) => (0, p.clone()),
                    };
                    view::json(&serde_json::json!({
                        "file": file,
                        "for": kind,
                        "valid": result.is_ok(),
                        "settings": settings,
                        "problems": problems,
                    }))?;
                }
                Output::Text => match &result {
                    Ok(s) => println!(
                        "{}: valid {kind} configuration ({} setting{})",
                        file.display(),
                        s.len(),
                        if s.len() == 1 { "" } else { "s" }
                    ),
                    Err(problems) => {
                        for p in problems {
                            eprintln!("{}", p.render(&file));
                        }
                    }
                },
            }
            Ok(if result.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        ConfigCmd::Defaults { kind } => {
            print!("{}", defaults(kind));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Words of `text` in lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// `kind`'s file with every setting commented out: its help, variable and
/// default. Uncommenting a line with a default changes nothing.
pub fn defaults(kind: Kind) -> String {
    let mut out = format!(
        "# Configuration of `orch {kind}`: orch {kind} --config FILE (or ORCH_CONFIG=FILE).\n\
         # Every setting is also an environment variable, named below. A flag beats\n\
         # the variable, the variable beats this file, this file beats the default.\n\
         # An empty value (\"\" or []) leaves the default.\n"
    );
    for key in keys(kind) {
        out.push('\n');
        for line in wrap(&key.help(), 76) {
            out.push_str(&format!("# {line}\n"));
        }
        out.push_str(&format!("# Variable: {}\n", key.env));
        match key.default_toml() {
            Some(d) => out.push_str(&format!("#{} = {d}\n", key.name)),
            None => out.push_str(&format!("#{} = {}\n", key.name, key.placeholder())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_listing_is_a_valid_file_once_uncommented() {
        for kind in [Kind::Daemon, Kind::Agent, Kind::Up] {
            let listing = defaults(kind);
            for k in keys(kind) {
                assert!(listing.contains(&format!("#{} = ", k.name)), "{}", k.name);
                assert!(
                    listing.contains(&format!("# Variable: {}\n", k.env)),
                    "{}",
                    k.env
                );
            }
            let uncommented: String = keys(kind)
                .iter()
                .filter_map(|k| Some(format!("{} = {}\n", k.name, k.default_toml()?)))
                .collect();
            let settings = check(&uncommented, kind).unwrap_or_else(|p| panic!("{p:#?}"));
            assert!(settings
                .iter()
                .any(|s| s.key.name == "lease_ttl_ms" || s.key.name == "slots"));
        }
        assert!(defaults(Kind::Daemon).contains("#lease_ttl_ms = 30000\n"));
        assert!(defaults(Kind::Daemon).contains("#listen = \"127.0.0.1:7437\"\n"));
    }
}
