//! Catch-up subscriptions on the event store's global log. A `Subscriber` (a projection or a
//! process manager) keeps its own checkpoint; the runner feeds it every event after that
//! checkpoint in order, retrying a failed batch with backoff, and publishes its progress so
//! that a command handler can wait until its own write is visible (read-your-writes), and
//! since when it has been failing (for `/ready`).
//! Delivery is at-least-once: subscribers must be idempotent by position.

use crate::backoff::Backoff;
use crate::eventstore::{EventStore, RecordedEvent};
use async_trait::async_trait;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const BATCH: usize = 512;

#[async_trait]
pub trait Subscriber: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The last position this subscriber has durably handled.
    async fn checkpoint(&self) -> anyhow::Result<u64>;
    /// Handles `events` (in order) and advances the checkpoint past them, atomically.
    async fn handle(&self, events: &[Arc<RecordedEvent>]) -> anyhow::Result<()>;
}

/// Progress of one running subscription.
#[derive(Clone)]
pub struct Progress {
    rx: watch::Receiver<u64>,
    failing: Failing,
}

/// Since when a subscription has failed without a success between, and its last error.
#[derive(Clone, Default)]
struct Failing(Arc<Mutex<Option<(Instant, String)>>>);

impl Failing {
    fn failed(&self, error: String) {
        let mut failing = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let since = failing
            .as_ref()
            .map_or_else(Instant::now, |(since, _)| *since);
        *failing = Some((since, error));
    }

    fn succeeded(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl Progress {
    /// Waits until the subscriber has handled `position`, at most `timeout`.
    /// Returns false on timeout, so the caller can decide what a late read model means.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut rx = self.rx.clone();
        let reached = tokio::time::timeout(timeout, async move {
            rx.wait_for(|p| *p >= position).await.is_ok()
        });
        reached.await.unwrap_or(false)
    }

    pub fn position(&self) -> u64 {
        *self.rx.borrow()
    }

    /// How long the subscription has failed to read the log or handle a batch, with its last
    /// error; `None` while it works (or has nothing to do).
    pub fn failing(&self) -> Option<(Duration, String)> {
        let failing = self
            .failing
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        failing
            .as_ref()
            .map(|(since, error)| (since.elapsed(), error.clone()))
    }

    /// Progress moved by hand from `position` on, for tests of what waits for it.
    #[cfg(test)]
    pub fn manual(position: u64) -> (watch::Sender<u64>, Progress) {
        let (tx, rx) = watch::channel(position);
        let failing = Failing::default();
        (tx, Progress { rx, failing })
    }
}

/// Starts the subscription task; it runs until aborted.
pub fn spawn(
    store: Arc<dyn EventStore>,
    subscriber: Arc<dyn Subscriber>,
) -> (Progress, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(0);
    let failing = Failing::default();
    let task = tokio::spawn(run(store, subscriber, tx, failing.clone()));
    (Progress { rx, failing }, task)
}

async fn run(
    store: Arc<dyn EventStore>,
    subscriber: Arc<dyn Subscriber>,
    progress: watch::Sender<u64>,
    failing: Failing,
) {
    let name = subscriber.name();
    let mut head = store.subscribe_head();
    let mut backoff = Backoff::doubling(Duration::from_millis(50), Duration::from_secs(5));
    let mut position = loop {
        match subscriber.checkpoint().await {
            Ok(p) => break p,
            Err(e) => {
                tracing::warn!(subscriber = name, error = %e, "cannot read checkpoint");
                failing.failed(format!("cannot read its checkpoint: {e}"));
                backoff.wait().await;
            }
        }
    };
    progress.send_replace(position);
    loop {
        // Mark the head seen before reading, so a commit racing with this read wakes us again.
        head.borrow_and_update();
        let events = match store.read_all(position, BATCH).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(subscriber = name, error = %e, "cannot read the log");
                failing.failed(format!("cannot read the log: {e}"));
                backoff.wait().await;
                continue;
            }
        };
        let Some(last) = events.last().map(|e| e.position) else {
            failing.succeeded();
            if head.changed().await.is_err() {
                return;
            }
            continue;
        };
        match subscriber.handle(&events).await {
            Ok(()) => {
                backoff.reset();
                failing.succeeded();
                position = last;
                progress.send_replace(position);
            }
            Err(e) => {
                let error = format!("{e:#}");
                tracing::warn!(subscriber = name, error, "handler failed; retrying");
                failing.failed(format!(
                    "cannot apply events after position {position}: {error}"
                ));
                backoff.wait().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventId;
    use crate::eventstore::memory::MemoryEventStore;
    use crate::eventstore::{Metadata, NewEvent};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Fails every batch while `broken`.
    struct Flaky {
        broken: AtomicBool,
    }

    #[async_trait]
    impl Subscriber for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        async fn checkpoint(&self) -> anyhow::Result<u64> {
            Ok(0)
        }
        async fn handle(&self, _: &[Arc<RecordedEvent>]) -> anyhow::Result<()> {
            match self.broken.load(Ordering::SeqCst) {
                true => anyhow::bail!("the read models refuse the batch"),
                false => Ok(()),
            }
        }
    }

    /// A subscription whose batch keeps failing says since when and why (what `/ready` shows),
    /// and says nothing once a batch goes through.
    #[tokio::test]
    async fn a_failing_subscription_says_so_until_it_works_again() {
        let store = Arc::new(MemoryEventStore::new());
        let flaky = Arc::new(Flaky {
            broken: AtomicBool::new(true),
        });
        let (progress, task) = spawn(store.clone(), flaky.clone());
        assert!(progress.failing().is_none(), "nothing to do yet");
        let sale = EventId::random();
        let event = NewEvent {
            stream_id: format!("event-{sale}"),
            version: 1,
            event_type: "event.published",
            event_version: 1,
            payload: vec![1],
            metadata: Metadata::default(),
        };
        store.append(sale, vec![event]).await.unwrap();
        let waited = Instant::now();
        while progress.failing().is_none() {
            assert!(waited.elapsed() < Duration::from_secs(10), "never failing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (_, error) = progress.failing().unwrap();
        assert!(error.contains("refuse the batch"), "{error}");
        flaky.broken.store(false, Ordering::SeqCst);
        assert!(progress.wait_for(1, Duration::from_secs(10)).await);
        assert!(progress.failing().is_none());
        task.abort();
    }
}
