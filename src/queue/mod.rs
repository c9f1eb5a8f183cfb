//! The virtual waiting room of on-sales: per event, the queue's settings, one ticket per
//! (event, user) with its place in line, and the admission state that every instance advances
//! together (`admission.rs`: how many may enter by now, at the configured rate, at most one
//! burst at a time). `pass.rs` signs and verifies the passes admitted users reserve with. The
//! port is `QueueStore`, with `memory` and `postgres` adapters that both pass `contract`.
//! It never decides who may manage a queue (the application layer does) and never re-admits a
//! ticket: admission marks tickets, in order, under the queue's lock.

pub mod admission;
#[cfg(test)]
mod contract;
pub mod memory;
pub mod pass;
pub mod postgres;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Ranks of joins after the shuffle window start here (plus their arrival number), so they
/// come after every random draw, which is below it.
pub const ARRIVAL_BASE: i64 = 1 << 62;

/// A queue's settings, as its organizer set them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    pub event_id: Uuid,
    pub enabled: bool,
    /// Admissions per minute, over every instance together (1..=1 000 000).
    pub admit_per_minute: u32,
    /// How long a pass stays valid after admission (60..=3600 s).
    pub pass_ttl_seconds: u32,
    /// Joins before this moment are admitted in a random order, later ones in arrival order;
    /// admission starts at this moment.
    pub shuffle_until: Option<DateTime<Utc>>,
}

/// One user's place in one event's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub id: Uuid,
    pub event_id: Uuid,
    pub user_id: Uuid,
    /// The order of admission: lower first (ties by ticket id).
    pub rank: i64,
    pub joined_at: DateTime<Utc>,
    pub admitted_at: Option<DateTime<Utc>>,
}

/// How many wait and how many were admitted, in one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    pub waiting: u64,
    pub admitted: u64,
}

/// A queue's waiting line at one moment, for positions answered from memory
/// (`app::queue::room`): who waits, in admission order, and how many had been admitted then.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WaitingLine {
    pub admitted: u64,
    /// (rank, ticket id) of every waiting ticket, lowest first.
    pub order: Vec<(i64, Uuid)>,
}

/// What `QueueStore::position_since` counts: the queue's admitted total now, and the tickets
/// still waiting after `after` up to the ticket itself (the ticket included while it waits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Since {
    pub admitted: u64,
    pub between: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the event has no enabled queue")]
    NoQueue,
    #[error("queue store unavailable: {0}")]
    Unavailable(String),
    /// A stored row that cannot be read back (a bug or a hand edit).
    #[error("corrupt queue row: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Creates or replaces the settings of a queue; a new queue's admission starts at `now`
    /// (or at `shuffle_until`), an existing one keeps its admission state.
    async fn put_settings(
        &self,
        settings: &QueueSettings,
        now: DateTime<Utc>,
    ) -> Result<(), QueueError>;
    async fn settings(&self, event_id: Uuid) -> Result<Option<QueueSettings>, QueueError>;
    /// Every enabled queue (for the admission ticker).
    async fn enabled(&self) -> Result<Vec<QueueSettings>, QueueError>;
    /// Puts `user_id` in line, ranked by `draw` when given (a join in the shuffle window),
    /// else after everyone who joined before (arrival order). A user already in line gets
    /// their ticket back, with `false`. `NoQueue` when the event has no enabled queue.
    async fn join(
        &self,
        event_id: Uuid,
        user_id: Uuid,
        draw: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(Ticket, bool), QueueError>;
    async fn ticket(&self, event_id: Uuid, user_id: Uuid) -> Result<Option<Ticket>, QueueError>;
    /// Tickets still waiting ahead of `ticket`, plus one (0 once it was admitted).
    async fn position(&self, ticket: &Ticket) -> Result<u64, QueueError>;
    async fn counts(&self, event_id: Uuid) -> Result<QueueCounts, QueueError>;
    /// The waiting line and the admitted total, read at one moment.
    async fn waiting_line(&self, event_id: Uuid) -> Result<WaitingLine, QueueError>;
    /// The admitted total and the waiting tickets in `(after, ticket]` (rank, id) order, read
    /// at one moment: with a `WaitingLine` copy, an exact position in one cheap look-up.
    async fn position_since(
        &self,
        ticket: &Ticket,
        after: Option<(i64, Uuid)>,
    ) -> Result<Since, QueueError>;
    /// Admits what the rate allows by `now` (`admission::allowance`), the first waiting
    /// tickets in rank order, under the queue's lock; returns the tickets it admitted. An
    /// instance that finds the lock taken admits nothing (the holder does the work).
    async fn advance(&self, event_id: Uuid, now: DateTime<Utc>) -> Result<Vec<Ticket>, QueueError>;
}
