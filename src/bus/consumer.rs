//! Runs a `Handler` (an asynchronous projection or a saga step) as a member of a consumer
//! group. Each message is settled before its offset is committed: applied (or recognised as
//! a duplicate) by the handler's own transaction, or written to the dead letter queue. A
//! transient failure is retried with exponential backoff and full jitter; after the limit,
//! or at once for a poison message, the message is dead-lettered and the partition moves on.
//! A message of a stream that already has an open dead letter is parked behind it, so a
//! stream is never applied out of order. If even the dead letter queue cannot be written,
//! nothing is committed and the message is tried again later: the consumer pauses rather
//! than loses anything.

use super::envelope::{self, BusEvent};
use super::{BusConsumer, Delivery, EventBus, Topics};
use crate::clock::Clock;
use crate::dlq::{DeadLetters, DlqError, NewDeadLetter};
use crate::observability::tracecontext::continue_trace;
use crate::observability::Metrics;
use async_trait::async_trait;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// What a handler did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// The event (stream, version) had been applied before: nothing changed.
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying: a database hiccup, a lock timeout.
    #[error("{0}")]
    Transient(String),
    /// Will fail the same way every time: dead-letter at once.
    #[error("{0}")]
    Permanent(String),
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The consumer's name: its group is `<topic prefix><name>`, and its dead letters carry it.
    fn name(&self) -> &'static str;
    /// The topic suffixes it reads (`events`, `reservations`, ...).
    fn topics(&self) -> &'static [&'static str];
    /// Applies one event, idempotently by (stream, version), in one transaction.
    async fn handle(&self, event: &BusEvent) -> Result<Applied, HandlerError>;
}

/// How often and how patiently a transient failure is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included, before the message is dead-lettered.
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: a random share of `base * 2^(attempt-1)`,
    /// capped at `max` ("full jitter"), so that many consumers failing together do not retry
    /// in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.max);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }
}

/// One consumer: its handler and what it needs to settle messages.
#[derive(Clone)]
pub struct Consumer {
    pub handler: Arc<dyn Handler>,
    pub dlq: Arc<dyn DeadLetters>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub retry: RetryPolicy,
}

/// How a message was settled; the `outcome` label of `consumer_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Parked,
    DeadLettered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Parked => "parked",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

/// How often the consumer's lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(5);

