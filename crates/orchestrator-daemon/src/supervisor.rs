//! The supervisor ([`Daemon`]): binds, resumes from the store, starts every
//! component as a named task, and on shutdown stops them all and closes the store.

use std::net::SocketAddr;
use std::sync::Arc;

use orchestrator_store::SqlStore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    catalog, dashboard, fabric, hooks, preempt, reaper, router::router, state_export, watch, App,
    DaemonConfig,
};

/// The daemon's components, each a task that ends with its name and how
/// it ended.
pub(crate) type Components = JoinSet<(&'static str, std::io::Result<()>)>;

/// Why the daemon stopped without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A component ended without an error while it should run on.
    #[error("component {0} stopped unexpectedly")]
    Stopped(&'static str),
    #[error("component {component} failed: {source}")]
    Failed {
        component: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("a component panicked: {0}")]
    Panicked(#[source] tokio::task::JoinError),
}

/// A started daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    sessions: Arc<dashboard::Sessions>,
    clock: Arc<dyn orchestrator_host::clock::Clock>,
    shutdown: CancellationToken,
    tasks: Components,
    catalog: Arc<std::sync::Mutex<catalog::Catalog>>,
    close: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl Daemon {
    /// Binds, resumes from the store and starts every component.
    pub async fn start(config: DaemonConfig, store: Arc<SqlStore>) -> std::io::Result<Daemon> {
        // Bad hook settings fail before anything listens or is resumed.
        let hooks = hooks::Hooks::new(&config.hooks, config.clock.clone())
            .map_err(std::io::Error::other)?;
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
        sessions.load(&revoked, config.clock.now_ms());
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
            daemon_hostname: orchestrator_host::local_hostname(),
            upstreams: fabric::Upstreams::new(fabric::control::Fabric::new(
                &config.models,
                &config.model_local,
                config.model_switch_ms,
                config.model_aging_ms,
                orchestrator_host::model_server::Launcher::new(config.llama_launcher.clone()),
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
            ("api", r)
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
            if let Err(e) = usage.flush(&store).await {
                tracing::error!(error = %e, "the last model usage could not be written");
            }
            store.close().await
        });
        Ok(Daemon {
            addr,
            sessions: app.sessions.clone(),
            clock: app.config.clock.clone(),
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
        dashboard::link(&self.sessions, &self.local_base(), self.clock.now_ms())
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
    pub async fn wait(mut self) -> Result<(), DaemonError> {
        let mut failure = None;
        // Biased: once shutdown is requested, components end because of it;
        // a random pick could blame the first one to finish.
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {}
            Some(done) = self.tasks.join_next() => {
                let e = match done {
                    Ok((name, Ok(()))) => DaemonError::Stopped(name),
                    Ok((component, Err(source))) => DaemonError::Failed { component, source },
                    Err(e) => DaemonError::Panicked(e),
                };
                tracing::error!("{e}");
                failure = Some(e);
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
