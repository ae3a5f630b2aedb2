//! The agent: the worker process that runs workflow steps on one machine.
//!
//! What it is: a client of the daemon's HTTP API that registers itself
//! (name, labels, slots, and the memory and GPUs it offers: declared, or
//! detected at start by `orchestrator_host::resources`), long-polls for jobs, runs
//! each job's step (its commands, each in its own process group, with
//! timeouts, told through `CUDA_VISIBLE_DEVICES`, `ORCH_GPUS` and
//! `ORCH_MEMORY_MB` what the daemon granted the step), writes the
//! step's bundle into the project (`manifest.json` plus one stdout and one
//! stderr log per command), keeps its leases alive with heartbeats and
//! reports each outcome. It checks every exec spec again before running it
//! (defense in depth), and no process it starts outlives the step or a
//! stopping agent. (An agent killed with SIGKILL cannot kill anything; its
//! leases expire and its stages restart elsewhere.)
//!
//! What it is not: it keeps no state of its own beyond the leases it holds
//! now, and decides nothing about scheduling, retries, priorities or which
//! model servers run where (the daemon does; this agent runs the servers it
//! is ordered to, module [`models`], through `orchestrator_host::model_server`,
//! which the daemon uses for its own machine too). Nor does it hold what is
//! about the machine rather than about running a step (its name, resources,
//! process groups, repositories, confined file access, clock): that is
//! `orchestrator-host`. Steps run in their sandbox (module [`sandbox`]) in
//! their run's git worktree (`orchestrator_host::git`), which the agent
//! makes on first use, and each successful step ends with a checkpoint
//! commit on the run's branch.
//!
//! How it runs ([`run_agent`]): after registering, `slots` independent slot
//! loops each claim a job (`POST /v1/agents/{id}/claim`, long-polling up to
//! 30 s, claiming again at once on 204), run it with [`run_step`] and complete
//! it (`POST /v1/jobs/{id}/complete` with `claim_next`, whose answer may
//! carry the slot's next job, saving a claim); one heartbeat loop reports all held
//! leases every `heartbeat_interval_ms` and kills the jobs whose leases come
//! back revoked (they are not completed). The loops share one HTTP client
//! ([`Client`], of crate `orchestrator-client`, keep-alive) and the table of
//! held leases. Network
//! errors and 5xx are retried with capped backoff, an unknown agent id (a
//! restarted daemon) leads to registering again, 401/403 end the agent. When
//! the shutdown token fires, running jobs are killed (SIGTERM to their
//! groups, SIGKILL 2 s later) and completed as infrastructure failures,
//! "agent shutting down", so the daemon requeues them at once.
//!
//! Main types: [`AgentConfig`] and [`run_agent`] for the CLI; [`run_step`]
//! (module [`step`]), the executor alone, usable without a daemon;
//! [`Client`] and [`ClientError`] (re-exported from `orchestrator-client`)
//! for the wire;
//! [`exec::GroupChild`] for a command's process group; [`bundle::Bundle`]
//! for the files; [`ask::AskBox`], the loopback endpoint a running step asks questions
//! through (`orch ask`) and whose socket relays the model gateway to
//! sandboxes without network (module `gateway`, and `sandbox::relay` inside
//! the sandbox).

pub mod agent;
pub mod ask;
pub mod bundle;
pub mod cache;
pub mod context;
pub mod exec;
mod gateway;
pub mod leftovers;
pub mod models;
pub mod sandbox;
pub mod step;

pub use agent::{run_agent, AgentConfig, AgentError};
pub use orchestrator_client::{Client, ClientError};
pub use sandbox::{Accel, SandboxConfig, VmConfig};
pub use step::{run_step, run_step_with, CancelReason, StepContext};
