//! This machine's name, as agents register it and the daemon shows its own.

/// The name of this machine, when it has a printable one.
pub fn local_hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
}
