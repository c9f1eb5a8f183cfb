//! The read side: views that HTTP queries answer from, the `ReadModel` port, and its adapters.
//! Read models are fed by a catch-up subscription (at-least-once delivery): applying an event
//! at or below the stored checkpoint changes nothing, so replays and duplicates are harmless.
//! They never decide anything: the write side is the only source of truth.

#[cfg(test)]
pub mod contract;
pub mod insights;
pub mod memory;
pub mod postgres;
pub mod views;

use crate::domain::concert::EventStatus;
use crate::domain::{EventId, PaymentId, ReservationId, UserId};
use crate::eventstore::RecordedEvent;
use crate::paging::{Page, PageRequest};
use crate::runtime::subscription::Subscriber;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::Arc;
pub use views::*;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("read model unavailable: {0}")]
    Unavailable(String),
}

/// Which events a caller may list.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub status: Option<EventStatus>,
    pub owner_id: Option<UserId>,
    /// The caller, if signed in: they also see their own drafts.
    pub viewer: Option<UserId>,
    /// Admins see every draft.
    pub viewer_is_admin: bool,
}

/// A pending hold, as start-up needs it to re-arm expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingHold {
    pub event_id: EventId,
    pub reservation_id: ReservationId,
    pub expires_at: DateTime<Utc>,
}

/// What one `ProjectionWriter::apply` did besides applying and moving the checkpoint.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Events past the checkpoint this build cannot decode (a newer writer's type or version,
    /// TODO.md "Bus and dead letter queue"): the checkpoint moved past them, so the read models
    /// miss them until a rebuild by a build that reads them. Counted by the applier whose
    /// claim moved the checkpoint, once across instances (none when the claim's answer was
    /// lost and the retry finds them behind the checkpoint).
    pub undecodable: usize,
}

/// The write side of the read models: what the projector and a rebuild do to them.
#[async_trait]
pub trait ProjectionWriter: Send + Sync + 'static {
    /// Applies `events` in order and moves the checkpoint past them, atomically.
    async fn apply(&self, events: &[Arc<RecordedEvent>]) -> anyhow::Result<Applied>;
    async fn checkpoint(&self) -> anyhow::Result<u64>;
    /// Empties every view and the checkpoint, for a rebuild from position 0.
    async fn reset(&self) -> anyhow::Result<()>;
}

/// One event's view: the only read the cache of event views needs.
#[async_trait]
pub trait EventLookup: Send + Sync + 'static {
    async fn event(&self, id: EventId) -> Result<Option<EventView>, ReadError>;
}

/// The query side of the read models: what the use cases ask.
#[async_trait]
pub trait ReadModel: EventLookup {
    async fn events(
        &self,
        query: &EventQuery,
        page: PageRequest,
    ) -> Result<Page<EventView>, ReadError>;
    async fn reservation(&self, id: ReservationId) -> Result<Option<ReservationView>, ReadError>;
    /// A user's reservations, or everyone's for `None`; newest first.
    async fn reservations(
        &self,
        user: Option<UserId>,
        page: PageRequest,
    ) -> Result<Page<ReservationView>, ReadError>;
    async fn payment(&self, id: PaymentId) -> Result<Option<PaymentView>, ReadError>;
    /// Which of `ids` the read models show (recorded payments), in one query.
    async fn recorded_payments(&self, ids: &[PaymentId]) -> Result<HashSet<PaymentId>, ReadError>;
    async fn payments_of(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<PaymentView>, ReadError>;
    async fn pending_holds(&self) -> Result<Vec<PendingHold>, ReadError>;
    async fn ping(&self) -> Result<(), ReadError>;
    fn kind(&self) -> &'static str;
}

/// Told after each applied batch which events' views changed, before progress is published:
/// the cache of event views implements it.
#[async_trait]
pub trait ViewInvalidation: Send + Sync + 'static {
    /// The views of `sale_ids` changed at `position`. Never fails (a failure is logged).
    async fn invalidate(&self, sale_ids: &[EventId], position: u64);
}

/// Feeds a read model from the event log and reports how far it got. After each batch it
/// invalidates the cached views of the events the batch touched, before the subscription
/// publishes the new position (what command handlers wait for): read-your-writes holds
/// through the cache.
pub struct Projector {
    pub reads: Arc<dyn ProjectionWriter>,
    pub metrics: Arc<crate::observability::Metrics>,
    pub cache: Arc<dyn ViewInvalidation>,
    /// A batch (or the checkpoint's read) without an answer within this is abandoned and
    /// retried, so a connection gone silent does not stall the read models for good.
    pub answer_limit: std::time::Duration,
}

