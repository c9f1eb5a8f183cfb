//! `Guarded`: an `EventStore` whose appends and reads go through a circuit breaker. After the
//! store failed repeatedly (unreachable, timing out), calls are refused at once with
//! `StoreError::Open` (503 + `Retry-After` at the edge) instead of each waiting for the pool's
//! timeout, until a probe after the cool-down finds it back. Only `Unavailable` counts as a
//! failure: a conflict or a malformed append is an answer. `ping` bypasses the breaker, so
//! `/ready` reports the store itself.

use super::{Decide, EventStore, Known, NewEvent, RecordedEvent, StoreError, TurnMode, Turned};
use crate::breaker::Breaker;
use crate::domain::EventId;
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::watch;

pub struct Guarded {
    inner: Arc<dyn EventStore>,
    breaker: Arc<Breaker>,
}

impl Guarded {
    pub fn new(inner: Arc<dyn EventStore>, breaker: Arc<Breaker>) -> Self {
        Guarded { inner, breaker }
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
        self.breaker
            .call(self.inner.append(sale_id, events), failed)
            .await?
    }

    async fn take_turn(
        &self,
        sale_id: EventId,
        known: Known,
        mode: TurnMode,
        decide: &mut Decide<'_>,
    ) -> Result<Turned, StoreError> {
        self.breaker
            .call(self.inner.take_turn(sale_id, known, mode, decide), failed)
            .await?
    }

    async fn read_sale(
        &self,
        sale_id: EventId,
        after: u64,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        self.breaker
            .call(self.inner.read_sale(sale_id, after), failed)
            .await?
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        self.breaker
            .call(self.inner.read_all(after, limit), failed)
            .await?
    }

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.inner.subscribe_head()
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.breaker.call(self.inner.head(), failed).await?
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

    /// A memory store that fails as unreachable while `down`, counting every call.
    #[derive(Default)]
    struct Flaky {
        inner: MemoryEventStore,
        down: AtomicBool,
        calls: AtomicU64,
    }

    impl Flaky {
        fn enter(&self) -> Result<(), StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl EventStore for Flaky {
        async fn append(&self, sale_id: EventId, events: Vec<NewEvent>) -> Result<u64, StoreError> {
            self.enter()?;
            self.inner.append(sale_id, events).await
        }
        async fn take_turn(
            &self,
            sale_id: EventId,
            known: Known,
            mode: TurnMode,
            decide: &mut Decide<'_>,
        ) -> Result<Turned, StoreError> {
            self.enter()?;
            self.inner.take_turn(sale_id, known, mode, decide).await
        }
        async fn read_sale(
            &self,
            sale_id: EventId,
            after: u64,
        ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
            self.enter()?;
            self.inner.read_sale(sale_id, after).await
        }
        async fn read_all(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
            self.enter()?;
            self.inner.read_all(after, limit).await
        }
        fn subscribe_head(&self) -> watch::Receiver<u64> {
            self.inner.subscribe_head()
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.enter()
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
        let store = Guarded::new(Arc::new(MemoryEventStore::new()), breaker);
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
            let down = store.read_sale(sale, 0).await;
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
        assert_eq!(store.read_sale(sale, 0).await.unwrap().len(), 2);
    }
}
