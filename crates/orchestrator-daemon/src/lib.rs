//! The control plane: the daemon that owns the store and serves the API.
//!
//! What it is: an axum HTTP server under `/v1` (runs for users; register,
//! claim, heartbeat and complete for agents; `/v1/events` as Server-Sent
//! Events; the questions running steps wait for, see [`wait`]; `/healthz`;
//! `/readyz`; `/metrics`; the model gateway under
//! `/v1`; the web dashboard under `/ui/`, see [`dashboard`]), the lease
//! reaper, model residency ([`fabric::control`]: which model servers run
//! where), the flusher of the model gateway's usage ([`fabric::usage`]),
//! one delivery task per
//! webhook or OpenClaw target ([`hooks`]), and the workflow watcher
//! ([`watch`]) that keeps the [`catalog`] of watched projects' workflows
//! current. All run as named components
//! under one supervisor ([`Daemon`]) that cancels them together on shutdown
//! and then closes the store.
//!
//! Who owns what: the store's writer thread owns every state change (the
//! scheduler pass runs there, at the end of each batch that made stages
//! runnable). Handlers only send commands to the store or read from it;
//! claims long-poll on the store's "jobs queued" signal, never on a timer.
//! The reaper is the one timer: it sleeps until the next lease could expire.
//!
//! What it is not: it runs no user commands (agents do) and holds no state
//! the store does not: a restarted daemon resumes from the store.
//!
//! Main types: [`DaemonConfig`], [`Daemon`], [`auth::Tokens`].

mod act;
pub mod api;
mod app;
pub mod auth;
pub mod catalog;
mod config;
pub mod dashboard;
mod error;
mod events;
mod extract;
pub mod fabric;
pub mod health;
pub mod hooks;
mod human;
mod ident;
pub mod metrics;
mod preempt;
mod project;
mod reaper;
mod router;
pub mod state_export;
mod supervisor;
mod wait;
pub mod watch;

pub use app::App;
pub use auth::Tokens;
pub use config::DaemonConfig;
pub use error::ApiErr;
pub use supervisor::{Daemon, DaemonError};
