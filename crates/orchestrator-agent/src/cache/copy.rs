//! Copying and removing directory trees a step wrote, through directory
//! descriptors only: each name is looked at without following it, a
//! symlink is copied as a symlink (its target text, never what it points
//! to), a regular file is opened `O_NOFOLLOW` and checked to be one, and
//! devices, FIFOs and sockets are skipped. Every new name is made with
//! `O_EXCL` or `mkdirat` in a directory the copy made itself, so nothing
//! planted there is written through. Sizes, counts and depth are capped.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};

/// Deepest directory nesting a copy follows.
pub const MAX_DEPTH: u32 = 256;
/// Most names (files, directories, links) one copy makes.
pub const MAX_ENTRIES: u64 = 2_000_000;

/// What one copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Bytes of regular files.
    pub bytes: u64,
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    /// Devices, FIFOs and sockets left out.
    pub skipped: u64,
}

/// Why a copy or a removal stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(
        "{} bytes and more; the cap is {max} bytes (orch agent --cache-max)",
        copied
    )]
    TooLarge { copied: u64, max: u64 },
    #[error("{} is nested more than {MAX_DEPTH} directories deep", path.display())]
    TooDeep { path: PathBuf },
    #[error("more than {MAX_ENTRIES} files, directories and links")]
    TooMany,
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path, e: impl Into<io::Error>) -> CopyError {
    CopyError::Io {
        what,
        path: path.to_owned(),
        source: e.into(),
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Opens the directory `name` in `dir` without following a link.
pub fn open_dir(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<OwnedFd, CopyError> {
    openat(dir, name, dir_flags(), Mode::empty()).map_err(|e| io_err("open the directory", path, e))
}

/// The names in `dir` other than `.` and `..`.
fn names(dir: BorrowedFd<'_>, path: &Path) -> Result<Vec<std::ffi::CString>, CopyError> {
    let mut d = Dir::openat(
        dir,
        c".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("list", path, e))?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(|e| io_err("list", path, e))?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Copies the contents of directory `src` into the empty directory `dst`,
/// at most `max_bytes` of file data. `path` names `src` in messages.
pub fn copy_tree(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    path: &Path,
    max_bytes: u64,
) -> Result<Copied, CopyError> {
    let mut done = Copied::default();
    copy_dir(src, dst, path, max_bytes, 0, &mut done)?;
    Ok(done)
}

fn copy_dir(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    path: &Path,
    max: u64,
    depth: u32,
    done: &mut Copied,
) -> Result<(), CopyError> {
    if depth >= MAX_DEPTH {
        return Err(CopyError::TooDeep {
            path: path.to_owned(),
        });
    }
    for name in names(src, path)? {
        let here = path.join(os(&name));
        if done.files + done.dirs + done.links >= MAX_ENTRIES {
            return Err(CopyError::TooMany);
        }
        let st = match fstatat(
            src,
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            // Gone since it was listed (the step may still run elsewhere).
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(io_err("inspect", &here, e)),
        };
        let perm = st.st_mode & 0o777;
        match kind(&st) {
            SFlag::S_IFDIR => {
                // Owner-writable while filling it, so a later removal can too.
                mkdirat(dst, name.as_c_str(), Mode::from_bits_truncate(0o700))
                    .map_err(|e| io_err("make the directory", &here, e))?;
                let s = open_dir(src, &name, &here)?;
                let d = open_dir(dst, &name, &here)?;
                copy_dir(s.as_fd(), d.as_fd(), &here, max, depth + 1, done)?;
                fchmod(d.as_fd(), Mode::from_bits_truncate(perm | 0o700))
                    .map_err(|e| io_err("set the mode of", &here, e))?;
                done.dirs += 1;
            }
            SFlag::S_IFREG => copy_file(src, dst, &name, &here, perm, max, done)?,
            SFlag::S_IFLNK => {
                let target = readlinkat(src, name.as_c_str())
                    .map_err(|e| io_err("read the link", &here, e))?;
                symlinkat(target.as_os_str(), dst, name.as_c_str())
                    .map_err(|e| io_err("make the link", &here, e))?;
                done.links += 1;
            }
            _ => done.skipped += 1,
        }
    }
    Ok(())
}

fn copy_file(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
    perm: u32,
    max: u64,
    done: &mut Copied,
) -> Result<(), CopyError> {
    let from = match openat(
        src,
        name,
        // O_NONBLOCK: a FIFO swapped in since the look must not hang the open.
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => File::from(fd),
        Err(Errno::ENOENT) => return Ok(()),
        // Swapped for a link since it was looked at: skipped, never followed.
        Err(Errno::ELOOP) => {
            done.skipped += 1;
            return Ok(());
        }
        Err(e) => return Err(io_err("open", path, e)),
    };
    let meta = from.metadata().map_err(|e| io_err("inspect", path, e))?;
    if !meta.file_type().is_file() {
        done.skipped += 1;
        return Ok(());
    }
    let to = openat(
        dst,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate((perm & 0o755) | 0o600),
    )
    .map_err(|e| io_err("create", path, e))?;
    let mut to = File::from(to);
    let room = max.saturating_sub(done.bytes);
    // One byte past the room tells a file that does not fit.
    let n = io::copy(&mut (&from).take(room.saturating_add(1)), &mut to)
        .map_err(|e| io_err("copy", path, e))?;
    if n > room {
        return Err(CopyError::TooLarge {
            copied: done.bytes.saturating_add(n),
            max,
        });
    }
    done.bytes += n;
    done.files += 1;
    // Tools compare modification times (Python's bytecode, make): keep them.
    let st = nix::sys::stat::fstat(&from).map_err(|e| io_err("inspect", path, e))?;
    let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    futimens(to.as_fd(), &TimeSpec::UTIME_OMIT, &mtime)
        .map_err(|e| io_err("set the time of", path, e))?;
    Ok(())
}

/// Removes `name` from `dir` whatever it is, without following links: a
/// directory is emptied through its own descriptor first. Nothing there is
/// no error.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<(), CopyError> {
    remove_at(dir, name, path, 0)
}

fn remove_at(dir: BorrowedFd<'_>, name: &CStr, path: &Path, depth: u32) -> Result<(), CopyError> {
    let st = match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(io_err("inspect", path, e)),
    };
    if kind(&st) != SFlag::S_IFDIR {
        return match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err("remove", path, e)),
        };
    }
    if depth >= MAX_DEPTH {
        return Err(CopyError::TooDeep {
            path: path.to_owned(),
        });
    }
    let sub = match openat(dir, name, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(io_err("open the directory", path, e)),
    };
    // A directory left without write permission could not be emptied.
    let _ = fchmod(sub.as_fd(), Mode::from_bits_truncate(0o700));
    for child in names(sub.as_fd(), path)? {
        let here = path.join(os(&child));
        remove_at(sub.as_fd(), &child, &here, depth + 1)?;
    }
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(io_err("remove", path, e)),
    }
}

/// A name as a path component (names are bytes on Linux).
fn os(name: &CStr) -> &std::ffi::OsStr {
    std::os::unix::ffi::OsStrExt::from_bytes(name.to_bytes())
}
