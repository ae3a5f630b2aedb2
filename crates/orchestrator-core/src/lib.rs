//! The pure domain of the orchestrator: no I/O, no async, no clock.
//!
//! What it is: the workflow spec and its validation ([`spec`], [`validate`]),
//! the DAG planner ([`plan`]: topological layers, their width, the critical
//! path), the scheduling policy ([`sched`]: placement, priority, fairness,
//! pre-emption), the state machines of run, stage and job ([`machine`]: functions
//! from (state, event) to (state, effects)), the rounds of a step ([`rounds`]), the classification of failures
//! ([`error`]), the expression language of conditions and substitutions
//! ([`expr`]), the model fabric's queueing, residency and accounting
//! ([`fabric`]), a step's outputs and their limits ([`outputs`]), the wire types of the HTTP API ([`api`]) shared by daemon,
//! agent and CLI, and the ids they name things by ([`ids`]).
//!
//! What it is not: it never touches a file, a socket, a database or the time
//! of day. The store applies the effects the machines return and writes the
//! transition rows; the daemon and the agent do the I/O. That keeps every rule
//! here testable exhaustively and deterministically.
//!
//! Main types: [`spec::Workflow`], [`plan::Plan`], [`machine::StageState`],
//! [`machine::Transition`], [`api::ClaimedJob`], [`api::Manifest`], and the
//! ids [`RunId`], [`AgentId`], [`JobId`], [`LeaseId`].

pub mod api;
pub mod cache;
pub mod error;
pub mod expr;
pub mod fabric;
pub mod feedback;
pub mod ids;
pub mod machine;
pub mod outputs;
pub mod plan;
pub mod quote;
pub mod rounds;
pub mod sched;
pub mod spec;
pub mod validate;

pub use ids::{AgentId, JobId, LeaseId, RunId};
pub use machine::{Actor, Entity, JobState, RunState, StageKey, StageState, State, Transition};
pub use plan::{plan, Plan};
pub use spec::Workflow;
pub use validate::{parse_workflow, SpecError, SpecErrors};
