//! The consumer's promises, on the in-process bus with a scripted handler: poison goes to the
//! dead letter queue while the partition flows on, transient failures are retried then
//! dead-lettered, later events of a blocked stream are parked and replayed in order once the
//! cause is fixed, and a consumer killed between its commit and its offset changes nothing.

use super::*;
use crate::app::dead_letters::{DeadLetterAdmin, RetryError};
use crate::bus::memory::MemoryBus;
use crate::bus::BusMessage;
use crate::clock::ManualClock;
use crate::dlq::memory::MemoryDeadLetters;
use crate::dlq::DlqStatus;
use crate::domain::events::EventPublished;
use crate::domain::{DomainEvent, EventId, UserId};
use crate::eventstore::{codec, Metadata, RecordedEvent};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Applies everything except the streams it is told are broken.
#[derive(Default)]
struct Scripted {
    applied: Mutex<Vec<(String, u64)>>,
    broken: Mutex<Vec<String>>,
    permanent: AtomicBool,
    /// The next call never answers (its connection went silent).
    silent_once: AtomicBool,
}

#[async_trait]
impl Handler for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn topics(&self) -> &'static [&'static str] {
        &["events"]
    }
    async fn handle(&self, event: &BusEvent) -> Result<Applied, HandlerError> {
        if self.silent_once.swap(false, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.broken.lock().unwrap().contains(&event.stream_id) {
            let e = format!("{} is broken", event.stream_id);
            return Err(if self.permanent.load(Ordering::SeqCst) {
                HandlerError::Permanent(e)
            } else {
                HandlerError::Transient(e)
            });
        }
        let mut applied = self.applied.lock().unwrap();
        let key = (event.stream_id.clone(), event.version);
        if applied.contains(&key) {
            return Ok(Applied::Duplicate);
        }
        applied.push(key);
        Ok(Applied::Applied)
    }
}

pub(super) const TOPIC: &str = "t.events";

pub(super) fn message(sale: EventId, version: u64, position: u64) -> BusMessage {
    let event = DomainEvent::from(EventPublished {
        event_id: sale,
        at: chrono::Utc::now(),
    });
    let new = codec::encode(&event, version, &Metadata::default()).unwrap();
    let recorded = RecordedEvent {
        position,
        sale_id: sale,
        stream_id: new.stream_id,
        version,
        event_type: new.event_type.into(),
        event_version: new.event_version,
        payload: new.payload,
        metadata: Metadata::default(),
        recorded_at: chrono::Utc::now(),
    };
    envelope::seal(&Topics::new("t."), &recorded).unwrap()
}

struct Rig {
    bus: MemoryBus,
    handler: Arc<Scripted>,
    dlq: Arc<MemoryDeadLetters>,
    consumer: Consumer,
}

async fn rig() -> Rig {
    let bus = MemoryBus::new();
    bus.ensure_topics(&[TOPIC.into()]).await.unwrap();
    let handler = Arc::new(Scripted::default());
    let dlq = Arc::new(MemoryDeadLetters::new());
    let consumer = consumer_of(handler.clone(), dlq.clone());
    Rig {
        bus,
        handler,
        dlq,
        consumer,
    }
}

/// A consumer of `handler` with quick retries, dead-lettering to `dlq`.
fn consumer_of(handler: Arc<dyn Handler>, dlq: Arc<MemoryDeadLetters>) -> Consumer {
    Consumer {
        handler,
        dlq,
        metrics: Arc::new(Metrics::new()),
        clock: Arc::new(ManualClock::new(chrono::Utc::now())),
        retry: RetryPolicy {
            attempts: 3,
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        },
        answer_limit: Duration::from_secs(3600),
    }
}

