//! `Guarded`: an `EventStore` whose appends and reads go through a circuit breaker. After the
//! store failed repeatedly (unreachable, timing out), calls are refused at once with
//! `StoreError::Open` (503 + `Retry-After` at the edge) instead of each waiting for the pool's
//! timeout, until a probe after the cool-down finds it back. Only `Unavailable` counts as a
//! failure: a conflict or a malformed append is an answer. `ping` bypasses the breaker, so
//! `/ready` reports the store itself. A call without an answer within its limit (a database
//! gone without a reset) is abandoned as `Unavailable`: a sale's writer then answers 503 and
//! reloads the sale, instead of holding every later command of the sale behind it.

use super::{Decide, EventStore, Known, NewEvent, RecordedEvent, StoreError, TurnMode, Turned};
use crate::breaker::Breaker;
use crate::domain::EventId;
use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct Guarded {
    inner: Arc<dyn EventStore>,
    breaker: Arc<Breaker>,
    limit: Duration,
}

impl Guarded {
    /// `limit`: how long a call may go without an answer (`PoolSettings::answer_limit`).
    pub fn new(inner: Arc<dyn EventStore>, breaker: Arc<Breaker>, limit: Duration) -> Self {
        Guarded {
            inner,
            breaker,
            limit,
        }
    }

    /// `call` through the breaker, abandoned as `Unavailable` once `limit` passed.
    async fn guard<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = self.limit;
        let bounded = crate::db::within(limit, call, move || {
            StoreError::Unavailable(format!(
                "no answer from the event store within {} ms",
                limit.as_millis()
            ))
        });
        self.breaker.call(bounded, failed).await?
    }
}

fn failed(e: &StoreError) -> Option<String> {
    match e {
        StoreError::Unavailable(reason) => Some(reason.clone()),
        _ => None,
    }
}

#[async_trait]
impl EventStore for Guarded {
    async fn append(&self, sale_id: EventId, events: Vec<NewEvent>) -> Result<u64, StoreError> {
        self.guard(self.inner.append(sale_id, events)).await
    }

    async fn take_turn(
        &self,
        sale_id: EventId,
        known: Known,
        mode: TurnMode,
        decide: &mut Decide<'_>,
    ) -> Result<Turned, StoreError> {
        self.guard(self.inner.take_turn(sale_id, known, mode, decide))
            .await
    }

    async fn read_sale(
        &self,
        sale_id: EventId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        self.guard(self.inner.read_sale(sale_id, after, limit))
            .await
    }

