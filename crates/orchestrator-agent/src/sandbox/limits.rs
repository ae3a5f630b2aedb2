//! What a step's sandbox enforces beyond isolation, for the agent's start
//! (a warning naming what is missing) and the manifest (what applied).

use orchestrator_core::api::AppliedLimits;

use super::{cgroup, landlock, Sandbox};

/// Logs, once, what the namespace sandbox cannot enforce on this machine
/// and why; called when the agent starts.
pub fn report_at_start() {
    match cgroup::probe() {
        Ok(root) => tracing::info!(
            cgroup = root.version().name(),
            "namespace steps get a cgroup of their own with memory and pids limits"
        ),
        Err(why) => tracing::warn!("namespace steps run without memory and pids limits: {why}"),
    }
    match landlock::abi() {
        Some(abi) => tracing::info!(abi, "namespace steps' writes are also restricted with Landlock"),
        None => tracing::warn!(
            "this kernel has no Landlock (or it is disabled): namespace steps' writes are restricted by their mounts only"
        ),
    }
}

/// What `sandbox` applies to each command, for the manifest; None for a
/// sandbox that applies nothing of the kind.
pub fn applied(sandbox: &Sandbox) -> Option<AppliedLimits> {
    let (limits, landlock) = match sandbox {
        Sandbox::Namespace { limits, .. } => (limits, landlock::abi().is_some()),
        Sandbox::Bubblewrap { limits, .. } => (limits, false),
        Sandbox::Vm(vm) => return Some(vm.applied()),
        Sandbox::Container(c) => return Some(c.applied()),
        _ => return None,
    };
    Some(match cgroup::probe() {
        Ok(root) => {
            let (applied, note) = root.applies(*limits);
            AppliedLimits {
                memory_mb: applied.memory_mb,
                pids: applied.pids,
                cgroup: Some(root.version().name().to_owned()),
                landlock,
                note,
            }
        }
        Err(why) => AppliedLimits {
            memory_mb: None,
            pids: None,
            cgroup: None,
            landlock,
            note: Some(why.to_string()),
        },
    })
}
