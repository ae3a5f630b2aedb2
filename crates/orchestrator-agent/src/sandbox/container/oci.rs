//! The OCI runtime configuration (`config.json`, runtime-spec 1.0.2) of one
//! command's container.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::libc;
use serde_json::{json, Value};

use crate::sandbox::Limits;

/// runc's default capability set (`runc spec`): what a process needs to
/// signal its own children and bind low ports, nothing that reaches the host.
const CAPABILITIES: &[&str] = &["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

/// Paths of `/proc` and `/sys` hidden or made read-only, as in `runc spec`.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What goes into one command's `config.json`.
pub(super) struct Plan<'a> {
    pub rootfs: &'a Path,
    pub args: &'a [OsString],
    pub env: &'a [(OsString, OsString)],
    pub cwd: Option<&'a Path>,
    pub writable: &'a [PathBuf],
    pub readable: &'a [PathBuf],
    pub covers: &'a [(PathBuf, PathBuf)],
    pub network: bool,
    pub limits: Limits,
    /// The container's cgroup, relative to each hierarchy's root.
    pub cgroup: String,
}

/// `s` as JSON text; config.json holds UTF-8 only, and a lossy conversion
/// would bind or run something other than what was asked.
fn text(s: &std::ffi::OsStr) -> Result<String, NotUtf8> {
    s.to_str()
        .map(str::to_owned)
        .ok_or_else(|| NotUtf8(String::from_utf8_lossy(s.as_bytes()).into_owned()))
}

/// A path, argument or variable that is not UTF-8 (shown lossily).
#[derive(Debug)]
pub(super) struct NotUtf8(pub String);

/// A limit for the container: the agent's own soft limit, never above its
/// hard limit (which an unprivileged process cannot raise, and which the
/// container must not exceed).
fn rlimit(name: &str, resource: libc::__rlimit_resource_t) -> Value {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct passed.
    let rc = unsafe { libc::getrlimit(resource, &mut current) };
    let (soft, hard) = if rc == 0 {
        (current.rlim_cur.min(current.rlim_max), current.rlim_max)
    } else {
        // Without the agent's own limits, a conservative pair.
        (1024, 1024)
    };
    json!({"type": name, "soft": soft, "hard": hard})
}

impl Plan<'_> {
    /// The configuration as JSON.
    pub fn config(&self) -> Result<Value, NotUtf8> {
        let mut namespaces = vec![
            json!({"type": "pid"}),
            json!({"type": "mount"}),
            json!({"type": "ipc"}),
            json!({"type": "uts"}),
            json!({"type": "cgroup"}),
        ];
        if !self.network {
            // A new network namespace holds only loopback, which runc brings up.
            namespaces.push(json!({"type": "network"}));
        }
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                   "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
            json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                   "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                   "options": ["nosuid", "noexec", "nodev", "ro"]}),
            json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                   "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=1777"]}),
        ];
        // After /tmp's tmpfs, so a worktree under /tmp lands on top of it.
        for dir in self.writable {
            let d = text(dir.as_os_str())?;
            mounts.push(json!({"destination": d, "type": "bind", "source": d,
                               "options": ["rbind", "rw", "nosuid", "nodev"]}));
        }
        for dir in self.readable.iter().filter(|d| d.is_dir()) {
            let d = text(dir.as_os_str())?;
            mounts.push(json!({"destination": d, "type": "bind", "source": d,
                               "options": ["rbind", "ro", "nosuid", "nodev"]}));
        }
        for (what, over) in super::super::covers_to_make(self.covers) {
            mounts.push(
                json!({"destination": text(over.as_os_str())?, "type": "bind",
                               "source": text(what.as_os_str())?,
                               "options": ["bind", "ro", "nosuid", "nodev"]}),
            );
        }
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| Ok(format!("{}={}", text(k)?, text(v)?)))
            .collect::<Result<_, _>>()?;
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| text(a))
            .collect::<Result<_, _>>()?;
        let cwd = match self.cwd {
            Some(c) => text(c.as_os_str())?,
            None => "/".to_owned(),
        };
        let rootfs = text(self.rootfs.as_os_str())?;
        let mut resources = json!({
            "devices": [{"allow": false, "access": "rwm"}],
        });
        if let Some(mb) = self.limits.memory_mb {
            resources["memory"] = json!({"limit": mb.saturating_mul(1024 * 1024)});
        }
        if let Some(pids) = self.limits.pids {
            resources["pids"] = json!({"limit": pids});
        }
        Ok(json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": env,
                "cwd": cwd,
                "capabilities": {
                    "bounding": CAPABILITIES,
                    "effective": CAPABILITIES,
                    "permitted": CAPABILITIES,
                    "ambient": CAPABILITIES,
                },
                "rlimits": [
                    rlimit("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
                    rlimit("RLIMIT_NPROC", libc::RLIMIT_NPROC),
                ],
                "noNewPrivileges": true,
            },
            "root": {"path": rootfs, "readonly": true},
            "hostname": "orch",
            "mounts": mounts,
            "linux": {
                "cgroupsPath": self.cgroup,
                "resources": resources,
                "namespaces": namespaces,
                "maskedPaths": MASKED,
                "readonlyPaths": READONLY,
            },
        }))
    }
}
