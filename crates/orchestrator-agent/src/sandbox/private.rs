//! The orchestrator's own directories on this machine, which no sandbox
//! shows.
//!
//! A daemon's or agent's data directory holds its tokens and secrets
//! (`admin.token`, `agent.token`, `dashboard.secret`, `job-keys.secret`),
//! and it may live anywhere: `~/.local/share/orch`, `/var/lib/orch`,
//! `/srv/ci/orch`. The sandboxes hide a fixed list of places (`/tmp`,
//! `/home`, ...) and the project's `.orchestrator`; for the rest, every
//! daemon and agent registers its private directories here when it starts,
//! and every namespace-based sandbox (`namespace`, `bubblewrap`) hides all
//! directories registered on the machine, whoever registered them.
//!
//! The registry is a directory of small files, one per registered path
//! (named by a hash of the path, so registering again changes nothing):
//! `/run/orch/private` for root, `$XDG_RUNTIME_DIR/orch/private` or
//! `/tmp/orch-<uid>/private` for other users. Entries are never removed:
//! a stopped daemon's tokens are still on disk. A reader takes every entry
//! written by root or by its own user, and another user's entry only for a
//! path that user owns, so nobody can make a sandbox hide what its steps
//! need (`/usr`) from someone else's.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// The registry of the machine's root processes.
const ROOT_REGISTRY: &str = "/run/orch/private";

/// Where this process registers.
fn own_registry() -> PathBuf {
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        return PathBuf::from(ROOT_REGISTRY);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("orch/private"),
        None => std::env::temp_dir().join(format!("orch-{uid}/private")),
    }
}

/// Every registry a reader looks in: root's, the runtime directories of
/// the machine's users, and the fallbacks under the temporary directory.
fn registries() -> Vec<PathBuf> {
    let mut all = vec![PathBuf::from(ROOT_REGISTRY), own_registry()];
    for (parent, sub) in [("/run/user", "orch/private"), ("/tmp", "private")] {
        let Ok(list) = fs::read_dir(parent) else {
            continue;
        };
        for e in list.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // `/tmp/orch-<uid>` only: other `orch-*` names are not registries.
            let uid_dir = name
                .strip_prefix("orch-")
                .is_some_and(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit()));
            if parent == "/tmp" && !uid_dir {
                continue;
            }
            all.push(e.path().join(sub));
        }
    }
    all.sort();
    all.dedup();
    all
}

/// Registers `dirs` (absolute; made canonical where they exist) as private
/// to the orchestrator on this machine. Idempotent.
pub fn register(dirs: &[PathBuf]) -> io::Result<()> {
    register_in(&own_registry(), dirs)
}

fn register_in(registry: &Path, dirs: &[PathBuf]) -> io::Result<()> {
    fs::create_dir_all(registry)?;
    forget_gone(registry);
    for dir in dirs {
        let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        if !dir.is_absolute() {
            continue;
        }
        let text = dir.to_string_lossy();
        let name = hex(&Sha256::digest(text.as_bytes())[..12]);
        let path = registry.join(&name);
        if fs::read_to_string(&path).is_ok_and(|t| t.trim_end() == text) {
            continue;
        }
        let tmp = registry.join(format!("{name}.{}.tmp", std::process::id()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        writeln!(f, "{text}")?;
        drop(f);
        fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// Every directory registered on this machine, by root or by this user.
///
/// Asked before every step, so it is kept between calls and read again only
/// when a directory that holds registries, or a registry, changed (its
/// modification time: every registration renames a file into one).
pub fn registered() -> Vec<PathBuf> {
    static CACHE: Mutex<Option<Cached>> = Mutex::new(None);
    let parents = stamps(&[Path::new("/run/user"), Path::new("/tmp")]);
    // A panic elsewhere while holding the lock leaves a usable cache.
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let registries = match cache.as_ref() {
        Some(c) if c.parents == parents => c.registries.clone(),
        _ => registries(),
    };
    let refs: Vec<&Path> = registries.iter().map(PathBuf::as_path).collect();
    let seen = stamps(&refs);
    if let Some(c) = cache.as_ref() {
        if c.parents == parents && c.seen == seen {
            return c.dirs.clone();
        }
    }
    let me = nix::unistd::getuid().as_raw();
    let mut dirs: Vec<PathBuf> = registries
        .iter()
        .flat_map(|r| read_registry(r, me))
        .collect();
    dirs.sort();
    dirs.dedup();
    *cache = Some(Cached {
        parents,
        registries,
        seen,
        dirs: dirs.clone(),
    });
    dirs
}

/// What [`registered`] read last, and the times it was read at.
struct Cached {
    parents: Vec<Option<SystemTime>>,
    registries: Vec<PathBuf>,
    seen: Vec<Option<SystemTime>>,
    dirs: Vec<PathBuf>,
}

/// Each directory's modification time, None where it is missing.
fn stamps(dirs: &[&Path]) -> Vec<Option<SystemTime>> {
    dirs.iter()
        .map(|d| fs::metadata(d).and_then(|m| m.modified()).ok())
        .collect()
}

/// The directories registered in `registry` by root or by user `me`.
fn read_registry(registry: &Path, me: u32) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    {
        let Ok(list) = fs::read_dir(registry) else {
            return dirs;
        };
        for e in list.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "tmp") {
                continue;
            }
            // Not followed: an entry is a plain file of a trusted owner.
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.file_type().is_file() || meta.len() > 4096 {
                continue;
            }
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let dir = PathBuf::from(text.trim_end_matches('\n'));
            // Root and this user name what they like; another user only
            // what is theirs, so nobody can hide what a step needs (`/usr`)
            // from someone else's steps.
            let trusted = meta.uid() == 0
                || meta.uid() == me
                || fs::symlink_metadata(&dir).is_ok_and(|d| d.uid() == meta.uid());
            if trusted && dir.is_absolute() && dir != Path::new("/") {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// Removes the entries of directories that no longer exist (and hold no
/// tokens any more), so that the registry does not grow without end.
fn forget_gone(registry: &Path) {
    let Ok(list) = fs::read_dir(registry) else {
        return;
    };
    for e in list.flatten() {
        let gone = fs::read_to_string(e.path())
            .is_ok_and(|t| fs::symlink_metadata(t.trim_end_matches('\n')).is_err());
        if gone {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_directories_are_read_back_and_gone_ones_forgotten() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = tmp.path().join("private");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        register_in(&registry, &[a.clone(), b.clone()]).unwrap();
        // Again: nothing new.
        register_in(&registry, std::slice::from_ref(&a)).unwrap();
        let me = nix::unistd::getuid().as_raw();
        let mut got = read_registry(&registry, me);
        got.sort();
        let canon = |p: &Path| fs::canonicalize(p).unwrap();
        assert_eq!(got, vec![canon(&a), canon(&b)]);
        fs::remove_dir(&b).unwrap();
        register_in(&registry, std::slice::from_ref(&a)).unwrap();
        assert_eq!(read_registry(&registry, me), vec![canon(&a)]);
        // Another user's entry is taken for what that user owns only.
        if me == 0 {
            let other = registry.join("planted");
            fs::write(&other, "/usr\n").unwrap();
            nix::unistd::chown(&other, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
            assert_eq!(read_registry(&registry, me), vec![canon(&a)]);
            let theirs = tmp.path().join("theirs");
            fs::create_dir_all(&theirs).unwrap();
            nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
            fs::write(&other, format!("{}\n", theirs.display())).unwrap();
            let mut got = read_registry(&registry, me);
            got.sort();
            let mut want = vec![canon(&a), theirs];
            want.sort();
            assert_eq!(got, want);
        }
    }
}
