//! The agent's side of the model fabric: the memory it lends to model
//! servers, and the long-poll through which the daemon orders servers
//! started and stopped on it (`POST /v1/agents/{id}/models`).

use serde::{Deserialize, Serialize};

use crate::fabric::ModelSpec;

/// What an agent lends to model servers; none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMemory {
    /// RAM for `on: ram` models, in MiB.
    #[serde(default)]
    pub ram_mb: u64,
    /// Memory of each GPU for `on: gpu` models, in MiB, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus_mb: Vec<u64>,
}

impl ModelMemory {
    pub fn is_none(&self) -> bool {
        self.ram_mb == 0 && self.gpus_mb.iter().all(|g| *g == 0)
    }
}

/// One model server an agent runs, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerReport {
    /// The daemon's id for it, from the order.
    pub instance: u64,
    /// Its OpenAI base URL once ready; None while it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Why it could not start; the agent then forgets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/agents/{id}/models`: the agent's servers now. Answered at once
/// when the daemon wants something else, else after `wait_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelReport {
    /// The agent's name, labels and lent memory, as it registered them:
    /// the daemon places models by them.
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub memory: ModelMemory,
    #[serde(default)]
    pub servers: Vec<ServerReport>,
    #[serde(default)]
    pub wait_ms: u64,
}

/// One server the daemon wants running on the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerOrder {
    pub instance: u64,
    pub spec: ModelSpec,
    /// The GPU it runs on, for an `on: gpu` model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
}

/// The answer: every server the agent should run; it stops the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOrders {
    pub run: Vec<ServerOrder>,
}
