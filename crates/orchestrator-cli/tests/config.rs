//! Configuration files: `orch config check` on good and bad files, and a
//! daemon and an agent started from files, under variables and flags.

mod common;

use common::*;

#[test]
fn check_accepts_a_good_file_and_names_every_problem_of_a_bad_one() {
    let h = Harness::new();
    let good = h.write(
        "daemon.toml",
        "listen = \"127.0.0.1:0\"\nlease_ttl_ms = 5000\nstate_dir = \"/tmp/state\"\nwebhooks = [\"http://127.0.0.1:9/a\"]\n",
    );
    let out = h.orch(&["config", "check", good.to_str().unwrap()]);
    out.expect_code(0);
    assert_eq!(
        out.stdout.trim(),
        format!(
            "{}: valid daemon configuration (4 settings)",
            good.display()
        ),
        "{out}"
    );

    // Two unknown keys: both named, each with the key meant, and the file
    // is refused.
    let typos = h.write(
        "typos.toml",
        "listen = \"127.0.0.1:0\"\nlease_ttl = 5000\nstate-dir = \"/tmp/state\"\n",
    );
    let out = h.orch(&["config", "check", typos.to_str().unwrap()]);
    out.expect_code(2);
    let f = typos.display();
    assert!(
        out.stderr.contains(&format!(
            "{f}:2:1: unknown key `lease_ttl`; did you mean `lease_ttl_ms`?"
        )),
        "{out}"
    );
    assert!(
        out.stderr.contains(&format!(
            "{f}:3:1: unknown key `state-dir`; did you mean `state_dir`?"
        )),
        "{out}"
    );

    // Not TOML: the line and column.
    let broken = h.write("broken.toml", "slots = 2\nname = \n");
    let out = h.orch(&["config", "check", broken.to_str().unwrap()]);
    out.expect_code(2);
    assert!(
        out.stderr
            .starts_with(&format!("{}:2:8: not TOML: ", broken.display())),
        "{out}"
    );

    // A bad value, checked by the flag's own parser, and a key of the other
    // command.
    let bad = h.write("agent.toml", "slots = 2\nmemory = \"lots\"\n");
    let out = h.orch(&["config", "check", bad.to_str().unwrap(), "--for", "agent"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains(&format!(
            "{}:2:1: memory: invalid value 'lots'",
            bad.display()
        )),
        "{out}"
    );
    let out = h.orch(&[
        "config",
        "check",
        bad.to_str().unwrap(),
        "--for",
        "daemon",
        "-o",
        "json",
    ]);
    out.expect_code(2);
    let doc = out.json();
    assert_eq!(doc["valid"], false, "{doc:#}");
    assert_eq!(doc["for"], "daemon", "{doc:#}");
    let problems = doc["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{doc:#}");
    assert_eq!(problems[0]["key"], "slots");
    assert_eq!(problems[0]["line"], 1);
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("an agent setting, which `orch daemon` does not take"),
        "{doc:#}"
    );

    // What `orch config defaults` prints is a file `check` accepts.
    for kind in ["daemon", "agent", "up"] {
        let out = h.orch(&["config", "defaults", "--for", kind]);
        out.expect_code(0);
        let uncommented: String = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.contains(" = ") && !l.starts_with(' '))
            // Lines without a default hold a placeholder (`"FILE"`).
            .filter(|l| {
                let v = l.split(" = ").nth(1).unwrap_or_default();
                !(v.starts_with('"')
                    && v.trim_matches('"')
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c == '_'))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(uncommented.contains("= "), "{out}");
        let file = h.write(&format!("{kind}-defaults.toml"), &uncommented);
        let out = h.orch(&["config", "check", file.to_str().unwrap(), "--for", kind]);
        out.expect_code(0);
    }
}