    async fn first_of_stream(
        &self,
        stream_id: &str,
    ) -> Result<Option<Arc<RecordedEvent>>, StoreError> {
        self.guard(self.inner.first_of_stream(stream_id)).await
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        self.guard(self.inner.read_all(after, limit)).await
    }

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.inner.subscribe_head()
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.guard(self.inner.head()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{BreakerConfig, BreakerState};
    use crate::clock::{Clock, ManualClock};
    use crate::eventstore::memory::MemoryEventStore;
    use crate::eventstore::Metadata;
    use chrono::{DateTime, Utc};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    const LIMIT: Duration = Duration::from_secs(3600);

    /// A memory store that fails as unreachable while `down`, never answers while `silent`,
    /// counting every call.
    #[derive(Default)]
    struct Flaky {
        inner: MemoryEventStore,
        down: AtomicBool,
        silent: AtomicBool,
        calls: AtomicU64,
    }

    impl Flaky {
        async fn enter(&self) -> Result<(), StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.silent.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl EventStore for Flaky {
        async fn append(&self, sale_id: EventId, events: Vec<NewEvent>) -> Result<u64, StoreError> {
            self.enter().await?;
            self.inner.append(sale_id, events).await
        }
        async fn take_turn(
            &self,
            sale_id: EventId,
            known: Known,
            mode: TurnMode,
            decide: &mut Decide<'_>,
        ) -> Result<Turned, StoreError> {
            self.enter().await?;
            self.inner.take_turn(sale_id, known, mode, decide).await
        }
        async fn read_sale(
            &self,
            sale_id: EventId,
            after: u64,
            limit: usize,
        ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
            self.enter().await?;
            self.inner.read_sale(sale_id, after, limit).await
        }
        async fn first_of_stream(
            &self,
            stream_id: &str,
        ) -> Result<Option<Arc<RecordedEvent>>, StoreError> {
            self.enter().await?;
            self.inner.first_of_stream(stream_id).await
        }
        async fn read_all(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
            self.enter().await?;
            self.inner.read_all(after, limit).await
        }
        fn subscribe_head(&self) -> watch::Receiver<u64> {
            self.inner.subscribe_head()
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.enter().await
        }
        fn kind(&self) -> &'static str {
            "flaky"
        }
    }

    fn event(stream: &str, version: u64) -> NewEvent {
        NewEvent {
            stream_id: stream.into(),
            version,
            event_type: "test.happened",
            event_version: 1,
            payload: vec![1],
            metadata: Metadata::default(),
        }
    }

    /// The decorator is an adapter like the others: it passes the store contract.
    #[tokio::test]
    async fn passes_the_store_contract() {
        let breaker = Breaker::new(
            "event_store",
            BreakerConfig::default(),
            Arc::new(crate::clock::SystemClock),
        );
        let store = Guarded::new(Arc::new(MemoryEventStore::new()), breaker, LIMIT);
        crate::eventstore::contract::run_all(&store).await;
    }

    #[tokio::test]
    async fn a_failing_store_is_refused_at_once_until_a_probe_finds_it_back() {
        let clock = Arc::new(ManualClock::new(
            DateTime::parse_from_rfc3339("2030-01-01T09:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        ));
        let config = BreakerConfig {
            consecutive: 2,
            window: 0,
            cool_down: Duration::from_secs(5),
            ..BreakerConfig::default()
        };
        let breaker = Breaker::new("event_store", config, Arc::clone(&clock) as Arc<dyn Clock>);
        let flaky = Arc::new(Flaky::default());
        let store = Guarded::new(
            Arc::clone(&flaky) as Arc<dyn EventStore>,
            Arc::clone(&breaker),
            LIMIT,
        );
        let sale = EventId(uuid::Uuid::new_v4());

        // A conflict is an answer, not a failure.
        store.append(sale, vec![event("a", 1)]).await.unwrap();
        for _ in 0..3 {
            let conflict = store.append(sale, vec![event("a", 1)]).await;
            assert!(
                matches!(conflict, Err(StoreError::Conflict { .. })),
                "{conflict:?}"
            );
        }
        assert_eq!(breaker.snapshot().state, BreakerState::Closed);

        flaky.down.store(true, Ordering::SeqCst);
        for _ in 0..2 {
            let down = store.read_sale(sale, 0, usize::MAX).await;
            assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
        }
        let calls = flaky.calls.load(Ordering::SeqCst);
        let refused = store.append(sale, vec![event("a", 2)]).await;
        match refused {
            Err(StoreError::Open(refused)) => assert_eq!(refused.retry_after_secs(), 5),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(store.read_all(0, 10).await.is_err());
        assert_eq!(
            flaky.calls.load(Ordering::SeqCst),
            calls,
            "nothing reached the store"
        );
        // The health check still asks the store itself.
        assert!(store.ping().await.is_err());

        flaky.down.store(false, Ordering::SeqCst);
        clock.advance(chrono::Duration::seconds(5));
        store.append(sale, vec![event("a", 2)]).await.unwrap();
        assert_eq!(breaker.snapshot().state, BreakerState::Closed);
        assert_eq!(store.read_sale(sale, 0, usize::MAX).await.unwrap().len(), 2);
    }

    /// A store that stops answering (its connection went silent) fails the call as
    /// `Unavailable` at the limit, and the breaker counts it like any failure.
    #[tokio::test(start_paused = true)]
    async fn a_call_without_an_answer_is_abandoned_at_the_limit() {
        let breaker = Breaker::new(
            "event_store",
            BreakerConfig {
                consecutive: 1,
                window: 0,
                ..BreakerConfig::default()
            },
            Arc::new(crate::clock::SystemClock),
        );
        let flaky = Arc::new(Flaky::default());
        let limit = Duration::from_secs(13);
        let store = Guarded::new(
            Arc::clone(&flaky) as Arc<dyn EventStore>,
            Arc::clone(&breaker),
            limit,
        );
        flaky.silent.store(true, Ordering::SeqCst);
        let began = tokio::time::Instant::now();
        let refused = store
            .append(EventId(uuid::Uuid::new_v4()), vec![event("s-1", 1)])
            .await;
        assert!(
            matches!(&refused, Err(StoreError::Unavailable(reason)) if reason.contains("13000 ms")),
            "{refused:?}"
        );
        assert_eq!(began.elapsed(), limit);
        assert_eq!(breaker.snapshot().state, BreakerState::Open);
    }
}
