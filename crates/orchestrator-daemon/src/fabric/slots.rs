//! Who gets a model's next slot: per model a [`RequestQueue`] with as many
//! slots as the model's `concurrency`. A request waits, in its run's
//! priority order (with ageing), until a slot frees; it holds the slot until
//! its answer has been sent or its client went away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use orchestrator_core::fabric::{RequestId, RequestQueue};
use tokio::sync::oneshot;

/// A waiting request gains one priority point per this many milliseconds.
const AGING_MS: u64 = 1_000;

struct Model {
    queue: RequestQueue,
    slots: u32,
    waiters: HashMap<RequestId, oneshot::Sender<()>>,
}

/// Every model's queue.
pub struct Slots {
    models: Mutex<HashMap<String, Model>>,
    epoch: Instant,
    next_id: AtomicU64,
}

impl Default for Slots {
    fn default() -> Self {
        Slots {
            models: Mutex::default(),
            epoch: Instant::now(),
            next_id: AtomicU64::new(1),
        }
    }
}

/// A slot held, or a place in the queue: dropping it gives either back.
pub struct Permit {
    slots: Arc<Slots>,
    model: String,
    id: RequestId,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut models = self.slots.lock();
        if let Some(m) = models.get_mut(&self.model) {
            let _ = m.queue.cancel(self.id);
            m.waiters.remove(&self.id);
            self.slots.dispatch(m);
        }
    }
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Model>> {
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Wakes the requests that get the free slots.
    fn dispatch(&self, m: &mut Model) {
        for d in m.queue.next(self.now_ms(), m.slots) {
            if let Some(tx) = m.waiters.remove(&d.id) {
                let _ = tx.send(());
            }
        }
    }

    /// Waits for a slot of `model` (which serves `concurrency` at once) for a
    /// request of a run of `priority`.
    pub async fn acquire(self: &Arc<Self>, model: &str, concurrency: u32, priority: i32) -> Permit {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut models = self.lock();
            let m = models.entry(model.to_owned()).or_insert_with(|| Model {
                queue: RequestQueue::new(AGING_MS),
                slots: concurrency.max(1),
                waiters: HashMap::new(),
            });
            m.queue
                .enqueue(id, priority, self.now_ms())
                .expect("request ids are unique");
            m.waiters.insert(id, tx);
            self.dispatch(m);
        }
        // Made before waiting: a request dropped while it waits leaves the queue.
        let permit = Permit {
            slots: self.clone(),
            model: model.to_owned(),
            id,
        };
        let _ = rx.await;
        permit
    }

    /// Requests of `model` waiting for a slot now.
    pub fn waiting(&self, model: &str) -> usize {
        self.lock().get(model).map_or(0, |m| m.queue.waiting())
    }

    /// Every model with a queue, and how many wait in it.
    pub fn waiting_all(&self) -> Vec<(String, usize)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(k, m)| (k.clone(), m.queue.waiting()))
            .collect();
        v.sort();
        v
    }
}
