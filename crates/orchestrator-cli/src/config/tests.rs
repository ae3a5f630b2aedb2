//! The configuration files' tests: the keys come from the flags, and a file's
//! problems are all named, each where it is.

use super::check::{distance, Problem};
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
