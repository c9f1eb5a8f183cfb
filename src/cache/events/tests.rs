//! Cache-aside tests: freshness through invalidation marks, single flight, degradation.
use super::*;
use crate::cache::memory::MemoryCache;
use crate::domain::concert::EventStatus;
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
        max_tickets_per_customer: None,
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
impl EventLookup for Counting {
    async fn event(&self, id: EventId) -> Result<Option<EventView>, ReadError> {
        // Read the state first, then wait at the gate: a slow load of an old state.
        let sold = self.sold.load(Ordering::SeqCst);
        self.loads.fetch_add(1, Ordering::SeqCst);
        let _pass = self.gate.acquire().await.unwrap();
        Ok(Some(view(id.0, u32::try_from(sold).unwrap())))
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

/// An entry this build wrote is read back whole; an entry of another format under its key
/// (JSON, as builds before bincode wrote, a later format's, or this one's with more after
/// it) or a damaged one is a miss: the view is loaded again and the entry replaced, never
/// answered wrongly.
#[tokio::test]
async fn entries_of_another_format_are_reloaded_and_replaced() {
    let store = Arc::new(MemoryCache::default());
    let f = fixture(Arc::clone(&store) as Arc<dyn Cache>, true);
    let id = EventId(Uuid::new_v4());
    let expected = view(id.0, 0);
    assert_eq!(
        f.cache.event(id, CacheName::Availability).await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(
        f.cache.event(id, CacheName::Availability).await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(
        (counted(&f.metrics, "miss"), counted(&f.metrics, "hit")),
        (1, 1)
    );

    let json = serde_json::to_vec(&Entry {
        seen: 0,
        view: &expected,
    })
    .unwrap();
    let mut damaged = store.get(&key(id.0)).await.unwrap().unwrap();
    damaged.truncate(damaged.len() / 2);
    // A later format whose body this build could decode, of a state it must not answer.
    let mut later = encoded(&Entry {
        seen: 0,
        view: &view(id.0, 7),
    })
    .unwrap();
    later[0] = ENTRY_FORMAT + 1;
    // This format with more after it: a view of another shape.
    let mut longer = encoded(&Entry {
        seen: 0,
        view: &view(id.0, 7),
    })
    .unwrap();
    longer.push(0);
    for (n, written) in [json, damaged, later, longer].into_iter().enumerate() {
        store
            .set(&key(id.0), written, Duration::from_secs(60))
            .await
            .unwrap();
        let loads = f.reads.loads.load(Ordering::SeqCst);
        assert_eq!(
            f.cache.event(id, CacheName::Availability).await.unwrap(),
            Some(expected.clone())
        );
        assert_eq!(
            f.reads.loads.load(Ordering::SeqCst),
            loads + 1,
            "entry {n} is reloaded"
        );
        let replaced = store.get(&key(id.0)).await.unwrap().unwrap();
        assert_eq!(
            replaced.first(),
            Some(&ENTRY_FORMAT),
            "entry {n} is replaced"
        );
    }
}

/// The entry's encoding, pinned: bincode stores fields by position, so an `EventView` of
/// another shape read under the same format number would be misread, not refused. If this
/// fails, the view changed: give `ENTRY_FORMAT` a new number (so that builds sharing a Redis
/// keep apart) and pin the new encoding here.
#[test]
fn the_entry_encoding_changes_only_with_its_format_number() {
    use sha2::{Digest, Sha256};
    let bytes = encoded(&Entry {
        seen: 7,
        view: &view(Uuid::nil(), 3),
    })
    .unwrap();
    assert_eq!(
        (ENTRY_FORMAT, hex::encode(Sha256::digest(&bytes))),
        (
            2,
            String::from("a0f4693ab9421b8b429ee652e56f9b1d204f3c9de124dc5d1ac19192efe81d30")
        ),
        "EventView's encoding changed: bump ENTRY_FORMAT and pin the new digest"
    );
}