impl Rig {
    /// Receives and settles `n` messages, committing each, as the running consumer does.
    async fn consume(&self, n: usize) -> Vec<Outcome> {
        let mut c = self.bus.subscribe("g", &[TOPIC.into()]).await.unwrap();
        let mut outcomes = Vec::new();
        for _ in 0..n {
            let d = tokio::time::timeout(Duration::from_secs(5), c.next())
                .await
                .unwrap()
                .unwrap();
            outcomes.push(self.consumer.settle(&d).await);
            c.commit(&d).await.unwrap();
        }
        outcomes
    }

    /// The admin's side of the dead letter queue, with the rig's handler.
    fn admin(&self) -> DeadLetterAdmin {
        DeadLetterAdmin::new(
            self.dlq.clone(),
            vec![self.handler.clone() as Arc<dyn Handler>],
            self.consumer.clock.clone(),
        )
    }

    /// Receives `n` messages without settling them: one batch.
    async fn receive(&self, n: usize) -> Vec<Delivery> {
        let mut c = self.bus.subscribe("g", &[TOPIC.into()]).await.unwrap();
        let mut batch = Vec::new();
        for _ in 0..n {
            let next = tokio::time::timeout(Duration::from_secs(5), c.next()).await;
            batch.push(next.unwrap().unwrap());
        }
        batch
    }

    fn outcome_count(&self, outcome: Outcome) -> u64 {
        self.consumer
            .metrics
            .consumer_events
            .with_label_values(&["scripted", outcome.as_str()])
            .get()
    }
}

/// A handler call without an answer (a silent connection) fails as transient once the
/// consumer's `answer_limit` passed, and the retry applies the event: the consumer is not held.
#[tokio::test]
async fn a_handler_call_without_an_answer_is_retried_after_the_limit() {
    let mut rig = rig().await;
    rig.consumer.answer_limit = Duration::from_millis(50);
    rig.handler.silent_once.store(true, Ordering::SeqCst);
    rig.bus
        .publish(vec![message(EventId::random(), 1, 1)])
        .await
        .unwrap();
    let settled = tokio::time::timeout(Duration::from_secs(30), rig.consume(1));
    let outcomes = settled
        .await
        .expect("the consumer was held by a silent call");
    assert_eq!(outcomes, [Outcome::Applied]);
    assert_eq!(rig.handler.applied.lock().unwrap().len(), 1);
}

/// A message nobody can read is dead-lettered at once with its reason, and the next message
/// of the partition is applied.
#[tokio::test]
async fn poison_is_dead_lettered_and_the_partition_flows_on() {
    let rig = rig().await;
    let sale = EventId::random();
    let mut poison = message(sale, 1, 1);
    poison.payload = vec![0xde, 0xad];
    let good = message(sale, 2, 2);
    rig.bus.publish(vec![poison, good]).await.unwrap();

    let outcomes = rig.consume(2).await;
    assert_eq!(outcomes, vec![Outcome::DeadLettered, Outcome::Parked]);
    let entry = rig.dlq.get(1).await.unwrap();
    assert!(entry.error.contains("malformed payload"), "{}", entry.error);
    assert_eq!(entry.event_type.as_deref(), Some("event.published"));
    assert_eq!(entry.retry_count, 0);
    // The second event of the same stream waits behind the poison, not applied out of order.
    assert_eq!(rig.dlq.get(2).await.unwrap().parked_behind, Some(1));
    assert!(rig.handler.applied.lock().unwrap().is_empty());

    // Another stream on the same topic is not held up.
    rig.bus
        .publish(vec![message(EventId::random(), 1, 3)])
        .await
        .unwrap();
    assert_eq!(rig.consume(1).await, vec![Outcome::Applied]);
    assert_eq!(rig.outcome_count(Outcome::DeadLettered), 1);
}

