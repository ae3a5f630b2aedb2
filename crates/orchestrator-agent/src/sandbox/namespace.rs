//! The namespace sandbox: each command runs in new user, mount, pid, ipc,
//! uts and (unless the network is allowed) net namespaces, set up between
//! `fork` and `exec` with raw system calls (no external program such as
//! `unshare(1)` or `bwrap`). It needs Linux 5.12 or later (`open_tree`,
//! `move_mount`, `mount_setattr`) and a kernel that lets unprivileged users
//! create user namespaces.
//!
//! The process the agent spawns (the *reaper*) leads the command's process
//! group. Between fork and exec it first joins the command's cgroup (when
//! there is one, see [`super::cgroup`]), unshares the namespaces, maps the
//! agent's uid and gid to root inside (with `setgroups` denied), forks again
//! and then only waits (see [`super::reaper`]). Its child is pid 1 of the
//! new pid namespace; it dies with a SIGKILL when the reaper dies
//! (`PR_SET_PDEATHSIG`), and when it dies the kernel kills everything else in
//! the namespace. So signalling the group (timeout, cancellation, the agent
//! dropping the command) takes the whole sandbox down.
//!
//! Pid 1 builds the command's view of the file system, then forks the
//! command (pid 2) and stays as the namespace's init. The view:
//! mount propagation made private; the writable directories cloned as
//! detached mounts (`open_tree`); the whole tree made read-only
//! (`mount_setattr`, recursive); the read-only directories cloned the same
//! way (read-only now); tmpfs mounted over the hidden directories;
//! the clones moved back at their own paths (`move_mount`); a fresh
//! `/proc`; loopback brought up when there is no network, with the model
//! gateway's port open there (see [`super::relay`]; init serves it). Last it
//! enters a
//! nested user and mount namespace, which locks every mount (see
//! [`lock_mounts`]), and enters the working directory again. The command,
//! last, restricts itself with Landlock where the kernel has it (see
//! [`super::landlock`]) and execs.
//!
//! Everything the children need (paths as C strings, the id maps) is
//! computed before forking: between fork and exec only async-signal-safe
//! system calls run, no allocation. A setup failure is reported on a pipe
//! as the failed step's index and its errno.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::libc::{self, c_int, c_long};
use tokio::process::Command;

use super::cgroup::{self, CommandCgroup};
use super::landlock::Rules;
use super::reaper::{init, reap};
use super::relay::{fork, loopback_up, write_file, Relay};
use super::{namespace_steps, to_hide, Limits, SandboxError};
use crate::exec::GroupChild;

/// Writable for Landlock besides the bound and hidden directories: devices
/// (`/dev/null`, a terminal) and the sandbox's own `/proc`.
const LANDLOCK_WRITABLE: &[&str] = &["/dev", "/proc"];

/// The most writable directories a sandbox binds (the worktree, the bundle).
const MAX_BINDS: usize = 16;

/// The setup steps, by the index the child reports.
const STEPS: &[&str] = &[
    namespace_steps::UNSHARE,
    "writing the uid and gid maps",
    "forking the namespace's first process",
    "making mount propagation private",
    "cloning a writable directory (open_tree)",
    "making the root file system read-only (mount_setattr)",
    "mounting tmpfs over a hidden directory",
    "binding a writable directory (move_mount)",
    "mounting /proc",
    "entering the working directory",
    "bringing up loopback",
    "locking the mounts (nested user namespace)",
    "joining the command's cgroup",
    "forking the command",
    "restricting writes with Landlock",
    "opening the model gateway's port",
];
const S_UNSHARE: u8 = 0;
const S_IDMAP: u8 = 1;
const S_FORK: u8 = 2;
const S_PRIVATE: u8 = 3;
const S_CLONE: u8 = 4;
const S_READONLY: u8 = 5;
const S_HIDE: u8 = 6;
const S_BIND: u8 = 7;
const S_PROC: u8 = 8;
const S_CHDIR: u8 = 9;
const S_LOOPBACK: u8 = 10;
const S_LOCK: u8 = 11;
const S_CGROUP: u8 = 12;
const S_COMMAND: u8 = 13;
const S_LANDLOCK: u8 = 14;
const S_RELAY: u8 = 15;

