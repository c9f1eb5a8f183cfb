//! The `EventStore` port: an append-only log of versioned events, one stream per aggregate
//! instance, with a global position. Appends carry the version each event will take, and a
//! stale version is a typed `Conflict` (optimistic concurrency). Writers of one sale take
//! turns (`take_turn`): read what others appended, decide, append, with no other writer of the
//! sale in between (a locked turn), or decide first and append only if no other writer wrote
//! the sale meanwhile (an optimistic turn), so the conflict is a safety net. Adapters: `memory`
//! and `postgres`; both must pass `contract`. `guarded` puts a circuit breaker in front of any
//! of them.

pub mod codec;
#[cfg(test)]
pub mod contract;
pub mod guarded;
pub mod memory;
pub mod postgres;

/// Events for the tests of the stores and of what reads them.
pub mod testing {
    use super::{Metadata, NewEvent};

    /// A plain `inventory.seats_held` event (a one-byte payload) of `stream` at `version`.
    pub fn seats_held(stream: &str, version: u64) -> NewEvent {
        NewEvent {
            stream_id: stream.to_owned(),
            version,
            event_type: "inventory.seats_held",
            event_version: 1,
            payload: vec![1],
            metadata: Metadata::default(),
        }
    }
}

use crate::domain::{EventId, UserId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::watch;

/// Context carried by every event: who caused it and how to find the rest of the story.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub user_id: Option<UserId>,
    pub traceparent: Option<String>,
    /// The SHA-256 of the body of the keyed request (`Idempotency-Key`) whose command made this
    /// event, hex-encoded: with the event's stream (whose id the key derives) it records the
    /// key's answer in the append itself (`app::idempotency`). Kept on the first event of a
    /// stream only (`codec::encode`), the one a retry reads; absent on events of requests
    /// without a key, of other causes, and of builds before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_fingerprint: Option<String>,
}

/// An event about to be appended. `version` is the version the event takes in its stream:
/// the stream's current version + 1 for the first event of a stream in an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub stream_id: String,
    pub version: u64,
    pub event_type: &'static str,
    pub event_version: u16,
    pub payload: Vec<u8>,
    pub metadata: Metadata,
}

/// An event as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Global, gap-free order of commits as readers see them.
    pub position: u64,
    /// The sale (event id) whose consistency boundary the stream belongs to.
    pub sale_id: EventId,
    pub stream_id: String,
    pub version: u64,
    pub event_type: String,
    pub event_version: u16,
    pub payload: Vec<u8>,
    pub metadata: Metadata,
    pub recorded_at: DateTime<Utc>,
}

/// A writer's decision in its turn (`EventStore::take_turn`): given the sale's events that it
/// has not seen yet, the events to append (none: nothing is written).
pub type Decide<'a> = dyn for<'e> FnMut(&'e [Arc<RecordedEvent>]) -> Vec<NewEvent> + Send + 'a;

/// What a writer has read of its sale: every event of the sale up to `position`, `events` of
/// them in all (the sale's head as the store counts it). `Known::default()`: nothing yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    pub position: u64,
    pub events: u64,
}

