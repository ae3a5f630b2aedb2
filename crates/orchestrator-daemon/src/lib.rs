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
pub mod auth;
pub mod catalog;
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
pub mod state_export;
mod wait;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use orchestrator_store::Store;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use auth::Tokens;
pub use error::ApiErr;

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    pub tokens: Tokens,
    /// How long a lease lives without a heartbeat, in milliseconds.
    pub lease_ttl_ms: u64,
    /// How often agents are told to heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Longest a claim long-polls, in milliseconds.
    pub max_claim_wait_ms: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest the reaper sleeps between looks at the leases, in milliseconds.
    pub reaper_tick_ms: u64,
    /// Webhooks and the OpenClaw gateway that hear of human-facing events.
    pub hooks: hooks::HooksConfig,
    /// Longest time between two pre-emption passes while work waits; a
    /// pass also follows every commit that queued work, at most this often.
    pub preempt_tick_ms: u64,
    /// Secret values by name: a stage that names one gets it when its job is
    /// claimed. Kept in memory only, never in the store.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// The models the gateway under `/v1` serves (`orch daemon --models`).
    pub models: Vec<orchestrator_core::fabric::ModelSpec>,
    /// What the daemon's machine lends to the models (the models file's `local:`).
    pub model_local: orchestrator_core::fabric::LocalHost,
    /// The models file's `switch`, in milliseconds.
    pub model_switch_ms: u64,
    /// The models file's `aging`, in milliseconds.
    pub model_aging_ms: u64,
    /// The script that starts a llama.cpp server (`scripts/llama-server.py`).
    pub llama_launcher: std::path::PathBuf,
    /// Where the `.state/` export writes (`current.json`,
    /// `transitions.jsonl`, `metrics.json`); None: no export.
    pub state_dir: Option<std::path::PathBuf>,
    /// The secret that signs job keys for the gateway; None makes one for
    /// this process alone (keys then die with the daemon).
    pub job_key_secret: Option<Vec<u8>>,
    /// The key of the dashboard's links and sessions; None makes one for
    /// this process alone (browsers then log in again after a restart).
    pub dashboard_secret: Option<Vec<u8>>,
    /// The longest a dashboard session lives, in milliseconds, from the
    /// login that made it; nothing extends it.
    pub dashboard_session_max_ms: u64,
    /// Project directories whose `.orchestrator/workflows/` the daemon
    /// watches: their definitions form the catalog runs can name.
    pub watch: Vec<std::path::PathBuf>,
}

impl DaemonConfig {
    pub fn new(listen: SocketAddr, tokens: Tokens) -> Self {
        DaemonConfig {
            listen,
            tokens,
            lease_ttl_ms: 30_000,
            heartbeat_interval_ms: 10_000,
            max_claim_wait_ms: 30_000,
            max_body_bytes: 8 * 1024 * 1024,
            reaper_tick_ms: 1_000,
            hooks: hooks::HooksConfig::default(),
            preempt_tick_ms: 1_000,
            secrets: Default::default(),
            models: Vec::new(),
            model_local: Default::default(),
            model_switch_ms: 10_000,
            model_aging_ms: 1_000,
            job_key_secret: None,
            dashboard_secret: None,
            dashboard_session_max_ms: dashboard::session::SESSION_MAX_MS,
            state_dir: None,
            watch: Vec::new(),
            llama_launcher: orchestrator_agent::model_server::default_launcher(),
        }
    }

    /// An agent heard from within this long is online: one lease's time.
    pub fn online_ms(&self) -> u64 {
        self.lease_ttl_ms
    }
}

/// What every handler shares.
pub struct App<S> {
    pub store: Arc<S>,
    pub config: DaemonConfig,
    pub metrics: metrics::Metrics,
    /// The looping components' last ticks, for `/readyz`.
    pub health: health::Health,
    /// Cancelled on shutdown: long-polls and event streams end.
    pub shutdown: CancellationToken,
    /// The outbound targets, for their status.
    pub hooks: hooks::Hooks,
    /// Mints and checks the jobs' keys to the model gateway.
    pub job_keys: fabric::JobKeys,
    /// The models' servers; llama.cpp ones are killed when this is dropped.
    pub upstreams: fabric::Upstreams,
    /// The gateway's requests counted, until flushed to the store.
    pub usage: Arc<fabric::usage::Accounting>,
    /// This machine's name: agents reporting it share the daemon's machine.
    pub daemon_hostname: Option<String>,
    /// The dashboard's links and sessions.
    pub sessions: Arc<dashboard::Sessions>,
    /// The watched projects' workflows, by name.
    pub catalog: Arc<std::sync::Mutex<catalog::Catalog>>,
    /// Agent identities read from the store, kept briefly.
    pub identities: ident::Identities,
}