/// A batch settled event by event (the handler takes one at a time) applies a stream's event
/// that comes before that stream's poison message in the batch: only what follows the poison
/// parks behind it.
#[tokio::test]
async fn an_event_before_its_streams_poison_in_a_batch_is_applied() {
    let rig = rig().await;
    let sale = EventId::random();
    let good = message(sale, 1, 1);
    let mut poison = message(sale, 2, 2);
    poison.payload = vec![0xde, 0xad];
    let after = message(sale, 3, 3);
    rig.bus.publish(vec![good, poison, after]).await.unwrap();
    let batch = rig.receive(3).await;

    let outcomes = rig.consumer.settle_batch(&batch, "test").await;
    assert_eq!(
        outcomes,
        vec![Outcome::Applied, Outcome::DeadLettered, Outcome::Parked]
    );
    let stream = rig.handler.applied.lock().unwrap()[0].0.clone();
    assert_eq!(*rig.handler.applied.lock().unwrap(), vec![(stream, 1)]);
}

/// When that earlier event fails too, it is dead-lettered before the poison message: the
/// stream's dead letters are in its order, so the replays after each close apply its events
/// in order (the earlier event first, then, once the poison is discarded, the later one).
#[tokio::test]
async fn a_failing_event_before_its_streams_poison_is_dead_lettered_first() {
    let rig = rig().await;
    let sale = EventId::random();
    let stream = format!("event-{sale}");
    rig.handler.broken.lock().unwrap().push(stream.clone());
    rig.handler.permanent.store(true, Ordering::SeqCst);
    let mut poison = message(sale, 2, 2);
    poison.payload = vec![0xde, 0xad];
    let batch = [message(sale, 1, 1), poison, message(sale, 3, 3)];
    rig.bus.publish(batch.to_vec()).await.unwrap();
    let batch = rig.receive(3).await;

    let outcomes = rig.consumer.settle_batch(&batch, "test").await;
    assert_eq!(
        outcomes,
        vec![
            Outcome::DeadLettered,
            Outcome::DeadLettered,
            Outcome::Parked
        ]
    );
    let first = rig.dlq.get(1).await.unwrap();
    assert!(first.error.contains("is broken"), "{}", first.error);
    assert!(rig.dlq.get(2).await.unwrap().error.contains("malformed"));
    assert_eq!(rig.dlq.get(3).await.unwrap().parked_behind, Some(1));

    rig.handler.broken.lock().unwrap().clear();
    let admin = rig.admin();
    let by = UserId(uuid::Uuid::new_v4());
    admin.retry(1, by).await.unwrap();
    admin.discard(2, by, "unreadable".into()).await.unwrap();
    assert_eq!(
        *rig.handler.applied.lock().unwrap(),
        vec![(stream.clone(), 1), (stream, 3)]
    );
}

/// A transient failure is retried; one that outlasts the retries is dead-lettered with the
/// attempts it took, and a permanent one is dead-lettered at once.
#[tokio::test]
async fn transient_failures_are_retried_then_dead_lettered() {
    let rig = rig().await;
    let sale = EventId::random();
    let stream = format!("event-{sale}");
    rig.handler.broken.lock().unwrap().push(stream.clone());
    rig.bus.publish(vec![message(sale, 1, 1)]).await.unwrap();
    assert_eq!(rig.consume(1).await, vec![Outcome::DeadLettered]);
    let entry = rig.dlq.get(1).await.unwrap();
    assert_eq!(entry.retry_count, 2, "three attempts are two retries");
    assert!(entry.error.contains("is broken"));
    let retries = rig
        .consumer
        .metrics
        .consumer_retries
        .with_label_values(&["scripted"])
        .get();
    assert_eq!(retries, 2);

    let other = EventId::random();
    rig.handler
        .broken
        .lock()
        .unwrap()
        .push(format!("event-{other}"));
    rig.handler.permanent.store(true, Ordering::SeqCst);
    rig.bus.publish(vec![message(other, 1, 2)]).await.unwrap();
    assert_eq!(rig.consume(1).await, vec![Outcome::DeadLettered]);
    assert_eq!(rig.dlq.get(2).await.unwrap().retry_count, 0);
}

