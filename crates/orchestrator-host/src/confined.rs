//! Directories a step can write, reached only through directory descriptors.
//!
//! A step may plant anything where it can write: a symlink named like the
//! next command's log, a hardlink, a directory where a file is expected. So
//! the agent, the daemon and the CLI never hand such a place's paths to a
//! path-based call. [`ConfinedDir`] opens the directory once, walking each
//! component with `O_NOFOLLOW`, and then works relative to that descriptor:
//! a new file replaces whatever held its name (`unlinkat`, then
//! `O_CREAT | O_EXCL | O_NOFOLLOW`), a rename replaces the name itself, and
//! a read opens only a regular file, never a link, FIFO or device.
//!
//! What it is not: a sandbox. It keeps the orchestrator's own writes and
//! reads where they belong; what a step may touch is the sandbox's business.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, renameat, OFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// How often [`ConfinedDir::create`] retries when a name it just cleared is
/// taken again at once (a step racing the agent).
const CREATE_TRIES: usize = 3;

/// A directory opened without following links, and the files in it.
#[derive(Debug, Clone)]
pub struct ConfinedDir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

/// Why a confined directory or a file in it could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfinedError {
    /// A component of the path is a symlink or not a directory.
    #[error("{} {found}; expected a plain directory (links are never followed here)", path.display())]
    NotADirectory {
        path: PathBuf,
        /// What stands there instead, in words.
        found: String,
        /// Whether it is a symlink.
        link: bool,
    },
    /// A name holds something other than a regular file.
    #[error("{} is not a regular file (a symlink, a directory or a device); only regular files are read or replaced here", path.display())]
    NotAFile { path: PathBuf },
    /// A path component the caller passed is not a plain name.
    #[error("{name:?} is not a plain file name")]
    BadName { name: String },
    /// Any other failure of the system call.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ConfinedError {
    /// Whether nothing is at the path: what readers treat as "not yet".
    pub fn is_not_found(&self) -> bool {
        matches!(self, ConfinedError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    fn io(what: &'static str, path: &Path, e: Errno) -> Self {
        ConfinedError::Io {
            what,
            path: path.to_owned(),
            source: io::Error::from(e),
        }
    }
}

impl From<ConfinedError> for io::Error {
    fn from(e: ConfinedError) -> Self {
        let kind = match &e {
            ConfinedError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e.to_string())
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// A name fit for one `*at` call: one normal component.
fn plain(name: &str) -> Result<&str, ConfinedError> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) => Ok(name),
        _ => Err(ConfinedError::BadName {
            name: name.to_owned(),
        }),
    }
}