/// A started daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    sessions: Arc<dashboard::Sessions>,
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, Result<(), String>)>,
    catalog: Arc<std::sync::Mutex<catalog::Catalog>>,
    close: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

fn router<S: Store>(app: Arc<App<S>>) -> Router {
    let admin = Router::new()
        .route(
            "/v1/runs",
            post(api::submit_run::<S>).get(api::list_runs::<S>),
        )
        .route("/v1/runs/{id}", get(api::get_run::<S>))
        .route("/v1/runs/{id}/cancel", post(api::cancel_run::<S>))
        .route("/v1/runs/{id}/pause", post(api::pause_run::<S>))
        .route("/v1/runs/{id}/resume", post(api::resume_run::<S>))
        .route("/v1/runs/{id}/stages", get(api::get_stages::<S>))
        .route("/v1/runs/{id}/stages/{stage}", get(api::get_stage::<S>))
        .route("/v1/runs/{id}/jobs", get(api::get_jobs::<S>))
        .route("/v1/runs/{id}/explain", get(api::explain::<S>))
        .route(
            "/v1/runs/{id}/stages/{stage}/approve",
            post(human::approve::<S>),
        )
        .route(
            "/v1/runs/{id}/stages/{stage}/reject",
            post(human::reject::<S>),
        )
        .route(
            "/v1/runs/{id}/questions/{qid}/answer",
            post(human::answer::<S>),
        )
        .route(
            "/v1/runs/{id}/stages/{stage}/retry",
            post(human::retry::<S>),
        )
        .route("/v1/runs/{id}/stages/{stage}/skip", post(human::skip::<S>))
        .route(
            "/v1/runs/{id}/stages/{stage}/abort",
            post(human::abort_stage::<S>),
        )
        .route("/v1/runs/{id}/abort", post(human::abort_run::<S>))
        .route("/v1/inbox", get(human::inbox::<S>))
        .route("/v1/runs/{id}/transitions", get(human::transitions::<S>))
        .route("/v1/agents", get(api::list_agents::<S>))
        .route("/v1/workflows", get(api::list_workflows::<S>))
        .route("/v1/events", get(events::events::<S>))
        .route("/v1/webhooks", get(webhooks_handler::<S>))
        .route("/metrics", get(metrics_handler::<S>))
        .route(
            "/v1/runs/{id}/jobs/{job}/logs",
            get(dashboard::logs::read::<S>),
        )
        .route("/v1/runs/{id}/diff", get(dashboard::diff::read::<S>))
        .route("/v1/dashboard/links", post(dashboard::new_link::<S>))
        .route("/v1/dashboard/logout", post(dashboard::logout::<S>))
        .route("/v1/dashboard/revoke", post(dashboard::revoke::<S>))
        .route(
            "/v1/agent-tokens",
            post(ident::create::<S>).get(ident::list::<S>),
        )
        .route("/v1/agent-tokens/{name}/revoke", post(ident::revoke::<S>))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::admin_only::<S>,
        ));
    let agent = Router::new()
        .route("/v1/agents", post(api::register_agent::<S>))
        .route("/v1/agents/{id}/claim", post(api::claim::<S>))
        .route("/v1/agents/{id}/heartbeat", post(api::heartbeat::<S>))
        .route(
            "/v1/agents/{id}/models",
            post(fabric::remote::agent_models::<S>),
        )
        .route("/v1/jobs/{id}/complete", post(api::complete::<S>))
        .route("/v1/jobs/{id}/questions", post(wait::ask::<S>))
        .route("/v1/jobs/{id}/questions/{qid}/wait", post(wait::wait::<S>))
        .route(
            "/v1/jobs/{id}/questions/{qid}/withdraw",
            post(wait::withdraw::<S>),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::agent_or_admin::<S>,
        ));
    let limit = app.config.max_body_bytes;
    Router::new()
        .merge(admin)
        .merge(agent)
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(health::readyz::<S>))
        // The page holds no data: it asks for a token, then uses the API.
        .route("/ui", get(dashboard::root))
        .route("/ui/", get(dashboard::index))
        .route("/ui/app.js", get(dashboard::script))
        .route("/ui/style.css", get(dashboard::style))
        // The ticket is its own credential, good once.
        .route("/v1/dashboard/session", post(dashboard::redeem::<S>))
        // The model gateway: a job's own key is its credential. The agent
        // relays exactly these paths to sandboxes without network (its
        // `gateway::GATEWAY_PATHS`): a new gateway path belongs there too.
        .route("/v1/models", get(fabric::list_models::<S>))
        .route("/v1/usage", get(fabric::job_usage::<S>))
        .route("/v1/chat/completions", post(fabric::proxy::forward::<S>))
        .route("/v1/completions", post(fabric::proxy::forward::<S>))
        .route("/v1/embeddings", post(fabric::proxy::forward::<S>))
        // The signed link is its own credential: no bearer token.
        .route("/v1/act/{token}", get(act::show::<S>).post(act::act::<S>))
        // Under /v1, whatever is not one of the daemon's own resources is
        // OpenAI's namespace: an OpenAI client there reads OpenAI's shape.
        .fallback(|uri: axum::http::Uri| async move {
            let status = axum::http::StatusCode::NOT_FOUND;
            if fabric::is_gateway_path(uri.path()) {
                fabric::OpenAiErr::new(
                    status,
                    "unknown_url",
                    format!("no such endpoint: {}; the gateway serves GET /v1/models and POST /v1/chat/completions, /v1/completions and /v1/embeddings", uri.path()),
                )
                .into_response()
            } else {
                error::ApiErr::new(status, "no such endpoint; the API lives under /v1").into_response()
            }
        })
        // axum's own 405 has no body; a client should hear why.
        .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            let status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
            if fabric::is_gateway_path(uri.path()) {
                fabric::OpenAiErr::new(
                    status,
                    "method_not_allowed",
                    format!("{method} {} is not served: GET /v1/models lists, the others take POST", uri.path()),
                )
                .into_response()
            } else {
                error::ApiErr::new(
                    status,
                    "this endpoint does not take that method (GET reads, POST acts)",
                )
                .into_response()
            }
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

