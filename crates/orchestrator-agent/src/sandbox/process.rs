//! No isolation: the command runs as the agent's child, leading its own
//! process group, and sees the machine as the agent does. It is killed when
//! the agent dies; what it left running is killed when the agent starts
//! again (see [`crate::leftovers`]).

use tokio::process::Command;

use super::SandboxError;
use crate::exec::GroupChild;

/// Spawns `cmd` as the leader of a new process group.
pub(super) fn spawn(cmd: &mut Command) -> Result<GroupChild, SandboxError> {
    let agent = crate::leftovers::agent_pid();
    // SAFETY: the closure runs in the forked child before exec and makes
    // async-signal-safe system calls only.
    unsafe {
        cmd.pre_exec(move || crate::leftovers::die_with_agent(agent));
    }
    GroupChild::spawn(cmd).map_err(SandboxError::Spawn)
}
