//! `orch agent`'s model flags: the memory it lends to model servers the
//! daemon orders it to run, and how it runs them.

use std::path::PathBuf;

use orchestrator_agent::models::ModelHosting;
use orchestrator_core::api::ModelMemory;
use orchestrator_core::spec::SizeSpec;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModelOpts {
    /// RAM lent to model servers (`8G`): the daemon may run here the models
    /// whose `placement.agents` names this agent or one of its labels.
    /// Default: none.
    #[arg(long, value_name = "SIZE", env = "ORCH_MODEL_RAM", value_parser = SizeSpec::parse)]
    pub model_ram: Option<SizeSpec>,
    /// GPU memory lent to model servers, per GPU in device order (`24G`);
    /// repeat or comma-separate.
    #[arg(
        long = "model-gpu",
        value_name = "SIZE",
        value_delimiter = ',',
        env = "ORCH_MODEL_GPUS",
        value_parser = SizeSpec::parse
    )]
    pub model_gpus: Vec<SizeSpec>,
    /// The address model servers listen on; the daemon must reach it.
    /// Default: 127.0.0.1 (a daemon on this machine).
    #[arg(long, value_name = "ADDR", env = "ORCH_MODEL_LISTEN")]
    pub model_listen: Option<String>,
    /// The script that starts a llama.cpp server. Default:
    /// `scripts/llama-server.py` of the checkout holding this binary.
    #[arg(long, value_name = "PATH", env = "ORCH_MODEL_LAUNCHER")]
    pub model_launcher: Option<PathBuf>,
}

impl ModelOpts {
    /// What the agent lends, or None when it lends nothing.
    pub fn hosting(&self) -> Option<ModelHosting> {
        let memory = ModelMemory {
            ram_mb: self.model_ram.map_or(0, SizeSpec::as_mib),
            gpus_mb: self.model_gpus.iter().map(|g| g.as_mib()).collect(),
        };
        if memory.is_none() {
            return None;
        }
        Some(ModelHosting {
            memory,
            launcher: self
                .model_launcher
                .clone()
                .unwrap_or_else(orchestrator_host::model_server::default_launcher),
            listen: self
                .model_listen
                .clone()
                .unwrap_or_else(|| "127.0.0.1".into()),
        })
    }
}