async fn metrics_handler<S: Store>(
    axum::extract::State(app): axum::extract::State<Arc<App<S>>>,
) -> Result<String, ApiErr> {
    let counts = app.store.counts().await?;
    let mut text = app.metrics.render(&counts, &app.store.writer_stats());
    metrics::render_fabric(&app.upstreams.fabric, &mut text);
    metrics::render_models(&mut text, &app.usage.by_model());
    let agents = app.store.list_agents(app.config.online_ms()).await?;
    let inbox = app.store.inbox().await?;
    metrics::render_agents_and_inbox(&mut text, &agents, &inbox);
    Ok(text)
}

/// `GET /v1/webhooks`: every hook target's delivery status.
async fn webhooks_handler<S: Store>(
    axum::extract::State(app): axum::extract::State<Arc<App<S>>>,
) -> axum::Json<Vec<hooks::HookStatus>> {
    axum::Json(app.hooks.status())
}

impl Daemon {
    /// Binds, resumes from the store and starts every component.
    pub async fn start<S: Store>(config: DaemonConfig, store: Arc<S>) -> std::io::Result<Daemon> {
        // Bad hook settings fail before anything listens or is resumed.
        let hooks = hooks::Hooks::new(&config.hooks).map_err(std::io::Error::other)?;
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        // Leases from before a restart get one more lease time, so their
        // agents can reach this daemon before they are judged.
        match store.resume(config.lease_ttl_ms).await {
            Ok(n) if n > 0 => tracing::info!(leases = n, "resumed with active leases"),
            Ok(_) => {}
            Err(e) => {
                return Err(std::io::Error::other(format!(
                    "cannot resume from the store: {e}"
                )))
            }
        }
        let sessions = Arc::new(dashboard::Sessions::new(
            config.dashboard_secret.clone(),
            config.dashboard_session_max_ms,
        ));
        // Logged-out and revoked sessions stay dead across a restart: none
        // is honoured before the store's revocations are known.
        let revoked = store.revocations().await.map_err(|e| {
            std::io::Error::other(format!("cannot read the dashboard's revocations: {e}"))
        })?;
        sessions.load(&revoked, orchestrator_store::now_ms());
        let catalog = Arc::new(std::sync::Mutex::new(catalog::Catalog::default()));
        // A project that cannot be watched fails the start, before anything
        // runs: `orch up --project` should not look fine and ignore edits.
        let watch = if config.watch.is_empty() {
            None
        } else {
            let projects = watch::projects(&config.watch).map_err(std::io::Error::other)?;
            Some(watch::start(catalog.clone(), &projects).map_err(std::io::Error::other)?)
        };
        let shutdown = CancellationToken::new();
        let app = Arc::new(App {
            store: store.clone(),
            metrics: Default::default(),
            health: Default::default(),
            shutdown: shutdown.clone(),
            hooks,
            job_keys: config
                .job_key_secret
                .clone()
                .map(fabric::JobKeys::with_secret)
                .unwrap_or_default(),
            daemon_hostname: orchestrator_agent::step::local_hostname(),
            upstreams: fabric::Upstreams::new(fabric::control::Fabric::new(
                &config.models,
                &config.model_local,
                config.model_switch_ms,
                config.model_aging_ms,
                orchestrator_agent::model_server::Launcher::new(config.llama_launcher.clone()),
            )),
            usage: Arc::default(),
            sessions,
            catalog: catalog.clone(),
            identities: Default::default(),
            config,
        });
        let mut tasks = JoinSet::new();
        if let Err(e) = app.hooks.start(&store, &mut tasks, &shutdown).await {
            shutdown.cancel();
            return Err(std::io::Error::other(e));
        }
        let (a, stop) = (app.clone(), shutdown.clone());
        tasks.spawn(async move {
            use axum::serve::ListenerExt;
            // Without it a streamed answer's small writes wait for the
            // client's delayed ACK (Nagle): tens of milliseconds a request,
            // measured in docs/benchmarks.md.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            let r = axum::serve(listener, router(a))
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            ("api", r.map_err(|e| e.to_string()))
        });
        let (a, stop) = (app.clone(), shutdown.clone());
        tasks.spawn(async move {
            reaper::run(a, stop).await;
            ("reaper", Ok(()))
        });
        let (a, stop) = (app.clone(), shutdown.clone());
        tasks.spawn(async move {
            preempt::run(a, stop).await;
            ("preempt", Ok(()))
        });
        if let Some(dir) = app.config.state_dir.clone() {
            let (a, stop) = (app.clone(), shutdown.clone());
            tasks.spawn(async move {
                state_export::run(a, dir, stop).await;
                ("state export", Ok(()))
            });
        }
        if let Some(w) = watch {
            let stop = shutdown.clone();
            tasks.spawn(async move {
                w.run(stop).await;
                ("workflow watcher", Ok(()))
            });
        }
        let (a, stop) = (app.clone(), shutdown.clone());
        tasks.spawn(async move {
            dashboard::refresh_revocations(a, stop).await;
            ("dashboard revocations", Ok(()))
        });
        let (f, stop) = (app.upstreams.fabric.clone(), shutdown.clone());
        tasks.spawn(async move {
            f.run(stop).await;
            ("fabric", Ok(()))
        });
        let (usage, st, stop) = (app.usage.clone(), store.clone(), shutdown.clone());
        tasks.spawn(async move {
            fabric::usage::run(usage, st, stop).await;
            ("usage", Ok(()))
        });
        tracing::info!(%addr, "daemon listening");
        // After every component stopped (the API too, so no request is still
        // being counted), the last usage reaches the store before it closes.
        let usage = app.usage.clone();
        let close = Box::pin(async move {
            if let Err(e) = usage.flush(&*store).await {
                tracing::error!(error = %e, "the last model usage could not be written");
            }
            store.close().await
        });
        Ok(Daemon {
            addr,
            sessions: app.sessions.clone(),
            shutdown,
            tasks,
            catalog,
            close,
        })
    }