#[test]
fn a_daemon_takes_its_settings_from_its_file_under_variables_and_flags() {
    let mut h = Harness::new();
    let [from_file, from_var, from_flag] =
        ["file", "var", "flag"].map(|n| h.root().join(format!("state-{n}")));
    let file = h.write(
        "daemon.toml",
        &format!(
            "# the daemon\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n",
            from_file.to_str().unwrap()
        ),
    );
    let file = file.to_str().unwrap().to_owned();

    // The file's listen (port 0, not the default 7437) and state_dir.
    let d = h.start_server("daemon", &["daemon", "--config", &file]);
    assert_ne!(d.port, 7437);
    wait_for("current.json in the file's state_dir", LONG, || {
        from_file.join("current.json").exists().then_some(())
    });
    let ready = http(&d, "GET", "/readyz", None, None);
    assert_eq!(ready.status, 200, "{}", ready.text());
    h.signal(d.id, nix::sys::signal::Signal::SIGTERM);
    h.wait_exit(d.id, LONG);

    // A variable beats the file.
    std::fs::remove_dir_all(&from_file).unwrap();
    h.set_env("ORCH_STATE_DIR", from_var.to_str());
    let d = h.start_server("daemon", &["daemon", "--config", &file]);
    wait_for("current.json in ORCH_STATE_DIR", LONG, || {
        from_var.join("current.json").exists().then_some(())
    });
    h.signal(d.id, nix::sys::signal::Signal::SIGTERM);
    h.wait_exit(d.id, LONG);

    // A flag beats both.
    let d = h.start_server(
        "daemon",
        &[
            "daemon",
            "--config",
            &file,
            "--state-dir",
            from_flag.to_str().unwrap(),
        ],
    );
    wait_for("current.json in --state-dir", LONG, || {
        from_flag.join("current.json").exists().then_some(())
    });
    assert!(!from_file.exists(), "the file's state_dir was used");
    h.signal(d.id, nix::sys::signal::Signal::SIGTERM);
    h.wait_exit(d.id, LONG);
}

#[test]
fn an_agent_takes_its_name_labels_and_server_from_the_file_orch_config_names() {
    let mut h = Harness::new();
    let d = h.start_daemon(&[]);
    let file = h.write(
        "agent.toml",
        &format!(
            "server = {:?}\nname = \"from-file\"\nslots = 3\nlabels = [\"fast\", \"linux\"]\n",
            d.url
        ),
    );
    h.set_env("ORCH_CONFIG", file.to_str());
    // The flag beats the file's slots.
    let agent = h.spawn("agent", &["agent", "--slots", "2"]);
    h.set_env("ORCH_CONFIG", None);
    let view = wait_for("the agent from the file to register", LONG, || {
        let out = h.orch(&["agents", "-o", "json"]);
        let list = out.json();
        list.as_array()?
            .iter()
            .find(|a| a["name"] == "from-file")
            .cloned()
    });
    assert_eq!(
        view["labels"],
        serde_json::json!(["fast", "linux"]),
        "{view:#}"
    );
    assert_eq!(view["slots"], 2, "{view:#}");
    h.signal(agent, nix::sys::signal::Signal::SIGTERM);
    h.wait_exit(agent, LONG);
}

#[test]
fn a_file_with_a_mistake_stops_the_command_before_it_starts() {
    let h = Harness::new();
    let file = h.write(
        "agent.toml",
        "slots = 2\nlisten = \"127.0.0.1:0\"\nstate_dri = \"/tmp/x\"\n",
    );
    let out = h.orch(&["daemon", "--config", file.to_str().unwrap()]);
    out.expect_code(2);
    let f = file.display();
    assert!(
        out.stderr.contains(&format!(
            "error: {f}:1:1: unknown key `slots`: it is an agent setting"
        )),
        "{out}"
    );
    assert!(
        out.stderr.contains(&format!(
            "error: {f}:3:1: unknown key `state_dri`; did you mean `state_dir`?"
        )),
        "{out}"
    );
    assert!(!h.data.join("endpoint").exists());
    let missing = h.orch(&["agent", "--config", "/nonexistent/agent.toml"]);
    missing.expect_code(2);
    assert!(
        missing
            .stderr
            .contains("/nonexistent/agent.toml: cannot read"),
        "{missing}"
    );
}
