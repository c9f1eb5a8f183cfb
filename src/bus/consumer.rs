//! Runs a `Handler` (an asynchronous projection or a saga step) as a member of a consumer
//! group. What one poll brings, and what else arrives within `LINGER`, is settled as a batch
//! (`batch.rs`) before its offsets are
//! committed: each message applied (or recognised as a duplicate) by the handler's own
//! transaction (one for the whole batch when the handler takes batches), or written to the
//! dead letter queue. A
//! transient failure is retried with exponential backoff and full jitter; after the limit,
//! or at once for a poison message, the message is dead-lettered and the partition moves on.
//! A message of a stream that already has an open dead letter is parked behind it, so a
//! stream is never applied out of order. If even the dead letter queue cannot be written,
//! nothing is committed and the message is tried again later: the consumer pauses rather
//! than loses anything. A consumer that gets no partitions, or receives nothing while it is
//! behind, for longer than its `StallPolicy` allows is reported stalled (`ConsumerHealth`,
//! metrics) and, unless recovery is off, leaves and joins its group again as a new member.
//! At shutdown it leaves its group cleanly.

use super::envelope::{self, BusEvent};
use super::{BusConsumer, Delivery, EventBus, Topics};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::dlq::{DeadLetters, DlqError, NewDeadLetter};
use crate::observability::tracecontext::continue_trace;
use crate::observability::Metrics;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};
use supervision::{settling_too_long, stall, stopping};
pub use supervision::{ConsumerHealth, StallPolicy, Supervision};

mod batch;
mod supervision;

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
    /// Applies `events` in order, each as `handle` would, in one transaction: one answer per
    /// event, or an error and nothing changed. `None` (the default): this handler takes one
    /// event at a time.
    async fn handle_batch(
        &self,
        _events: &[BusEvent],
    ) -> Option<Result<Vec<Applied>, HandlerError>> {
        None
    }
    /// An admin closed the dead letter of `stream_id`'s `version` by other means (resolved or
    /// discarded): a handler that refuses gaps in a stream's versions takes the stream to it,
    /// so that the events parked behind it apply. The default does nothing.
    async fn skip(&self, _stream_id: &str, _version: u64) -> Result<(), HandlerError> {
        Ok(())
    }
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
        Backoff::doubling(self.base, self.max)
            .with_full_jitter()
            .delay_for(attempt)
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
    /// A call to the handler or the dead letter queue without an answer within this fails as
    /// transient, so a connection gone silent cannot hold the consumer.
    pub answer_limit: Duration,
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

/// Most messages settled as one batch (what one poll brings, up to this).
pub const BATCH: usize = 500;

/// How long a poll that brought fewer than `BATCH` messages waits for more before its batch is
/// settled: under a steady stream of events a batch then holds what arrived in this window
/// (each batch costs the handler and the dead letter look-up a few statements, whatever its
/// size), at the price of this much more latency for a lone event.
pub const LINGER: Duration = Duration::from_millis(50);

/// How often the consumer measures its lag and looks for a stall.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Why one membership in the group ended.
enum Ended {
    Stopped,
    Stalled,
}