    /// The daemon's address as a local browser reaches it.
    fn local_base(&self) -> String {
        let host = match self.addr.ip() {
            ip if ip.is_unspecified() => {
                std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), self.addr.port())
            }
            _ => self.addr,
        };
        format!("http://{host}")
    }

    /// The dashboard's page, without a login.
    pub fn dashboard_url(&self) -> String {
        format!("{}/ui/", self.local_base())
    }

    /// A link to the dashboard that logs a browser in, good once for
    /// [`dashboard::session::TICKET_TTL_MS`]. A credential: for a person
    /// at a terminal only, never for a log.
    pub fn dashboard_link(&self) -> dashboard::Link {
        dashboard::link(&self.sessions, &self.local_base())
    }

    /// The watched projects' workflows now, as `GET /v1/workflows` lists them.
    pub fn workflows(&self) -> Vec<orchestrator_core::api::WorkflowView> {
        watch::lock(&self.catalog).list()
    }

    /// A token that stops the daemon when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until shutdown is requested or a component fails; then stops every
    /// component and closes the store.
    pub async fn wait(mut self) -> Result<(), String> {
        let mut failure = None;
        // Biased: once shutdown is requested, components end because of it;
        // a random pick could blame the first one to finish.
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {}
            Some(done) = self.tasks.join_next() => {
                let msg = match done {
                    Ok((name, Ok(()))) => format!("component {name} stopped unexpectedly"),
                    Ok((name, Err(e))) => format!("component {name} failed: {e}"),
                    Err(e) => format!("a component panicked: {e}"),
                };
                tracing::error!("{msg}");
                failure = Some(msg);
            }
        }
        self.shutdown.cancel();
        while let Some(done) = self.tasks.join_next().await {
            if let Ok((name, Err(e))) = done {
                tracing::error!(component = name, error = %e, "component failed while stopping");
            }
        }
        self.close.await;
        tracing::info!("daemon stopped; store closed");
        failure.map_or(Ok(()), Err)
    }
}
