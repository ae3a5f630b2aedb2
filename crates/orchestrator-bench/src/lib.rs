//! orch's internal benchmarks: what one part of the orchestrator costs,
//! measured without the rest. Each is a `cargo bench` target of this crate
//! (`cargo bench -p orchestrator-bench --bench NAME -- --help`):
//!
//! - `sched` ([`sched`]): the store's dispatch path alone, in process:
//!   simulated agents claiming and completing queued one-step jobs.
//! - `sandbox` ([`sandbox`]): what each sandbox backend adds to a step.
//! - `gateway` ([`gateway`]): what the daemon's model gateway adds to a
//!   short completion against the same llama.cpp server called directly.
//!
//! What it is not: part of the shipped `orch` binary, whose `orch bench`
//! measures the whole path (daemon, agent, HTTP, store) against spawning the
//! same commands directly; nor a library for others. A benchmark either
//! prints its figures or ends with the first error, so errors are
//! [`anyhow::Error`]s carrying their context.
//!
//! Main types: each module's options (`SchedOpts`, `GatewayOpts`) and the
//! rows it reports (`SchedRow`, `SandboxRow`, `GatewayRow`), serialized as
//! they are for `-o json`; [`cli::Common`], the options every bench shares.

pub mod cli;
pub mod gateway;
pub mod sandbox;
pub mod sched;
mod stats;
