//! The model gateway inside a sandbox without network.
//!
//! Such a sandbox has a network namespace of its own with loopback only, so
//! the daemon's gateway (`OPENAI_BASE_URL`) is out of reach. What is in reach
//! is the agent's step socket (its directory is bound into every sandbox),
//! which relays the gateway's paths to the daemon (see `crate::gateway`).
//! So the sandbox's network namespace gets a listener on
//! `127.0.0.1:`[`GATEWAY_PORT`], made before the command starts, and each
//! connection to it gets a process that copies its bytes to a new
//! connection to that socket and back. Ordinary OpenAI clients then work
//! with `OPENAI_BASE_URL=http://127.0.0.1:GATEWAY_PORT/v1`, and a streamed
//! answer streams: bytes go through as they arrive, nothing is parsed or
//! buffered. The relay reaches nothing but the socket, and the socket's
//! server relays nothing but the gateway to the daemon, under the step's
//! own key.
//!
//! Who accepts: in the namespace backend, the namespace's init, which waits
//! for the command anyway ([`Relay::serve_until`]), so a command that never
//! calls the gateway costs no process. Under bubblewrap and runc, whose
//! inits are theirs, a relay process forked before the wrapper runs, in a
//! network namespace made for the wrapper to share
//! ([`Relay::enter_own_network`]); it dies with the wrapper
//! (`PR_SET_PDEATHSIG`) and with the command's process group, which it
//! belongs to. It stays in the host's mount namespace, so it reaches the
//! socket even from a container whose root file system lacks it.
//!
//! Everything here is the agent's code running in forked children, never
//! executed: async-signal-safe system calls on data prepared before the
//! fork, no allocation. A connection's process ends with its connection, or
//! with the sandbox (the pid namespace's end, or its process group killed).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::libc::{self, c_int, c_long};

use super::reaper::{close_all_but, reset_signals, wait_for};
use super::SandboxError;

/// The loopback port a sandbox without network reaches the gateway at. The
/// namespace is the sandbox's own, so the port is free whatever the host
/// runs; it is fixed so that a step can count on it.
pub const GATEWAY_PORT: u16 = 11380;

/// The `OPENAI_BASE_URL` of a step whose sandbox relays the gateway.
pub fn gateway_url() -> String {
    format!("http://127.0.0.1:{GATEWAY_PORT}/v1")
}

/// Bytes copied at a time by a connection's relay.
const CHUNK: usize = 16 * 1024;

/// The relay of one sandbox, prepared before forking.
pub(super) struct Relay {
    socket: libc::sockaddr_un,
    /// For a sandbox whose network namespace the relay makes itself
    /// (bubblewrap): the id maps of its user namespace, which maps the
    /// agent's own ids to themselves.
    setgroups: CString,
    uid_map: CString,
    gid_map: CString,
    uid_line: Vec<u8>,
    gid_line: Vec<u8>,
}

