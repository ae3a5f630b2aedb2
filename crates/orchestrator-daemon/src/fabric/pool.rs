//! Who gets a model's next slot, and on which instance: per model a
//! [`RequestQueue`] in its runs' priority order (with ageing), and the
//! model's instances with their free slots. A request waits until an
//! instance that is running and not draining has a free slot; it holds that
//! slot until its answer has been sent or its client went away.
//!
//! What it is not: it starts and stops nothing. Residency
//! ([`super::control`]) adds and removes instances; every change here wakes
//! it through [`Pool::changed`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use orchestrator_core::fabric::{RequestId, RequestQueue};
use tokio::sync::{oneshot, Notify};

/// Where a request was sent: its instance's OpenAI base URL.
#[derive(Debug, Clone)]
pub struct Grant {
    pub url: String,
    pub instance: u64,
    /// From arrival to the slot.
    pub queue_wait_ms: u64,
}

type Waiter = oneshot::Sender<Result<Grant, Unavailable>>;

/// Why a model cannot serve a request now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("model {0:?} is not declared")]
    Undeclared(String),
    /// Its server stopped while the request waited.
    #[error("model {0:?} stopped serving")]
    Stopped(String),
    /// Its server would not start (or its agent said why it cannot serve).
    #[error("{0}")]
    Failed(String),
}

pub(crate) struct ModelQueue {
    pub queue: RequestQueue,
    /// Slots one instance has.
    pub concurrency: u32,
    waiters: HashMap<RequestId, Waiter>,
    /// The instance of each request in flight.
    granted: HashMap<RequestId, u64>,
}

/// A model's server as the pool sees it.
pub(crate) struct Instance {
    pub id: u64,
    pub model: String,
    pub place: String,
    /// Its OpenAI base URL; None while it starts.
    pub url: Option<String>,
    pub in_flight: u32,
    pub idle_since_ms: i64,
    /// Takes no new request (residency wants its memory).
    pub draining: bool,
    /// Asked to stop: takes no request and still holds its memory until its
    /// process is gone.
    pub stopping: bool,
    /// Never stopped: an external model's server.
    pub permanent: bool,
}

