//! No isolation: the command runs as the agent's child, leading its own
//! process group, and sees the machine as the agent does.

use tokio::process::Command;

use super::SandboxError;
use crate::exec::GroupChild;

/// Spawns `cmd` as the leader of a new process group.
pub(super) fn spawn(cmd: &mut Command) -> Result<GroupChild, SandboxError> {
    GroupChild::spawn(cmd).map_err(SandboxError::Spawn)
}