/// How a turn keeps other writers of the sale out (`EventStore::take_turn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnMode {
    /// Wait for the sale, hand `decide` what is new since `Known`, append: never stale.
    Locked,
    /// Hand `decide` nothing (the writer believes it knows the whole sale) and append only if
    /// the sale's head is still `Known::events`; else `Turned::Stale`. Cheaper when one writer
    /// has the sale to itself.
    Optimistic,
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turned {
    /// `decide`'s events were appended, ending at position `last` (`None`: it decided nothing
    /// and nothing was written); the writer now knows the sale up to `known`.
    Done { last: Option<u64>, known: Known },
    /// An optimistic turn found that another writer wrote the sale since `Known`: nothing was
    /// written, and what `decide` decided was decided on a stale state and must be discarded.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Someone else appended to `stream_id` first.
    #[error("version conflict on {stream_id}: expected to write version {attempted}, stream is at {actual}")]
    Conflict {
        stream_id: String,
        attempted: u64,
        actual: u64,
    },
    /// The append was malformed (versions not contiguous); a bug in the caller.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// The backing store cannot be reached or failed; the append may be retried.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// A stored event cannot be read back as it was written: a bug or damaged data, never
    /// worth a retry.
    #[error("stored event unreadable: {0}")]
    Corrupt(String),
    /// The store's circuit breaker is open (it failed repeatedly): nothing was tried.
    #[error(transparent)]
    Open(#[from] crate::breaker::Refused),
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends all `events` atomically (they may span several streams of one sale) and returns
    /// the position of the last one; the batch takes consecutive positions ending there.
    /// Nothing is written on error.
    async fn append(&self, sale_id: EventId, events: Vec<NewEvent>) -> Result<u64, StoreError>;

    /// One writer's turn on a sale: no other turn on the same sale (in any process sharing
    /// the store) appends between what `decide` was given and what it returns. A `Locked` turn
    /// waits for the sale, hands `decide` the sale's events after `known` (read only when the
    /// sale's head is beyond `known.events`) and appends what it returns atomically. An
    /// `Optimistic` turn hands `decide` nothing and appends only if the sale's head is still
    /// `known.events` (also when `decide` returned nothing), else answers `Turned::Stale`.
    /// Stale versions still fail with `Conflict` (a writer that does not take turns got in
    /// first); nothing is written then.
    async fn take_turn(
        &self,
        sale_id: EventId,
        known: Known,
        mode: TurnMode,
        decide: &mut Decide<'_>,
    ) -> Result<Turned, StoreError>;

    /// Up to `limit` events of one sale with a position greater than `after`, in position
    /// order (`after` = 0 from the first), never skipping one: how a writer hydrates, a page
    /// at a time.
    async fn read_sale(
        &self,
        sale_id: EventId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError>;

    /// The first event (version 1) of the stream `stream_id`, or `None` while the stream has
    /// none: what made a stream whose id a request derived (a retry's first attempt).
    async fn first_of_stream(
        &self,
        stream_id: &str,
    ) -> Result<Option<Arc<RecordedEvent>>, StoreError>;

    /// Up to `limit` events with a position greater than `after`, in order, never skipping one.
    async fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError>;

    /// A receiver that changes whenever new events may be readable.
    fn subscribe_head(&self) -> watch::Receiver<u64>;

    /// The log's last committed position now, every instance's appends included (a store
    /// shared by instances asks its database; `subscribe_head` may not have heard of a commit
    /// made elsewhere yet).
    async fn head(&self) -> Result<u64, StoreError> {
        Ok(*self.subscribe_head().borrow())
    }

    /// Cheap reachability check for `/ready`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// A short name for logs and `/ready` (`memory`, `postgres`).
    fn kind(&self) -> &'static str;
}

/// Raises a published log head to `to`, never lowering it (appenders publish after their
/// commit, not in commit order); true if it changed, for `watch::Sender::send_if_modified`.
pub(crate) fn raise_head(head: &mut u64, to: u64) -> bool {
    if to > *head {
        *head = to;
        true
    } else {
        false
    }
}

/// Checks that `events` carry contiguous versions per stream; shared by adapters.
pub fn check_contiguous(events: &[NewEvent]) -> Result<(), StoreError> {
    let mut last: foldhash::HashMap<&str, u64> = foldhash::HashMap::default();
    for e in events {
        if let Some(prev) = last.insert(&e.stream_id, e.version) {
            if e.version != prev + 1 {
                return Err(StoreError::InvalidAppend(format!(
                    "{} jumps from version {prev} to {}",
                    e.stream_id, e.version
                )));
            }
        } else if e.version == 0 {
            return Err(StoreError::InvalidAppend(format!(
                "{} starts at version 0; versions start at 1",
                e.stream_id
            )));
        }
    }
    Ok(())
}
