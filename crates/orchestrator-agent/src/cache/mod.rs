//! The project's caches on this machine: `<project>/.orchestrator/caches`,
//! one directory per cache path (`wt+.venv`, `home+.cache+pip`, see
//! [`orchestrator_core::cache::slot`]) holding one entry per key:
//! `<slot>/<key>/tree` (the copied directory) and `<slot>/<key>/entry.json`
//! (what it is). Nothing there is shown to any step: the project's
//! `.orchestrator` is hidden from its own steps, and the directory is
//! registered with the machine's private directories, so no other
//! project's step sees it either.
//!
//! An entry is made in `.tmp/` and renamed into place whole (a rename that
//! fails when the key exists), so a reader sees a complete entry or none,
//! two saves of one key keep the first, and an entry never changes once
//! saved. Restoring copies the entry into the step's path: what the step
//! then writes there never reaches the entry. Every copy walks descriptors
//! without following links ([`copy`]).

use orchestrator_core::RunId;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::renameat;
use nix::sys::stat::{mkdirat, Mode};
use serde::{Deserialize, Serialize};

use orchestrator_host::confined::{ConfinedDir, ConfinedError};

pub mod copy;

pub use copy::{Copied, CopyError};

/// The caches' directory, relative to the project.
pub const CACHES_DIR: &str = ".orchestrator/caches";
/// Where entries are made before they are renamed into place.
const TMP: &str = ".tmp";
/// An entry's copied directory.
const TREE: &str = "tree";
/// An entry's description.
const META: &str = "entry.json";
/// The default of `orch agent --cache-max`: the most bytes one entry holds.
pub const DEFAULT_CACHE_MAX: u64 = 4 << 30;

/// What an entry is, as its `entry.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// The cache path it was saved from (`.venv`, `~/.cache/pip`).
    pub path: String,
    pub key: String,
    pub saved_at_ms: i64,
    pub bytes: u64,
    pub files: u64,
    /// The run and stage that saved it.
    pub run_id: RunId,
    pub stage_id: String,
}

/// Why the cache store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Confined(#[from] ConfinedError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: &'static str, path: &Path, e: impl Into<std::io::Error>) -> CacheError {
    CacheError::Io {
        what,
        path: path.to_owned(),
        source: e.into(),
    }
}

/// One project's caches on this machine.
#[derive(Debug, Clone)]
pub struct CacheStore {
    dir: ConfinedDir,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The entry saved under the key itself.
    Exact(EntryMeta),
    /// The newest entry under the first restore prefix that has any.
    Prefix(EntryMeta),
    Miss,
}

/// How a save ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// A new entry, with what was copied.
    Saved(Copied),
    /// The key was saved already (maybe just now, by another run): kept as is.
    Kept,
    /// Nothing at the path to save.
    Nothing,
}