/// Kernel ABI values the libc crate may not carry.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Everything the forked children use, computed before forking.
struct Plan {
    flags: c_int,
    setgroups: CString,
    uid_map: CString,
    gid_map: CString,
    uid_line: Vec<u8>,
    gid_line: Vec<u8>,
    /// The nested user namespace's map: its root is the outer one's.
    inner_line: Vec<u8>,
    root: CString,
    proc: CString,
    proc_fs: CString,
    empty: CString,
    tmpfs: CString,
    tmpfs_opts: CString,
    hidden: Vec<CString>,
    /// Private files outside the hidden directories, covered by `/dev/null`.
    hidden_files: Vec<CString>,
    dev_null: CString,
    writable: Vec<CString>,
    /// Host directories bound read-only at their own paths.
    readable: Vec<CString>,
    /// Files bound read-only over others: what, and over what.
    cover_what: Vec<CString>,
    cover_over: Vec<CString>,
    /// Every ancestor of a bound directory, outermost first: the mount
    /// points to create inside the hiding tmpfs.
    mkdirs: Vec<CString>,
    cwd: Option<CString>,
    network: bool,
    report: RawFd,
    /// The agent's pid, which the reaper must not outlive.
    agent: libc::pid_t,
    /// The command cgroup's `cgroup.procs`, open for writing.
    cgroup: Vec<RawFd>,
    landlock: Option<Rules>,
    /// The model gateway's relay, for a sandbox without network.
    relay: Option<Relay>,
}

fn cstring(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SandboxError::Path(path.to_owned()))
}

fn literal(s: &str) -> CString {
    // The literals passed here hold no NUL byte.
    CString::new(s).unwrap_or_default()
}

impl Plan {
    fn new(
        cwd: Option<&Path>,
        writable: &[PathBuf],
        readable: &[PathBuf],
        hidden: &[PathBuf],
        covers: &[(PathBuf, PathBuf)],
        network: bool,
        report: RawFd,
    ) -> Result<Self, SandboxError> {
        let readable: Vec<PathBuf> = readable.iter().filter(|p| p.is_dir()).cloned().collect();
        let covers = super::covers_to_make(covers);
        if writable.len() > MAX_BINDS || readable.len() > MAX_BINDS || covers.len() > MAX_BINDS {
            return Err(SandboxError::Setup {
                step: "planning the mounts",
                source: io::Error::other(format!(
                    "more than {MAX_BINDS} writable or read-only directories or covered files"
                )),
            });
        }
        let mut flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS;
        if !network {
            flags |= libc::CLONE_NEWNET;
        }
        let hide = to_hide(hidden);
        let mut mkdirs: Vec<PathBuf> = Vec::new();
        for w in writable.iter().chain(&readable) {
            let ancestors: Vec<&Path> = w.ancestors().collect();
            for a in ancestors.into_iter().rev() {
                if a.parent().is_some() && !mkdirs.iter().any(|m| m == a) {
                    mkdirs.push(a.to_owned());
                }
            }
        }
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        Ok(Plan {
            flags,
            setgroups: literal("/proc/self/setgroups"),
            uid_map: literal("/proc/self/uid_map"),
            gid_map: literal("/proc/self/gid_map"),
            uid_line: format!("0 {uid} 1\n").into_bytes(),
            gid_line: format!("0 {gid} 1\n").into_bytes(),
            inner_line: b"0 0 1\n".to_vec(),
            root: literal("/"),
            proc: literal("/proc"),
            proc_fs: literal("proc"),
            empty: literal(""),
            tmpfs: literal("tmpfs"),
            tmpfs_opts: literal("mode=1777"),
            hidden: hide.iter().map(|p| cstring(p)).collect::<Result<_, _>>()?,
            hidden_files: super::files_to_hide(hidden)
                .iter()
                .map(|p| cstring(p))
                .collect::<Result<_, _>>()?,
            dev_null: literal("/dev/null"),
            writable: writable
                .iter()
                .map(|p| cstring(p))
                .collect::<Result<_, _>>()?,
            readable: readable
                .iter()
                .map(|p| cstring(p))
                .collect::<Result<_, _>>()?,
            cover_what: covers
                .iter()
                .map(|(what, _)| cstring(what))
                .collect::<Result<_, _>>()?,
            cover_over: covers
                .iter()
                .map(|(_, over)| cstring(over))
                .collect::<Result<_, _>>()?,
            mkdirs: mkdirs
                .iter()
                .map(|p| cstring(p))
                .collect::<Result<_, _>>()?,
            landlock: Rules::new(
                writable
                    .iter()
                    .chain(hide.iter())
                    .map(|p| cstring(p))
                    .chain(LANDLOCK_WRITABLE.iter().map(|p| Ok(literal(p))))
                    .collect::<Result<_, _>>()?,
            ),
            cwd: cwd.map(cstring).transpose()?,
            network,
            report,
            agent: crate::leftovers::agent_pid(),
            cgroup: Vec::new(),
            relay: None,
        })
    }
}