/// Once the cause is fixed, retrying the first entry applies it and replays the entries
/// parked behind it, in stream order; a retry that fails again records the new error.
#[tokio::test]
async fn a_retry_after_the_fix_applies_the_stream_in_order() {
    let rig = rig().await;
    let sale = EventId::random();
    let stream = format!("event-{sale}");
    rig.handler.broken.lock().unwrap().push(stream.clone());
    rig.handler.permanent.store(true, Ordering::SeqCst);
    rig.bus
        .publish(vec![
            message(sale, 1, 1),
            message(sale, 2, 2),
            message(sale, 3, 3),
        ])
        .await
        .unwrap();
    assert_eq!(
        rig.consume(3).await,
        vec![Outcome::DeadLettered, Outcome::Parked, Outcome::Parked]
    );
    let service = rig.admin();
    let admin = UserId(uuid::Uuid::new_v4());

    // A parked entry cannot jump the queue.
    assert!(matches!(
        service.retry(2, admin).await,
        Err(RetryError::Dlq(DlqError::Blocked { behind: 1, .. }))
    ));
    // Still broken: the retry fails, the entry stays pending with one more retry.
    let Err(RetryError::Failed(failed)) = service.retry(1, admin).await else {
        panic!("a retry of a still broken handler must fail");
    };
    assert_eq!((failed.status, failed.retry_count), (DlqStatus::Pending, 1));

    rig.handler.broken.lock().unwrap().clear();
    let resolved = service.retry(1, admin).await.unwrap();
    assert_eq!(resolved.status, DlqStatus::Resolved);
    assert_eq!(resolved.resolved_by, Some(admin.0));
    for id in [2, 3] {
        assert_eq!(rig.dlq.get(id).await.unwrap().status, DlqStatus::Resolved);
    }
    assert_eq!(
        *rig.handler.applied.lock().unwrap(),
        vec![(stream.clone(), 1), (stream.clone(), 2), (stream, 3)],
        "the stream is applied in order"
    );
}

/// A head closed without its followers replayed (the admin's request was cut short after the
/// close) strands its stream; the sweep replays the followers in order once the close is older
/// than the claim timeout, not before (a replay may still be running then).
#[tokio::test]
async fn followers_of_a_head_closed_without_their_replay_are_replayed_by_the_sweep() {
    let rig = rig().await;
    let sale = EventId::random();
    let stream = format!("event-{sale}");
    rig.handler.broken.lock().unwrap().push(stream.clone());
    rig.handler.permanent.store(true, Ordering::SeqCst);
    let messages = (1..=3).map(|v| message(sale, v, v)).collect();
    rig.bus.publish(messages).await.unwrap();
    assert_eq!(
        rig.consume(3).await,
        vec![Outcome::DeadLettered, Outcome::Parked, Outcome::Parked]
    );
    rig.handler.broken.lock().unwrap().clear();
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let service = DeadLetterAdmin::new(
        rig.dlq.clone(),
        vec![rig.handler.clone() as Arc<dyn Handler>],
        clock.clone(),
    );
    let closing = crate::dlq::Closing {
        status: DlqStatus::Resolved,
        by: None,
        notes: Some("fixed by hand".into()),
        at: clock.now(),
    };
    rig.dlq.close(1, DlqStatus::Pending, closing).await.unwrap();

    assert_eq!(
        service.release_stranded().await.unwrap(),
        0,
        "closed just now"
    );
    assert!(rig.handler.applied.lock().unwrap().is_empty());
    clock.advance(crate::dlq::CLAIM_TIMEOUT + chrono::Duration::seconds(1));
    assert_eq!(service.release_stranded().await.unwrap(), 1);
    for id in [2, 3] {
        assert_eq!(rig.dlq.get(id).await.unwrap().status, DlqStatus::Resolved);
    }
    assert_eq!(
        *rig.handler.applied.lock().unwrap(),
        vec![(stream.clone(), 2), (stream, 3)],
        "the stream's followers are applied in order"
    );
    assert_eq!(service.release_stranded().await.unwrap(), 0);
}

