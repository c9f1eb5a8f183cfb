//! `Sales`: the command side's front door. Routes each command to its sale's writer task,
//! spawning (and hydrating) the writer on first use, so different events never wait on each
//! other while one hot event is serialized without a global lock. A writer idle for
//! `writer::IDLE_FOR` stops and lets its sale's state go; the next command starts another.
//! Each writer's mailbox is bounded (a bulkhead): a command that finds it full is refused at
//! once (`CommandError::Overloaded`, 503 + `Retry-After` at the edge) rather than queued
//! without limit or left waiting for room.

use super::expiry::{EndHold, ExpiryHandle, HoldEnd};
use super::writer::{CommandError, CommitWatch, Committed, Envelope, SaleWriter, IDLE_FOR};
use crate::domain::{
    reservation::ReservationError, EventId, ReservationId, SaleCommand, SaleError,
};
use crate::eventstore::{EventStore, Metadata};
use crate::observability::Metrics;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

#[derive(Clone)]
pub struct Sales {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn EventStore>,
    expiry: ExpiryHandle,
    metrics: Arc<Metrics>,
    max_batch: usize,
    /// Commands one sale's writer may have waiting before new ones are refused.
    mailbox: usize,
    /// How long a writer with nothing to do keeps its sale's state (`writer::IDLE_FOR`).
    idle_for: Duration,
    /// Told of every batch committed here.
    watch: Arc<dyn CommitWatch>,
    // A std mutex: held only to look up or insert a sender, never across an await.
    writers: Mutex<HashMap<EventId, mpsc::Sender<Envelope>>>,
}

impl Sales {
    pub fn new(
        store: Arc<dyn EventStore>,
        expiry: ExpiryHandle,
        metrics: Arc<Metrics>,
        (max_batch, mailbox): (usize, usize),
        watch: Arc<dyn CommitWatch>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                expiry,
                metrics,
                max_batch: max_batch.max(1),
                mailbox: mailbox.max(1),
                idle_for: IDLE_FOR,
                watch,
                writers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Writers that stop after `idle_for` without a command (tests; the service uses
    /// `writer::IDLE_FOR`). Only before the first command.
    #[cfg(test)]
    fn idle_after(mut self, idle_for: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.idle_for = idle_for;
        }
        self
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.inner.store
    }

    /// Decides `command` for `sale_id` and returns once its events are committed; refused at
    /// once with `Overloaded` when the sale's mailbox is full.
    pub async fn execute(
        &self,
        sale_id: EventId,
        command: SaleCommand,
        metadata: Metadata,
    ) -> Result<Committed, CommandError> {
        let (reply, answer) = oneshot::channel();
        let mut envelope = Envelope {
            command,
            metadata,
            reply,
        };
        // A writer stops when it was idle (or panicked); then a fresh one hydrates from the store.
        for _ in 0..2 {
            let writer = self.writer(sale_id);
            match writer.try_send(envelope) {
                Ok(()) => {
                    let waiting = writer.max_capacity().saturating_sub(writer.capacity());
                    self.inner.metrics.mailbox_depth_seen(waiting);
                    return answer.await.map_err(|_| CommandError::ShuttingDown)?;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.inner.metrics.mailbox_refused();
                    return Err(CommandError::Overloaded);
                }
                // `writer` replaces the closed sender (unless another caller did already).
                Err(mpsc::error::TrySendError::Closed(returned)) => envelope = returned,
            }
        }
        Err(CommandError::ShuttingDown)
    }

    /// Whether a writer for `sale_id` runs here (the sale was commanded on this instance, and
    /// its writer did not stop idle since): it holds the sale's state and decides whether the
    /// sale exists and is open.
    pub fn is_running(&self, sale_id: EventId) -> bool {
        self.lock().get(&sale_id).is_some_and(|tx| !tx.is_closed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EventId, mpsc::Sender<Envelope>>> {
        self.inner
            .writers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads `sale_id` and starts its writer with it, unless a writer runs here already (or
    /// starts while the sale loads): the first command then waits for one locked turn, not
    /// for the whole sale's load. A warm start; a sale's first command loads it otherwise.
    pub async fn warm(&self, sale_id: EventId) -> Result<(), CommandError> {
        if self.is_running(sale_id) {
            return Ok(());
        }
        let writer = self.new_writer(sale_id).load().await?;
        let mut writers = self.lock();
        if writers.get(&sale_id).is_none_or(mpsc::Sender::is_closed) {
            self.start(&mut writers, sale_id, writer);
        }
        Ok(())
    }

    fn writer(&self, sale_id: EventId) -> mpsc::Sender<Envelope> {
        let mut writers = self.lock();
        if let Some(tx) = writers.get(&sale_id).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        self.start(&mut writers, sale_id, self.new_writer(sale_id))
    }

    fn new_writer(&self, sale_id: EventId) -> SaleWriter {
        SaleWriter::new(
            sale_id,
            Arc::clone(&self.inner.store),
            self.inner.expiry.clone(),
            Arc::clone(&self.inner.metrics),
            self.inner.max_batch,
            Arc::clone(&self.inner.watch),
        )
    }

    /// Runs `writer` as `sale_id`'s, in place of any that stopped.
    fn start(
        &self,
        writers: &mut HashMap<EventId, mpsc::Sender<Envelope>>,
        sale_id: EventId,
        writer: SaleWriter,
    ) -> mpsc::Sender<Envelope> {
        // Writers that stopped (idle) leave their closed senders behind: drop them now, once
        // per writer started, rather than keep one entry per sale ever commanded.
        writers.retain(|_, tx| !tx.is_closed());
        let (tx, rx) = mpsc::channel(self.inner.mailbox);
        tokio::spawn(writer.run(rx, self.inner.idle_for));
        writers.insert(sale_id, tx.clone());
        tx
    }
}

#[async_trait]
impl EndHold for Sales {
    async fn end_hold(
        &self,
        sale_id: EventId,
        reservation_id: ReservationId,
        now: DateTime<Utc>,
    ) -> HoldEnd {
        let command = SaleCommand::ExpireReservation {
            reservation_id,
            now,
        };
        match self.execute(sale_id, command, Metadata::default()).await {
            Ok(_) => HoldEnd::Ended,
            Err(CommandError::Rejected(SaleError::Reservation(
                ReservationError::NotYetExpired { expires_at },
            ))) => HoldEnd::NotYet(expires_at),
            Err(CommandError::Rejected(e)) => HoldEnd::Refused(e.to_string()),
            Err(e) => HoldEnd::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
