//! The typed client of the orchestrator's HTTP API: the one way the CLI, the
//! agent and the end-to-end tests speak to a daemon (and a running step to
//! its agent's local endpoint, `orch ask`).
//!
//! What it is: a [`Client`] built from a base URL and a bearer token (an
//! admin's, an agent's, a dashboard session's or a step's; the daemon reads
//! them all from `Authorization: Bearer`), over TCP or a Unix socket, with
//! one method per route, taking and returning the wire types of
//! [`orchestrator_core::api`]. The event stream (`GET /v1/events`, Server-Sent
//! Events) is an [`Events`] stream of [`orchestrator_core::Transition`]s.
//! Every failure is a [`ClientError`] that says what the answer meant (an
//! unknown agent, a lease no longer held, a refusal, a daemon failure, no
//! answer at all) and keeps the status, the daemon's error body
//! ([`Refusal`]) and the transport's own error.
//!
//! What it is not: it retries nothing and waits for nothing beyond the one
//! request (retry and backoff belong to the callers, who know what a
//! request is for), and it presents nothing: the CLI's messages and exit
//! codes, and the agent's reactions, are theirs. [`Client::send`] is the
//! exception that proves the rule: a request and its answer as they are, for
//! tests that check the API's own status codes and headers.
//!
//! Main types: [`Client`] and [`ClientBuilder`]; [`ClientError`] and
//! [`Refusal`]; [`Events`] and [`EventFilter`]; [`RawResponse`].

mod agent;
mod client;
mod error;
mod events;
mod routes;
mod step;

pub use client::{Client, ClientBuilder, RawResponse, REQUEST_TIMEOUT};
pub use error::{ClientError, Refusal};
pub use events::{EventFilter, Events};
pub use reqwest::{header, Method, StatusCode};
pub use routes::{Decision, RunVerb};
