//! Asynchronous projections fed by the bus, not by the in-process projector: sales analytics
//! per event and section, and each customer's purchase history. They are eventually
//! consistent (a purchase shows up once the `insights` consumer has handled its events) and
//! idempotent by (stream, version): each stream's last applied version is stored in the same
//! transaction as the change, so a redelivered event changes nothing. Events arrive ordered
//! per stream but not across streams, so nothing here relies on one stream's event having
//! been seen before another's. The consumer hands over what one poll brought as one batch
//! (`apply_batch`: one transaction). Adapters: `memory`, `postgres`; both pass `contract`.

mod confirmations;
#[cfg(test)]
mod contract;
pub mod memory;
pub mod postgres;
mod versions;

use super::{HistoryEntry, ReadError, SalesView};
use crate::bus::consumer::{Applied, Handler, HandlerError};
use crate::bus::envelope::BusEvent;
use crate::domain::{EventId, UserId};
use crate::paging::{Page, PageRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsightsError {
    #[error("insights store unavailable: {0}")]
    Unavailable(String),
    /// The event contradicts what was applied (a bug or corrupt data): retrying will not help.
    #[error("cannot apply {stream_id} v{version}: {reason}")]
    Inconsistent {
        stream_id: String,
        version: u64,
        reason: String,
    },
}

#[async_trait]
pub trait Insights: Send + Sync + 'static {
    /// Applies `event` unless its stream is already at or past its version. An event that
    /// skips versions of a stream applied already is refused (`version_gap`).
    async fn apply(&self, event: &BusEvent) -> Result<Applied, InsightsError>;
    /// Applies `events` in order as `apply` would, in one transaction: one answer per event
    /// (an event at or below its stream's version, counting earlier events of the batch, is a
    /// `Duplicate`), or an error and nothing changed.
    async fn apply_batch(&self, events: &[BusEvent]) -> Result<Vec<Applied>, InsightsError>;
    /// Tickets and revenue of an event, net of refunds; `None` before any of its events.
    async fn sales(&self, event: EventId) -> Result<Option<SalesView>, ReadError>;
    /// Purchases (confirmed, or refunded after confirmation) of a customer, newest first.
    async fn history(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<HistoryEntry>, ReadError>;
    /// Tickets and revenue of the purchases confirmed at or after `since` and not refunded
    /// since, over every event: what the operators' dashboard shows for the last 24 hours.
    async fn sales_since(&self, since: DateTime<Utc>) -> Result<RecentSales, ReadError>;
    /// Empties every insight and forgets every applied version, for a rebuild.
    async fn reset(&self) -> Result<(), InsightsError>;
    /// Takes `stream_id` to `version` (unless it is past it) without applying anything: an
    /// admin closed that event's dead letter by other means, so the stream's later events
    /// apply instead of meeting a gap.
    async fn skip(&self, stream_id: &str, version: u64) -> Result<(), InsightsError>;
}

/// The refusal of an event that skips versions of a stream applied up to `at`: its
/// predecessors never arrived (a broker that lost or reordered records). Applied, it would
/// hide them for good, since they would then count as duplicates; refused, it is
/// dead-lettered with the rest of its stream parked behind it. A stream never seen (`at` 0)
/// may start anywhere: topic retention can start a new consumer group mid-stream.
fn version_gap(event: &BusEvent, at: u64) -> Option<InsightsError> {
    (at > 0 && event.version > at + 1).then(|| InsightsError::Inconsistent {
        stream_id: event.stream_id.clone(),
        version: event.version,
        reason: format!(
            "version gap: the stream is at v{at}, so v{} to v{} never arrived",
            at + 1,
            event.version - 1
        ),
    })
}

/// Sales over a window, across events. Events sell in different currencies, so revenue is
/// one total per currency rather than one sum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct RecentSales {
    pub tickets_sold: u64,
    /// One entry per currency that sold, ordered by currency code.
    pub revenue: Vec<Revenue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Revenue {
    pub currency: String,
    pub amount_cents: i64,
}

/// Rebuilds the insights straight from the event store, as the bus would deliver each event:
/// empties them, then applies every event from position 0. Returns the position reached. Run
/// it with the service stopped; once restarted, the consumer finds everything it is delivered
/// already applied.
pub async fn rebuild(
    store: &dyn crate::eventstore::EventStore,
    insights: &dyn Insights,
) -> anyhow::Result<u64> {
    use anyhow::Context;
    let topics = crate::bus::Topics::new("");
    let wanted: Vec<String> = InsightsProjection::TOPICS
        .iter()
        .map(|t| topics.named(t))
        .collect();
    insights.reset().await.context("emptying the insights")?;
    super::replay(store, async |batch| {
        for event in batch {
            let Some(message) = crate::bus::envelope::seal(&topics, event) else {
                continue;
            };
            if !wanted.iter().any(|name| **name == *message.topic) {
                continue;
            }
            match crate::bus::envelope::open(&message) {
                Ok(event) => {
                    insights.apply(&event).await.context("applying an event")?;
                }
                Err(e) => tracing::error!(position = event.position, error = %e,
                    "rebuild skipped an unreadable event (the consumer dead-letters it)"),
            }
        }
        Ok(())
    })
    .await
}

/// The consumer that keeps `Insights` up to date.
pub struct InsightsProjection(pub Arc<dyn Insights>);

impl InsightsProjection {
    const TOPICS: &'static [&'static str] = &["events", "reservations"];
}

/// Its name: the consumer group and the `consumer` of its dead letters.
pub const CONSUMER: &str = "insights";

#[async_trait]
impl Handler for InsightsProjection {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn topics(&self) -> &'static [&'static str] {
        Self::TOPICS
    }

    async fn handle(&self, event: &BusEvent) -> Result<Applied, HandlerError> {
        self.0.apply(event).await.map_err(handler_error)
    }

    async fn handle_batch(
        &self,
        events: &[BusEvent],
    ) -> Option<Result<Vec<Applied>, HandlerError>> {
        Some(self.0.apply_batch(events).await.map_err(handler_error))
    }

    async fn skip(&self, stream_id: &str, version: u64) -> Result<(), HandlerError> {
        self.0.skip(stream_id, version).await.map_err(handler_error)
    }
}

fn handler_error(e: InsightsError) -> HandlerError {
    match e {
        InsightsError::Unavailable(_) => HandlerError::Transient(e.to_string()),
        InsightsError::Inconsistent { .. } => HandlerError::Permanent(e.to_string()),
    }
}
