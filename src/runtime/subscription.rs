//! Catch-up subscriptions on the event store's global log. A `Subscriber` (a projection or a
//! process manager) keeps its own checkpoint; the runner feeds it every event after that
//! checkpoint in order, retrying a failed batch with backoff, and publishes its progress so
//! that a command handler can wait until its own write is visible (read-your-writes).
//! Delivery is at-least-once: subscribers must be idempotent by position.

use crate::backoff::Backoff;
use crate::eventstore::{EventStore, RecordedEvent};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
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

    /// Progress moved by hand from `position` on, for tests of what waits for it.
    #[cfg(test)]
    pub fn manual(position: u64) -> (watch::Sender<u64>, Progress) {
        let (tx, rx) = watch::channel(position);
        (tx, Progress { rx })
    }
}

/// Starts the subscription task; it runs until aborted.
pub fn spawn(
    store: Arc<dyn EventStore>,
    subscriber: Arc<dyn Subscriber>,
) -> (Progress, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(0);
    let task = tokio::spawn(run(store, subscriber, tx));
    (Progress { rx }, task)
}

async fn run(
    store: Arc<dyn EventStore>,
    subscriber: Arc<dyn Subscriber>,
    progress: watch::Sender<u64>,
) {
    let name = subscriber.name();
    let mut head = store.subscribe_head();
    let mut backoff = Backoff::doubling(Duration::from_millis(50), Duration::from_secs(5));
    let mut position = loop {
        match subscriber.checkpoint().await {
            Ok(p) => break p,
            Err(e) => {
                tracing::warn!(subscriber = name, error = %e, "cannot read checkpoint");
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
                backoff.wait().await;
                continue;
            }
        };
        let Some(last) = events.last().map(|e| e.position) else {
            if head.changed().await.is_err() {
                return;
            }
            continue;
        };
        match subscriber.handle(&events).await {
            Ok(()) => {
                backoff.reset();
                position = last;
                progress.send_replace(position);
            }
            Err(e) => {
                tracing::warn!(
                    subscriber = name,
                    error = format!("{e:#}"),
                    "handler failed; retrying"
                );
                backoff.wait().await;
            }
        }
    }
}
