//! Finding where this agent may make cgroups: its own cgroup in each
//! hierarchy, from `/proc/self/cgroup` and `/proc/self/mountinfo`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo` that mounts a cgroup file system.
pub(super) struct Mount {
    pub point: PathBuf,
    pub root: String,
    pub v2: bool,
    pub options: Vec<String>,
}

pub(super) fn cgroup_mounts() -> io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// The cgroup file systems `text` (in `/proc/self/mountinfo`'s format) mounts.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(point), Some(fstype), Some(opts)) =
            (left.get(3), left.get(4), right.first(), right.get(2))
        else {
            continue;
        };
        if *fstype != "cgroup" && *fstype != "cgroup2" {
            continue;
        }
        mounts.push(Mount {
            point: PathBuf::from(point.replace("\\040", " ")),
            root: (*root).to_owned(),
            v2: *fstype == "cgroup2",
            options: opts.split(',').map(str::to_owned).collect(),
        });
    }
    mounts
}

/// The path of this process's cgroup in the hierarchy of `controller` (""
/// for v2), from `own` in `/proc/self/cgroup`'s format:
/// `id:controllers:path`, v2 being the line with no controllers.
pub(super) fn cgroup_path(own: &str, controller: &str) -> Option<String> {
    own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_owned())
    })
}

/// The directory of cgroup `path` (as `/proc/self/cgroup` names it) under
/// `mount`, which may show only a subtree of its hierarchy.
pub(super) fn dir_of(mount: &Mount, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(mount.root.as_str())
        .filter(|_| mount.root != "/")
        .unwrap_or(path);
    mount.point.join(rel.trim_start_matches('/'))
}

/// Removes what agents that are gone left under `own` (`orch-<pid>` whose
/// pid is dead), so test runs and crashed agents do not pile up cgroups;
/// processes still in them (a killed agent's commands) are killed first.
pub(super) fn sweep_stale(own: &Path) {
    let Ok(entries) = fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("orch-")) else {
            continue;
        };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let dir = entry.path();
        if let Ok(children) = fs::read_dir(&dir) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                kill_members(&child.path());
                let _ = fs::remove_dir(child.path());
            }
        }
        let _ = fs::remove_dir(&dir);
    }
}

/// SIGKILLs every process in cgroup `dir` and waits (briefly) for it to
/// empty, so that it can be removed.
fn kill_members(dir: &Path) {
    let members = || -> Vec<i32> {
        ["cgroup.procs", "tasks"]
            .iter()
            .filter_map(|f| fs::read_to_string(dir.join(f)).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let pids = members();
        if pids.is_empty() || std::time::Instant::now() >= deadline {
            return;
        }
        tracing::warn!(cgroup = %dir.display(), processes = pids.len(), "killing what a dead agent's command left running");
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 1 0:23 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
32 25 0:28 /outer /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
";

    const OWN: &str = "\
8:pids:/outer/agent
4:memory:/process_api/abc
1:cpu,cpuacct:/
0::/
";

    #[test]
    fn the_agents_cgroup_is_found_in_each_hierarchy() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 3, "ext4 is no cgroup");
        assert!(mounts[0].v2);
        let memory = mounts
            .iter()
            .find(|m| m.options.iter().any(|o| o == "memory"))
            .unwrap();
        let path = cgroup_path(OWN, "memory").unwrap();
        assert_eq!(
            dir_of(memory, &path),
            Path::new("/sys/fs/cgroup/memory/process_api/abc")
        );
        // A mount that shows only a subtree of its hierarchy.
        let pids = &mounts[2];
        let path = cgroup_path(OWN, "pids").unwrap();
        assert_eq!(dir_of(pids, &path), Path::new("/sys/fs/cgroup/pids/agent"));
        assert_eq!(cgroup_path(OWN, "cpuacct").as_deref(), Some("/"));
        assert_eq!(cgroup_path(OWN, "").as_deref(), Some("/"));
        assert_eq!(cgroup_path(OWN, "freezer"), None);
    }
}
