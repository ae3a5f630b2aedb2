//! No isolation: the command runs as the agent's child, leading its own
//! process group, and sees the machine as the agent does. Its group is
//! killed by the agent's watchdog when the agent dies, or when the agent
//! starts again (see [`crate::leftovers`]).

use tokio::process::Command;

use super::SandboxError;
use crate::exec::GroupChild;

/// Spawns `cmd` as the leader of a new process group.
pub(super) fn spawn(cmd: &mut Command) -> Result<GroupChild, SandboxError> {
    // No code between fork and exec (it would cost the `posix_spawn` path):
    // the agent's watchdog kills the group if the agent dies.
    GroupChild::spawn(cmd).map_err(SandboxError::Spawn)
}
