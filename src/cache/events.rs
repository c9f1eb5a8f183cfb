//! Cache-aside of event views, the one policy over any `Cache` adapter. `GET /api/events/{id}`
//! and `GET /api/events/{id}/availability` both read the event's view through `EventCache`
//! (the metric label says which asked). Freshness: the projector calls
//! `Invalidator::invalidate` after a batch is applied and before it publishes progress, and
//! every entry is stamped with the projector position seen *before* its load; an entry whose
//! stamp is below the last invalidation of its event is refused. A client whose command was
//! acknowledged (after progress reached it) can therefore never read an older state through
//! this instance, even when a slow loader writes back a stale view after the invalidation.
//! Stampedes: one load per key at a time per instance (single flight). Degradation: a failing
//! or slow cache counts an error, opens a short breaker, and the read goes to PostgreSQL.

use super::{Cache, CacheError};
use crate::domain::EventId;
use crate::observability::Metrics;
use crate::projections::{EventView, ReadError, ReadModel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// After a cache failure, how long reads skip the cache and go straight to PostgreSQL, so a
/// down or slow Redis costs one timeout per this period rather than one per request.
const BREAKER: Duration = Duration::from_secs(1);
/// Invalidation marks are swept when there are more than this many.
const SWEEP_MARKS_ABOVE: usize = 1024;

/// Which read asked: the `cache` label of `ticketing_cache_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheName {
    Events,
    Availability,
}

impl CacheName {
    fn label(self) -> &'static str {
        match self {
            CacheName::Events => "events",
            CacheName::Availability => "availability",
        }
    }
}