impl Instance {
    fn free(&self, concurrency: u32) -> u32 {
        if self.url.is_none() || self.draining || self.stopping {
            0
        } else {
            concurrency.saturating_sub(self.in_flight)
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub models: HashMap<String, ModelQueue>,
    pub instances: Vec<Instance>,
}

/// Every model's queue and instances.
pub struct Pool {
    state: Mutex<State>,
    /// Woken on every change residency may act on.
    pub changed: Notify,
    epoch: Instant,
    next_id: AtomicU64,
    aging_ms: u64,
}

/// A slot held, or a place in the queue: dropping it gives either back.
pub struct Permit {
    pool: Arc<Pool>,
    model: String,
    id: RequestId,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        let now = self.pool.now_ms();
        let State { models, instances } = &mut *st;
        if let Some(m) = models.get_mut(&self.model) {
            let _ = m.queue.cancel(self.id);
            m.waiters.remove(&self.id);
            if let Some(inst) = m.granted.remove(&self.id) {
                if let Some(i) = instances.iter_mut().find(|i| i.id == inst) {
                    i.in_flight = i.in_flight.saturating_sub(1);
                    if i.in_flight == 0 {
                        i.idle_since_ms = now;
                    }
                }
            }
        }
        self.pool.dispatch(&mut st, &self.model);
        drop(st);
        self.pool.changed.notify_one();
    }
}

impl Pool {
    pub fn new(aging_ms: u64) -> Self {
        Pool {
            state: Mutex::default(),
            changed: Notify::new(),
            epoch: Instant::now(),
            next_id: AtomicU64::new(1),
            aging_ms,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Milliseconds since the pool was made: the clock of queue keys and
    /// idle times.
    pub fn now_ms(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Declares a model with `concurrency` slots per instance.
    pub fn declare(&self, model: &str, concurrency: u32) {
        self.lock()
            .models
            .entry(model.to_owned())
            .or_insert_with(|| ModelQueue {
                queue: RequestQueue::new(self.aging_ms),
                concurrency: concurrency.max(1),
                waiters: HashMap::new(),
                granted: HashMap::new(),
            });
    }

    /// Hands the free slots of `model` to its most urgent waiting requests.
    pub(crate) fn dispatch(&self, st: &mut State, model: &str) {
        let now = self.now_ms();
        let State { models, instances } = st;
        let Some(m) = models.get_mut(model) else {
            return;
        };
        let conc = m.concurrency;
        let free: u32 = instances
            .iter()
            .filter(|i| i.model == model)
            .map(|i| i.free(conc))
            .sum();
        if free == 0 {
            return;
        }
        let slots = m.queue.in_flight().saturating_add(free);
        for d in m.queue.next(now, slots) {
            // The instance with the most free slots spreads the load.
            let Some(i) = instances
                .iter_mut()
                .filter(|i| i.model == model && i.free(conc) > 0)
                .max_by_key(|i| (i.free(conc), std::cmp::Reverse(i.id)))
            else {
                break;
            };
            let Some(url) = i.url.clone() else { break };
            i.in_flight += 1;
            m.granted.insert(d.id, i.id);
            if let Some(tx) = m.waiters.remove(&d.id) {
                let _ = tx.send(Ok(Grant {
                    url,
                    instance: i.id,
                    queue_wait_ms: d.queue_wait_ms,
                }));
            }
        }
    }

    /// Waits for a slot of `model` for a request of a run of `priority`;
    /// the error says why the model cannot serve now (its server would not
    /// start).
    pub async fn acquire(
        self: &Arc<Self>,
        model: &str,
        priority: i32,
    ) -> Result<(Permit, Grant), Unavailable> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.lock();
            let now = self.now_ms();
            let Some(m) = st.models.get_mut(model) else {
                return Err(Unavailable::Undeclared(model.to_owned()));
            };
            // Ids come from a counter, so they never repeat.
            let _ = m.queue.enqueue(id, priority, now);
            m.waiters.insert(id, tx);
            self.dispatch(&mut st, model);
        }
        self.changed.notify_one();
        // Made before waiting: a request dropped while it waits leaves the queue.
        let permit = Permit {
            pool: self.clone(),
            model: model.to_owned(),
            id,
        };
        match rx.await {
            Ok(Ok(grant)) => Ok((permit, grant)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Unavailable::Stopped(model.to_owned())),
        }
    }

    /// Answers every request waiting for `model` with `error`.
    pub(crate) fn fail_waiting(&self, model: &str, error: &str) {
        let mut st = self.lock();
        if let Some(m) = st.models.get_mut(model) {
            for id in m.queue.waiting_ids() {
                let _ = m.queue.cancel(id);
                if let Some(tx) = m.waiters.remove(&id) {
                    let _ = tx.send(Err(Unavailable::Failed(error.to_owned())));
                }
            }
        }
    }

    /// Requests of `model` waiting for a slot now.
    pub fn waiting(&self, model: &str) -> usize {
        self.lock()
            .models
            .get(model)
            .map_or(0, |m| m.queue.waiting())
    }

    /// Every model, and how many of its requests wait.
    pub fn waiting_all(&self) -> Vec<(String, usize)> {
        let mut v: Vec<_> = self
            .lock()
            .models
            .iter()
            .map(|(k, m)| (k.clone(), m.queue.waiting()))
            .collect();
        v.sort();
        v
    }

    /// Every instance now: model, place and whether it serves (not starting,
    /// draining or stopping).
    pub fn instances(&self) -> Vec<(String, String, bool)> {
        let st = self.lock();
        let mut v: Vec<_> = st
            .instances
            .iter()
            .map(|i| {
                let serving = i.url.is_some() && !i.draining && !i.stopping;
                (i.model.clone(), i.place.clone(), serving)
            })
            .collect();
        v.sort();
        v
    }
}