/// Spawns `cmd` in new namespaces; see the module documentation.
// The arguments are the fields of `Sandbox::Namespace`, passed as they are.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn(
    cmd: &mut Command,
    writable: &[PathBuf],
    readable: &[PathBuf],
    hidden: &[PathBuf],
    covers: &[(PathBuf, PathBuf)],
    network: bool,
    gateway: Option<&Path>,
    limits: Limits,
) -> Result<GroupChild, SandboxError> {
    let cgroup = command_cgroup(limits)?;
    let (mut reader, writer) = io::pipe().map_err(|source| SandboxError::Setup {
        step: "opening the report pipe",
        source,
    })?;
    let cwd = cmd.as_std().get_current_dir().map(Path::to_owned);
    let mut plan = Plan::new(
        cwd.as_deref(),
        writable,
        readable,
        hidden,
        covers,
        network,
        writer.as_raw_fd(),
    )?;
    if let Some(cg) = &cgroup {
        plan.cgroup = cg.join_fds();
    }
    if !network {
        plan.relay = gateway.map(Relay::new).transpose()?;
    }
    // SAFETY: the closure runs in the forked child before exec. It only
    // reads `plan` (built before forking) and makes async-signal-safe
    // system calls: no allocation, no lock, no panic.
    unsafe {
        cmd.pre_exec(move || enter(&plan));
    }
    let spawned = GroupChild::spawn(cmd);
    // Our copy of the write end must go before reading: the read ends when
    // the children have closed theirs (at exec, or the reaper at once).
    drop(writer);
    let mut report = Vec::new();
    // A read error leaves `report` empty: the spawn's own result then decides.
    let _ = reader.read_to_end(&mut report);
    if let [step, a, b, c, d, ..] = report[..] {
        let errno = i32::from_le_bytes([a, b, c, d]);
        // A setup failure makes the spawn fail; dropping a child that
        // nevertheless started kills its group.
        drop(spawned);
        return Err(SandboxError::Setup {
            step: STEPS.get(usize::from(step)).copied().unwrap_or("setup"),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    let spawned = spawned.map_err(SandboxError::Spawn)?;
    Ok(match cgroup {
        Some(cg) => spawned.with_cgroup(cg),
        None => spawned,
    })
}

/// A fresh cgroup for the command, when this agent can make them (why it
/// cannot was logged when the agent started).
fn command_cgroup(limits: Limits) -> Result<Option<CommandCgroup>, SandboxError> {
    let Ok(root) = cgroup::probe() else {
        return Ok(None);
    };
    root.create(limits)
        .map(Some)
        .map_err(|e| SandboxError::Setup {
            step: "creating the command's cgroup",
            source: e.into(),
        })
}

/// Reports that `step` failed with the current errno and returns the error
/// for std to report too. Async-signal-safe.
fn fail(plan: &Plan, step: u8) -> io::Error {
    report(plan, step, io::Error::last_os_error())
}

/// Reports that `step` failed with `err`. Async-signal-safe.
fn report(plan: &Plan, step: u8, err: io::Error) -> io::Error {
    let errno = err.raw_os_error().unwrap_or(libc::EINVAL);
    let e = errno.to_le_bytes();
    let msg = [step, e[0], e[1], e[2], e[3]];
    // SAFETY: writes a stack buffer to a descriptor the plan owns.
    unsafe {
        libc::write(plan.report, msg.as_ptr().cast(), msg.len());
    }
    err
}

fn check(plan: &Plan, step: u8, rc: c_long) -> io::Result<()> {
    if rc < 0 {
        Err(fail(plan, step))
    } else {
        Ok(())
    }
}

/// Runs in the child std forked, before exec: joins the cgroup, enters the
/// namespaces, forks the namespace's first process and turns itself into
/// the reaper (which never returns). That first process sets up the mounts,
/// forks the command (which returns to exec) and becomes its init.
fn enter(plan: &Plan) -> io::Result<()> {
    // SAFETY: raw system calls on data prepared before the fork.
    unsafe {
        // The reaper dies with the agent, and with it the namespace.
        crate::leftovers::die_with_agent(plan.agent)?;
        // First, so that every process of the command is inside.
        cgroup::join(&plan.cgroup).map_err(|e| report(plan, S_CGROUP, e))?;
        check(plan, S_UNSHARE, c_long::from(libc::unshare(plan.flags)))?;
        // `setgroups` must be denied before an unprivileged gid map.
        check(plan, S_IDMAP, write_file(&plan.setgroups, b"deny"))?;
        check(plan, S_IDMAP, write_file(&plan.uid_map, &plan.uid_line))?;
        check(plan, S_IDMAP, write_file(&plan.gid_map, &plan.gid_line))?;
        // How the command ended, from init to the reaper.
        let mut status: [c_int; 2] = [-1; 2];
        check(
            plan,
            S_FORK,
            c_long::from(libc::pipe2(status.as_mut_ptr(), libc::O_CLOEXEC)),
        )?;
        let pid = fork();
        check(plan, S_FORK, pid)?;
        if pid > 0 {
            libc::close(status[1]);
            // The pid fits: the kernel's pids are `pid_t`.
            reap(pid as libc::pid_t, status[0]);
        }
        libc::close(status[0]);
        // The namespace's pid 1: die when the reaper dies.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        setup_mounts(plan)?;
        // The gateway's port, open before the command starts (-1: none).
        let mut listener = -1;
        if !plan.network {
            listener = loopback_up_and_listen(plan)?;
        }
        lock_mounts(plan)?;
        if let Some(cwd) = &plan.cwd {
            check(plan, S_CHDIR, c_long::from(libc::chdir(cwd.as_ptr())))?;
        }
        let command = fork();
        check(plan, S_COMMAND, command)?;
        if command > 0 {
            let relay = plan.relay.as_ref().map(|r| (r, listener));
            init(command as libc::pid_t, status[1], relay);
        }
        libc::close(status[1]);
        if let Some(rules) = &plan.landlock {
            rules.apply().map_err(|e| report(plan, S_LANDLOCK, e))?;
        }
    }
    Ok(())
}

/// Moves into a nested user and mount namespace. The mounts copied into it
/// come from a namespace its user namespace does not own, so the kernel
/// locks them: the command, root with every capability inside, can neither
/// unmount the tmpfs that hide host directories nor remount the read-only
/// tree writable.
unsafe fn lock_mounts(plan: &Plan) -> io::Result<()> {
    unsafe {
        let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNS;
        check(plan, S_LOCK, c_long::from(libc::unshare(flags)))?;
        check(plan, S_LOCK, write_file(&plan.setgroups, b"deny"))?;
        check(plan, S_LOCK, write_file(&plan.uid_map, &plan.inner_line))?;
        check(plan, S_LOCK, write_file(&plan.gid_map, &plan.inner_line))
    }
}

/// The file system view; see the module documentation.
unsafe fn setup_mounts(plan: &Plan) -> io::Result<()> {
    unsafe {
        let null = std::ptr::null::<libc::c_char>();
        check(
            plan,
            S_PRIVATE,
            c_long::from(libc::mount(
                null,
                plan.root.as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )),
        )?;
        let mut clones: [c_int; MAX_BINDS] = [-1; MAX_BINDS];
        clone_trees(plan, &plan.writable, &mut clones)?;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        check(
            plan,
            S_READONLY,
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                plan.root.as_ptr(),
                AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ),
        )?;
        // Cloned after the tree went read-only, so read-only themselves.
        let mut read_only: [c_int; MAX_BINDS] = [-1; MAX_BINDS];
        clone_trees(plan, &plan.readable, &mut read_only)?;
        // Before the hiding: what covers may live in a hidden directory.
        let mut covers: [c_int; MAX_BINDS] = [-1; MAX_BINDS];
        clone_trees(plan, &plan.cover_what, &mut covers)?;
        for dir in &plan.hidden {
            check(
                plan,
                S_HIDE,
                c_long::from(libc::mount(
                    plan.tmpfs.as_ptr(),
                    dir.as_ptr(),
                    plan.tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    plan.tmpfs_opts.as_ptr().cast(),
                )),
            )?;
        }
        for file in &plan.hidden_files {
            check(
                plan,
                S_HIDE,
                c_long::from(libc::mount(
                    plan.dev_null.as_ptr(),
                    file.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )),
            )?;
        }
        for dir in &plan.mkdirs {
            // Existing directories answer EEXIST; a missing mount point makes
            // the move below fail, which is reported.
            libc::mkdir(dir.as_ptr(), 0o755);
        }
        // Covers last: what they cover is inside a bound directory.
        let moves = clones
            .iter()
            .zip(&plan.writable)
            .chain(read_only.iter().zip(&plan.readable))
            .chain(covers.iter().zip(&plan.cover_over));
        for (fd, dir) in moves {
            let rc = libc::syscall(
                libc::SYS_move_mount,
                *fd,
                plan.empty.as_ptr(),
                libc::AT_FDCWD,
                dir.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            );
            check(plan, S_BIND, rc)?;
            libc::close(*fd);
        }
        check(
            plan,
            S_PROC,
            c_long::from(libc::mount(
                plan.proc_fs.as_ptr(),
                plan.proc.as_ptr(),
                plan.proc_fs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )),
        )
    }
}

/// Clones the trees at `dirs` as detached mounts into `fds`.
unsafe fn clone_trees(plan: &Plan, dirs: &[CString], fds: &mut [c_int]) -> io::Result<()> {
    unsafe {
        for (slot, dir) in fds.iter_mut().zip(dirs) {
            let fd = libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                dir.as_ptr(),
                OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
            );
            check(plan, S_CLONE, fd)?;
            // Descriptors fit in c_int.
            *slot = fd as c_int;
        }
        Ok(())
    }
}

/// Brings up `lo` in the new network namespace, so local servers a step
/// starts itself can be reached, then opens the model gateway's port there
/// (see [`super::relay`]), which init serves; the port's descriptor, or -1.
unsafe fn loopback_up_and_listen(plan: &Plan) -> io::Result<c_int> {
    unsafe {
        check(plan, S_LOOPBACK, loopback_up())?;
        match &plan.relay {
            Some(_) => super::relay::listen().map_err(|e| report(plan, S_RELAY, e)),
            None => Ok(-1),
        }
    }
}