impl Consumer {
    /// Joins the group and consumes until the task is aborted.
    pub fn spawn(self, bus: Arc<dyn EventBus>, topics: Topics) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let group = topics.named(self.handler.name());
            let names: Vec<String> = self
                .handler
                .topics()
                .iter()
                .map(|t| topics.named(t))
                .collect();
            let mut outage = Backoff::default();
            let mut consumer = loop {
                match bus.subscribe(&group, &names).await {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!(consumer = self.handler.name(), error = %e, "cannot join the group");
                        outage.wait().await;
                    }
                }
            };
            self.consume(consumer.as_mut(), bus.kind()).await;
        })
    }

    async fn consume(&self, consumer: &mut dyn BusConsumer, system: &'static str) {
        let name = self.handler.name();
        let mut outage = Backoff::default();
        let mut lag_tick = tokio::time::interval(LAG_EVERY);
        loop {
            // Both adapters' `next` are cancel-safe: a tick never loses a message.
            let received = tokio::select! {
                received = consumer.next() => received,
                _ = lag_tick.tick() => {
                    if let Some(lag) = consumer.lag().await {
                        self.metrics
                            .consumer_lag
                            .with_label_values(&[name])
                            .set(i64::try_from(lag).unwrap_or(i64::MAX));
                    }
                    continue;
                }
            };
            let delivery = match received {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "cannot receive");
                    outage.wait().await;
                    continue;
                }
            };
            outage = Backoff::default();
            let span = process_span(name, system, &delivery);
            self.settle(&delivery).instrument(span).await;
            if let Err(e) = consumer.commit(&delivery).await {
                // Harmless: the message comes again and is recognised as a duplicate.
                tracing::warn!(consumer = name, error = %e, "cannot commit the offset");
            }
        }
    }

    /// Settles one message, however long the dead letter queue stays unwritable.
    pub async fn settle(&self, delivery: &Delivery) -> Outcome {
        let name = self.handler.name();
        let mut outage = Backoff::default();
        loop {
            match self.try_settle(delivery).await {
                Ok(outcome) => {
                    self.metrics
                        .consumer_events
                        .with_label_values(&[name, outcome.as_str()])
                        .inc();
                    return outcome;
                }
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "cannot dead-letter; will try the message again");
                    outage.wait().await;
                }
            }
        }
    }

    async fn try_settle(&self, delivery: &Delivery) -> Result<Outcome, DlqError> {
        self.settle_in_span(delivery).await
    }

    async fn settle_in_span(&self, delivery: &Delivery) -> Result<Outcome, DlqError> {
        let name = self.handler.name();
        let event = match envelope::open(&delivery.message) {
            Ok(event) => event,
            Err(poison) => {
                tracing::error!(consumer = name, topic = %delivery.message.topic,
                    offset = delivery.offset, error = %poison, "poison message dead-lettered");
                self.park(delivery, &poison, 0, None).await?;
                return Ok(Outcome::DeadLettered);
            }
        };
        if let Some(head) = self.dlq.open_entry_of(name, &event.stream_id).await? {
            let reason = ParkedBehind {
                head,
                stream_id: event.stream_id.clone(),
            };
            self.park(delivery, &reason, 0, Some(head)).await?;
            return Ok(Outcome::Parked);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.handler.handle(&event).await {
                Ok(Applied::Applied) => return Ok(Outcome::Applied),
                Ok(Applied::Duplicate) => return Ok(Outcome::Duplicate),
                Err(e) => e,
            };
            let give_up =
                matches!(error, HandlerError::Permanent(_)) || attempt >= self.retry.attempts;
            if give_up {
                tracing::error!(consumer = name, stream = %event.stream_id, version = event.version,
                    attempts = attempt, error = %error, "event dead-lettered");
                self.park(delivery, &error, attempt - 1, None).await?;
                return Ok(Outcome::DeadLettered);
            }
            self.metrics
                .consumer_retries
                .with_label_values(&[name])
                .inc();
            tracing::warn!(consumer = name, stream = %event.stream_id, attempt, error = %error, "retrying");
            tokio::time::sleep(self.retry.delay(attempt)).await;
        }
    }

    async fn park(
        &self,
        delivery: &Delivery,
        error: &(dyn std::error::Error + Sync),
        retry_count: u32,
        parked_behind: Option<i64>,
    ) -> Result<i64, DlqError> {
        let m = &delivery.message;
        self.dlq
            .park(NewDeadLetter {
                consumer: self.handler.name().to_owned(),
                topic: m.topic.clone(),
                partition: delivery.partition,
                offset: delivery.offset,
                message_key: m.key.clone(),
                stream_id: m.header(envelope::STREAM_ID).map(str::to_owned),
                stream_version: m
                    .header(envelope::STREAM_VERSION)
                    .and_then(|v| v.parse().ok()),
                event_type: m.header(envelope::EVENT_TYPE).map(str::to_owned),
                event_version: m
                    .header(envelope::EVENT_VERSION)
                    .and_then(|v| v.parse().ok()),
                payload: m.payload.clone(),
                headers: m.headers.clone(),
                error: error.to_string(),
                causes: causes(error),
                parked_behind,
                retry_count,
                failed_at: self.clock.now(),
            })
            .await
    }
}

/// Why a message waits in the dead letter queue although nothing is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("parked behind dead letter {head} of stream {stream_id}")]
struct ParkedBehind {
    head: i64,
    stream_id: String,
}

/// The sources of `error`, outermost first.
fn causes(error: &(dyn std::error::Error + Sync)) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = error.source();
    while let Some(cause) = next {
        out.push(cause.to_string());
        next = cause.source();
    }
    out
}

/// Exponential backoff from 100 ms to 5 s while the bus or the dead letter queue is away.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests;

/// The CONSUMER span of one delivery, retries included ("process <topic>", by the messaging
/// semantic conventions), continuing the producer's trace from the message's `traceparent`.
fn process_span(consumer: &str, system: &'static str, delivery: &Delivery) -> tracing::Span {
    let m = &delivery.message;
    let span = tracing::info_span!(
        "consume",
        otel.name = format!("process {}", m.topic),
        otel.kind = "consumer",
        messaging.system = system,
        messaging.destination.name = %m.topic,
        messaging.destination.partition.id = %delivery.partition,
        messaging.kafka.offset = delivery.offset,
        messaging.consumer.group.name = consumer,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
    );
    continue_trace(&span, m.header(envelope::TRACEPARENT));
    span
}