impl Relay {
    /// The relay to the step socket at `socket`.
    pub(super) fn new(socket: &Path) -> Result<Relay, SandboxError> {
        // SAFETY: an all-zero sockaddr_un is a valid, empty address.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = socket.as_os_str().as_bytes();
        // One byte stays zero: the path's terminating NUL. A path too long
        // for an address could not have been bound by the agent either, so
        // in practice only a NUL byte gets here.
        if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
            return Err(SandboxError::Path(socket.to_owned()));
        }
        for (slot, b) in addr.sun_path.iter_mut().zip(bytes) {
            *slot = *b as libc::c_char;
        }
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        Ok(Relay {
            socket: addr,
            setgroups: literal("/proc/self/setgroups"),
            uid_map: literal("/proc/self/uid_map"),
            gid_map: literal("/proc/self/gid_map"),
            uid_line: format!("{uid} {uid} 1\n").into_bytes(),
            gid_line: format!("{gid} {gid} 1\n").into_bytes(),
        })
    }

    /// Opens the gateway's port in the current network namespace (whose
    /// loopback is up) and forks the relay process serving it. The listener
    /// is closed on exec, so the command never holds it. Async-signal-safe.
    pub(super) unsafe fn start(&self) -> io::Result<()> {
        unsafe {
            let listener = listen()?;
            let parent = libc::getpid();
            let pid = fork();
            if pid < 0 {
                let e = io::Error::last_os_error();
                libc::close(listener);
                return Err(e);
            }
            if pid == 0 {
                serve(self, listener, parent);
            }
            libc::close(listener);
            Ok(())
        }
    }

    /// The namespace backend's init: waits for `command` (its wait status),
    /// reaping every other child, and meanwhile hands each connection to
    /// `listener` to a process of its own. Only a connection costs a
    /// process; a command that never calls the gateway costs none. Without
    /// a signalfd the port is closed and init only waits. Async-signal-safe.
    pub(super) unsafe fn serve_until(&self, command: libc::pid_t, listener: c_int) -> c_int {
        unsafe {
            // SIGCHLD is read from a descriptor, so that one poll waits for both
            // a connection and a child's end. Blocked before the first reaping
            // below, so no end goes unnoticed.
            let mut chld: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut chld);
            libc::sigaddset(&mut chld, libc::SIGCHLD);
            libc::sigprocmask(libc::SIG_BLOCK, &chld, std::ptr::null_mut());
            let ended = libc::signalfd(-1, &chld, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if ended < 0 {
                libc::close(listener);
                libc::sigprocmask(libc::SIG_UNBLOCK, &chld, std::ptr::null_mut());
                return wait_for(command, true);
            }
            let mut fds = [
                libc::pollfd {
                    fd: ended,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: listener,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            loop {
                let mut status: c_int = 0;
                loop {
                    let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                    if pid == command {
                        return status;
                    }
                    if pid <= 0 {
                        break;
                    }
                }
                if libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {
                    continue;
                }
                if fds[0].revents != 0 {
                    while libc::read(ended, info.as_mut_ptr().cast(), info.len()) > 0 {}
                }
                if fds[1].revents != 0 && !self.hand_over(listener, &[listener, ended]) {
                    // A port that fails for good is given up, not spun on.
                    libc::close(listener);
                    fds[1].fd = -1;
                }
            }
        }
    }

    /// Accepts one connection on `listener` and forks its relay; the child
    /// closes `close` first. False when the listener fails for good.
    /// Async-signal-safe.
    unsafe fn hand_over(&self, listener: c_int, close: &[c_int]) -> bool {
        unsafe {
            let conn = libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            );
            if conn < 0 {
                return matches!(
                    *libc::__errno_location(),
                    libc::EINTR
                        | libc::EAGAIN
                        | libc::ECONNABORTED
                        | libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOBUFS
                        | libc::ENOMEM
                );
            }
            if fork() == 0 {
                for &fd in close {
                    libc::close(fd);
                }
                relay_one(&self.socket, conn);
            }
            libc::close(conn);
            true
        }
    }

    /// For a wrapper that makes no network namespace of its own (`bwrap
    /// --share-net`, runc given none): enters a new network namespace, with
    /// `user` in a new user namespace too (the ids mapped to themselves, so
    /// the wrapper runs as before; runc, which needs the host's root, gets
    /// none), brings up loopback and starts the relay there.
    /// Async-signal-safe.
    pub(super) unsafe fn enter_own_network(&self, user: bool) -> io::Result<()> {
        unsafe {
            let flags = if user {
                libc::CLONE_NEWUSER | libc::CLONE_NEWNET
            } else {
                libc::CLONE_NEWNET
            };
            if libc::unshare(flags) < 0 {
                return Err(io::Error::last_os_error());
            }
            let maps = [
                (&self.setgroups, &b"deny"[..]),
                (&self.uid_map, &self.uid_line),
                (&self.gid_map, &self.gid_line),
            ];
            for (file, data) in maps.into_iter().filter(|_| user) {
                if write_file(file, data) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if loopback_up() < 0 {
                return Err(io::Error::last_os_error());
            }
            self.start()
        }
    }
}

fn literal(s: &str) -> CString {
    // The literals passed here hold no NUL byte.
    CString::new(s).unwrap_or_default()
}

/// Writes `data` to the file at `path`. Async-signal-safe.
pub(super) unsafe fn write_file(path: &CString, data: &[u8]) -> c_long {
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return -1;
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        if n < 0 || n as usize != data.len() {
            -1
        } else {
            0
        }
    }
}

