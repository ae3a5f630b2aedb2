//! The container's root file system: a directory used as it is, or a
//! tarball extracted once into the agent's cache, keyed by its sha256.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::sandbox::SandboxError;

/// The tarball endings accepted, each extracted by the system's `tar`
/// (which recognizes the compression itself).
const TARBALLS: &[&str] = &[".tar", ".tar.gz", ".tgz"];

/// The root file system directory for `image` (as the stage or the agent
/// wrote it: `shown`), relative paths taken from `project`; a tarball is
/// extracted under `cache` first.
pub(super) fn rootfs(
    image: &Path,
    shown: &str,
    project: Option<&Path>,
    cache: &Path,
) -> Result<PathBuf, SandboxError> {
    let bad = |why: String| SandboxError::Image {
        image: shown.to_owned(),
        why,
    };
    let path = match project {
        Some(project) if image.is_relative() => project.join(image),
        _ => image.to_owned(),
    };
    let meta = fs::metadata(&path).map_err(|e| {
        bad(format!(
            "{}: {e}; expected a root file system directory or a .tar, .tar.gz or .tgz of one (a relative path is taken from the project directory)",
            path.display()
        ))
    })?;
    if meta.is_dir() {
        return path
            .canonicalize()
            .map_err(|e| bad(format!("{}: {e}", path.display())));
    }
    let name = path.to_string_lossy();
    if !meta.is_file() || !TARBALLS.iter().any(|t| name.ends_with(t)) {
        return Err(bad(format!(
            "{} is neither a directory nor a file ending in .tar, .tar.gz or .tgz; expected a root file system directory or a tarball of one",
            path.display()
        )));
    }
    let digest = digest(&path).map_err(|e| bad(format!("reading {}: {e}", path.display())))?;
    let target = cache.join(&digest);
    if target.is_dir() {
        return Ok(target);
    }
    extract(&path, cache, &target)
        .map_err(|e| bad(format!("extracting {}: {e}", path.display())))?;
    Ok(target)
}

/// The tarball's sha256, hashed once per agent while its size and
/// modification time stay the same (an image can be large, and every step
/// of a container stage looks it up).
fn digest(path: &Path) -> io::Result<String> {
    type Key = (PathBuf, u64, SystemTime);
    static KNOWN: Mutex<BTreeMap<Key, String>> = Mutex::new(BTreeMap::new());
    let meta = fs::metadata(path)?;
    let key = (path.to_owned(), meta.len(), meta.modified()?);
    // A panic elsewhere while holding the lock leaves a usable map.
    let known = |k: &Key| {
        KNOWN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(k)
            .cloned()
    };
    if let Some(d) = known(&key) {
        return Ok(d);
    }
    let d = sha256(path)?;
    KNOWN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, d.clone());
    Ok(d)
}

fn sha256(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Extracts `tarball` into a fresh directory under `cache`, then renames it
/// to `target`: a crash mid-way leaves only a temporary directory, never a
/// half image under the name that is looked up.
fn extract(tarball: &Path, cache: &Path, target: &Path) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(cache)?;
    let tmp = cache.join(format!(
        ".extracting-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&tmp)?;
    let out = std::process::Command::new("tar")
        .arg("-xf")
        .arg(tarball)
        .arg("-C")
        .arg(&tmp)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(io::Error::new(e.kind(), format!("running tar: {e}")));
        }
    };
    if !out.status.success() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(io::Error::other(format!(
            "tar failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    match fs::rename(&tmp, target) {
        Ok(()) => Ok(()),
        // Another step extracted the same image meanwhile: theirs is as good.
        Err(_) if target.is_dir() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}