fn key(id: Uuid) -> String {
    format!("event:{id}")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the projector and the readers share: the cache, the last invalidation position per
/// event (kept for two TTLs, longer than any entry it must refuse can live), and the breaker.
pub struct Invalidator {
    cache: Arc<dyn Cache>,
    marks: Mutex<HashMap<Uuid, (u64, Instant)>>,
    keep_marks: Duration,
    open_until: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

impl Invalidator {
    pub fn new(cache: Arc<dyn Cache>, ttl: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Invalidator {
            cache,
            marks: Mutex::new(HashMap::new()),
            keep_marks: ttl * 2 + Duration::from_secs(10),
            open_until: Mutex::new(None),
            metrics,
        })
    }

    pub fn cache(&self) -> &Arc<dyn Cache> {
        &self.cache
    }

    /// The events in `ids` changed at `position`: refuse their older entries from now on and
    /// delete them from the cache. Call it after the change is visible in the read models and
    /// before progress past `position` is published. Never fails: a cache error is logged
    /// (this instance's readers are still protected by the marks; other instances' entries
    /// end by TTL).
    pub async fn invalidate(&self, ids: &[EventId], position: u64) {
        if ids.is_empty() {
            return;
        }
        {
            let now = Instant::now();
            let mut marks = lock(&self.marks);
            if marks.len() > SWEEP_MARKS_ABOVE {
                let keep = self.keep_marks;
                marks.retain(|_, (_, at)| now.duration_since(*at) < keep);
            }
            for id in ids {
                let mark = marks.entry(id.0).or_insert((0, now));
                *mark = (mark.0.max(position), now);
            }
        }
        if self.is_open() {
            return;
        }
        let keys: Vec<String> = ids.iter().map(|id| key(id.0)).collect();
        if let Err(e) = self.cache.delete(&keys).await {
            self.trip(&e, "invalidate");
        }
    }

    fn mark(&self, id: Uuid) -> u64 {
        lock(&self.marks)
            .get(&id)
            .map_or(0, |(position, _)| *position)
    }

    fn is_open(&self) -> bool {
        lock(&self.open_until).is_some_and(|until| Instant::now() < until)
    }

    fn trip(&self, error: &CacheError, during: &'static str) {
        *lock(&self.open_until) = Some(Instant::now() + BREAKER);
        tracing::warn!(%error, during, "cache failed; reading from PostgreSQL for a while");
    }

    fn count(&self, name: CacheName, result: &'static str) {
        self.metrics
            .cache_requests
            .with_label_values(&[name.label(), result])
            .inc();
    }
}

/// A cached view with the projector position seen before it was loaded.
#[derive(Serialize, Deserialize)]
struct Entry {
    seen: u64,
    view: EventView,
}

/// Event views through the cache.
pub struct EventCache {
    shared: Arc<Invalidator>,
    reads: Arc<dyn ReadModel>,
    /// The projector's published position (`Progress::position`).
    position: Box<dyn Fn() -> u64 + Send + Sync>,
    ttl: Duration,
    /// `false`: every read goes to the read models (`CACHE_ENABLED=false`, for measuring).
    enabled: bool,
    /// One async lock per key being loaded (single flight); removed when no one waits.
    loading: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

impl EventCache {
    pub fn new(
        shared: Arc<Invalidator>,
        reads: Arc<dyn ReadModel>,
        position: impl Fn() -> u64 + Send + Sync + 'static,
        ttl: Duration,
        enabled: bool,
    ) -> Self {
        EventCache {
            shared,
            reads,
            position: Box::new(position),
            ttl,
            enabled,
            loading: Mutex::new(HashMap::new()),
        }
    }

    pub fn cache(&self) -> &Arc<dyn Cache> {
        self.shared.cache()
    }

    /// The event's view: from the cache when it holds a fresh entry, else from the read
    /// models (one load per key at a time), stored for the next reader. A cache failure
    /// is counted and answered from the read models.
    pub async fn event(
        &self,
        id: EventId,
        name: CacheName,
    ) -> Result<Option<EventView>, ReadError> {
        let shared = &self.shared;
        if !self.enabled {
            return self.read_model(id).await;
        }
        if shared.is_open() {
            shared.count(name, "error");
            return self.read_model(id).await;
        }
        match self.lookup(id.0).await {
            Ok(Some(view)) => {
                shared.count(name, "hit");
                return Ok(Some(view));
            }
            Ok(None) => shared.count(name, "miss"),
            Err(e) => {
                shared.count(name, "error");
                shared.trip(&e, "get");
                return self.read_model(id).await;
            }
        }
        let flight = Arc::clone(lock(&self.loading).entry(id.0).or_default());
        let loaded = {
            let _turn = flight.lock().await;
            self.load(id).await
        };
        let mut loading = lock(&self.loading);
        // Two references (the map's and ours) means nobody else waits on this key.
        if Arc::strong_count(&flight) == 2 {
            loading.remove(&id.0);
        }
        loaded
    }

    /// Under the key's turn: a fresh entry another loader stored meanwhile, or a load.
    async fn load(&self, id: EventId) -> Result<Option<EventView>, ReadError> {
        if !self.shared.is_open() {
            if let Ok(Some(view)) = self.lookup(id.0).await {
                return Ok(Some(view));
            }
        }
        // Read the position first: the view loaded next reflects at least this much.
        let seen = (self.position)();
        let view = self.read_model(id).await?;
        if let Some(view) = &view {
            if !self.shared.is_open() {
                self.store(id.0, seen, view).await;
            }
        }
        Ok(view)
    }

    async fn read_model(&self, id: EventId) -> Result<Option<EventView>, ReadError> {
        self.shared.metrics.event_view_loads.inc();
        self.reads.event(id).await
    }

    async fn lookup(&self, id: Uuid) -> Result<Option<EventView>, CacheError> {
        let Some(bytes) = self.shared.cache.get(&key(id)).await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<Entry>(&bytes) {
            // Loaded at or after the last change this instance saw: fresh.
            Ok(entry) if entry.seen >= self.shared.mark(id) => Ok(Some(entry.view)),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, event_id = %id, "unreadable cache entry; reloading");
                Ok(None)
            }
        }
    }

    async fn store(&self, id: Uuid, seen: u64, view: &EventView) {
        let entry = Entry {
            seen,
            view: view.clone(),
        };
        let bytes = match serde_json::to_vec(&entry) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a cache entry");
                return;
            }
        };
        if let Err(e) = self.shared.cache.set(&key(id), bytes, self.ttl).await {
            self.shared.trip(&e, "set");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::memory::MemoryCache;
    use crate::domain::concert::EventStatus;
    use crate::domain::{PaymentId, ReservationId, UserId};
    use crate::eventstore::RecordedEvent;
    use crate::projections::*;
    use async_trait::async_trait;
    use chrono::{TimeZone, Utc};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn view(id: Uuid, sold: u32) -> EventView {
        let at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        EventView {
            id,
            owner_id: Uuid::nil(),
            name: "Gig".into(),
            description: None,
            venue: VenueView {
                name: "Hall".into(),
                address: "1 Main St".into(),
            },
            starts_at: at,
            ends_at: at,
            currency: "USD".into(),
            status: EventStatus::OnSale,
            sections: vec![SectionView {
                name: "floor".into(),
                capacity: 100,
                price_cents: 100,
                available: 100 - sold,
                held: 0,
                sold,
            }],
            version: u64::from(sold),
            created_at: at,
            updated_at: at,
        }
    }

    /// A read model whose event reads count and, while `gate` is closed, wait.
    struct Counting {
        sold: AtomicU64,
        loads: AtomicU64,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl ReadModel for Counting {
        async fn apply(&self, _: &[Arc<RecordedEvent>]) -> anyhow::Result<()> {
            unimplemented!()
        }
        async fn checkpoint(&self) -> anyhow::Result<u64> {
            unimplemented!()
        }
        async fn reset(&self) -> anyhow::Result<()> {
            unimplemented!()
        }
        async fn event(&self, id: EventId) -> Result<Option<EventView>, ReadError> {
            // Read the state first, then wait at the gate: a slow load of an old state.
            let sold = self.sold.load(Ordering::SeqCst);
            self.loads.fetch_add(1, Ordering::SeqCst);
            let _pass = self.gate.acquire().await.unwrap();
            Ok(Some(view(id.0, u32::try_from(sold).unwrap())))
        }
        async fn events(
            &self,
            _: &EventQuery,
            _: PageRequest,
        ) -> Result<Page<EventView>, ReadError> {
            unimplemented!()
        }
        async fn reservation(
            &self,
            _: ReservationId,
        ) -> Result<Option<ReservationView>, ReadError> {
            unimplemented!()
        }
        async fn reservations(
            &self,
            _: Option<UserId>,
            _: PageRequest,
        ) -> Result<Page<ReservationView>, ReadError> {
            unimplemented!()
        }
        async fn payment(&self, _: PaymentId) -> Result<Option<PaymentView>, ReadError> {
            unimplemented!()
        }
        async fn payments_of(
            &self,
            _: UserId,
            _: PageRequest,
        ) -> Result<Page<PaymentView>, ReadError> {
            unimplemented!()
        }
        async fn pending_holds(&self) -> Result<Vec<PendingHold>, ReadError> {
            unimplemented!()
        }
        async fn ping(&self) -> Result<(), ReadError> {
            Ok(())
        }
        fn kind(&self) -> &'static str {
            "counting"
        }
    }

    struct Fixture {
        reads: Arc<Counting>,
        position: Arc<AtomicU64>,
        shared: Arc<Invalidator>,
        cache: Arc<EventCache>,
        metrics: Arc<Metrics>,
    }

    fn fixture(store: Arc<dyn Cache>, open: bool) -> Fixture {
        let reads = Arc::new(Counting {
            sold: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            gate: tokio::sync::Semaphore::new(if open { 1_000 } else { 0 }),
        });
        let position = Arc::new(AtomicU64::new(0));
        let metrics = Arc::new(Metrics::new());
        let shared = Invalidator::new(store, Duration::from_secs(60), Arc::clone(&metrics));
        let seen = Arc::clone(&position);
        let cache = Arc::new(EventCache::new(
            Arc::clone(&shared),
            reads.clone(),
            move || seen.load(Ordering::SeqCst),
            Duration::from_secs(60),
            true,
        ));
        Fixture {
            reads,
            position,
            shared,
            cache,
            metrics,
        }
    }

    fn counted(m: &Metrics, result: &str) -> u64 {
        m.cache_requests
            .with_label_values(&["availability", result])
            .get()
    }

    /// Fifty concurrent readers of a cold key cause one load; the rest wait for it.
    #[tokio::test]
    async fn concurrent_misses_of_one_key_load_it_once() {
        let f = fixture(Arc::new(MemoryCache::default()), false);
        let id = EventId(Uuid::new_v4());
        let readers: Vec<_> = (0..50)
            .map(|_| {
                let cache = Arc::clone(&f.cache);
                tokio::spawn(async move { cache.event(id, CacheName::Availability).await })
            })
            .collect();
        // Let the first load through once every reader has looked (all missed).
        let started = Instant::now();
        while counted(&f.metrics, "miss") < 50 {
            assert!(started.elapsed() < Duration::from_secs(5));
            tokio::task::yield_now().await;
        }
        f.reads.gate.add_permits(1_000);
        for reader in readers {
            assert_eq!(reader.await.unwrap().unwrap().unwrap().id, id.0);
        }
        assert_eq!(f.reads.loads.load(Ordering::SeqCst), 1);
        assert_eq!(
            f.cache
                .event(id, CacheName::Availability)
                .await
                .unwrap()
                .unwrap()
                .id,
            id.0
        );
        assert_eq!(counted(&f.metrics, "hit"), 1);
        assert!(f.cache.loading.lock().unwrap().is_empty());
    }

    /// A load that read the old state before a change, and stores it after the change was
    /// invalidated, is refused: readers after the invalidation see the new state.
    #[tokio::test]
    async fn a_stale_view_written_back_after_an_invalidation_is_refused() {
        let f = fixture(Arc::new(MemoryCache::default()), false);
        let id = EventId(Uuid::new_v4());
        let slow = {
            let cache = Arc::clone(&f.cache);
            tokio::spawn(async move { cache.event(id, CacheName::Availability).await })
        };
        let started = Instant::now();
        while f.reads.loads.load(Ordering::SeqCst) < 1 {
            assert!(started.elapsed() < Duration::from_secs(5));
            tokio::task::yield_now().await;
        }
        // The change lands: read model first, then invalidation, then progress.
        f.reads.sold.store(3, Ordering::SeqCst);
        f.shared.invalidate(&[id], 7).await;
        f.position.store(7, Ordering::SeqCst);
        f.reads.gate.add_permits(1_000);
        let old = slow.await.unwrap().unwrap().unwrap();
        assert_eq!(
            old.sections[0].sold, 0,
            "that reader started before the change"
        );

        let now = f
            .cache
            .event(id, CacheName::Availability)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now.sections[0].sold, 3);
        assert_eq!(f.reads.loads.load(Ordering::SeqCst), 2);
        let again = f
            .cache
            .event(id, CacheName::Availability)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.sections[0].sold, 3);
        assert_eq!(counted(&f.metrics, "hit"), 1);
    }

    /// A cache that fails answers from the read models, counts errors, and stops being asked
    /// for a while (the breaker).
    #[tokio::test]
    async fn a_failing_cache_is_bypassed_and_counted() {
        let down = crate::cache::redis::RedisCache::new(
            "redis://127.0.0.1:1/0",
            "x:",
            Duration::from_millis(100),
        )
        .unwrap();
        let f = fixture(Arc::new(down), true);
        let id = EventId(Uuid::new_v4());
        for _ in 0..3 {
            let view = f.cache.event(id, CacheName::Availability).await.unwrap();
            assert_eq!(view.unwrap().id, id.0);
        }
        assert_eq!(counted(&f.metrics, "error"), 3);
        assert_eq!(f.reads.loads.load(Ordering::SeqCst), 3);
        // Invalidation with the cache down does not fail either.
        f.shared.invalidate(&[id], 1).await;
    }
}
