//! The keys a file may hold: for each command ([`Kind`]), the flags that have
//! an environment variable, read from clap's description of `orch`.

use clap::{Arg, ArgAction, CommandFactory};

/// The command a file configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Daemon,
    Agent,
    /// `orch up`: the daemon's settings and the agent's, in one file.
    Up,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Daemon => "daemon",
            Kind::Agent => "agent",
            Kind::Up => "up",
        }
    }

    /// The flags of `orch` itself (before the subcommand) this command's
    /// file may set. `--token` is the admin token of client commands, and
    /// only an agent talks to a `--server`.
    fn globals(self) -> &'static [&'static str] {
        match self {
            Kind::Daemon | Kind::Up => &["data_dir", "log_json"],
            Kind::Agent => &["data_dir", "server", "log_json"],
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One setting a file may hold: a flag with an environment variable.
#[derive(Debug, Clone)]
pub struct Key {
    /// The TOML key: the flag's id (its field name).
    pub name: String,
    /// Its environment variable.
    pub env: String,
    pub(super) arg: Arg,
}

impl Key {
    /// A switch (`--log-json`): true or false in a file.
    pub(super) fn is_switch(&self) -> bool {
        matches!(self.arg.get_action(), ArgAction::SetTrue)
    }

    /// Whether the flag takes a list (repeat, or comma-separate in the variable).
    pub(super) fn is_list(&self) -> bool {
        self.arg.get_value_delimiter().is_some()
    }

    pub(super) fn long(&self) -> &str {
        // Every key has a long flag: `keys` keeps no other.
        self.arg.get_long().unwrap_or_default()
    }

    /// The flag's help, as one paragraph.
    pub fn help(&self) -> String {
        self.arg
            .get_long_help()
            .or(self.arg.get_help())
            .map(|h| {
                let mut text = h
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                // clap drops the full stop of a one-sentence help.
                if !text.is_empty() && !text.ends_with(['.', '!', '?']) {
                    text.push('.');
                }
                text
            })
            .unwrap_or_default()
    }

    /// The value a file writes for the default, as TOML; None when the
    /// setting has none (the help says what happens then).
    pub fn default_toml(&self) -> Option<String> {
        let defaults: Vec<String> = self
            .arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        let scalar = |s: &str| {
            if s.parse::<i64>().is_ok() || s == "true" || s == "false" {
                s.to_owned()
            } else {
                quote(s)
            }
        };
        if self.is_switch() {
            return Some("false".into());
        }
        if self.is_list() {
            let items: Vec<String> = defaults.iter().map(|d| quote(d)).collect();
            return Some(format!("[{}]", items.join(", ")));
        }
        defaults.first().map(|d| scalar(d))
    }

    /// What the value stands for (`FILE`, `URL`), from the flag's value name.
    pub fn placeholder(&self) -> String {
        let name = self
            .arg
            .get_value_names()
            .and_then(|n| n.first())
            .map(|n| n.to_string())
            .unwrap_or_else(|| self.name.to_ascii_uppercase());
        quote(&name)
    }
}

/// A TOML basic string: JSON's string syntax is a subset of it.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// The keys of `kind`'s file, in the order of its `--help`.
pub fn keys(kind: Kind) -> Vec<Key> {
    let cli = crate::Cli::command();
    let globals = cli
        .get_arguments()
        .filter(|a| kind.globals().contains(&a.get_id().as_str()));
    let own = cli
        .find_subcommand(kind.name())
        .into_iter()
        .flat_map(|c| c.get_arguments());
    globals
        .chain(own)
        // A file names no other file.
        .filter(|a| a.get_id() != "config" && a.get_long().is_some())
        .filter_map(|a| {
            Some(Key {
                name: a.get_id().to_string(),
                env: a.get_env()?.to_string_lossy().into_owned(),
                arg: a.clone(),
            })
        })
        .collect()
}
