//! Cache-aside of event views, the one policy over any `Cache` adapter. `GET /api/events/{id}`
//! and `GET /api/events/{id}/availability` both read the event's view through `EventCache`
//! (the metric label says which asked). Freshness: the projector calls
//! `Invalidator::invalidate` after a batch is applied and before it publishes progress, and
//! every entry is stamped with the projector position seen *before* its load; an entry whose
//! stamp is below the last invalidation of its event is refused. A client whose command was
//! acknowledged (after progress reached it) can therefore never read an older state through
//! this instance, even when a slow loader writes back a stale view after the invalidation.
//! Stampedes: one load per key at a time per instance (single flight). Degradation: a failing
//! or slow cache counts an error, opens a short breaker (`crate::breaker`, `cache` on
//! `/ready` and `/metrics`), and the read goes to PostgreSQL.

use super::{Cache, CacheError};
use crate::breaker::{Breaker, BreakerConfig};
use crate::clock::SystemClock;
use crate::domain::EventId;
use crate::observability::Metrics;
use crate::projections::{EventLookup, EventView, ReadError, ViewInvalidation};
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// After a cache failure, how long reads skip the cache and go straight to PostgreSQL, so a
/// down or slow Redis costs one timeout per this period rather than one per request; then one
/// probe finds out whether it is back.
const BREAKER: BreakerConfig = BreakerConfig {
    consecutive: 1,
    ratio_percent: 100,
    window: 0,
    cool_down: Duration::from_secs(1),
};
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

/// An entry's key names its format (`ENTRY_FORMAT`): builds that write another one (JSON
/// before it) keep their own entries beside these in a shared Redis during a rolling deploy,
/// instead of replacing each other's on every read.
fn key(id: Uuid) -> String {
    format!("event:{ENTRY_FORMAT}:{id}")
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
    breaker: Arc<Breaker>,
    metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl ViewInvalidation for Invalidator {
    async fn invalidate(&self, sale_ids: &[EventId], position: u64) {
        Invalidator::invalidate(self, sale_ids, position).await
    }
}

impl Invalidator {
    pub fn new(cache: Arc<dyn Cache>, ttl: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Invalidator {
            cache,
            marks: Mutex::new(HashMap::new()),
            keep_marks: ttl * 2 + Duration::from_secs(10),
            breaker: Breaker::new("cache", BREAKER, Arc::new(SystemClock)),
            metrics,
        })
    }

    pub fn cache(&self) -> &Arc<dyn Cache> {
        &self.cache
    }

    /// The cache's breaker (named `cache`; the in-process adapter never trips it).
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
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
        let keys: Vec<String> = ids.iter().map(|id| key(id.0)).collect();
        let _ = self.guard("invalidate", self.cache.delete(&keys)).await;
    }

    fn mark(&self, id: Uuid) -> u64 {
        lock(&self.marks)
            .get(&id)
            .map_or(0, |(position, _)| *position)
    }

    /// Runs one cache operation through the breaker: `None` when the breaker refused it (the
    /// cache is skipped), else its result; a failure is logged and opens the breaker.
    async fn guard<T>(
        &self,
        during: &'static str,
        op: impl Future<Output = Result<T, CacheError>>,
    ) -> Option<Result<T, CacheError>> {
        let result = self
            .breaker
            .call(op, |e: &CacheError| Some(e.to_string()))
            .await
            .ok()?;
        if let Err(error) = &result {
            tracing::warn!(%error, during, "cache failed; reading from PostgreSQL for a while");
        }
        Some(result)
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
struct Entry<V> {
    seen: u64,
    view: V,
}

/// The first byte of an entry: its encoding, bincode's standard one after it. A hot read
/// decodes an entry per request, and bincode does it several times faster than JSON (what
/// builds before it wrote). An entry found with another first byte, or undecodable, is not
/// read but reloaded and replaced. bincode is positional: a change to `EventView`'s shape
/// must come with a new number here (a test pins the encoding and says so).
const ENTRY_FORMAT: u8 = 2;

fn encoded(entry: &Entry<&EventView>) -> Result<Vec<u8>, bincode::error::EncodeError> {
    let mut bytes = vec![ENTRY_FORMAT];
    bincode::serde::encode_into_std_write(entry, &mut bytes, bincode::config::standard())?;
    Ok(bytes)
}

fn decoded(bytes: &[u8]) -> Result<Entry<EventView>, &'static str> {
    match bytes.split_first() {
        Some((&ENTRY_FORMAT, body)) => {
            match bincode::serde::decode_from_slice(body, bincode::config::standard()) {
                Ok((entry, read)) if read == body.len() => Ok(entry),
                Ok(_) => Err("longer than its format"),
                Err(_) => Err("undecodable"),
            }
        }
        _ => Err("of another format"),
    }
}

/// Event views through the cache.
pub struct EventCache {
    shared: Arc<Invalidator>,
    reads: Arc<dyn EventLookup>,
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
        reads: Arc<dyn EventLookup>,
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
        match shared.guard("get", self.lookup(id.0)).await {
            Some(Ok(Some(view))) => {
                shared.count(name, "hit");
                return Ok(Some(view));
            }
            Some(Ok(None)) => shared.count(name, "miss"),
            // Refused by the open breaker, or failed just now.
            None | Some(Err(_)) => {
                shared.count(name, "error");
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
        if let Some(Ok(Some(view))) = self.shared.guard("get", self.lookup(id.0)).await {
            return Ok(Some(view));
        }
        // Read the position first: the view loaded next reflects at least this much.
        let seen = (self.position)();
        let view = self.read_model(id).await?;
        if let Some(view) = &view {
            self.store(id.0, seen, view).await;
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
        match decoded(&bytes) {
            // Loaded at or after the last change this instance saw: fresh.
            Ok(entry) if entry.seen >= self.shared.mark(id) => Ok(Some(entry.view)),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(error = e, event_id = %id, "unreadable cache entry; reloading");
                Ok(None)
            }
        }
    }

    async fn store(&self, id: Uuid, seen: u64, view: &EventView) {
        let bytes = match encoded(&Entry { seen, view }) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a cache entry");
                return;
            }
        };
        let key = key(id);
        let set = self.shared.cache.set(&key, bytes, self.ttl);
        let _ = self.shared.guard("set", set).await;
    }
}

#[cfg(test)]
mod tests;
