//! Building a store: where it lives and how it batches (`StoreOptions`),
//! the connections each backend opens (the SQLite file's lock, the
//! PostgreSQL listener's), and the writer started with the hooks the
//! domain hands the transaction layer.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchestrator_core::sched::SystemRules;
use orchestrator_core::Transition;
use orchestrator_host::clock::{Clock, SystemClock};
use rusqlite::Connection;
use tokio::sync::{broadcast, mpsc, Notify};

use super::location::{self, Location};
use super::writer::{Hooks, PgNotify, Stats, Writer};
use super::{pg, schedule, schema, schema_pg, SqlStore};
use crate::db::Conn;
use crate::{Result, StoreError};

/// How the store batches and where it lives.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The database: a SQLite file (created with its directory when
    /// missing) or a PostgreSQL database.
    pub location: Location,
    /// Most commands committed in one transaction.
    pub max_items: usize,
    /// Longest time, in milliseconds, a batch keeps taking commands that are
    /// already waiting before it commits (the writer never waits for new ones).
    pub max_ms: u64,
    /// Capacity of the writer's command queue; senders wait when it is full.
    pub queue: usize,
    /// The daemon's system rules: priority caps, limits, reserved capacity.
    pub rules: SystemRules,
    /// What every row is stamped with and leases expire by.
    pub clock: Arc<dyn Clock>,
}

impl StoreOptions {
    /// A SQLite store in the file `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::at(Location::Sqlite(path.into()))
    }

    /// A store at `location`, with the default batching.
    pub fn at(location: Location) -> Self {
        StoreOptions {
            location,
            max_items: 256,
            max_ms: 5,
            queue: 4096,
            rules: SystemRules::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The same options on another clock (a test's `ManualClock`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// The connections a store opens, by backend.
struct Opened {
    write: Conn,
    read: Conn,
    lock: Option<std::fs::File>,
    /// PostgreSQL: the listener's connection and the writer's NOTIFY
    /// channel and payload prefix.
    pg: Option<(Conn, pg::Listener)>,
}

/// Takes `<db>.lock` exclusively, so a second daemon on the same store is
/// refused instead of racing the first one's writer and reaper.
pub(super) fn lock(db: &Path) -> Result<std::fs::File> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::open(format!("cannot open {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: db.to_owned(),
            lock: path,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::open(
            format!("cannot lock {}", path.display()),
            e,
        )),
    }
}

pub(super) fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::open(format!("cannot open the store at {}", path.display()), e))?;
    schema::configure(&conn)?;
    Ok(conn)
}

fn open_sqlite(path: &Path) -> Result<Opened> {
    location::ensure_parent(path)?;
    let lock = lock(path)?;
    let mut write = open_conn(path)?;
    schema::migrate(&mut write)?;
    let read = open_conn(path)?;
    Ok(Opened {
        write: Conn::Sqlite(write),
        read: Conn::Sqlite(read),
        lock: Some(lock),
        pg: None,
    })
}

fn open_postgres(
    url: &str,
    schema: Option<&str>,
    events: &broadcast::Sender<Arc<[Transition]>>,
    jobs_queued: &Arc<Notify>,
) -> Result<Opened> {
    let write = pg::connect_pg(url, schema, "writer")?;
    schema_pg::migrate(&write)?;
    let read = pg::connect_pg(url, schema, "reader")?;
    let listen = pg::connect_pg(url, schema, "listener")?;
    // Subscribers hear of what is committed from now on, as on SQLite.
    let last: i64 = read.query_row("SELECT COALESCE(MAX(seq), 0) FROM transitions", [], |r| {
        r.get(0)
    })?;
    let listener = pg::Listener {
        url: url.to_owned(),
        schema: schema.map(str::to_owned),
        instance: orchestrator_host::ids::new_id("d"),
        events: events.clone(),
        jobs_queued: jobs_queued.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        last,
    };
    Ok(Opened {
        write,
        read,
        lock: None,
        pg: Some((listen, listener)),
    })
}

impl SqlStore {
    /// Opens (creating and migrating when needed) the store and starts its
    /// writer, and on PostgreSQL the thread that follows other daemons' commits.
    pub fn open(opts: StoreOptions) -> Result<Self> {
        let rules = Arc::new(opts.rules.clone());
        let (events, _) = broadcast::channel(4096);
        let jobs_queued = Arc::new(Notify::new());
        let opened = match &opts.location {
            Location::Sqlite(path) => open_sqlite(path)?,
            // The driver runs a runtime of its own per connection, which
            // cannot start on a thread already inside one (a daemon opens
            // its store from async code).
            Location::Postgres { url, schema } => std::thread::scope(|s| {
                s.spawn(|| open_postgres(url, schema.as_deref(), &events, &jobs_queued))
                    .join()
                    .map_err(|_| StoreError::Internal("opening the store panicked".into()))?
            })?,
        };
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let stats = Arc::new(Stats::default());
        #[cfg(feature = "failpoints")]
        let faults = Arc::new(super::failpoints::Faults::default());
        let notify = opened.pg.as_ref().map(|(_, l)| {
            let instance = l.instance.clone();
            PgNotify {
                channel: pg::channel(l.schema.as_deref()),
                payload: Box::new(move |queued| pg::payload(&instance, queued)),
            }
        });
        let w = Writer {
            conn: opened.write,
            rx,
            max_items: opts.max_items.max(1),
            max_wait: Duration::from_millis(opts.max_ms),
            events: events.clone(),
            jobs_queued: jobs_queued.clone(),
            stats: stats.clone(),
            rules: rules.clone(),
            clock: opts.clock.clone(),
            hooks: Hooks {
                schedule: schedule::schedule,
                notify,
            },
            #[cfg(feature = "failpoints")]
            faults: faults.clone(),
        };
        let listener = match opened.pg {
            Some((conn, l)) => {
                let stop = l.stop.clone();
                let handle = std::thread::Builder::new()
                    .name("store-listener".into())
                    .spawn(move || l.run(conn))
                    .map_err(|e| StoreError::open("cannot start the store listener", e))?;
                Some((stop, handle))
            }
            None => None,
        };
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run())
            .map_err(|e| StoreError::open("cannot start the store writer", e))?;
        Ok(SqlStore {
            tx: Mutex::new(Some(tx)),
            read: Arc::new(Mutex::new(opened.read)),
            events,
            jobs_queued,
            stats,
            rules,
            clock: opts.clock,
            thread: Mutex::new(Some(thread)),
            listener: Mutex::new(listener),
            #[cfg(feature = "failpoints")]
            faults,
            _lock: opened.lock,
        })
    }
}
