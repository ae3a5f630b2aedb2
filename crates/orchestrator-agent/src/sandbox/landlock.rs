//! Landlock on top of the namespace sandbox's mounts: the command may write,
//! create and remove files only beneath the directories its sandbox makes
//! writable (the worktree, the bundle, the tmpfs over hidden directories,
//! `/dev`, its own `/proc`), whatever a mount would allow. Reading and
//! executing stay allowed everywhere: the mounts already decide what is
//! visible.
//!
//! The rules must name the directories as the command sees them (a rule on
//! the host's `/tmp` does not cover the tmpfs mounted over it), so they are
//! opened in the forked child after the mounts are made; everything else is
//! computed before forking and the child makes only system calls.

use std::ffi::CString;
use std::io;
use std::sync::OnceLock;

use nix::libc::{self, c_int, c_long};

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: c_int = 1;

const WRITE_FILE: u64 = 1 << 1;
const REMOVE_DIR: u64 = 1 << 4;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_CHAR: u64 = 1 << 6;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const MAKE_FIFO: u64 = 1 << 10;
const MAKE_BLOCK: u64 = 1 << 11;
const MAKE_SYM: u64 = 1 << 12;
/// ABI 2: linking or renaming a file into another directory.
const REFER: u64 = 1 << 13;
/// ABI 3: truncating a file.
const TRUNCATE: u64 = 1 << 14;

/// `struct landlock_ruleset_attr`, up to the field every ABI has.
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's headers).
#[repr(C, packed)]
struct PathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// The kernel's Landlock ABI version; None when it has no Landlock (or it
/// is disabled at boot). Asked once per process.
pub fn abi() -> Option<u32> {
    static ABI: OnceLock<Option<u32>> = OnceLock::new();
    *ABI.get_or_init(|| {
        // SAFETY: the version query takes no attribute and returns a number.
        let v = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        };
        u32::try_from(v).ok().filter(|&v| v >= 1)
    })
}

/// The write accesses ABI `abi` knows: all of them are handled, so none is
/// allowed outside the rules.
fn write_accesses(abi: u32) -> u64 {
    let mut access = WRITE_FILE
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM;
    if abi >= 2 {
        access |= REFER;
    }
    if abi >= 3 {
        access |= TRUNCATE;
    }
    access
}

/// A ruleset to apply in a forked child: writes allowed beneath `writable`
/// only.
#[derive(Debug)]
pub struct Rules {
    handled: u64,
    writable: Vec<CString>,
}

impl Rules {
    /// Rules for this kernel; None when it has no Landlock.
    pub fn new(writable: Vec<CString>) -> Option<Self> {
        Some(Rules {
            handled: write_accesses(abi()?),
            writable,
        })
    }

    /// Restricts the calling thread (and what it execs or starts) to the
    /// rules. Directories that do not exist are left out. Only system calls:
    /// safe between fork and exec.
    pub fn apply(&self) -> io::Result<()> {
        let attr = RulesetAttr {
            handled_access_fs: self.handled,
        };
        // SAFETY: system calls with pointers to live values of the kernel's
        // layouts; every descriptor opened here is closed here.
        unsafe {
            let ruleset = libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                std::mem::size_of::<RulesetAttr>(),
                0u32,
            );
            if ruleset < 0 {
                return Err(io::Error::last_os_error());
            }
            // Descriptors fit in c_int.
            let ruleset = ruleset as c_int;
            let result = self.add_rules(ruleset).and_then(|()| {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
            libc::close(ruleset);
            result
        }
    }

    unsafe fn add_rules(&self, ruleset: c_int) -> io::Result<()> {
        unsafe {
            for dir in &self.writable {
                let fd = libc::open(
                    dir.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                );
                if fd < 0 {
                    continue;
                }
                let rule = PathBeneath {
                    allowed_access: self.handled,
                    parent_fd: fd,
                };
                let rc: c_long = libc::syscall(
                    libc::SYS_landlock_add_rule,
                    ruleset,
                    RULE_PATH_BENEATH,
                    &rule as *const PathBeneath,
                    0u32,
                );
                let error = (rc < 0).then(io::Error::last_os_error);
                libc::close(fd);
                if let Some(e) = error {
                    return Err(e);
                }
            }
            Ok(())
        }
    }
}
