//! The application layer: the use cases that HTTP (and anything else that drives the service)
//! calls, one module per family: `checkout` (reserve, pay, cancel, refund), `events` (event
//! administration), `queries` (the reads, with visibility and ownership), `dead_letters`
//! (what admins do with the DLQ), `holds` (ending holds whose instance died), `reconcile`
//! (recording gateway captures nobody recorded), `warm` (loading the sales on sale before an
//! instance takes traffic), `webhooks` (organizers' endpoints and their
//! delivery logs), `queue` (the waiting room of on-sales and the pass check of `reserve`),
//! `reads` (the read models behind one door that waits for this instance's writes). It
//! owns running commands with read-your-writes, recording a gateway capture through writer
//! contention (within a retry budget, `retries`), the charge-then-record flow and idempotency;
//! `reads` holds the holds placed here that the read models do not show yet (`recent`). It
//! never decides a business rule (the domain does) and never knows about HTTP.

pub mod checkout;
pub mod dead_letters;
pub mod error;
pub mod events;
pub mod holds;
pub mod idempotency;
pub mod policy;
pub mod queries;
pub mod queue;
pub mod reads;
pub mod recent;
pub mod reconcile;
mod replays;
pub mod retries;
pub mod warm;
pub mod webhooks;

pub use error::{AppError, FieldError};

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::domain::{EventId, SaleCommand};
use crate::eventstore::{EventStore, Metadata};
use crate::observability::Metrics;
use crate::payment::PaymentGateway;
use crate::projections::insights::Insights;
use crate::projections::ReadModel;
use crate::runtime::{CommandError, Committed, Sales};
use dead_letters::DeadLetterAdmin;
use idempotency::IdempotencyStore;
use reads::Reads;
use retries::Dependency;
use std::sync::Arc;
use std::time::Duration;

/// Attempts of `App::record` (backing off from 20 ms with full jitter: at most 2.5 s of waits).
const RECORD_ATTEMPTS: u32 = 8;

/// How long a read waits for the read models to show this instance's writes.
pub(crate) const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

/// What the use cases work with: the write side, the read side and the outside services.
pub struct App {
    pub(crate) sales: Sales,
    /// The read models and the event cache, reached after waiting for this instance's writes;
    /// told of every commit here (the sales' `CommitWatch`).
    pub(crate) reads: Arc<Reads>,
    pub(crate) insights: Arc<dyn Insights>,
    pub(crate) gateway: Arc<dyn PaymentGateway>,
    pub(crate) idempotency: Arc<IdempotencyStore>,
    pub(crate) dead_letters: DeadLetterAdmin,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<Metrics>,
    /// How long a hold lasts (`RESERVATION_TTL_SECONDS`).
    pub(crate) hold_for: chrono::Duration,
    /// Organizers' webhook endpoints and their deliveries.
    pub(crate) webhooks: webhooks::Webhooks,
    /// Fault injection (`FAULT_CRASH_AFTER_CAPTURE`, never in production): abort right after
    /// a capture, before recording it.
    pub(crate) crash_after_capture: bool,
    /// The waiting rooms of on-sales and the pass key.
    pub(crate) queue: Arc<queue::WaitingRoom>,
    /// How often request-path code may still retry each dependency.
    pub(crate) retries: retries::Retries,
}

impl App {
    /// The event store, for readiness checks.
    pub fn event_store(&self) -> &Arc<dyn EventStore> {
        self.sales.store()
    }

    /// The read models, for readiness checks.
    pub fn read_model(&self) -> &dyn ReadModel {
        self.reads.applied()
    }

    /// The cached event views, for readiness checks and cache statistics.
    pub fn event_cache(&self) -> &crate::cache::EventCache {
        self.reads.applied_cache()
    }

    /// The answers kept for `Idempotency-Key` retries.
    pub fn idempotency(&self) -> &IdempotencyStore {
        &self.idempotency
    }

    /// The dead letter queue's admin operations.
    pub fn dead_letters(&self) -> &DeadLetterAdmin {
        &self.dead_letters
    }

