//! The model fabric's rules: every model call from a step goes through one
//! OpenAI-compatible gateway in the daemon, which queues it by priority and
//! keeps the models it needs resident within memory.
//!
//! What it is: the declaration of models and its checks ([`config`]), the
//! per-model request queue in effective-priority order with ageing, the same
//! policy as jobs ([`queue`]), the decision which instances to start, stop or
//! drain within each place's memory budget ([`residency`]), which places
//! (an agent's RAM or one of its GPUs) a model may occupy and so where a
//! stage with `model:` may run ([`hosts`]) and the
//! accounting of requests, tokens, queue wait and latency per run, stage and
//! model ([`usage`]).
//!
//! What it is not: it starts no process, opens no socket and reads no
//! clock; times are numbers of milliseconds the daemon passes in. The daemon
//! runs the gateway and the llama.cpp servers and applies the actions.
//!
//! Main types: [`ModelSpec`], [`RequestQueue`], [`residency::decide`] and
//! its [`Action`], [`UsageLedger`] and [`UsageSummary`].

pub mod config;
pub mod hosts;
pub mod queue;
pub mod residency;
pub mod usage;

pub use config::{
    parse_models, parse_models_file, FabricConfigError, LocalHost, MemoryKind, ModelSpec,
    ModelsFile, Placement, Runtime,
};
pub use hosts::{budgets, footprint, may_occupy, stage_agents, Host};
pub use queue::{request_key, Dispatch, QueueError, RequestId, RequestQueue};
pub use residency::{
    can_be_resident, decide, Action, Demand, Instance, InstanceState, ModelFootprint, PlaceBudget,
};
pub use usage::{RequestUsage, Usage, UsageKey, UsageLedger, UsageSummary};
