//! The fan-out's message ids, and its batches: one look-up of endpoints and one `enqueue` per
//! batch, whatever the number of events, with each endpoint hearing exactly the events after
//! its `from_position`; a redelivered batch stores nothing new.

use super::*;
use crate::bus::consumer::{Consumer, Outcome, RetryPolicy};
use crate::bus::{envelope, Delivery as BusDelivery, Topics};
use crate::clock::SystemClock;
use crate::dlq::memory::MemoryDeadLetters;
use crate::observability::Metrics;
use crate::paging::{Page, PageRequest};
use crate::projections::contract::fixture::history;
use crate::projections::memory::MemoryReadModel;
use crate::projections::{EventLookup, ProjectionWriter};
use crate::runtime::subscription::Progress;
use crate::webhooks::dispatch::DeliverySettings;
use crate::webhooks::memory::MemoryWebhooks;
use crate::webhooks::{Attempt, EndpointStatus};
use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// One id per (event, endpoint): stable across calls, different for another endpoint or
/// another event.
#[test]
fn message_ids_are_stable_per_event_and_endpoint() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        message_id("reservation-1", 2, a),
        message_id("reservation-1", 2, a)
    );
    assert_ne!(
        message_id("reservation-1", 2, a),
        message_id("reservation-1", 2, b)
    );
    assert_ne!(
        message_id("reservation-1", 2, a),
        message_id("reservation-1", 3, a)
    );
    assert!(message_id("payment-1", 1, a).starts_with("msg_"));
}

/// A webhook store that counts the fan-out's calls.
struct Counted {
    inner: MemoryWebhooks,
    lookups: AtomicUsize,
    enqueues: AtomicUsize,
}

