//! Agent credentials: one token per agent name, issued by an admin.

use serde::{Deserialize, Serialize};

/// `POST /v1/agent-tokens`: a credential for the agent named `name`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgentToken {
    pub name: String,
}

/// The answer to [`NewAgentToken`]: the token, shown this once (the store
/// keeps only its hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentTokenCreated {
    pub name: String,
    pub token: String,
}

/// One agent name's credential, as `GET /v1/agent-tokens` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTokenView {
    pub name: String,
    pub created_at_ms: i64,
    /// When it was revoked; the name stays bound to it (no other token may
    /// register under it) until an admin creates a new one.
    pub revoked_at_ms: Option<i64>,
}

/// The longest agent name, in bytes.
pub const MAX_AGENT_NAME: usize = 128;

/// Checks an agent name: 1 to 128 characters, none of them a control
/// character or white space at either end.
pub fn check_agent_name(name: &str) -> Result<(), AgentNameError> {
    if name.is_empty() || name.len() > MAX_AGENT_NAME {
        return Err(AgentNameError::Length {
            name: name.to_owned(),
        });
    }
    if name.trim() != name || name.chars().any(char::is_control) {
        return Err(AgentNameError::Characters {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Why a name cannot be an agent's; each names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentNameError {
    #[error("agent name {name:?}: expected 1 to {MAX_AGENT_NAME} bytes")]
    Length { name: String },
    /// A control character, or white space at either end.
    #[error("agent name {name:?}: expected no control characters and no spaces at either end")]
    Characters { name: String },
}
