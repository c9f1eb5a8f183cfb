//! The bus on a Kafka-protocol broker (Redpanda in production), through rdkafka.
//! The producer is idempotent with `acks=all`, so a retried send never duplicates or
//! reorders a partition; the key is the stream id, so a stream lives on one partition.
//! Consumers join a group with auto-commit off: an offset is committed only when the caller
//! says the message was handled. A consumer tells whether it is still joining its group and
//! its lag over its own partitions (unknown until measured), and leaves the group on close
//! only after its join completed.

use super::{BusConsumer, BusError, BusMessage, Delivery, EventBus};
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Partitions of the topics this service creates. Order only matters per stream, so more
/// partitions only buy consumer parallelism.
const PARTITIONS: i32 = 3;
/// How long librdkafka keeps retrying one message before the relay hears it failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between librdkafka's attempts to reach a broker that went away (its default,
/// 10 s, delays the return of a restarted broker by that much; one connect a second is cheap).
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Consumer session timeout: short, so a group forms quickly and a dead member is replaced.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// How often librdkafka reports statistics (the consumer lag among them).
const STATISTICS_EVERY: Duration = Duration::from_secs(5);
/// At shutdown, how long a consumer still joining its group may take to finish the join
/// before it leaves (tansu, for one, never completes a rebalance whose leader left mid-join).
const JOIN_BEFORE_LEAVING: Duration = Duration::from_secs(8);
/// How long leaving the group may take before shutdown goes on without the confirmation.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a metadata request for `/ready` may take.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Routes librdkafka's own log lines and client errors into our logs (they would otherwise
/// go to the `log` facade, which nothing here listens to). For a consumer it also keeps where
/// the consumer stands in its group (from the rebalance callbacks) and its lag, from
/// librdkafka's statistics, over the partitions assigned to it. Lag comes from statistics
/// rather than from watermark requests of our own: issuing those on a consumer while its
/// broker is away was seen to wedge its fetcher.
#[derive(Default)]
struct Logged {
    standing: Standing,
}

/// A consumer's place in its group. The callbacks run on librdkafka's and the poller's
/// threads, hence the std locks (never held across an await).
#[derive(Default)]
struct Standing {
    /// Since when the consumer waits for an assignment; `None` once it has one.
    joining_since: Mutex<Option<Instant>>,
    /// (topic, partition) assigned by the last rebalance.
    assigned: Mutex<Vec<(String, i32)>>,
    /// Messages behind over the assigned partitions; -1 while unknown.
    lag: AtomicI64,
}

impl Standing {
    fn joining() -> Standing {
        let standing = Standing::default();
        *lock(&standing.joining_since) = Some(Instant::now());
        standing.lag.store(UNKNOWN, Ordering::Relaxed);
        standing
    }
}

/// The lag of a consumer that has not measured it since its last rebalance.
const UNKNOWN: i64 = -1;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Messages a partition's consumer has still to handle, if the statistics tell: librdkafka's
/// own figure, or for a partition the group never committed (read from the earliest offset)
/// everything the broker keeps of it.
fn partition_lag(p: &rdkafka::statistics::Partition) -> Option<i64> {
    if p.consumer_lag >= 0 {
        Some(p.consumer_lag)
    } else if p.committed_offset < 0 && p.lo_offset >= 0 && p.hi_offset >= p.lo_offset {
        Some(p.hi_offset - p.lo_offset)
    } else {
        None
    }
}

impl ClientContext for Logged {
    fn stats(&self, statistics: Statistics) {
        let standing = &self.standing;
        if lock(&standing.joining_since).is_some() {
            return;
        }
        let lag = lock(&standing.assigned)
            .iter()
            .map(|(topic, partition)| {
                statistics
                    .topics
                    .get(topic)
                    .and_then(|t| t.partitions.get(partition))
                    .and_then(partition_lag)
            })
            .sum::<Option<i64>>();
        standing
            .lag
            .store(lag.unwrap_or(UNKNOWN), Ordering::Relaxed);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, "librdkafka: {reason}");
    }
}

impl ConsumerContext for Logged {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let standing = &self.standing;
        match rebalance {
            Rebalance::Assign(partitions) => {
                let assigned: Vec<(String, i32)> = partitions
                    .elements()
                    .iter()
                    .map(|p| (p.topic().to_owned(), p.partition()))
                    .collect();
                tracing::info!(partitions = assigned.len(), "consumer group assignment");
                // No partitions, nothing behind; otherwise unknown until the next statistics.
                let lag = if assigned.is_empty() { 0 } else { UNKNOWN };
                *lock(&standing.assigned) = assigned;
                standing.lag.store(lag, Ordering::Relaxed);
                *lock(&standing.joining_since) = None;
            }
            Rebalance::Revoke(_) => {
                lock(&standing.assigned).clear();
                standing.lag.store(UNKNOWN, Ordering::Relaxed);
                *lock(&standing.joining_since) = Some(Instant::now());
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed"),
        }
    }
}

