//! The outbox relay. The event log is the outbox: the append transaction that commits an
//! event is what records that it must be published, so there is no second write to forget
//! and nothing to keep in step. The relay tails the log from its cursor, publishes each
//! batch (key = stream id) and waits for the broker's acknowledgement of every message, then
//! moves the cursor past the batch; "done" is "at or below the cursor". A crash between the
//! acknowledgement and the cursor update publishes the batch again, which consumers absorb
//! (they are idempotent by stream and version); nothing is ever skipped.
//!
//! Several instances: the cursor is a lease. On PostgreSQL it is the `outbox_relay` row,
//! locked `FOR UPDATE SKIP LOCKED` for one batch; whoever holds it relays, the others stand by
//! (looking again once a second, not at every commit) and take over within a second if it
//! dies. So there is no double publish storm and no gap.

use super::{envelope, EventBus, Topics};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::eventstore::EventStore;
use crate::observability::tracecontext::{continue_trace, traceparent_of};
use crate::observability::Metrics;
use async_trait::async_trait;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Events per published batch.
const BATCH: usize = 500;
/// How often an idle or standing-by relay looks again without being woken.
const POLL: Duration = Duration::from_secs(1);
const CURSOR: &str = "outbox";

/// The right to publish the next batch, with the position published so far.
#[async_trait]
pub trait Lease: Send {
    fn position(&self) -> u64;
    /// Records everything up to `position` as published and gives the lease back.
    async fn advance(self: Box<Self>, position: u64) -> anyhow::Result<()>;
}

#[async_trait]
pub trait RelayCursor: Send + Sync + 'static {
    /// The lease, or `None` while another relay holds it.
    async fn lease(&self) -> anyhow::Result<Option<Box<dyn Lease>>>;
    /// The position published so far, without taking the lease (for metrics).
    async fn published(&self) -> anyhow::Result<u64>;
}

/// A cursor in memory: for the in-process bus, which forgets everything on restart, so the
/// relay must start from the beginning of the log too.
#[derive(Default)]
pub struct MemoryCursor(Arc<tokio::sync::Mutex<u64>>);

struct MemoryLease(tokio::sync::OwnedMutexGuard<u64>);

#[async_trait]
impl Lease for MemoryLease {
    fn position(&self) -> u64 {
        *self.0
    }

    async fn advance(mut self: Box<Self>, position: u64) -> anyhow::Result<()> {
        *self.0 = (*self.0).max(position);
        Ok(())
    }
}

#[async_trait]
impl RelayCursor for MemoryCursor {
    async fn lease(&self) -> anyhow::Result<Option<Box<dyn Lease>>> {
        Ok(Arc::clone(&self.0)
            .try_lock_owned()
            .ok()
            .map(|guard| Box::new(MemoryLease(guard)) as Box<dyn Lease>))
    }

    async fn published(&self) -> anyhow::Result<u64> {
        Ok(*self.0.lock().await)
    }
}

/// The cursor in the event store's database (`outbox_relay`), shared by every instance.
pub struct PostgresCursor(PgPool);

impl PostgresCursor {
    pub async fn new(pool: PgPool) -> anyhow::Result<Self> {
        sqlx::query(
            "INSERT INTO outbox_relay (name, position) VALUES ($1, 0) ON CONFLICT DO NOTHING",
        )
        .bind(CURSOR)
        .execute(&pool)
        .await?;
        Ok(PostgresCursor(pool))
    }
}

struct PostgresLease {
    tx: Transaction<'static, Postgres>,
    position: u64,
}

#[async_trait]
impl Lease for PostgresLease {
    fn position(&self) -> u64 {
        self.position
    }