impl ConfinedDir {
    /// Opens `root/rel`, `root` as it is (the caller trusts it) and each
    /// component of `rel` without following links; with `create`, missing
    /// components are made (mode 0755).
    pub fn open(root: &Path, rel: &Path, create: bool) -> Result<Self, ConfinedError> {
        let fd = openat(
            nix::fcntl::AT_FDCWD,
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ENOTDIR => ConfinedError::NotADirectory {
                path: root.to_owned(),
                found: "is not a directory".to_owned(),
                link: false,
            },
            e => ConfinedError::io("open the directory", root, e),
        })?;
        let mut dir = ConfinedDir {
            fd: Arc::new(fd),
            path: root.to_owned(),
        };
        for part in rel.components() {
            match part {
                Component::CurDir => {}
                Component::Normal(name) => dir = dir.child(name, create)?,
                _ => {
                    return Err(ConfinedError::BadName {
                        name: rel.to_string_lossy().into_owned(),
                    })
                }
            }
        }
        Ok(dir)
    }

    /// The subdirectory `name`, made when missing and `create` is set.
    pub fn subdir(&self, name: &str, create: bool) -> Result<Self, ConfinedError> {
        self.child(OsStr::new(plain(name)?), create)
    }

    fn child(&self, name: &OsStr, create: bool) -> Result<Self, ConfinedError> {
        let path = self.path.join(name);
        let opened = match openat(self.fd.as_fd(), name, dir_flags(), Mode::empty()) {
            Err(Errno::ENOENT) if create => {
                match mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(ConfinedError::io("create the directory", &path, e)),
                }
                openat(self.fd.as_fd(), name, dir_flags(), Mode::empty())
            }
            other => other,
        };
        let fd = opened.map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => {
                let target = readlinkat(self.fd.as_fd(), name).ok();
                ConfinedError::NotADirectory {
                    path: path.clone(),
                    link: target.is_some(),
                    found: match target {
                        Some(to) => format!("is a symlink to {}", Path::new(&to).display()),
                        None => "is not a directory".to_owned(),
                    },
                }
            }
            e => ConfinedError::io("open the directory", &path, e),
        })?;
        Ok(ConfinedDir {
            fd: Arc::new(fd),
            path,
        })
    }

    /// The directory's path, for messages and for what must be told by path
    /// (a sandbox's binds, a step's variables).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new, empty file at `name`, open for reading and writing. Whatever
    /// held the name (a file, a link, an empty directory) is removed first,
    /// and the new file is made with `O_EXCL`, so nothing planted there is
    /// ever written through.
    pub fn create(&self, name: &str) -> Result<File, ConfinedError> {
        let name = plain(name)?;
        let path = self.path.join(name);
        for _ in 0..CREATE_TRIES {
            self.remove(name)?;
            match openat(
                self.fd.as_fd(),
                name,
                OFlag::O_RDWR
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            ) {
                Ok(fd) => return Ok(File::from(fd)),
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(ConfinedError::io("create", &path, e)),
            }
        }
        Err(ConfinedError::io("create", &path, Errno::EEXIST))
    }

    /// Makes `name` a symlink to `target`, replacing whatever held it.
    pub fn link(&self, name: &str, target: &Path) -> Result<(), ConfinedError> {
        let name = plain(name)?;
        self.remove(name)?;
        nix::unistd::symlinkat(target, self.fd.as_fd(), name)
            .map_err(|e| ConfinedError::io("link", &self.path.join(name), e))
    }

    /// Removes `name` (a file, a link, or an empty directory); a name that
    /// is not there is no error.
    pub fn remove(&self, name: &str) -> Result<(), ConfinedError> {
        let name = plain(name)?;
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) => match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) => Err(ConfinedError::NotAFile {
                    path: self.path.join(name),
                }),
                Err(e) => Err(ConfinedError::io("remove", &self.path.join(name), e)),
            },
            Err(e) => Err(ConfinedError::io("remove", &self.path.join(name), e)),
        }
    }

    /// Renames `from` to `to` in this directory; whatever held `to` (a link
    /// included) is replaced, never followed.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), ConfinedError> {
        let (from, to) = (plain(from)?, plain(to)?);
        renameat(self.fd.as_fd(), from, self.fd.as_fd(), to)
            .map_err(|e| ConfinedError::io("rename into", &self.path.join(to), e))
    }

    /// Opens `name` for reading when it is a regular file; a link, a FIFO,
    /// a device or a directory is refused without being opened through.
    pub fn open_regular(&self, name: &str) -> Result<File, ConfinedError> {
        let name = plain(name)?;
        let path = self.path.join(name);
        let fd = openat(
            self.fd.as_fd(),
            name,
            // O_NONBLOCK: a FIFO planted at the name must not hang the open.
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP => ConfinedError::NotAFile { path: path.clone() },
            e => ConfinedError::io("open", &path, e),
        })?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| ConfinedError::Io {
            what: "inspect",
            path: path.clone(),
            source: e,
        })?;
        if !meta.file_type().is_file() {
            return Err(ConfinedError::NotAFile { path });
        }
        Ok(file)
    }

    /// Whether something (anything, a link included) has the name `name`.
    pub fn holds_name(&self, name: &str) -> bool {
        plain(name).is_ok_and(|name| {
            fstatat(
                self.fd.as_fd(),
                name,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .is_ok()
        })
    }

    /// Whether `name` is, right now, the very file `file` is open on (the
    /// same device and inode, not a link to it).
    pub fn holds(&self, name: &str, file: &File) -> Result<bool, ConfinedError> {
        let name = plain(name)?;
        let ours = file.metadata().map_err(|e| ConfinedError::Io {
            what: "inspect",
            path: self.path.join(name),
            source: e,
        })?;
        match fstatat(
            self.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(st.st_dev == ours.dev()
                && st.st_ino == ours.ino()
                && st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(ConfinedError::io("inspect", &self.path.join(name), e)),
        }
    }
}

impl AsFd for ConfinedDir {
    /// The directory's descriptor, for `*at` calls relative to it.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The most bytes a workflow, policy, rules or models file may hold.
pub const MAX_DEFINITION_BYTES: u64 = 1 << 20;

/// Whether [`read_definition`] follows a symlink at the file's own name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// A path an operator typed: a link to a regular file is fine.
    Follow,
    /// A file of the repository (`.orchestrator/policy.yaml`, the
    /// workflows directory): committed content is not trusted, so a link
    /// there is refused rather than read through.
    Refuse,
}

/// Why a definition file was not read.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("{}: {found}; expected a regular file", path.display())]
    NotAFile { path: PathBuf, found: &'static str },
    #[error("{}: {size} bytes; expected at most {max} bytes", path.display())]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reads a definition file (workflow, policy, rules, models) as text: only
/// a regular file, checked to hold at most `max` bytes before anything is
/// read, so a link to `/dev/zero`, a FIFO or a huge file is refused at
/// once. None when there is no file at `path`.
pub fn read_definition(
    path: &Path,
    max: u64,
    links: Links,
) -> Result<Option<String>, DefinitionError> {
    use std::io::Read;
    let mut flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= OFlag::O_NOFOLLOW;
    }
    let io = |source: io::Error| DefinitionError::Io {
        path: path.to_owned(),
        source,
    };
    let fd = match openat(nix::fcntl::AT_FDCWD, path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) if links == Links::Refuse => {
            return Err(DefinitionError::NotAFile {
                path: path.to_owned(),
                found: "a symlink, which is not followed in a repository",
            })
        }
        Err(e) => return Err(io(io::Error::from(e))),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(io)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let found = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(DefinitionError::NotAFile {
            path: path.to_owned(),
            found,
        });
    }
    if meta.len() > max {
        return Err(DefinitionError::TooLarge {
            path: path.to_owned(),
            size: meta.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // One byte more than allowed tells a file that grew since.
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(DefinitionError::TooLarge {
            path: path.to_owned(),
            size: bytes.len() as u64,
            max,
        });
    }
    String::from_utf8(bytes).map(Some).map_err(|e| {
        io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 text: {e}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;

    #[test]
    fn definitions_are_regular_small_files() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = tmp.path().join("ok.yaml");
        std::fs::write(&ok, "name: x\n").unwrap();
        assert_eq!(
            read_definition(&ok, 100, Links::Refuse).unwrap().as_deref(),
            Some("name: x\n")
        );
        assert!(
            read_definition(&tmp.path().join("none"), 100, Links::Refuse)
                .unwrap()
                .is_none()
        );
        let zero = tmp.path().join("zero.yaml");
        symlink("/dev/zero", &zero).unwrap();
        let err = read_definition(&zero, 100, Links::Refuse).unwrap_err();
        assert!(err.to_string().contains("a symlink"), "{err}");
        let err = read_definition(&zero, 100, Links::Follow).unwrap_err();
        assert!(err.to_string().contains("a device"), "{err}");
        let fifo = tmp.path().join("fifo.yaml");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_definition(&fifo, 100, Links::Follow).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        let big = tmp.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; 101]).unwrap();
        let err = read_definition(&big, 100, Links::Follow).unwrap_err();
        assert!(
            err.to_string().contains("101 bytes; expected at most 100"),
            "{err}"
        );
    }

    #[test]
    fn a_link_in_the_path_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), tmp.path().join("a")).unwrap();
        let err = ConfinedDir::open(tmp.path(), Path::new("a/b"), true).unwrap_err();
        assert!(matches!(err, ConfinedError::NotADirectory { .. }), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn create_replaces_a_planted_link_without_following_it() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, "host").unwrap();
        let dir = ConfinedDir::open(tmp.path(), Path::new("d"), true).unwrap();
        symlink(&target, dir.path().join("log")).unwrap();
        let mut f = dir.create("log").unwrap();
        f.write_all(b"mine").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "host");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "mine"
        );
        assert!(dir.holds("log", &f).unwrap());
    }

    #[test]
    fn open_regular_refuses_links_and_fifos() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ConfinedDir::open(tmp.path(), Path::new(""), false).unwrap();
        std::fs::write(tmp.path().join("plain"), "ok").unwrap();
        symlink("/etc/hostname", tmp.path().join("link")).unwrap();
        nix::unistd::mkfifo(&tmp.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let mut s = String::new();
        dir.open_regular("plain")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "ok");
        for name in ["link", "fifo"] {
            let err = dir.open_regular(name).unwrap_err();
            assert!(
                matches!(err, ConfinedError::NotAFile { .. }),
                "{name}: {err}"
            );
        }
        assert!(matches!(
            dir.open_regular("../plain").unwrap_err(),
            ConfinedError::BadName { .. }
        ));
    }
}