#[async_trait]
impl Subscriber for Projector {
    fn name(&self) -> &'static str {
        "read-models"
    }

    async fn checkpoint(&self) -> anyhow::Result<u64> {
        within(self.answer_limit, self.reads.checkpoint()).await
    }

    async fn handle(&self, events: &[Arc<RecordedEvent>]) -> anyhow::Result<()> {
        use crate::observability::metrics::{PROJECTION_APPLY_FAILED, PROJECTION_UNDECODABLE};
        let applied = match within(self.answer_limit, self.reads.apply(events)).await {
            Ok(applied) => applied,
            Err(e) => {
                self.metrics
                    .projection_errors
                    .with_label_values(&[PROJECTION_APPLY_FAILED])
                    .inc();
                return Err(e);
            }
        };
        if applied.undecodable > 0 {
            self.metrics
                .projection_errors
                .with_label_values(&[PROJECTION_UNDECODABLE])
                .inc_by(applied.undecodable as u64);
        }
        if let Some(last) = events.last() {
            let mut touched: Vec<EventId> = events.iter().map(|e| e.sale_id).collect();
            touched.sort_unstable_by_key(|id| id.0);
            touched.dedup();
            self.cache.invalidate(&touched, last.position).await;
            self.metrics
                .projection_position
                .set(i64::try_from(last.position).unwrap_or(i64::MAX));
        }
        Ok(())
    }
}

/// `call`'s answer, or an error once `limit` passed without one.
async fn within<T>(
    limit: std::time::Duration,
    call: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    crate::db::within(limit, call, || {
        anyhow::anyhow!(
            "no answer from the read models' database within {} ms",
            limit.as_millis()
        )
    })
    .await
}

/// What a rebuild reached: the log position, and the events this build could not decode
/// (not in the read models: a build that reads them must rebuild again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub position: u64,
    pub undecodable: usize,
}

/// Rebuilds a read model from the event store: empties it, then replays every event from
/// position 0. Run it with the service stopped: a projector running meanwhile could move the
/// checkpoint past events the replay has not applied yet.
pub async fn rebuild(
    store: &dyn crate::eventstore::EventStore,
    reads: &dyn ProjectionWriter,
) -> anyhow::Result<Rebuilt> {
    use anyhow::Context;
    reads.reset().await.context("emptying the read models")?;
    let mut undecodable = 0;
    let position = replay(store, async |batch| {
        let applied = reads.apply(batch).await.context("applying events")?;
        undecodable += applied.undecodable;
        Ok(())
    })
    .await?;
    Ok(Rebuilt {
        position,
        undecodable,
    })
}

/// Feeds the whole event log, from position 0, to `apply` in batches; returns the position
/// reached.
pub async fn replay(
    store: &dyn crate::eventstore::EventStore,
    mut apply: impl AsyncFnMut(&[Arc<RecordedEvent>]) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    use anyhow::Context;
    let mut position = 0;
    loop {
        let batch = store
            .read_all(position, 1000)
            .await
            .context("reading the event log")?;
        let Some(last) = batch.last().map(|e| e.position) else {
            return Ok(position);
        };
        apply(&batch).await?;
        position = last;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::metrics::PROJECTION_UNDECODABLE;
    use crate::observability::Metrics;

    struct NoCache;

    #[async_trait]
    impl ViewInvalidation for NoCache {
        async fn invalidate(&self, _: &[EventId], _: u64) {}
    }

    /// Events this build cannot decode are counted as `projection_errors_total{reason=
    /// "undecodable"}` once, when the projector skips them, not again on a redelivery: the
    /// read models miss them, and the alert that reads the counter says so.
    #[tokio::test]
    async fn undecodable_events_are_counted_once() {
        let metrics = Arc::new(Metrics::new());
        let projector = Projector {
            reads: Arc::new(memory::MemoryReadModel::new()),
            metrics: Arc::clone(&metrics),
            cache: Arc::new(NoCache),
            answer_limit: std::time::Duration::from_secs(5),
        };
        let skipped = || {
            metrics
                .projection_errors
                .with_label_values(&[PROJECTION_UNDECODABLE])
                .get()
        };
        let log = contract::history();
        projector.handle(&log).await.unwrap();
        assert_eq!(skipped(), 2, "the fixture's two undecodable events");
        projector.handle(&log).await.unwrap();
        assert_eq!(skipped(), 2, "a redelivery skips nothing new");
    }
}