#[async_trait]
impl WebhookStore for Counted {
    async fn create(&self, endpoint: &Endpoint) -> Result<(), WebhookError> {
        self.inner.create(endpoint).await
    }
    async fn get(&self, id: Uuid) -> Result<Option<Endpoint>, WebhookError> {
        self.inner.get(id).await
    }
    async fn list(
        &self,
        owner: Option<Uuid>,
        page: PageRequest,
    ) -> Result<Page<Endpoint>, WebhookError> {
        self.inner.list(owner, page).await
    }
    async fn delete(&self, id: Uuid) -> Result<bool, WebhookError> {
        self.inner.delete(id).await
    }
    async fn rotate(
        &self,
        id: Uuid,
        secret: &str,
        previous_until: DateTime<Utc>,
    ) -> Result<Option<Endpoint>, WebhookError> {
        self.inner.rotate(id, secret, previous_until).await
    }
    async fn set_status(&self, id: Uuid, status: EndpointStatus) -> Result<(), WebhookError> {
        self.inner.set_status(id, status).await
    }
    async fn subscribers(&self, owners: &[Uuid]) -> Result<Vec<Endpoint>, WebhookError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.subscribers(owners).await
    }
    async fn enqueue(&self, deliveries: &[Delivery]) -> Result<Vec<Delivery>, WebhookError> {
        self.enqueues.fetch_add(1, Ordering::SeqCst);
        self.inner.enqueue(deliveries).await
    }
    async fn pending(
        &self,
        endpoint: Uuid,
        limit: u32,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Delivery>, WebhookError> {
        self.inner.pending(endpoint, limit, now).await
    }
    async fn claim(
        &self,
        delivery: Uuid,
        holder: Uuid,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, WebhookError> {
        self.inner.claim(delivery, holder, now, until).await
    }
    async fn endpoints_with_pending(&self) -> Result<Vec<Uuid>, WebhookError> {
        self.inner.endpoints_with_pending().await
    }
    async fn pending_count(&self) -> Result<u64, WebhookError> {
        self.inner.pending_count().await
    }
    async fn record_attempt(
        &self,
        delivery: Uuid,
        holder: Uuid,
        attempt: Attempt,
    ) -> Result<bool, WebhookError> {
        self.inner.record_attempt(delivery, holder, attempt).await
    }
    async fn deliveries(
        &self,
        endpoint: Uuid,
        page: PageRequest,
    ) -> Result<Page<Delivery>, WebhookError> {
        self.inner.deliveries(endpoint, page).await
    }
    async fn redeliver(
        &self,
        endpoint: Uuid,
        delivery: Uuid,
    ) -> Result<Option<Delivery>, WebhookError> {
        self.inner.redeliver(endpoint, delivery).await
    }
}

/// An endpoint of `owner` for every type, registered when the log was at `from_position`.
/// Its URL refuses connections (the dispatcher's attempts fail; they are not under test).
fn endpoint(owner: Uuid, from_position: u64) -> Endpoint {
    Endpoint {
        id: Uuid::new_v4(),
        owner_id: owner,
        url: "http://127.0.0.1:9/hook".into(),
        event_types: vec!["*".into()],
        event_id: None,
        description: None,
        status: EndpointStatus::Active,
        secret: crate::webhooks::signing::new_secret(),
        previous_secret: None,
        created_at: Utc::now(),
        from_position,
    }
}

/// The fixture's log as one poll's worth of the fan-out's topics, and the read models after it.
async fn fixture_batch() -> (Vec<BusDelivery>, Arc<MemoryReadModel>) {
    let reads = Arc::new(MemoryReadModel::new());
    let log = history();
    reads.apply(&log).await.unwrap();
    let topics = Topics::new("t.");
    let wanted: Vec<String> = WebhookFanout::TOPICS
        .iter()
        .map(|t| topics.named(t))
        .collect();
    let batch = log
        .iter()
        .filter_map(|e| envelope::seal(&topics, e))
        .filter(|m| wanted.iter().any(|t| **t == *m.topic) && envelope::open(m).is_ok())
        .zip(0..)
        .map(|(message, offset)| BusDelivery {
            message: std::sync::Arc::new(message),
            partition: 0,
            offset,
        })
        .collect();
    (batch, reads)
}

/// A whole poll's worth of events costs one look-up of endpoints and one `enqueue` (the
/// per-event fan-out made one of each per deliverable event); the organizer's endpoints get
/// exactly the events after their `from_position`, another organizer's nothing; the same batch
/// again stores nothing and answers duplicates; with no endpoint at all, one look-up and no
/// `enqueue`.
#[tokio::test]
async fn a_batch_costs_one_lookup_and_one_enqueue() {
    let (batch, reads) = fixture_batch().await;
    let events: Vec<BusEvent> = batch
        .iter()
        .map(|d| envelope::open(&d.message).unwrap())
        .collect();
    let deliverable: Vec<&BusEvent> = events.iter().filter(|e| deliverable(&e.event)).collect();
    assert!(deliverable.len() > 3, "the fixture has deliverable events");
    let organizer = reads
        .event(crate::domain::EventId(deliverable[0].sale_id.0))
        .await
        .unwrap()
        .unwrap()
        .owner_id;
    let mut of_organizer: Vec<&BusEvent> = Vec::new();
    for e in &deliverable {
        let sale = crate::domain::EventId(e.sale_id.0);
        if reads.event(sale).await.unwrap().unwrap().owner_id == organizer {
            of_organizer.push(e);
        }
    }
    let middle = of_organizer[of_organizer.len() / 2].position;

    let store = Arc::new(Counted {
        inner: MemoryWebhooks::default(),
        lookups: AtomicUsize::new(0),
        enqueues: AtomicUsize::new(0),
    });
    let consumer = |store: Arc<Counted>| {
        let metrics = Arc::new(Metrics::new());
        let settings = DeliverySettings {
            max_attempts: 1,
            ..DeliverySettings::default()
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let dispatcher =
            Dispatcher::new(store.clone(), clock.clone(), metrics.clone(), settings).unwrap();
        Consumer {
            handler: Arc::new(WebhookFanout::new(
                store,
                reads.clone(),
                Progress::manual(u64::MAX).1,
                dispatcher,
                clock.clone(),
            )),
            dlq: Arc::new(MemoryDeadLetters::new()),
            metrics,
            clock,
            retry: RetryPolicy::default(),
            answer_limit: std::time::Duration::from_secs(3600),
        }
    };

    // No endpoint registered: one look-up, nothing stored.
    let fanout = consumer(store.clone());
    let outcomes = fanout.settle_batch(&batch, "test").await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Applied),
        "{outcomes:?}"
    );
    assert_eq!(store.lookups.load(Ordering::SeqCst), 1);
    assert_eq!(store.enqueues.load(Ordering::SeqCst), 0);

    let early = endpoint(organizer, 0);
    let late = endpoint(organizer, middle);
    let stranger = endpoint(Uuid::new_v4(), 0);
    for e in [&early, &late, &stranger] {
        store.create(e).await.unwrap();
    }
    let outcomes = fanout.settle_batch(&batch, "test").await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Applied),
        "{outcomes:?}"
    );
    assert_eq!(
        store.lookups.load(Ordering::SeqCst),
        2,
        "one look-up per batch"
    );
    assert_eq!(
        store.enqueues.load(Ordering::SeqCst),
        1,
        "one enqueue per batch"
    );
    let heard = |endpoint: Uuid| {
        let store = store.clone();
        async move {
            let mut ids: Vec<String> = store
                .inner
                .deliveries(
                    endpoint,
                    PageRequest {
                        page: 1,
                        page_size: 1000,
                    },
                )
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|d| d.message_id)
                .collect();
            ids.sort();
            ids
        }
    };
    let expected = |from: u64, endpoint: Uuid| {
        let mut ids: Vec<String> = of_organizer
            .iter()
            .filter(|e| e.position > from)
            .map(|e| message_id(&e.stream_id, e.version, endpoint))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(heard(early.id).await, expected(0, early.id));
    assert_eq!(heard(late.id).await, expected(middle, late.id));
    assert!(heard(late.id).await.len() < heard(early.id).await.len());
    assert!(heard(stranger.id).await.is_empty(), "another organizer's");

    // Redelivered: duplicates for the events that had deliveries, nothing new stored.
    let outcomes = fanout.settle_batch(&batch, "test").await;
    assert_eq!(store.lookups.load(Ordering::SeqCst), 3);
    assert_eq!(store.enqueues.load(Ordering::SeqCst), 2);
    for (event, outcome) in events.iter().zip(&outcomes) {
        let had = of_organizer.iter().any(|e| e.position == event.position);
        let want = if had {
            Outcome::Duplicate
        } else {
            Outcome::Applied
        };
        assert_eq!(*outcome, want, "{} v{}", event.stream_id, event.version);
    }
    assert_eq!(heard(early.id).await, expected(0, early.id));
}