    async fn advance(mut self: Box<Self>, position: u64) -> anyhow::Result<()> {
        sqlx::query("UPDATE outbox_relay SET position = GREATEST(position, $2) WHERE name = $1")
            .bind(CURSOR)
            .bind(i64::try_from(position)?)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl RelayCursor for PostgresCursor {
    async fn lease(&self) -> anyhow::Result<Option<Box<dyn Lease>>> {
        let mut tx = self.0.begin().await?;
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT position FROM outbox_relay WHERE name = $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(CURSOR)
        .fetch_optional(&mut *tx)
        .await?;
        Ok(match position {
            Some(p) => Some(Box::new(PostgresLease {
                tx,
                position: u64::try_from(p)?,
            })),
            None => None,
        })
    }

    async fn published(&self) -> anyhow::Result<u64> {
        let p: i64 = sqlx::query_scalar("SELECT position FROM outbox_relay WHERE name = $1")
            .bind(CURSOR)
            .fetch_one(&self.0)
            .await?;
        Ok(u64::try_from(p)?)
    }
}

/// One PRODUCER span ("send <topic>", by the messaging semantic conventions) per trace and
/// topic in a batch, each a child of the command that appended the events; a message carries
/// its span's `traceparent` on, so the consumer's span continues the same trace.
#[derive(Default)]
struct PublishSpans(HashMap<(String, Arc<str>), (tracing::Span, Option<String>)>);

impl PublishSpans {
    fn carry(&mut self, system: &str, traceparent: Option<&str>, message: &mut super::BusMessage) {
        let Some(traceparent) = traceparent else {
            return;
        };
        let key = (traceparent.to_owned(), message.topic.clone());
        let (_, carried) = self.0.entry(key).or_insert_with(|| {
            let span = tracing::info_span!(
                "publish",
                otel.name = format!("send {}", message.topic),
                otel.kind = "producer",
                messaging.system = system,
                messaging.destination.name = %message.topic,
                messaging.operation.type = "send",
                messaging.operation.name = "send",
            );
            continue_trace(&span, Some(traceparent));
            let carried = traceparent_of(&span);
            (span, carried)
        });
        if let Some(carried) = carried {
            for (name, value) in &mut message.headers {
                if name == envelope::TRACEPARENT {
                    value.clone_from(carried);
                }
            }
        }
    }
}

pub struct Relay {
    pub store: Arc<dyn EventStore>,
    pub bus: Arc<dyn EventBus>,
    pub topics: Topics,
    pub cursor: Arc<dyn RelayCursor>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// Told of every turn's outcome, so `/ready` and `/metrics` show when publishing fails
    /// (the relay retries by itself; the breaker never refuses it).
    pub breaker: Arc<crate::breaker::Breaker>,
    /// A call to the cursor (the lease, its advance) without an answer within this is
    /// abandoned and the turn fails, so a connection gone silent cannot stop publishing.
    pub answer_limit: Duration,
}

/// What one turn of the relay did.
enum Turn {
    /// Published this many events.
    Published(usize),
    /// Nothing to publish.
    Idle,
    /// Another instance holds the lease.
    Standby,
}

impl Relay {
    /// Relays until `stop` turns true, then publishes what is committed by then (the
    /// shutdown flush) and returns.
    pub fn spawn(self, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut head = self.store.subscribe_head();
            let mut backoff =
                Backoff::doubling(Duration::from_millis(100), Duration::from_millis(2500));
            // Topics are (re)created before the first batch and after any failure: a broker
            // that lost them (a restarted in-memory broker) gets them back.
            let mut topics_ready = false;
            while !*stop.borrow() {
                head.borrow_and_update();
                let turn = self.turn(&mut topics_ready).await;
                let failure = turn.as_ref().err().map(|e| format!("{e:#}"));
                self.breaker.witness(failure.as_deref());
                // A standing-by instance looks again once a `POLL`, not at every commit: woken
                // by each of the leaseholder's commits it would only find the lease taken, two
                // statements each time (3 000 in a 10 000-seat sale with three instances,
                // BENCHMARKS.md), and a dead holder is taken over within `POLL` either way.
                let standby = matches!(turn, Ok(Turn::Standby));
                let pause = match turn {
                    Ok(Turn::Published(n)) if n == BATCH => continue,
                    Ok(_) => {
                        backoff.reset();
                        POLL
                    }
                    Err(e) => {
                        topics_ready = false;
                        let pause = backoff.next_delay();
                        self.metrics.bus_publish_errors.inc();
                        tracing::warn!(
                            error = format!("{e:#}"),
                            retry_in_ms = pause.as_millis(),
                            "outbox relay: cannot publish; the outbox keeps the events"
                        );
                        pause
                    }
                };
                let woken = async {
                    if standby {
                        tokio::time::sleep(pause).await;
                    } else {
                        _ = tokio::time::timeout(pause, head.changed()).await;
                    }
                };
                tokio::select! {
                    () = woken => {}
                    _ = stop.changed() => {}
                }
            }
            self.flush(&mut topics_ready).await;
        })
    }

