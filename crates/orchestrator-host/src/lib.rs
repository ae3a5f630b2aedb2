//! This machine: its name, its resources, its processes, its repositories
//! and its clock, as the daemon, the agent and the CLI each see them.
//!
//! What it is: the helpers every part of `orch` needs about the machine it
//! runs on, with no opinion about who asks. [`local_hostname`] names the
//! machine; [`resources`] finds out its memory and GPUs ([`Probe`],
//! [`Resources`]); [`process`] signals and drains process groups and stops a
//! child; [`model_server`] starts a llama.cpp server ([`model_server::Launcher`]),
//! the same way on the daemon's machine and on an agent's; [`git`] is how a
//! run's work lives in the project's repository (run worktrees, checkpoint
//! commits, a step's own git directory and taking in its commits, landing,
//! diffs and stats); [`confined`] reads and writes in directories a step
//! could have written without following links ([`confined::ConfinedDir`],
//! [`confined::read_definition`]); [`clock`] and [`ids`] give the time
//! ([`now_ms`], the [`Clock`] trait with [`SystemClock`] and the tests'
//! [`ManualClock`]) and random ids and secrets ([`new_id`], [`new_secret`]).
//!
//! What it is not: no sandboxes and no step execution (the agent's), no
//! HTTP (the daemon serves it, the agent and the CLI are its clients), no
//! store or SQL, and no scheduling decisions (the core's and the daemon's).
//! It depends on `orchestrator-core` for shared types only.

pub mod clock;
pub mod confined;
pub mod git;
mod hostname;
pub mod ids;
pub mod model_server;
pub mod process;
pub mod resources;

pub use clock::{now_ms, Clock, ManualClock, SystemClock};
pub use hostname::local_hostname;
pub use ids::{new_id, new_secret};
pub use resources::{Probe, Resources};
