//! The event bus: committed events leave the event store through the outbox relay
//! (`relay.rs`) onto topics, one per aggregate category, keyed by stream id so that a
//! stream's events stay in order on one partition. Asynchronous projections and saga steps
//! consume them through `consumer.rs`, which settles what each poll brings as one batch,
//! retries, dead-letters and parks.
//! Adapters: `memory` (the in-process bus, the default) and `kafka` (rdkafka, any
//! Kafka-protocol broker such as Redpanda); both pass `contract`.

pub mod consumer;
#[cfg(test)]
pub mod contract;
pub mod envelope;
pub mod kafka;
pub mod memory;
pub mod relay;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Instant;

/// A header's name: the envelope's own names are static, so sealing an event allocates none.
pub type HeaderName = std::borrow::Cow<'static, str>;

/// One message as the bus carries it. Headers are UTF-8 text (see `envelope.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    pub topic: Arc<str>,
    pub key: String,
    pub headers: Vec<(HeaderName, String)>,
    pub payload: Vec<u8>,
}

impl From<&crate::dlq::DeadLetter> for BusMessage {
    /// The message as it was received, for a retry of its dead letter.
    fn from(entry: &crate::dlq::DeadLetter) -> Self {
        BusMessage {
            topic: entry.topic.as_str().into(),
            key: entry.message_key.clone(),
            headers: entry
                .headers()
                .into_iter()
                .map(|(name, value)| (name.into(), value))
                .collect(),
            payload: entry.payload(),
        }
    }
}

impl BusMessage {
    /// The headers with owned names, as a dead letter keeps them.
    pub fn owned_headers(&self) -> Vec<(String, String)> {
        let owned = |(name, value): &(HeaderName, String)| (name.to_string(), value.clone());
        self.headers.iter().map(owned).collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A message as a consumer receives it, with where it sits in its topic. The message is shared:
/// every group reading it from the in-process bus gets the one copy the producer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message: std::sync::Arc<BusMessage>,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The broker cannot be reached or did not acknowledge in time; try again later.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (unknown topic, bad configuration).
    #[error("bus rejected the request: {0}")]
    Rejected(String),
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes `messages` and returns once the broker acknowledged every one of them.
    /// Messages with the same key keep their order. On error some may have been published:
    /// the caller republishes them all (consumers are idempotent).
    async fn publish(&self, messages: Vec<BusMessage>) -> Result<(), BusError>;

    /// Joins consumer group `group` on `topics`. Each message is delivered to one member of
    /// the group; what was not committed is delivered again after a restart.
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn BusConsumer>, BusError>;

    /// Creates `topics` where they do not exist yet.
    async fn ensure_topics(&self, topics: &[String]) -> Result<(), BusError>;

    /// Cheap reachability check for `/ready`.
    async fn ping(&self) -> Result<(), BusError>;

    /// A short name for logs and `/ready` (`memory`, `kafka`).
    fn kind(&self) -> &'static str;
}

#[async_trait]
pub trait BusConsumer: Send + 'static {
    /// The next message, waiting for one. Cancel-safe: dropping the future before it
    /// completes loses no message (the consumer measures its lag between waits).
    async fn next(&mut self) -> Result<Delivery, BusError>;

    /// What one poll brings: waits for the first message, then takes those already at hand,
    /// without waiting, up to `max` in all. Cancel-safe like `next`: it only waits for the
    /// first, and once it has one it completes without waiting again.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BusError> {
        let mut batch = vec![self.next().await?];
        while batch.len() < max {
            match ready_now(self.next()) {
                Some(Ok(delivery)) => batch.push(delivery),
                // An error is the next call's to report.
                Some(Err(_)) | None => break,
            }
        }
        Ok(batch)
    }

    /// Marks `delivery` (and everything before it on its partition) as handled by the group.
    async fn commit(&mut self, delivery: &Delivery) -> Result<(), BusError>;

    /// Messages published to the partitions this consumer reads that its group has not
    /// handled yet; `None` while unknown (not joined yet, no measurement since the last
    /// rebalance), never a guessed 0.
    async fn lag(&self) -> Option<u64>;

    /// Since when the consumer has been waiting for its group to give it partitions (joining,
    /// or rejoining after a rebalance began); `None` once it has its assignment, even an
    /// empty one (more members than partitions). Adapters without groups are never joining.
    fn joining_since(&self) -> Option<Instant> {
        None
    }

    /// Leaves the group cleanly: a member that is still joining first completes the join
    /// (for a bounded time), since some brokers keep a member that left mid-join as the
    /// group's leader and never finish the rebalance. Uncommitted messages come again to the
    /// group's next owner of their partition.
    async fn close(self: Box<Self>) {}
}

/// The output of `future` if it is ready at its first poll; otherwise `None`, and the future
/// is dropped (only cancel-safe futures may be given).
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// Topic names: `<prefix>events`, `<prefix>inventory`, `<prefix>reservations`,
/// `<prefix>payments`, chosen by the category of the stream id (`reservation-<uuid>`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    /// The topic of each of `CATEGORIES`, in its order: built once, shared by every message.
    names: [Arc<str>; CATEGORIES.len()],
}

/// Aggregate categories and the topic suffix each one is published to.
const CATEGORIES: [(&str, &str); 4] = [
    ("event", "events"),
    ("inventory", "inventory"),
    ("reservation", "reservations"),
    ("payment", "payments"),
];

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let names = CATEGORIES.map(|(_, suffix)| format!("{prefix}{suffix}").into());
        Topics { prefix, names }
    }

    /// Every topic the service publishes to.
    pub fn all(&self) -> Vec<String> {
        self.names.iter().map(|name| name.to_string()).collect()
    }

    /// The topic of one category suffix (`events`, `reservations`, ...).
    pub fn named(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// The topic a stream's events go to, or `None` for a stream id of no known category.
    pub fn for_stream(&self, stream_id: &str) -> Option<Arc<str>> {
        let (category, _) = stream_id.split_once('-')?;
        CATEGORIES
            .iter()
            .position(|(c, _)| *c == category)
            .map(|i| self.names[i].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams map to the topics API.md names, by category.
    #[test]
    fn streams_map_to_their_category_topic() {
        let topics = Topics::new("t.");
        assert_eq!(
            topics.for_stream("reservation-8c1e").as_deref(),
            Some("t.reservations")
        );
        assert_eq!(topics.for_stream("event-1").as_deref(), Some("t.events"));
        assert_eq!(
            topics.for_stream("inventory-1").as_deref(),
            Some("t.inventory")
        );
        assert_eq!(
            topics.for_stream("payment-1").as_deref(),
            Some("t.payments")
        );
        assert_eq!(topics.for_stream("ledger-1"), None);
        assert_eq!(topics.all().len(), 4);
    }
}