    /// Publishes until nothing committed is left, or the first failure.
    async fn flush(&self, topics_ready: &mut bool) {
        loop {
            match self.turn(topics_ready).await {
                Ok(Turn::Published(n)) => tracing::info!(events = n, "outbox relay: flushed"),
                Ok(Turn::Idle | Turn::Standby) => return,
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "outbox relay: cannot flush at shutdown; the outbox keeps the events"
                    );
                    return;
                }
            }
        }
    }

    async fn turn(&self, topics_ready: &mut bool) -> anyhow::Result<Turn> {
        let head = *self.store.subscribe_head().borrow();
        let Some(lease) = self.bounded(self.cursor.lease()).await? else {
            let published = self.bounded(self.cursor.published()).await?;
            self.record_backlog(head, published, None);
            return Ok(Turn::Standby);
        };
        let from = lease.position();
        let events = self.store.read_all(from, BATCH).await?;
        self.record_backlog(head, from, events.first().map(|e| e.recorded_at));
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(Turn::Idle);
        };
        if !*topics_ready {
            self.bus.ensure_topics(&self.topics.all()).await?;
            *topics_ready = true;
        }
        let mut per_topic: HashMap<Arc<str>, u64> = HashMap::new();
        let mut spans = PublishSpans::default();
        let mut messages = Vec::with_capacity(events.len());
        for e in &events {
            let Some(mut message) = envelope::seal(&self.topics, e) else {
                tracing::error!(stream = %e.stream_id, position = e.position,
                    "an event of no known category is not published");
                continue;
            };
            spans.carry(
                self.bus.kind(),
                e.metadata.traceparent.as_deref(),
                &mut message,
            );
            *per_topic.entry(message.topic.clone()).or_default() += 1;
            messages.push(message);
        }
        self.bus.publish(messages).await?;
        // The publish spans end here, at the broker's acknowledgement.
        drop(spans);
        self.bounded(lease.advance(last)).await?;
        for (topic, n) in per_topic {
            self.metrics
                .bus_published
                .with_label_values(&[&topic])
                .inc_by(n);
        }
        self.record_backlog(head.max(last), last, None);
        Ok(Turn::Published(events.len()))
    }

    /// A call to the cursor, abandoned after `answer_limit` (`db::within`).
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let limit = self.answer_limit;
        crate::db::within(limit, call, || {
            anyhow::anyhow!(
                "no answer from the relay's cursor within {} ms",
                limit.as_millis()
            )
        })
        .await
    }

    fn record_backlog(
        &self,
        head: u64,
        published: u64,
        oldest: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        let backlog = head.saturating_sub(published);
        self.metrics
            .outbox_backlog
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        let lag = match oldest {
            Some(at) if backlog > 0 => {
                (self.clock.now() - at).num_milliseconds().max(0) as f64 / 1000.0
            }
            _ => 0.0,
        };
        self.metrics.outbox_publish_lag.set(lag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::domain::EventId;
    use crate::eventstore::memory::MemoryEventStore;
    use crate::eventstore::testing::seats_held;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A cursor another instance always holds; counts the attempts to take it.
    #[derive(Default)]
    struct HeldElsewhere(AtomicUsize);

    #[async_trait]
    impl RelayCursor for HeldElsewhere {
        async fn lease(&self) -> anyhow::Result<Option<Box<dyn Lease>>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        }

        async fn published(&self) -> anyhow::Result<u64> {
            Ok(0)
        }
    }

    /// A relay standing by looks for the lease once a `POLL`, however many commits the
    /// leaseholder makes meanwhile (woken by each, it would look 20 times here).
    #[tokio::test]
    async fn a_standing_by_relay_is_not_woken_by_commits() {
        let store = Arc::new(MemoryEventStore::new());
        let cursor = Arc::new(HeldElsewhere::default());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let (stop, stopped) = watch::channel(false);
        let relay = Relay {
            store: Arc::clone(&store) as Arc<dyn EventStore>,
            bus: Arc::new(super::super::memory::MemoryBus::new()),
            topics: Topics::new("test."),
            cursor: Arc::clone(&cursor) as Arc<dyn RelayCursor>,
            metrics: Arc::new(Metrics::new()),
            clock: Arc::clone(&clock),
            breaker: crate::breaker::Breaker::new("bus", Default::default(), clock),
            answer_limit: Duration::from_secs(3600),
        }
        .spawn(stopped);
        let attempts = || cursor.0.load(Ordering::SeqCst);
        while attempts() == 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let sale = EventId::random();
        for version in 1..=20 {
            let event = seats_held(&format!("inventory-{sale}"), version);
            store.append(sale, vec![event]).await.unwrap();
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }
        // One look per `POLL` begun since the first (a slow machine may take that long).
        let polls = (started.elapsed().as_secs_f64() / POLL.as_secs_f64()).ceil() as usize;
        assert!(
            attempts() <= 1 + polls,
            "20 commits woke the standing-by relay: {} looks in {:?}",
            attempts(),
            started.elapsed()
        );
        tokio::time::timeout(Duration::from_secs(30), async {
            while attempts() < 2 + polls {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("it looks again after a POLL");
        stop.send_replace(true);
        relay.await.unwrap();
    }
}