pub struct KafkaBus {
    brokers: String,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl KafkaBus {
    /// Configures clients for `brokers` (comma-separated host:port); connects lazily.
    pub fn new(brokers: &str) -> Result<Self, BusError> {
        let mut producer = ClientConfig::new();
        producer
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set(
                "reconnect.backoff.max.ms",
                RECONNECT_BACKOFF_MAX.as_millis().to_string(),
            )
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            );
        let admin = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .map_err(|e| BusError::Rejected(e.to_string()))?;
        Ok(KafkaBus {
            brokers: brokers.to_owned(),
            producer: producer
                .create()
                .map_err(|e| BusError::Rejected(e.to_string()))?,
            admin,
        })
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    async fn publish(&self, messages: Vec<BusMessage>) -> Result<(), BusError> {
        // Enqueue in order (the idempotent producer keeps that order per partition), then
        // wait for every acknowledgement.
        let mut pending = Vec::with_capacity(messages.len());
        for m in &messages {
            let headers = m.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            });
            let record = FutureRecord::to(&m.topic)
                .key(m.key.as_bytes())
                .payload(m.payload.as_slice())
                .headers(headers);
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| unavailable(e))?;
            pending.push(delivery);
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(unavailable(e)),
                Err(_) => return Err(unavailable("the producer was dropped")),
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn BusConsumer>, BusError> {
        let consumer: StreamConsumer<Logged> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set("heartbeat.interval.ms", "1000")
            .set(
                "reconnect.backoff.max.ms",
                RECONNECT_BACKOFF_MAX.as_millis().to_string(),
            )
            .set(
                "statistics.interval.ms",
                STATISTICS_EVERY.as_millis().to_string(),
            )
            .create_with_context(Logged {
                standing: Standing::joining(),
            })
            .map_err(|e| BusError::Rejected(e.to_string()))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| BusError::Rejected(e.to_string()))?;
        Ok(Box::new(KafkaConsumer(Arc::new(consumer))))
    }

    async fn ensure_topics(&self, topics: &[String]) -> Result<(), BusError> {
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
            .collect();
        let results = self
            .admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .map_err(unavailable)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BusError::Unavailable(format!(
                        "cannot create topic {topic}: {code}"
                    )))
                }
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, PING_TIMEOUT)
                .map(|_| ())
                .map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }
}

struct KafkaConsumer(Arc<StreamConsumer<Logged>>);

#[async_trait]
impl BusConsumer for KafkaConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let message = self
            .0
            .recv()
            .await
            .map_err(|e: KafkaError| unavailable(e))?;
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_owned().into(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Delivery {
            message: std::sync::Arc::new(BusMessage {
                topic: message.topic().into(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default(),
                headers,
                payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            }),
            partition: message.partition(),
            offset: message.offset(),
        })
    }

    async fn commit(&mut self, delivery: &Delivery) -> Result<(), BusError> {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(
                &delivery.message.topic,
                delivery.partition,
                Offset::Offset(delivery.offset + 1),
            )
            .map_err(|e| BusError::Rejected(e.to_string()))?;
        self.0
            .commit(&offsets, CommitMode::Async)
            .map_err(unavailable)
    }

    async fn lag(&self) -> Option<u64> {
        u64::try_from(self.0.context().standing.lag.load(Ordering::Relaxed)).ok()
    }

    fn joining_since(&self) -> Option<Instant> {
        *lock(&self.0.context().standing.joining_since)
    }

    async fn close(self: Box<Self>) {
        let give_up = Instant::now() + JOIN_BEFORE_LEAVING;
        while self.joining_since().is_some() && Instant::now() < give_up {
            // Polling serves the rebalance callbacks. A message received meanwhile is not
            // committed, so the partition's next owner gets it.
            let _ = tokio::time::timeout(Duration::from_millis(100), self.0.recv()).await;
        }
        if self.joining_since().is_some() {
            tracing::warn!("leaving the consumer group while still joining it");
        }
        // Dropping the last handle closes the consumer: librdkafka leaves the group and waits
        // for the answer, blocking. On a thread of its own, so that a broker that does not
        // answer cannot hold the exit (the thread ends with the process).
        let consumer = self.0;
        let (left, gone) = tokio::sync::oneshot::channel();
        let closing = std::thread::Builder::new()
            .name("kafka-consumer-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = left.send(());
            });
        match closing {
            Ok(_) => {
                if tokio::time::timeout(LEAVE_TIMEOUT, gone).await.is_err() {
                    tracing::warn!("the broker did not confirm that the consumer left its group");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot close the consumer on a thread"),
        }
    }
}

/// Test support: where the tests' broker is. Public for the integration tests.
pub mod testing {
    use std::time::Duration;

    /// The broker tests use: `TEST_KAFKA_BROKERS`, else 127.0.0.1:9092. Panics with the way to
    /// start one when nothing listens there (tests must not skip silently).
    pub async fn brokers() -> String {
        let brokers =
            std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let first = brokers.split(',').next().unwrap_or_default().to_owned();
        let reachable = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(first.clone()),
        )
        .await;
        if !matches!(reachable, Ok(Ok(_))) {
            panic!(
                "no Kafka-protocol broker at {first}. Start one with ./scripts/services.sh \
                 (it runs the tansu broker), or set TEST_KAFKA_BROKERS"
            );
        }
        brokers
    }
}
