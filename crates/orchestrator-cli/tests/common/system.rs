//! The system tier's checks: a test that needs a tool beyond Rust, gcc and
//! git fails naming it and how to get it, never skips what it cannot run.

/// Fails, naming the Debian package and how to get it, when `program` is not
/// on PATH.
pub fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()));
    assert!(
        found,
        "{program} is not installed: this system-tier test needs the Debian package {package}; \
         scripts/test installs it"
    );
}

/// The sandboxes a test that holds for each of `all` runs under: every one in
/// the system tier (`bubblewrap` checked installed), and without it those
/// built into `orch`, so the plain tier still attacks the default sandbox.
pub fn sandboxes<'a>(all: &[&'a str]) -> Vec<&'a str> {
    let system = cfg!(feature = "system-tests");
    if system && all.contains(&"bubblewrap") {
        require("bwrap", "bubblewrap");
    }
    all.iter()
        .copied()
        .filter(|s| system || *s != "bubblewrap")
        .collect()
}
