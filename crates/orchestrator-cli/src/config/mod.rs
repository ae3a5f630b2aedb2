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

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::{Arg, ArgAction, CommandFactory};

use crate::client::CliError;

mod cmd;
pub use cmd::{run, ConfigCmd};

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
    arg: Arg,
}

impl Key {
    /// A switch (`--log-json`): true or false in a file.
    fn is_switch(&self) -> bool {
        matches!(self.arg.get_action(), ArgAction::SetTrue)
    }

    /// Whether the flag takes a list (repeat, or comma-separate in the variable).
    fn is_list(&self) -> bool {
        self.arg.get_value_delimiter().is_some()
    }

    fn long(&self) -> &str {
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

/// One thing wrong with a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    /// `FILE:LINE:COLUMN: message`.
    pub fn render(&self, file: &Path) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}: {}", file.display(), self.message),
            _ => format!("{}: {}", file.display(), self.message),
        }
    }
}

/// A setting of a file: its key and the text its variable would hold.
#[derive(Debug, Clone)]
pub struct Setting {
    pub key: Key,
    pub value: String,
}

/// 1-based line and column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Checks a file's text as `kind`'s configuration: every problem, or every
/// setting (in the file's order) with the text of its variable.
pub fn check(text: &str, kind: Kind) -> Result<Vec<Setting>, Vec<Problem>> {
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = e.span().map(|s| position(text, s.start)).unzip();
            return Err(vec![Problem {
                line,
                column,
                key: None,
                message: format!("not TOML: {}", e.message().trim_end()),
            }]);
        }
    };
    // Where each key is, for the messages.
    let spans: BTreeMap<String, usize> = toml::de::DeTable::parse(text)
        .map(|t| {
            t.get_ref()
                .iter()
                .map(|(k, _)| (k.get_ref().to_string(), k.span().start))
                .collect()
        })
        .unwrap_or_default();
    let known = keys(kind);
    let mut settings = Vec::new();
    let mut problems = Vec::new();
    for (name, value) in &table {
        let at = spans.get(name).map(|&s| position(text, s));
        let problem = |message: String| Problem {
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
            key: Some(name.clone()),
            message,
        };
        let Some(key) = known.iter().find(|k| &k.name == name) else {
            problems.push(problem(format!(
                "unknown key `{name}`{}",
                suggestion(name, kind, &known)
            )));
            continue;
        };
        match value_text(key, value).and_then(|v| validate(key, &v).map(|()| v)) {
            Ok(v) => settings.push((
                at,
                Setting {
                    key: key.clone(),
                    value: v,
                },
            )),
            Err(e) => problems.push(problem(format!("{name}: {e}"))),
        }
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(problems);
    }
    settings.sort_by_key(|(at, _)| *at);
    Ok(settings.into_iter().map(|(_, s)| s).collect())
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// The text of a value, as its environment variable would hold it: lists
/// joined by their delimiter.
fn value_text(key: &Key, v: &toml::Value) -> Result<String, String> {
    use toml::Value as V;
    fn scalar(v: &toml::Value) -> Result<String, &toml::Value> {
        match v {
            V::String(s) => Ok(s.clone()),
            V::Integer(i) => Ok(i.to_string()),
            // Debug keeps the point (`2.0`, not `2`), so a whole float
            // given where an integer is expected is refused by its parser.
            V::Float(f) => Ok(format!("{f:?}")),
            other => Err(other),
        }
    }
    if key.is_switch() {
        return match v {
            V::Boolean(b) => Ok(b.to_string()),
            other => Err(format!(
                "expected true or false, found {}",
                type_name(other)
            )),
        };
    }
    match (v, key.arg.get_value_delimiter()) {
        (V::Table(_), _) => Err(
            "expected a value, found a table: settings are keys at the top level, not sections"
                .into(),
        ),
        (V::Array(items), Some(delim)) => {
            let mut parts = Vec::new();
            for item in items {
                let s = scalar(item).map_err(|other| {
                    format!(
                        "expected an array of strings, found {} in it",
                        type_name(other)
                    )
                })?;
                if s.contains(delim) {
                    return Err(format!(
                        "{s:?}: an element cannot hold {delim:?}, which separates them"
                    ));
                }
                parts.push(s);
            }
            Ok(parts.join(&delim.to_string()))
        }
        (v, delim) => scalar(v).map_err(|other| {
            let expected = if delim.is_some() {
                "an array of strings"
            } else {
                "a string or a number"
            };
            format!("expected {expected}, found {}", type_name(other))
        }),
    }
}

/// Runs the flag's own parser on the value.
fn validate(key: &Key, text: &str) -> Result<(), String> {
    // An empty value leaves the default (its variable is not set).
    if key.is_switch() || text.is_empty() {
        return Ok(());
    }
    let cmd = clap::Command::new("orch").arg(key.arg.clone());
    let flag = OsString::from(format!("--{}={text}", key.long()));
    match cmd.try_get_matches_from([OsString::from("orch"), flag]) {
        Ok(_) => Ok(()),
        Err(e) => {
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or_default();
            Err(first.strip_prefix("error: ").unwrap_or(first).to_owned())
        }
    }
}