/// The next delivery; a broker needs a few seconds for a group to form.
async fn next_within(consumer: &mut dyn BusConsumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(60), consumer.next())
        .await
        .expect("a delivery within a minute")
        .expect("the bus delivers")
}

/// A consumer killed after the handler's commit but before the offset commit gets the event
/// again on restart, and the read model does not change.
async fn killed_before_the_offset_commit(
    bus: &dyn EventBus,
    insights: Arc<dyn crate::projections::insights::Insights>,
    prefix: &str,
) {
    use crate::projections::insights::InsightsProjection;
    let topics = Topics::new(prefix);
    bus.ensure_topics(&topics.all()).await.unwrap();
    let consumer = Consumer {
        handler: Arc::new(InsightsProjection(insights.clone())),
        dlq: Arc::new(MemoryDeadLetters::new()),
        metrics: Arc::new(Metrics::new()),
        clock: Arc::new(ManualClock::new(chrono::Utc::now())),
        retry: RetryPolicy::default(),
        answer_limit: Duration::from_secs(3600),
    };
    let log: Vec<BusMessage> = crate::projections::contract::fixture::history()
        .iter()
        .filter_map(|e| envelope::seal(&topics, e))
        .filter(|m| envelope::open(m).is_ok())
        .filter(|m| m.topic.ends_with("events") || m.topic.ends_with("reservations"))
        .collect();
    let n = log.len();
    bus.publish(log).await.unwrap();
    let names = vec![topics.named("events"), topics.named("reservations")];
    let group = format!("{prefix}insights");

    // First life: everything handled, nothing committed (killed before each offset commit).
    let mut first = bus.subscribe(&group, &names).await.unwrap();
    for _ in 0..n {
        let d = next_within(first.as_mut()).await;
        assert_eq!(consumer.settle(&d).await, Outcome::Applied);
    }
    let show = crate::projections::contract::fixture::SHOW;
    let carol = crate::projections::contract::fixture::CAROL;
    let page = crate::paging::PageRequest::default();
    let before = (
        insights.sales(show).await.unwrap(),
        insights.history(carol, page).await.unwrap(),
    );
    assert!(before.0.is_some());
    drop(first);

    // Second life: the same events come again and change nothing.
    let mut second = bus.subscribe(&group, &names).await.unwrap();
    for _ in 0..n {
        let d = next_within(second.as_mut()).await;
        assert_eq!(consumer.settle(&d).await, Outcome::Duplicate);
        second.commit(&d).await.unwrap();
    }
    let after = (
        insights.sales(show).await.unwrap(),
        insights.history(carol, page).await.unwrap(),
    );
    assert_eq!(after, before);
}

#[tokio::test]
async fn a_consumer_killed_before_its_offset_commit_changes_nothing_on_restart() {
    use crate::projections::insights::memory::MemoryInsights;
    let insights = Arc::new(MemoryInsights::new());
    killed_before_the_offset_commit(&MemoryBus::new(), insights, "t.").await;
}

/// The same on Kafka and PostgreSQL.
#[tokio::test]
async fn a_kafka_consumer_killed_before_its_offset_commit_changes_nothing_on_restart() {
    use crate::projections::insights::postgres::PostgresInsights;
    let url = crate::db::testing::fresh_database().await;
    let pool = crate::db::connect(&url, &crate::db::PoolSettings::default())
        .await
        .unwrap();
    crate::db::projections_migrator().run(&pool).await.unwrap();
    let brokers = crate::bus::kafka::testing::brokers().await;
    let bus = crate::bus::kafka::KafkaBus::new(&brokers).unwrap();
    let prefix = format!("killed{}.", uuid::Uuid::new_v4().simple());
    killed_before_the_offset_commit(&bus, Arc::new(PostgresInsights::new(pool)), &prefix).await;
}