impl CacheStore {
    /// The caches of `project`, `None` when it has none yet and `create`
    /// is false. Each component is opened without following links: a
    /// committed `.orchestrator` link never carries caches elsewhere.
    pub fn open(project: &Path, create: bool) -> Result<Option<Self>, CacheError> {
        match ConfinedDir::open(project, Path::new(CACHES_DIR), create) {
            Ok(dir) => {
                if create {
                    // Hidden from every sandbox on the machine, whoever's step.
                    if let Err(e) = crate::sandbox::private::register(&[dir.path().to_owned()]) {
                        tracing::warn!(error = %e, dir = %dir.path().display(), "could not register the caches directory as private");
                    }
                }
                Ok(Some(CacheStore { dir }))
            }
            Err(e) if e.is_not_found() && !create => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Where the caches are.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn slot(&self, slot: &str, create: bool) -> Result<Option<ConfinedDir>, CacheError> {
        match self.dir.subdir(slot, create) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The entry of `slot` to restore for `key`, else for the first of
    /// `prefixes` that any entry's key starts with (the newest of those).
    pub fn find(&self, slot: &str, key: &str, prefixes: &[String]) -> Result<Found, CacheError> {
        let Some(dir) = self.slot(slot, false)? else {
            return Ok(Found::Miss);
        };
        if let Some(meta) = read_meta(&dir, key) {
            return Ok(Found::Exact(meta));
        }
        let keys = list_names(&dir)?;
        for prefix in prefixes {
            let newest = keys
                .iter()
                .filter(|k| k.starts_with(prefix.as_str()))
                .filter_map(|k| read_meta(&dir, k))
                .max_by_key(|m| (m.saved_at_ms, m.key.clone()));
            if let Some(m) = newest {
                return Ok(Found::Prefix(m));
            }
        }
        Ok(Found::Miss)
    }

    /// Copies the entry `key` of `slot` to `name` in `parent`, replacing
    /// whatever is there (a link is replaced, never followed). The copy is
    /// made beside it and renamed into place, so a failure leaves the old
    /// content.
    pub fn restore(
        &self,
        slot: &str,
        key: &str,
        parent: &ConfinedDir,
        name: &str,
    ) -> Result<Copied, CacheError> {
        let src = self
            .dir
            .subdir(slot, false)?
            .subdir(key, false)?
            .subdir(TREE, false)?;
        let tmp = format!(".{name}.orch-restore-{}", random_hex());
        let tmp_c = cstring(&tmp)?;
        let name_c = cstring(name)?;
        mkdirat(
            parent.as_fd(),
            tmp_c.as_c_str(),
            Mode::from_bits_truncate(0o700),
        )
        .map_err(|e| io_err("make", &parent.path().join(&tmp), e))?;
        let done = (|| {
            let dst = copy::open_dir(parent.as_fd(), &tmp_c, &parent.path().join(&tmp))?;
            let copied = copy::copy_tree(src.as_fd(), dst.as_fd(), src.path(), u64::MAX)?;
            nix::sys::stat::fchmod(dst.as_fd(), Mode::from_bits_truncate(0o755))
                .map_err(|e| io_err("set the mode of", &parent.path().join(&tmp), e))?;
            copy::remove_tree(parent.as_fd(), &name_c, &parent.path().join(name))?;
            renameat(
                parent.as_fd(),
                tmp_c.as_c_str(),
                parent.as_fd(),
                name_c.as_c_str(),
            )
            .map_err(|e| io_err("rename into", &parent.path().join(name), e))?;
            Ok::<_, CacheError>(copied)
        })();
        if done.is_err() {
            let _ = copy::remove_tree(parent.as_fd(), &tmp_c, &parent.path().join(&tmp));
        }
        done
    }

    /// Saves the directory `src` as entry `meta.key` of `slot`, at most
    /// `max_bytes` of it; an existing key is kept as it is.
    pub fn save(
        &self,
        slot: &str,
        src: &ConfinedDir,
        mut meta: EntryMeta,
        max_bytes: u64,
    ) -> Result<Saved, CacheError> {
        let key = meta.key.clone();
        let slot_dir = self
            .slot(slot, true)?
            .ok_or_else(|| io_err("make", &self.dir.path().join(slot), Errno::ENOENT))?;
        if slot_dir.holds_name(&key) {
            return Ok(Saved::Kept);
        }
        let tmp_root = self.dir.subdir(TMP, true)?;
        let name = random_hex();
        let name_c = cstring(&name)?;
        let entry = tmp_root.subdir(&name, true)?;
        let done = (|| {
            let tree = entry.subdir(TREE, true)?;
            let copied = copy::copy_tree(src.as_fd(), tree.as_fd(), src.path(), max_bytes)?;
            meta.bytes = copied.bytes;
            meta.files = copied.files;
            let text = serde_json::to_vec_pretty(&meta)
                .map_err(|e| io_err("describe", entry.path(), std::io::Error::other(e)))?;
            let mut f = entry.create(META)?;
            f.write_all(&text)
                .and_then(|()| f.sync_all())
                .map_err(|e| io_err("write", &entry.path().join(META), e))?;
            Ok::<_, CacheError>(copied)
        })();
        let copied = match done {
            Ok(c) => c,
            Err(e) => {
                let _ = copy::remove_tree(tmp_root.as_fd(), &name_c, entry.path());
                return Err(e);
            }
        };
        let key_c = cstring(&key)?;
        // A directory renames onto a non-empty one only to fail: the first
        // save of a key wins, whole.
        match renameat(
            tmp_root.as_fd(),
            name_c.as_c_str(),
            slot_dir.as_fd(),
            key_c.as_c_str(),
        ) {
            Ok(()) => Ok(Saved::Saved(copied)),
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => {
                let _ = copy::remove_tree(tmp_root.as_fd(), &name_c, entry.path());
                Ok(Saved::Kept)
            }
            Err(e) => {
                let _ = copy::remove_tree(tmp_root.as_fd(), &name_c, entry.path());
                Err(io_err("rename into", &slot_dir.path().join(&key), e))
            }
        }
    }

    /// Every entry, by slot and key.
    pub fn list(&self) -> Result<Vec<(String, EntryMeta)>, CacheError> {
        let mut out = Vec::new();
        for slot in list_names(&self.dir)? {
            let Some(dir) = self.slot(&slot, false).ok().flatten() else {
                continue;
            };
            for key in list_names(&dir)? {
                if let Some(meta) = read_meta(&dir, &key) {
                    out.push((slot.clone(), meta));
                }
            }
        }
        Ok(out)
    }

    /// Removes the entry `key` of `slot`: renamed out of sight first, so a
    /// restore sees it whole or not at all. Whether it was there.
    pub fn remove(&self, slot: &str, key: &str) -> Result<bool, CacheError> {
        let Some(dir) = self.slot(slot, false)? else {
            return Ok(false);
        };
        if !dir.holds_name(key) {
            return Ok(false);
        }
        let tmp_root = self.dir.subdir(TMP, true)?;
        let name = cstring(&random_hex())?;
        let key_c = cstring(key)?;
        match renameat(
            dir.as_fd(),
            key_c.as_c_str(),
            tmp_root.as_fd(),
            name.as_c_str(),
        ) {
            Ok(()) => {}
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(io_err("remove", &dir.path().join(key), e)),
        }
        copy::remove_tree(tmp_root.as_fd(), &name, tmp_root.path())?;
        Ok(true)
    }
}

/// The entry `key`'s description, when it is a complete entry.
fn read_meta(slot: &ConfinedDir, key: &str) -> Option<EntryMeta> {
    if key.starts_with('.') {
        return None;
    }
    let entry = slot.subdir(key, false).ok()?;
    let mut text = Vec::new();
    entry
        .open_regular(META)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut text)
        .ok()?;
    serde_json::from_slice::<EntryMeta>(&text)
        .ok()
        .filter(|m| m.key == key)
}

/// The names in `dir` that are not hidden (`.tmp` and the like).
fn list_names(dir: &ConfinedDir) -> Result<Vec<String>, CacheError> {
    let mut d = nix::dir::Dir::openat(
        dir.as_fd(),
        c".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("list", dir.path(), e))?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(|e| io_err("list", dir.path(), e))?;
        if let Ok(name) = e.file_name().to_str() {
            if !name.starts_with('.') {
                out.push(name.to_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn cstring(name: &str) -> Result<CString, CacheError> {
    CString::new(name).map_err(|_| {
        CacheError::Confined(ConfinedError::BadName {
            name: name.to_owned(),
        })
    })
}

/// A name no one else picks: 16 random hex digits (the time and pid when
/// the system has no randomness to give, which it always has on Linux).
fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = ((t as u64) ^ u64::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