/// The fan-out reads the views it sends only once the read models applied the events it
/// describes (they follow the log on their own), or after `SHOWN_WITHIN`: a delivery carries
/// the state the event made, not the one before.
#[tokio::test(start_paused = true)]
async fn views_are_read_once_the_read_models_applied_the_batch() {
    let (batch, reads) = fixture_batch().await;
    let events: Vec<BusEvent> = batch
        .iter()
        .map(|d| envelope::open(&d.message).unwrap())
        .collect();
    let last = events.iter().map(|e| e.position).max().unwrap();
    let first = events.iter().find(|e| deliverable(&e.event)).unwrap();
    let organizer = reads
        .event(crate::domain::EventId(first.sale_id.0))
        .await
        .unwrap()
        .unwrap()
        .owner_id;
    let store = Arc::new(MemoryWebhooks::default());
    store.create(&endpoint(organizer, 0)).await.unwrap();
    let fanout = |applied: u64| {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let metrics = Arc::new(Metrics::new());
        let dispatcher =
            Dispatcher::new(store.clone(), clock.clone(), metrics, Default::default()).unwrap();
        let (progress, applied) = Progress::manual(applied);
        let fanout = WebhookFanout::new(store.clone(), reads.clone(), applied, dispatcher, clock);
        (progress, Arc::new(fanout))
    };

    // Applied already: no wait.
    let (_progress, ahead) = fanout(last);
    let started = tokio::time::Instant::now();
    ahead.handle_batch(&events).await.unwrap().unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);

    // Behind: the views are read when the read models reach the batch's last event.
    let (progress, behind) = fanout(0);
    let started = tokio::time::Instant::now();
    let handling = tokio::spawn(async move { behind.handle_batch(&events).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !handling.is_finished(),
        "read before the read models applied it"
    );
    progress.send_replace(last);
    handling.await.unwrap().unwrap().unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}