/// Brings up `lo` in the current network namespace. Async-signal-safe.
pub(super) unsafe fn loopback_up() -> c_long {
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return -1;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let rc = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req as *const libc::ifreq);
        let errno = *libc::__errno_location();
        libc::close(sock);
        *libc::__errno_location() = errno;
        c_long::from(rc)
    }
}

/// A raw clone, not libc's fork: fork's atfork handlers may take locks
/// another thread of the agent held when std forked.
pub(super) unsafe fn fork() -> c_long {
    unsafe { libc::syscall(libc::SYS_clone, c_long::from(libc::SIGCHLD), 0, 0, 0, 0) }
}

/// A listening TCP socket on `127.0.0.1:GATEWAY_PORT`, closed on exec.
pub(super) unsafe fn listen() -> io::Result<c_int> {
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = GATEWAY_PORT.to_be();
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let bound = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if bound < 0 || libc::listen(fd, 64) < 0 {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(fd)
    }
}

/// The relay process: accepts on `listener` and hands each connection to a
/// process of its own, which copies it to and from the step socket. Never
/// returns.
unsafe fn serve(relay: &Relay, listener: c_int, parent: libc::pid_t) -> ! {
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        // A parent gone before the line above sent no signal.
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        reset_signals();
        // Finished connections are reaped by the kernel; a peer gone mid-write
        // is an error to return, not a signal to die of.
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        // Nothing of the command's (its log files, the status pipes) may stay
        // open here: the agent reads the logs to their end.
        close_all_but(listener);
        while relay.hand_over(listener, &[listener]) {}
        libc::_exit(1)
    }
}

/// Copies one connection to a new connection to the step socket and back
/// until both sides are done. Never returns.
unsafe fn relay_one(socket: &libc::sockaddr_un, tcp: c_int) -> ! {
    unsafe {
        let unix = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let connected = unix >= 0
            && libc::connect(
                unix,
                (socket as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) == 0;
        if !connected {
            // The client sees its connection reset, as for a server that is down.
            libc::_exit(1);
        }
        let mut fds = [
            libc::pollfd {
                fd: tcp,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: unix,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let mut buf = [0u8; CHUNK];
        // Each direction ends on its reader's end of file, which is passed on as
        // a half close: a client may finish sending and still read the answer.
        while fds.iter().any(|p| p.fd >= 0) {
            if libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            for (i, side) in fds.iter_mut().enumerate() {
                if side.fd < 0 || side.revents == 0 {
                    continue;
                }
                let (from, to) = if i == 0 { (tcp, unix) } else { (unix, tcp) };
                let n = libc::read(from, buf.as_mut_ptr().cast(), buf.len());
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                if n <= 0 || !send_all(to, &buf[..n as usize]) {
                    libc::shutdown(to, libc::SHUT_WR);
                    side.fd = -1;
                }
            }
        }
        libc::_exit(0)
    }
}

/// Sends all of `data` on `fd`; false when the peer is gone.
unsafe fn send_all(fd: c_int, mut data: &[u8]) -> bool {
    unsafe {
        while !data.is_empty() {
            let n = libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL);
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                return false;
            }
            data = &data[n as usize..];
        }
        true
    }
}