/// A poll that brought one message waits `LINGER` for more: messages published one at a time
/// just after it join its batch (without the wait each would be a batch of its own), in order,
/// and none is lost when the wait ends mid-poll.
#[tokio::test]
async fn a_small_poll_lingers_for_more_messages() {
    let bus = Arc::new(MemoryBus::new());
    bus.ensure_topics(&[TOPIC.into()]).await.unwrap();
    let mut c = bus.subscribe("g", &[TOPIC.into()]).await.unwrap();
    let sale = EventId::random();
    bus.publish(vec![message(sale, 1, 1)]).await.unwrap();
    let first = c.next_batch(BATCH).await.unwrap();
    assert_eq!(first.len(), 1);
    let publisher = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move {
            for version in 2..=6 {
                tokio::task::yield_now().await;
                bus.publish(vec![message(sale, version, version)])
                    .await
                    .unwrap();
            }
        })
    };
    let batch = linger(c.as_mut(), first).await;
    publisher.await.unwrap();
    let offsets = |b: &[Delivery]| b.iter().map(|d| d.offset).collect::<Vec<_>>();
    assert!(
        batch.len() > 1,
        "the poll waited for more: {:?}",
        offsets(&batch)
    );
    let mut all = batch;
    while all.len() < 6 {
        let more = tokio::time::timeout(Duration::from_secs(5), c.next_batch(BATCH))
            .await
            .unwrap()
            .unwrap();
        all.extend(more);
    }
    let first_offset = all[0].offset;
    assert_eq!(
        offsets(&all),
        (first_offset..first_offset + 6).collect::<Vec<_>>()
    );
}

/// A version gap end to end, on the real insights consumer: a stream's v1 applied, v2 never
/// delivered (a broker lost it), v3 dead-lettered with the gap as its reason and v4 parked
/// behind it. An admin who accepts the loss discards v3: its version is recorded, and v4 is
/// replayed and applied rather than refused for the gap the discard would otherwise leave.
#[tokio::test]
async fn a_version_gap_is_dead_lettered_and_a_discard_lets_the_stream_go_on() {
    use crate::projections::insights::{memory::MemoryInsights, InsightsProjection};
    let bus = MemoryBus::new();
    bus.ensure_topics(&[TOPIC.into()]).await.unwrap();
    let handler: Arc<dyn Handler> = Arc::new(InsightsProjection(Arc::new(MemoryInsights::new())));
    let dlq = Arc::new(MemoryDeadLetters::new());
    let rig = Rig {
        bus,
        handler: Arc::new(Scripted::default()),
        dlq: dlq.clone(),
        consumer: consumer_of(handler.clone(), dlq.clone()),
    };
    let sale = EventId::random();
    let messages = [1, 3, 4].into_iter().map(|v| message(sale, v, v)).collect();
    rig.bus.publish(messages).await.unwrap();
    assert_eq!(
        rig.consume(3).await,
        vec![Outcome::Applied, Outcome::DeadLettered, Outcome::Parked]
    );
    let gap = dlq.get(1).await.unwrap();
    assert!(gap.error.contains("version gap"), "{}", gap.error);

    let admin = DeadLetterAdmin::new(
        dlq.clone(),
        vec![handler.clone()],
        rig.consumer.clock.clone(),
    );
    admin
        .discard(
            1,
            UserId(uuid::Uuid::new_v4()),
            "v2 was lost by the broker".into(),
        )
        .await
        .unwrap();
    let follower = dlq.get(2).await.unwrap();
    assert_eq!(follower.status, DlqStatus::Resolved, "{}", follower.error);
    let again = envelope::open(&message(sale, 4, 4)).unwrap();
    assert_eq!(handler.handle(&again).await.unwrap(), Applied::Duplicate);
}