/// `; did you mean ...?`, or where the key belongs, or nothing.
fn suggestion(name: &str, kind: Kind, known: &[Key]) -> String {
    let norm = name.trim().to_ascii_lowercase().replace('-', "_");
    let norm = norm.strip_prefix("orch_").unwrap_or(&norm).to_owned();
    // The flag's name or the variable's, in place of the key.
    let alias = known.iter().find(|k| {
        k.name == norm
            || k.long().replace('-', "_") == norm
            || k.env.to_ascii_lowercase() == format!("orch_{norm}")
    });
    if let Some(k) = alias {
        return format!("; did you mean `{}`?", k.name);
    }
    for other in [Kind::Daemon, Kind::Agent] {
        if other != kind && keys(other).iter().any(|k| k.name == norm) {
            let article = if other == Kind::Agent { "an" } else { "a" };
            return format!(": it is {article} {other} setting, which `orch {kind}` does not take");
        }
    }
    let best = known
        .iter()
        .map(|k| (distance(&norm, &k.name), k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= 2 || d * 3 <= k.name.len() => {
            format!("; did you mean `{}`?", k.name)
        }
        _ => format!(" (`orch config defaults --for {kind}` lists the keys)"),
    }
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

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
mod tests {
    use super::*;

    fn names(kind: Kind) -> Vec<String> {
        keys(kind).into_iter().map(|k| k.name).collect()
    }

    fn key(kind: Kind, name: &str) -> Key {
        keys(kind)
            .into_iter()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("no key {name}"))
    }

    fn problems(text: &str, kind: Kind) -> Vec<Problem> {
        match check(text, kind) {
            Ok(s) => panic!("expected problems, got {} settings", s.len()),
            Err(p) => p,
        }
    }

    #[test]
    fn the_keys_are_the_flags_with_variables() {
        let daemon = names(Kind::Daemon);
        for k in [
            "data_dir",
            "log_json",
            "listen",
            "lease_ttl_ms",
            "state_dir",
            "webhooks",
            "openclaw_token",
        ] {
            assert!(daemon.contains(&k.to_owned()), "{k}: {daemon:?}");
        }
        for k in ["config", "secrets", "slots", "server", "token"] {
            assert!(!daemon.contains(&k.to_owned()), "{k}: {daemon:?}");
        }
        let agent = names(Kind::Agent);
        for k in [
            "slots",
            "memory",
            "gpus",
            "labels",
            "vm_memory",
            "model_ram",
            "agent_token",
            "server",
        ] {
            assert!(agent.contains(&k.to_owned()), "{k}: {agent:?}");
        }
        assert!(!agent.contains(&"lease_ttl_ms".to_owned()));
        let up = names(Kind::Up);
        for k in ["lease_ttl_ms", "slots", "state_dir", "memory"] {
            assert!(up.contains(&k.to_owned()), "{k}: {up:?}");
        }
        assert!(!up.contains(&"agent_token".to_owned()));
        assert_eq!(key(Kind::Daemon, "lease_ttl_ms").env, "ORCH_LEASE_TTL_MS");
        assert_eq!(key(Kind::Agent, "memory").env, "ORCH_AGENT_MEMORY");
        assert_eq!(key(Kind::Daemon, "webhooks").env, "ORCH_WEBHOOKS");
        // No two keys of a file share a name or a variable.
        for kind in [Kind::Daemon, Kind::Agent, Kind::Up] {
            let ks = keys(kind);
            let mut n: Vec<&str> = ks.iter().map(|k| k.name.as_str()).collect();
            let mut e: Vec<&str> = ks.iter().map(|k| k.env.as_str()).collect();
            let len = n.len();
            n.sort_unstable();
            n.dedup();
            e.sort_unstable();
            e.dedup();
            assert_eq!((n.len(), e.len()), (len, len), "{kind}");
        }
    }

    #[test]
    fn a_good_file_gives_each_setting_its_variables_text() {
        let text = r#"
lease_ttl_ms = 5000
state_dir = "/var/lib/orch/state"
webhooks = ["http://a.example/x", "http://b.example/y"]
log_json = true
listen = "127.0.0.1:0"
"#;
        let got: Vec<(String, String)> = check(text, Kind::Daemon)
            .unwrap()
            .into_iter()
            .map(|s| (s.key.env, s.value))
            .collect();
        let want = [
            ("ORCH_LEASE_TTL_MS", "5000"),
            ("ORCH_STATE_DIR", "/var/lib/orch/state"),
            ("ORCH_WEBHOOKS", "http://a.example/x,http://b.example/y"),
            ("ORCH_LOG_JSON", "true"),
            ("ORCH_LISTEN", "127.0.0.1:0"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        let agent = check(
            "labels = [\"gpu\", \"fast\"]\nslots = 4\nmemory = \"16G\"\n",
            Kind::Agent,
        )
        .unwrap();
        assert_eq!(agent[0].value, "gpu,fast");
        assert_eq!(agent[1].value, "4");
    }

    #[test]
    fn unknown_keys_are_all_named_with_the_closest_key() {
        let p = problems(
            "lease_ttl = 5\nstate-dir = \"/s\"\nslots = 2\nORCH_HEARTBEAT_MS = 3\nzzzzzz = 1\n",
            Kind::Daemon,
        );
        let msgs: Vec<&str> = p.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(p.len(), 5, "{msgs:#?}");
        assert!(
            msgs[0].contains("did you mean `lease_ttl_ms`?"),
            "{}",
            msgs[0]
        );
        assert!(msgs[1].contains("did you mean `state_dir`?"), "{}", msgs[1]);
        assert!(msgs[2].contains("agent setting"), "{}", msgs[2]);
        assert!(
            msgs[3].contains("did you mean `heartbeat_ms`?"),
            "{}",
            msgs[3]
        );
        assert!(
            msgs[4].contains("orch config defaults --for daemon"),
            "{}",
            msgs[4]
        );
        assert_eq!(p[0].key.as_deref(), Some("lease_ttl"));
        assert_eq!((p[0].line, p[0].column), (Some(1), Some(1)));
        assert_eq!(p[4].line, Some(5));
    }

    #[test]
    fn wrong_types_and_bad_values_name_the_key() {
        let p = problems(
            "slots = true\nmemory = \"lots\"\nlabels = [1.5, { a = 1 }]\n[vm]\nmemory = \"1G\"\n",
            Kind::Agent,
        );
        let msgs: Vec<&str> = p.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(p.len(), 4, "{msgs:#?}");
        assert!(
            msgs[0].starts_with("slots: expected a string or a number, found a boolean"),
            "{}",
            msgs[0]
        );
        assert!(
            msgs[1].starts_with("memory: invalid value 'lots'"),
            "{}",
            msgs[1]
        );
        assert!(msgs[2].contains("found a table in it"), "{}", msgs[2]);
        assert!(msgs[3].contains("unknown key `vm`"), "{}", msgs[3]);
        let p = problems("log_json = \"yes\"\nlease_ttl_ms = -4\n", Kind::Daemon);
        assert!(
            p[0].message
                .contains("expected true or false, found a string"),
            "{p:?}"
        );
        assert!(
            p[1].message.starts_with("lease_ttl_ms: invalid value '-4'"),
            "{p:?}"
        );
        let p = problems("lease_ttl_ms = 5000.0\n", Kind::Daemon);
        assert!(
            p[0].message
                .starts_with("lease_ttl_ms: invalid value '5000.0'"),
            "{p:?}"
        );
        let p = problems("webhooks = [\"http://a/x,y\"]\n", Kind::Daemon);
        assert!(p[0].message.contains("cannot hold ','"), "{p:?}");
    }

    #[test]
    fn bad_toml_names_the_line_and_column() {
        let p = problems("slots = 2\nname = \n", Kind::Agent);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, Some(2), "{p:?}");
        assert!(p[0].message.starts_with("not TOML: "), "{p:?}");
        assert!(problems("a = 1\na = 2\n", Kind::Agent)[0].line == Some(2));
    }

    #[test]
    fn a_variable_already_set_beats_the_file_and_empty_values_leave_the_default() {
        let settings = check("slots = 3\nname = \"box\"\nlabels = []\n", Kind::Agent).unwrap();
        let vars = variables_with(&settings, |v| v == "ORCH_SLOTS");
        assert_eq!(vars, [("ORCH_AGENT_NAME".to_owned(), "box".to_owned())]);
    }

    #[test]
    fn the_documentation_names_every_key_and_variable() {
        let doc = include_str!("../../../../docs/configuration.md");
        for kind in [Kind::Daemon, Kind::Agent] {
            for k in keys(kind) {
                assert!(
                    doc.contains(&format!("`{}`", k.name)),
                    "docs/configuration.md lacks `{}`",
                    k.name
                );
                assert!(
                    doc.contains(&k.env),
                    "docs/configuration.md lacks {}",
                    k.env
                );
            }
        }
        // Its examples are valid files.
        let examples: Vec<&str> = doc
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .collect();
        assert_eq!(examples.len(), 2, "{examples:?}");
        for (example, kind) in examples.iter().zip([Kind::Daemon, Kind::Agent]) {
            assert!(example.starts_with(&format!("# {kind}.toml")), "{example}");
            check(example, kind).unwrap_or_else(|p| panic!("{p:#?}"));
        }
    }

    #[test]
    fn distances() {
        assert_eq!(distance("lease_ttl", "lease_ttl_ms"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("slot", "slots"), 1);
    }
}