    /// How long this instance's read-model projector has failed, with its last error; `None`
    /// while it works.
    pub fn projector_failing(&self) -> Option<(Duration, String)> {
        self.reads.progress().failing()
    }

    /// How far the read models are (the global log position they applied).
    pub fn read_position(&self) -> u64 {
        self.reads.progress().position()
    }

    /// Runs a command and waits until the read models reflect it: they are shared, so a
    /// client's next read sees the change on any instance (read-your-writes).
    pub(crate) async fn command(
        &self,
        sale: EventId,
        command: SaleCommand,
        metadata: Metadata,
    ) -> Result<Committed, AppError> {
        let committed = self.create(sale, command, metadata).await?;
        Ok(self.visible(committed).await)
    }

    /// Runs a command that creates what its answer shows, built from the events it committed:
    /// it does not wait for the read models. Reads on this instance wait for it (`Reads::fresh`);
    /// a read of it by id elsewhere that misses catches up with the log first
    /// (`caught_up_with_log`).
    pub(crate) async fn create(
        &self,
        sale: EventId,
        command: SaleCommand,
        metadata: Metadata,
    ) -> Result<Committed, AppError> {
        self.retries.first_attempt(Dependency::EventStore);
        Ok(self.sales.execute(sale, command, metadata).await?)
    }

    /// Like `command`, for a command that records what already happened outside (a capture
    /// at the gateway): when writers of several instances keep out-racing each other on the
    /// sale, try again for a while rather than answer 503 and leave the fact unrecorded, as
    /// long as the event store's retry budget allows (an unrecorded capture is then left to
    /// reconciliation).
    pub(crate) async fn record(
        &self,
        sale: EventId,
        command: SaleCommand,
        metadata: Metadata,
    ) -> Result<Committed, AppError> {
        self.retries.first_attempt(Dependency::EventStore);
        let mut backoff =
            Backoff::doubling(Duration::from_millis(20), Duration::from_secs(5)).with_full_jitter();
        for attempt in 1..=RECORD_ATTEMPTS {
            match self
                .sales
                .execute(sale, command.clone(), metadata.clone())
                .await
            {
                // Transient, and the card is charged already: try again.
                Err(e @ (CommandError::Contended | CommandError::Overloaded))
                    if attempt < RECORD_ATTEMPTS =>
                {
                    if !self
                        .retries
                        .may_retry(Dependency::EventStore, &self.metrics)
                    {
                        return Err(e.into());
                    }
                    tracing::info!(%sale, "writers contended or mailbox full; recording again");
                    backoff.wait().await;
                }
                other => return Ok(self.visible(other?).await),
            }
        }
        Err(CommandError::Contended.into())
    }

    /// Waits until the read models show `committed`, at most `READ_YOUR_WRITES_TIMEOUT`.
    async fn visible(&self, committed: Committed) -> Committed {
        if committed.position == 0 {
            return committed;
        }
        let started = std::time::Instant::now();
        let shown = self
            .reads
            .progress()
            .wait_for(committed.position, READ_YOUR_WRITES_TIMEOUT)
            .await;
        self.metrics
            .read_your_writes_wait
            .observe(started.elapsed().as_secs_f64());
        if !shown {
            // The write is durable, so the client still gets its 2xx; only the read may lag.
            tracing::warn!(
                position = committed.position,
                "read models lag behind a committed write"
            );
        }
        committed
    }

    /// Waits until the read models applied everything the log holds now (asked of the store:
    /// another instance's commit may not have been announced here yet); false if they did
    /// not within `READ_YOUR_WRITES_TIMEOUT` or the log's head could not be read.
    pub(crate) async fn caught_up_with_log(&self) -> bool {
        let head = match self.sales.store().head().await {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the log's head");
                return false;
            }
        };
        let applied = self.reads.progress();
        if applied.position() >= head {
            return true;
        }
        self.metrics.log_waits.inc();
        applied.wait_for(head, READ_YOUR_WRITES_TIMEOUT).await
    }
}