impl Consumer {
    /// Joins the group and consumes until `supervision.stop` says so; then leaves the group.
    pub fn spawn(
        self,
        bus: Arc<dyn EventBus>,
        topics: Topics,
        mut supervision: Supervision,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let name = self.handler.name();
            let group = topics.named(name);
            let names: Vec<String> = self
                .handler
                .topics()
                .iter()
                .map(|t| topics.named(t))
                .collect();
            self.metrics
                .consumer_stalled
                .with_label_values(&[name])
                .set(0);
            self.metrics.consumer_rejoins.with_label_values(&[name]);
            self.report_lag(None);
            loop {
                let joined = tokio::select! {
                    joined = self.join(bus.as_ref(), &group, &names) => joined,
                    () = stopping(&mut supervision.stop) => return,
                };
                let mut consumer = joined;
                let ended = self
                    .consume(consumer.as_mut(), &mut supervision, bus.kind())
                    .await;
                consumer.close().await;
                self.report_lag(None);
                match ended {
                    Ended::Stopped => return,
                    Ended::Stalled => {
                        self.metrics
                            .consumer_rejoins
                            .with_label_values(&[name])
                            .inc();
                        tracing::warn!(
                            consumer = name,
                            "stalled: joining the group again as a new member"
                        );
                    }
                }
            }
        })
    }

    /// Subscribes, however long the bus stays away.
    async fn join(
        &self,
        bus: &dyn EventBus,
        group: &str,
        names: &[String],
    ) -> Box<dyn BusConsumer> {
        let mut outage = outage_backoff();
        loop {
            match bus.subscribe(group, names).await {
                Ok(c) => return c,
                Err(e) => {
                    tracing::warn!(consumer = self.handler.name(), error = %e, "cannot join the group");
                    outage.wait().await;
                }
            }
        }
    }

    async fn consume(
        &self,
        consumer: &mut dyn BusConsumer,
        supervision: &mut Supervision,
        system: &'static str,
    ) -> Ended {
        let name = self.handler.name();
        let mut outage = outage_backoff();
        let mut watch = tokio::time::interval(WATCH_EVERY);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The last time the consumer received a message, or had nothing to receive.
        let mut progress = Instant::now();
        let mut was_stalled = false;
        loop {
            // Both adapters' `next`, hence `next_batch`, are cancel-safe: a tick never loses a
            // message.
            let received = tokio::select! {
                received = consumer.next_batch(BATCH) => received,
                () = stopping(&mut supervision.stop) => return Ended::Stopped,
                _ = watch.tick() => {
                    let lag = consumer.lag().await;
                    self.report_lag(lag);
                    let joining = consumer.joining_since();
                    if lag == Some(0) || joining.is_some() {
                        progress = Instant::now();
                    }
                    let stall = stall(supervision.stall.after, joining, lag, progress);
                    let stalled = self.show_stall(supervision, stall, &mut was_stalled);
                    if stalled && supervision.stall.recover {
                        return Ended::Stalled;
                    }
                    continue;
                }
            };
            let deliveries = match received {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "cannot receive");
                    outage.wait().await;
                    continue;
                }
            };
            outage = outage_backoff();
            progress = Instant::now();
            let deliveries = linger(consumer, deliveries).await;
            // Settling waits out a dead letter queue or a handler that does not answer: shown
            // as a stall while it lasts (never cut short: a batch is settled in full).
            let settled = self.settle_batch(&deliveries, system);
            tokio::pin!(settled);
            let settling = Instant::now();
            loop {
                tokio::select! {
                    _ = &mut settled => break,
                    _ = watch.tick() => {
                        self.report_lag(consumer.lag().await);
                        let stall = settling_too_long(supervision.stall.after, settling);
                        self.show_stall(supervision, stall, &mut was_stalled);
                    }
                }
            }
            for delivery in batch::last_per_partition(&deliveries) {
                if let Err(e) = consumer.commit(delivery).await {
                    // Harmless: the messages come again and are recognised as duplicates.
                    tracing::warn!(consumer = name, error = %e, "cannot commit the offset");
                }
            }
        }
    }

    /// Shows `stall` (or its end) in the log, the gauge and the health `/ready` reads; true
    /// while stalled.
    fn show_stall(
        &self,
        supervision: &Supervision,
        stall: Option<String>,
        was_stalled: &mut bool,
    ) -> bool {
        let name = self.handler.name();
        let stalled = stall.is_some();
        match &stall {
            Some(reason) if !*was_stalled => {
                tracing::warn!(consumer = name, reason = %reason, "consumer stalled");
            }
            None if *was_stalled => tracing::info!(consumer = name, "consumer recovered"),
            _ => {}
        }
        *was_stalled = stalled;
        self.metrics
            .consumer_stalled
            .with_label_values(&[name])
            .set(i64::from(stalled));
        supervision.health.set(name, stall);
        stalled
    }

    /// The lag gauge while the lag is known; while it is not, no series at all (and
    /// `consumer_lag_known` 0), so that nothing reads an unknown lag as 0.
    fn report_lag(&self, lag: Option<u64>) {
        let name = self.handler.name();
        let known = self.metrics.consumer_lag_known.with_label_values(&[name]);
        match lag {
            Some(lag) => {
                known.set(1);
                self.metrics
                    .consumer_lag
                    .with_label_values(&[name])
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
            None => {
                known.set(0);
                // Absent already is fine.
                let _ = self.metrics.consumer_lag.remove_label_values(&[name]);
            }
        }
    }

    async fn park(
        &self,
        delivery: &Delivery,
        error: &(dyn std::error::Error + Sync),
        retry_count: u32,
        parked_behind: Option<i64>,
    ) -> Result<i64, DlqError> {
        let entry = self.dead_letter(delivery, error, retry_count, parked_behind);
        self.bounded(self.dlq.park(entry), batch::dlq_silent).await
    }

    fn dead_letter(
        &self,
        delivery: &Delivery,
        error: &(dyn std::error::Error + Sync),
        retry_count: u32,
        parked_behind: Option<i64>,
    ) -> NewDeadLetter {
        let m = &delivery.message;
        NewDeadLetter {
            consumer: self.handler.name().to_owned(),
            topic: m.topic.to_string(),
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
            headers: m.owned_headers(),
            error: error.to_string(),
            causes: causes(error),
            parked_behind,
            retry_count,
            failed_at: self.clock.now(),
        }
    }
}

/// Why a message waits in the dead letter queue although nothing is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("parked behind the open dead letter of stream {stream_id}")]
struct ParkedBehind {
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

/// `batch` with what else arrives within `LINGER`, up to `BATCH` messages. Cancelling
/// `next_batch` while it waits loses nothing (it is cancel-safe); an error ends the wait and is
/// the next poll's to report.
async fn linger(consumer: &mut dyn BusConsumer, mut batch: Vec<Delivery>) -> Vec<Delivery> {
    let until = tokio::time::Instant::now() + LINGER;
    while batch.len() < BATCH {
        match tokio::time::timeout_at(until, consumer.next_batch(BATCH - batch.len())).await {
            Ok(Ok(more)) => batch.extend(more),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    batch
}

/// Exponential backoff from 100 ms to 1 s while the bus or the dead letter queue is away: a
/// receive that fails is local to the client (it reconnects by itself), so asking again each
/// second costs nothing and picks up a broker that is back within a second.
fn outage_backoff() -> Backoff {
    Backoff::doubling(Duration::from_millis(100), Duration::from_secs(1))
}

#[cfg(test)]
mod stall_tests;
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
